"""Schema changes told to every other process that judges the same databases.

Each process keeps its own catalog snapshots (:class:`~dbgate.gate.schema_loads.
SchemaLoads`), and DDL it lets through puts *its* snapshots "in flux" (every result
tokenized whole) until it read them again. A process that did not see the DDL went on
judging by its old snapshot: a view redefined through replica A to read ``email``
under the name of a clean column came back raw through replica B until B's snapshot
was 30 s old. So processes tell each other (payload ``{"r": sender, "db": database,
"open": bool}``), through a :class:`PeerTransport`: the state database's
LISTEN/NOTIFY for replicas and workers that share one (:mod:`dbgate.gate.
schema_notify`), the workers' local sockets for ``--workers N`` without one
(:mod:`dbgate.workers_schema`):

* before a DDL statement is let through to run (a Query; the allowed or approved Bind
  of a prepared one, not its Parse), its database is announced ``open`` and the
  announcement delivered (:meth:`SchemaPeers.opening`; a statement whose announcement
  cannot be delivered is refused): every other process puts that database in flux
  when it hears it, as if the DDL had been its own;
* while a process has such a transaction open it repeats the announcement every
  :data:`HEARTBEAT_SECONDS`; once none is left it announces ``open: false`` and the
  others read their snapshots again (in flux until that reload is done). A sender
  not heard of for :data:`EXPIRE_SECONDS` (it crashed: its transaction was rolled
  back) is taken as done;
* a process that could not hear for a while (its listening connection was lost)
  reads every snapshot again: what was announced meanwhile is not known.

What is not covered (docs/security.md, "Not yet covered"): a result that reaches this
process before the announcement does (the relay tokenizes whole what arrives after it,
``StatementOutcomes._stale_verdict``); a process that starts while another's DDL
transaction is open hears of it at the next heartbeat; and a replica cut off from the
state database while another is not hears nothing of the other's DDL until it listens
again (every process refuses DDL it cannot announce, so an outage of the state
database itself lets none through).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from dbgate.gate.schema_loads import SchemaLoads

log = logging.getLogger("dbgate.gate")

#: How often a process repeats that a schema-changing transaction is still open.
HEARTBEAT_SECONDS = 10.0
#: A sender whose open transaction was not announced again for this long is done.
EXPIRE_SECONDS = 3 * HEARTBEAT_SECONDS


class PeersUnreachable(Exception):
    """An announcement could not be delivered to every other process."""


class PeerTransport(Protocol):
    """How announcements travel between the processes.

    ``start`` begins handing every payload another process sent to ``heard``, and
    calls ``lost_word`` whenever announcements may have been missed (the listening
    end was down); its ``listening`` event is set while it hears. ``send`` returns
    once ``payload`` is delivered (the others hear it before anything this process
    does afterwards), and raises :class:`PeersUnreachable` when it cannot be."""

    listening: asyncio.Event

    async def start(self, heard: Callable[[str], None], lost_word: Callable[[], None]) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, payload: str) -> None: ...


class SchemaPeers:
    """One per process: tells the others of its DDL, and hears of theirs."""

    def __init__(
        self,
        transport: PeerTransport,
        loads: Sequence[SchemaLoads[Any]],
        *,
        timeout: float = 5.0,
    ) -> None:
        self.transport = transport
        self.loads = tuple(loads)
        self._timeout = timeout
        #: who this process is in the payloads (its own are ignored)
        self.sender = secrets.token_hex(8)
        #: database -> this process's schema-changing transactions open on it
        self._open: dict[str, int] = {}
        #: (sender, database) -> when it last said a transaction is open there
        self._heard: dict[tuple[str, str], float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._sends: set[asyncio.Task[None]] = set()
        self._sending = asyncio.Lock()
        self._closing = False

    @property
    def listening(self) -> asyncio.Event:
        return self.transport.listening

    # -- life ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._closing = False
        # looked up at each announcement: a wrapper set on ``heard`` later sees them too
        await self.transport.start(lambda payload: self.heard(payload), self._reread_all)
        self._tasks = [
            asyncio.create_task(self._heartbeat_loop(), name="dbgate-schema-heartbeat"),
        ]
        # the first listening end is waited for (briefly), so that DDL another process
        # announces as this one starts serving is heard
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.listening.wait(), self._timeout)

    async def stop(self) -> None:
        self._closing = True
        for task in [*self._tasks, *self._sends]:
            task.cancel()
        for task in [*self._tasks, *self._sends]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.transport.stop()
        for loads in self.loads:  # reloads that what it heard started
            loads.stop_settling()

    def _reread_all(self) -> None:
        for loads in self.loads:
            for database in list(loads.loaded):
                loads.refresh_soon(database)

    # -- telling ------------------------------------------------------------------------
    async def _send(self, database: str, is_open: bool) -> None:
        payload = json.dumps({"r": self.sender, "db": database, "open": is_open})
        # one at a time, in the order asked for: an end sent beside the beginning after
        # it could arrive first, and the others would take the database as settled
        # while the new DDL runs
        async with self._sending:
            try:
                await asyncio.wait_for(self.transport.send(payload), self._timeout)
            except TimeoutError as e:
                raise PeersUnreachable(f"no delivery within {self._timeout:g} s") from e

    async def opening(self, database: str) -> bool:
        """Announce that a statement about to run may change the schema of
        ``database``; True once the announcement is delivered, False when it could
        not be (the statement must then not run)."""
        try:
            await self._send(database, True)
        except PeersUnreachable as e:
            log.error("cannot tell the other processes of DDL on %s: %s", database, e)
            return False
        return True

    def _send_soon(self, database: str, is_open: bool) -> None:
        async def send() -> None:
            try:
                await self._send(database, is_open)
            except PeersUnreachable as e:
                log.warning("cannot tell the other processes of DDL on %s: %s", database, e)

        task = asyncio.ensure_future(send())
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    def began(self, database: str) -> None:
        """A transaction of this process changes the schema of ``database``."""
        self._open[database] = self._open.get(database, 0) + 1
        self._send_soon(database, True)

    def ended(self, database: str) -> None:
        """That transaction is over (committed or not)."""
        left = self._open.get(database, 0) - 1
        if left > 0:
            self._open[database] = left
            return
        self._open.pop(database, None)
        self._send_soon(database, False)

    async def _heartbeat_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            for database in list(self._open):
                self._send_soon(database, True)
            self._expire(time.monotonic() - EXPIRE_SECONDS)

    # -- hearing ------------------------------------------------------------------------
    def heard(self, payload: str) -> None:
        """An announcement of another process."""
        try:
            message = json.loads(payload)
            sender, database, is_open = message["r"], message["db"], bool(message["open"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed announcement of a schema change")
            return
        if sender == self.sender or not isinstance(database, str):
            return
        key = (sender, database)
        if is_open:
            if key not in self._heard:
                for loads in self.loads:
                    loads.change_began(database)
            self._heard[key] = time.monotonic()
            return
        if self._heard.pop(key, None) is None:
            # an end whose beginning was not heard: read the snapshot again all the same
            for loads in self.loads:
                loads.change_began(database)
        for loads in self.loads:
            loads.change_ended(database)

    def _expire(self, before: float) -> None:
        for key, at in list(self._heard.items()):
            if at < before:
                del self._heard[key]
                log.warning(
                    "no word of the DDL on %s from another process for %.0f s: taken as over",
                    key[1],
                    EXPIRE_SECONDS,
                )
                for loads in self.loads:
                    loads.change_ended(key[1])
