"""Narrow by proof, as a table: SQL in, categories and proven bounds out.

Each row reads "with these unique keys, this statement gets these categories, reads
at most ``reads`` table rows and changes at most ``writes``" — ``UNB`` meaning no
bound is proven, so the run-time row limits apply. The key catalog below is the demo
schema's (``customers`` has two unique keys) plus a composite key, a view and a table
with inheritance children. The groups follow issue 9's classes of holes: each
statement there looked narrow by shape and is not proven narrow here.
"""

from __future__ import annotations

from typing import Any

import pytest

from dbgate.policy.classify import classify, clear_cache
from dbgate.policy.keys import KeyCatalog, Relation
from dbgate.policy.model import C, Category, D, E, L, O, R, W, X

UNB = None  # no proven bound

KEYS = KeyCatalog(
    {
        "public.customers": Relation(
            (frozenset({"id"}), frozenset({"email"})),
            columns=frozenset({"id", "full_name", "email", "phone", "ssn", "created_at"}),
        ),
        "public.orders": Relation(
            (frozenset({"id"}),),
            columns=frozenset({"id", "customer_id", "total", "status", "created_at"}),
        ),
        "public.payments": Relation((frozenset({"id"}),)),
        "public.items": Relation((frozenset({"order_id", "line"}),)),
        "public.big": Relation((frozenset({"id"}),)),
        "public.parent": Relation((frozenset({"id"}),), has_children=True),
        "public.v": Relation(()),
        "crm.orders": Relation(()),
    },
    ("public",),
    version=1,
)


def row(
    sql: str, cats: set[Category], reads: int | None, writes: int | None = 0, id: str = ""
) -> Any:
    return pytest.param(sql, frozenset(cats), reads, writes, id=id or sql[:70])


PROVEN = [
    row("SELECT * FROM orders WHERE id = 1", {R}, 1),
    row("SELECT * FROM orders WHERE id = $1", {R}, 1),
    row("SELECT * FROM orders WHERE 7 = id", {R}, 1),
    row("SELECT * FROM orders WHERE id = '7'::int8", {R}, 1),
    row("SELECT * FROM orders WHERE id IN (1, 2, 3)", {R}, 3),
    row("SELECT * FROM orders WHERE id IN ($1, $2)", {R}, 2),
    row("SELECT * FROM orders WHERE id = 1 OR id = 2", {R}, 2),
    row("SELECT * FROM orders WHERE id = ANY(ARRAY[1, 2])", {R}, 2),
    row("SELECT * FROM orders WHERE id = ANY('{1,2,3}')", {R}, 3),
    row("SELECT * FROM orders WHERE id = 1 AND status = 'paid'", {R}, 1),
    row("SELECT * FROM orders WHERE (id = 4) IS TRUE", {R}, 1),
    row("SELECT * FROM customers WHERE email = 'a@b.c'", {R}, 1),
    row("SELECT * FROM public.orders WHERE id = 1", {R}, 1),
    row("SELECT * FROM ONLY parent WHERE id = 1", {R}, 1),
    row("SELECT * FROM items WHERE order_id = 1 AND line = 2", {R}, 1),
    row("SELECT * FROM items WHERE order_id IN (1, 2) AND line IN (1, 2, 3)", {R}, 6),
    row("SELECT * FROM items WHERE (order_id, line) = (1, 2)", {R}, 1),
    row("SELECT * FROM items WHERE (order_id, line) IN ((1, 2), (3, 4))", {R}, 4),
    row(
        "SELECT o.*, c.full_name FROM orders o JOIN customers c ON c.id = o.customer_id "
        "WHERE o.id = 5",
        {R},
        2,
        id="join-on-key-of-pinned-row",
    ),
    row(
        "SELECT * FROM orders o JOIN customers c USING (id) WHERE o.id = 5",
        {R},
        2,
        id="using-on-key",
    ),
    row(
        "SELECT * FROM (VALUES (1), (2), (3)) v(id) JOIN customers c ON c.id = v.id",
        {R},
        3,
        id="join-against-a-literal-key-list",
    ),
    row(
        "SELECT (SELECT c.full_name FROM customers c WHERE c.id = o.customer_id) "
        "FROM orders o WHERE o.id = 3",
        {R},
        2,
        id="correlated-sub-select-per-pinned-row",
    ),
    row(
        "SELECT (SELECT array_agg(email) FROM customers c WHERE c.id = o.customer_id) "
        "FROM orders o WHERE o.id = 1",
        {R},
        2,
        id="collecting-aggregate-over-proven-rows",
    ),
    row("SELECT * FROM orders WHERE id IN (SELECT id FROM orders WHERE id = 3)", {R}, 2),
    row(
        "SELECT * FROM customers WHERE id IN (SELECT customer_id FROM orders WHERE id = 3)",
        {R},
        2,
        id="in-an-uncorrelated-bounded-sub-select",
    ),
    row("SELECT * FROM customers WHERE id IN (SELECT 5)", {R}, 1),
    row(
        "SELECT (SELECT full_name FROM customers WHERE id = 1) FROM generate_series(1, 9) g",
        {R},
        1,
        id="uncorrelated-sub-select-runs-once",
    ),
    row("SELECT string_agg(email, ',') FROM customers WHERE id IN (1, 2)", {R}, 2),
    row("SELECT * FROM orders WHERE id = 1 FOR UPDATE", {R}, 1),
    row("SELECT * FROM orders WHERE id = 1 FOR NO KEY UPDATE NOWAIT", {R}, 1),
    row("SELECT * FROM customers WHERE email = 'a@b.c' FOR SHARE", {R}, 1),
    row("SELECT * FROM orders WHERE status = 'open' LIMIT 1 FOR UPDATE SKIP LOCKED", {R}, UNB),
    row("SELECT 1", {R}, 0),
    row("SELECT * FROM pg_class", {R}, 0, id="catalogs-are-not-table-rows"),
    row("SELECT string_agg(g::text, ',') FROM generate_series(1, 10) g", {R}, 0),
]

