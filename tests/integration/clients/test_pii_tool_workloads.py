"""What the tools around an agent send — LangChain's and LlamaIndex's ``SQLDatabase``
(SQLAlchemy reflection, ``CREATE TABLE`` rendering, sample rows), pandas, BI tools'
catalog sync (Metabase, Grafana, DBeaver, Vanna), psql's meta-commands, ``EXPLAIN``,
the analytics an agent writes, COPY through psycopg's copy API — through dbgate with
PII tokenization on, against the same work sent straight to PostgreSQL.

Like ``test_pii_agent_workloads`` (whose fixtures and comparison this module uses), it
pins the other side of the hunts: nothing here is held or refused unless the shipped
rule pack says so (``rules/default.yaml``: DDL, whole-table reads and collecting
aggregates no key bounds are held, and the tests say which rule), every clean column
comes back as the server sent it, and only PII columns and what the docs say derives
from them (docs/pii.md) are tokenized.
"""

# ruff: noqa: F811 - the fixtures imported from test_pii_agent_workloads are parameters here

from __future__ import annotations

import csv
import io
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pandas as pd
import psycopg
import psycopg2
import pytest
from sqlalchemy import MetaData, inspect, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.schema import CreateTable

from tests.integration.clients.conftest import DemoRole
from tests.integration.clients.expect import assert_refused
from tests.integration.clients.orm_demo import run_engine
from tests.integration.clients.test_pii_agent_workloads import (  # noqa: F401 - fixtures
    CUSTOMER_PII,
    assert_tokenized_only,
    fetch,
    gate_dsn,
    pii_gate,
)
from tests.integration.clients.tools import run

DIALECTS = ("psycopg", "psycopg2", "pg8000", "asyncpg")

