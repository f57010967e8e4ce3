"""Schema changes told to every replica (and worker) that shares the state database.

Each process keeps its own catalog snapshots (:class:`~dbgate.gate.schema_loads.
SchemaLoads`), and DDL it lets through puts *its* snapshots "in flux" (every result
tokenized whole) until it read them again. A replica that did not see the DDL went on
judging by its old snapshot: a view redefined through replica A to read ``email``
under the name of a clean column came back raw through replica B until B's snapshot
was 30 s old. So processes sharing a state database tell each other, on channel
``dbgate_schema`` (LISTEN/NOTIFY; payload ``{"r": sender, "db": database, "open":
bool}``):

* before a DDL statement is let through to run (a Query; the allowed or approved Bind
  of a prepared one, not its Parse), its database is announced ``open`` and the
  announcement committed (:meth:`SchemaPeers.opening`; a statement whose announcement
  cannot be made is refused): every other process puts that database in flux when it
  hears it, as if the DDL had been its own;
* while a process has such a transaction open it repeats the announcement every
  :data:`HEARTBEAT_SECONDS`; once none is left it announces ``open: false`` and the
  others read their snapshots again (in flux until that reload is done). A sender
  not heard of for :data:`EXPIRE_SECONDS` (it crashed: its transaction was rolled
  back) is taken as done;
* a process that listens again after its connection was lost reads every snapshot
  again: what was announced meanwhile is not known.

What is not covered (docs/security.md, "Not yet covered"): a result that reaches this
process before the announcement does (the relay tokenizes whole what arrives after it,
``StatementOutcomes._stale_verdict``); and a process cut off from the state database
while another is not hears nothing of the other's DDL until it listens again (every
process refuses DDL it cannot announce, so an outage of the state database itself lets
none through).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Sequence
from typing import Any

from dbgate.approvals.db import STATE_ERRORS, describe, listening_connection, until_lost
from dbgate.gate.schema_loads import SchemaLoads

log = logging.getLogger("dbgate.gate")

CHANNEL = "dbgate_schema"
#: How often a process repeats that a schema-changing transaction is still open.
HEARTBEAT_SECONDS = 10.0
#: A sender whose open transaction was not announced again for this long is done.
EXPIRE_SECONDS = 3 * HEARTBEAT_SECONDS


class SchemaPeers:
    """One per process: tells the others of its DDL, and hears of theirs."""

    def __init__(
        self,
        dsn: str,
        pool: Any,
        loads: Sequence[SchemaLoads[Any]],
        *,
        timeout: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._pool = pool
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
        self._conn: Any = None
        self._closing = False
        self.listening = asyncio.Event()

    # -- life ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._closing = False
        self._tasks = [
            asyncio.create_task(self._listen_loop(), name="dbgate-schema-listen"),
            asyncio.create_task(self._heartbeat_loop(), name="dbgate-schema-heartbeat"),
        ]
        # the first connection is waited for (briefly), so that DDL another process
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
        await self._close_conn()
        for loads in self.loads:  # reloads that what it heard started
            loads.stop_settling()

    async def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        self.listening.clear()
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(*STATE_ERRORS):
                await asyncio.wait_for(conn.close(), self._timeout)

    # -- telling ------------------------------------------------------------------------
    async def _send(self, database: str, is_open: bool) -> None:
        payload = json.dumps({"r": self.sender, "db": database, "open": is_open})
        # one at a time, in the order asked for: an end sent beside the beginning after
        # it could arrive first, and the others would take the database as settled
        # while the new DDL runs
        async with self._sending:
            await asyncio.wait_for(
                self._pool.execute("SELECT pg_notify($1, $2)", CHANNEL, payload), self._timeout
            )

    async def opening(self, database: str) -> bool:
        """Announce that a statement about to run may change the schema of
        ``database``; True once the announcement is committed, False when it could not
        be made (the statement must then not run)."""
        try:
            await self._send(database, True)
        except STATE_ERRORS as e:
            log.error("cannot tell the other replicas of DDL on %s: %s", database, describe(e))
            return False
        return True

    def _send_soon(self, database: str, is_open: bool) -> None:
        async def send() -> None:
            try:
                await self._send(database, is_open)
            except STATE_ERRORS as e:
                log.warning(
                    "cannot tell the other replicas of DDL on %s: %s", database, describe(e)
                )

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
        """A notification of ``dbgate_schema``."""
        try:
            message = json.loads(payload)
            sender, database, is_open = message["r"], message["db"], bool(message["open"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed %s notification", CHANNEL)
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
                    "no word of the DDL on %s from another replica for %.0f s: taken as over",
                    key[1],
                    EXPIRE_SECONDS,
                )
                for loads in self.loads:
                    loads.change_ended(key[1])

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self.heard(payload)

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
                log.warning(
                    "cannot listen for other replicas' DDL (%s); retrying",
                    describe(e),
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.05
            # what was announced while nobody listened is not known: read every
            # snapshot again
            for loads in self.loads:
                for database in list(loads.loaded):
                    loads.refresh_soon(database)
            self.listening.set()
            await self._watch(conn, lost)
            await self._close_conn()

    async def _watch(self, conn: Any, lost: asyncio.Event) -> None:
        if not await until_lost(conn, lost, HEARTBEAT_SECONDS, self._timeout):
            log.warning("the connection listening for other replicas' DDL stopped answering")
