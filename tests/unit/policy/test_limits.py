"""Run-time limits on decisions: which allowed statements carry them, and which numbers.

A table for the shipped pack (``max_rows: 1000`` on reads, ``max_rows_changed: 100``
with a hold on writes, 20,000 rows per table per hour), with and without a key
catalog; then the engine's rules for combining limits of several rules.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from dbgate.policy.classify import classify
from dbgate.policy.keys import KeyCatalog, Relation
from dbgate.policy.model import Action, Identity
from dbgate.policy.rules import RuleSet, load_rules

AGENT = Identity("agent")
KEYS = KeyCatalog(
    {
        "public.customers": Relation((frozenset({"id"}),)),
        "public.orders": Relation((frozenset({"id"}),)),
    },
    ("public",),
    version=1,
)
NONE: dict[str, int | None] | None = None


def limits(max_rows: int | None = None, max_rows_changed: int | None = None) -> dict[str, Any]:
    return {"max_rows": max_rows, "max_rows_changed": max_rows_changed}


@pytest.fixture(scope="module")
def pack() -> RuleSet:
    return load_rules()


SHIPPED = [
    # (sql, with keys?, action, limits)
    ("SELECT * FROM orders WHERE id = 1", True, Action.ALLOW, NONE),
    ("SELECT * FROM orders WHERE id = 1", False, Action.ALLOW, limits(1000)),
    ("SELECT * FROM orders WHERE id > 0", True, Action.ALLOW, limits(1000)),
    ("SELECT * FROM customers WHERE email LIKE '%'", True, Action.ALLOW, limits(1000)),
    ("SELECT count(*) FROM customers", True, Action.ALLOW, limits(1000)),
    ("SELECT * FROM customers", True, Action.HOLD, NONE),  # asks for every row: a dump
    ("SELECT 1", False, Action.ALLOW, NONE),
    ("SELECT * FROM pg_class", False, Action.ALLOW, NONE),
    ("FETCH 100 FROM c", False, Action.ALLOW, limits(1000)),
    ("UPDATE orders SET status = 'x' WHERE id = 1", True, Action.ALLOW, NONE),
    ("UPDATE orders SET status = 'x' WHERE id = 1", False, Action.ALLOW, limits(None, 100)),
    ("UPDATE orders SET status = 'x' WHERE status = 'y'", True, Action.ALLOW, limits(None, 100)),
    ("DELETE FROM orders WHERE id - id = 0", True, Action.ALLOW, limits(None, 100)),
    ("INSERT INTO orders (id) VALUES (1), (2)", False, Action.ALLOW, NONE),
    (
        "INSERT INTO orders (id) SELECT generate_series(1, 100000)",
        False,
        Action.ALLOW,
        limits(None, 100),
    ),
    (
        "INSERT INTO orders SELECT * FROM orders WHERE status = 'x'",
        True,
        Action.ALLOW,
        limits(1000, 100),
    ),
    ("COPY orders FROM STDIN", False, Action.ALLOW, limits(None, 100)),
    (
        "WITH d AS (DELETE FROM orders WHERE status = 'x' RETURNING id) SELECT count(*) FROM d",
        True,
        Action.HOLD,  # the DELETE's count is not in the SELECT's command tag
        NONE,
    ),
    (
        "WITH d AS (DELETE FROM orders WHERE id = 1 RETURNING id) SELECT count(*) FROM d",
        True,
        Action.ALLOW,  # proven: nothing to measure
        NONE,
    ),
    ("EXPLAIN ANALYZE DELETE FROM orders WHERE status = 'x'", True, Action.HOLD, NONE),
    (
        "SELECT 1; UPDATE orders SET status = 'x' WHERE status = 'y'",
        True,
        Action.ALLOW,
        limits(None, 100),
    ),
]


@pytest.mark.parametrize(("sql", "keys", "action", "expected"), SHIPPED)
def test_shipped_pack_limits(
    pack: RuleSet, sql: str, keys: bool, action: Action, expected: dict[str, Any] | None
) -> None:
    decision = pack.decide(AGENT, classify(sql, keys=KEYS if keys else None))
    assert decision.action is action, (decision.rule, decision.reasons)
    assert decision.limits == expected


def test_past_the_read_limit_is_refused_and_past_the_write_limit_held(pack: RuleSet) -> None:
    read = pack.decide(AGENT, classify("SELECT * FROM orders WHERE status = 'x'"))
    assert read.rows_over_limit is not None
    assert (read.rows_over_limit.action, read.rows_over_limit.rule) == (Action.DENY, "allow-reads")
    write = pack.decide(AGENT, classify("UPDATE orders SET total = 0 WHERE status = 'x'"))
    over = write.changes_over_limit
    assert over is not None
    assert (over.action, over.rule, over.approver_groups) == (
        Action.HOLD,
        "allow-bounded-writes",
        ("dba",),
    )
    assert write.rows_over_limit is None


def test_an_unmeasurable_write_names_its_reason(pack: RuleSet) -> None:
    sql = "WITH d AS (DELETE FROM orders WHERE status = 'x' RETURNING id) SELECT 1"
    decision = pack.decide(AGENT, classify(sql))
    assert decision.action is Action.HOLD
    assert [r.code for r in decision.reasons] == ["uncounted-changes"]
    assert "cannot be measured" in decision.reasons[0].message
    assert decision.approver_groups == ("dba",)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(lo_create(0)) FROM generate_series(1, 5000)",
        "SELECT count(nextval('orders_id_seq')) FROM generate_series(1, 100000)",
        "SELECT nextval('orders_id_seq'), generate_series(1, 10)",
    ],
)
def test_a_writing_call_once_per_row_is_held_as_unmeasurable(pack: RuleSet, sql: str) -> None:
    """Its effects are as many as the rows it runs for, and its command tag counts
    none of them: measuring the SELECT would let 100,000 sequence values or 5,000
    large objects through as "1 row changed"."""
    decision = pack.decide(AGENT, classify(sql))
    assert decision.action is Action.HOLD
    assert [r.code for r in decision.reasons] == ["uncounted-changes"]
    assert "nextval or lo_create" in decision.reasons[0].message


CASCADING = KeyCatalog(
    {
        "public.customers": Relation(
            (frozenset({"id"}),), cascades_delete=True, cascade_update_columns=frozenset({"id"})
        ),
        "public.orders": Relation((frozenset({"id"}),)),
        "public.ruled": Relation((frozenset({"id"}),), has_rules=True),
    },
    ("public",),
    version=1,
)


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM ruled WHERE id = 1",
        "UPDATE ruled SET v = 1 WHERE id = 1",
        "INSERT INTO ruled (id) VALUES (1)",
    ],
)
def test_a_write_of_a_table_with_rewrite_rules_is_held_as_unmeasurable(
    pack: RuleSet, sql: str
) -> None:
    """A rule (``ON DELETE TO ruled DO ALSO DELETE FROM items``) runs its own
    statements with the write; the tag counts the write, or the rule's last
    statement of its kind, not what the rules changed."""
    decision = pack.decide(AGENT, classify(sql, keys=CASCADING))
    assert decision.action is Action.HOLD
    assert [r.code for r in decision.reasons] == ["uncounted-changes"]
    assert "rewrite rules" in decision.reasons[0].message


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM customers WHERE id = 1",
        "DELETE FROM customers WHERE id BETWEEN 1 AND 50",
        "UPDATE customers SET id = 9 WHERE id = 1",
        "INSERT INTO customers (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET id = 7",
        "MERGE INTO customers c USING (VALUES (1)) v(id) ON c.id = v.id WHEN MATCHED THEN DELETE",
    ],
)
def test_a_write_that_foreign_keys_cascade_is_held_as_unmeasurable(pack: RuleSet, sql: str) -> None:
    """``DELETE FROM customers WHERE id = 1`` says ``DELETE 1`` while ON DELETE CASCADE
    deletes every order of that customer: neither the key's proof nor the command tag
    bounds what it changes."""
    decision = pack.decide(AGENT, classify(sql, keys=CASCADING))
    assert decision.action is Action.HOLD
    assert "uncounted-changes" in [r.code for r in decision.reasons]
    assert "cascading foreign keys" in decision.reasons[-1].message


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE customers SET full_name = 'x' WHERE id = 1",
        "DELETE FROM orders WHERE id = 1",
        "INSERT INTO customers (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET full_name = 'x'",
    ],
)
def test_writes_no_foreign_key_follows_keep_their_proof(pack: RuleSet, sql: str) -> None:
    decision = pack.decide(AGENT, classify(sql, keys=CASCADING))
    assert decision.action is Action.ALLOW
    assert decision.max_rows_changed is None


def test_one_writing_call_runs_as_allowed(pack: RuleSet) -> None:
    """An ORM's ``SELECT nextval(...)``: one call, one effect."""
    assert pack.decide(AGENT, classify("SELECT nextval('orders_id_seq')")).action is Action.ALLOW


