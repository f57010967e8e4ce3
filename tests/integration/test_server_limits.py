"""dbgate never drives a real server into "too many clients" for everyone.

A PostgreSQL of its own with a small ``max_connections`` (12, of which 3 are
reserved for superusers and 2 for ``pg_use_reserved_connections``: 7 for ordinary
roles) stands behind the proxy, which logs in as an ordinary role. A crowd larger
than the server accepts goes through dbgate: every client is served, in turn, and
none sees the server's refusal; dbgate's limit is what it read from the server (and
what it logged). When other clients fill the server anyway, a dbgate client waits
for a connection to free up, and gets dbgate's own 53300 when none does in time.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from dbgate.embedded import EmbeddedPostgres, find_free_port
from dbgate.proxy.capacity import ServerLimits
from dbgate.workers_process import Seat, worker_config
from tests.integration.conftest import RunningProxy, proxy_config
from tests.integration.rawclient import ServerError, agent, rows
from tests.integration.test_proxy_hostile import settled, until

ROLE, ROLE_PASSWORD = "capacity_agent", "capacity-agent-pw"
SMALL = {
    "max_connections": "12",
    "superuser_reserved_connections": "3",
    "reserved_connections": "2",
}
APP = "dbgate-server-limits"


@pytest.fixture(scope="module")
def small_server() -> Iterator[EmbeddedPostgres]:
    tmp = Path(tempfile.mkdtemp(prefix="dbgate-small-"))
    pg = EmbeddedPostgres(tmp / "data", port=find_free_port(), settings=SMALL)
    pg.start()
    pg.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{ROLE_PASSWORD}'")
    yield pg
    pg.stop()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def small_proxy(small_server: EmbeddedPostgres) -> Iterator[Any]:
    started: list[RunningProxy] = []

    def start(config: Any = None, **upstream: Any) -> RunningProxy:
        if config is None:
            config = limited_config(small_server, **upstream)
        running = RunningProxy(config).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def limited_config(pg: EmbeddedPostgres, **upstream: Any) -> Any:
    return proxy_config(
        pg,
        upstream={"user": ROLE, "password": ROLE_PASSWORD, **upstream},
        limits={"max_client_conn": 100},
    )


async def ours(pg: EmbeddedPostgres) -> int:
    """Backends of dbgate's sessions now (asked as the superuser: a reserved slot)."""
    conn = await asyncpg.connect(pg.dsn())
    try:
        return int(
            await conn.fetchval(
                "select count(*) from pg_stat_activity where application_name = $1", APP
            )
        )
    finally:
        await conn.close()


async def crowd(running: RunningProxy, pg: EmbeddedPostgres, n: int) -> tuple[list[bytes], int]:
    """``n`` clients at once, each running a short sleep; their answers and the most
    upstream backends seen meanwhile."""
    most = 0
    done = asyncio.Event()

    async def one(i: int) -> bytes:
        client = await agent(running, "postgres", params={"application_name": APP})
        try:
            msgs = await client.query(f"select pg_sleep(0.05), {i}", timeout=60)
            return rows(msgs)[0][1]
        finally:
            await client.close()

    async def watch() -> None:
        nonlocal most
        while not done.is_set():
            most = max(most, await ours(pg))
            await asyncio.sleep(0.01)

    watcher = asyncio.ensure_future(watch())
    try:
        answers = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), 120)
    finally:
        done.set()
        await watcher
    return answers, most


async def test_without_a_configured_limit_dbgate_derives_it_from_the_server(
    small_server: EmbeddedPostgres, small_proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dbgate.proxy")
    running = small_proxy()
    answers, most = await crowd(running, small_server, 20)
    assert answers == [str(i).encode() for i in range(20)]  # nobody got "too many clients"
    capacity = running.server.capacity
    assert capacity.server == ServerLimits(12, 3, 2)
    assert capacity.limit.value == 5  # 7 for ordinary roles, less a margin of 2
    assert most <= 5
    logged = [
        r.getMessage() for r in caplog.records if "upstream.max_server_conn:" in r.getMessage()
    ]
    assert logged == [
        "upstream.max_server_conn: 5 server connections (derived from the server: "
        "max_connections 12 - superuser_reserved_connections 3 - reserved_connections 2 = 7 "
        "connections for ordinary roles, less 2 for other clients; set "
        "upstream.max_server_conn to choose)"
    ]
    await until(lambda: settled(running.server), what="every slot back")


async def test_a_configured_limit_above_the_servers_is_capped(
    small_server: EmbeddedPostgres, small_proxy: Any
) -> None:
    running = small_proxy(max_server_conn=500)
    answers, most = await crowd(running, small_server, 20)
    assert answers == [str(i).encode() for i in range(20)]
    assert running.server.capacity.limit.value == 7
    assert "capped to what the server accepts" in running.server.capacity.limit.reason
    assert most <= 7
    await until(lambda: settled(running.server), what="every slot back")


async def test_workers_share_the_limit_read_from_the_server(
    small_server: EmbeddedPostgres, small_proxy: Any
) -> None:
    base = limited_config(small_server)
    limits = []
    for index in range(2):
        config = worker_config(base, Seat(index, 2, Path("/tmp"), 1, "r"))
        running = small_proxy(config)
        client = await agent(running, "postgres")  # the first session reads the server
        await client.close()
        limits.append(running.server.capacity.limit.value)
    assert limits == [3, 2]  # 5 in all, as one process would have


async def test_a_server_filled_by_others_makes_dbgate_clients_wait_not_fail(
    small_server: EmbeddedPostgres, small_proxy: Any
) -> None:
    running = small_proxy(server_wait_timeout=60)
    first = await agent(running, "postgres")  # the limits are read; one slot in use
    await first.close()
    dsn = f"postgresql://{ROLE}:{ROLE_PASSWORD}@{small_server.host}:{small_server.port}/postgres"
    others: list[asyncpg.Connection] = []
    try:
        while True:  # others take every connection the server gives ordinary roles
            try:
                others.append(await asyncpg.connect(dsn))
            except asyncpg.TooManyConnectionsError:
                break
        assert len(others) == 7
        waiting = asyncio.ensure_future(agent(running, "postgres"))
        await until(lambda: running.server.server_slots.used == 1, what="a login to start")
        assert not waiting.done()
        await others.pop().close()  # one frees up: the waiting client gets it
        client = await asyncio.wait_for(waiting, 30)
        assert rows(await client.query("select 'in'")) == [(b"in",)]
        await client.close()
    finally:
        for conn in others:
            await conn.close()
    await until(lambda: settled(running.server), what="every slot back")


async def test_a_server_full_for_too_long_gets_dbgates_53300_not_the_servers(
    small_server: EmbeddedPostgres, small_proxy: Any
) -> None:
    running = small_proxy(server_wait_timeout=0.5)
    dsn = f"postgresql://{ROLE}:{ROLE_PASSWORD}@{small_server.host}:{small_server.port}/postgres"
    others: list[asyncpg.Connection] = []
    try:
        while True:
            try:
                others.append(await asyncpg.connect(dsn))
            except asyncpg.TooManyConnectionsError:
                break
        with pytest.raises(ServerError) as info:
            await agent(running, "postgres")
        error = info.value.error
        assert (error.severity, error.sqlstate) == ("FATAL", "53300")
        assert error.message.startswith("dbgate: the database server has no connection free")
    finally:
        for conn in others:
            await conn.close()
    client = await agent(running, "postgres")  # and once there is room, all is well
    assert rows(await client.query("select 'in'")) == [(b"in",)]
    await client.close()
    await until(lambda: settled(running.server), what="every slot back")