# Each: a statement a tool sends and the outputs that come back tokenized.
TOOL_READS: list[tuple[str, set[str]]] = [
    # --- catalog sync of BI tools and SQL clients
    # Metabase: tables with their row estimates (the estimate is a work counter)
    (
        "SELECT n.nspname AS schema, c.relname AS name, CASE c.relkind WHEN 'r' THEN 'TABLE' "
        "WHEN 'p' THEN 'PARTITIONED TABLE' WHEN 'v' THEN 'VIEW' WHEN 'f' THEN 'FOREIGN TABLE' "
        "WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE NULL END AS type, d.description AS description, "
        "stat.n_live_tup AS estimated_row_count FROM pg_catalog.pg_class c "
        "INNER JOIN pg_catalog.pg_namespace n ON c.relnamespace = n.oid "
        "LEFT JOIN pg_catalog.pg_description d ON c.oid = d.objoid AND d.objsubid = 0 "
        "AND d.classoid = 'pg_class'::regclass "
        "LEFT JOIN pg_stat_user_tables stat ON n.nspname = stat.schemaname "
        "AND c.relname = stat.relname WHERE c.relnamespace = n.oid "
        "AND n.nspname !~ '^information_schema|catalog_history|pg_' "
        "AND c.relkind in ('r', 'p', 'v', 'f', 'm') AND n.nspname IN ('public') "
        "ORDER BY type, schema, name",
        {"estimated_row_count"},
    ),
    (
        "SELECT schemaname || '.' || relname AS table_name, "
        "pg_total_relation_size(relid) > 0 AS sized, n_live_tup FROM pg_stat_user_tables "
        "ORDER BY relname",
        {"n_live_tup"},
    ),
    # Metabase: fields, primary keys and comments
    (
        'SELECT c.column_name AS name, c.udt_name AS "database-type", '
        'c.ordinal_position - 1 AS "database-position", c.table_schema AS "table-schema", '
        'c.table_name AS "table-name", pk.column_name IS NOT NULL AS "pk?", '
        "col_description(CAST(CAST(format('%I.%I', CAST(c.table_schema AS text), "
        "CAST(c.table_name AS text)) AS regclass) AS oid), c.ordinal_position) "
        'AS "field-comment" FROM information_schema.columns AS c LEFT JOIN '
        "(SELECT tc.table_schema, tc.table_name, kc.column_name "
        "FROM information_schema.table_constraints AS tc "
        "INNER JOIN information_schema.key_column_usage AS kc "
        "ON (tc.constraint_name = kc.constraint_name) AND (tc.table_schema = kc.table_schema) "
        "AND (tc.table_name = kc.table_name) WHERE tc.constraint_type = 'PRIMARY KEY') AS pk "
        "ON (c.table_schema = pk.table_schema) AND (c.table_name = pk.table_name) "
        "AND (c.column_name = pk.column_name) WHERE c.table_schema IN ('public') "
        'ORDER BY "table-schema" ASC, "table-name" ASC, "database-position" ASC',
        set(),
    ),
    # Metabase: foreign keys
    (
        'SELECT fk_ns.nspname AS "fk-table-schema", fk_table.relname AS "fk-table-name", '
        'fk_column.attname AS "fk-column-name", pk_table.relname AS "pk-table-name", '
        'pk_column.attname AS "pk-column-name" FROM pg_constraint c '
        "JOIN pg_class fk_table ON c.conrelid = fk_table.oid "
        "JOIN pg_namespace fk_ns ON c.connamespace = fk_ns.oid "
        "JOIN pg_attribute fk_column ON c.conrelid = fk_column.attrelid "
        "JOIN pg_class pk_table ON c.confrelid = pk_table.oid "
        "JOIN pg_attribute pk_column ON c.confrelid = pk_column.attrelid "
        "WHERE fk_ns.nspname = 'public' AND c.contype = 'f'::char "
        "AND fk_column.attnum = ANY(c.conkey) AND pk_column.attnum = ANY(c.confkey) "
        "ORDER BY 1, 2, 3",
        set(),
    ),
    # DBeaver: columns with defaults and comments, tables, indexes
    (
        "SELECT c.relname, a.*, pg_catalog.pg_get_expr(ad.adbin, ad.adrelid, true) as def_value, "
        "dsc.description FROM pg_catalog.pg_attribute a "
        "INNER JOIN pg_catalog.pg_class c ON (a.attrelid=c.oid) "
        "LEFT OUTER JOIN pg_catalog.pg_attrdef ad ON (a.attrelid=ad.adrelid AND a.attnum = ad.adnum) "
        "LEFT OUTER JOIN pg_catalog.pg_description dsc ON (c.oid=dsc.objoid "
        "AND a.attnum = dsc.objsubid) WHERE NOT a.attisdropped AND c.relkind not in ('i','I','c') "
        "AND c.oid='customers'::regclass ORDER BY a.attnum",
        set(),
    ),
    (
        "select c.oid, c.relname, c.relkind, c.reloptions, t.relname as tabrelname, "
        "d.description from pg_catalog.pg_class c "
        "left outer join pg_catalog.pg_class t on t.oid=c.reltoastrelid "
        "left outer join pg_catalog.pg_description d on d.objoid=c.oid and d.objsubid=0 "
        "and d.classoid='pg_class'::regclass where c.relnamespace='public'::regnamespace "
        "and c.relkind not in ('i','I','c') order by c.relname",
        set(),
    ),
    (
        "SELECT i.indexrelid::regclass, i.indisunique, i.indkey AS keys, c.relname, "
        "pg_catalog.pg_get_expr(i.indpred, i.indrelid) AS pred_expr, "
        "pg_catalog.pg_get_indexdef(i.indexrelid) AS def, "
        "pg_catalog.pg_relation_size(i.indexrelid) > 0 AS sized "
        "FROM pg_catalog.pg_index i INNER JOIN pg_catalog.pg_class c ON c.oid=i.indexrelid "
        "WHERE i.indrelid='customers'::regclass ORDER BY c.relname",
        set(),
    ),
    (
        "SELECT c.conname, c.contype, pg_catalog.pg_get_constraintdef(c.oid, true) AS condef, "
        "c.conrelid::regclass, c.confrelid::regclass FROM pg_catalog.pg_constraint c "
        "WHERE c.connamespace = 'public'::regnamespace ORDER BY 1",
        set(),
    ),
    (
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, "
        "col_description(a.attrelid, a.attnum), pg_get_expr(d.adbin, d.adrelid) "
        "FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid "
        "AND d.adnum = a.attnum WHERE a.attrelid = 'public.customers'::regclass "
        "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        set(),
    ),
    (
        "SELECT table_name, obj_description((quote_ident(table_schema) || '.' || "
        "quote_ident(table_name))::regclass, 'pg_class') FROM information_schema.tables "
        "WHERE table_schema = 'public' ORDER BY 1",
        set(),
    ),
    # Grafana: tables on the search_path, columns, a time series
    (
        "SELECT quote_ident(table_name) AS table_name FROM information_schema.tables "
        "WHERE quote_ident(table_schema) NOT IN ('information_schema', 'pg_catalog') "
        "AND table_type = 'BASE TABLE' AND quote_ident(table_schema) IN (SELECT CASE WHEN "
        "trim(s[i]) = '\"$user\"' THEN user ELSE trim(s[i]) END FROM generate_series("
        "array_lower(string_to_array(current_setting('search_path'), ','), 1), "
        "array_upper(string_to_array(current_setting('search_path'), ','), 1)) AS i, "
        "string_to_array(current_setting('search_path'), ',') s) ORDER BY 1",
        set(),
    ),
    (
        'SELECT quote_ident(column_name) AS "column", data_type AS "type" '
        "FROM information_schema.columns WHERE quote_ident(table_name) = 'orders' ORDER BY 1",
        set(),
    ),
    (
        'SELECT floor(extract(epoch FROM created_at) / 3600) * 3600 AS "time", '
        'count(*) AS "orders", sum(total) FROM orders '
        "WHERE created_at BETWEEN '2024-01-01T00:00:00Z' AND '2024-01-08T00:00:00Z' "
        "GROUP BY 1 ORDER BY 1",
        set(),
    ),
    # Vanna: the whole information schema
    ("SELECT * FROM INFORMATION_SCHEMA.COLUMNS WHERE table_schema = 'public'", set()),
    # --- Metabase's questions, every column schema-qualified
    (
        'SELECT DATE_TRUNC(\'month\', "public"."orders"."created_at") AS "created_at", '
        'COUNT(*) AS "count" FROM "public"."orders" '
        'GROUP BY DATE_TRUNC(\'month\', "public"."orders"."created_at") '
        'ORDER BY DATE_TRUNC(\'month\', "public"."orders"."created_at") ASC',
        set(),
    ),
    (
        'SELECT "public"."orders"."id" AS "id", "public"."orders"."total" AS "total", '
        '"Customers - Customer"."full_name" AS "Customers - Customer__full_name", '
        '"Customers - Customer"."email" AS "Customers - Customer__email", '
        '"Customers - Customer"."created_at" AS "Customers - Customer__created_at" '
        'FROM "public"."orders" LEFT JOIN "public"."customers" AS "Customers - Customer" '
        'ON "public"."orders"."customer_id" = "Customers - Customer"."id" '
        'WHERE "public"."orders"."customer_id" = 42 LIMIT 2000',
        {"Customers - Customer__full_name", "Customers - Customer__email"},
    ),
    (
        'SELECT "source"."email" AS "email", "source"."n" AS "n" FROM '
        '(SELECT "public"."customers"."email" AS "email", COUNT(*) AS "n" '
        'FROM "public"."customers" INNER JOIN "public"."orders" '
        'ON "public"."orders"."customer_id" = "public"."customers"."id" '
        'GROUP BY "public"."customers"."email") AS "source" '
        'ORDER BY "source"."n" DESC, "source"."email" ASC LIMIT 10',
        {"email"},
    ),
    # a question built on another (Metabase), a virtual dataset (Superset): the same
    # segment count, wrapped
    (
        'SELECT "source"."status" AS "status", "source"."count" AS "count" FROM '
        "(SELECT o.status, count(*) AS count FROM orders o JOIN customers c "
        "ON c.id = o.customer_id WHERE c.email LIKE '%@gmail.com' GROUP BY o.status) "
        'AS "source" ORDER BY "source"."count" DESC, "source"."status" LIMIT 1048575',
        set(),
    ),
    (
        "SELECT * FROM (SELECT o.status, count(DISTINCT o.customer_id) AS customers "
        "FROM orders o WHERE o.customer_id IN (SELECT id FROM customers "
        "WHERE email LIKE '%@yahoo.com') GROUP BY o.status) AS virtual_table ORDER BY 1 LIMIT 1001",
        set(),
    ),
    (
        "WITH agg AS (SELECT o.status, count(*) AS n FROM orders o JOIN customers c "
        "ON c.id = o.customer_id WHERE c.email LIKE '%@gmail.com' GROUP BY o.status) "
        "SELECT * FROM agg ORDER BY n DESC, status",
        set(),
    ),
    # Tableau and Superset
    (
        'SELECT CAST("customers"."email" AS TEXT) AS "email", SUM("orders"."total") AS "sum" '
        'FROM "public"."orders" "orders" INNER JOIN "public"."customers" "customers" '
        'ON ("orders"."customer_id" = "customers"."id") WHERE "customers"."id" < 30 '
        "GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 10",
        {"email"},
    ),
    (
        "SELECT status AS status, count(*) AS count FROM (SELECT o.status, c.email FROM orders o "
        "JOIN customers c ON c.id = o.customer_id) AS virtual_table "
        "WHERE email LIKE '%gmail.com' GROUP BY status ORDER BY count DESC, status LIMIT 10000",
        set(),
    ),
    # DBeaver's row count of a result
    ("SELECT COUNT(*) FROM (SELECT * FROM customers WHERE id < 100) dbvrcnt", set()),
    # --- EXPLAIN of ordinary queries (plan shape only: no costs to drift between runs)
    (
        "EXPLAIN (COSTS OFF) SELECT o.id, c.email FROM orders o "
        "JOIN customers c ON c.id = o.customer_id WHERE o.id < 10",
        set(),
    ),
    (
        "EXPLAIN (FORMAT JSON, COSTS OFF) SELECT o.status, count(DISTINCT o.customer_id) "
        "FROM orders o JOIN customers c ON c.id = o.customer_id GROUP BY o.status",
        set(),
    ),
    # --- the analytics an agent writes
    # cohorts and retention on created_at
    (
        "WITH cohorts AS (SELECT id AS customer_id, date_trunc('month', created_at) AS cohort "
        "FROM customers), activity AS (SELECT o.customer_id, date_trunc('month', o.created_at) "
        "AS m FROM orders o) SELECT c.cohort, a.m, count(DISTINCT a.customer_id) AS active "
        "FROM cohorts c JOIN activity a USING (customer_id) GROUP BY 1, 2 ORDER BY 1, 2 LIMIT 200",
        set(),
    ),
    (
        "WITH first AS (SELECT customer_id, min(created_at) AS first_at FROM orders "
        "GROUP BY customer_id) SELECT date_trunc('month', first_at) AS cohort, "
        "count(*) AS customers, count(*) FILTER (WHERE EXISTS (SELECT 1 FROM orders o "
        "WHERE o.customer_id = first.customer_id "
        "AND o.created_at > first.first_at + interval '30 days')) AS retained "
        "FROM first GROUP BY 1 ORDER BY 1",
        set(),
    ),
    # percentiles: one fraction, and quartiles written out
    (
        "SELECT status, percentile_cont(0.5) WITHIN GROUP (ORDER BY total) AS median, "
        "percentile_cont(ARRAY[0.25, 0.5, 0.75]) WITHIN GROUP (ORDER BY total) AS quartiles "
        "FROM orders GROUP BY status ORDER BY status",
        set(),
    ),
    # FILTER, GROUPING SETS, ROLLUP, CUBE on clean columns
    (
        "SELECT status, count(*) FILTER (WHERE total > 100) AS big, count(*) FROM orders "
        "GROUP BY status ORDER BY 1",
        set(),
    ),
    (
        "SELECT status, date_trunc('year', created_at) y, count(*), sum(total) FROM orders "
        "GROUP BY GROUPING SETS ((status), (date_trunc('year', created_at)), ()) ORDER BY 1, 2",
        set(),
    ),
    (
        "SELECT status, date_trunc('year', created_at) y, count(*) FROM orders "
        "GROUP BY ROLLUP (status, date_trunc('year', created_at)) ORDER BY 1, 2",
        set(),
    ),
    (
        "SELECT status, date_trunc('year', created_at) y, count(*), GROUPING(status) "
        "FROM orders GROUP BY CUBE (status, date_trunc('year', created_at)) ORDER BY 1, 2",
        set(),
    ),
    # data quality: missing values, distinct counts
    (
        "SELECT count(*) AS total, count(email) AS with_email, "
        "count(DISTINCT email) AS unique_emails, count(*) - count(phone) AS no_phone, "
        "count(*) FILTER (WHERE phone IS NULL) AS missing_phone, "
        "count(*) FILTER (WHERE email IS NULL OR address IS NULL) AS incomplete FROM customers",
        set(),
    ),
    (
        "SELECT id, phone IS NULL AS no_phone, CASE WHEN address IS NULL THEN 'missing' "
        "ELSE 'ok' END AS addr FROM customers WHERE id < 6 ORDER BY id",
        set(),
    ),
    (
        "SELECT sum(CASE WHEN phone IS NULL THEN 1 ELSE 0 END) AS missing_phone, "
        "round(100.0 * count(phone) / count(*), 1) AS pct_with_phone FROM customers",
        set(),
    ),
    # windows: running totals, moving averages, shares
    (
        "SELECT id, created_at, total, sum(total) OVER (ORDER BY created_at, id "
        "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS running FROM orders "
        "ORDER BY created_at, id LIMIT 100",
        set(),
    ),
    (
        "SELECT customer_id, created_at, total, sum(total) OVER w AS running, "
        "avg(total) OVER (PARTITION BY customer_id ORDER BY created_at ROWS 2 PRECEDING) "
        "AS moving, lag(total) OVER w AS prev FROM orders WHERE customer_id IN (1, 2, 3) "
        "WINDOW w AS (PARTITION BY customer_id ORDER BY created_at, id) "
        "ORDER BY customer_id, created_at, id",
        set(),
    ),
    (
        "SELECT status, count(*) AS n, round(100.0 * count(*) / sum(count(*)) OVER (), 2) AS pct "
        "FROM orders GROUP BY status ORDER BY n DESC, status",
        set(),
    ),
    # customers ranked by spend over a sub-select grouped by e-mail
    (
        "SELECT s.email, s.spent, rank() OVER (ORDER BY s.spent DESC) AS rnk, "
        "dense_rank() OVER (ORDER BY s.spent DESC) AS drnk FROM (SELECT c.email, "
        "sum(o.total) AS spent FROM customers c JOIN orders o ON o.customer_id = c.id "
        "WHERE c.id < 60 GROUP BY c.email) s ORDER BY rnk, s.spent DESC LIMIT 10",
        {"email"},
    ),
    # a calendar left-joined to orders
    (
        "SELECT d::date AS day, count(o.id), coalesce(sum(o.total), 0) "
        "FROM generate_series('2024-01-01'::date, '2024-03-31'::date, interval '1 day') d "
        "LEFT JOIN orders o ON o.created_at::date = d::date GROUP BY 1 ORDER BY 1",
        set(),
    ),
    # CTE chains, LATERAL top-N per group
    (
        "WITH a AS (SELECT customer_id, count(*) n, sum(total) s FROM orders GROUP BY customer_id), "
        "b AS (SELECT n, count(*) customers, avg(s) avg_s FROM a GROUP BY n) "
        "SELECT * FROM b ORDER BY n",
        set(),
    ),
    (
        "SELECT s.status, t.id, t.total FROM (SELECT DISTINCT status FROM orders) s "
        "CROSS JOIN LATERAL (SELECT id, total FROM orders o WHERE o.status = s.status "
        "ORDER BY total DESC, id LIMIT 3) t ORDER BY 1, 3 DESC, 2",
        set(),
    ),
    (
        "SELECT c.id, c.full_name, o.n, o.spent FROM customers c JOIN LATERAL "
        "(SELECT count(*) n, sum(total) spent FROM orders WHERE customer_id = c.id) o ON true "
        "WHERE c.id BETWEEN 40 AND 45 ORDER BY c.id",
        {"full_name"},
    ),
    # JSON built from clean columns; COALESCE/NULLIF of clean columns
    (
        "SELECT json_build_object('status', status, 'n', count(*), 'total', sum(total)) "
        "FROM orders GROUP BY status ORDER BY status",
        set(),
    ),
    (
        "SELECT json_agg(json_build_object('id', o.id, 'total', o.total) ORDER BY o.id) "
        "FROM orders o WHERE o.id IN (1, 2, 3)",
        set(),
    ),
    (
        "SELECT coalesce(nullif(status, 'paid'), 'PAID') AS st, count(*) FROM orders "
        "GROUP BY 1 ORDER BY 1",
        set(),
    ),
    # one customer by id, PII as tokens; customers joined to orders by id
    (
        "SELECT c.id, c.email, c.full_name, c.phone, c.birth_date, c.address, "
        "count(o.id) AS orders, coalesce(sum(o.total), 0) AS spent FROM customers c "
        "LEFT JOIN orders o ON o.customer_id = c.id WHERE c.id = 42 GROUP BY c.id",
        {"email", "full_name", "phone", "birth_date", "address"},
    ),
    (
        "SELECT o.status, count(*), sum(o.total), count(DISTINCT o.customer_id) FROM customers c "
        "JOIN orders o ON o.customer_id = c.id GROUP BY o.status ORDER BY o.status",
        set(),
    ),
    ("SELECT count(DISTINCT customer_id) FROM orders", set()),
]