def test_every_read_of_a_table_counts_against_the_window(pack: RuleSet) -> None:
    proven = pack.decide(AGENT, classify("SELECT * FROM orders WHERE id = 1", keys=KEYS))
    assert proven.limits is None
    assert proven.row_window is not None
    assert (proven.row_window.rows, proven.row_window.seconds) == (20000, 3600)
    assert proven.row_window.tables == frozenset({"orders"})
    joined = pack.decide(
        AGENT,
        classify(
            "SELECT * FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.id = 1",
            keys=KEYS,
        ),
    )
    assert joined.row_window is not None
    assert joined.row_window.tables == frozenset({"orders", "customers"})
    assert pack.decide(AGENT, classify("SELECT * FROM pg_class")).row_window is None
    assert pack.decide(AGENT, classify("UPDATE orders SET x = 1 WHERE id = 1")).row_window is None


def _pack(tmp_path: Path, text: str) -> RuleSet:
    d = tmp_path / "rules"
    d.mkdir()
    (d / "pack.yaml").write_text(textwrap.dedent(text).lstrip("\n"))
    return load_rules(d)


def test_the_smallest_limit_of_the_deciding_rules_wins(tmp_path: Path) -> None:
    pack = _pack(
        tmp_path,
        """
        rules:
          - name: reporting-reads
            match: {identities: [reporter], categories: [read, dump]}
            action: allow
            max_rows: 100000
          - name: reads
            match: {categories: [read]}
            action: allow
            max_rows: 50
          - name: dumps
            match: {categories: [dump]}
            action: allow
            max_rows: 10
          - name: writes
            match: {categories: [write]}
            action: allow
          - name: rest
            action: hold
        """,
    )
    agent = pack.decide(AGENT, classify("SELECT * FROM orders"))  # read + dump units
    assert (agent.action, agent.max_rows) == (Action.ALLOW, 10)
    reporter = pack.decide(Identity("reporter"), classify("SELECT * FROM orders"))
    assert reporter.max_rows == 100000
    # a rule without a limit lifts nothing another rule set, and sets none itself
    insert = pack.decide(AGENT, classify("INSERT INTO t SELECT * FROM orders WHERE x = 1"))
    assert insert.limits == limits(50)
    write = pack.decide(AGENT, classify("UPDATE t SET x = 1 WHERE y = 2"))
    assert write.limits is None


