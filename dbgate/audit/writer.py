"""The audit writer: events in, hash-chained records committed to the state database.

One :class:`AuditWriter` per dbgate process. Callers on the relay's hot path call
:meth:`~AuditWriter.record` (append to a queue, nothing else); one task builds the
records, chains them and writes them in batches with COPY. Why it is shaped so:

* **one chain per writer.** Each process starts a new chain (``<replica>.<random>``)
  and is the only one to append to it, so replicas and workers never contend for a
  chain head and never interleave one. The chain is registered in
  ``dbgate.audit_chains`` in the same transaction as its first records; a chain id
  found registered by another process is refused.
* **chained before written.** A record gets its ``seq``, ``logged_at`` and hash when
  the task takes it from the queue, and keeps them through retries, spills and
  replays: whatever fails later, the chain has no gap and no fork. After a lost
  connection the writer asks the database where its chain ends (a COMMIT may have
  succeeded even though its answer was lost) and continues from there.
* **backpressure, never loss.** The queue is bounded by ``queue_size`` records and
  ``queue_bytes``; :meth:`~AuditWriter.admit` (or :meth:`~AuditWriter.wait_for_room`)
  is how the gate makes a client wait before a new statement. ``record`` itself
  never refuses: events of statements already admitted are always accepted.
* **durable before it matters.** :meth:`~AuditWriter.record_durable` jumps the queue
  and returns once its record is committed; the gate awaits it before a held,
  approved, denied or rejected statement is forwarded or refused.
* **few, large commits.** Every commit is a WAL flush on the state database and a
  transaction and a COPY on both sides, whatever its size: a writer that committed
  whenever a record arrived would spend more on commits than on records. So ordinary
  records wait up to ``batch_delay`` seconds (``audit.batch_delay``, 50 ms by
  default) after the previous write began, for others to share their commit; a full
  batch, a durable record, :meth:`flush` and :meth:`stop` end the wait at once (a
  durable record takes whatever is queued into its commit). Under light load the first record after a quiet spell is written
  straight away; under heavy load batches fill before the delay runs out.
* **the database goes away.** ``on_failure: refuse`` keeps queued records in memory,
  reports :attr:`~AuditWriter.available` False (the gate refuses statements) and
  retries with back-off; ``buffer`` spills chained records to a file
  (:mod:`dbgate.audit.spill`) and replays them in order when the database returns.
* **a crash.** Committed batches are whole (one transaction each). On ``kill -9``
  the records still in memory are lost — at most the queue, never a record that
  ``record_durable`` confirmed — and the killed chain simply has no ``chain_end``
  record; the next process starts its own chain (and adopts a dead process's spill
  file). ``audit verify`` passes.

The chain head is logged (``audit chain head: ...``) every ``head_log_seconds`` when
it moved, and appended to ``head_file`` when configured, so that an outside system
can anchor it: ``audit verify --heads`` then also catches records deleted from the
end of a chain, which no hash chain can show by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import socket
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg

from dbgate import __version__
from dbgate.audit import binary
from dbgate.audit.binary import array_literal
from dbgate.audit.canonical import FIELDS, GENESIS, INDEX, FieldType
from dbgate.audit.errors import AuditError, AuditUnavailable
from dbgate.audit.events import EVENT_TYPES, StatementEvent
from dbgate.audit.rows import (
    AT,
    EPOCH,
    LOGGED_AT,
    SEQ,
    RowBuilder,
    WriterEvent,
    from_us,
    iso,
    parse_iso,
)
from dbgate.audit.serial import Document, dumps, to_document
from dbgate.audit.spill import Orphan, SpillFile, adopt_orphans
from dbgate.config import AuditConfig

log = logging.getLogger("dbgate.audit")

COPY_COLUMNS: tuple[str, ...] = binary.COLUMNS
_CHAIN_STEP = 256  # records chained between yields to the event loop
_REPLAY_CHUNK = 5_000
_PERMANENT = (
    asyncpg.InvalidPasswordError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
)
_HEAD_SQL = "SELECT seq, hash FROM dbgate.audit_events WHERE chain = $1 ORDER BY seq DESC LIMIT 1"
_REGISTER_SQL = """
INSERT INTO dbgate.audit_chains (chain, replica, host, pid, version, started_at)
VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (chain) DO NOTHING
"""


_ARRAYS = tuple(INDEX[name] for name, kind in FIELDS if kind is FieldType.ARRAY)


def _copy_row(values: list[Any], logged: datetime, prev_hash: bytes, hash_: bytes) -> list[Any]:
    row = values.copy()
    row[LOGGED_AT] = logged
    row[AT] = EPOCH + timedelta(microseconds=row[AT])
    for i in _ARRAYS:
        if row[i]:
            row[i] = array_literal(row[i])
    row.append(prev_hash)
    row.append(hash_)
    return row


def copy_tuple(values: list[Any], prev_hash: bytes, hash_: bytes) -> list[Any]:
    """A record (given in canonical form) as asyncpg binds the columns
    :data:`COPY_COLUMNS` (the writer itself sends binary COPY rows)."""
    return _copy_row(values, from_us(values[LOGGED_AT]), prev_hash, hash_)


def gather_for(
    now: float, last_write: float, delay: float, queued: int, batch_size: int, hurry: bool
) -> float:
    """How long the writer waits for more records before it writes (0: write now).

    It waits only while the last write began less than ``delay`` seconds ago, some
    records are queued but not a full batch, and nobody is waiting for a commit
    (``hurry``): so it commits at most once per ``delay`` unless batches fill, and a
    record after a quiet spell goes straight out.
    """
    if delay <= 0 or hurry or queued <= 0 or queued >= batch_size:
        return 0.0
    return max(0.0, last_write + delay - now)


class _Item:
    """An event waiting in the queue."""

    __slots__ = ("event", "size", "waiters")

    def __init__(self, event: object, size: int) -> None:
        self.event = event
        self.size = size
        self.waiters: list[asyncio.Future[None]] | None = None


class _Rec:
    """A chained record waiting to be committed (or spilled)."""

    __slots__ = ("hash", "prev", "row", "size", "values", "waiters")

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


def _safe_name(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", value)[:64] or "dbgate"


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


class AuditWriter:
    """Writes audit events of one process to the state database as one hash chain.

    ``dsn``: the state database (``state.dsn``); its schema must be migrated
    (:func:`dbgate.state.apply_migrations`) before :meth:`start`.
    ``clock`` returns ``time.time()``-like seconds; tests move it across months.
    All methods must be called from the event loop the writer was started on.
    """

    def __init__(
        self,
        dsn: str,
        config: AuditConfig | None = None,
        *,
        replica: str | None = None,
        clock: Callable[[], float] = time.time,
        chain: str | None = None,
        batch_delay: float | None = None,
    ) -> None:
        self.config = config = config if config is not None else AuditConfig()
        if batch_delay is None:
            batch_delay = config.batch_delay
        if batch_delay < 0:
            raise ValueError(f"batch_delay must not be negative, got {batch_delay}")
        self._dsn = dsn
        self._batch_delay = batch_delay
        self.replica = replica or config.replica or socket.gethostname()
        self.chain = chain or f"{_safe_name(self.replica)}.{uuid.uuid4().hex[:16]}"
        self._clock = clock
        key = config.param_key.encode() if config.param_key else secrets.token_bytes(32)
        self._builder = RowBuilder(
            self.replica, key, config.max_statement_chars, config.max_text_chars
        )
        self._buffering = config.on_failure == "buffer"
        self._started_at_us = round(clock() * 1_000_000)
        self._identity = {
            "chain": self.chain,
            "replica": self.replica,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": __version__,
            "started_at": iso(self._started_at_us),
        }
        # queues: events not yet chained; pending: chained, not yet committed or spilled
        self._urgent: deque[_Item] = deque()
        self._normal: deque[_Item] = deque()
        self._pending: list[_Rec] = []
        self._count = 0
        self._bytes = 0
        # the bounds, read once per statement or record (the config is frozen)
        self._queue_size = config.queue_size
        self._queue_bytes = config.queue_bytes
        self._crowded_size = config.queue_size * 3 // 4
        self._crowded_bytes = config.queue_bytes * 3 // 4
        self._batch_size = config.batch_size
        # batching: when the last write began, whether the task is waiting for a batch
        # to fill, and who must not wait (see _hurry)
        self._last_write = float("-inf")
        self._gathering = False
        self._normal_in = 0  # ordinary events queued so far
        self._normal_out = 0  # ... and chained so far
        self._hurry_normal = 0  # flush(): ordinary events up to this one are awaited
        self._hurry_seq = 0  # a record up to this seq is awaited (durable, flush)
        # the chain
        self._seq = 0
        self._head_hash = GENESIS
        self._last_logged_us = 0
        self._committed_seq = 0
        self._committed_hash = GENESIS
        self._logged_head_seq = 0
        # connection and state
        self._conn: Any = None
        self._registered = False
        self._schema_ok = False
        self._months: set[date] = set()
        self._available = False
        self._why = "the audit writer has not started"
        self._fatal: AuditError | None = None
        self._unavailable_since: float | None = None
        self._last_error = ""
        self._backoff = 0.1
        self._next_attempt = 0.0
        self._next_tick = 0.0
        self._spill: SpillFile | None = None
        self._orphans: list[Orphan] = []
        self._spilled_total = 0
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._changed: asyncio.Event | None = None  # room or availability changed
        self._closing = False  # chain_end queued: no more records
        self._stopping = False
        self.committed_total = 0
        #: Told when :attr:`available` changes (the gate turns strict while it is False).
        self.on_available: Callable[[bool], None] | None = None

    # ------------------------------------------------------------------ public API

    async def start(self) -> None:
        """Connect, check the schema, claim the chain and start the writing task.

        Raises :class:`AuditError` when the state database refuses us for good (bad
        password, no such database, schema not migrated, not UTF8). An unreachable
        database is not an error here: the writer starts unavailable (or buffering)
        and keeps trying.
        """
        if self._task is not None:
            raise AuditError("the audit writer is already started")
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        if self.config.spill_dir is not None:
            self._spill = SpillFile(
                self.config.spill_dir, self.chain, self._identity, self.config.spill_max_bytes
            )
            self._adopt_orphans()
        try:
            conn = await asyncpg.connect(
                self._dsn,
                timeout=self.config.connect_timeout,
                server_settings={"application_name": "dbgate-audit"},
            )
        except _PERMANENT as e:
            self._release_files()
            raise AuditError(f"the state database refused the audit writer: {e}") from e
        except (ValueError, asyncpg.ClientConfigurationError) as e:
            self._release_files()
            raise AuditError(f"the state database DSN is not usable: {e}") from e
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            self._went_unavailable(f"cannot reach the state database: {e}")
        else:
            try:
                await self._check_schema(conn)
            except BaseException:
                await conn.close()
                self._release_files()
                raise
            self._conn = conn
            self._set_available(True, "")
        self._enqueue(WriterEvent("chain_start", dict(self._identity), self._clock()), urgent=True)
        self._next_tick = time.monotonic() + self.config.head_log_seconds
        self._task = asyncio.create_task(self._run(), name=f"dbgate-audit-{self.chain}")

    async def stop(self, timeout: float | None = None) -> None:
        """Write what is queued, close the chain (``chain_end``) and disconnect.

        Waits at most ``timeout`` (default ``audit.stop_timeout``) seconds. Records
        that could not be written by then go to the spill directory when there is
        one (the next writer replays them); otherwise they are counted in an error.
        """
        if self._task is None:
            return
        if not self._closing:
            end = {"reason": "stop"}
            self._enqueue(WriterEvent("chain_end", end, self._clock()), urgent=False)
            self._closing = True
        self._stopping = True
        self._poke()
        wait = self.config.stop_timeout if timeout is None else timeout
        task = self._task
        try:
            await asyncio.wait_for(asyncio.shield(task), wait)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self._last_resort()
        finally:
            self._task = None
            await self._disconnect()
            self.log_head()
            self._release_files()
            if self._fatal is not None and self._queued():
                log.error(
                    "audit: %d records were not written: %s",
                    len(self._urgent) + len(self._normal) + len(self._pending),
                    self._fatal,
                )
            self._set_available(False, "the audit writer is stopped")
            self._fail_waiters(AuditUnavailable("the audit writer is stopped"))

    def _release_files(self) -> None:
        """Unlock the spill file (kept if it holds records) and adopted orphans."""
        if self._spill is not None:
            self._spill.close()
        for orphan in self._orphans:
            orphan.release()
        self._orphans = []

    def record(self, event: object) -> None:
        """Queue an event; returns at once. Never drops and never blocks.

        Call :meth:`admit` before admitting new work; this method accepts events
        even beyond the queue's bounds (a statement that already ran must be
        recorded). Raises TypeError for an object that is not an audit event, and
        AuditError once :meth:`stop` has closed the chain.
        """
        if type(event) not in EVENT_TYPES:
            raise TypeError(f"not an audit event: {type(event).__name__}")
        if self._closing or self._task is None:
            raise AuditError("the audit writer is not running")
        self._enqueue(event, False)

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
        target: _Item | _Rec | None = None
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

    @property
    def available(self) -> bool:
        """Can new statements be recorded (database reachable, or buffering with room)?"""
        return self._available

    @property
    def has_room(self) -> bool:
        return self._count < self._queue_size and self._bytes < self._queue_bytes

    @property
    def head(self) -> tuple[str, int, bytes]:
        """(chain, seq, hash) of the last committed record of this writer's chain."""
        return self.chain, self._committed_seq, self._committed_hash

    def stats(self) -> dict[str, Any]:
        """Numbers for health checks and metrics."""
        return {
            "chain": self.chain,
            "available": self._available,
            "queued": self._count,
            "queued_bytes": self._bytes,
            "committed": self.committed_total,
            "head_seq": self._committed_seq,
            "spilled": self._spill.records if self._spill is not None else 0,
            "reason": "" if self._available else self._why,
        }

    def log_head(self) -> None:
        """Write the committed chain head to the operator log (and ``head_file``)."""
        if self._committed_seq == self._logged_head_seq:
            return
        head = {
            "at": iso(round(self._clock() * 1_000_000)),
            "chain": self.chain,
            "replica": self.replica,
            "seq": self._committed_seq,
            "hash": self._committed_hash.hex(),
        }
        log.info(
            "audit chain head: chain=%s seq=%d hash=%s",
            self.chain,
            self._committed_seq,
            head["hash"],
        )
        if self.config.head_file is not None:
            try:
                with open(self.config.head_file, "a", encoding="utf-8") as f:
                    f.write(dumps(head) + "\n")
            except OSError as e:
                log.error("audit: cannot append the chain head to %s: %s", self.config.head_file, e)
        self._logged_head_seq = self._committed_seq

    # ------------------------------------------------------------------ queueing

    def _enqueue(self, event: object, urgent: bool) -> _Item:
        item = _Item(event, _event_size(event))
        if urgent:
            self._urgent.append(item)
        else:
            self._normal.append(item)
            self._normal_in += 1
        self._count += 1
        self._bytes += item.size
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

    def _release(self, recs: list[_Rec]) -> None:
        self._count -= len(recs)
        self._bytes -= sum(r.size for r in recs)
        # Waiters wake below three quarters, so that they are not woken one record
        # at a time while the queue hovers at its bound.
        if not self._crowded():
            self._signal()

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

    # ------------------------------------------------------------------ chaining

    def _chain_some(self, limit: int) -> int:
        """Chain up to ``limit`` queued events into pending records."""
        n = 0
        now_us = round(self._clock() * 1_000_000)
        logged = max(self._last_logged_us, now_us)
        self._last_logged_us = logged
        sealed = self._builder.sealed
        chain = self.chain
        while n < limit and (self._urgent or self._normal):
            if self._urgent:
                item = self._urgent.popleft()
            else:
                item = self._normal.popleft()
                self._normal_out += 1
            self._seq += 1
            prev = self._head_hash
            try:
                values, h, row = sealed(item.event, now_us, chain, self._seq, logged, prev)
            except Exception as e:  # the builder is total; this is a bug, still record it
                log.exception("audit: could not build a record; recording the failure instead")
                failure = WriterEvent("unrecordable", {"error": repr(e)}, now_us / 1e6)
                values, h, row = sealed(failure, now_us, chain, self._seq, logged, prev)
            self._head_hash = h
            self._pending.append(_Rec(values, prev, h, row, item.waiters, item.size))
            if item.waiters:
                self._hurry_seq = self._seq
            n += 1
        return n

    def _crowded(self) -> bool:
        """Past the mark below which clients waiting for room are let go (_release)."""
        return self._count > self._crowded_size or self._bytes > self._crowded_bytes

    def _hurry(self) -> bool:
        """Does anyone wait for records to be committed: a durable record, flush(),
        stop(), or clients held back by a crowded queue?"""
        return (
            self._stopping
            or bool(self._urgent)
            or self._normal_out < self._hurry_normal
            or self._committed_seq < self._hurry_seq
            or self._crowded()
        )

    def _gather_for(self) -> float:
        """Seconds to wait for more records before the next write (see gather_for)."""
        return gather_for(
            time.monotonic(),
            self._last_write,
            self._batch_delay,
            len(self._pending) + len(self._normal),
            self.config.batch_size,
            self._hurry(),
        )

    async def _gather(self) -> None:
        """Let a batch fill (see "few, large commits" above)."""
        self._gathering = True
        try:
            while (wait := self._gather_for()) > 0:
                await self._wait(wait)
        finally:
            self._gathering = False

    async def _chain_batch(self) -> None:
        """Fill pending up to a batch, yielding to the event loop between steps."""
        while len(self._pending) < self.config.batch_size and (self._urgent or self._normal):
            self._chain_some(min(_CHAIN_STEP, self.config.batch_size - len(self._pending)))
            if self._urgent or self._normal:
                await asyncio.sleep(0)

    # ------------------------------------------------------------------ the task

    async def _run(self) -> None:
        while True:
            try:
                if await self._step():
                    return
            except asyncio.CancelledError:
                raise
            except AuditError as e:
                self._fatal = e
                log.critical("audit: %s; this process records nothing more", e)
                self._set_available(False, str(e))
                self._signal()
                self._fail_waiters(AuditUnavailable(str(e)))
                await self._disconnect()
            except Exception as e:
                await self._lost(e)

    async def _step(self) -> bool:
        """One turn of the writing loop; True when the writer may stop."""
        assert self._wake is not None
        self._tick()
        if self._fatal is not None:  # nothing more can be written by this process
            if self._stopping:
                return True
            await self._wait(None)
            return False
        if self._conn is None and time.monotonic() >= self._next_attempt:
            await self._connect()
        if self._conn is None:
            if self._buffering:
                await self._spill_everything()
                if self._stopping and not self._queued():
                    return True
            await self._wait(max(0.0, self._next_attempt - time.monotonic()))
            return False
        if self._replay_due():
            await self._replay()
        self._wake.clear()
        if self._gather_for() > 0:
            await self._gather()
        if len(self._pending) < self.config.batch_size:
            await self._chain_batch()
        if not self._pending:
            if self._stopping and not self._queued():
                return True
            await self._wait(max(0.0, self._next_tick - time.monotonic()))
            return False
        await self._write()
        return False

    def _queued(self) -> bool:
        return bool(self._urgent or self._normal or self._pending)

    async def _wait(self, timeout: float | None) -> None:
        """Sleep until there is something to do, or ``timeout`` seconds."""
        wake = self._wake
        assert wake is not None
        if self._conn is None and not self._buffering and self._fatal is None:
            # refuse mode, disconnected: new records change nothing before the retry
            await asyncio.sleep(timeout or 0)
            return
        if not wake.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout)
        wake.clear()

    def _tick(self) -> None:
        now = time.monotonic()
        if now < self._next_tick:
            return
        self._next_tick = now + self.config.head_log_seconds
        self.log_head()
        if self._spill is not None:
            self._adopt_orphans()

    def _adopt_orphans(self) -> None:
        assert self.config.spill_dir is not None
        own = self._spill.path if self._spill is not None else None
        known = {o.path for o in self._orphans}
        for orphan in adopt_orphans(self.config.spill_dir, own, known):
            log.warning("audit: adopting the spill file of a writer that is gone: %s", orphan.path)
            self._orphans.append(orphan)

    # ------------------------------------------------------------------ database

    async def _check_schema(self, conn: Any) -> None:
        row = await conn.fetchrow(
            "SELECT current_setting('server_encoding') AS enc,"
            " to_regclass('dbgate.audit_events') IS NOT NULL AS tables,"
            " to_regprocedure('dbgate.audit_ensure_month(date)') IS NOT NULL AS fn"
        )
        if not (row["tables"] and row["fn"]):
            raise AuditError(
                "the state database has no audit schema: apply the state migrations first"
            )
        if row["enc"] != "UTF8":
            raise AuditError(f"the state database's encoding is {row['enc']}; the audit needs UTF8")
        self._schema_ok = True

    async def _connect(self) -> None:
        try:
            conn = await asyncpg.connect(
                self._dsn,
                timeout=self.config.connect_timeout,
                server_settings={"application_name": "dbgate-audit"},
            )
        except Exception as e:
            self._schedule_retry(f"cannot reach the state database: {e}")
            return
        try:
            if not self._schema_ok:
                await self._check_schema(conn)
            await asyncio.wait_for(self._reconcile(conn), self.config.write_timeout)
        except AuditError:
            await conn.close()
            raise
        except Exception as e:
            conn.terminate()
            self._schedule_retry(f"the state database failed: {e}")
            return
        self._conn = conn
        self._registered = False
        self._backoff = 0.1
        if self._unavailable_since is not None:
            since, self._unavailable_since = self._unavailable_since, None
            log.warning("audit: the state database is back; writing resumes")
            self._record_outage(since)
        self._set_available(True, "")
        self._signal()  # connected again: wake wait_available (buffering kept `available`)

    def _record_outage(self, since: float) -> None:
        """A record of the outage itself (not after chain_end: nothing may follow it)."""
        if not self._closing:
            details = {
                "since": iso(round(since * 1_000_000)),
                "until": iso(round(self._clock() * 1_000_000)),
                "error": self._last_error,
                "spilled": self._spill.records if self._spill is not None else 0,
            }
            self._enqueue(WriterEvent("unavailable", details, self._clock()), urgent=False)

    async def _reconcile(self, conn: Any) -> None:
        """Learn where our chain ends in the database: a batch whose COMMIT answer was
        lost may be there already, and must not be written twice."""
        row = await conn.fetchrow(_HEAD_SQL, self.chain)
        if row is None:
            return
        db_seq, db_hash = int(row["seq"]), bytes(row["hash"])
        if db_seq > self._seq:
            raise AuditError(
                f"chain {self.chain} already has {db_seq} records in the state database, "
                "written by another process: a chain has one writer"
            )
        done = [r for r in self._pending if r.seq <= db_seq]
        if done:
            if done[-1].hash != db_hash:
                raise AuditError(f"chain {self.chain} in the state database forks from ours")
            self._pending = self._pending[len(done) :]
            self._committed(done)
        if db_seq > self._committed_seq:
            self._committed_seq, self._committed_hash = db_seq, db_hash

    async def _register(self, conn: Any, identity: dict[str, Any]) -> None:
        """Claim the chain in dbgate.audit_chains (idempotent for its own writer)."""
        started = from_us(parse_iso(identity["started_at"]))
        await conn.execute(
            _REGISTER_SQL,
            identity["chain"],
            str(identity.get("replica", "")),
            str(identity.get("host", "")),
            int(identity.get("pid", 0)),
            str(identity.get("version", "")),
            started,
        )
        row = await conn.fetchrow(
            "SELECT host, pid, started_at FROM dbgate.audit_chains WHERE chain = $1",
            identity["chain"],
        )
        if identity["chain"] == self.chain and (
            row["host"] != identity["host"]
            or row["pid"] != identity["pid"]
            or row["started_at"] != started
        ):
            raise AuditError(
                f"chain {self.chain} is registered by another process "
                f"({row['host']} pid {row['pid']}): a chain has one writer"
            )

    async def _ensure_months(self, conn: Any, logged: set[int]) -> None:
        """Create the month partitions these records go to (once per month and process)."""
        months = {from_us(us).date().replace(day=1) for us in logged} - self._months
        for month in sorted(months):
            await conn.fetchval("SELECT dbgate.audit_ensure_month($1)", month)
            self._months.add(month)

    async def _copy(self, conn: Any, rows: list[bytes], identity: dict[str, Any]) -> None:
        """Commit binary COPY rows (:mod:`dbgate.audit.binary`) in one transaction."""
        async with conn.transaction():
            if identity["chain"] != self.chain or not self._registered:
                await self._register(conn, identity)
            await conn.copy_to_table(
                "audit_events",
                schema_name="dbgate",
                columns=COPY_COLUMNS,
                source=binary.batch(rows),
                format="binary",
            )

    async def _write(self) -> None:
        """Commit one batch from the head of pending; chain the next one meanwhile."""
        conn = self._conn
        self._last_write = time.monotonic()
        batch = self._pending[: self.config.batch_size]
        rows = [r.row for r in batch]

        async def write() -> None:
            await self._ensure_months(conn, {r.values[LOGGED_AT] for r in batch})
            await self._copy(conn, rows, self._identity)

        task = asyncio.ensure_future(asyncio.wait_for(write(), self.config.write_timeout))
        try:
            # PostgreSQL inserts this batch while we build and hash the next one.
            while (
                not task.done()
                and (self._urgent or self._normal)
                and len(self._pending) < 2 * self.config.batch_size
            ):
                self._chain_some(min(_CHAIN_STEP, 2 * self.config.batch_size - len(self._pending)))
                await asyncio.sleep(0)
            await task
        except BaseException:
            if not task.done():
                task.cancel()
            raise
        self._registered = True
        self._pending = self._pending[len(batch) :]
        self._committed(batch)

    def _committed(self, recs: list[_Rec]) -> None:
        if not recs:
            return
        last = recs[-1]
        if last.seq > self._committed_seq:
            self._committed_seq, self._committed_hash = last.seq, last.hash
        self.committed_total += len(recs)
        for r in recs:
            if r.waiters:
                for fut in r.waiters:
                    if not fut.done():
                        fut.set_result(None)
        self._release(recs)

    async def _lost(self, error: BaseException) -> None:
        message = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        log.error("audit: writing to the state database failed (%s); will retry", message)
        await self._disconnect()
        self._schedule_retry(f"the state database failed: {message}")
        exc = AuditUnavailable(self._why or f"audit record not committed: {message}")
        for r in self._pending:
            _fail(r.waiters, exc)

    def _schedule_retry(self, why: str) -> None:
        self._next_attempt = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.config.retry_max_seconds)
        self._went_unavailable(why)

    def _went_unavailable(self, why: str) -> None:
        if self._unavailable_since is None:
            self._unavailable_since = self._clock()
            log.error("audit: %s", why)
        self._last_error = why
        buffering_ok = self._buffering and self._spill is not None and self._spill_has_room()
        self._set_available(buffering_ok, "" if buffering_ok else f"audit unavailable: {why}")

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), 2)
            except Exception:
                conn.terminate()

    # ------------------------------------------------------------------ spill

    def _spill_has_room(self) -> bool:
        assert self._spill is not None
        return self._spill.size < self._spill.max_bytes

    def _replay_due(self) -> bool:
        return bool(self._orphans) or (self._spill is not None and self._spill.pending)

    async def _replay(self) -> None:
        """Write spilled records (ours first, then adopted ones) before anything new."""
        if self._spill is not None and self._spill.pending:
            await self._replay_file(self.chain, self._identity, self._spill.read())
            self._spill.clear()
            log.warning("audit: replayed the spill file; the chain continues without a gap")
        while self._orphans:
            orphan = self._orphans[0]
            await self._replay_file(orphan.chain, orphan.header, orphan.documents())
            orphan.done()
            self._orphans.pop(0)
            log.warning("audit: replayed the spill file %s of a writer that is gone", orphan.path)

    async def _replay_file(self, chain: str, identity: dict[str, Any], docs: Any) -> None:
        conn = self._conn
        row = await conn.fetchrow(_HEAD_SQL, chain)
        head = int(row["seq"]) if row is not None else 0
        chunk: list[Document] = []

        async def flush() -> None:
            rows = [
                binary.encode(d.values, d.prev_hash, d.hash) for d in chunk if d.values is not None
            ]
            if not rows:
                return
            await self._ensure_months(conn, {d.logged_at for d in chunk})
            await asyncio.wait_for(self._copy(conn, rows, identity), self.config.write_timeout)
            if chain == self.chain:
                self._registered = True
                last = chunk[-1]
                if last.seq > self._committed_seq:
                    self._committed_seq, self._committed_hash = last.seq, last.hash
            self.committed_total += len(rows)

        for doc in docs:
            if doc.seq <= head:
                continue
            chunk.append(doc)
            if len(chunk) >= _REPLAY_CHUNK:
                await flush()
                chunk = []
        await flush()

    async def _spill_everything(self) -> None:
        """Database unreachable, buffer mode: move every queued record to the spill file."""
        assert self._spill is not None
        while True:
            if len(self._pending) < self.config.batch_size:
                await self._chain_batch()
            if not self._pending:
                return
            batch = self._pending[: self.config.batch_size]
            docs = [to_document(r.values, r.prev, r.hash) for r in batch]
            if not self._spill.room_for(docs):
                self._set_available(
                    False,
                    "audit unavailable: the state database is unreachable and the spill file is full",
                )
                return
            try:
                await asyncio.to_thread(self._spill.append, docs)
            except OSError as e:
                log.error("audit: cannot write the spill file %s: %s", self._spill.path, e)
                self._set_available(False, f"audit unavailable: spill file: {e}")
                return
            self._pending = self._pending[len(batch) :]
            self._spilled_total += len(batch)
            exc = AuditUnavailable("the state database is unreachable; the record was buffered")
            for r in batch:
                _fail(r.waiters, exc)
            self._release(batch)

    async def _last_resort(self) -> None:
        """After the stop timeout: keep what is left in the spill directory, if any."""
        self._chain_some(self._count + 1)
        left = self._pending
        if not left:
            return
        if self._spill is not None:
            try:
                self._spill.append([to_document(r.values, r.prev, r.hash) for r in left])
                log.error(
                    "audit: %d records could not be written before shutdown; they wait in %s",
                    len(left),
                    self._spill.path,
                )
                self._pending = []
                return
            except OSError as e:
                log.error("audit: cannot write the spill file: %s", e)
        log.error(
            "audit: %d records could not be written before shutdown and are lost "
            "(configure audit.spill_dir to keep them)",
            len(left),
        )

    def _fail_waiters(self, exc: AuditUnavailable) -> None:
        for r in self._pending:
            _fail(r.waiters, exc)
        for q in (self._urgent, self._normal):
            for item in q:
                _fail(item.waiters, exc)


def _fail(waiters: list[asyncio.Future[None]] | None, exc: BaseException) -> None:
    if waiters:
        for fut in waiters:
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: nobody may be awaiting it any more
