"""A relation name several schemas hold: the session's ``search_path`` picks one.
What reads columns by position must get what any of them holds there; what reads a
column by name, what that name holds in any of them. And a statement a session
prepared is read as the snapshot now says (hand-made schema; through the gate:
tests/integration/pii/test_hunt_sessions_disagree.py)."""

from __future__ import annotations

import pytest

from dbgate.pii.catalog_load import load_catalog
from dbgate.pii.coverage import Coverage
from dbgate.pii.keys import Key, Keyring
from dbgate.pii.lineage import analyze
from dbgate.pii.room import PiiRoom, PiiSettings
from dbgate.pii.schema import Column, Relation, SchemaSnapshot
from dbgate.pii.tokens import Tokenizer

CATALOG = load_catalog()
SAME_WIDTH = Coverage(
    SchemaSnapshot.build({"public.twin": [("id", 23), "label"], "crm.twin": [("id", 23), "email"]}),
    CATALOG,
)
WIDER = Coverage(
    SchemaSnapshot.build(
        {"public.twin": [("id", 23), "label"], "crm.twin": [("id", 23), "label", "email"]}
    ),
    CATALOG,
)
SAME_LAYOUT = Coverage(
    SchemaSnapshot.build(
        {"public.twin": [("id", 23), "label"], "crm.twin": [("id", 23), "label"]},
        comments={"crm.twin.label": "pii:email"},
    ),
    CATALOG,
)


def _columns(sql: str, cov: Coverage) -> list[bool]:
    (st,) = analyze(sql, cov, None).statements
    assert st.output is not None
    out = [not lin.clean for lin in st.output.columns]
    return out + ([] if st.output.tail is None else [not st.output.tail.clean])


POSITIONAL = [
    "select to_jsonb(t) from twin t",
    "select t::text from twin t",
    "select lower(b) from twin as t(a, b)",
    "select upper(s.b) from (select * from twin) s(a, b)",
    "select row_to_json(s) from (select * from twin) s",
]
PAST_THE_FIRST = [
    "select to_jsonb(t) from twin t",
    "select t::text from twin t",
    "select lower(c) from twin as t(a, b, c)",
    "select upper(s.c) from (select * from twin) s(a, b, c)",
    "select row_to_json(s) from (select * from twin) s",
    "select lower(email) from twin",
]


@pytest.mark.parametrize("sql", POSITIONAL)
def test_positions_hold_what_any_same_named_relation_holds(sql: str) -> None:
    assert any(_columns(sql, SAME_WIDTH)), sql


@pytest.mark.parametrize("sql", PAST_THE_FIRST)
def test_columns_past_the_first_relation_are_unknown(sql: str) -> None:
    assert any(_columns(sql, WIDER)), sql


@pytest.mark.parametrize("cov", [SAME_WIDTH, WIDER], ids=["same width", "wider"])
def test_a_set_operation_of_star_carries_the_other_relation(cov: Coverage) -> None:
    assert any(_columns("select * from twin union all select * from twin", cov))


@pytest.mark.parametrize("cov", [SAME_WIDTH, WIDER], ids=["same width", "wider"])
def test_a_column_read_by_name_keeps_its_own_lineage(cov: Coverage) -> None:
    assert _columns("select lower(label), id + 1 from twin", cov) == [False, False]


def test_same_layouts_read_by_name_as_before() -> None:
    assert _columns("select lower(label), id + 1 from twin", SAME_LAYOUT) == [True, False]
    assert _columns("select to_jsonb(t) from twin t", SAME_LAYOUT) == [True]


def _view_room(definition: str) -> tuple[PiiRoom, SchemaSnapshot]:
    base = SchemaSnapshot.build(
        {"public.customers": [("id", 23), "email"], "public.things": [("id", 23), "title"]}
    )
    rels = dict(base.relations)
    rels[900] = Relation(
        900, "public", "board", "v", 901, (Column("id", 1, 23), Column("label", 2, 25)), definition
    )
    snap = SchemaSnapshot(relations=rels, functions={}, assume_builtin_functions=True)
    room = PiiRoom(CATALOG, Tokenizer(Keyring([Key("k", b"k" * 32)])), PiiSettings(), snap)
    return room, snap


def test_a_sql_prepared_statement_is_traced_again_after_a_reload() -> None:
    """The server plans ``PREPARE``d statements again when a view they read is
    redefined: after the snapshot changes, EXECUTE reads what the view reads now."""
    room, _ = _view_room(" SELECT id, title AS label FROM things;")
    session = room.session("agent")
    session.plan("prepare p as select id, lower(label) from board")
    before = session.plan("execute p")
    assert not before.pii_outputs
    changed, _ = _view_room(" SELECT id, email AS label FROM customers;")
    room.set_snapshot(changed.snapshot)
    after = session.plan("execute p")
    assert after.pii_outputs and after.involves_pii


def test_clean_columns_past_the_first_relation_add_nothing() -> None:
    """A table named like a wider system view (``information_schema.tables``, all
    clean) keeps its whole-row value clean; a name only the view has stays unknown."""
    cov = Coverage(
        SchemaSnapshot.build(
            {"public.tables": [("id", 23), "label"], "information_schema.tables": ["a", "b", "c"]}
        ),
        CATALOG,
    )
    assert _columns("select to_jsonb(t), lower(label) from tables t", cov) == [False, False]
    assert _columns("select lower(c) from tables", cov) == [True]
