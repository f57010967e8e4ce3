"""The writing task (mixin of :class:`~dbgate.audit.writer.AuditWriter`): chain
queued events into records, let a batch gather ("few, large commits" in
:mod:`dbgate.audit.writer`), write it while the next one is chained, and settle what
a commit or a failure decides. The database side of a write is
:mod:`~dbgate.audit.writer.database`; the spill path is
:mod:`~dbgate.audit.writer.spilling`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from dbgate.audit.canonical import LOGGED_AT
from dbgate.audit.errors import AuditError, AuditUnavailable
from dbgate.audit.events import WriterEvent
from dbgate.audit.writer.queue import Rec, fail

log = logging.getLogger("dbgate.audit")

_CHAIN_STEP = 256  # records chained between yields to the event loop


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


class Batching:
    """The task's loop, chaining and writing. The state lives in
    :class:`~dbgate.audit.writer.AuditWriter`'s ``__init__``."""

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

    # ------------------------------------------------------------------ chaining

    def _chain_some(self, limit: int) -> int:
        """Chain up to ``limit`` queued events into pending records."""
        n = 0
        now_us = round(self._clock() * 1_000_000)
        logged = max(self._last_logged_us, now_us)
        self._last_logged_us = logged
        sealed = self._builder.sealed
        run = self._builder.chain_run
        chain = self.chain
        pending = self._pending
        while n < limit and (self._urgent or self._normal):
            if not self._urgent:
                # a run of ordinary statements of known shapes, in one compiled loop
                before = len(pending)
                try:
                    run(
                        self._normal,
                        limit - n,
                        chain,
                        self._seq + 1,
                        logged,
                        self._head_hash,
                        Rec,
                        pending,
                    )
                except Exception:  # what it chained stands; the rest takes the path below
                    log.exception("audit: the compiled chaining failed; chaining one by one")
                done = len(pending) - before
                if done:
                    self._seq += done
                    self._normal_out += done
                    self._head_hash = pending[-1].hash
                    n += done
                    continue
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
            pending.append(Rec(values, prev, h, row, item.waiters, item.size))
            if item.waiters:
                self._hurry_seq = self._seq
            n += 1
        return n

    async def _chain_batch(self) -> None:
        """Fill pending up to a batch, yielding to the event loop between steps."""
        while len(self._pending) < self.config.batch_size and (self._urgent or self._normal):
            self._chain_some(min(_CHAIN_STEP, self.config.batch_size - len(self._pending)))
            if self._urgent or self._normal:
                await asyncio.sleep(0)

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

    # ------------------------------------------------------------------ writing

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

    def _committed(self, recs: list[Rec]) -> None:
        if not recs:
            return
        last = recs[-1]
        if last.seq > self._committed_seq:
            self._committed_seq, self._committed_hash = last.seq, last.hash
            self._committed_logged_us = last.values[LOGGED_AT]
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
            fail(r.waiters, exc)