SHAPES = [  # class 1: a predicate that looks narrow but pins no key
    row("SELECT * FROM customers WHERE (id IS NULL) = false", {R}, UNB),
    row("SELECT * FROM customers WHERE id - id = 0", {R}, UNB),
    row("SELECT * FROM customers WHERE NULLIF(id, id) IS NULL", {R}, UNB),
    row("SELECT * FROM customers WHERE id = ALL('{}')", {R}, UNB),
    # transform_null_equals reads `= NULL` as IS NULL: every row of a nullable unique key
    row("SELECT * FROM customers WHERE email = NULL", {R}, UNB, id="eq-null-literal"),
    row("SELECT * FROM customers WHERE NULL = email", {R}, UNB, id="null-literal-eq"),
    row("SELECT * FROM customers WHERE email IN (NULL)", {R}, UNB, id="in-null-literal"),
    # compared as bpchar, a varchar key ignores trailing spaces: 'x' = 'x  '
    row("SELECT * FROM customers WHERE email = 'x'::char(3)", {R}, UNB, id="bpchar-cast"),
    row("SELECT * FROM customers WHERE email = bpchar 'x'", {R}, UNB, id="bpchar-literal"),
    row("SELECT * FROM customers WHERE email IN ('x'::bpchar)", {R}, UNB, id="bpchar-in"),
    row("SELECT * FROM customers WHERE email = ANY('{x}'::bpchar[])", {R}, UNB, id="bpchar-any"),
    row("SELECT * FROM customers WHERE id = ANY('{1,2}'::float8[])", {R}, UNB, id="float8-any"),
    row("SELECT * FROM customers WHERE id = ANY(ARRAY[1]::float8[])", {R}, UNB, id="float8-array"),
    # a type dbgate does not know (an extension's, a domain) has equality it cannot read,
    # and a cast to it runs code dbgate cannot see (a domain's checks): opaque
    row("SELECT * FROM customers WHERE email = 'x'::citext", {R, O}, UNB, id="citext-cast"),
    row("SELECT * FROM customers WHERE email = 'x'::public.text", {R, O}, UNB, id="user-text"),
    row("SELECT * FROM customers WHERE email = 'x'::varchar(20)", {R}, 1, id="varchar-cast"),
    row("SELECT * FROM customers WHERE id = ANY('{1,2}'::int8[])", {R}, 2, id="int8-any"),
    row("SELECT * FROM customers WHERE id = (SELECT id)", {R}, UNB, id="echoing-sub-select"),
    row("SELECT * FROM customers WHERE id IN (SELECT id)", {R}, UNB, id="echoing-in-sub-select"),
    row("SELECT * FROM customers c WHERE id IN (SELECT c.id)", {R}, UNB),
    row(
        "SELECT * FROM customers c WHERE id IN (SELECT o.customer_id FROM orders o "
        "WHERE o.id = c.id)",
        {R},
        UNB,
        id="correlated-in-sub-select",
    ),
    row(
        "SELECT * FROM customers WHERE id IN (SELECT length(phone) FROM orders WHERE id = 3)",
        {R},
        UNB,
        id="a-bare-name-orders-does-not-have-is-the-outer-row's",
    ),
    row("SELECT * FROM customers c WHERE c.id = (SELECT c.id)", {R}, UNB),
    row("SELECT * FROM customers WHERE int8eq(id, id)", {R}, UNB),
    row("SELECT * FROM customers WHERE length(ssn) > 0", {R}, UNB),
    row("SELECT * FROM customers WHERE email LIKE '%'", {R}, UNB),
    row("SELECT * FROM customers WHERE email ~ ''", {R}, UNB),
    row("SELECT * FROM customers WHERE email LIKE $1", {R}, UNB, id="pattern-from-bind"),
    row("SELECT * FROM customers WHERE id > 0", {R}, UNB),
    row("SELECT * FROM customers WHERE id BETWEEN 1 AND 10", {R}, UNB),
    row("SELECT * FROM customers WHERE id = id", {R, D}, UNB),
    row("SELECT * FROM customers WHERE id::text = '1'", {R}, UNB, id="function-of-the-key"),
    row("SELECT * FROM customers WHERE id = 1.5::float8", {R}, UNB, id="lossy-cast"),
    row("SELECT * FROM customers WHERE email = 'x' COLLATE \"C\"", {R}, UNB),
    row("SELECT * FROM customers WHERE id = 1 OR full_name = 'x'", {R}, UNB),
    row("SELECT * FROM customers WHERE id = ANY($1)", {R}, UNB, id="array-of-any-length"),
    row("SELECT * FROM customers WHERE id = (random() * 100)::int", {R}, UNB),
    row("SELECT * FROM customers WHERE id IN (SELECT customer_id FROM orders)", {R, D}, UNB),
    row("SELECT * FROM customers WHERE id = 1 OR id = 2 OR id > 3", {R}, UNB),
    row("SELECT * FROM items WHERE order_id = 1", {R}, UNB, id="half-a-composite-key"),
    row("SELECT * FROM parent WHERE id = 1", {R}, UNB, id="inheritance-children"),
    row("SELECT * FROM v WHERE id = 1", {R}, UNB, id="a-view-has-no-keys"),
    row("SELECT * FROM crm.orders WHERE id = 1", {R}, UNB, id="same-name-other-schema"),
    row("SELECT * FROM unknown_table WHERE id = 1", {R}, UNB),
    row(
        "SELECT * FROM orders WHERE id IN (" + ", ".join(str(i) for i in range(1001)) + ")",
        {R},
        UNB,
        id="a-key-list-longer-than-the-proof-limit",
    ),
]

