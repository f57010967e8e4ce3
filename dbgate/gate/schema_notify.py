"""Announcements of schema changes through the state database (LISTEN/NOTIFY on
channel ``dbgate_schema``): the :class:`~dbgate.gate.schema_peers.PeerTransport` of
replicas and workers that share one.

A NOTIFY is delivered once its transaction commits, so ``send`` returning means every
process listening then will hear it. A process whose listening connection was lost
listens again and, since what was announced meanwhile is not known, has every
snapshot read again (``lost_word``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dbgate.approvals.db import STATE_ERRORS, ChannelListener, describe
from dbgate.gate.schema_peers import HEARTBEAT_SECONDS, PeersUnreachable

CHANNEL = "dbgate_schema"


class NotifyTransport:
    """Sends on a pool of the state database; hears on a connection of its own."""

    def __init__(self, dsn: str, pool: Any, *, timeout: float = 5.0) -> None:
        self._pool = pool
        self._heard: Callable[[str], None] = lambda payload: None
        self._lost_word: Callable[[], None] = lambda: None
        self._listener = ChannelListener(
            dsn,
            CHANNEL,
            lambda payload: self._heard(payload),
            application_name="dbgate-schema-listen",
            what="other replicas' DDL",
            timeout=timeout,
            probe_seconds=HEARTBEAT_SECONDS,
            on_listening=lambda: self._lost_word(),
        )
        self.listening = self._listener.listening

    async def start(self, heard: Callable[[str], None], lost_word: Callable[[], None]) -> None:
        self._heard, self._lost_word = heard, lost_word
        await self._listener.start()

    async def stop(self) -> None:
        await self._listener.stop()

    async def send(self, payload: str) -> None:
        try:
            await self._pool.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
        except STATE_ERRORS as e:
            raise PeersUnreachable(f"the state database: {describe(e)}") from e
