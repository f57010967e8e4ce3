"""The fault suite: hostile and overloaded clients, and one proxy that stays bounded.

Each test has one client (or a crowd) misbehave — oversized messages before and
after login, logins that never end, long messages that stall half-sent, a result
nobody reads, more clients than server connections, forged cancel keys, thousands of
short connections — and asserts that another session is still served, that what the
proxy holds stays under its ceilings (the budget's and the server's own accounting),
and that nothing leaks: sessions, server slots, file descriptors, upstream backends.

No latency is asserted here ("another session's trivial query completes" within a
generous deadline is); the ratios are measured by ``bench/hostile.py``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from dbgate.proxy.seams import ALLOW
from dbgate.wire import messages as m
from dbgate.wire.startup import StartupMessage
from tests.integration.conftest import AGENT
from tests.integration.rawclient import RawClient, ServerError, agent, rows, send_cancel
from tests.integration.test_proxy_bad_input import assert_healthy, backends, fatal, wait_backends
from tests.integration.test_proxy_seams import HOLD, HoldingInspector, on_loop

MB = 1024 * 1024


async def until(condition: Callable[[], bool], timeout: float = 10, what: str = "") -> None:
    """Wait until ``condition()`` holds (polled), failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        await asyncio.sleep(0.02)


def query_header(total: int) -> bytes:
    """The type and length word of a Query message of ``total`` bytes in all."""
    return b"Q" + (total - 1).to_bytes(4, "big")


def long_query(value_len: int) -> bytes:
    return m.query(f"select length('{'x' * value_len}')")


async def ask(client: RawClient, message: bytes, timeout: float = 30) -> list[Any]:
    """Send one already encoded Query and read its answers."""
    client.send(message)
    return await client.until_ready(timeout)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def settled(server: Any) -> bool:
    return (
        server.session_count == 0
        and server.clients == 0
        and server.server_slots.used == 0
        and server.budget.used == 0
    )


# --------------------------------------------------------------------------- before login


async def test_an_oversized_login_message_is_refused_at_its_length_word(
    make_proxy: Any, pg_database: str
) -> None:
    running = make_proxy()
    bystander = await agent(running, pg_database)
    client = await RawClient.open(running.host, running.port)
    client.send(StartupMessage((3, 0), {"user": AGENT, "database": pg_database}).encode())
    assert isinstance(await client.recv(), m.AuthenticationSASL)
    client.send(b"p" + (60 * MB).to_bytes(4, "big") + b"SCRAM-SHA-256\x00")  # and no more
    error = fatal(await client.until_closed(timeout=5))
    assert error.sqlstate == "54000"
    assert "limits.max_login_message_size" in error.message
    assert running.server.unadmitted_bytes() == 0
    await assert_healthy(bystander)
    await bystander.close()


async def test_logins_beyond_max_logins_are_not_read_until_a_slot_frees(
    make_proxy: Any, pg_database: str
) -> None:
    running = make_proxy(limits={"max_logins": 2})
    server = running.server
    bystander = await agent(running, pg_database)
    silent = [await RawClient.open(running.host, running.port) for _ in range(2)]
    await until(lambda: server.logins_in_progress == 2, what="two logins in progress")
    late = asyncio.ensure_future(agent(running, pg_database))
    flood = await RawClient.open(running.host, running.port)
    flood.send(b"\x00\x00\x27\x10" + bytes(4 * MB))  # never read while no slot is free
    assert await flood.nothing_for(0.3) == [] and not late.done()
    # At most the one read the event loop may start before the connection is held.
    assert server.unadmitted_bytes() <= 256 * 1024
    await assert_healthy(bystander)  # sessions go on meanwhile
    silent[0].abort()
    late_client = await asyncio.wait_for(late, 20)  # its startup_timeout has not run out
    await assert_healthy(late_client)
    for client in (late_client, bystander):
        await client.close()
    silent[1].abort()
    flood.abort()