JOINS = [  # class 2: join propagation trusts only key equalities between plain columns
    row("SELECT * FROM orders o, customers c WHERE o.id = 1", {R, D}, UNB),
    row(
        "SELECT * FROM orders o JOIN customers c ON c.id = o.customer_id WHERE c.id = 5",
        {R},
        UNB,
        id="a-customer's-orders-are-not-a-key",
    ),
    row(
        "SELECT * FROM orders o JOIN customers c ON c.id + 0 = o.customer_id WHERE o.id = 5",
        {R},
        UNB,
        id="expression-equality",
    ),
    row("SELECT * FROM orders o NATURAL JOIN customers c WHERE o.id = 1", {R}, UNB),
    row(
        "SELECT * FROM orders o LEFT JOIN customers c ON c.id = o.customer_id AND o.id = 1",
        {R, D},
        UNB,
        id="on-of-a-left-join-keeps-every-left-row",
    ),
    row(
        "SELECT * FROM (orders o JOIN customers c ON c.id = o.customer_id) AS j WHERE o.id = 1",
        {R},
        UNB,
        id="join-alias-hides-names",
    ),
    row(
        "SELECT * FROM (SELECT * FROM orders), (SELECT * FROM customers) WHERE id = 1",
        {R, D},
        UNB,
        id="unaliased-sub-selects",
    ),
    row("SELECT * FROM customers a JOIN customers b ON a.id = b.id", {R, D}, UNB),
    row(
        "SELECT * FROM generate_series(1, 5000) g JOIN customers c ON c.id = g",
        {R, D},
        UNB,
        id="generated-key-list",
    ),
]

