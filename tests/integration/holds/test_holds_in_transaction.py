"""Statements held inside a transaction block outlive the idle-in-transaction guard.

dbgate starts every upstream session with ``idle_in_transaction_session_timeout``;
a statement held for approval inside a transaction leaves the backend idle in it
while a human decides. Here the guard is 2 s (for application names
``idle-guard-*``): the relay's pings (dbgate.proxy.hold_ping) must keep the session
alive, invisibly, for as long as the statement waits, and the approved statement
runs and commits with the rest of its transaction.

No test sleeps: each proves that the guard had time to fire by holding a statement,
then opening a *control* session under the same guard, letting it go idle in its
own transaction and reading until the server ends it (FATAL 25P03). The held
statement, idle since before the control began, has waited longer than the guard
by then. ``transaction_timeout`` is not an idle timer: a hold still ends when the
server ends the transaction (FATAL 25P04), and the request is withdrawn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from dbgate.wire import messages as m
from tests.integration.holds.clients import AsyncpgNotices, PsycopgNotices, check_notice
from tests.integration.holds.harness import (
    AGENT,
    AGENT_PASSWORD,
    HoldsEnv,
    request_id,
    start_env,
)
from tests.integration.rawclient import RawClient, errors, names, send_cancel, status

GUARD_RULES = """\
session_guards:
  - name: held-idle-guard
    match:
      application_names: ["idle-guard-*"]
    idle_in_transaction_session_timeout: 2s
    approver_groups: [dba]
  - name: held-transaction-guard
    match:
      application_names: ["txn-guard-*"]
    transaction_timeout: 3s
    approver_groups: [dba]
rules:
  - name: measured-writes-held-over-two
    match:
      categories: [write]
      tables: ["measured_*"]
    action: allow
    max_rows_changed: 2
    over_limit: hold
    approver_groups: [dba]
