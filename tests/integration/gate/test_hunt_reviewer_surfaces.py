"""What approvers and auditors read — the approval request through the API, the
``dbgate.approvals`` view, every table of schema ``dbgate`` — holds no raw value a
held statement hands to a PII column, whatever route the value takes into it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import pytest

from tests.integration.gate.test_audit_no_raw_pii import (  # noqa: F401 - fixture
    NAME,
    customers,
    leaks,
    stored,
)
from tests.integration.holds.clients import AsyncpgNotices
from tests.integration.holds.harness import HoldsEnv, admin_execute, request_id


async def held_and_rejected(env: HoldsEnv, sql: str, *args: object) -> dict[str, Any]:
    """Send ``sql``, wait for its hold, read the request as the API shows it, reject."""
    conn = await asyncpg.connect(env.dsn)
    notices = AsyncpgNotices(conn)
    try:
        held = asyncio.create_task(conn.execute(sql, *args))
        rid = request_id((await notices.next()).message)
        status, request = await env.app.aapi("GET", f"/api/approvals/{rid}")
        assert status == 200, request
        await env.app.areject(rid, "no")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await held
    finally:
        await conn.close()
    return request


async def test_a_bulk_parameter_reaching_pii_through_unnest_is_masked(
    env: HoldsEnv,
    customers: str,  # noqa: F811 - the fixture
) -> None:
    """The drivers' bulk pattern, an array parameter unnested in FROM and compared
    with a PII column there: the parameter sat in no place masking by place knew, and
    the names it carried reached the approver (API, page, Slack) and the approvals
    view raw."""
    request = await held_and_rejected(
        env,
        f"DELETE FROM {customers} c USING unnest($1::text::text[]) x WHERE c.full_name = x",
        f'{{"{NAME}","Bob Other"}}',  # the array's text: asyncpg sends arrays in binary
    )
    assert request["params"] == ["<value>"]
    view = await env.app.arequest(int(request["id"]))
    assert json.loads(view["params"]) == ["<value>"]
    assert leaks(env) == []


async def test_a_value_in_a_set_operation_beside_a_pii_column_is_masked(
    env: HoldsEnv,
    customers: str,  # noqa: F811 - the fixture
) -> None:
    """``SELECT full_name … INTERSECT SELECT 'name'`` compares the literal with the
    column by position, outside any expression masking by place looked into."""
    request = await held_and_rejected(
        env, f"SELECT full_name FROM {customers} INTERSECT SELECT '{NAME}'"
    )
    assert request["statement"].endswith("INTERSECT SELECT '<value>'")
    assert leaks(env) == []


async def test_code_writing_a_column_only_the_catalog_marks_is_masked(env: HoldsEnv) -> None:
    """A column whose name says nothing (``holder``, marked by a ``pii:`` comment) is
    masked by place in a plain statement; in a ``DO`` block or a function's body, whose
    tables the classifier does not read, approvers were shown what it is set to."""
    admin_execute(
        env.admin_dsn,
        "DROP TABLE IF EXISTS holders",
        "CREATE TABLE holders (id int PRIMARY KEY, holder text)",
        "COMMENT ON COLUMN holders.holder IS 'pii:name'",
        "GRANT ALL ON holders TO PUBLIC",
    )
    conn = await asyncpg.connect(env.dsn)
    try:  # a statement naming the new table has dbgate read the schema again
        await conn.fetch("SELECT holder FROM holders WHERE id = 1")
    finally:
        await conn.close()
    do = await held_and_rejected(
        env, f"DO $$BEGIN UPDATE holders SET holder = '{NAME}' WHERE id = 1; END$$"
    )
    body = await held_and_rejected(
        env,
        "CREATE FUNCTION rename_holder() RETURNS void LANGUAGE sql AS"
        f" $$UPDATE holders SET holder = '{NAME}'$$",
    )
    unnamed = await held_and_rejected(  # the column is not named at all
        env, f"DO $$BEGIN INSERT INTO holders VALUES (2, '{NAME}'); END$$"
    )
    assert "SET holder = '<value>'" in do["statement"]
    assert "SET holder = '<value>'" in body["statement"]
    assert "VALUES ('<value>', '<value>')" in unnamed["statement"]
    assert [line for line in stored(env) if NAME in line] == []


async def test_code_held_while_its_transaction_locks_a_view_is_recorded(env: HoldsEnv) -> None:
    """Finding the PII columns of code does not read the schema again: the read waits
    for a lock on a view (``pg_get_viewdef``) that the held session's own open
    transaction may hold, and the held statement would wait for the read for ever."""
    admin_execute(
        env.admin_dsn,
        "DROP VIEW IF EXISTS holder_names",
        "DROP TABLE IF EXISTS holders",
        "CREATE TABLE holders (id int PRIMARY KEY, holder text)",
        "CREATE VIEW holder_names AS SELECT id, holder FROM holders",
        "GRANT ALL ON holders, holder_names TO PUBLIC",
    )
    conn = await asyncpg.connect(env.dsn)
    notices = AsyncpgNotices(conn)
    try:
        await conn.execute("BEGIN")
        lock = asyncio.create_task(conn.execute("LOCK TABLE holder_names IN ACCESS EXCLUSIVE MODE"))
        await env.app.aapprove(request_id((await notices.next()).message), "ok")
        await lock
        held = asyncio.create_task(
            conn.execute("DO $$BEGIN UPDATE holders SET holder = 'x'; END$$")
        )
        rid = request_id((await notices.next()).message)
        await env.app.areject(rid, "no")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await held
    finally:
        await conn.close()
