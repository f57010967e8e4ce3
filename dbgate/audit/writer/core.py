"""The :class:`AuditWriter` itself: the state its parts share, starting and stopping,
and what it reports (the chain head, stats). Its other methods come from the mixins
of :mod:`dbgate.audit.writer` — see there for the writer's design.
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
from collections.abc import Callable
from datetime import date
from typing import Any

from dbgate import __version__
from dbgate.audit.canonical import GENESIS
from dbgate.audit.errors import AuditError, AuditUnavailable
from dbgate.audit.events import WriterEvent
from dbgate.audit.rows import RowBuilder
from dbgate.audit.serial import dumps
from dbgate.audit.spill import Orphan, SpillFile
from dbgate.audit.times import iso
from dbgate.audit.writer.batching import Batching
from dbgate.audit.writer.database import Database
from dbgate.audit.writer.queue import Item, Queueing, Rec
from dbgate.audit.writer.spilling import Spilling
from dbgate.config import AuditConfig
from dbgate.logs import UNMASKED

log = logging.getLogger("dbgate.audit")


def _safe_name(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", value)[:64] or "dbgate"


class AuditWriter(Queueing, Batching, Database, Spilling):
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
        self._urgent: deque[Item] = deque()
        self._normal: deque[Item] = deque()
        self._pending: list[Rec] = []
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
        self._committed_logged_us: int | None = None  # logged_at of that record
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
        #: Told when the queue reaches its bound (True) and when it is below three
        #: quarters again (False): the gate turns strict meanwhile, so that every new
        #: statement is admitted (waits for room), none sent on from a remembered
        #: verdict.
        self.on_full: Callable[[bool], None] | None = None
        self._full = False
        #: identity -> statements refused during an outage with the queue full, not
        #: recorded one by one (Queueing.record); the outage's record carries them
        self._refused_unrecorded: dict[str, int] = {}
        #: (event, identity) -> session records not kept likewise
        self._sessions_unrecorded: dict[tuple[str, str], int] = {}

    # ------------------------------------------------------------------ lifecycle

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
        await self._first_connect()
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

    # ------------------------------------------------------------------ reports

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
        # when the head record was chained: verify holds it to the month an archive
        # anchor says it left with (a forged anchor cannot pass a head off as archived)
        logged = self._committed_logged_us
        if logged is not None:
            head["logged_at"] = iso(logged)
        log.info(
            "audit chain head: chain=%s seq=%d hash=%s%s",
            self.chain,
            self._committed_seq,
            head["hash"],
            f" logged_at={head['logged_at']}" if logged is not None else "",
            # hex and a replica name the operator chose: nothing to mask, and a hash
            # masked by look (a run of digits taken for a card) anchors nothing
            extra={UNMASKED: True},
        )
        if self.config.head_file is not None:
            try:
                with open(self.config.head_file, "a", encoding="utf-8") as f:
                    f.write(dumps(head) + "\n")
            except OSError as e:
                log.error("audit: cannot append the chain head to %s: %s", self.config.head_file, e)
        self._logged_head_seq = self._committed_seq
