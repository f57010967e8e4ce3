"""Cancellation must hit the statement it was meant for, and only that one."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import struct
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg

from dbgate.proxy.server import ProxyServer
from dbgate.wire import messages as m
from dbgate.wire.startup import CANCEL_REQUEST_CODE, CancelRequest
from dbgate.workers_cancel import CancelRelay
from tests.integration.rawclient import agent, errors, rows, send_cancel
from tests.integration.serve_process import wait_until


async def _stray_cancels(dsn: str, rounds: int) -> int:
    """Time out a short sleep (the driver sends a CancelRequest), then run another
    statement at once: count how often the cancel lands on that next statement."""
    conn = await asyncpg.connect(dsn)
    hits = 0
    try:
        for _ in range(rounds):
            with contextlib.suppress(TimeoutError):
                await conn.execute("select pg_sleep(0.05)", timeout=0.05)
            try:
                await conn.execute("select pg_sleep(0.2)")
            except asyncpg.QueryCanceledError:
                hits += 1
    finally:
        await conn.close()
    return hits


async def test_cancel_is_delivered_before_the_client_moves_on(proxy_dsn: str) -> None:
    # dbgate used to close the client's cancel connection as soon as it had written
    # the request upstream; drivers read that close as "done", so the cancel could
    # land on the following statement (18 of 40 rounds before the fix, 0 directly).
    assert await _stray_cancels(proxy_dsn, 20) == 0


async def test_client_min_messages_is_accepted_at_startup(proxy_dsn: str) -> None:
    conn = await asyncpg.connect(proxy_dsn, server_settings={"client_min_messages": "warning"})
    try:
        assert await conn.fetchval("show client_min_messages") == "warning"
    finally:
        await conn.close()


# --------------------------------------------------------------------------- ordering
# A PostgreSQL cancel is not bound to a statement: it interrupts whatever the backend
# runs when the signal arrives, and drivers take the close of their cancel connection
# as "delivered" and go on. The tests below put a CancelHop between dbgate and the
# server, so that the test, not the scheduler, decides when the server gets a cancel.


class CancelHop:
    """A TCP hop in front of PostgreSQL: relays sessions byte for byte and keeps each
    CancelRequest (counted) until the test lets it through (``hold``), then waits for
    the server to close the cancel connection before closing dbgate's."""

    def __init__(self, pg_server: Any, *, hold: bool = True) -> None:
        self.target = (pg_server.host, pg_server.port)
        self.hold = hold
        self.cancels = 0
        self.arrived: asyncio.Queue[asyncio.Event] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> CancelHop:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        try:
            head = await reader.readexactly(8)
            length, code = struct.unpack("!ii", head)
            if code != CANCEL_REQUEST_CODE:
                up_writer.write(head)
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
                return
            packet = head + await reader.readexactly(length - 8)
            self.cancels += 1
            release = asyncio.Event()
            self.arrived.put_nowait(release)
            if self.hold:
                await release.wait()
            up_writer.write(packet)
            await up_reader.read()  # the server closes once it has signalled the backend
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            up_writer.close()
            writer.close()
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


def _closed_by_peer(writer: asyncio.StreamWriter) -> bool:
    """Has the other end closed this connection, as the kernel sees it right now?"""
    sock = writer.get_extra_info("socket")
    with socket.fromfd(sock.fileno(), sock.family, sock.type) as peek:
        peek.setblocking(False)
        try:
            return peek.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False


async def _turns(loop: asyncio.AbstractEventLoop, n: int) -> None:
    """Let ``loop`` (another thread's) run ``n`` iterations: whatever it has ready to
    do, it has done by then. A count of turns, not a time."""

    async def turns() -> None:
        for _ in range(n):
            await asyncio.sleep(0)

    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(turns(), loop))


