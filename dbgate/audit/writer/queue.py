"""The writer's queue (mixin of :class:`~dbgate.audit.writer.AuditWriter`): what
waits in it, how events get in (``record``, ``record_durable``), admission and
backpressure (``admit``, ``wait_for_room``), the writer's availability, and the
callers waiting for a commit (``flush``, ``wait_available``).

Events wait as :class:`Item` in two queues (urgent: durable records and the chain's
first record; normal: everything else) until the task chains them into :class:`Rec`
records, which wait in ``pending`` until committed or spilled. The bounds count both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from dbgate.audit.canonical import SEQ
from dbgate.audit.errors import AuditError, AuditUnavailable
from dbgate.audit.events import EVENT_TYPES, SessionEvent, StatementEvent

log = logging.getLogger("dbgate.audit")

#: Keys of the counts of events not kept during an outage (Queueing._unrecorded)
UNRECORDED_KEYS = 100
OTHERS = "<others>"


class Item:
    """An event waiting in the queue."""

    __slots__ = ("event", "size", "waiters")

    def __init__(self, event: object, size: int) -> None:
        self.event = event
        self.size = size
        self.waiters: list[asyncio.Future[None]] | None = None


class Rec:
    """A chained record waiting to be committed (or spilled)."""

    __slots__ = ("hash", "prev", "row", "size", "values", "waiters")
    #: __init__ only stores its arguments: the compiled chaining (_seal.chain_run)
    #: fills the slots of the records it makes itself, without calling it.
    plain_init = True

    def __init__(
        self,
        values: list[Any],
        prev: bytes,
        hash_: bytes,
        row: bytes,
        waiters: list[asyncio.Future[None]] | None,
        size: int,
    ) -> None:
        self.values = values
        self.prev = prev
        self.hash = hash_
        self.row = row  # binary COPY row (dbgate.audit.binary)
        self.waiters = waiters
        self.size = size

    @property
    def seq(self) -> int:
        return int(self.values[SEQ])


def _event_size(event: object) -> int:
    """Roughly what an event holds in memory (the queue's byte bound)."""
    if event.__class__ is StatementEvent:
        try:
            size = 256 + len(event.statement)  # type: ignore[attr-defined]
            for p in event.params:  # type: ignore[attr-defined]
                if p is not None:
                    size += len(p)
        except TypeError:  # a caller's bad types: the builder will note them
            return 4096
        return size
    return 512


def fail(waiters: list[asyncio.Future[None]] | None, exc: BaseException) -> None:
    """Tell whoever waits for a record's commit that it is not (yet) committed."""
    if waiters:
        for fut in waiters:
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: nobody may be awaiting it any more


class Queueing:
    """The queue, admission and availability. The state lives in
    :class:`~dbgate.audit.writer.AuditWriter`'s ``__init__``."""

    # ------------------------------------------------------------------ getting in

    def record(self, event: object) -> None:
        """Queue an event; returns at once. Never drops and never blocks.

        Call :meth:`admit` before admitting new work; this method accepts events
        even beyond the queue's bounds (a statement that already ran must be
        recorded) — except, while the audit is unavailable and the queue full, a
        statement's refusal and a session's records, which are counted instead (the
        outage's record carries the counts). Raises TypeError for an object that is
        not an audit event, and AuditError once :meth:`stop` has closed the chain.
        """
        if self._closing or self._task is None:
            if type(event) not in EVENT_TYPES:
                raise TypeError(f"not an audit event: {type(event).__name__}")
            raise AuditError("the audit writer is not running")
        if event.__class__ is not StatementEvent:
            if type(event) not in EVENT_TYPES:
                raise TypeError(f"not an audit event: {type(event).__name__}")
            if self._full and not self._available and event.__class__ is SessionEvent:
                # A client connecting, logging in (or failing to), leaving, during an
                # outage with the queue full: counted, not kept (clients reconnecting
                # in a loop, before they even authenticate, would otherwise grow the
                # queue without bound); the outage's record says how many.
                self._unrecorded(
                    self._sessions_unrecorded,
                    (event.event, event.identity),  # type: ignore[attr-defined]
                )
                return
            self._enqueue(event, False)
            return
        if self._full and not self._available and event.event == "refused":  # type: ignore[attr-defined]
            # Refused for the outage with the queue full: counted, not kept (an agent
            # retrying in a loop would otherwise grow the queue without bound); the
            # outage's record says how many, by identity (_record_outage).
            self._unrecorded(self._refused_unrecorded, event.identity)  # type: ignore[attr-defined]
            return
        # _enqueue inlined for what nearly every event is: a statement, at the back,
        # with _event_size's
        try:
            size = 256 + len(event.statement)  # type: ignore[attr-defined]
            for p in event.params:  # type: ignore[attr-defined]
                if p is not None:
                    size += len(p)
        except TypeError:  # a caller's bad types: the builder will note them
            size = 4096
        item = Item(event, size)
        self._normal.append(item)
        self._normal_in += 1
        self._count += 1
        self._bytes += item.size
        if (self._count >= self._queue_size or self._bytes >= self._queue_bytes) and not self._full:
            self._set_full(True)
        # While the task gathers a batch, only what ends the wait wakes it.
        wake = self._wake
        if wake is not None and (
            not self._gathering
            or len(self._normal) + len(self._pending) >= self._batch_size
            or self._count > self._crowded_size
            or self._bytes > self._crowded_bytes
        ):
            wake.set()

    def _unrecorded(self, counts: dict[Any, int], key: Any) -> None:
        """Count an event not kept (see :meth:`record`), by ``key``: at most
        ``UNRECORDED_KEYS`` keys (the user names of failed logins are the client's to
        choose), the rest under ``OTHERS``."""
        if key not in counts and len(counts) >= UNRECORDED_KEYS:
            key = OTHERS if isinstance(key, str) else (*key[:-1], OTHERS)
        counts[key] = counts.get(key, 0) + 1

    async def record_durable(self, event: object, timeout: float | None = None) -> None:
        """Record an event and return once it is committed to the state database.

        Raises :class:`AuditUnavailable` at once when the audit is unavailable (the
        event is then *not* queued), or when the record is not committed within
        ``timeout`` (default ``audit.durable_timeout``) seconds or the database is
        lost meanwhile (the record stays queued and is written later). Either way
        the caller must refuse the statement.
        """
        if type(event) not in EVENT_TYPES:
            raise TypeError(f"not an audit event: {type(event).__name__}")
        if self._closing or self._task is None:
            raise AuditUnavailable("the audit writer is not running")
        if not self._connected_ok():
            raise AuditUnavailable(self._why or "the state database is unreachable")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        item = self._enqueue(event, urgent=True)
        item.waiters = [fut]
        wait = self.config.durable_timeout if timeout is None else timeout
        try:
            await asyncio.wait_for(asyncio.shield(fut), wait)
        except TimeoutError:
            raise AuditUnavailable(f"the audit record was not committed within {wait:g}s") from None

    def _enqueue(self, event: object, urgent: bool) -> Item:
        item = Item(event, _event_size(event))
        if urgent:
            self._urgent.append(item)
        else:
            self._normal.append(item)
            self._normal_in += 1
        self._count += 1
        self._bytes += item.size
        if (self._count >= self._queue_size or self._bytes >= self._queue_bytes) and not self._full:
            self._set_full(True)
        # While the task gathers a batch, only what ends the wait wakes it.
        if self._wake is not None and (
            not self._gathering
            or urgent
            or len(self._normal) + len(self._pending) >= self._batch_size
            or self._crowded()
        ):
            self._wake.set()
        return item

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # ------------------------------------------------------------------ admission

    def admit(self) -> Awaitable[None] | None:
        """May a new statement go ahead? The gate calls this before each one.

        None: yes, now. An awaitable: wait for room in the queue first
        (backpressure). Raises :class:`AuditUnavailable` when the audit cannot
        record: the statement must be refused.
        """
        if self._available and self._count < self._queue_size and self._bytes < self._queue_bytes:
            return None
        if not self._available:
            raise AuditUnavailable(self._why)
        return self.wait_for_room()

    def admits_now(self) -> bool:
        """Whether :meth:`admit` would let a statement go ahead at once (asks nothing
        of the caller: no awaitable is made)."""
        return (
            self._available and self._count < self._queue_size and self._bytes < self._queue_bytes
        )

    async def wait_for_room(self) -> None:
        """Return once the queue has room; raise AuditUnavailable if the audit
        becomes unavailable meanwhile."""
        while True:
            if not self._available:
                raise AuditUnavailable(self._why)
            if self.has_room:
                return
            assert self._changed is not None
            await self._changed.wait()

    @property
    def has_room(self) -> bool:
        return self._count < self._queue_size and self._bytes < self._queue_bytes

    def _crowded(self) -> bool:
        """Past the mark below which clients waiting for room are let go (_release)."""
        return self._count > self._crowded_size or self._bytes > self._crowded_bytes

    def _release(self, recs: list[Rec]) -> None:
        self._count -= len(recs)
        self._bytes -= sum(r.size for r in recs)
        # Waiters wake below three quarters, so that they are not woken one record
        # at a time while the queue hovers at its bound.
        if not self._crowded():
            if self._full:
                self._set_full(False)
            self._signal()

    def _set_full(self, full: bool) -> None:
        """The queue reached its bound, or is below three quarters again: tell the
        gate (``on_full``), which asks for admission of every statement meanwhile."""
        self._full = full
        if self.on_full is not None:
            try:
                self.on_full(full)
            except Exception:
                log.exception("audit: the queue callback failed")

    def _queued(self) -> bool:
        return bool(self._urgent or self._normal or self._pending)

    # ------------------------------------------------------------------ availability and commits

    @property
    def available(self) -> bool:
        """Can new statements be recorded (database reachable, or buffering with room)?"""
        return self._available

    async def wait_available(self) -> None:
        """Return once records can be committed again (the database is reachable).

        For health checks and for callers that want to hold work during an outage
        rather than refuse it. Raises AuditError when the writer gave up for good.
        """
        while not (self._available and self._connected_ok()):
            if self._fatal is not None:
                raise self._fatal
            if self._task is None:
                raise AuditUnavailable("the audit writer is not running")
            assert self._changed is not None
            await self._changed.wait()

    async def flush(self) -> None:
        """Return once everything recorded so far is committed.

        Raises AuditUnavailable when some of it could not be committed (database
        unreachable; buffered records count as not committed).
        """
        if not self._connected_ok() and not self._buffering:
            raise AuditUnavailable(self._why or "the state database is unreachable")
        target: Item | Rec | None = None
        if self._normal:
            target = self._normal[-1]
            self._hurry_normal = self._normal_in
        elif self._urgent:
            target = self._urgent[-1]
        elif self._pending:
            target = self._pending[-1]
            self._hurry_seq = max(self._hurry_seq, target.seq)
        if target is None:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if target.waiters is None:
            target.waiters = []
        target.waiters.append(fut)
        self._poke()
        await fut

    def _signal(self) -> None:
        """Wake everyone waiting for room or for a change of availability."""
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    def _set_available(self, available: bool, why: str) -> None:
        changed = available != self._available
        self._available = available
        self._why = why
        if changed:
            self._signal()
            if self.on_available is not None:
                try:
                    self.on_available(available)
                except Exception:
                    log.exception("audit: the availability callback failed")
            if not available:  # whoever waits for a commit learns now, not after an outage
                self._fail_waiters(AuditUnavailable(why))

    def _connected_ok(self) -> bool:
        return self._conn is not None and self._fatal is None

    def _fail_waiters(self, exc: AuditUnavailable) -> None:
        for r in self._pending:
            fail(r.waiters, exc)
        for q in (self._urgent, self._normal):
            for item in q:
                fail(item.waiters, exc)
