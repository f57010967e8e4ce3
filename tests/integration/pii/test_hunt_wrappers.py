"""Statements that run another statement (EXPLAIN ANALYZE, EXECUTE, CREATE TABLE AS,
DECLARE, a data-modifying WITH, COPY of a query): what dbgate holds bare is held
wrapped, through the real gate and the demo dataset, every byte compared with the raw
values read straight from the server. No approval service: a hold is a refusal.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.conftest import _admin_execute
from tests.integration.clients.conftest import DemoRole
from tests.integration.conftest import RunningProxy
from tests.integration.pii.test_hunt_sessions_disagree import ddl_proxy  # noqa: F401

SINK = "hunt_wrapped_sink"


@pytest.fixture
def sink(pg_server: Any, demo_db: str, demo_role: DemoRole) -> Iterator[str]:
    """A plain table the agent may write: its ``title`` is not PII by any mark."""
    _admin_execute(
        pg_server,
        f"drop table if exists {SINK}",
        f"create table {SINK} (id bigint, title text)",
        f"grant all on {SINK} to {demo_role.name}",
        dbname=demo_db,
    )
    try:
        yield SINK
    finally:
        _admin_execute(pg_server, f"drop table if exists {SINK}", dbname=demo_db)


def _raw(pg_server: Any, demo_db: str) -> list[str]:
    with psycopg.connect(pg_server.dsn(demo_db)) as direct:
        return [str(r[0]) for r in direct.execute("select email from customers where id < 4")]


def _run(conn: psycopg.Connection[Any], sql: str) -> str:
    try:
        cur = conn.execute(sql)
        return repr(cur.fetchall()) if cur.description else str(cur.statusmessage)
    except psycopg.Error as e:
        return f"{e.diag.sqlstate}: {e}"


@pytest.mark.parametrize(
    "options",
    ["analyze false, analyze", "analyze off, analyze on, costs off", "analyze 0, analyze 1"],
)
def test_explain_runs_by_its_last_analyze_option(
    ddl_proxy: RunningProxy,  # noqa: F811
    pg_server: Any,
    demo_db: str,
    sink: str,
    options: str,
) -> None:
    """PostgreSQL takes the last of several ``analyze`` options: ``EXPLAIN (ANALYZE
    false, ANALYZE) INSERT …`` runs the INSERT. Read as not running, the copy of an
    e-mail into a plain column (held bare) was stored and read back raw; so was a
    table ``CREATE TEMP TABLE … AS`` made under it."""
    got: list[str] = []
    with psycopg.connect(ddl_proxy.dsn(demo_db), autocommit=True) as conn:
        for sql in (
            f"explain ({options}) insert into {sink} select id, email from customers where id = 1",
            f"explain ({options}) update {sink} set title = (select email from customers"
            " where id = 2) where id = 1",
            f"prepare hunt_put(bigint, text) as insert into {sink} values ($1, $2)",
            f"explain ({options}) execute hunt_put(3, (select email from customers where id = 3))",
            f"explain ({options}) create temp table hunt_wrapped as"
            " select id, email as note from customers where id < 4",
        ):
            got.append(_run(conn, sql))
        time.sleep(1)  # a reload after the DDL, had it run
        got.append(_run(conn, f"select id, title from {sink} where id < 10"))
        got.append(_run(conn, "select id, note from hunt_wrapped where id < 10"))
    text = "\n".join(got)
    assert "writes PII (email)" in text, text
    assert "EXECUTE of 'hunt_put' writes" in text, text
    assert "copies PII into a new table" in text, text
    for email in _raw(pg_server, demo_db):
        assert email not in text and email.lower() not in text, text


@pytest.fixture
def may_create(pg_server: Any, demo_db: str, demo_role: DemoRole) -> Iterator[None]:
    """The agent's role may create tables in ``public`` (an approver lets its DDL run)."""
    _admin_execute(pg_server, f"grant create on schema public to {demo_role.name}", dbname=demo_db)
    try:
        yield
    finally:
        _admin_execute(
            pg_server,
            "drop table if exists hunt_checked",
            f"revoke create on schema public from {demo_role.name}",
            dbname=demo_db,
        )