ROWS_NOT_DATA = [  # class 3: bounds that count rows, not data
    row("SELECT json_agg(c) FROM customers c LIMIT 1", {R, D}, UNB),
    row("SELECT max(s) FROM (SELECT string_agg(ssn, ',') s FROM customers) x", {R, D}, UNB),
    row("SELECT string_agg(ssn, ',') OVER () FROM customers LIMIT 1", {R, D}, UNB),
    row("SELECT array_agg(ssn) OVER (ORDER BY id) FROM customers LIMIT 1", {R, D}, UNB),
    row("SELECT JSON_ARRAYAGG(ssn) FROM customers WHERE id > 0", {R, D}, UNB),
    row("SELECT xmlagg(xmlelement(name c, ssn)) FROM customers WHERE id > 0", {R, D}, UNB),
    row("SELECT ARRAY(SELECT ssn FROM customers) LIMIT 1", {R, D}, UNB),
    row("SELECT jsonb_object_agg(id, ssn) FROM customers WHERE email LIKE '%'", {R, D}, UNB),
    row(
        "SELECT (SELECT ssn FROM customers c WHERE c.id = g.g) FROM generate_series(1, 5000) g",
        {R},
        UNB,
        id="generated-rows-drive-a-sub-select",
    ),
    row(
        "SELECT (SELECT ssn FROM customers c WHERE c.id = x.oid::int) FROM pg_class x",
        {R},
        UNB,
        id="catalog-rows-drive-a-sub-select",
    ),
    row(
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5000) "
        "SELECT (SELECT ssn FROM customers c WHERE c.id = r.n) FROM r",
        {R},
        UNB,
        id="recursive-rows-drive-a-sub-select",
    ),
    row(
        "WITH RECURSIVE r AS (SELECT id, ssn::text acc FROM customers WHERE id = 1 "
        "UNION ALL SELECT c.id, r.acc || c.ssn FROM r JOIN customers c ON c.id = r.id + 1) "
        "SELECT acc FROM r ORDER BY id DESC LIMIT 1",
        {R, D},
        UNB,
        id="recursion-carries-rows-forward",
    ),
    row(
        "SELECT * FROM (SELECT * FROM customers LIMIT 1000 OFFSET 0) a "
        "UNION ALL SELECT * FROM (SELECT * FROM customers LIMIT 1000 OFFSET 1000) b",
        {R},
        UNB,
        id="pages-glued-together",
    ),
    row("SELECT id, count(*) FROM customers GROUP BY id", {R, D}, UNB, id="group-by-a-key"),
    row("SELECT id, max(ssn) FROM customers GROUP BY id, email", {R, D}, UNB),
    row("SELECT status, count(*) FROM orders GROUP BY status", {R}, UNB),
    row("SELECT count(*) FROM customers", {R}, UNB),
    row("SELECT string_agg(ssn, ',') FROM (SELECT ssn FROM customers LIMIT 10) s", {R}, UNB),
]

