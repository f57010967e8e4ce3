"""Announcements of schema changes through the state database (LISTEN/NOTIFY on
channel ``dbgate_schema``): the :class:`~dbgate.gate.schema_peers.PeerTransport` of
replicas and workers that share one.

A NOTIFY is delivered once its transaction commits, so ``send`` returning means every
process listening then will hear it. A process whose listening connection was lost
reconnects with back-off and, since what was announced meanwhile is not known, has
every snapshot read again (``lost_word``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from dbgate.approvals.db import STATE_ERRORS, describe, listening_connection, until_lost
from dbgate.gate.schema_peers import HEARTBEAT_SECONDS, PeersUnreachable

log = logging.getLogger("dbgate.gate")

CHANNEL = "dbgate_schema"


class NotifyTransport:
    """Sends on a pool of the state database; hears on a connection of its own."""

    def __init__(self, dsn: str, pool: Any, *, timeout: float = 5.0) -> None:
        self._dsn = dsn
        self._pool = pool
        self._timeout = timeout
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._heard: Callable[[str], None] = lambda payload: None
        self._lost_word: Callable[[], None] = lambda: None
        self.listening = asyncio.Event()

    async def start(self, heard: Callable[[str], None], lost_word: Callable[[], None]) -> None:
        self._heard, self._lost_word = heard, lost_word
        self._closing = False
        self._task = asyncio.create_task(self._listen_loop(), name="dbgate-schema-listen")

    async def stop(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close_conn()

    async def send(self, payload: str) -> None:
        try:
            await self._pool.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
        except STATE_ERRORS as e:
            raise PeersUnreachable(f"the state database: {describe(e)}") from e

    async def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        self.listening.clear()
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(*STATE_ERRORS):
                await asyncio.wait_for(conn.close(), self._timeout)

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self._heard(payload)

    async def _listen_loop(self) -> None:
        backoff = 0.05
        while not self._closing:
            lost = asyncio.Event()
            try:
                conn = self._conn = await listening_connection(
                    self._dsn, self._timeout, "dbgate-schema-listen", CHANNEL, self._on_notify, lost
                )
            except STATE_ERRORS as e:
                await self._close_conn()
                log.warning("cannot listen for other replicas' DDL (%s); retrying", describe(e))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.05
            # what was announced while nobody listened is not known
            self._lost_word()
            self.listening.set()
            if not await until_lost(conn, lost, HEARTBEAT_SECONDS, self._timeout):
                log.warning("the connection listening for other replicas' DDL stopped answering")
            await self._close_conn()
