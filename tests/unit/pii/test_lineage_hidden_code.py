"""Writes that run code the lineage walk does not see: rewrite rules and triggers.

A rule's ``DO ALSO SELECT lower(email) ...`` answers an ``INSERT`` with rows of its
own (a result set no statement of the text explains), and a trigger may read any
table and say what it read in a notice or an error. The walk cannot follow either,
so a write to a relation that has some of its own makes the statement's output
unknown (rules) and its errors and notices withheld (rules and triggers).

Hand-made schema (no server); tests/integration/clients/test_pii_through_dbgate.py
shows both on the real server, through the relay.
"""

from __future__ import annotations

import pytest

from dbgate.pii.catalog_load import load_catalog
from dbgate.pii.coverage import Coverage
from dbgate.pii.lineage import analyze
from dbgate.pii.room import PiiRoom, PiiSettings
from dbgate.pii.schema import SchemaSnapshot
from dbgate.pii.tokens import Key, Keyring, Tokenizer
from dbgate.wire.messages import FieldDescription, RowDescription

SNAP = SchemaSnapshot.build(
    {
        "public.customers": ["id", "full_name", "email"],
        "public.echoing": [("x", 23)],
        "public.audited": [("x", 23)],
        "public.plain": [("x", 23)],
    },
    rules=["public.echoing"],
    triggers=["public.audited"],
)
COV = Coverage(SNAP, load_catalog())

WRITES = [
    "insert into {t} values (1)",
    "insert into {t} values (1) returning x",
    "update {t} set x = 2 where x = 1",
    "delete from {t} where x = 1",
    "merge into {t} t using (select 1 as x) s on t.x = s.x when matched then delete",
    "select 1 as a; insert into {t} values (1)",
]


@pytest.mark.parametrize("sql", WRITES)
def test_a_write_to_a_relation_with_rules_returns_unknown_rows(sql: str) -> None:
    analysis = analyze(sql.format(t="echoing"), COV)
    write = analysis.statements[-1]
    assert write.output is not None and write.output.tail is not None
    assert write.output.tail.unknown
    assert analysis.hidden_code == ["the rules of public.echoing"]


@pytest.mark.parametrize("sql", WRITES)
def test_a_write_to_a_relation_with_triggers_is_noted(sql: str) -> None:
    analysis = analyze(sql.format(t="audited"), COV)
    plain = analyze(sql.format(t="plain"), COV)
    assert analysis.hidden_code == ["the triggers of public.audited"]
    assert plain.hidden_code == []
    # triggers add no result set: the statement's own output is as without them
    assert [s.output is None for s in analysis.statements] == [
        s.output is None for s in plain.statements
    ]


def test_copy_into_a_relation_with_triggers_is_noted() -> None:
    assert analyze("copy audited from stdin", COV).hidden_code == ["the triggers of public.audited"]
    assert analyze("copy plain from stdin", COV).hidden_code == []


def test_reading_such_a_relation_runs_nothing_hidden() -> None:
    for t in ("echoing", "audited"):
        analysis = analyze(f"select x from {t}", COV)
        assert analysis.hidden_code == [] and not analysis.unknown_reasons


def _room() -> PiiRoom:
    return PiiRoom(load_catalog(), Tokenizer(Keyring([Key("k", b"k" * 32)])), PiiSettings(), SNAP)


def test_errors_of_writes_running_hidden_code_are_withheld() -> None:
    room = _room()
    assert room.plan("insert into audited values (1)").involves_pii
    assert room.plan("insert into echoing values (1)").involves_pii
    assert not room.plan("insert into plain values (1)").involves_pii


def test_each_result_set_of_a_query_string_is_planned_with_its_own_statement() -> None:
    """The relay says which statement a result set is of: a clean computed column
    is not tokenized for another statement's PII column in its place, and a result
    set of a statement that returns none (a rule's) is tokenized whole."""
    room = _room()
    plan = room.plan("select upper('x') as label; select lower(email) as label from customers")
    desc = RowDescription((FieldDescription("label", 0, 0, 25),)).encode()[5:]
    assert plan.rows(desc, (0,), 0) is None
    second = plan.rows(desc, (0,), 1)
    assert second is not None and [a.entity for a in second.actions] == ["email"]
    # without the index, the two statements' outputs are merged by position
    merged = plan.rows(desc, (0,))
    assert merged is not None and [a.entity for a in merged.actions] == ["email"]
    writes = room.plan("select upper('x') as label; insert into plain values (1)")
    for index in (1, 2):  # a statement with no rows of its own, or past the last one
        rewriter = writes.rows(desc, (0,), index)
        assert rewriter is not None and [a.entity for a in rewriter.actions] == ["unknown"]


POLICED = SchemaSnapshot.build(
    {"public.customers": ["id", "full_name", "email"], "public.policed": [("x", 23)]},
    views={"public.policed_view": "SELECT policed.x FROM policed"},
    policies=["public.policed"],
)
POLICED_COV = Coverage(POLICED, load_catalog())


@pytest.mark.parametrize(
    "sql",
    [
        "select x from policed where x = 1",
        "select 1 from (select * from policed) p",
        "with p as (select x from policed) select count(*) from p",
        "update policed set x = 2 where x = 1",
        "delete from policed where x = 1",
        "select 1 from policed_view",  # the view's query runs them
    ],
)
def test_a_relation_with_row_level_security_policies_is_noted(sql: str) -> None:
    """Its policies' expressions run at every read or write, unseen: their errors may
    say what they read, so the statement involves PII whatever it names."""
    assert analyze(sql, POLICED_COV).policies_met == ["public.policed"]
    assert analyze("select 1 from customers where id = 1", POLICED_COV).policies_met == []


CODED = SchemaSnapshot.build(
    {"public.customers": ["id", "full_name", "email"], "public.coded": [("x", 23)]},
    code=["public.coded"],
)


@pytest.mark.parametrize("sql", WRITES)
def test_a_write_to_a_relation_whose_defaults_or_checks_call_code_is_noted(sql: str) -> None:
    """A column default or CHECK constraint calling a function of the database's own
    runs at the write, unseen, as a trigger does."""
    analysis = analyze(sql.format(t="coded"), Coverage(CODED, load_catalog()))
    assert analysis.hidden_code == ["the column defaults and checks of public.coded"]