CHANNELS = [  # class 4: data out by other channels
    # ts_rewrite(query, 'SELECT target, substitute ...') applies every row in turn: a
    # substitute that puts the target back ('ssn | a') folds every row into one value
    row(
        "SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, (ssn || '' | a'')::tsquery "
        "FROM customers WHERE id > 0')",
        {R, D},
        UNB,
        id="ts-rewrite-collects-rows",
    ),
    row(
        "SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, ssn::tsquery "
        "FROM customers WHERE id = 1')",
        {R},
        1,
        id="ts-rewrite-of-a-pinned-row",
    ),
    row(
        "SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, ssn::tsquery "
        "FROM customers WHERE id > 0 LIMIT 10')",
        {R},
        UNB,
        id="ts-rewrite-under-a-limit",
    ),
    row(
        "SELECT 1 FROM orders WHERE id = 1 AND "
        "(SELECT string_agg(ssn, ',') FROM customers)::int = 1",
        {R, D},
        UNB,
        id="collected-into-an-error-in-where",
    ),
    row(
        "SELECT 1 FROM orders WHERE id = 1 ORDER BY (SELECT string_agg(ssn, ',') FROM customers)::int",
        {R, D},
        UNB,
    ),
    row(
        "SELECT 1 FROM orders WHERE id = 1 LIMIT (SELECT string_agg(ssn, ',') FROM customers)::int",
        {R, D},
        UNB,
    ),
    row(
        "SELECT status FROM orders GROUP BY status "
        "HAVING (SELECT string_agg(ssn, ',') FROM customers)::int > 0",
        {R, D},
        UNB,
    ),
    row(
        "SELECT 1 FROM orders o JOIN payments p "
        "ON p.order_id = o.id AND (SELECT string_agg(ssn, ',') FROM customers)::int = 1 "
        "WHERE o.id = 1",
        {R, D},
        UNB,
    ),
    row(
        "SELECT count(*) FILTER (WHERE (SELECT string_agg(ssn, ',') FROM customers)::int = 1) "
        "FROM orders WHERE id = 1",
        {R, D},
        UNB,
    ),
    row(
        "SELECT 1 FROM orders WHERE id = 1 AND ARRAY(SELECT ssn FROM customers)::text::int = 1",
        {R, D},
        UNB,
    ),
    # a writing call once per row of its FROM: as many effects as rows, none of them
    # rows its command tag counts (write bound None: held unless approved)
    row("SELECT lo_from_bytea(0, ssn::bytea) FROM customers WHERE id > 0", {R, W, E}, UNB, UNB),
    row("SELECT count(lo_from_bytea(0, ssn::bytea)) FROM customers", {R, W, E}, UNB, UNB),
    row("SELECT count(lo_create(0)) FROM generate_series(1, 5000)", {R, W}, 0, UNB),
    row("SELECT count(nextval('orders_id_seq')) FROM orders WHERE id > 0", {R, W}, UNB, UNB),
    row("SELECT nextval('orders_id_seq'), generate_series(1, 10)", {R, W}, 0, UNB),
    row("SELECT nextval('orders_id_seq')", {R, W}, 0),
    row("SELECT nextval('orders_id_seq') FROM orders WHERE id = 1", {R, W}, 1),
    row("SELECT lo_put(16385, 0, ssn::bytea) FROM customers WHERE id = 1", {R, W, E}, 1),
    row("SELECT lo_truncate(0, length(ssn)) FROM customers WHERE id = 1", {R, W, E}, 1),
    row("SELECT lo_from_bytea(0, 'x')", {R, W}, 0),
    row("SELECT lo_get(oid) FROM pg_largeobject_metadata", {R, D}, 0),
    row("SELECT lo_get(16385)", {R}, 0),
    row("SELECT pg_notify(ssn, 'x') FROM customers WHERE id = 1", {R, E}, 1),
    row("SELECT pg_notify('c', ssn) FROM customers WHERE id = 1", {R, E}, 1),
    row("SELECT pg_notify('c', 'x')", {R, W}, 0),
    row(
        "SELECT set_config('application_name', (SELECT ssn FROM customers WHERE id = 1), false)",
        {R, C, E},
        1,
        id="setting-carries-data",
    ),
    row("SELECT set_config('application_name', $1, false)", {R, C}, 0),
]