def test_a_proven_bound_above_the_limit_still_gets_it(tmp_path: Path) -> None:
    pack = _pack(
        tmp_path,
        """
        rules:
          - name: reads
            match: {categories: [read]}
            action: allow
            max_rows: 2
        """,
    )
    three = classify("SELECT * FROM orders WHERE id IN (1, 2, 3)", keys=KEYS)
    assert three.read_bound == 3
    assert pack.decide(AGENT, three).max_rows == 2
    two = classify("SELECT * FROM orders WHERE id IN (1, 2)", keys=KEYS)
    assert pack.decide(AGENT, two).max_rows is None


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT o.* FROM orders o, generate_series(1, 5000) g WHERE o.id = 1",
        "SELECT o.id, c.relname FROM orders o, pg_class c WHERE o.id = 1",
        "SELECT status FROM orders WHERE id IN (1, 2) GROUP BY ROLLUP (status)",
        "SELECT o.*, generate_series(1, 5000) FROM orders o WHERE o.id = 1",
    ],
)
def test_a_key_read_whose_result_may_repeat_its_rows_keeps_the_row_limit(
    pack: RuleSet, sql: str
) -> None:
    """Reading one row by its key proves nothing about the rows returned."""
    decision = pack.decide(AGENT, classify(sql, keys=KEYS))
    assert decision.action is Action.ALLOW, (decision.rule, decision.reasons)
    assert decision.limits == limits(1000)
