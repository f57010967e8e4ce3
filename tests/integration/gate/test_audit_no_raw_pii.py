"""No raw value of a PII column reaches the state database: paths by which the server,
not the agent's text, hands dbgate a value it would record.

Each test compares what dbgate stored (every table of schema ``dbgate``: audit
events, approval requests and their decisions) with the raw values read straight
from the data database.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from dbgate.gate.audit import SERVER_SET_APPLICATION_NAME
from tests.integration.holds.clients import AsyncpgNotices
from tests.integration.holds.harness import HoldsEnv, admin_execute, admin_query, request_id

NAME = "Quirinus Vellacott"
ADDRESS = "77 Marrowbone Lane"
BIRTH = "1961-07-23"


@pytest.fixture(scope="module")
def customers(env: HoldsEnv) -> str:
    admin_execute(
        env.admin_dsn,
        "DROP TABLE IF EXISTS customers",
        "CREATE TABLE customers (id int PRIMARY KEY, full_name text, birth_date date,"
        " address text, note text)",
        f"INSERT INTO customers VALUES (1, '{NAME}', '{BIRTH}', '{ADDRESS}', 'n'),"
        " (2, 'Bob Other', '1970-01-01', 'x', 'm')",
        "GRANT SELECT ON customers TO PUBLIC",
    )
    return "customers"


def stored(env: HoldsEnv) -> list[str]:
    """Every row of every table of schema dbgate, as text (the audit written first)."""
    env.app.call(env.app.app.audit.flush())
    tables = env.app.rows(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'dbgate' AND c.relkind IN ('r', 'p')"
    )
    out: list[str] = []
    for t in tables:
        for r in env.app.rows(f'SELECT t::text AS x FROM dbgate."{t["relname"]}" t'):
            out.append(f"{t['relname']}: {r['x']}")
    return out


def raw_values(env: HoldsEnv) -> list[str]:
    (row,) = admin_query(
        env.admin_dsn, "SELECT full_name, birth_date::text, address FROM customers WHERE id = 1"
    )
    return [str(v) for v in row]


def leaks(env: HoldsEnv) -> list[str]:
    values = raw_values(env)
    return [line[:400] for line in stored(env) if any(v in line for v in values)]


async def approve_each(env: HoldsEnv, running: asyncio.Task[Any], notices: AsyncpgNotices) -> Any:
    """Approve every hold of ``running`` until it answers."""
    while True:
        waiting = asyncio.ensure_future(notices.next())
        done, _ = await asyncio.wait([running, waiting], return_when=asyncio.FIRST_COMPLETED)
        if running in done:
            waiting.cancel()
            return running.result()
        await env.app.aapprove(request_id(waiting.result().message), "ok")


async def test_an_application_name_the_server_fills_from_a_pii_column_is_not_recorded(
    env: HoldsEnv, customers: str
) -> None:
    """``set_config('application_name', full_name, false)``, once approved, makes the
    server report the customer's name as the session's application_name: the result
    row is tokenized, but every later record of the session (and every later approval
    request) carried the name raw, where the scrubber finds no name."""
    conn = await asyncpg.connect(env.dsn, server_settings={"application_name": "crm-agent"})
    notices = AsyncpgNotices(conn)
    try:
        running = asyncio.create_task(
            conn.fetch(
                f"SELECT set_config('application_name', full_name, false) FROM {customers}"
                " WHERE id = 1"
            )
        )
        rows = await approve_each(env, running, notices)
        assert rows[0][0] != NAME  # tokenized
        assert await conn.fetchval("SELECT 41 + 1") == 42
        before = env.app.last_id()
        held = asyncio.create_task(conn.execute(f"DELETE FROM {customers}"))
        rid = request_id((await notices.next()).message)
        request = await env.app.arequest(rid)
        assert rid > before and request["application_name"] == SERVER_SET_APPLICATION_NAME
        await env.app.areject(rid, "no")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await held
    finally:
        await conn.close()
    assert leaks(env) == []
    recs = env.app.rows(
        "SELECT application_name FROM dbgate.audit_log WHERE kind = 'statement'"
        " AND statement = 'SELECT $1 + $2'"
    )
    assert [r["application_name"] for r in recs] == [SERVER_SET_APPLICATION_NAME]


async def test_an_application_name_the_client_sets_is_recorded_as_set(env: HoldsEnv) -> None:
    conn = await asyncpg.connect(env.dsn, server_settings={"application_name": "first-name"})
    try:
        await conn.execute("SET application_name = 'second-name'")  # simple query
        await conn.fetchval("SELECT 101")
        await conn.fetchval("SELECT set_config('application_name', $1, false)", "third-name")
        await conn.fetchval("SELECT 102")
        await conn.execute("RESET application_name")
        await conn.fetchval("SELECT 103")
    finally:
        await conn.close()
    env.app.call(env.app.app.audit.flush())
    recs = env.app.rows(
        "SELECT statement, application_name FROM dbgate.audit_log WHERE kind = 'statement'"
        " AND statement IN ('SET application_name = $1', 'SELECT $1', 'RESET application_name')"
        " ORDER BY chain, seq"
    )
    got = [(r["statement"], r["application_name"]) for r in recs]
    assert ("SET application_name = $1", "second-name") in got
    assert got[-2:] == [("RESET application_name", "first-name"), ("SELECT $1", "first-name")]
    assert ("SELECT $1", "second-name") in got and ("SELECT $1", "third-name") in got


async def test_a_value_compared_with_a_view_column_over_pii_is_masked_for_approvers(
    env: HoldsEnv, customers: str
) -> None:
    """A view column over a PII column (``full_name AS label``) is PII to the gate,
    which tokenizes it; the approver's masking knew only the catalog's columns, so a
    held statement comparing it with a name showed the name, and the approval
    request and its audit records (the text as approvers see it) kept it raw."""
    admin_execute(
        env.admin_dsn,
        "CREATE OR REPLACE VIEW customer_labels AS"
        f" SELECT id, full_name AS label, birth_date AS born FROM {customers}",
        "GRANT SELECT ON customer_labels TO PUBLIC",
    )
    conn = await asyncpg.connect(env.dsn)
    notices = AsyncpgNotices(conn)
    try:
        held = asyncio.create_task(
            conn.execute(
                "CREATE TABLE picked AS SELECT id FROM customer_labels"
                f" WHERE label = '{NAME}' OR born = '{BIRTH}'"
            )
        )
        rid = request_id((await notices.next()).message)
        request = await env.app.arequest(rid)
        await env.app.areject(rid, "no")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await held
    finally:
        await conn.close()
    assert "WHERE label = '<label>' OR born = '<born>'" in request["statement"]
    assert leaks(env) == []


async def test_a_value_approvers_are_shown_is_not_kept_in_the_audit(
    env: HoldsEnv, customers: str
) -> None:
    """Approvers see values in places not known to hold PII (an argument of a function
    of the database's own): they need them to decide. The approval-step records of
    the append-only audit took that text as it was; they now mask every literal, as
    statement records do."""
    admin_execute(
        env.admin_dsn,
        "CREATE OR REPLACE FUNCTION customer_id_by_name(text) RETURNS int STABLE"
        f" LANGUAGE sql AS 'SELECT id FROM {customers} WHERE full_name = $1'",
        "GRANT EXECUTE ON FUNCTION customer_id_by_name(text) TO PUBLIC",
    )
    conn = await asyncpg.connect(env.dsn)
    notices = AsyncpgNotices(conn)
    try:
        held = asyncio.create_task(conn.fetchval(f"SELECT customer_id_by_name('{NAME}')"))
        rid = request_id((await notices.next()).message)
        await env.app.areject(rid, "no")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await held
    finally:
        await conn.close()
    env.app.call(env.app.app.audit.flush())
    recs = env.app.rows(
        "SELECT event, statement FROM dbgate.audit_log WHERE approval_id = $1 OR (kind ="
        " 'statement' AND statement LIKE 'SELECT customer_id_by_name%')",
        str(rid),
    )
    assert {r["statement"] for r in recs} == {"SELECT customer_id_by_name($1)"}
    assert any(r["event"] == "requested" for r in recs)
    assert not [r for r in recs if NAME in r["statement"]]
