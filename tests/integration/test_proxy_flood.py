"""A client flood at the accept queue: hundreds of connections at once, and one agent
that keeps working.

The crowd is the mix a port open to a network meets: connections that never send a
startup packet, connections that send garbage, drivers that send a proper startup,
and connections that open and close at once. Before login, dbgate holds at most
``limits.max_client_conn`` connections (``ProxyServer._unadmitted``), reads from at
most ``limits.max_logins`` of them, and gives each ``limits.startup_timeout`` to
log in. The test fills that room first with silent connections, so that what
happens to the flood does not depend on timing: every connection of the flood that
stays to listen gets a FATAL 53300 at once; the silent ones get FATAL 08P01
"startup timed out" when their time is up; garbage sent once there is room again
gets a protocol error. Throughout, an agent already logged in runs its statements,
and afterwards the proxy's connection accounting and the process's file
descriptors are back where they started.
"""

from __future__ import annotations

import asyncio
from typing import Any

from dbgate.wire import messages as m
from dbgate.wire.startup import StartupMessage
from tests.integration.conftest import AGENT
from tests.integration.rawclient import RawClient, agent, rows
from tests.integration.test_proxy_bad_input import assert_healthy
from tests.integration.test_proxy_hostile import open_fds, until

MAX_CLIENT_CONN = 32
MAX_LOGINS = 8
STARTUP_TIMEOUT = 3.0
FLOOD_EACH = 100  # connections of each kind at once: 400 in all

#: Not a startup packet, each in its own way (as in test_proxy_bad_input).
GARBAGE = (
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # 'GET ' read as a huge length
    b"\x00\x00\x00\x03",  # length below the minimum
    b"\x00\x00\x00\x10\x00\x02\x00\x00user\x00x\x00\x00",  # protocol 2.0
    b"\x00\x00\x00\x08\x04\xd2\x16\x2f" + b"\x00" * 8,  # SSLRequest, then junk
)


class _Ear(asyncio.Protocol):
    """A bare connection that keeps every byte it hears and how it ended.

    A refusal sent before dbgate read what the client had already sent ends with a
    TCP reset right after the error (the kernel resets a socket closed with unread
    input); the error still arrives first. A StreamReader would drop it when the
    reset comes before the read, so this reads at the protocol level.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.heard = bytearray()
        self.ended: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.heard += data

    def eof_received(self) -> bool:
        return False  # close: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended.done():
            self.ended.set_result(exc)

    async def answers(self, timeout: float) -> list[Any]:
        """Backend messages heard until dbgate closed the connection."""
        await asyncio.wait_for(asyncio.shield(self.ended), timeout)
        return _answers(bytes(self.heard))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def _ear(host: str, port: int) -> _Ear:
    loop = asyncio.get_running_loop()
    _, ear = await asyncio.wait_for(loop.create_connection(_Ear, host, port), 10)
    return ear


def _answers(raw: bytes) -> list[Any]:
    """Backend messages in ``raw``, after the one-byte answer to an SSLRequest."""
    if raw[:1] in (b"N", b"S"):
        raw = raw[1:]
    out = []
    while len(raw) >= 5:
        length = int.from_bytes(raw[1:5], "big")
        out.append(m.decode_backend(raw[0], raw[5 : 1 + length]))
        raw = raw[1 + length :]
    assert raw == b"", f"a partial message: {raw!r}"
    return out


def _fatal(answers: list[Any]) -> m.ErrorResponse:
    """The one thing a refused connection hears: a single FATAL ErrorResponse."""
    assert len(answers) == 1 and isinstance(answers[0], m.ErrorResponse), answers
    assert answers[0].severity == "FATAL"
    return answers[0]


async def _knock(host: str, port: int, kind: str, i: int, database: str) -> list[Any] | None:
    """One connection of the flood; what it heard before dbgate closed it (None for
    a connection that closes at once)."""
    ear = await _ear(host, port)
    assert ear.transport is not None
    try:
        if kind == "hit-and-run":
            return None
        if kind == "garbage":
            ear.transport.write(GARBAGE[i % len(GARBAGE)])
        elif kind == "startup":
            ear.transport.write(
                StartupMessage((3, 0), {"user": AGENT, "database": database}).encode()
            )
        return await ear.answers(timeout=30)
    finally:
        ear.abort()


async def _keep_working(client: RawClient, until_done: asyncio.Future[Any]) -> int:
    """Statements from the logged-in agent until ``until_done``; how many ran (>= 1)."""
    served = 0
    while not until_done.done() or served == 0:
        assert rows(await client.query(f"select {served}")) == [(str(served).encode(),)]
        served += 1
    return served


def _quiet(server: Any) -> bool:
    """No connection before login left anywhere in the proxy's accounting."""
    return (
        server._connections == 0
        and not server._unadmitted
        and not server._handshakes
        and server.logins_in_progress == 0
        and server.unadmitted_bytes() == 0
    )


