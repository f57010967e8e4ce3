"""estimate_rows: the planner's estimate, asked safely, as the agent's own role."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from dbgate.approvals.estimate import estimate_rows, explainable
from tests.integration.approvals_helpers import drop_database, fresh_database

DB = "dbgate_estimate_test"
ROLE = "estimate_agent"
ROLE_PASSWORD = "estimate-agent-pw"


@pytest.fixture(scope="module")
async def agent_connect(pg_server) -> AsyncIterator[dict[str, Any]]:
    dsn = await fresh_database(pg_server, DB)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            f"""
            DROP ROLE IF EXISTS {ROLE};
            CREATE ROLE {ROLE} LOGIN PASSWORD '{ROLE_PASSWORD}';
            CREATE TABLE orders (id int PRIMARY KEY, status text, total numeric);
            INSERT INTO orders SELECT g, CASE WHEN g % 10 = 0 THEN 'open' ELSE 'paid' END, g
              FROM generate_series(1, 5000) g;
            ANALYZE orders;
            CREATE TABLE secrets (id int);
            CREATE SEQUENCE side_effects;
            GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO {ROLE};
            GRANT USAGE, SELECT ON side_effects TO {ROLE};
            -- Mislabelled IMMUTABLE, so the planner evaluates it on constants.
            CREATE FUNCTION writes_when_planned() RETURNS int IMMUTABLE LANGUAGE sql AS
              $$ SELECT nextval('side_effects')::int $$;
            CREATE FUNCTION slow_when_planned() RETURNS int IMMUTABLE LANGUAGE plpgsql AS
              $$ BEGIN PERFORM pg_sleep(30); RETURN 1; END $$;
            -- Mislabelled too, and it says what it read when it fails.
            CREATE TABLE people (id int, full_name text);
            INSERT INTO people VALUES (1, 'Zelda Quist');
            CREATE FUNCTION tells_when_planned(n int) RETURNS int IMMUTABLE LANGUAGE plpgsql
              SECURITY DEFINER AS
              $$ BEGIN RAISE EXCEPTION USING ERRCODE = '22000',
                   MESSAGE = (SELECT full_name FROM people WHERE id = n); END $$;
            -- A STABLE function that reads a PII column: the planner evaluates it
            -- on constants when it estimates a restriction (not only IMMUTABLE ones).
            CREATE TABLE cards (id int, ssn text);
            INSERT INTO cards VALUES (1, '219-09-9999');
            CREATE FUNCTION ssn_of(n int) RETURNS text STABLE LANGUAGE sql SECURITY DEFINER
              AS $$ SELECT ssn FROM cards WHERE id = n $$;
            """
        )
    finally:
        await conn.close()
    yield {
        "host": pg_server.host,
        "port": pg_server.port,
        "user": ROLE,
        "password": ROLE_PASSWORD,
        "database": DB,
    }
    await drop_database(pg_server, DB)
    admin = await asyncpg.connect(pg_server.dsn("postgres"))
    try:
        await admin.execute(f"DROP ROLE IF EXISTS {ROLE}")
    finally:
        await admin.close()


async def test_estimates_for_reads_and_writes(agent_connect) -> None:
    everything = await estimate_rows("SELECT * FROM orders", connect=agent_connect)
    assert everything.rows == 5000 and everything.note == ""
    some = await estimate_rows("SELECT * FROM orders WHERE status = 'open'", connect=agent_connect)
    assert some.rows is not None and 100 <= some.rows <= 1000
    update = await estimate_rows("UPDATE orders SET total = 0", connect=agent_connect)
    assert update.rows == 5000  # the rows it touches, not the rows it returns
    delete = await estimate_rows("DELETE FROM orders WHERE id = $1", ("7",), connect=agent_connect)
    assert delete.rows == 1
    both = await estimate_rows(
        "SELECT 1 FROM orders WHERE id = 1; DELETE FROM orders", connect=agent_connect
    )
    assert both.rows == 5001
    # Nothing ran.
    conn = await asyncpg.connect(**agent_connect)
    try:
        assert await conn.fetchval("SELECT count(*) FROM orders WHERE total = 0") == 0
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("DROP TABLE orders", "DropStmt"),
        ("CREATE TABLE x (a int)", "CreateStmt"),
        ("COPY orders TO STDOUT", "CopyStmt"),
        ("SELECT * INTO copy_of_orders FROM orders", "SELECT INTO"),
        ("SELECT 1; VACUUM orders", "VacuumStmt"),
        ("SELEC 1", "could not be parsed"),
        ("", "empty"),
    ],
)
async def test_statements_the_planner_is_not_asked_about(sql: str, why: str, agent_connect) -> None:
    estimate = await estimate_rows(sql, connect=agent_connect)
    assert estimate.rows is None and why in estimate.note


def test_explainable_splits_statements() -> None:
    stmts, why = explainable("SELECT 1 ; UPDATE t SET a = 'é;' WHERE b = 2")
    assert why == "" and stmts == ["SELECT 1 ", "UPDATE t SET a = 'é;' WHERE b = 2"]


async def test_planning_cannot_write_or_take_long(agent_connect) -> None:
    writes = await estimate_rows(
        "SELECT * FROM orders WHERE id = writes_when_planned()", connect=agent_connect
    )
    assert writes.rows is None and "read-only transaction" in writes.note
    slow = await estimate_rows(
        "SELECT * FROM orders WHERE id = slow_when_planned()",
        connect=agent_connect,
        timeout_seconds=0.5,
    )
    assert slow.rows is None and "statement timeout" in slow.note
    conn = await asyncpg.connect(**agent_connect)
    try:
        assert await conn.fetchval("SELECT is_called FROM side_effects") is False
    finally:
        await conn.close()


async def test_the_agents_role_sees_only_what_it_may(agent_connect) -> None:
    denied = await estimate_rows("SELECT * FROM secrets", connect=agent_connect)
    assert denied.rows is None and "permission denied" in denied.note


async def test_errors_that_quote_values_are_masked(agent_connect) -> None:
    bad = await estimate_rows(
        "DELETE FROM orders WHERE id = $1", ("ann.lee@example.com",), connect=agent_connect
    )
    assert bad.rows is None and "invalid input syntax" in bad.note
    assert "ann.lee@example.com" not in bad.note and '"…"' in bad.note


async def test_errors_echo_no_value_whatever_it_looks_like(agent_connect) -> None:
    # a birth date written the wrong way round, a name: nothing masking by look finds
    for sql, params, secret in [
        ("SELECT * FROM orders WHERE id = $1", ("Zelda Quist",), "Zelda Quist"),
        ("SELECT * FROM orders WHERE id = $1 AND $2::date IS NULL", ("1", "17/31/1980"), "1980"),
        ("SELECT * FROM orders WHERE status::jsonb = '{\"n\": Zelda}'", (), "Zelda"),
        # a function the planner evaluates raises with table data
        ("SELECT * FROM orders WHERE id = tells_when_planned(1)", (), "Zelda"),
        # the server's own errors name a number made of what a STABLE function read
        (
            "SELECT * FROM orders WHERE status = chr(replace(ssn_of(1), '-', '')::int)",
            (),
            "219099999",
        ),
        (
            "SELECT * FROM orders WHERE status = make_date(replace(ssn_of(1), '-', '')::int, 1, 1)::text",
            (),
            "219099999",
        ),
        (
            "SELECT * FROM orders WHERE status = set_bit('\\x00'::bytea, split_part(ssn_of(1), '-', 3)::int, 1)::text",
            (),
            "9999",
        ),
    ]:
        bad = await estimate_rows(sql, params, connect=agent_connect)
        assert bad.rows is None and "could not estimate" in bad.note, bad
        assert secret not in bad.note, bad.note


async def test_an_unreachable_upstream_is_a_note(agent_connect) -> None:
    gone = dict(agent_connect, port=1)
    estimate = await estimate_rows("SELECT 1", connect=gone, timeout_seconds=1)
    assert estimate.rows is None and estimate.note


async def test_the_service_stores_the_estimate_for_approvers(agent_connect, pg_server) -> None:
    import asyncio

    from dbgate.approvals.estimate import make_estimator
    from tests.integration.approvals_helpers import Notices, make_request, running_service

    state = await fresh_database(pg_server, "dbgate_estimate_state_test")
    try:
        estimator = make_estimator(lambda who: agent_connect if who.identity == "agent" else None)
        async with running_service(state, replica="estimating", estimator=estimator) as svc:
            estimated = asyncio.Event()
            svc.waker.subscribe(lambda p: estimated.set() if p.startswith("estimate:") else None)
            await asyncio.wait_for(svc.waker.listening.wait(), 30)
            outcome = await svc.hold(
                make_request("DELETE FROM orders WHERE status = 'open'", wait=0), Notices()
            )
            await asyncio.wait_for(estimated.wait(), 30)
            rec = await svc.store.get(int(outcome.request_id))
            assert rec.estimated_rows is not None and 100 <= rec.estimated_rows <= 1000
            assert rec.estimate_note == ""

            estimated.clear()
            outcome = await svc.hold(
                make_request("DROP TABLE orders", wait=0, identity="other"), Notices()
            )
            await asyncio.wait_for(estimated.wait(), 30)
            rec = await svc.store.get(int(outcome.request_id))
            assert rec.estimated_rows is None
            assert rec.estimate_note == "no upstream connection for this identity"

            # The planner runs a STABLE function on constants to estimate: its rows
            # would be what the function read (a whole SSN, 219099999 rows)
            sql = "SELECT * FROM generate_series(1, replace(ssn_of(1), '-', '')::int)"
            assert (await estimate_rows(sql, connect=agent_connect)).rows == 219099999
            estimated.clear()
            request = make_request(sql, wait=0, categories=("opaque", "read"))
            outcome = await svc.hold(request, Notices())
            await asyncio.wait_for(estimated.wait(), 30)
            rec = await svc.store.get(int(outcome.request_id))
            assert rec.estimated_rows is None and "cannot follow" in rec.estimate_note
    finally:
        await drop_database(pg_server, "dbgate_estimate_state_test")