WRITES = [  # class 5 and the write bounds
    row("UPDATE orders SET status = 'x' WHERE id = 1", {W}, 0, 1),
    row("UPDATE orders SET status = 'x' WHERE id IN (1, 2)", {W}, 0, 2),
    row("UPDATE orders SET status = 'x' WHERE status = 'y'", {W}, 0, UNB),
    row("UPDATE orders SET status = 'x' WHERE id - id = 0", {W}, 0, UNB),
    row("DELETE FROM customers WHERE email = NULL", {W}, 0, UNB, id="delete-eq-null"),
    row("UPDATE orders SET status = 'x'", {X}, 0, UNB),
    row("DELETE FROM orders WHERE id = 1", {W}, 0, 1),
    row("DELETE FROM orders WHERE id = 1 RETURNING *", {W}, 1, 1),
    row("DELETE FROM orders WHERE status = 'x' RETURNING *", {W}, UNB, UNB),
    row("DELETE FROM orders RETURNING *", {X, D}, UNB, UNB),
    row(
        "UPDATE orders o SET total = p.amount FROM payments p WHERE p.id = 9 AND o.id = p.order_id",
        {R, W},
        1,
        1,
        id="target-key-equal-to-a-pinned-row's-column",
    ),
    row(
        "UPDATE orders o SET total = p.amount FROM payments p WHERE p.id = 9 "
        "AND o.customer_id = p.order_id",
        {R, W},
        1,
        UNB,
        id="target-non-key-equal-to-a-pinned-row's-column",
    ),
    row(
        "UPDATE orders o SET total = 0 FROM (VALUES (1), (2)) v(id) WHERE o.id = v.id",
        {R, W},
        0,
        2,
    ),
    row("INSERT INTO orders (id) VALUES (1), (2)", {W}, 0, 2),
    row("INSERT INTO orders DEFAULT VALUES", {W}, 0, 1),
    row("INSERT INTO orders SELECT * FROM orders WHERE id = 1", {R, W}, 1, 1),
    row("INSERT INTO orders SELECT * FROM orders WHERE status = 'x'", {R, W}, UNB, UNB),
    row("INSERT INTO orders SELECT * FROM orders", {R, W, D}, UNB, UNB),
    row("INSERT INTO orders (id) SELECT generate_series(1, 100000)", {R, W}, 0, UNB),
    row(
        "INSERT INTO orders (id) SELECT g FROM generate_series(1, 100000) g "
        "ON CONFLICT (id) DO UPDATE SET status = 'x'",
        {R, W},
        0,
        UNB,
        id="upsert-from-a-generated-source",
    ),
    row(
        "INSERT INTO orders (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET status = 'x'",
        {W},
        0,
        1,
    ),
    row(
        "MERGE INTO orders o USING (VALUES (1)) v(id) ON o.id = v.id "
        "WHEN MATCHED THEN UPDATE SET status = 'x'",
        {R, W},
        0,
        1,
    ),
    row(
        "MERGE INTO orders o USING (VALUES (1)) v(id) ON o.id = v.id WHEN MATCHED THEN DELETE",
        {R, W},
        0,
        1,
    ),
    row(
        "MERGE INTO orders o USING customers c ON o.id = c.id "
        "WHEN MATCHED THEN UPDATE SET status = 'x'",
        {R, X},
        UNB,
        UNB,
        id="merge-from-a-whole-table",
    ),
    row(
        "MERGE INTO orders o USING (VALUES (1)) v(id) ON true WHEN MATCHED THEN DELETE",
        {R, X},
        0,
        UNB,
    ),
    row(
        "MERGE INTO orders o USING (VALUES (1)) v(id) ON o.id = v.id "
        "WHEN NOT MATCHED BY SOURCE THEN UPDATE SET status = 'x'",
        {R, X},
        0,
        UNB,
    ),
    row(
        "MERGE INTO orders o USING customers c ON o.id = c.id WHEN NOT MATCHED THEN "
        "INSERT (id) VALUES (c.id)",
        {R, W, D},
        UNB,
        UNB,
    ),
    row(
        "MERGE INTO orders o USING (VALUES (1)) v(id) ON o.id = v.id "
        "WHEN MATCHED THEN UPDATE SET status = 'x' RETURNING o.*",
        {R, W},
        1,
        1,
    ),
    row("COPY orders FROM STDIN", {W}, 0, UNB),
    row(
        "WITH d AS (DELETE FROM orders WHERE id = 1 RETURNING *) SELECT * FROM d",
        {R, W},
        1,
        1,
    ),
]