"""


@pytest.fixture(scope="module")
def holds(pg_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HoldsEnv]:
    tmp: Path = tmp_path_factory.mktemp("holds_in_transaction")
    (tmp / "rules").mkdir()
    (tmp / "rules" / "05-in-transaction.yaml").write_text(GUARD_RULES)  # before the pack
    yield from start_env(pg_server, "holds_in_transaction", tmp)


async def raw_agent(holds: HoldsEnv, app: str) -> RawClient:
    return await RawClient.connect(
        "127.0.0.1",
        holds.app.port,
        user=AGENT,
        password=AGENT_PASSWORD,
        database=holds.data_db,
        params={"application_name": app},
    )


async def guard_ends_a_control_session(holds: HoldsEnv, app: str) -> None:
    """A session under the same guard, idle in its own transaction, until the server
    ends it with 25P03: proof that the guard had time to fire on everything idle
    since before it began."""
    control = await raw_agent(holds, app)
    try:
        assert status(await control.query("BEGIN")) == "T"
        ended = await control.until_closed(timeout=30)
        assert [(e.sqlstate, e.fields["S"]) for e in errors(ended)] == [("25P03", "FATAL")]
    finally:
        control.abort()


async def settle(running: asyncio.Task[Any] | None) -> None:
    """A statement still waiting when a test failed: stopped before its connection
    closes under it."""
    if running is not None and not running.done():
        running.cancel()
    if running is not None:
        await asyncio.gather(running, return_exceptions=True)


async def until_notice(client: RawClient) -> tuple[int, list[Any]]:
    """Messages before the hold notice (none expected), and its request id."""
    before = await client.until(m.NoticeResponse)
    notice = before[-1]
    rid = check_notice(notice.message, notice.fields.get("D", ""), notice.sqlstate)
    return rid, before[:-1]


# -- drivers -----------------------------------------------------------------------------
async def test_psycopg_query_held_in_a_transaction_runs_and_commits(holds: HoldsEnv) -> None:
    """A statement without parameters is a simple Query, held before anything of it
    reaches the server: the upstream idles at a cycle boundary and is pinged."""
    t = holds.table("tx_psycopg", 3)
    conn = await psycopg.AsyncConnection.connect(
        holds.dsn, autocommit=True, application_name="idle-guard-psycopg"
    )
    running: asyncio.Task[Any] | None = None
    try:
        notices = PsycopgNotices(conn)
        await conn.execute("BEGIN")
        await conn.execute(f"INSERT INTO {t} (id) VALUES (%s)", (4,))
        running = asyncio.create_task(conn.execute(f"UPDATE {t} SET note = 'approved'"))
        rid = await notices.aheld()
        await guard_ends_a_control_session(holds, "idle-guard-psycopg-control")
        assert not running.done()
        await holds.app.aapprove(rid)
        assert (await running).statusmessage == "UPDATE 4"
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        await conn.execute("COMMIT")
        assert notices.empty()
    finally:
        await settle(running)
        await conn.close()
    assert holds.notes(t) == ["approved"] * 4
    await holds.app.await_status(rid, "executed")


async def test_psycopg_prepared_statement_held_at_bind_in_a_transaction(holds: HoldsEnv) -> None:
    """A prepared statement executed again is Bind/Describe/Execute/Sync: held at its
    Bind, with nothing of its batch sent, so again at a cycle boundary."""
    t = holds.table("tx_prepared", 3)
    sql = f"UPDATE {t} SET note = %s"
    conn = await psycopg.AsyncConnection.connect(
        holds.dsn, autocommit=True, application_name="idle-guard-prepared"
    )
    running: asyncio.Task[Any] | None = None
    try:
        notices = PsycopgNotices(conn)
        await conn.execute("BEGIN")
        running = asyncio.create_task(conn.execute(sql, ("first",), prepare=True))
        await holds.app.aapprove(await notices.aheld())
        assert (await running).statusmessage == "UPDATE 3"
        running = asyncio.create_task(conn.execute(sql, ("approved",), prepare=True))
        rid = await notices.aheld()
        await guard_ends_a_control_session(holds, "idle-guard-prepared-control")
        await holds.app.aapprove(rid)
        assert (await running).statusmessage == "UPDATE 3"
        await conn.execute("COMMIT")
    finally:
        await settle(running)
        await conn.close()
    assert holds.notes(t) == ["approved"] * 3


async def test_asyncpg_cached_statement_held_in_a_transaction(holds: HoldsEnv) -> None:
    """asyncpg re-executes its cached prepared statement with Bind/Execute/Sync: held
    at that Bind at a cycle boundary."""
    t = holds.table("tx_asyncpg", 3)
    sql = f"UPDATE {t} SET note = $1"
    conn = await asyncpg.connect(
        holds.dsn, server_settings={"application_name": "idle-guard-asyncpg"}
    )
    try:
        notices = AsyncpgNotices(conn)
        transaction = conn.transaction()
        await transaction.start()
        running = asyncio.create_task(conn.execute(sql, "first"))
        await holds.app.aapprove(await notices.held())
        assert await running == "UPDATE 3"
        running = asyncio.create_task(conn.execute(sql, "approved"))
        rid = await notices.held()
        await guard_ends_a_control_session(holds, "idle-guard-asyncpg-control")
        await holds.app.aapprove(rid)
        assert await running == "UPDATE 3"
        assert await conn.fetchval(f"SELECT count(*) FROM {t} WHERE note = 'approved'") == 3
        await transaction.commit()
        assert notices.empty()
    finally:
        await conn.close()
    assert holds.notes(t) == ["approved"] * 3


async def test_a_bind_held_after_its_parse_went_upstream_outlives_the_guard(
    holds: HoldsEnv,
) -> None:
    """``set_config($1, $2, false)`` is decided at Bind: its Parse has reached the
    server, which runs no idle timer inside a batch, so no ping is needed (and a Sync
    of dbgate's there would end the client's batch early)."""
    conn = await psycopg.AsyncConnection.connect(
        holds.dsn, autocommit=True, application_name="idle-guard-bind"
    )
    running: asyncio.Task[Any] | None = None
    try:
        notices = PsycopgNotices(conn)
        await conn.execute("BEGIN")
        running = asyncio.create_task(
            conn.execute("SELECT set_config(%s, %s, false)", ("statement_timeout", "0"))
        )
        message, _, code = await asyncio.to_thread(notices.next)
        assert code == "00000" and "switches off a session guard" in message, message
        await guard_ends_a_control_session(holds, "idle-guard-bind-control")
        await holds.app.aapprove(request_id(message))
        assert await (await running).fetchall() == [("0",)]
        await conn.execute("COMMIT")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    finally:
        await settle(running)
        await conn.close()


async def test_a_write_over_its_change_limit_held_in_a_transaction(holds: HoldsEnv) -> None:
    """Measured, undone to dbgate's savepoint, then held (``over_limit: hold``): the
    relay awaits ``over_changes`` at a cycle boundary inside the client's block."""
    t = holds.table("measured_tx", 5)
    conn = await asyncpg.connect(
        holds.dsn, server_settings={"application_name": "idle-guard-measured"}
    )
    try:
        notices = AsyncpgNotices(conn)
        await conn.execute("BEGIN")
        running = asyncio.create_task(conn.execute(f"UPDATE {t} SET note = 'm' WHERE id <= 5"))
        rid = await notices.held()
        await guard_ends_a_control_session(holds, "idle-guard-measured-control")
        await holds.app.aapprove(rid)
        assert await running == "UPDATE 5"
        await conn.execute("COMMIT")
    finally:
        await conn.close()
    assert holds.notes(t) == ["m"] * 5