async def test_what_a_queued_client_pipelines_is_not_read_ahead(
    make_proxy: Any, pg_database: str
) -> None:
    running = make_proxy(upstream={"max_server_conn": 1})
    server = running.server
    holder = await agent(running, pg_database)
    queued = await RawClient.open(running.host, running.port)
    # Startup and SCRAM, then 8 MB of queries before the ReadyForQuery it cannot get yet.
    task = asyncio.ensure_future(
        queued.startup(user=AGENT, password=_password(), database=pg_database)
    )
    await until(lambda: server.server_slots.waiting == 1, what="the client to queue")
    many = [long_query(100_000) for _ in range(40)]  # 4 MB in all
    queued.send(*many)
    limits = running.config.limits
    login_buffer = limits.max_login_message_size + 10_005
    await until(lambda: server.unadmitted_bytes() > login_buffer, what="the read-ahead")
    await asyncio.sleep(0.2)  # time to read more, if it wrongly did
    # Read ahead: at most one read beyond the login's small buffer, not 4 MB.
    assert server.unadmitted_bytes() <= login_buffer + 256 * 1024
    assert not task.done()
    await assert_healthy(holder)
    await holder.close()
    await asyncio.wait_for(task, 20)  # its turn came
    for _ in many:  # and everything it sent is then answered, in order
        assert rows(await queued.until(m.ReadyForQuery, timeout=30)) == [(b"100000",)]
    await queued.close()
    await until(lambda: settled(server), what="everything released")


def _password() -> str:
    from tests.integration.conftest import AGENT_PASSWORD

    return AGENT_PASSWORD


# --------------------------------------------------------------------------- after login


async def test_the_message_size_limit_after_login_is_configurable_and_clear(
    make_proxy: Any, pg_database: str
) -> None:
    running = make_proxy(limits={"max_message_size": 1 * MB, "memory_budget": 1 * MB})
    client = await agent(running, pg_database)
    assert rows(await ask(client, long_query(900_000))) == [(b"900000",)]
    client.send(query_header(1 * MB + 100) + b"select 1")
    error = fatal(await client.until_closed(timeout=5))
    assert error.sqlstate == "54000" and "limits.max_message_size" in error.message
    await until(lambda: settled(running.server), what="the session's memory released")


async def test_long_messages_wait_for_the_memory_budget_and_others_go_on(
    make_proxy: Any, pg_database: str
) -> None:
    running = make_proxy(limits={"max_message_size": 1 * MB, "memory_budget": 1 * MB})
    budget = running.server.budget
    first, second, bystander = [await agent(running, pg_database) for _ in range(3)]
    a = long_query(900_000)
    first.send(a[:200_000])  # announces 900 kB, sends 200 kB, stalls
    await until(lambda: budget.used == len(a), what="the first message reserved")
    b = long_query(500_000)
    second.send(b)
    await until(lambda: budget.waiting == 1, what="the second message to wait")
    assert budget.used <= budget.limit
    await assert_healthy(bystander)  # short messages need no room in the budget
    assert await second.nothing_for(0.2) == []
    first.send(a[200_000:])
    assert rows(await first.until(m.ReadyForQuery)) == [(b"900000",)]
    assert rows(await second.until(m.ReadyForQuery)) == [(b"500000",)]
    assert budget.peak <= budget.limit
    for client in (first, second, bystander):
        await client.close()
    await until(lambda: settled(running.server), what="everything released")


async def test_a_client_killed_halfway_through_a_long_message_frees_its_memory(
    make_proxy: Any, pg_database: str, pg_dsn: str
) -> None:
    running = make_proxy()
    bystander = await agent(running, pg_database)
    client = await agent(running, pg_database, params={"application_name": "dbgate-halfway"})
    query = long_query(5 * MB)
    client.send(query[: 2 * MB])
    await until(lambda: running.server.budget.used == len(query), what="the reservation")
    client.abort()
    await until(lambda: running.server.session_count == 1, what="the session to end")
    assert running.server.budget.used == 0  # at once, not at a garbage collection
    assert await wait_backends(pg_dsn, "dbgate-halfway", 0) == 0
    await assert_healthy(bystander)
    await bystander.close()


