"""Graceful shutdown: idle sessions are told why and closed, open transactions may
finish within the grace period, and nobody new gets in."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest

from dbgate.wire import messages as m
from tests.integration.rawclient import ServerError, agent, errors, rows, status


def fatal(msgs: list[Any]) -> Any:
    errs = errors(msgs)
    assert len(errs) == 1 and errs[0].severity == "FATAL", msgs
    return errs[0]


async def stop_in_background(running: Any, grace: float) -> asyncio.Future[Any]:
    """Start ``ProxyServer.stop`` on the proxy's loop; return a future of its end.

    (``RunningProxy.stop`` would also stop the loop, and the fixture stops it again.)
    """
    return asyncio.ensure_future(
        asyncio.to_thread(running.call, running.server.stop(grace=grace), grace + 10)
    )


async def test_stop_closes_idle_session_with_57p01(make_proxy: Any, pg_database: str):
    running = make_proxy()
    idle = await agent(running, pg_database)
    assert rows(await idle.query("select 1")) == [(b"1",)]
    started = time.monotonic()
    stopping = await stop_in_background(running, grace=5)
    msgs = await idle.until_closed(timeout=5)
    error = fatal(msgs)
    assert error.sqlstate == "57P01"
    assert time.monotonic() - started < 2  # idle: no need to wait for the grace period
    await stopping
    assert running.server.session_count == 0


async def test_transaction_may_commit_within_grace_then_closes(
    make_proxy: Any, pg_database: str, pg_dsn: str
):
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute("drop table if exists shut_t; create table shut_t(x int)")
    running = make_proxy()
    busy = await agent(running, pg_database)
    try:
        await busy.query("begin")
        await busy.query("insert into shut_t values (1)")
        stopping = await stop_in_background(running, grace=5)
        await asyncio.sleep(0.3)
        # the session in a transaction is left alone for now
        assert await busy.nothing_for(0.2) == []
        # new connections are refused while draining
        with pytest.raises((ServerError, OSError)) as info:
            await agent(running, pg_database)
        if isinstance(info.value, ServerError):
            assert info.value.sqlstate == "57P03"
        # the open transaction finishes normally ...
        msgs = await busy.query("insert into shut_t values (2)")
        assert status(msgs) == "T" and errors(msgs) == []
        busy.send(m.query("commit"))
        msgs = await busy.until_closed(timeout=5)
        # ... gets its CommandComplete and ReadyForQuery, then the FATAL and the close
        assert [type(x).__name__ for x in msgs] == [
            "CommandComplete",
            "ReadyForQuery",
            "ErrorResponse",
        ]
        assert fatal(msgs).sqlstate == "57P01"
        await stopping
        assert await conn.fetchval("select count(*) from shut_t") == 2
    finally:
        await conn.execute("drop table if exists shut_t")
        await conn.close()


async def test_transaction_that_outlives_grace_is_closed_and_rolled_back(
    make_proxy: Any, pg_database: str, pg_dsn: str
):
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute("drop table if exists shut_u; create table shut_u(x int)")
    running = make_proxy()
    slow = await agent(running, pg_database, params={"application_name": "dbgate-shutdown"})
    try:
        await slow.query("begin")
        await slow.query("insert into shut_u values (1)")
        slow.send(m.query("select pg_sleep(30)"))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        stopping = await stop_in_background(running, grace=1)
        msgs = await slow.until_closed(timeout=10)
        assert fatal(msgs).sqlstate == "57P01"
        assert 0.8 < time.monotonic() - started < 5
        await stopping
        assert await conn.fetchval("select count(*) from shut_u") == 0
        # and the backend is gone, not sleeping on
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            n = await conn.fetchval(
                "select count(*) from pg_stat_activity where application_name = 'dbgate-shutdown'"
            )
            if n == 0:
                break
            await asyncio.sleep(0.1)
        assert n == 0
    finally:
        await conn.execute("drop table if exists shut_u")
        await conn.close()
