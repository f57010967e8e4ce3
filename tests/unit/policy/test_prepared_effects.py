"""What PREPARE / DEALLOCATE / DISCARD do to prepared statements, read from the tree.

Each row: a query string -> the ``PreparedEffect`` of each of its statements, in
order. Names are as PostgreSQL's parser keeps them (folded unless quoted, truncated
to 63 bytes at a character boundary); a body is the exact text of the prepared
statement as it appears in the query string.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pglast import parser

from dbgate.policy.classify import classify, clear_cache
from dbgate.policy.model import PreparedEffect

CLEAR = PreparedEffect("clear")


def add(name: str, body: str) -> PreparedEffect:
    return PreparedEffect("add", name, body)


def remove(name: str) -> PreparedEffect:
    return PreparedEffect("remove", name)


def row(sql: str, *effects: PreparedEffect, id: str | None = None) -> Any:
    return pytest.param(sql, effects, id=id or sql[:60])


LONG = "a" * 70
UNICODE_LONG = "ä" * 40  # 80 bytes: the parser keeps 31 characters (62 bytes)

TABLE = [
    # --- PREPARE ----------------------------------------------------------------------
    row("PREPARE p AS SELECT 1", add("p", "SELECT 1")),
    row("prepare P as select 1;", add("p", "select 1"), id="folded-and-semicolon"),
    row('PREPARE "Mixed Case" AS SELECT 1', add("Mixed Case", "SELECT 1"), id="quoted"),
    row('PREPARE "a""b" AS SELECT 1', add('a"b', "SELECT 1"), id="quoted-with-quote"),
    row('PREPARE "select" AS SELECT 1', add("select", "SELECT 1"), id="keyword-name"),
    row("PREPARE ünï AS SELECT 'é'", add("ünï", "SELECT 'é'"), id="unicode"),
    row(f"PREPARE {LONG} AS SELECT 1", add("a" * 63, "SELECT 1"), id="truncated"),
    row(
        f'PREPARE "{UNICODE_LONG}" AS SELECT 1',
        add("ä" * 31, "SELECT 1"),
        id="truncated-at-a-character-boundary",
    ),
    row(
        "PREPARE q (int, text) AS SELECT * FROM orders WHERE id = $1 AND status = $2",
        add("q", "SELECT * FROM orders WHERE id = $1 AND status = $2"),
        id="parameter-types",
    ),
    row(
        "PREPARE q(numeric(10, 2), varchar(5)[])AS SELECT $1, $2",
        add("q", "SELECT $1, $2"),
        id="parameter-types-with-typmods",
    ),
    row(
        "PREPARE q AS SELECT 1 AS as_is, 'AS' AS x",
        add("q", "SELECT 1 AS as_is, 'AS' AS x"),
        id="body-containing-AS",
    ),
    row(
        "/* lead */ PREPARE q /* a */ AS /* b */ SELECT 1 /* inner */ + 2 -- trailing",
        add("q", "SELECT 1 /* inner */ + 2"),
        id="comments-around-and-inside",
    ),
    row(
        "PREPARE q AS SELECT $$a; PREPARE x AS DELETE$$",
        add("q", "SELECT $$a; PREPARE x AS DELETE$$"),
        id="dollar-quote-with-semicolon",
    ),
    row(
        "PREPARE d AS DELETE FROM orders WHERE id = $1",
        add("d", "DELETE FROM orders WHERE id = $1"),
    ),
    row(
        "PREPARE q AS\n  SELECT id\n  FROM orders\n  WHERE id = $1\n;\n",
        add("q", "SELECT id\n  FROM orders\n  WHERE id = $1"),
        id="multi-line",
    ),
    # --- DEALLOCATE / DISCARD ---------------------------------------------------------
    row("DEALLOCATE p", remove("p")),
    row("DEALLOCATE PREPARE p", remove("p")),
    row('DEALLOCATE "P"', remove("P"), id="deallocate-quoted"),
    row(f"DEALLOCATE {LONG}", remove("a" * 63), id="deallocate-truncated"),
    row("DEALLOCATE ALL", CLEAR),
    row("DEALLOCATE PREPARE ALL", CLEAR),
    row('DEALLOCATE "all"', remove("all"), id="a-statement-named-all"),
    row("DISCARD ALL", CLEAR),
    row("DISCARD PLANS", id="discard-plans-keeps-statements"),
    row("DISCARD SEQUENCES"),
    row("DISCARD TEMP"),
    # --- several statements -------------------------------------------------------------
    row(
        "SELECT 'é'; PREPARE a AS SELECT 'ü' ; DEALLOCATE b; EXECUTE a; DISCARD ALL",
        add("a", "SELECT 'ü'"),
        remove("b"),
        CLEAR,
        id="multi-statement-after-multibyte",
    ),
    row(
        "PREPARE a AS SELECT 1; PREPARE b (int) AS SELECT $1;DEALLOCATE a",
        add("a", "SELECT 1"),
        add("b", "SELECT $1"),
        remove("a"),
        id="multi-statement",
    ),
    row("prepare b as delete from t; select 1", add("b", "delete from t")),
    # --- no effect ------------------------------------------------------------------------
    row("select 'prepare c as x'", id="prepare-inside-a-literal"),
    row("EXECUTE p"),
    row("SELECT 1"),
    row("PREPARE TRANSACTION 'x'", id="prepare-transaction-is-not-a-statement"),
]


@pytest.mark.parametrize(("sql", "expected"), TABLE)
def test_prepared_effects(sql: str, expected: tuple[PreparedEffect, ...]) -> None:
    clear_cache()
    assert classify(sql).prepared_effects == expected
    assert classify(sql).prepared_effects == expected  # and from the cache


def _without_locations(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_locations(v) for k, v in node.items() if k != "location"}
    if isinstance(node, list):
        return [_without_locations(v) for v in node]
    return node


@pytest.mark.parametrize(("sql", "expected"), TABLE)
def test_a_recorded_body_parses_to_the_prepared_statement(
    sql: str, expected: tuple[PreparedEffect, ...]
) -> None:
    """The oracle: the body text parses to exactly the query the PREPARE stores."""
    prepares = [
        s["stmt"]["PrepareStmt"]["query"]
        for s in json.loads(parser.parse_sql_json(sql))["stmts"]
        if "PrepareStmt" in s["stmt"]
    ]
    bodies = [e.body for e in expected if e.kind == "add"]
    assert len(bodies) == len(prepares)
    for body, query in zip(bodies, prepares, strict=True):
        parsed = json.loads(parser.parse_sql_json(body))["stmts"]
        assert len(parsed) == 1
        assert _without_locations(parsed[0]["stmt"]) == _without_locations(query)


def test_statements_differing_in_a_literal_keep_their_own_bodies() -> None:
    clear_cache()
    assert classify("PREPARE p AS SELECT 1").prepared_effects == (add("p", "SELECT 1"),)
    assert classify("PREPARE p AS SELECT 2").prepared_effects == (add("p", "SELECT 2"),)
    assert classify("PREPARE p AS SELECT 'x'").prepared_effects == (add("p", "SELECT 'x'"),)


def test_a_prepare_is_judged_by_its_body() -> None:
    st = classify("PREPARE d AS DELETE FROM orders").statements[0]
    assert st.prepared_effect == add("d", "DELETE FROM orders")
    assert {c.value for c in st.categories} == {"control", "destructive"}


def test_nested_sql_reports_no_effect_of_its_own() -> None:
    """query_to_xml runs its SQL read-only (PostgreSQL refuses utility statements there),
    and whatever it would do is not the outer statement's effect."""
    c = classify("SELECT query_to_xml('DEALLOCATE ALL', true, false, '')")
    assert c.prepared_effects == ()