@pytest.mark.parametrize("sql,tokenized", TOOL_READS, ids=[s[:80] for s, _ in TOOL_READS])
def test_tool_reads_run_with_only_pii_tokenized(
    direct_dsn: str, gate_dsn: str, sql: str, tokenized: set[str]
) -> None:
    assert_tokenized_only(sql, fetch(direct_dsn, sql), fetch(gate_dsn, sql), tokenized)


def test_collecting_an_unbounded_set_of_rows_is_held_as_the_rules_say(gate_dsn: str) -> None:
    """``jsonb_agg`` over a customer's orders (``customer_id`` is no unique key): the
    rule pack holds a collecting aggregate no key bounds (docs/rules.md); not a false
    positive, pinned so that a change is seen."""
    sql = (
        "SELECT jsonb_agg(jsonb_build_object('id', id, 'total', total) ORDER BY id) "
        "FROM orders WHERE customer_id = 42"
    )
    with pytest.raises(psycopg.Error) as raised:
        fetch(gate_dsn, sql)
    assert_refused(raised.value, sql)


def reflect(engine: Engine) -> list[Any]:
    """What LangChain's and LlamaIndex's ``SQLDatabase`` read to describe a database to
    the model: table and view names, each table reflected and rendered as ``CREATE
    TABLE``, its indexes, comment and keys, and three sample rows
    (``select(table).limit(3)``)."""
    insp = inspect(engine)
    out: list[Any] = [sorted(insp.get_table_names()), insp.get_view_names()]
    metadata = MetaData()
    metadata.reflect(bind=engine, views=True)
    with engine.connect() as conn:
        for table in sorted(metadata.sorted_tables, key=lambda t: t.name):
            out.append(str(CreateTable(table).compile(engine)).rstrip())
            out.append(insp.get_indexes(table.name))
            out.append(insp.get_table_comment(table.name))
            out.append(insp.get_foreign_keys(table.name))
            out.append([table.name, list(conn.execute(select(table).limit(3)).mappings())])
        out.append(
            conn.execute(
                text("SELECT status, count(*) FROM orders GROUP BY status ORDER BY 1")
            ).fetchall()
        )
    return out


