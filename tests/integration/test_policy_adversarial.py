"""An adversarial table: statements that dump, rewrite or lock whole tables, or carry data
out by side channels, each proven on a real server — and the default pack's answer.

Every row is run once against the demo dataset (5,000 customers, 20,000 orders,
15,048 payments) in a transaction that is rolled back, and what it *does* is measured
there: the rows it returns, the characters one value carries, the text of the error it
raises, the rows it changes, the locks it holds, the settings it leaves. The label is
only kept if the server agrees. Then the statement is classified with the upstream's
real unique keys and decided by the shipped pack, and the decision must stop it:

* a statement returning more rows than the pack's ``max_rows`` is held, denied, or
  allowed only under a ``max_rows`` it exceeds (the run time stops it there);
* a statement changing more rows than ``max_rows_changed`` is held, denied, or allowed
  only under a limit it exceeds, with a command tag that counts them;
* data no row limit bounds (one value or one error holding a table, a large object,
  a notification, a setting), locks that block other sessions and guards switched
  off are held or denied (a guard set to 0 may instead be clamped back).

The benign rows at the end — joins against a literal key list, ranges on indexed
columns under the row limit, EXPLAIN without ANALYZE — must stay allowed, and run to
completion within any limit they get.

The classes follow issue 9 (1: predicates that look narrow; 2: join propagation; 3:
bounds that count rows, not data; 4: other channels out; 5: MERGE, upsert and
writes; 6: session and locks) and issue 16 (locks, sleeps, guards).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from dbgate.demo_data import load_demo_dataset
from dbgate.policy import Action, Identity, load_rules
from dbgate.policy.classify import classify
from dbgate.policy.keys import KEYS_QUERY, KeyCatalog, key_catalog_from_rows

PACK = load_rules()
AGENT = Identity("agent")
MAX_ROWS = 1000  # the shipped pack's max_rows; a "dump" returns more
MAX_CHANGED = 100  # the shipped pack's max_rows_changed
SIZES = {"customers": 5000, "orders": 20000, "payments": 15048}
SHOWN = {"customers": "id, ssn", "orders": "id, total", "payments": "id, card_number"}
TEXT = {"customers": "email", "orders": "status", "payments": "card_number"}
BIG = 10_000  # characters: more than any one legitimate value here


# -- what a statement does, as measured on the server ---------------------------------


@dataclass
class Run:
    rows: int = 0
    chars: int = 0  # the longest single value returned
    changed: int = -1  # cursor.rowcount of a DML
    error: str = ""
    witness: Any = None


@dataclass(frozen=True)
class Case:
    sql: str
    kind: str  # rows | value | error | changes | effect | lock | guard | sleep | benign
    threshold: int = 0
    cls: str = ""
    params: tuple[Any, ...] | None = None
    witness: str | None = None  # run after the statement, in the same transaction
    check: Callable[[Any], bool] | None = field(default=None, compare=False)
    id: str = ""

    def param(self) -> Any:
        return pytest.param(self, id=f"{self.cls}:{self.id or self.sql[:70]}")


def rows(sql: str, n: int, cls: str, **kw: Any) -> Case:
    return Case(sql, "rows", n, cls, **kw)


def value(sql: str, cls: str, **kw: Any) -> Case:
    return Case(sql, "value", BIG, cls, **kw)


def error(sql: str, cls: str, **kw: Any) -> Case:
    return Case(sql, "error", BIG, cls, **kw)


def changes(sql: str, n: int, cls: str = "5-writes", **kw: Any) -> Case:
    return Case(sql, "changes", n, cls, **kw)


def effect(sql: str, witness: str, check: Callable[[Any], bool], cls: str, **kw: Any) -> Case:
    return Case(sql, "effect", 0, cls, witness=witness, check=check, **kw)


# -- class 1: predicates that look narrow ------------------------------------------------

ID_PREDICATES = [
    "(id IS NULL) = false",
    "id - id = 0",
    "NULLIF(id, id) IS NULL",
    "id = ALL('{}')",
    "id = (SELECT id)",
    "id IN (SELECT id)",
    "int8eq(id, id)",
    "id > 0",
    "id >= -1",
    "id < 9223372036854775807",
    "id BETWEEN -1 AND 1000000000",
    "id::text LIKE '%'",
    "id::text ~ ''",
    "id % 1 = 0",
    "abs(id) = id",
    "id = id + 0",
    "id IN (id, -1)",
    "(id, 1) = (id, 1)",
    "id = ANY(ARRAY[id])",
    "id = greatest(id, 0)",
    "COALESCE(id, 0) >= 0",
    "NOT (id < 0)",
    "id IS DISTINCT FROM NULL",
    "id = 1 OR true",
    "id = 1 OR id > 1",
    "id::text SIMILAR TO '%'",
    "length(id::text) > 0",
    "id IN (SELECT generate_series(1, 100000))",
    "id = ANY(ARRAY(SELECT generate_series(1, 100000)))",
    "id::numeric = id::numeric",
    "date_part('year', now()) > 2000 AND id > 0",
    "id = 1 OR id = 2 OR id >= 3",
    "id IN (1, 2) OR id > 2",
    "CASE WHEN id > 0 THEN true ELSE false END",
    "(SELECT true) AND id > 0",
]
TEXT_PREDICATES = [
    ("{c} LIKE '%'", None),
    ("{c} ILIKE '%%'", None),
    ("{c} ~ ''", None),
    ("{c} >= ''", None),
    ("{c} <> 'nothing at all'", None),
    ("length({c}) >= 0", None),
    ("{c} = {c}", None),
    ("upper({c}) = upper({c})", None),
    ("starts_with({c}, '')", None),
    ("{c} LIKE %s", ("%",)),
    ("{c} ~ %s", ("",)),
    ("{c} = ANY(ARRAY[{c}])", None),
]


def _tautologies() -> list[Case]:
    out = []
    for table, n in SIZES.items():
        for p in ID_PREDICATES:
            out.append(rows(f"SELECT {SHOWN[table]} FROM {table} WHERE {p}", n, "1-looks-narrow"))
        for p, params in TEXT_PREDICATES:
            pred = p.format(c=TEXT[table])
            out.append(
                rows(
                    f"SELECT {SHOWN[table]} FROM {table} WHERE {pred}",
                    n,
                    "1-looks-narrow",
                    params=params,
                )
            )
    out.append(
        rows(
            "SELECT id, ssn FROM customers x WHERE x.id = (SELECT max(id) FROM customers y "
            "WHERE y.id = x.id)",
            5000,
            "1-looks-narrow",
            id="correlated-echo",
        )
    )
    return out


# -- class 2: join propagation -----------------------------------------------------------

JOINS = [
    rows("SELECT c.ssn FROM orders o, customers c WHERE o.id = 1", 5000, "2-joins"),
    rows(
        "SELECT c.ssn FROM customers c NATURAL JOIN (SELECT 1 AS z) x WHERE z = 1",
        5000,
        "2-joins",
        id="natural-join-without-common-column",
    ),
    rows(
        "SELECT cid, ssn FROM (SELECT id AS cid, ssn FROM customers), (SELECT 1 AS id) "
        "WHERE id = 1",
        5000,
        "2-joins",
        id="unaliased-sub-selects",
    ),
    rows(
        "SELECT a.ssn FROM customers a JOIN customers b ON a.id = b.id",
        5000,
        "2-joins",
        id="self-join-cycle",
    ),
    rows(
        "SELECT c.ssn, o.id FROM customers c LEFT JOIN orders o ON o.customer_id = c.id "
        "AND c.id = 1",
        5000,
        "2-joins",
        id="left-join-on-keeps-every-left-row",
    ),
    rows(
        "SELECT c.ssn FROM orders o JOIN customers c ON c.id + 0 = o.customer_id "
        "WHERE o.status = 'paid'",
        1001,
        "2-joins",
        id="expression-equality",
    ),
    rows(
        "SELECT c.ssn FROM orders o JOIN customers c ON c.id = o.customer_id WHERE c.id > 0",
        20000,
        "2-joins",
    ),
    rows(
        "SELECT j.ssn FROM (customers c JOIN orders o ON o.customer_id = c.id) AS j "
        "WHERE j.total >= 0",
        20000,
        "2-joins",
        id="join-alias",
    ),
    rows(
        "SELECT c.ssn FROM customers c JOIN generate_series(1, 5000) g ON c.id = g",
        5000,
        "2-joins",
        id="generated-key-list",
    ),
    rows(
        "SELECT c.ssn FROM customers c JOIN (SELECT customer_id FROM orders) o "
        "ON o.customer_id = c.id",
        20000,
        "2-joins",
    ),
    rows(
        "SELECT c.ssn FROM customers c, LATERAL (SELECT 1) x WHERE c.id = c.id",
        5000,
        "2-joins",
    ),
    rows(
        "SELECT c.ssn FROM customers c JOIN orders o USING (id) WHERE o.status <> 'x'",
        5000,
        "2-joins",
    ),
    rows(
        "SELECT c.ssn FROM customers c FULL JOIN (VALUES (1)) v(id) ON c.id = v.id",
        5000,
        "2-joins",
    ),
    rows(
        "SELECT c.ssn FROM customers c WHERE c.id IN (SELECT customer_id FROM orders)",
        1001,
        "2-joins",
    ),
    rows(
        "SELECT p.card_number FROM payments p JOIN orders o ON o.id = p.order_id "
        "JOIN customers c ON c.id = o.customer_id WHERE c.email LIKE '%'",
        15048,
        "2-joins",
    ),
]


# -- class 3: bounds that count rows, not data --------------------------------------------

ROWS_NOT_DATA = [
    value("SELECT json_agg(c) FROM customers c LIMIT 1", "3-rows-not-data"),
    value("SELECT jsonb_agg(c) FROM customers c LIMIT 1", "3-rows-not-data"),
    value("SELECT string_agg(ssn, ',') FROM customers LIMIT 1", "3-rows-not-data"),
    value("SELECT array_agg(ssn) FROM customers", "3-rows-not-data"),
    value("SELECT array_agg(ssn)::text FROM customers WHERE id > 0", "3-rows-not-data"),
    value("SELECT to_json(array_agg(c)) FROM customers c", "3-rows-not-data"),
    value("SELECT json_object_agg(id, ssn) FROM customers", "3-rows-not-data"),
    value("SELECT jsonb_object_agg(id, card_number) FROM payments", "3-rows-not-data"),
    value("SELECT JSON_ARRAYAGG(ssn) FROM customers", "3-rows-not-data"),
    value("SELECT JSON_OBJECTAGG(email : ssn) FROM customers", "3-rows-not-data"),
    value("SELECT max(s) FROM (SELECT string_agg(ssn, ',') s FROM customers) x", "3-rows-not-data"),
    value("SELECT string_agg(ssn, ',') OVER () FROM customers LIMIT 1", "3-rows-not-data"),
    value(
        "SELECT array_agg(ssn) OVER (ORDER BY id) FROM customers ORDER BY id DESC LIMIT 1",
        "3-rows-not-data",
    ),
    value("SELECT ARRAY(SELECT ssn FROM customers)", "3-rows-not-data"),
    value(  # each row rewrites 'a' into 'ssn | a': every SSN folded into one tsquery
        "SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, "
        "(quote_literal(ssn) || '' | a'')::tsquery FROM customers WHERE id > 0')::text",
        "3-rows-not-data",
    ),
    value("SELECT ARRAY(SELECT card_number FROM payments WHERE amount > 0)", "3-rows-not-data"),
    value(
        "SELECT string_agg(ssn, ',') FROM customers WHERE email LIKE '%' GROUP BY length('')",
        "3-rows-not-data",
    ),
    value(
        "SELECT string_agg((SELECT ssn FROM customers c WHERE c.id = g), ',') "
        "FROM generate_series(1, 5000) g",
        "3-rows-not-data",
        id="collected-per-generated-row",
    ),
    value(
        "WITH RECURSIVE r(id, acc) AS (SELECT id, ssn FROM customers WHERE id = 1 UNION ALL "
        "SELECT c.id, r.acc || c.ssn FROM r JOIN customers c ON c.id = r.id + 1) "
        "SELECT acc FROM r ORDER BY id DESC LIMIT 1",
        "3-rows-not-data",
        id="recursion-carries-rows",
    ),
    value("SELECT array_to_string(array_agg(ssn), ',') FROM customers", "3-rows-not-data"),
    rows(
        "SELECT (SELECT ssn FROM customers c WHERE c.id = g) FROM generate_series(1, 5000) g",
        5000,
        "3-rows-not-data",
        id="generated-rows-drive-sub-select",
    ),
    rows(
        "SELECT (SELECT ssn FROM customers c WHERE c.id = x.n) FROM "
        "(SELECT row_number() OVER () AS n FROM pg_attribute) x",
        1001,
        "3-rows-not-data",
        id="catalog-rows-drive-sub-select",
    ),
    rows(
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5000) "
        "SELECT (SELECT ssn FROM customers c WHERE c.id = r.n) FROM r",
        5000,
        "3-rows-not-data",
        id="recursive-rows-drive-sub-select",
    ),
    rows(
        "SELECT * FROM (SELECT ssn FROM customers ORDER BY id LIMIT 1000 OFFSET 0) a UNION ALL "
        "SELECT * FROM (SELECT ssn FROM customers ORDER BY id LIMIT 1000 OFFSET 1000) b UNION ALL "
        "SELECT * FROM (SELECT ssn FROM customers ORDER BY id LIMIT 1000 OFFSET 2000) c",
        3000,
        "3-rows-not-data",
        id="pages-glued",
    ),
    rows("SELECT id, max(ssn) FROM customers GROUP BY id", 5000, "3-rows-not-data"),
    rows("SELECT email, count(*) FROM customers GROUP BY email", 5000, "3-rows-not-data"),
    rows("SELECT id, count(*) OVER () FROM customers", 5000, "3-rows-not-data"),
    rows("SELECT DISTINCT ssn FROM customers", 5000, "3-rows-not-data"),
    rows("SELECT ssn FROM customers GROUP BY ssn", 5000, "3-rows-not-data"),
    rows("SELECT card_number FROM payments WHERE amount > 0 LIMIT 5000", 5000, "3-rows-not-data"),
    rows(
        "SELECT ssn FROM customers ORDER BY id FETCH FIRST 1 ROWS WITH TIES",
        1,
        "3-rows-not-data",
        id="with-ties-reads-one-row-here",
    ),
]


# -- class 4: other channels out ---------------------------------------------------------

AGG = "(SELECT string_agg(ssn, ',') FROM customers)"
CHANNELS = [
    error(f"SELECT 1 FROM orders WHERE id = 1 AND {AGG}::int = 1", "4-channels", id="where"),
    error(f"SELECT 1 FROM orders WHERE id = 1 ORDER BY {AGG}::int", "4-channels", id="order-by"),
    error(f"SELECT 1 FROM orders WHERE id = 1 LIMIT {AGG}::int", "4-channels", id="limit"),
    error(f"SELECT 1 FROM orders WHERE id = 1 OFFSET {AGG}::int", "4-channels", id="offset"),
    error(
        f"SELECT status FROM orders GROUP BY status HAVING {AGG}::int > 0",
        "4-channels",
        id="having",
    ),
    error(
        f"SELECT 1 FROM orders o JOIN payments p ON p.order_id = o.id AND {AGG}::int = 1 "
        "WHERE o.id = 1",
        "4-channels",
        id="join-on",
    ),
    error(
        f"SELECT count(*) FILTER (WHERE {AGG}::int = 1) FROM orders WHERE id = 1",
        "4-channels",
        id="filter",
    ),
    error(f"SELECT abs({AGG}::int)", "4-channels", id="function-argument"),
    error(f"SELECT CASE WHEN {AGG}::int > 0 THEN 1 END", "4-channels", id="case"),
    error(f"VALUES ({AGG}::int)", "4-channels", id="values"),
    error(f"SELECT 1 FROM orders WHERE id = 1 GROUP BY {AGG}::int", "4-channels", id="group-by"),
    error(
        "SELECT 1 FROM orders WHERE id = 1 AND ARRAY(SELECT ssn FROM customers)::text::int = 1",
        "4-channels",
        id="array-in-where",
    ),
    error(
        "SELECT 1 FROM orders WHERE id = 1 AND "
        "(SELECT json_agg(c) FROM customers c)::text::int = 1",
        "4-channels",
    ),
    error(
        f"SELECT set_config('statement_timeout', {AGG}, true)",
        "4-channels",
        id="guard-value-error",
    ),
    value(f"SELECT upper({AGG})", "4-channels", id="scalar-in-function"),
    value(f"SELECT {AGG}", "4-channels", id="scalar"),
    value(
        f"UPDATE orders SET status = status WHERE id = 1 RETURNING {AGG}",
        "4-channels",
        id="returning",
    ),
    value(
        f"DELETE FROM payments WHERE id = 1 RETURNING {AGG}",
        "4-channels",
        id="delete-returning",
    ),
    value(
        f"INSERT INTO orders (customer_id, total, status) VALUES (1, 0, 'paid') RETURNING {AGG}",
        "4-channels",
        id="insert-returning",
    ),
    value("SELECT jsonb_agg(row_to_json(c)) FROM customers c WHERE c.id > 0", "4-channels"),
    value("SELECT lo_get(oid) FROM pg_largeobject_metadata", "4-channels", id="lo-read-back"),
    value("SELECT string_agg(encode(data, 'escape'), '') FROM pg_largeobject", "4-channels"),
    effect(
        "SELECT lo_from_bytea(0, convert_to(string_agg(ssn, ','), 'UTF8')) FROM customers",
        "SELECT max(length(lo_get(oid))) FROM pg_largeobject_metadata",
        lambda v: v is not None and v > BIG,
        "4-channels",
        id="lo-from-aggregate",
    ),
    effect(
        "SELECT count(lo_from_bytea(0, convert_to(ssn, 'UTF8'))) FROM customers",
        "SELECT count(*) FROM pg_largeobject_metadata",
        lambda v: v >= 5000,
        "4-channels",
        id="lo-per-row-inside-an-aggregate",
    ),
    effect(
        "SELECT lo_from_bytea(0, convert_to(ssn, 'UTF8')) FROM customers WHERE id > 0",
        "SELECT count(*) FROM pg_largeobject_metadata",
        lambda v: v >= 5000,
        "4-channels",
        id="lo-per-row",
    ),
    effect(
        "SELECT count(lo_put((SELECT min(oid) FROM pg_largeobject_metadata), id * 12, "
        "convert_to(ssn, 'UTF8'))) FROM customers",
        "SELECT max(length(lo_get(oid))) FROM pg_largeobject_metadata",
        lambda v: v > BIG,
        "4-channels",
        id="lo-put-per-row",
    ),
    effect(
        "SELECT set_config('application_name', (SELECT ssn FROM customers WHERE id = 7), false)",
        "SELECT current_setting('application_name')",
        lambda v: v.count("-") == 2,
        "4-channels",
        id="setting-reported-to-the-client",
    ),
    effect(
        "SELECT set_config('search_path', (SELECT string_agg(email, ',') FROM customers "
        "WHERE id <= 500), true)",
        "SELECT length(current_setting('search_path'))",
        lambda v: v > BIG,
        "4-channels",
    ),
    effect(
        "SELECT pg_notify(ssn, 'x') FROM customers WHERE id = 1",
        "SELECT 1",
        lambda v: v == 1,
        "4-channels",
        id="notify-channel-carries-data",
    ),
    effect(
        "SELECT pg_notify('c', (SELECT string_agg(ssn, ',') FROM customers WHERE id < 300))",
        "SELECT 1",
        lambda v: v == 1,
        "4-channels",
        id="notify-payload-carries-data",
    ),
    effect(
        "SELECT count(pg_notify('c', ssn)) FROM customers",
        "SELECT 1",
        lambda v: v == 1,
        "4-channels",
        id="notify-per-row",
    ),
    rows(
        "SELECT ssn FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.id = 1)",
        5000,
        "4-channels",
    ),
]


# -- class 5: MERGE, upsert and other writes ---------------------------------------------

WRITES = [
    *[
        changes(f"UPDATE {t} SET id = id WHERE {p}", n, id=f"{t}: {p}")
        for t, n in SIZES.items()
        for p in (
            "id - id = 0",
            "id > 0",
            "(id IS NULL) = false",
            "id = ALL('{}')",
            "id::text LIKE '%'",
        )
    ],
    changes("UPDATE payments SET amount = 0 WHERE amount > 0", 14000),
    changes("UPDATE orders SET status = 'paid' WHERE status <> 'x'", 20000),
    changes("UPDATE customers SET phone = phone WHERE email LIKE %s", 5000, params=("%",)),
    changes("UPDATE orders o SET total = 0 FROM customers c WHERE c.id = o.customer_id", 20000),
    changes(
        "UPDATE orders o SET total = 0 FROM (SELECT 1) x WHERE o.id = o.id",
        20000,
        id="update-from-tautology",
    ),
    changes("DELETE FROM payments WHERE id > 0", 15048),
    changes("DELETE FROM payments WHERE card_number LIKE '%'", 15048),
    changes("DELETE FROM payments p USING orders o WHERE o.id = p.order_id", 15048),
    changes("DELETE FROM payments WHERE id IN (SELECT generate_series(1, 100000))", 15048),
    changes("DELETE FROM payments", 15048),
    changes(
        "MERGE INTO payments p USING payments s ON p.id = s.id "
        "WHEN MATCHED THEN UPDATE SET amount = s.amount",
        15048,
    ),
    changes(
        "MERGE INTO payments p USING (SELECT id FROM payments WHERE amount > 0) s ON p.id = s.id "
        "WHEN MATCHED THEN UPDATE SET amount = 0",
        14000,
    ),
    changes(
        "MERGE INTO payments p USING (VALUES (1)) v(x) ON true WHEN MATCHED THEN DELETE",
        15048,
    ),
    changes(
        "MERGE INTO payments p USING (VALUES (1)) v(id) ON p.id = v.id "
        "WHEN NOT MATCHED BY SOURCE THEN DELETE",
        15047,
    ),
    changes(
        "MERGE INTO orders o USING customers c ON o.id = c.id "
        "WHEN MATCHED THEN UPDATE SET total = 0",
        5000,
    ),
    changes(
        "MERGE INTO orders o USING generate_series(1, 20000) g ON o.id = g "
        "WHEN MATCHED THEN UPDATE SET total = 0",
        20000,
        id="merge-from-generated-keys",
    ),
    changes(
        "MERGE INTO orders o USING (SELECT id FROM customers) c ON o.id = c.id + 100000 "
        "WHEN NOT MATCHED THEN INSERT (customer_id, total, status) VALUES (c.id, 0, 'paid')",
        5000,
    ),
    changes(
        "INSERT INTO orders (customer_id, total, status) SELECT id, 0, 'paid' FROM customers",
        5000,
    ),
    changes(
        "INSERT INTO orders (customer_id, total, status) "
        "SELECT 1, 0, 'paid' FROM generate_series(1, 5000)",
        5000,
    ),
    changes(
        "INSERT INTO payments (id, order_id, card_number, amount) "
        "SELECT id, order_id, card_number, 0 FROM payments ON CONFLICT (id) DO UPDATE SET amount = 0",
        15048,
        id="upsert-rewrites-everything",
    ),
    changes(
        "INSERT INTO payments (id, order_id, card_number, amount) SELECT g, 1, 'x', 0 "
        "FROM generate_series(1, 20000) g ON CONFLICT (id) DO UPDATE SET amount = 0",
        20000,
        id="upsert-from-generated-source",
    ),
    changes(
        "INSERT INTO orders (customer_id, total, status) SELECT customer_id, total, status "
        "FROM orders WHERE status = 'paid'",
        4000,
    ),
    effect(
        "WITH d AS (UPDATE payments SET amount = 0 WHERE amount > 0 RETURNING 1) "
        "SELECT count(*) FROM d",
        "SELECT count(*) FROM payments WHERE amount = 0",
        lambda v: v > 14000,
        "5-writes",
        id="cte-update-its-tag-does-not-count",
    ),
    effect(
        "WITH d AS (DELETE FROM payments WHERE id > 0 RETURNING 1) SELECT 1",
        "SELECT count(*) FROM payments",
        lambda v: v == 0,
        "5-writes",
        id="cte-delete",
    ),
    effect(
        "EXPLAIN ANALYZE UPDATE payments SET amount = 0 WHERE id > 0",
        "SELECT count(*) FROM payments WHERE amount = 0",
        lambda v: v == 15048,
        "5-writes",
        id="explain-analyze-update",
    ),
    effect(
        "EXPLAIN (ANALYZE, COSTS OFF) DELETE FROM payments WHERE card_number LIKE '%'",
        "SELECT count(*) FROM payments",
        lambda v: v == 0,
        "5-writes",
    ),
]


# -- class 6: session, locks and guards --------------------------------------------------


def _locks() -> list[Case]:
    out = []
    for table, n in SIZES.items():
        for strength in ("UPDATE", "NO KEY UPDATE", "SHARE", "KEY SHARE"):
            out.append(
                Case(
                    f"SELECT id FROM {table} WHERE id > 0 FOR {strength}",
                    "lock",
                    n,
                    "6-locks",
                )
            )
    for mode in (
        "ROW EXCLUSIVE",
        "SHARE UPDATE EXCLUSIVE",
        "SHARE",
        "SHARE ROW EXCLUSIVE",
        "EXCLUSIVE",
        "ACCESS EXCLUSIVE",
    ):
        out.append(
            effect(
                f"LOCK TABLE orders IN {mode} MODE",
                "SELECT string_agg(mode, ',') FROM pg_locks WHERE relation = 'orders'::regclass "
                "AND pid = pg_backend_pid()",
                lambda v, mode=mode: mode.replace(" ", "") in (v or "").upper(),
                "6-locks",
            )
        )
    out += [
        effect(
            "LOCK orders",
            "SELECT string_agg(mode, ',') FROM pg_locks WHERE relation = 'orders'::regclass "
            "AND pid = pg_backend_pid()",
            lambda v: "AccessExclusiveLock" in (v or ""),
            "6-locks",
        ),
        Case(
            "SELECT o.id FROM orders o JOIN customers c ON c.id = o.customer_id "
            "WHERE c.id > 0 FOR UPDATE OF o",
            "lock",
            20000,
            "6-locks",
        ),
        Case(
            "SELECT (SELECT 1 FROM orders o WHERE o.id = g.g FOR UPDATE) "
            "FROM generate_series(1, 5000) g",
            "lock",
            5000,
            "6-locks",
            id="locks-per-generated-row",
        ),
    ]
    for fn in (
        "pg_advisory_lock(4242)",
        "pg_advisory_lock_shared(4242)",
        "pg_try_advisory_lock(4242)",
        "pg_try_advisory_lock_shared(4242)",
        "pg_advisory_lock(1, 2)",
    ):
        out.append(Case(f"SELECT {fn}", "session-lock", 0, "6-locks"))
    for sql, setting in (
        ("SET statement_timeout = 0", "statement_timeout"),
        ("SET lock_timeout = 0", "lock_timeout"),
        ("SET idle_in_transaction_session_timeout = 0", "idle_in_transaction_session_timeout"),
        ("SET transaction_timeout = 0", "transaction_timeout"),
        ("SET statement_timeout = '1d'", "statement_timeout"),
        ("SET statement_timeout = '0x7FFFFFFF'", "statement_timeout"),
        ("SET statement_timeout = '010min'", "statement_timeout"),
        ("SET LOCAL lock_timeout = '1h'", "lock_timeout"),
        (
            "SET SESSION idle_in_transaction_session_timeout = '2h'",
            "idle_in_transaction_session_timeout",
        ),
        ("SELECT set_config('statement_timeout', '0', false)", "statement_timeout"),
        ("SELECT set_config('lock_timeout', '600000', true)", "lock_timeout"),
        (
            "SELECT set_config('statement_timeout', (SELECT '1d'), false)",
            "statement_timeout",
        ),
        (
            "SELECT set_config('transaction_timeout', repeat('9', 7), false)",
            "transaction_timeout",
        ),
    ):
        out.append(Case(sql, "guard", 0, "6-guards", witness=setting))
    for sql in (
        "SELECT pg_sleep(600)",
        "SELECT pg_sleep(121)",
        "SELECT pg_sleep_for('1 hour')",
        "SELECT pg_sleep_for('00:05:00')",
        "SELECT 1 FROM pg_sleep(3600)",
    ):
        out.append(Case(sql, "sleep", 0, "6-guards"))
    return out


# -- must stay allowed -------------------------------------------------------------------


def benign(sql: str, **kw: Any) -> Case:
    return Case(sql, "benign", 0, "benign", **kw)


BENIGN = [
    benign("SELECT c.full_name FROM (VALUES (1), (2), (3)) v(id) JOIN customers c ON c.id = v.id"),
    benign("SELECT * FROM customers WHERE id IN (1, 2, 3)"),
    benign("SELECT * FROM customers WHERE id = %s", params=(42,)),
    benign("SELECT * FROM customers WHERE email = 'nobody@example.com'"),
    benign(
        "SELECT o.id, o.total, c.full_name FROM orders o JOIN customers c "
        "ON c.id = o.customer_id WHERE o.id = 42"
    ),
    benign(
        "SELECT o.id, p.amount FROM orders o JOIN payments p ON p.order_id = o.id "
        "WHERE o.id IN (10, 11, 12)"
    ),
    benign("SELECT id, total FROM orders WHERE created_at > '2025-06-29'"),
    benign("SELECT id, total FROM orders WHERE created_at BETWEEN '2025-06-01' AND '2025-06-02'"),
    benign("SELECT id FROM customers WHERE created_at >= '2025-06-29'"),
    benign("SELECT * FROM orders WHERE customer_id = 17"),
    benign("SELECT * FROM payments WHERE order_id = 99"),
    benign("SELECT status, count(*) FROM orders GROUP BY status"),
    benign("SELECT count(*) FROM customers"),
    benign("SELECT avg(amount) FROM payments WHERE order_id BETWEEN 1 AND 100"),
    benign(
        "SELECT date_trunc('month', created_at) m, sum(total) FROM orders GROUP BY 1 ORDER BY 1"
    ),
    benign("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY total) FROM orders"),
    benign("SELECT DISTINCT status FROM orders"),
    benign("SELECT * FROM orders ORDER BY created_at DESC LIMIT 50"),
    benign("SELECT customer_id, count(*) FROM orders GROUP BY 1 ORDER BY 2 DESC LIMIT 10"),
    benign("EXPLAIN SELECT * FROM customers"),
    benign("EXPLAIN (FORMAT JSON) SELECT ssn FROM customers WHERE id > 0"),
    benign("EXPLAIN UPDATE payments SET amount = 0"),
    benign(
        "SELECT id FROM orders WHERE status = 'pending' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
    ),
    benign("SELECT * FROM orders WHERE id = 5 FOR UPDATE"),
    benign("SELECT * FROM customers WHERE email = 'nobody@example.com' FOR SHARE"),
    benign("UPDATE orders SET status = 'shipped' WHERE id = 7"),
    benign("UPDATE orders SET status = 'shipped' WHERE id IN (7, 8, 9)"),
    benign("UPDATE orders SET total = total + 1 WHERE customer_id = 3"),
    benign("DELETE FROM payments WHERE id = 1"),
    benign("INSERT INTO orders (customer_id, total, status) VALUES (1, 9.5, 'pending')"),
    benign("INSERT INTO orders (customer_id, total, status) VALUES (1, 1, 'paid'), (2, 2, 'paid')"),
    benign(
        "MERGE INTO orders o USING (VALUES (1, 'paid')) v(id, status) ON o.id = v.id "
        "WHEN MATCHED THEN UPDATE SET status = v.status"
    ),
    benign("SET statement_timeout = '30s'"),
    benign("SET LOCAL lock_timeout = '2s'"),
    benign("RESET statement_timeout"),
    benign("SELECT pg_sleep(0.01)"),
    benign("SELECT pg_advisory_xact_lock(42)"),
    benign("LOCK TABLE orders IN ACCESS SHARE MODE"),
    benign("SELECT string_agg(full_name, ', ') FROM customers WHERE id IN (1, 2, 3)"),
    benign("SELECT json_agg(o) FROM orders o WHERE o.id = ANY(ARRAY[1, 2, 3])"),
]

ADVERSARIAL = _tautologies() + JOINS + ROWS_NOT_DATA + CHANNELS + WRITES + _locks()


# -- the server ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(pg_server: Any) -> Iterator[str]:
    name = f"adversarial_{secrets.token_hex(4)}"
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    dsn = pg_server.dsn(name)
    try:
        asyncio.run(load_demo_dataset(dsn, customers=5000))
        with psycopg.connect(dsn, autocommit=True) as c:
            for i in range(3):  # large objects holding personal data, for the read-back rows
                c.execute(
                    "SELECT lo_from_bytea(0, convert_to((SELECT string_agg(ssn, ',') "
                    "FROM customers WHERE id %% 3 = %s), 'UTF8'))",
                    (i,),
                )
        yield dsn
    finally:
        with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def keys(demo: str) -> KeyCatalog:
    with psycopg.connect(demo) as c:
        rows_ = c.execute(KEYS_QUERY).fetchall()  # type: ignore[arg-type]
    return key_catalog_from_rows(rows_, search_path=["$user", "public"], user="postgres")


@pytest.fixture(scope="module")
def conn(demo: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(demo) as c:
        yield c


def _run(conn: psycopg.Connection[Any], case: Case) -> Run:
    """Run ``case`` once in a transaction that is rolled back; what it did."""
    out = Run()
    conn.rollback()
    try:
        if case.kind == "sleep":
            conn.execute("SET LOCAL statement_timeout = '200ms'")
        cur = conn.execute(case.sql, case.params)  # type: ignore[arg-type]
        out.changed = cur.rowcount
        if cur.description is not None:
            got = cur.fetchall()
            out.rows = len(got)
            out.chars = max((len(str(v)) for r in got for v in r), default=0)
        if case.kind == "guard" and case.witness:
            shown = conn.execute(f"SHOW {case.witness}").fetchone()  # type: ignore[arg-type]
            out.witness = shown[0] if shown else None
        elif case.witness:
            row = conn.execute(case.witness).fetchone()  # type: ignore[arg-type]
            out.witness = row[0] if row else None
    except psycopg.Error as e:
        out.error = str(e)
    finally:
        conn.rollback()
    if case.kind == "session-lock":
        held = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        ).fetchone()
        out.witness = held[0] if held else 0
        conn.execute("SELECT pg_advisory_unlock_all()")
        conn.rollback()
    return out


def _proven(case: Case, run: Run) -> None:
    """The server agrees with the label."""
    k, n = case.kind, case.threshold
    if k == "rows":
        assert not run.error, run.error
        assert run.rows >= n and (run.rows > MAX_ROWS or n <= MAX_ROWS), run.rows
    elif k == "value":
        assert not run.error, run.error
        assert run.chars > BIG and run.rows <= 10, (run.rows, run.chars)
    elif k == "error":
        assert len(run.error) > BIG, run.error[:200]
    elif k == "changes":
        assert not run.error, run.error
        assert run.changed >= n > MAX_CHANGED, run.changed
    elif k == "effect":
        assert case.check is not None and not run.error, run.error
        assert case.check(run.witness), run.witness
    elif k == "lock":
        assert not run.error, run.error
        assert run.rows >= n > MAX_ROWS, run.rows
    elif k == "session-lock":
        assert not run.error, run.error
        assert run.witness >= 1  # still held after the transaction rolled back
    elif k == "guard":
        assert not run.error, run.error
        assert run.witness is not None
    elif k == "sleep":
        assert "statement timeout" in run.error, run.error
    elif k == "benign":
        assert not run.error, run.error


def _stopped(case: Case, run: Run, keys: KeyCatalog) -> None:
    """The shipped pack's decision stops what the statement does."""
    sql = case.sql.replace("%s", "$1") if case.params else case.sql
    decision = PACK.decide(AGENT, classify(sql, keys=keys))
    why = (decision.action, decision.rule, [r.code for r in decision.reasons], decision.limits)
    if case.kind == "benign":
        assert decision.action is Action.ALLOW, why
        if decision.max_rows is not None:
            assert run.rows <= decision.max_rows, why
        if decision.max_rows_changed is not None and run.changed >= 0:
            assert run.changed <= decision.max_rows_changed, why
        return
    if decision.action is not Action.ALLOW:
        if case.kind == "sleep":
            assert decision.action is Action.DENY, why
        return
    if case.kind == "rows":
        assert decision.max_rows is not None and decision.max_rows < run.rows, why
    elif case.kind == "changes":
        assert decision.max_rows_changed is not None, why
        assert decision.max_rows_changed < run.changed, why
        assert all(st.writes_counted for st in classify(sql, keys=keys).statements), why
    elif case.kind == "guard":
        assert case.witness in dict(decision.guard_clamps), why
    else:
        pytest.fail(f"allowed: {why}")


@pytest.mark.parametrize("case", [c.param() for c in ADVERSARIAL + BENIGN])
def test_each_statement_does_what_its_label_says_and_the_pack_stops_it(
    conn: psycopg.Connection[Any], keys: KeyCatalog, case: Case
) -> None:
    run = _run(conn, case)
    _proven(case, run)
    _stopped(case, run, keys)


def test_the_table_covers_every_class() -> None:
    assert len(ADVERSARIAL) >= 300
    assert len(BENIGN) >= 30
    assert len({c.sql for c in ADVERSARIAL + BENIGN}) == len(ADVERSARIAL + BENIGN)
    classes = {c.cls for c in ADVERSARIAL}
    assert classes == {
        "1-looks-narrow",
        "2-joins",
        "3-rows-not-data",
        "4-channels",
        "5-writes",
        "6-locks",
        "6-guards",
    }
