"""Rows of a result set no traced statement explains (a rule's own rows, a width the
statement does not have) may have been chosen by PII: a column the RowDescription
names as a stored clean one is not passed as the stored value."""

from __future__ import annotations

from dbgate.pii.catalog_load import load_catalog
from dbgate.pii.room import PiiRoom, PiiSettings
from dbgate.pii.schema import SchemaSnapshot
from dbgate.pii.tokens import Key, Keyring, Tokenizer
from dbgate.wire.messages import FieldDescription, RowDescription

SNAP = SchemaSnapshot.build(
    {"public.customers": ["id", "full_name", "email"], "public.plain": [("x", 23)]},
)


def _room() -> PiiRoom:
    return PiiRoom(load_catalog(), Tokenizer(Keyring([Key("k", b"k" * 32)])), PiiSettings(), SNAP)


def _customers_id(width: int = 1) -> bytes:
    oid = next(o for o, r in SNAP.relations.items() if r.name == "customers")
    fields = [FieldDescription("id", oid, 1, 23)] * width
    return RowDescription(tuple(fields)).encode()[5:]


def test_a_stored_clean_column_of_rows_no_statement_explains_is_replaced() -> None:
    room = _room()
    # a result set of a statement that returns none (a rule's DO ALSO SELECT)
    writes = room.plan("select 1 as a; insert into plain values (1)")
    rewriter = writes.rows(_customers_id(), (0,), 1)
    assert rewriter is not None and [a.mode for a in rewriter.actions] == ["fresh"]
    # a result set wider than the statement's output
    narrow = room.plan("select 1 as a")
    rewriter = narrow.rows(_customers_id(2), (0,))
    assert rewriter is not None and {a.mode for a in rewriter.actions} == {"fresh"}


def test_a_stored_clean_column_the_statement_explains_is_passed() -> None:
    assert _room().plan("select id from customers where id = 3").rows(_customers_id(), (0,)) is None