async def test_a_long_row_is_streamed_and_a_long_query_held_once(
    make_proxy: Any, pg_database: str
) -> None:
    running = make_proxy()
    budget = running.server.budget
    client = await agent(running, pg_database)
    msgs = await client.query("select repeat('ab', 10 * 1024 * 1024)", timeout=60)
    assert rows(msgs) == [(b"ab" * (10 * MB),)]
    assert budget.peak == 0  # the 20 MB value passed through in pieces, never held whole
    query = long_query(20 * MB)
    assert rows(await ask(client, query, timeout=60)) == [(str(20 * MB).encode(),)]
    assert budget.peak == len(query) and budget.used == 0
    await client.close()


async def test_a_long_statement_waiting_for_its_verdict_is_counted_until_decided(
    make_proxy: Any, pg_database: str
) -> None:
    inspector = HoldingInspector()
    running = make_proxy(inspector=inspector)
    budget = running.server.budget
    client = await agent(running, pg_database)
    query = m.query(f"select length('{'x' * 2 * MB}') {HOLD}")
    client.send(query)
    _, stmt, fut = await asyncio.to_thread(inspector.wait_held, 1)
    held = len(query) + sys.getsizeof(stmt.sql)  # its message and its decoded text
    await until(lambda: budget.used == held, what="the waiting statement counted")
    on_loop(running, fut.set_result, ALLOW)
    assert rows(await client.until_ready()) == [(str(2 * MB).encode(),)]
    assert budget.used == 0
    await client.close()


async def test_a_client_that_never_reads_its_result_holds_no_more_than_a_buffer(
    make_proxy: Any, pg_database: str, pg_dsn: str
) -> None:
    running = make_proxy()
    server = running.server
    bystander = await agent(running, pg_database)
    app = "dbgate-never-reads"
    client = await agent(running, pg_database, params={"application_name": app})
    client.writer.transport.pause_reading()  # type: ignore[attr-defined]
    client.send(m.query("select repeat('x', 1000000) from generate_series(1, 300)"))  # 300 MB
    (session,) = [s for s in server._sessions.values() if s.info.application_name == app]
    await until(lambda: "backpressure" in session._upstream_pauses, what="upstream paused")
    assert session.client.transport.get_write_buffer_size() < 8 * MB
    await assert_healthy(bystander)
    client.abort()
    assert await wait_backends(pg_dsn, app, 0, timeout=10) == 0
    await until(lambda: server.session_count == 1, what="the session to end")
    await assert_healthy(bystander)
    await bystander.close()


# --------------------------------------------------------------------------- capacity


async def test_clients_beyond_max_server_conn_wait_instead_of_failing(
    make_proxy: Any, pg_database: str, pg_dsn: str
) -> None:
    app = "dbgate-crowd"
    running = make_proxy(upstream={"max_server_conn": 3})
    server = running.server
    seen_upstream: list[int] = []

    async def one(i: int) -> bytes:
        client = await agent(running, pg_database, params={"application_name": app})
        try:
            msgs = await client.query(f"select pg_sleep(0.1), {i}", timeout=60)
            return rows(msgs)[0][1]
        finally:
            await client.close()

    crowd = [asyncio.ensure_future(one(i)) for i in range(15)]
    await until(lambda: server.server_slots.waiting > 0, what="clients to queue")
    seen_upstream.append(await backends(pg_dsn, app))
    results = await asyncio.wait_for(asyncio.gather(*crowd), 120)
    assert results == [str(i).encode() for i in range(15)]  # nobody got "too many clients"
    assert max(seen_upstream) <= 3
    await until(lambda: settled(server), what="every slot back")


async def test_the_wait_for_a_server_connection_ends_with_a_clear_53300(
    make_proxy: Any, pg_database: str
) -> None:
    running = make_proxy(upstream={"max_server_conn": 1, "server_wait_timeout": 0.3})
    holder = await agent(running, pg_database)
    with pytest.raises(ServerError) as info:
        await agent(running, pg_database)
    assert (info.value.error.severity, info.value.sqlstate) == ("FATAL", "53300")
    assert "upstream.max_server_conn = 1" in info.value.error.message
    await assert_healthy(holder)
    await holder.close()
    await until(lambda: running.server.server_slots.used == 0, what="the slot back")
    again = await agent(running, pg_database)
    await assert_healthy(again)
    await again.close()


