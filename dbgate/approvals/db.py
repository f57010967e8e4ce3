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
from collections.abc import AsyncIterator, Callable
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


class ChannelListener:
    """One connection to the state database that LISTENs on ``channel`` for as long as
    it runs (approvals' wake-ups, replicas' schema changes): notifications go to
    ``on_notify(payload)``. A connection that cannot be made, is lost, or stops
    answering a ``SELECT 1`` sent every ``probe_seconds`` (a connection the network
    dropped silently says nothing) is made again, after 50 ms doubling to 5 s while it
    keeps failing. What was notified while nobody listened is not delivered:
    ``on_listening`` runs each time it listens (again), for the owner to look for it.
    ``listening`` is set while it listens. ``what`` names it in the log."""

    def __init__(
        self,
        dsn: str,
        channel: str,
        on_notify: Callable[[str], None],
        *,
        application_name: str,
        what: str,
        timeout: float = 5.0,
        probe_seconds: float = 10.0,
        on_listening: Callable[[], None] = lambda: None,
    ) -> None:
        self._dsn = dsn
        self._channel = channel
        self._on_notify = on_notify
        self._application_name = application_name
        self._what = what
        self._timeout = timeout
        self._probe_seconds = probe_seconds
        self._on_listening = on_listening
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.listening = asyncio.Event()

    async def start(self) -> None:
        self._closing = False
        self._task = asyncio.create_task(self._loop(), name=self._application_name)

    async def stop(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close()

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        self.listening.clear()
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(*STATE_ERRORS):
                await asyncio.wait_for(conn.close(), self._timeout)

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self._on_notify(payload)

    async def _connect(self, lost: asyncio.Event) -> Any:
        conn = await asyncpg.connect(
            self._dsn,
            timeout=self._timeout,
            server_settings={"application_name": self._application_name},
        )
        try:
            conn.add_termination_listener(lambda _c: lost.set())
            await conn.add_listener(self._channel, self._notified)
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def _loop(self) -> None:
        backoff = 0.05
        while not self._closing:
            lost = asyncio.Event()
            try:
                conn = self._conn = await self._connect(lost)
            except STATE_ERRORS as e:
                await self._close()
                log.warning("cannot listen for %s (%s); retrying", self._what, describe(e))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.05
            self.listening.set()
            self._on_listening()
            if not await self._until_lost(conn, lost):
                log.warning(
                    "the connection listening for %s stopped answering; reconnecting", self._what
                )
            await self._close()

    async def _until_lost(self, conn: Any, lost: asyncio.Event) -> bool:
        """Wait while the connection lives: True when it was lost, False when it
        stopped answering the probe."""
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._probe_seconds):
                    await lost.wait()
                return True
            try:
                await asyncio.wait_for(conn.execute("SELECT 1"), self._timeout)
            except STATE_ERRORS:
                return False
        return True
