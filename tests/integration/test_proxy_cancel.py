"""Cancellation must hit the statement it was meant for, and only that one."""

from __future__ import annotations

import contextlib

import asyncpg


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