async def test_a_client_that_leaves_the_queue_loses_its_place_and_nothing_else(
    make_proxy: Any, pg_database: str
) -> None:
    running = make_proxy(upstream={"max_server_conn": 1})
    server = running.server
    holder = await agent(running, pg_database)
    leaver = await RawClient.open(running.host, running.port)
    task = asyncio.ensure_future(
        leaver.startup(user=AGENT, password=_password(), database=pg_database)
    )
    await until(lambda: server.server_slots.waiting == 1, what="the client to queue")
    leaver.abort()
    await until(lambda: server.server_slots.waiting == 0, what="the queue to empty")
    await asyncio.gather(task, return_exceptions=True)
    assert server.clients == 1 and server.server_slots.used == 1
    await holder.close()
    await until(lambda: settled(server), what="everything released")


# --------------------------------------------------------------------------- churn


async def test_foreign_cancel_keys_cancel_nothing(make_proxy: Any, pg_database: str) -> None:
    running = make_proxy()
    client = await agent(running, pg_database)
    assert client.key is not None
    client.send(m.query("select pg_sleep(0.5), 'finished'"))
    forged = [(client.key.pid, secrets.token_bytes(len(client.key.secret)))]
    forged += [(secrets.randbelow(1 << 30) + 1, secrets.token_bytes(4)) for _ in range(20)]
    for pid, secret in forged:
        assert await send_cancel(running.host, running.port, pid, secret) == b""
    msgs = await client.until(m.ReadyForQuery)
    assert rows(msgs) == [(b"", b"finished")]
    await client.close()
    await until(lambda: settled(running.server), what="everything released")


async def test_many_short_connections_leak_nothing(
    make_proxy: Any, pg_database: str, pg_dsn: str
) -> None:
    app = "dbgate-churn"
    running = make_proxy(upstream={"max_server_conn": 8})
    server = running.server
    bystander = await agent(running, pg_database)
    await assert_healthy(bystander)
    await bystander.close()
    await until(lambda: settled(server), what="the bystander gone")
    fds = open_fds()

    async def one(i: int) -> None:
        client = await agent(running, pg_database, params={"application_name": app})
        if i % 3 == 0:
            client.send(m.query("select pg_sleep(5)"))
            client.abort()  # killed mid-query
            return
        assert rows(await client.query(f"select {i}")) == [(str(i).encode(),)]
        await client.close()

    for start in range(0, 300, 20):
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(start, start + 20))), 60)
    await until(lambda: settled(server), what="every session, slot and byte released")
    assert await wait_backends(pg_dsn, app, 0, timeout=10) == 0
    await until(lambda: open_fds() <= fds + 2, what="file descriptors back to the baseline")


async def test_connections_and_statements_write_nothing_at_info(
    make_proxy: Any, pg_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Operator log volume: connection events are DEBUG; a statement is never logged
    at INFO (the interval summary counts them)."""
    running = make_proxy(upstream={"max_server_conn": 1, "server_wait_timeout": 0.2})
    with caplog.at_level("INFO", logger="dbgate"):
        caplog.clear()
        for _ in range(5):
            client = await agent(running, pg_database)
            await client.close()
        bad = await agent(running, pg_database)
        bad.send(b"?\x00\x00\x00\x04")  # a protocol error ends one session
        await bad.until_closed(timeout=5)
        await until(lambda: settled(running.server), what="the slot back")
        holder = await agent(running, pg_database)
        with pytest.raises(ServerError):
            await agent(running, pg_database)  # refused: not worth a line each either
        for i in range(20):
            await holder.query(f"select {i}")
        await holder.close()
        await until(lambda: settled(running.server), what="everything released")
    noisy = [r for r in caplog.records if r.name.startswith("dbgate") and r.levelno >= 20]
    assert noisy == []
