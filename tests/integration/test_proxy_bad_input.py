"""Bad input: the affected client gets a clear error (or a clean close), everyone else
on the same proxy keeps working, and nothing is left running upstream."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from dbgate.embedded import EmbeddedPostgres, find_free_port
from dbgate.wire import messages as m
from dbgate.wire.startup import StartupMessage
from tests.integration.conftest import AGENT
from tests.integration.rawclient import RawClient, ServerError, agent, rows


async def assert_healthy(client: RawClient) -> None:
    """The bystander session still answers, with the right data."""
    msgs = await client.query("select 'healthy', count(*) from generate_series(1, 10)")
    assert rows(msgs) == [(b"healthy", b"10")]


@pytest.fixture
async def bystander(proxy: Any, pg_database: str) -> AsyncIterator[RawClient]:
    client = await agent(proxy, pg_database)
    client.send(m.query("begin"))  # mid-transaction while the others misbehave
    await client.until_ready()
    yield client
    await assert_healthy(client)
    await client.query("commit")
    await client.close()


def fatal(msgs: list[Any]) -> m.ErrorResponse:
    errs = [x for x in msgs if isinstance(x, m.ErrorResponse)]
    assert len(errs) == 1, msgs
    assert errs[0].severity == "FATAL"
    return errs[0]


async def backends(pg_dsn: str, app: str) -> int:
    conn = await asyncpg.connect(pg_dsn)
    try:
        return await conn.fetchval(
            "select count(*) from pg_stat_activity where application_name = $1", app
        )
    finally:
        await conn.close()


async def wait_backends(pg_dsn: str, app: str, expected: int, timeout: float = 5) -> int:
    deadline = time.monotonic() + timeout
    while True:
        n = await backends(pg_dsn, app)
        if n == expected or time.monotonic() > deadline:
            return n
        await asyncio.sleep(0.1)


# --------------------------------------------------------------------------- startup


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # 'GET ' read as a huge length
        b"\x00\x00\x00\x03",  # length below the minimum
        b"\x00\x00\x00\x10\x00\x02\x00\x00user\x00x\x00\x00",  # protocol 2.0
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f" + b"\x00" * 8,  # SSLRequest, then more junk
    ],
    ids=["http", "short-length", "protocol-2", "junk-after-sslrequest"],
)
async def test_garbage_instead_of_startup(proxy: Any, bystander: RawClient, garbage: bytes):
    client = await RawClient.open(proxy.host, proxy.port)
    client.send(garbage)
    data = await client.read_raw(timeout=5)  # the proxy closes the connection
    if data.startswith(b"N"):
        data = data[1:]  # the answer to the SSLRequest
    assert data[:1] == b"E", data
    error = m.decode_backend(ord("E"), data[5 : 1 + int.from_bytes(data[1:5], "big")])
    assert error.severity == "FATAL" and error.sqlstate in ("08P01", "0A000")
    await assert_healthy(bystander)


async def test_oversized_startup_length(proxy: Any, bystander: RawClient):
    client = await RawClient.open(proxy.host, proxy.port)
    client.send((1 << 30).to_bytes(4, "big") + b"\x00\x03\x00\x00")
    msgs = await client.until_closed(timeout=5)
    assert "invalid startup packet length" in fatal(msgs).message
    await assert_healthy(bystander)


@pytest.mark.parametrize(
    ("param", "value", "words"),
    [
        ("options", "-c role=postgres", "'options'"),
        ("role", "postgres", "'role'"),
        ("session_authorization", "postgres", "'session_authorization'"),
        ("replication", "database", "replication"),
    ],
)
async def test_dangerous_startup_parameters_are_refused(
    proxy: Any, pg_database: str, bystander: RawClient, param: str, value: str, words: str
):
    with pytest.raises(ServerError) as info:
        await agent(proxy, pg_database, params={param: value})
    error = info.value.error
    assert error.severity == "FATAL" and error.sqlstate == "42501"
    assert words in error.message and "not allowed" in error.message
    await assert_healthy(bystander)


async def test_wrong_password_unknown_identity_and_bad_proof(
    proxy: Any, pg_database: str, bystander: RawClient
):
    with pytest.raises(ServerError) as wrong:
        await agent(proxy, pg_database, password="not-the-password")
    with pytest.raises(ServerError) as unknown:
        await agent(proxy, pg_database, user="nobody", password="whatever")
    with pytest.raises(ServerError) as forged:
        await agent(proxy, pg_database, bad_proof=True)
    for info, user in ((wrong, AGENT), (unknown, "nobody"), (forged, AGENT)):
        error = info.value.error
        assert (error.severity, error.sqlstate) == ("FATAL", "28P01")
        assert error.message == f'password authentication failed for user "{user}"'
    await assert_healthy(bystander)


async def test_unknown_identity_walks_the_same_scram_steps(proxy: Any, pg_database: str):
    seen = []
    for user in (AGENT, "nobody"):
        client = await RawClient.open(proxy.host, proxy.port)
        with contextlib.suppress(ServerError):
            await client.startup(user=user, password="wrong", database=pg_database)
        seen.append([type(x).__name__ for x in client.startup_messages])
        client.abort()
    assert (
        seen[0]
        == seen[1]
        == [
            "AuthenticationSASL",
            "AuthenticationSASLContinue",
            "ErrorResponse",
        ]
    )


async def test_startup_timeout(make_proxy: Any, pg_database: str):
    running = make_proxy(limits={"startup_timeout": 0.5})
    other = await agent(running, pg_database)
    try:
        silent = await RawClient.open(running.host, running.port)
        started = time.monotonic()
        msgs = await silent.until_closed(timeout=5)
        assert 0.4 < time.monotonic() - started < 3
        assert "timed out" in fatal(msgs).message
        # a client that stalls half-way through SCRAM is cut off too
        stalled = await RawClient.open(running.host, running.port)
        stalled.send(StartupMessage((3, 0), {"user": AGENT, "database": pg_database}).encode())
        msgs = await stalled.until_closed(timeout=5)
        assert "timed out" in fatal(msgs).message
        # an authenticated session is not subject to the startup timeout
        await asyncio.sleep(0.6)
        await assert_healthy(other)
    finally:
        await other.close()


async def test_too_many_connections(make_proxy: Any, pg_database: str):
    running = make_proxy(limits={"max_client_conn": 2})
    first = await agent(running, pg_database)
    second = await agent(running, pg_database)
    try:
        with pytest.raises(ServerError) as info:
            await agent(running, pg_database)
        assert (info.value.error.severity, info.value.sqlstate) == ("FATAL", "53300")
        await assert_healthy(first)
        await second.close()
        deadline = time.monotonic() + 5
        while running.server.session_count > 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        third = await agent(running, pg_database)  # a slot is free again
        await assert_healthy(third)
        await third.close()
    finally:
        await first.close()


# --------------------------------------------------------------------------- after auth


async def test_oversized_message_after_auth(proxy: Any, pg_database: str, bystander: RawClient):
    client = await agent(proxy, pg_database)
    client.send(b"Q" + (0x7FFFFFF0).to_bytes(4, "big") + b"select 1")
    msgs = await client.until_closed(timeout=5)
    error = fatal(msgs)
    assert error.sqlstate == "54000" and "over the limit" in error.message
    await assert_healthy(bystander)


async def test_invalid_length_after_auth(proxy: Any, pg_database: str, bystander: RawClient):
    client = await agent(proxy, pg_database)
    client.send(b"Q\x00\x00\x00\x02")
    error = fatal(await client.until_closed(timeout=5))
    assert error.sqlstate == "08P01" and "invalid message length" in error.message
    await assert_healthy(bystander)


async def test_unknown_message_type_after_auth(proxy: Any, pg_database: str, bystander: RawClient):
    client = await agent(proxy, pg_database)
    client.send(b"?\x00\x00\x00\x04")
    error = fatal(await client.until_closed(timeout=5))
    assert error.sqlstate == "08P01"
    await assert_healthy(bystander)


async def test_truncated_message_then_close(
    proxy: Any, pg_database: str, pg_dsn: str, bystander: RawClient
):
    app = "dbgate-truncated"
    before = proxy.server.session_count
    client = await agent(proxy, pg_database, params={"application_name": app})
    assert await backends(pg_dsn, app) == 1
    client.send(b"Q\x00\x00\x00\x40select")  # 64 bytes announced, 6 sent
    await asyncio.sleep(0.1)
    client.abort()
    assert await wait_backends(pg_dsn, app, 0) == 0
    deadline = time.monotonic() + 5
    while proxy.server.session_count > before and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert proxy.server.session_count == before
    await assert_healthy(bystander)


async def test_client_vanishes_mid_query(
    proxy: Any, pg_database: str, pg_dsn: str, bystander: RawClient
):
    app = "dbgate-vanish"
    client = await agent(proxy, pg_database, params={"application_name": app})
    client.send(m.query("select pg_sleep(30)"))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        conn = await asyncpg.connect(pg_dsn)
        state = await conn.fetchval(
            "select state from pg_stat_activity where application_name = $1", app
        )
        await conn.close()
        if state == "active":
            break
        await asyncio.sleep(0.05)
    assert state == "active"
    client.abort()
    # the upstream backend must not sleep on for 30 s holding a connection
    assert await wait_backends(pg_dsn, app, 0, timeout=5) == 0
    await assert_healthy(bystander)


# --------------------------------------------------------------------------- upstream


@pytest.fixture
def own_upstream() -> Any:
    tmp = Path(tempfile.mkdtemp(prefix="dbgate-restart-"))
    pg = EmbeddedPostgres(tmp / "data", port=find_free_port())
    pg.start()
    yield pg
    pg.stop()
    shutil.rmtree(tmp, ignore_errors=True)


async def test_upstream_restart(make_proxy: Any, own_upstream: Any, proxy: Any, pg_database: str):
    pg = own_upstream
    running = make_proxy(
        upstream={"host": pg.host, "port": pg.port, "user": pg.user, "password": pg.password}
    )
    bystander = await agent(proxy, pg_database)  # a session on another upstream
    client = await agent(running, "postgres")
    try:
        assert rows(await client.query("select 1")) == [(b"1",)]
        await asyncio.to_thread(pg.stop)
        msgs = await client.until_closed(timeout=10)
        error = fatal(msgs)
        assert error.sqlstate in ("57P01", "08006"), error
        # while it is down, new clients get a clear error, not a hang
        with pytest.raises(ServerError) as info:
            await agent(running, "postgres")
        assert info.value.error.severity == "FATAL"
        assert info.value.sqlstate in ("08006", "57P03")
        await assert_healthy(bystander)
        await asyncio.to_thread(pg.start)
        again = await agent(running, "postgres")
        assert rows(await again.query("select 'back'")) == [(b"back",)]
        await again.close()
    finally:
        await bystander.close()
