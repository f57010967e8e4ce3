"""One way to talk to the state database: a pool, a timeout, and a single error.

Everything in this room that reads or writes the state database goes through
:meth:`StateDB.connection`, so that an unreachable, slow or broken state database
always surfaces as :class:`~dbgate.approvals.errors.StateUnavailable` (HTTP 503, a
hold that fails closed) and never as a stray driver exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from dbgate.approvals.errors import StateUnavailable

log = logging.getLogger("dbgate.approvals")

#: Failures that mean "the state database did not do what we asked".
STATE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


def describe(exc: BaseException) -> str:
    """A one-line reason naming the failure, without connection strings."""
    if isinstance(exc, TimeoutError):
        return "the state database did not answer in time"
    if isinstance(exc, OSError):
        return f"cannot reach the state database ({exc.strerror or type(exc).__name__})"
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", "") or ""
        return f"the state database refused the request ({sqlstate}: {exc})"
    return f"the state database connection failed ({type(exc).__name__}: {exc})"


async def create_pool(dsn: str, *, max_size: int = 10, timeout: float = 5.0) -> asyncpg.Pool:
    """A pool that connects lazily: creating it never fails for an unreachable server."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=0,
        max_size=max_size,
        timeout=timeout,
        command_timeout=timeout,
        server_settings={"application_name": "dbgate-approvals"},
    )
    return pool


#: After the state database could not be reached, calls fail at once for this long
#: (one probe at a time gets through afterwards), so that a hundred held statements
#: during an outage are refused immediately instead of each waiting for a timeout.
COOL_OFF_SECONDS = 1.0


class StateDB:
    """A pool plus the per-call timeout, shared by the stores of this room."""

    def __init__(self, pool: asyncpg.Pool, *, timeout: float = 5.0) -> None:
        self.pool = pool
        self.timeout = timeout
        self._down_until = 0.0
        self._down_reason = ""

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        now = time.monotonic()
        if now < self._down_until:
            raise StateUnavailable(self._down_reason)
        try:
            async with self.pool.acquire(timeout=self.timeout) as conn:
                yield conn
        except STATE_ERRORS as e:
            reason = describe(e)
            if isinstance(e, asyncpg.PostgresError) and not isinstance(
                e, asyncpg.PostgresConnectionError | asyncpg.InvalidCatalogNameError
            ):
                log.error("state database error: %s", reason)
            else:
                self._down_until = time.monotonic() + COOL_OFF_SECONDS
                self._down_reason = reason
            raise StateUnavailable(reason) from e


async def listening_connection(
    dsn: str,
    timeout: float,
    application_name: str,
    channel: str,
    on_notify: Any,
    lost: Any,
) -> Any:
    """A connection to the state database that LISTENs on ``channel`` (its
    notifications to ``on_notify``) and sets the event ``lost`` when it ends: the
    start of every listening loop (approvals' wake-ups, replicas' schema changes).
    Raises one of :data:`STATE_ERRORS` when it cannot be made; a connection made
    before the LISTEN failed is closed first."""
    conn = await asyncpg.connect(
        dsn, timeout=timeout, server_settings={"application_name": application_name}
    )
    try:
        conn.add_termination_listener(lambda _c: lost.set())
        await conn.add_listener(channel, on_notify)
    except BaseException:
        conn.terminate()
        raise
    return conn


async def until_lost(conn: Any, lost: Any, probe_seconds: float, timeout: float) -> bool:
    """Wait while a listening connection lives: return when ``lost`` is set (True) or
    the connection stops answering a ``SELECT 1`` sent every ``probe_seconds`` (False:
    a connection the network dropped silently sets nothing)."""
    while not lost.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(probe_seconds):
                await lost.wait()
            return True
        try:
            await asyncio.wait_for(conn.execute("SELECT 1"), timeout)
        except STATE_ERRORS:
            return False
    return True