@pytest.mark.parametrize(
    ("sql", "category"),
    [
        ("EXPLAIN EXECUTE p(pg_terminate_backend(4242)::text)", "admin"),
        ("EXPLAIN (ANALYZE off) EXECUTE p(set_config('role', 'postgres', false))", "privilege"),
        ("EXPLAIN EXECUTE p(pg_advisory_lock(1)::text)", "lock"),
        ("EXPLAIN CREATE TABLE t AS EXECUTE p(pg_read_file('/etc/passwd'))", "admin"),
        ("CREATE TABLE t AS EXECUTE p(pg_advisory_lock(1)::text) WITH NO DATA", "lock"),
    ],
)
def test_arguments_an_execute_that_does_not_run_evaluates_are_judged(
    sql: str, category: str
) -> None:
    """PostgreSQL evaluates an EXECUTE's arguments to plan with their values, under a
    plain EXPLAIN or WITH NO DATA too: they are judged as a bare EXECUTE's are."""
    prepared = {"p": "PREPARE p(text) AS SELECT id FROM orders WHERE status = $1"}
    st = classify(sql, prepared=prepared).statements[0]
    assert category in {c.value for c in st.categories}, st.reasons
    plain = classify("EXPLAIN EXECUTE p('paid')", prepared=prepared).statements[0]
    assert {c.value for c in plain.categories} == {"read"}, plain.reasons