async def test_a_bound_write_over_its_change_limit_held_in_a_transaction(
    holds: HoldsEnv,
) -> None:
    """The same through the extended protocol: asyncpg binds its prepared statement
    in a batch of its own, which dbgate measures, undoes and holds; the pings keep
    the client's block alive meanwhile, and the approved batch is sent again."""
    t = holds.table("measured_bind_tx", 5)
    conn = await asyncpg.connect(
        holds.dsn, server_settings={"application_name": "idle-guard-measured-bind"}
    )
    try:
        notices = AsyncpgNotices(conn)
        await conn.execute("BEGIN")
        running = asyncio.create_task(
            conn.execute(f"UPDATE {t} SET note = $1 WHERE id <= $2", "b", 5)
        )
        rid = await notices.held()
        await guard_ends_a_control_session(holds, "idle-guard-measured-bind-control")
        await holds.app.aapprove(rid)
        assert await running == "UPDATE 5"
        await conn.execute("COMMIT")
    finally:
        await conn.close()
    assert holds.notes(t) == ["b"] * 5


# -- on the wire ---------------------------------------------------------------------------
async def test_the_pings_are_invisible_to_the_client(holds: HoldsEnv) -> None:
    """After a long hold at a cycle boundary (a Bind of a statement prepared in an
    earlier batch, then a Query) the client gets exactly the answers of its own
    messages: no ReadyForQuery of a ping, the same transaction status."""
    t = holds.table("tx_wire", 4)
    client = await raw_agent(holds, "idle-guard-wire")
    try:
        assert status(await client.query("BEGIN")) == "T"
        client.send(m.Parse("upd", f"UPDATE {t} SET note = $1"), m.Sync())
        assert names(await client.until_ready()) == ["ParseComplete", "ReadyForQuery"]
        client.send(m.Bind("", "upd", params=(b"approved",)), m.Execute("", 0), m.Sync())
        rid, before = await until_notice(client)
        assert before == []
        await guard_ends_a_control_session(holds, "idle-guard-wire-control")
        await holds.app.aapprove(rid)
        answers = await client.until_ready()
        assert names(answers) == ["BindComplete", "CommandComplete", "ReadyForQuery"]
        assert answers[1].tag == "UPDATE 4" and status(answers) == "T"
        client.send(m.query(f"DELETE FROM {t}"))
        rid, before = await until_notice(client)
        assert before == []
        await guard_ends_a_control_session(holds, "idle-guard-wire-control-2")
        await holds.app.aapprove(rid)
        answers = await client.until_ready()
        assert names(answers) == ["CommandComplete", "ReadyForQuery"]
        assert answers[0].tag == "DELETE 4" and status(answers) == "T"
        assert status(await client.query("COMMIT")) == "I"
    finally:
        await client.close()
    assert holds.count(t) == 0


async def test_a_statement_held_inside_a_batch_outlives_the_guard(holds: HoldsEnv) -> None:
    """A held Parse after a Parse/Bind/Execute of the same batch (no Sync between):
    the server has read messages since its last ReadyForQuery, so its idle timer is
    off; nothing of dbgate's goes in between, and the batch runs as sent."""
    t = holds.table("tx_batch", 3)
    client = await raw_agent(holds, "idle-guard-batch")
    try:
        assert status(await client.query("BEGIN")) == "T"
        client.send(
            m.Parse("", "SELECT 1"),
            m.Bind("", ""),
            m.Execute("", 0),
            m.Parse("", f"DELETE FROM {t}"),
            m.Bind("", ""),
            m.Execute("", 0),
            m.Sync(),
        )
        rid, before = await until_notice(client)
        assert before == []  # the server flushes nothing before the batch's Sync
        await guard_ends_a_control_session(holds, "idle-guard-batch-control")
        await holds.app.aapprove(rid)
        answers = await client.until_ready()
        assert names(answers) == [
            "ParseComplete",
            "BindComplete",
            "DataRow",
            "CommandComplete",
            "ParseComplete",
            "BindComplete",
            "CommandComplete",
            "ReadyForQuery",
        ]
        assert status(answers) == "T"
        assert status(await client.query("COMMIT")) == "I"
    finally:
        await client.close()
    assert holds.count(t) == 0