@pytest.mark.parametrize("dialect", DIALECTS)
def test_langchain_sql_database_table_info(direct_dsn: str, gate_dsn: str, dialect: str) -> None:
    direct = run_engine(dialect, direct_dsn, reflect)
    gate = run_engine(dialect, gate_dsn, reflect)
    assert len(gate) == len(direct)
    for raw, seen in zip(direct, gate, strict=True):
        if not (isinstance(raw, list) and len(raw) == 2 and isinstance(raw[1], list)):
            assert seen == raw
            continue
        assert seen[0] == raw[0] and len(seen[1]) == len(raw[1]) == 3, seen
        for raw_row, seen_row in zip(raw[1], seen[1], strict=True):
            for column, value in raw_row.items():
                got = seen_row[column]
                if column in CUSTOMER_PII or column == "card_number":
                    assert type(got) is type(value), (column, got)
                    if isinstance(value, str):
                        assert got.startswith("tok_") and got != value, (column, got)
                else:
                    assert got == value, (raw[0], column, got, value)


PII_FRAME = (
    "SELECT id, full_name, email, birth_date, created_at FROM customers WHERE id <= 40 ORDER BY id"
)
CLEAN_CHUNKS = (
    "SELECT id, customer_id, total, status, created_at FROM orders "
    "WHERE customer_id < %(n)s ORDER BY id"
)


