"""Held statements through asyncpg, against a whole dbgate with the default rules.

asyncpg sends ``execute(sql)`` without arguments as a simple Query and everything
else through named prepared statements (Parse/Describe/Sync, then Bind/Execute/Sync,
re-using the statement the next time): the second is where a held statement must be
held again at every execution, not only the first.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tests.integration.holds.clients import (
    AsyncpgNotices,
    cancel_asyncpg,
    check_retry_error,
)
from tests.integration.holds.harness import (
    APPROVER,
    OTHER_AGENT,
    OTHER_PASSWORD,
    OWNER,
    PUBLIC_URL,
    HoldsEnv,
    admin_execute,
    admin_query,
)


async def connect(holds: HoldsEnv, **kwargs: object) -> tuple[asyncpg.Connection, AsyncpgNotices]:
    conn = await asyncpg.connect(holds.dsn, **kwargs)  # type: ignore[arg-type]
    return conn, AsyncpgNotices(conn)


async def test_approved_simple_query_runs_once_the_notice_named_it(holds: HoldsEnv) -> None:
    t = holds.table("ap_approved", 3)
    conn, notices = await connect(holds)
    try:
        running = asyncio.create_task(conn.execute(f"DELETE FROM {t}"))
        rid = await notices.held()
        assert not running.done() and holds.count(t) == 3
        pending = await holds.app.arequest(rid)
        assert (pending["status"], pending["statement"], pending["rule"]) == (
            "pending",
            f"DELETE FROM {t}",
            "hold-destructive",
        )
        assert pending["identity"] == "agent" and pending["replica"] == holds.app.replica
        await holds.app.aapprove(rid, "cleanup agreed")
        assert await running == "DELETE 3"
        assert holds.count(t) == 0
        done = await holds.app.await_status(rid, "executed")
        assert done["decided_by"] == [APPROVER] and done["reason"] == "cleanup agreed"
        assert await conn.fetchval("SELECT 41 + 1") == 42  # the session goes on
        assert notices.empty()
    finally:
        await conn.close()


async def test_a_prepared_statement_is_held_at_every_execution(holds: HoldsEnv) -> None:
    """Regression: an approval given at Parse covered every later Bind of asyncpg's
    cached prepared statement, so the second run went through unasked."""
    t = holds.table("ap_prepared", 3)
    sql = f"UPDATE {t} SET note = $1 RETURNING id"
    conn, notices = await connect(holds)
    try:
        first = asyncio.create_task(conn.fetch(sql, "first"))
        rid = await notices.held()
        await holds.app.aapprove(rid)
        assert sorted(r["id"] for r in await first) == [1, 2, 3]
        assert holds.notes(t) == ["first"] * 3
        second = asyncio.create_task(conn.fetch(sql, "second"))  # Bind/Execute only
        rid2 = await notices.held()
        assert rid2 != rid
        await holds.app.areject(rid2, "once was enough")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await second
        assert holds.notes(t) == ["first"] * 3
        third = asyncio.create_task(conn.fetch(sql, "third"))
        await holds.app.aapprove(await notices.held())
        assert len(await third) == 3
        assert holds.notes(t) == ["third"] * 3
    finally:
        await conn.close()


async def test_rejected_is_42501_with_the_approvers_reason(holds: HoldsEnv) -> None:
    t = holds.table("ap_rejected", 3)
    conn, notices = await connect(holds)
    try:
        running = asyncio.create_task(conn.execute(f"TRUNCATE {t}"))
        rid = await notices.held()
        await holds.app.areject(rid, "not during business hours")
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as info:
            await running
        e = info.value
        assert e.sqlstate == "42501"
        assert e.message == (
            f"dbgate: approval request {rid} was rejected by {APPROVER}: not during business hours"
        )
        assert e.detail.startswith("the statement needed approval: ")
        assert "hold-destructive" in e.hint
        assert holds.count(t) == 3
        row = await holds.app.arequest(rid)
        assert (row["status"], row["reason"], row["decided_by"]) == (
            "rejected",
            "not during business hours",
            [APPROVER],
        )
        assert await conn.fetchval("SELECT count(*) FROM " + t + " WHERE id = 1") == 1
    finally:
        await conn.close()


async def test_nobody_deciding_in_time_is_57014_and_expired(holds: HoldsEnv) -> None:
    t = holds.table("expiring_ap", 3)  # the tests' quick-expiry rule: wait_seconds 1
    conn, notices = await connect(holds)
    try:
        running = asyncio.create_task(conn.execute(f"DELETE FROM {t}"))
        notice = await notices.next()
        assert "waiting up to 1 s for 1 approval from dba" in notice.message
        rid = int(notice.message.split("(request ", 1)[1].split(")", 1)[0])
        with pytest.raises(asyncpg.QueryCanceledError) as info:
            await running
        assert info.value.sqlstate == "57014"
        assert info.value.message == (
            f"dbgate: approval request {rid} expired before anyone decided; "
            "the statement was not run"
        )
        assert info.value.hint == f"ask an approver to look at {PUBLIC_URL}/approvals/{rid}"
        assert (await holds.app.arequest(rid))["status"] == "expired"
        status, body = await holds.app.aapi("POST", f"/api/approvals/{rid}/approve", body={})
        assert status == 409 and body["error"] == "conflict"
        assert holds.count(t) == 3
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


async def test_a_cancel_request_ends_the_wait_57014_withdrawn(holds: HoldsEnv) -> None:
    t = holds.table("ap_cancel", 3)
    conn, notices = await connect(holds)
    try:
        running = asyncio.create_task(conn.execute(f"DELETE FROM {t}"))
        rid = await notices.held()
        await cancel_asyncpg(conn, holds.app.port)
        with pytest.raises(asyncpg.QueryCanceledError) as info:
            await running
        assert info.value.sqlstate == "57014"
        assert info.value.message == "canceling statement due to user request"
        row = await holds.app.arequest(rid)  # recorded before the error was sent
        assert row["status"] == "withdrawn"
        status, _ = await holds.app.aapi("POST", f"/api/approvals/{rid}/approve", body={})
        assert status == 409
        assert holds.count(t) == 3
        assert await conn.fetchval("SELECT 2") == 2
    finally:
        await conn.close()


async def test_asyncpg_cancelling_its_own_task_withdraws_the_request(holds: HoldsEnv) -> None:
    t = holds.table("ap_task_cancel", 3)
    conn, notices = await connect(holds)
    try:
        running = asyncio.create_task(conn.fetch(f"DELETE FROM {t} RETURNING id"))
        rid = await notices.held()
        running.cancel()  # asyncpg sends a CancelRequest itself
        with pytest.raises(asyncio.CancelledError):
            await running
        await holds.app.await_status(rid, "withdrawn")
        assert await conn.fetchval("SELECT 3") == 3  # the connection is usable again
        assert holds.count(t) == 3
    finally:
        await conn.close()


async def test_a_disconnect_withdraws_and_nothing_runs_later(holds: HoldsEnv) -> None:
    t = holds.table("ap_disconnect", 3)
    conn, notices = await connect(holds)
    running = asyncio.create_task(conn.execute(f"DELETE FROM {t}"))
    rid = await notices.held()
    conn.terminate()  # the client vanishes mid-wait
    with pytest.raises((asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError)):
        await running
    row = await holds.app.await_status(rid, "withdrawn")
    assert row["reason"] == "the client cancelled or disconnected"
    status, body = await holds.app.aapi("POST", f"/api/approvals/{rid}/approve", body={})
    assert status == 409, body
    assert holds.count(t) == 3


async def test_approve_then_retry_runs_the_identical_statement_exactly_once(
    holds: HoldsEnv,
) -> None:
    t = holds.table("retry_ap", 3)  # the tests' retry rule: wait_seconds 0
    sql = f"UPDATE {t} SET note = $1"
    conn, notices = await connect(holds)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as first:
            await conn.execute(sql, "approved value")
        rid = check_retry_error(first.value.message, first.value.hint)
        assert first.value.sqlstate == "42501"
        assert (await holds.app.arequest(rid))["mode"] == "retry"
        await holds.app.aapprove(rid)
        # A different value is a different statement: a new request, nothing runs.
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as other:
            await conn.execute(sql, "another value")
        assert check_retry_error(other.value.message, other.value.hint) > rid
        assert holds.notes(t) == ["n"] * 3
        assert await conn.execute(sql, "approved value") == "UPDATE 3"
        assert holds.notes(t) == ["approved value"] * 3
        assert (await holds.app.await_status(rid, "executed"))["executed_at"] is not None
        # Exactly once: the same statement again is a new request.
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as again:
            await conn.execute(sql, "approved value")
        assert check_retry_error(again.value.message, again.value.hint) > rid
        # The simple protocol too (no values): the text is what is matched.
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as simple:
            await conn.execute(f"DELETE FROM {t}")
        srid = check_retry_error(simple.value.message, simple.value.hint)
        await holds.app.aapprove(srid)
        assert await conn.execute(f"DELETE FROM {t}") == "DELETE 3"
        # Each request was also announced by a notice that says to retry.
        seen = []
        while not notices.empty():
            seen.append((await notices.next()).message)
        assert len(seen) == 4
        assert all("retry the identical statement once approved" in m for m in seen), seen
    finally:
        await conn.close()


def _same_name_in_another_schema(holds: HoldsEnv, table: str, schema: str) -> None:
    admin_execute(
        holds.admin_dsn,
        f"DROP SCHEMA IF EXISTS {schema} CASCADE",
        f"CREATE SCHEMA {schema}",
        f"CREATE TABLE {schema}.{table} (id int PRIMARY KEY, note text NOT NULL DEFAULT 'n')",
        f"INSERT INTO {schema}.{table} (id) SELECT g FROM generate_series(1, 3) g",
    )


def _other_notes(holds: HoldsEnv, table: str) -> list[str]:
    return [r[0] for r in admin_query(holds.admin_dsn, f"SELECT note FROM {table} ORDER BY id")]


async def test_an_approved_retry_covers_the_search_path_it_was_approved_under(
    holds: HoldsEnv,
) -> None:
    """``UPDATE retry_sp …`` approved while the session's search_path found
    ``public.retry_sp`` is no approval for the same text once the path finds another
    schema's ``retry_sp`` first: the approver saw one table, the retry would change
    another."""
    t = holds.table("retry_sp", 3)
    _same_name_in_another_schema(holds, t, "sp_other")
    sql = f"UPDATE {t} SET note = 'approved'"
    conn, _ = await connect(holds)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as first:
            await conn.execute(sql)
        rid = check_retry_error(first.value.message, first.value.hint)
        await holds.app.aapprove(rid)
        await conn.execute("SET search_path = sp_other, public")
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as moved:
            await conn.execute(sql)
        assert check_retry_error(moved.value.message, moved.value.hint) > rid
        assert _other_notes(holds, f"sp_other.{t}") == ["n"] * 3
        await conn.execute("RESET search_path")
        assert await conn.execute(sql) == "UPDATE 3"  # where it was approved: runs once
        assert holds.notes(t) == ["approved"] * 3
        assert _other_notes(holds, f"sp_other.{t}") == ["n"] * 3
    finally:
        await conn.close()


async def test_a_shape_approval_covers_the_search_path_it_was_approved_under(
    holds: HoldsEnv,
) -> None:
    t = holds.table("ap_shape_sp", 3)
    _same_name_in_another_schema(holds, t, "shape_other")
    sql = f"UPDATE {t} SET note = $1"
    conn, notices = await connect(holds)
    try:
        first = asyncio.create_task(conn.execute(sql, "a"))
        rid = await notices.held()
        status, body = await holds.app.aapi(
            "POST", f"/api/approvals/{rid}/approve-shape", body={"minutes": 10, "params": "free"}
        )
        assert status == 201, body
        assert await first == "UPDATE 3"
        assert await conn.execute(sql, "b") == "UPDATE 3" and notices.empty()
        await conn.execute("SET search_path = shape_other, public")
        moved = asyncio.create_task(conn.execute(sql, "c"))
        await holds.app.areject(await notices.held(), "another schema's table")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await moved
        assert _other_notes(holds, f"shape_other.{t}") == ["n"] * 3
        assert holds.notes(t) == ["b"] * 3
    finally:
        await conn.close()


async def test_a_shape_approval_covers_one_identity_and_fingerprint(holds: HoldsEnv) -> None:
    t = holds.table("ap_shape", 3)
    sql = f"UPDATE {t} SET note = $1"
    conn, notices = await connect(holds)
    other = await asyncpg.connect(holds.app.dsn(holds.data_db, OTHER_AGENT, OTHER_PASSWORD))
    other_notices = AsyncpgNotices(other)
    try:
        first = asyncio.create_task(conn.execute(sql, "a"))
        rid = await notices.held()
        status, body = await holds.app.aapi(
            "POST",
            f"/api/approvals/{rid}/approve-shape",
            body={"minutes": 10, "params": "free", "reason": "notes may change today"},
        )
        assert status == 201, body
        shape_id = int(body["shape"]["id"])
        assert await first == "UPDATE 3"
        # Any values, same statement shape, same identity: runs without a hold.
        assert await conn.execute(sql, "b") == "UPDATE 3"
        assert await conn.execute(f"UPDATE {t} SET note = 'c'") == "UPDATE 3"
        assert holds.notes(t) == ["c"] * 3 and notices.empty()
        used = holds.app.rows(
            "SELECT status, shape_id FROM dbgate.approvals WHERE shape_id = $1 AND id > $2",
            shape_id,
            rid,
        )
        assert len(used) == 2 and {u["status"] for u in used} <= {"approved", "executed"}
        # Never wider than one identity.
        held = asyncio.create_task(other.execute(sql, "z"))
        orid = await other_notices.held()
        await holds.app.areject(orid, "not for you")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await held
        # Revoked: held again.
        status, _ = await holds.app.aapi(
            "POST", f"/api/shapes/{shape_id}/revoke", body={"reason": "done for today"}
        )
        assert status == 200
        again = asyncio.create_task(conn.execute(sql, "d"))
        await holds.app.areject(await notices.held(), "shape revoked")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await again
        assert holds.notes(t) == ["c"] * 3
    finally:
        await conn.close()
        await other.close()


async def test_a_shape_with_fixed_values_covers_those_values_only(holds: HoldsEnv) -> None:
    t = holds.table("ap_shape_fixed", 3)
    sql = f"UPDATE {t} SET note = $1"
    conn, notices = await connect(holds)
    try:
        first = asyncio.create_task(conn.execute(sql, "fixed"))
        rid = await notices.held()
        status, body = await holds.app.aapi(
            "POST", f"/api/approvals/{rid}/approve-shape", body={"minutes": 5, "params": "fixed"}
        )
        assert status == 201 and body["shape"]["params"] == "fixed", body
        assert await first == "UPDATE 3"
        assert await conn.execute(sql, "fixed") == "UPDATE 3"  # again, no hold
        assert notices.empty()
        other = asyncio.create_task(conn.execute(sql, "other"))
        await holds.app.areject(await notices.held(), "other values need a look")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await other
        assert holds.notes(t) == ["fixed"] * 3
    finally:
        await conn.close()


async def test_a_refused_statement_aborts_the_transaction_on_both_sides(holds: HoldsEnv) -> None:
    t = holds.table("ap_tx_rejected", 3)
    conn, notices = await connect(holds)
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute(f"INSERT INTO {t} (id) VALUES (10)")
        running = asyncio.create_task(conn.execute(f"DELETE FROM {t}"))
        await holds.app.areject(await notices.held(), "no")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await running
        with pytest.raises(asyncpg.InFailedSQLTransactionError) as info:
            await conn.fetchval("SELECT 1")
        assert info.value.sqlstate == "25P02"
        await tx.rollback()
        assert await conn.fetchval("SELECT count(*) FROM " + t) == 3
        assert holds.count(t) == 3
    finally:
        await conn.close()


async def test_an_approved_statement_runs_inside_the_transaction(holds: HoldsEnv) -> None:
    t = holds.table("ap_tx_approved", 3)
    conn, notices = await connect(holds)
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute(f"INSERT INTO {t} (id) VALUES (10)")
        running = asyncio.create_task(conn.execute(f"DELETE FROM {t}"))
        await holds.app.aapprove(await notices.held())
        assert await running == "DELETE 4"  # it saw the transaction's own insert
        assert holds.count(t) == 3  # not committed yet
        await tx.rollback()
        assert holds.count(t) == 3
        tx = conn.transaction()
        await tx.start()
        running = asyncio.create_task(conn.execute(f"DELETE FROM {t}"))
        await holds.app.aapprove(await notices.held())
        assert await running == "DELETE 3"
        await tx.commit()
        assert holds.count(t) == 0
    finally:
        await conn.close()


async def test_a_bind_time_hold_covers_those_values_only(holds: HoldsEnv) -> None:
    t = holds.table("ap_bind", 5)
    sql = f"SELECT id FROM {t} ORDER BY id LIMIT $1"
    conn, notices = await connect(holds)
    try:
        assert [r["id"] for r in await conn.fetch(sql, 2)] == [1, 2]  # small: a bounded read
        big = asyncio.create_task(conn.fetch(sql, 100_000))  # a bulk read: held at Bind
        rid = await notices.held()
        row = await holds.app.arequest(rid)
        assert row["rule"] == "hold-dump" and row["params"] == '["100000"]'
        await holds.app.aapprove(rid)
        assert len(await big) == 5
        assert [r["id"] for r in await conn.fetch(sql, 3)] == [1, 2, 3]
        bigger = asyncio.create_task(conn.fetch(sql, 200_000))
        rid2 = await notices.held()
        assert rid2 != rid
        await holds.app.areject(rid2, "that one was for 100000 rows")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await bigger
    finally:
        await conn.close()


async def test_a_multi_statement_string_is_held_as_one_request(holds: HoldsEnv) -> None:
    t = holds.table("ap_multi", 3)
    sql = f"UPDATE {t} SET note = 'm'; DELETE FROM {t} WHERE id = 1; TRUNCATE {t}"
    conn, notices = await connect(holds)
    try:
        last = holds.app.last_id()
        running = asyncio.create_task(conn.execute(sql))
        rid = await notices.held()
        assert [r["id"] for r in holds.app.requests_since(last)] == [rid]
        row = await holds.app.arequest(rid)
        assert row["statement"] == sql and row["categories"] == ["destructive", "write"]
        await holds.app.areject(rid, "no")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await running
        assert holds.notes(t) == ["n"] * 3  # none of the three ran
        running = asyncio.create_task(conn.execute(sql))
        await holds.app.aapprove(await notices.held())
        assert await running == "TRUNCATE TABLE"
        assert holds.count(t) == 0
    finally:
        await conn.close()


async def test_an_owner_cannot_approve_the_agents_request(holds: HoldsEnv) -> None:
    t = holds.table("ap_owner", 3)
    conn, notices = await connect(holds)
    try:
        running = asyncio.create_task(conn.execute(f"DELETE FROM {t}"))
        rid = await notices.held()
        status, body = await holds.app.aapi(
            "POST", f"/api/approvals/{rid}/approve", who=OWNER, body={}
        )
        assert status == 403, body
        assert not running.done()
        await holds.app.areject(rid, "owners may not approve their own agent")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await running
        assert holds.count(t) == 3
    finally:
        await conn.close()


async def test_the_declared_purpose_and_model_reach_the_request(holds: HoldsEnv) -> None:
    t = holds.table("ap_declared", 3)
    conn, notices = await connect(
        holds, server_settings={"dbgate.purpose": "from startup", "dbgate.model": "m-startup"}
    )
    try:
        running = asyncio.create_task(conn.execute(f"DELETE FROM {t}"))
        rid = await notices.held()
        row = await holds.app.arequest(rid)
        assert (row["purpose"], row["model"]) == ("from startup", "m-startup")
        await holds.app.areject(rid, "no")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await running
        # A SET (simple protocol here), then a statement held at its Bind.
        await conn.execute("SET dbgate.purpose = 'from SET'")
        assert await conn.fetchval("SHOW dbgate.purpose") == "from SET"
        running = asyncio.create_task(conn.fetch(f"DELETE FROM {t} RETURNING $1::int", 1))
        rid = await notices.held()
        row = await holds.app.arequest(rid)
        assert (row["purpose"], row["model"]) == ("from SET", "m-startup")
        await holds.app.areject(rid, "no")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await running
        # A SET in the held string itself counts for that request, and for the
        # session once it ran.
        sql = f"SET dbgate.model = 'm-inline'; DELETE FROM {t}"
        running = asyncio.create_task(conn.execute(sql))
        rid = await notices.held()
        assert (await holds.app.arequest(rid))["model"] == "m-inline"
        await holds.app.aapprove(rid)
        assert await running == "DELETE 3"
        holds.table(t, 3)
        running = asyncio.create_task(conn.execute(f"TRUNCATE {t}"))
        rid = await notices.held()
        assert (await holds.app.arequest(rid))["model"] == "m-inline"
        await holds.app.areject(rid, "no")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await running
    finally:
        await conn.close()