LOCKS = [
    row("SELECT * FROM orders WHERE status = 'x' FOR UPDATE", {R, L}, UNB),
    row("SELECT * FROM orders WHERE id > 0 FOR SHARE", {R, L}, UNB),
    row("SELECT * FROM orders o JOIN customers c ON c.id = 1 FOR UPDATE OF c", {R, D}, UNB),
    row("SELECT * FROM orders o JOIN customers c ON c.id = 1 FOR UPDATE OF o", {R, D, L}, UNB),
    row(
        "SELECT (SELECT 1 FROM orders o WHERE o.id = g.g FOR UPDATE) FROM generate_series(1, 5000) g",
        {R, L},
        UNB,
        id="locks-per-generated-row",
    ),
    row("LOCK TABLE orders IN ACCESS SHARE MODE", {R}, 0),
    row("LOCK TABLE orders IN ROW SHARE MODE", {R}, 0),
    row("LOCK TABLE orders IN ROW EXCLUSIVE MODE", {L}, 0),
    row("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE", {L}, 0),
    row("SELECT pg_advisory_lock(1)", {R, L}, 0),
    row("SELECT pg_try_advisory_lock_shared(1)", {R, L}, 0),
    row("SELECT pg_advisory_xact_lock(1)", {R}, 0),
    # LIMIT bounds the rows locked, but the rows OFFSET skips are locked too
    row("SELECT * FROM orders WHERE status = 'x' LIMIT 1 FOR UPDATE", {R}, UNB),
    row("SELECT * FROM orders WHERE status = 'x' LIMIT 10 OFFSET 900 FOR UPDATE", {R}, UNB),
    row("SELECT * FROM orders WHERE status = 'x' LIMIT 1 OFFSET 100000 FOR UPDATE", {R, L}, UNB),
    row("SELECT * FROM orders WHERE status = 'x' LIMIT 1 OFFSET $1 FOR SHARE", {R, L}, UNB),
    row(
        "SELECT * FROM orders WHERE status = 'x' OFFSET 5000 ROWS FETCH FIRST 1 ROW ONLY "
        "FOR NO KEY UPDATE",
        {R, L},
        UNB,
    ),
    row("SELECT * FROM orders WHERE id = 1 OFFSET 100000 FOR UPDATE", {R}, 1),
]

ALL = PROVEN + SHAPES + JOINS + ROWS_NOT_DATA + CHANNELS + WRITES + LOCKS


@pytest.mark.parametrize(("sql", "categories", "reads", "writes"), ALL)
def test_bounds(
    sql: str, categories: frozenset[Category], reads: int | None, writes: int | None
) -> None:
    clear_cache()
    c = classify(sql, keys=KEYS)
    assert c.parse_error is None, c.parse_error
    (st,) = c.statements
    got = (sorted(x.value for x in st.categories), st.read_bound, st.write_bound)
    want = (sorted(x.value for x in categories), reads, writes)
    assert got == want, [r.code for r in st.reasons]


@pytest.mark.parametrize(("sql", "categories", "reads", "writes"), ALL)
def test_without_a_key_catalog_nothing_is_proven(
    sql: str, categories: frozenset[Category], reads: int | None, writes: int | None
) -> None:
    """The same statements with no catalog: every table read or written is unbounded."""
    (st,) = classify(sql).statements
    if reads:
        assert st.read_bound is None
    if writes and sql.split()[0].upper() in ("UPDATE", "DELETE", "MERGE"):
        assert st.write_bound is None


def test_the_table_is_big_enough() -> None:
    assert len(ALL) >= 120


def test_literal_values_that_decide_a_bound_are_not_shared_by_the_cache() -> None:
    """``ANY('{1,2,3}')`` and ``ANY('{1}')`` normalise alike; their bounds differ."""
    clear_cache()
    three = classify("SELECT * FROM orders WHERE id = ANY('{1,2,3}')", keys=KEYS)
    one = classify("SELECT * FROM orders WHERE id = ANY('{1}')", keys=KEYS)
    assert (three.read_bound, one.read_bound) == (3, 1)
    assert classify("SELECT * FROM orders LIMIT 5").statements[0].read_bound is None


def test_results_are_cached_per_catalog_snapshot_and_search_path() -> None:
    clear_cache()
    sql = "SELECT * FROM orders WHERE id = 1"
    assert classify(sql, keys=KEYS).read_bound == 1
    assert classify(sql).read_bound is None
    crm = KEYS.with_search_path(["crm", "public"])
    assert classify(sql, keys=crm).read_bound is None  # crm.orders, which has no key
    newer = KeyCatalog({}, ("public",), version=2)
    assert classify(sql, keys=newer).read_bound is None
    assert classify(sql, keys=KEYS).read_bound == 1