def pandas_reads(dsn: str) -> dict[str, pd.DataFrame]:
    """``read_sql_query`` with SQLAlchemy (three dialects) and a psycopg2 connection, in
    chunks, with dates parsed and nullable dtypes inferred."""
    out: dict[str, pd.DataFrame] = {}
    for dialect in ("psycopg2", "psycopg", "pg8000"):

        def read(engine: Engine, dialect: str = dialect) -> None:
            out[f"{dialect} pii"] = pd.read_sql_query(PII_FRAME, engine, parse_dates=["birth_date"])
            out[f"{dialect} chunks"] = pd.concat(
                pd.read_sql_query(
                    text(CLEAN_CHUNKS.replace("%(n)s", ":n")),
                    engine,
                    params={"n": 50},
                    chunksize=37,
                )
            )
            out[f"{dialect} nullable"] = pd.read_sql(
                "SELECT o.id, o.total, c.birth_date, c.created_at FROM orders o "
                "JOIN customers c ON c.id = o.customer_id WHERE c.id < 20 ORDER BY o.id",
                engine,
                dtype_backend="numpy_nullable",
            )

        run_engine(dialect, dsn, read)
    with psycopg2.connect(dsn) as conn, warnings.catch_warnings():
        warnings.filterwarnings("ignore", "pandas only supports SQLAlchemy", UserWarning)
        out["dbapi chunks"] = pd.concat(
            pd.read_sql_query(CLEAN_CHUNKS, conn, params={"n": 50}, chunksize=25)
        )
        out["dbapi pii"] = pd.concat(
            pd.read_sql_query(
                "SELECT id, email, created_at FROM customers WHERE id < 100 ORDER BY id",
                conn,
                chunksize=10,
            )
        )
    return out