def test_a_column_check_that_keeps_state_is_held_like_a_table_check(
    ddl_proxy: RunningProxy,  # noqa: F811
    pg_server: Any,
    demo_db: str,
    may_create: None,
) -> None:
    """A column's ``CHECK`` runs on every row written to it: one calling a built-in that
    keeps its argument (an advisory lock's key, in ``pg_locks``) left the first two
    characters of the e-mail an ordinary INSERT of it into a PII column wrote, for a
    clean read of ``pg_locks`` — the same CHECK written beside the columns was held."""
    got: list[str] = []
    lock = "pg_try_advisory_xact_lock(ascii(substr(email, 1, 1)), ascii(substr(email, 2, 1)))"
    with psycopg.connect(ddl_proxy.dsn(demo_db), autocommit=True) as conn:
        got.append(_run(conn, f"create table hunt_checked (id int, email text check ({lock}))"))
        time.sleep(1.5)  # the snapshot read again after the DDL
        conn.execute("begin")
        got.append(
            _run(conn, "insert into hunt_checked select id, email from customers where id = 1")
        )
        got.append(_run(conn, "select classid, objid from pg_locks where locktype = 'advisory'"))
        conn.execute("rollback")
    text = "\n".join(got)
    email = _raw(pg_server, demo_db)[0]
    assert f"({ord(email[0])}, {ord(email[1])})" not in text, text
    assert "pg_try_advisory_xact_lock() keeps a value derived from PII" in text, text


@pytest.mark.parametrize(
    "explain",
    [
        "explain create table hunt_planned as execute hunt_by_token",
        "explain (analyze false, costs off) create temp table hunt_planned as"
        " execute hunt_by_token with no data",
    ],
)
def test_a_plan_of_create_table_as_execute_shows_no_resolved_token(
    ddl_proxy: RunningProxy,  # noqa: F811
    pg_server: Any,
    demo_db: str,
    explain: str,
) -> None:
    """A prepared statement's text holds the raw values of the tokens it compared with
    PII; ``EXPLAIN EXECUTE`` of it is tokenized for that, but ``EXPLAIN CREATE TABLE …
    AS EXECUTE`` plans the same statement and printed ``Index Cond: (email =
    'raw@…'::text)``: a token's value in one statement."""
    with psycopg.connect(ddl_proxy.dsn(demo_db), autocommit=True) as conn:
        token = conn.execute("select email from customers where id = 1").fetchone()
        assert token is not None and str(token[0]).startswith("tok_"), token
        conn.execute(
            f"prepare hunt_by_token as select id from customers where email = '{token[0]}'"
        )
        text = _run(conn, explain)
    email = _raw(pg_server, demo_db)[0]
    assert email not in text and email.lower() not in text, text


def test_the_arguments_of_a_plain_explain_execute_are_judged(
    ddl_proxy: RunningProxy,  # noqa: F811
    demo_db: str,
) -> None:
    """PostgreSQL evaluates an EXECUTE's arguments to plan with their values, under a
    plain ``EXPLAIN`` too: ``pg_terminate_backend`` there ended another session of the
    agent's, which the bare call is held for."""
    dsn = ddl_proxy.dsn(demo_db)
    with (
        psycopg.connect(dsn, autocommit=True) as victim,
        psycopg.connect(dsn, autocommit=True) as conn,
    ):
        row = victim.execute("select pg_backend_pid()").fetchone()
        assert row is not None
        conn.execute("prepare hunt_signal(text) as select id from customers where email = $1")
        text = _run(conn, f"explain execute hunt_signal(pg_terminate_backend({row[0]})::text)")
        alive = _run(victim, "select 1")
    assert "pg_terminate_backend" in text and "42501" in text, text
    assert alive == "[(1,)]", alive


def test_select_into_on_the_first_branch_of_a_union_is_a_copy(
    ddl_proxy: RunningProxy,  # noqa: F811
    pg_server: Any,
    demo_db: str,
    may_create: None,
) -> None:
    """The parser leaves ``INTO`` on the first SELECT of a set operation, which stores
    the whole result: ``SELECT id, email AS note INTO t FROM customers … UNION ALL
    SELECT …`` was read as a plain SELECT, and ``note`` came back raw once the snapshot
    knew the table. Held as the bare ``SELECT … INTO`` is."""
    got: list[str] = []
    try:
        with psycopg.connect(ddl_proxy.dsn(demo_db), autocommit=True) as conn:
            got.append(
                _run(
                    conn,
                    "select id, email as note into hunt_checked from customers where id < 4"
                    " union all select 0, 'none'",
                )
            )
            time.sleep(1.5)  # the snapshot read again after the DDL
            got.append(_run(conn, "select id, note from hunt_checked where id < 10"))
    finally:
        _admin_execute(pg_server, "drop table if exists hunt_checked", dbname=demo_db)
    text = "\n".join(got)
    assert "SELECT INTO copies PII into a new table" in text, text
    for email in _raw(pg_server, demo_db):
        assert email not in text and email.lower() not in text, text