# (sql, table rows read, rows returned): the key proof bounds the rows a statement
# reads of its tables; what it returns can be more, and only a proof of that lets a
# row limit go unwatched (``StatementClass.result_bound``).
RESULTS = [
    ("SELECT * FROM orders WHERE id = 1", 1, 1),
    ("SELECT * FROM orders WHERE id IN (1, 2) UNION ALL SELECT * FROM orders WHERE id = 3", 3, 3),
    ("SELECT o.* FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.id = 1", 2, 1),
    ("SELECT * FROM (SELECT * FROM orders WHERE id = 1) s, orders t WHERE t.id IN (2, 3)", 3, 2),
    ("SELECT o.* FROM orders o, (VALUES (1), (2), (3)) v WHERE o.id = 1", 1, 3),
    ("SELECT count(*) FROM orders", UNB, 1),
    ("SELECT status, count(*) FROM orders WHERE id IN (1, 2) GROUP BY status", 2, 2),
    ("SELECT count(*) FROM orders WHERE id IN (1, 2) GROUP BY ()", 2, 2),
    ("SELECT 1 INTO t FROM orders WHERE id = 1", 1, 0),
    ("COPY (SELECT * FROM orders WHERE id = 1) TO STDOUT", 1, 1),
    # the read is pinned, its result is not
    ("SELECT o.* FROM orders o, generate_series(1, 5000) g WHERE o.id = 1", 1, UNB),
    ("SELECT * FROM ROWS FROM (generate_series(1, 3)) g, orders WHERE orders.id = 1", 1, UNB),
    ("SELECT o.*, generate_series(1, 5000) FROM orders o WHERE o.id = 1", 1, UNB),
    ("SELECT unnest(ARRAY[1, 2]) FROM orders WHERE id = 1", 1, UNB),
    ("SELECT o.id, c.relname FROM orders o, pg_class c WHERE o.id = 1", 1, UNB),
    (
        "SELECT o.* FROM orders o, LATERAL (SELECT * FROM generate_series(1, 9)) g WHERE o.id = 1",
        1,
        UNB,
    ),
    ("SELECT id FROM orders WHERE id = 1 UNION SELECT generate_series(1, 5000)", 1, UNB),
    ("SELECT status FROM orders WHERE id IN (1, 2) GROUP BY ROLLUP (status)", 2, UNB),
    ("SELECT status FROM orders WHERE id IN (1, 2) GROUP BY CUBE (status, id)", 2, UNB),
    ("SELECT status FROM orders WHERE id IN (1, 2) GROUP BY GROUPING SETS ((status), ())", 2, UNB),
    (
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) "
        "SELECT o.* FROM orders o, r WHERE o.id = 1",
        1,
        UNB,
    ),
    ("COPY (SELECT o.* FROM orders o, generate_series(1, 9) g WHERE o.id = 1) TO STDOUT", 1, UNB),
    # under WITH RECURSIVE a CTE read before it is listed is that CTE, not the table:
    # the key of orders pins nothing here
    (
        "WITH RECURSIVE a AS (SELECT * FROM orders WHERE id = 1), "
        "orders AS (SELECT generate_series(1, 5000) AS id) SELECT * FROM a",
        0,
        UNB,
    ),
    (
        "WITH RECURSIVE a AS (SELECT * FROM orders WHERE id = 1), "
        "orders AS (SELECT * FROM customers) SELECT * FROM a",
        UNB,
        UNB,
    ),
]


@pytest.mark.parametrize(("sql", "reads", "returns"), RESULTS, ids=[r[0][:70] for r in RESULTS])
def test_result_bounds(sql: str, reads: int | None, returns: int | None) -> None:
    clear_cache()
    (st,) = classify(sql, keys=KEYS).statements
    assert (st.read_bound, st.result_bound) == (reads, returns)


@pytest.mark.parametrize(
    ("body", "returns"),
    [
        ("SELECT * FROM orders WHERE id = 1", 1),
        ("SELECT o.* FROM orders o, generate_series(1, 5000) g WHERE o.id = 1", UNB),
    ],
)
def test_execute_returns_what_its_prepared_statement_returns(
    body: str, returns: int | None
) -> None:
    c = classify("EXECUTE p", prepared={"p": f"PREPARE p AS {body}"}, keys=KEYS)
    assert (c.read_bound, c.result_bound) == (1, returns)