def test_pandas_read_sql_frames(direct_dsn: str, gate_dsn: str) -> None:
    direct, gate = pandas_reads(direct_dsn), pandas_reads(gate_dsn)
    assert direct.keys() == gate.keys()
    for key, raw in direct.items():
        seen = gate[key]
        assert list(seen.dtypes) == list(raw.dtypes), key
        assert len(seen) == len(raw) > 0, key
        for column in raw.columns:
            if column == "birth_date":  # a stand-in date, of the same dtype
                continue
            if column in CUSTOMER_PII:
                tokens, values = list(seen[column]), list(raw[column])
                assert all(t.startswith("tok_") for t in tokens), (key, column)
                assert not set(tokens) & set(values), (key, column)
                continue
            pd.testing.assert_series_equal(seen[column], raw[column], obj=f"{key}.{column}")


@pytest.fixture
def scratch(admin_dsn: str, demo_role: DemoRole) -> Iterator[str]:
    """A table of this test's own, made by the server's user (DDL through dbgate is
    held), for pandas' ``to_sql(if_exists='append')``."""
    name = f"scratch_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f"create table {name} (status text, n bigint, total numeric(12,2), day date)")
        admin.execute(f"grant select, insert, update, delete on {name} to {demo_role.name}")
    yield name
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f"drop table {name}")