def _running(admin: asyncpg.Connection, pid: int, sql: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        state = await admin.fetchval(
            "select state from pg_stat_activity where pid = $1 and query = $2", pid, sql
        )
        return bool(state == "active")

    return check


@contextlib.contextmanager
def _sibling_workers(make_proxy: Any, upstream_port: int) -> Iterator[tuple[Any, Any]]:
    """Two proxies joined by the cancel relay of ``dbgate serve --workers 2``, on two
    ports, so that a test chooses which worker gets the session and which the
    CancelRequest. Both run on one event loop: what each does then happens in one
    order, run after run (as separate processes they race)."""
    first = make_proxy(upstream={"port": upstream_port})
    second = ProxyServer(first.config)
    first.call(second.start())
    directory = Path(tempfile.mkdtemp(prefix="dbgate-cancel-"))  # short: socket paths
    relays = []
    try:
        for index, server in enumerate((first.server, second)):
            relay = CancelRelay(directory, index, 2, server.cancel_here)
            first.call(relay.start())
            relays.append(relay)
            server.forward_cancel = relay.forward
        yield first, SimpleNamespace(host=first.host, port=second.port)
    finally:
        for relay in relays:
            first.call(relay.stop())
        first.call(second.stop(grace=0))
        shutil.rmtree(directory, ignore_errors=True)


async def test_a_cancel_landing_on_another_worker_is_answered_once_delivered(
    make_proxy: Any, pg_server: Any, pg_database: str
) -> None:
    # The worker that got the CancelRequest closed the client's cancel connection as
    # soon as it had handed the request to the session's worker. asyncpg then sent
    # its next statement, and the cancel interrupted that one: in asyncpg's own
    # test_copy_records_to_table_no_binary_codec the DROP TABLE after a failed COPY
    # (7 of 200 rounds through `dbgate serve` with 2 workers, 0 of 200 with 1).
    admin = await asyncpg.connect(pg_server.dsn(pg_database))
    try:
        async with CancelHop(pg_server) as hop:
            with _sibling_workers(make_proxy, hop.port) as (owner, other):
                client = await agent(owner, pg_database)
                assert client.key is not None
                try:
                    client.send(m.query("select pg_sleep(60)"))
                    await wait_until(_running(admin, client.key.pid, "select pg_sleep(60)"))
                    reader, writer = await asyncio.open_connection(other.host, other.port)
                    writer.write(CancelRequest(client.key.pid, client.key.secret).encode())
                    release = await asyncio.wait_for(hop.arrived.get(), 10)
                    # The server has not been signalled yet, and however many turns the
                    # workers get, the client must not be told that the cancel is done.
                    await _turns(owner.loop, 20)
                    assert not _closed_by_peer(writer)
                    release.set()
                    assert await asyncio.wait_for(reader.read(), 10) == b""
                    writer.close()
                    msgs = await client.until_ready()
                    assert [e.sqlstate for e in errors(msgs)] == ["57014"]
                    assert rows(await client.query("select 'next'")) == [(b"next",)]
                    assert hop.cancels == 1
                finally:
                    await client.close()
    finally:
        await admin.close()


async def test_what_the_client_sends_after_a_cancel_waits_until_the_server_has_it(
    make_proxy: Any, pg_server: Any, pg_database: str
) -> None:
    # A client that does not wait for its cancel connection to close: its next
    # statement must not reach the server before the cancel does, or the cancel
    # (meant for the statement before) would interrupt it.
    admin = await asyncpg.connect(pg_server.dsn(pg_database))
    await admin.execute("select pg_advisory_lock(7001), pg_advisory_lock(7002)")
    try:
        async with CancelHop(pg_server) as hop:
            running = make_proxy(upstream={"port": hop.port})
            client = await agent(running, pg_database)
            assert client.key is not None
            pid, secret = client.key.pid, client.key.secret
            try:
                first = "select pg_advisory_lock(7001)"  # runs until admin unlocks
                client.send(m.query(first))
                await wait_until(_running(admin, pid, first))
                cancel = asyncio.ensure_future(send_cancel(running.host, running.port, pid, secret))
                release = await asyncio.wait_for(hop.arrived.get(), 10)
                # The statement ends by itself before the server gets the cancel.
                await admin.execute("select pg_advisory_unlock(7001)")
                assert errors(await client.until_ready()) == []
                second = "select pg_advisory_lock(7002), 'second'"  # would run until unlocked
                client.send(m.query(second))
                session = running.server._sessions[pid]

                async def kept_back_or_running() -> bool:
                    return session.parked_bytes > 0 or await _running(admin, pid, second)()

                await wait_until(kept_back_or_running)
                release.set()
                assert await cancel == b""
                await admin.execute("select pg_advisory_unlock(7002)")
                msgs = await client.until_ready()
                assert errors(msgs) == [] and rows(msgs) == [(b"", b"second")]
            finally:
                await client.close()
    finally:
        await admin.execute("select pg_advisory_unlock_all()")
        await admin.close()


async def test_a_cancel_while_nothing_runs_is_not_sent_upstream(
    make_proxy: Any, pg_server: Any, pg_database: str
) -> None:
    # The server would ignore it; but the session's next statement could be running
    # by the time it arrives.
    async with CancelHop(pg_server, hold=False) as hop:
        running = make_proxy(upstream={"port": hop.port})
        client = await agent(running, pg_database)
        assert client.key is not None
        try:
            assert rows(await client.query("select 'done'")) == [(b"done",)]
            assert (
                await send_cancel(running.host, running.port, client.key.pid, client.key.secret)
                == b""
            )
            assert hop.cancels == 0
            assert rows(await client.query("select 'still here'")) == [(b"still here",)]
        finally:
            await client.close()