async def test_a_cancel_ends_a_long_hold_in_a_transaction_as_the_server_would(
    holds: HoldsEnv,
) -> None:
    """Cancelled after the guard's time (the pings ran): the statement fails with
    57014, the transaction is failed on both sides, the request is withdrawn."""
    t = holds.table("tx_cancel", 3)
    client = await raw_agent(holds, "idle-guard-cancel")
    try:
        assert status(await client.query("BEGIN")) == "T"
        client.send(m.query(f"DELETE FROM {t}"))
        rid, _ = await until_notice(client)
        await guard_ends_a_control_session(holds, "idle-guard-cancel-control")
        assert client.key is not None
        await send_cancel("127.0.0.1", holds.app.port, client.key.pid, client.key.secret)
        answers = await client.until_ready()
        assert [e.sqlstate for e in errors(answers)] == ["57014"] and status(answers) == "E"
        assert status(await client.query("ROLLBACK")) == "I"
    finally:
        await client.close()
    await holds.app.await_status(rid, "withdrawn")
    assert holds.count(t) == 3


async def test_the_transaction_timeout_still_ends_a_held_statement(holds: HoldsEnv) -> None:
    """``transaction_timeout`` is a bound on the whole transaction, which pings do not
    touch: the server ends the session (the client gets its FATAL 25P04), the
    transaction is rolled back, and the request is withdrawn."""
    t = holds.table("tx_timeout", 3)
    client = await raw_agent(holds, "txn-guard-wire")
    try:
        assert status(await client.query("BEGIN")) == "T"
        client.send(m.query(f"DELETE FROM {t}"))
        rid, before = await until_notice(client)
        assert before == []
        ended = await client.until_closed(timeout=30)
        assert [(e.sqlstate, e.fields["S"]) for e in errors(ended)] == [("25P04", "FATAL")]
    finally:
        client.abort()
    await holds.app.await_status(rid, "withdrawn")
    assert holds.count(t) == 3


async def test_each_measured_write_of_a_batch_past_its_limit_is_shown_to_approvers(
    holds: HoldsEnv,
) -> None:
    """Regression: past the limit, a batch of two measured Binds was held as the one
    with the smallest limit (here the first, an UPDATE of one row) while the approval
    sent the whole batch again, the other write (a DELETE the approver never saw)
    unmeasured. Each is now a request of its own; the batch runs once all are
    approved, and not at all when one is rejected."""
    t = holds.table("measured_batch_two", 5)
    update = f"UPDATE {t} SET note = 'seen' WHERE id < 2"
    delete = f"DELETE FROM {t} WHERE id > 1"
    client = await raw_agent(holds, "measured-batch-two")
    try:
        client.send(m.Parse("u", update).encode(), m.Parse("d", delete).encode(), m.Sync().encode())
        assert not errors(await client.until_ready())
        batch = (
            m.Bind("", "u").encode(),
            m.Execute("", 0).encode(),
            m.Bind("", "d").encode(),
            m.Execute("", 0).encode(),
            m.Sync().encode(),
        )
        client.send(*batch)
        first, _ = await until_notice(client)
        assert holds.app.request(first)["statement"] == update
        await holds.app.aapprove(first)
        second, _ = await until_notice(client)
        assert holds.app.request(second)["statement"] == delete
        await holds.app.areject(second, "not the delete")
        (error,) = errors(await client.until_ready())
        assert error.sqlstate == "42501" and "rejected" in error.message
        assert holds.notes(t) == ["n"] * 5  # undone, both
        client.send(*batch)  # again: both approved, the batch runs once
        for statement in (update, delete):
            rid, _ = await until_notice(client)
            assert holds.app.request(rid)["statement"] == statement
            await holds.app.aapprove(rid)
        answer = await client.until_ready()
        assert [x.tag for x in answer if isinstance(x, m.CommandComplete)] == [
            "UPDATE 1",
            "DELETE 4",
        ]
    finally:
        await client.close()
    assert holds.notes(t) == ["seen"]