def copy_rows(table: Any, conn: Any, keys: list[str], data_iter: Iterator[Any]) -> None:
    """The ``to_sql(method=...)`` of pandas' documentation for PostgreSQL: the rows as
    CSV through ``COPY ... FROM STDIN`` (psycopg2's ``copy_expert``)."""
    buffer = io.StringIO()
    csv.writer(buffer).writerows(data_iter)
    buffer.seek(0)
    columns = ", ".join(f'"{k}"' for k in keys)
    with conn.connection.cursor() as cur:
        cur.copy_expert(f"COPY {table.name} ({columns}) FROM STDIN WITH CSV", buffer)


@pytest.mark.parametrize(
    "dialect,method",
    [("psycopg2", None), ("psycopg", None), ("pg8000", None), ("psycopg2", copy_rows)],
)
def test_pandas_to_sql_into_a_scratch_table_and_back(
    gate_dsn: str, scratch: str, dialect: str, method: Any
) -> None:
    frame = pd.DataFrame(
        {
            "status": ["paid", "shipped"],
            "n": [3, 4],
            "total": [1.5, 2.25],
            "day": pd.to_datetime(["2024-01-01", "2024-01-02"]).date,
        }
    )

    def write_and_read(engine: Engine) -> pd.DataFrame:
        frame.to_sql(scratch, engine, if_exists="append", index=False, method=method)
        return pd.read_sql(
            text(f"SELECT status, n, total, day FROM {scratch} WHERE n > :m ORDER BY n LIMIT 50"),
            engine,
            params={"m": 0},
        )

    back = run_engine(dialect, gate_dsn, write_and_read)
    assert back.to_dict("list") == frame.to_dict("list")


PSQL_COMMANDS = [
    r"\d+ customers",
    r"\dt+",
    r"\di+",
    r"\dv",
    r"\dm",
    r"\du",
    r"\dT",
    r"\dx",
    r"\dp",
    r"\df+",
    r"\dn+",
    r"\dd",
    r"\dD",
]


@pytest.mark.parametrize("command", PSQL_COMMANDS)
def test_psql_meta_commands(direct_dsn: str, gate_dsn: str, command: str) -> None:
    """The meta-commands ``test_pii_agent_workloads`` does not run: the same output (an
    empty list says so on standard error, on both sides)."""
    args = ("-X", "-v", "ON_ERROR_STOP=1", "-c", command)
    direct, gate = run("psql", direct_dsn, *args), run("psql", gate_dsn, *args)
    assert (gate.returncode, gate.stderr, gate.stdout) == (
        direct.returncode,
        direct.stderr,
        direct.stdout,
    )
    assert gate.returncode == 0


def test_psql_expanded_wide_row(direct_dsn: str, gate_dsn: str) -> None:
    args = ("-X", "-v", "ON_ERROR_STOP=1", "-c", r"\x on", "-c")
    sql = "SELECT * FROM customers WHERE id = 7"
    direct, gate = run("psql", direct_dsn, *args, sql), run("psql", gate_dsn, *args, sql)
    assert gate.returncode == 0 and gate.stderr == "", gate

    def fields(out: str) -> dict[str, str]:
        pairs = (line.partition("|") for line in out.splitlines())
        return {k.strip(): v.strip() for k, sep, v in pairs if sep}

    raw, seen = fields(direct.stdout), fields(gate.stdout)
    assert seen.keys() == raw.keys()
    for name, value in raw.items():
        if name in CUSTOMER_PII and name != "birth_date":
            assert seen[name].startswith("tok_") and seen[name] != value, name
        elif name != "birth_date":
            assert seen[name] == value, name