async def test_a_flood_at_the_accept_queue_is_refused_clearly_and_leaves_nothing_behind(
    make_proxy: Any, pg_database: str
) -> None:
    running = make_proxy(
        limits={
            "max_client_conn": MAX_CLIENT_CONN,
            "max_logins": MAX_LOGINS,
            "startup_timeout": STARTUP_TIMEOUT,
        }
    )
    server, host, port = running.server, running.host, running.port
    good = await agent(running, pg_database)
    await assert_healthy(good)
    await until(lambda: _quiet(server), what="the agent's own login finished")
    baseline = open_fds()

    # 1. The room before login fills with connections that never say a word.
    silent = [await _ear(host, port) for _ in range(MAX_CLIENT_CONN)]
    await until(lambda: len(server._unadmitted) == MAX_CLIENT_CONN, what="the room full")
    assert server.logins_in_progress == MAX_LOGINS  # the others wait for a login slot
    await assert_healthy(good)

    # 2. The flood, all at once, while the agent works.
    kinds = ("silent", "garbage", "startup", "hit-and-run")
    flood = asyncio.gather(
        *(_knock(host, port, kind, i, pg_database) for i in range(FLOOD_EACH) for kind in kinds)
    )
    served = await _keep_working(good, flood)
    heard = await flood
    assert served >= 1
    for n, answers in enumerate(heard):
        if kinds[n % len(kinds)] == "hit-and-run":
            continue
        error = _fatal(answers)
        assert error.sqlstate == "53300", (kinds[n % len(kinds)], error)
        assert "too many clients already" in error.message
    assert len(server._unadmitted) <= MAX_CLIENT_CONN

    # 3. The silent ones are closed when their startup_timeout runs out.
    timed_out = asyncio.gather(*(c.answers(timeout=STARTUP_TIMEOUT + 30) for c in silent))
    served += await _keep_working(good, timed_out)
    for answers in await timed_out:
        error = _fatal(answers)
        assert (error.sqlstate, error.message) == ("08P01", "dbgate: startup timed out")
    for c in silent:
        c.abort()
    await until(lambda: _quiet(server), what="every connection before login gone")

    # 4. With room again, garbage is read and refused as what it is.
    garbage = asyncio.gather(
        *(_knock(host, port, "garbage", i, pg_database) for i in range(MAX_CLIENT_CONN))
    )
    served += await _keep_working(good, garbage)
    for answers in await garbage:
        assert _fatal(answers).sqlstate in ("08P01", "0A000")

    # Nothing left: the proxy's accounting, the sockets, and a newcomer is served.
    await until(lambda: _quiet(server), what="every connection before login gone")
    assert server.session_count == 1 and server.clients == 1  # the agent's, still open
    await until(lambda: open_fds() <= baseline, what="file descriptors back to the baseline")
    newcomer = await agent(running, pg_database)
    await assert_healthy(newcomer)
    await assert_healthy(good)
    for client in (newcomer, good):
        await client.close()
    await until(lambda: server.session_count == 0 and server.server_slots.used == 0)