def copy_out(dsn: str, sql: str) -> bytes:
    with psycopg.connect(dsn) as conn, conn.cursor().copy(sql) as copy:
        return b"".join(bytes(block) for block in copy)


COPY_CLEAN = [
    "COPY (SELECT id, status, total FROM orders WHERE customer_id < 5 ORDER BY id) TO STDOUT",
    "COPY (SELECT id, status, total FROM orders WHERE customer_id < 5 ORDER BY id) "
    "TO STDOUT WITH (FORMAT csv, HEADER)",
    "COPY (SELECT status, count(*), sum(total) FROM orders GROUP BY status ORDER BY 1) "
    "TO STDOUT WITH CSV HEADER",
    "COPY (SELECT id, status, total FROM orders WHERE customer_id < 5 ORDER BY id) "
    "TO STDOUT (FORMAT BINARY)",
]


@pytest.mark.parametrize("sql", COPY_CLEAN)
def test_copy_of_a_filtered_query_through_psycopg(direct_dsn: str, gate_dsn: str, sql: str) -> None:
    assert copy_out(gate_dsn, sql) == copy_out(direct_dsn, sql)


def test_copy_of_pii_is_tokenized_and_of_a_whole_table_held(direct_dsn: str, gate_dsn: str) -> None:
    sql = (
        "COPY (SELECT id, created_at, email FROM customers WHERE id < 4 ORDER BY id) "
        "TO STDOUT WITH (FORMAT csv)"
    )
    raw = copy_out(direct_dsn, sql).decode().splitlines()
    seen = copy_out(gate_dsn, sql).decode().splitlines()
    assert len(seen) == len(raw) == 3
    for raw_line, seen_line in zip(raw, seen, strict=True):
        raw_id, raw_at, raw_email = raw_line.split(",")
        seen_id, seen_at, seen_email = seen_line.split(",")
        assert (seen_id, seen_at) == (raw_id, raw_at)
        assert seen_email.startswith("tok_email_") and seen_email != raw_email
    for whole in (
        "COPY orders (id, status) TO STDOUT",
        "COPY (SELECT id, status, total FROM orders) TO STDOUT",
    ):  # held by the rules (hold-export, hold-dump), not by PII
        with pytest.raises(psycopg.Error) as raised:
            copy_out(gate_dsn, whole)
        assert_refused(raised.value, whole)


def test_scratch_objects_of_the_agent_are_ddl_the_rules_hold(gate_dsn: str) -> None:
    """A temporary table, ``CREATE TABLE AS`` and ``SELECT INTO`` from clean columns are
    DDL, which the shipped rules hold (hold-ddl) whatever they copy: not a false
    positive of tokenization."""
    for sql in (
        "CREATE TEMP TABLE t_scratch AS SELECT id, status, total FROM orders "
        "WHERE customer_id < 10",
        "CREATE TEMP TABLE t_scratch2 (id int, v numeric)",
        "SELECT id, status INTO TEMP t_scratch3 FROM orders WHERE id < 5",
    ):
        with pytest.raises(psycopg.Error) as raised:
            fetch(gate_dsn, sql)
        assert_refused(raised.value, sql)


def test_a_whole_row_reference_replaces_its_clean_fields_too(
    direct_dsn: str, gate_dsn: str
) -> None:
    """A table's row type as one value (``SELECT c``, decoded by psycopg's composite
    adapter): every field is replaced by its type's rule, the clean ones too — an
    accepted false positive (docs/pii.md, "Every path out"); ``c.*`` keeps them."""
    from psycopg.types.composite import CompositeInfo, register_composite

    def rows(dsn: str) -> tuple[Any, Any]:
        with psycopg.connect(dsn) as conn:
            info = CompositeInfo.fetch(conn, "customers")
            assert info is not None
            register_composite(info, conn)
            whole = conn.execute("SELECT c FROM customers c WHERE id = 3").fetchone()
            star = conn.execute("SELECT c.* FROM customers c WHERE id = 3").fetchone()
        assert whole is not None and star is not None
        return whole[0], star

    (raw, raw_star), (seen, seen_star) = rows(direct_dsn), rows(gate_dsn)
    assert seen.email.startswith("tok_") and seen.email != raw.email
    assert type(seen.id) is int and type(seen.created_at) is type(raw.created_at)
    assert (seen_star[0], seen_star[-1]) == (raw_star[0], raw_star[-1]) == (3, raw.created_at)
