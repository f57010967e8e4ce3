"""Rows per identity and table over a sliding window, shared by every replica.

A rule's ``max_rows_per_window`` (docs/rules.md, "Run-time limits") bounds what one
identity reads from each table over ``window``, whatever session or replica serves
it: reading a table one key at a time, or from twenty connections at once, is still
reading the table. The gate asks two things of this module, both on the event loop
and both synchronous, so they must be cheap and must never wait for the network:

* :meth:`RowWindows.remaining` — before an allowed read runs: how many rows the
  identity may still read now (the smallest over the tables the statement reads).
  The gate caps the statement's ``max_rows`` with it;
* :meth:`RowWindows.add` — after a statement finished: the rows it returned, charged
  to *every* table it reads. A join of ``orders`` and ``customers`` that returned
  100 rows counts 100 against each: an upper bound (it cannot tell which table a
  row's values came from), never an undercount.

How the count is kept, and why:

* **Buckets.** Rows are counted per (identity, table, bucket): a bucket covers
  ``bucket_seconds`` (10 s by default) and is named by its end. A bucket counts
  while its end lies inside the window, so a row read at time *t* counts until some
  moment in (*t* + window, *t* + window + bucket] — late by at most one bucket,
  never early. The state table holds one row per replica, identity, table and
  bucket, however many statements there were.
* **Local view.** Rows this replica recorded are kept in memory (pending, in flight,
  sent) until a read of the shared totals includes them; :meth:`remaining` adds
  them to the *shared totals* — the sums over every replica, per identity, table and
  window length, as last read from the state database. One background task does,
  every ``refresh_seconds`` (1 s by default): one ``INSERT … ON CONFLICT DO UPDATE``
  of the pending buckets, then one query of the totals, then (every minute) one
  ``DELETE`` of buckets older than the longest window (at least
  ``retention_seconds``, a day by default, so a replica with other rules never
  loses counts another one needs).
* **Staleness.** Another replica's reads are seen here within about one refresh
  interval (plus its own flush interval): for that long, the identity may read up to
  the limit on each replica. Between refreshes the totals are not aged: a row that
  leaves the window is freed at the next refresh (late, never early).
* **Fail closed.** When the shared totals could not be read for longer than
  ``stale_after_seconds`` (three refresh intervals by default), or were never read,
  :meth:`stale` is true and :meth:`remaining` returns 0: every read governed by a
  window is stopped, with :meth:`reason` saying why. It recovers by itself at the
  first refresh that works. A window length whose totals were never read (a rule
  just loaded) is answered from the shortest longer window whose totals were read
  (an upper bound), or 0 until the next refresh, which it triggers at once.
* **Bounded memory.** Rows recorded while the state database is away stay pending.
  Past ``max_entries`` buckets, each (identity, table)'s pending buckets are folded
  into its newest one (rows then count a little longer); past that, new rows are
  charged to the identity's *every table* account (table ``''``), which counts
  against each table it reads: more is stopped, nothing is lost.
* **Clocks.** Buckets use the wall clock (``clock``; replicas are expected to keep
  theirs in step, as NTP does: a replica whose clock is behind by δ frees rows δ
  early); staleness uses the monotonic clock. Both are injectable for tests.

A flush whose answer was lost (the state database committed it, the connection
died) is sent again: those rows are then counted twice — again more, never less.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dbgate.approvals.db import STATE_ERRORS, describe
from dbgate.policy.model import RowWindow

if TYPE_CHECKING:
    from dbgate.approvals.db import StateDB

log = logging.getLogger("dbgate.gate")

#: Width of a time bucket: a row leaves its window at most this much late.
BUCKET_SECONDS = 10
#: How often the local view is flushed and the shared totals are read.
REFRESH_SECONDS = 1.0
#: The shared totals are stale (reads are stopped) after this many refresh intervals
#: without a successful read.
STALE_INTERVALS = 3
#: Buckets are kept at least this long, whatever the longest window this replica knows.
RETENTION_SECONDS = 86_400
#: Old buckets are deleted at most this often.
PRUNE_SECONDS = 60.0
#: Local buckets kept apart before they are folded (see the module docstring).
MAX_ENTRIES = 100_000
#: The table name of an identity's account that counts against every table.
EVERY_TABLE = ""

#: (identity, table) -> bucket end (epoch seconds) -> rows.
Counts = dict[tuple[str, str], dict[int, int]]

_FLUSH = """
INSERT INTO dbgate.row_window_counts AS c (identity, table_name, bucket_end, replica, rows)
SELECT u.identity, u.table_name, u.bucket_end, $4, u.rows
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $5::bigint[])
     AS u(identity, table_name, bucket_end, rows)
ON CONFLICT (identity, table_name, bucket_end, replica)
DO UPDATE SET rows = c.rows + EXCLUDED.rows
"""

# Sums over every replica, per identity, table and window length: the buckets whose
# end lies inside each window, as of $2.
_TOTALS = """
WITH recent AS (
    SELECT identity, table_name, bucket_end, sum(rows) AS rows
    FROM dbgate.row_window_counts
    WHERE bucket_end > $2::timestamptz - make_interval(secs => $3::double precision)
    GROUP BY identity, table_name, bucket_end
)
SELECT r.identity, r.table_name, w.seconds, sum(r.rows)::bigint AS rows
FROM recent r
JOIN unnest($1::bigint[]) AS w(seconds)
  ON r.bucket_end > $2::timestamptz - make_interval(secs => w.seconds::double precision)
GROUP BY r.identity, r.table_name, w.seconds
"""

_PRUNE = """
DELETE FROM dbgate.row_window_counts
WHERE bucket_end <= $1::timestamptz - make_interval(secs => $2::double precision)
"""


def _merge(into: Counts, other: Counts) -> None:
    for pair, buckets in other.items():
        mine = into.setdefault(pair, {})
        for end, rows in buckets.items():
            mine[end] = mine.get(end, 0) + rows


def _fold(counts: Counts) -> None:
    """Every (identity, table)'s buckets into its newest one: the rows then leave the
    window later than they would, never earlier."""
    for buckets in counts.values():
        if len(buckets) > 1:
            total = sum(buckets.values())
            newest = max(buckets)
            buckets.clear()
            buckets[newest] = total


def _entries(counts: Counts) -> int:
    return sum(len(b) for b in counts.values())


def _within(counts: Counts, pair: tuple[str, str], since: float) -> int:
    buckets = counts.get(pair)
    if not buckets:
        return 0
    total = 0
    for end, rows in buckets.items():  # a bucket or two: no generator to set up
        if end > since:
            total += rows
    return total


class RowLedger:
    """The bookkeeping of :class:`RowWindows`, with no I/O and no clock of its own.

    Rows move ``pending`` -> ``in flight`` (being written) -> ``sent`` (written,
    not yet in a read of the totals) -> part of the totals. At every step they
    count exactly once in :meth:`used`.
    """

    def __init__(self, bucket_seconds: int = BUCKET_SECONDS, max_entries: int = MAX_ENTRIES):
        if bucket_seconds < 1:
            raise ValueError(f"bucket_seconds must be at least 1, got {bucket_seconds}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self.bucket_seconds = bucket_seconds
        self.max_entries = max_entries
        self.pending: Counts = {}
        self.in_flight: Counts = {}
        self.sent: Counts = {}
        self._pending_entries = 0
        #: (identity, table, window seconds) -> rows, summed over every replica.
        self.totals: dict[tuple[str, str, int], int] = {}
        #: The window lengths ``totals`` covers, ascending.
        self.lengths: tuple[int, ...] = ()
        self.folded = 0  # times pending buckets were folded to stay in bounds
        #: Moved by whatever can make an account count more other than a charge: a
        #: read of the totals (other replicas' rows), a fold (rows kept past their
        #: bucket). Within one epoch no table's :meth:`used` for an identity grows by
        #: more than that identity's ``charged`` does (rows charged times the tables
        #: charged): what a cap reused while it still fits in what is left builds on
        #: (``dbgate.gate.windows._CREDIT``).
        self.epoch = 0
        self.charged: dict[str, int] = {}

    def bucket_end(self, now: float) -> int:
        """The end of the bucket that a row read at ``now`` (epoch seconds) falls in."""
        b = self.bucket_seconds
        return (math.floor(now / b) + 1) * b

    # -- recording ---------------------------------------------------------------------
    def charge(self, identity: str, tables: Iterable[str], rows: int, now: float) -> None:
        """``rows`` read by ``identity`` at ``now``, counted against each of ``tables``."""
        b = self.bucket_seconds
        end = (math.floor(now / b) + 1) * b  # bucket_end, inline: once per statement
        if type(tables) is not tuple:
            tables = tuple(tables)
        # Counted first (a charge that fails half-way is over-counted, never under):
        # a row charged to EVERY_TABLE (no room for a table) counts for every table,
        # at most once per table charged here.
        charged = self.charged
        charged[identity] = charged.get(identity, 0) + rows * len(tables)
        pending = self.pending
        for table in tables:
            buckets = pending.get((identity, table))
            if buckets is not None and end in buckets:  # the common case: no new bucket
                buckets[end] += rows
            else:
                self._charge_one(identity, table, rows, end)

    def _charge_one(self, identity: str, table: str, rows: int, end: int) -> None:
        buckets = self.pending.get((identity, table))
        if buckets is not None and end in buckets:
            buckets[end] += rows
            return
        if self._pending_entries >= self.max_entries:
            self._fold()  # now one bucket per (identity, table)
            if buckets is None and self._pending_entries >= self.max_entries:
                # No room for one more table: count the rows against every table.
                buckets = self.pending.get((identity, EVERY_TABLE))
                table = EVERY_TABLE
            if buckets is not None:
                ((last, kept),) = buckets.items()
                buckets.clear()
                buckets[max(last, end)] = kept + rows
                return
        self.pending.setdefault((identity, table), {})[end] = rows
        self._pending_entries += 1

    def _fold(self) -> None:
        _fold(self.pending)
        self._pending_entries = len(self.pending)
        self.folded += 1
        self.epoch += 1

    # -- moving to the state database --------------------------------------------------
    def take_pending(self) -> Counts:
        """The pending buckets, now in flight (still counted)."""
        batch, self.pending, self._pending_entries = self.pending, {}, 0
        _merge(self.in_flight, batch)
        return batch

    def flushed(self, batch: Counts, ok: bool) -> None:
        """The write of ``batch`` (from :meth:`take_pending`) ended."""
        for pair, buckets in batch.items():
            mine = self.in_flight.get(pair)
            if mine is None:
                continue
            for end, rows in buckets.items():
                left = mine.get(end, 0) - rows
                if left > 0:
                    mine[end] = left
                else:
                    mine.pop(end, None)
            if not mine:
                del self.in_flight[pair]
        if ok:
            _merge(self.sent, batch)
            if _entries(self.sent) > self.max_entries:  # written, but never read back
                _fold(self.sent)
                self.folded += 1
                self.epoch += 1
            return
        _merge(self.pending, batch)
        self._pending_entries = _entries(self.pending)
        if self._pending_entries > self.max_entries:
            self._fold()

    def read_totals(self, totals: dict[tuple[str, str, int], int], lengths: Iterable[int]) -> None:
        """A read of the shared totals that began after every sent batch was committed."""
        self.totals = totals
        self.lengths = tuple(sorted(set(lengths)))
        self.sent = {}
        self.epoch += 1

    def forget_before(self, since: float) -> None:
        """Drop local buckets that ended before ``since`` (past every window)."""
        for counts in (self.pending, self.in_flight, self.sent):
            for pair in list(counts):
                buckets = counts[pair]
                for end in [e for e in buckets if e <= since]:
                    del buckets[end]
                if not buckets:
                    del counts[pair]
        self._pending_entries = _entries(self.pending)

    # -- reading -----------------------------------------------------------------------
    def covering(self, seconds: int) -> int | None:
        """The shortest window length read from the totals that covers ``seconds``."""
        for length in self.lengths:
            if length >= seconds:
                return length
        return None

    def used(self, identity: str, table: str, seconds: int, now: float) -> int | None:
        """Rows ``identity`` read from ``table`` in the ``seconds`` before ``now``;
        None when no read of the totals covers a window that long."""
        length = self.covering(seconds)
        if length is None:
            return None
        since = now - seconds
        names = (table,) if table == EVERY_TABLE else (table, EVERY_TABLE)
        total = 0
        for name in names:
            total += self.totals.get((identity, name, length), 0)
            for counts in (self.pending, self.in_flight, self.sent):
                if counts:
                    total += _within(counts, (identity, name), since)
        return total

    @property
    def entries(self) -> int:
        return _entries(self.pending) + _entries(self.in_flight) + _entries(self.sent)


class RowWindows:
    """The rows-per-window accounts of one replica, over the shared state database.

    ``state`` is the state database handle (its pool and per-call timeout are used;
    its cool-off is not: this task paces itself). ``replica`` names this process in
    the table. ``windows``: window lengths (seconds) whose totals to read from the
    start (the rule set's); others are added as they are seen.
    """

    def __init__(
        self,
        state: StateDB,
        replica: str,
        *,
        refresh_seconds: float = REFRESH_SECONDS,
        stale_after_seconds: float | None = None,
        bucket_seconds: int = BUCKET_SECONDS,
        retention_seconds: int = RETENTION_SECONDS,
        max_entries: int = MAX_ENTRIES,
        windows: Iterable[int] = (),
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not replica:
            raise ValueError("replica must name this replica")
        if refresh_seconds <= 0:
            raise ValueError(f"refresh_seconds must be positive, got {refresh_seconds}")
        self.state = state
        self.replica = replica
        self.refresh_seconds = refresh_seconds
        self.stale_after_seconds = (
            STALE_INTERVALS * refresh_seconds
            if stale_after_seconds is None
            else stale_after_seconds
        )
        if self.stale_after_seconds <= 0:
            raise ValueError(f"stale_after_seconds must be positive, got {stale_after_seconds}")
        self.retention_seconds = retention_seconds
        self.ledger = RowLedger(bucket_seconds, max_entries)
        self._clock = clock
        self._monotonic = monotonic
        self._lengths: set[int] = set()
        self._read_ok_at: float | None = None  # monotonic time of the last good read
        self._created_at = monotonic()
        self._error = "the shared row counts have not been read yet"
        self._pruned_at: float | None = None
        self._cycle = asyncio.Lock()
        self.reads = 0  # successful reads of the shared totals so far
        self._read_event = asyncio.Event()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.watch(windows)

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Read the shared totals once (a failure is logged: reads stay stopped until
        one works), then keep them fresh in the background."""
        await self.refresh()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="dbgate-row-windows")

    async def stop(self) -> None:
        """Stop refreshing and write what is pending (a failure is logged)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        async with self._cycle:
            if not await self._flush() and self.ledger.pending:
                log.error(
                    "row windows: %d row counts could not be written at shutdown (%s)",
                    _entries(self.ledger.pending),
                    self._error,
                )

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.refresh_seconds)
            self._wake.clear()
            try:
                await self.refresh()
            except Exception:  # never let the loop die: reads would stay stopped
                log.exception("row windows: refresh failed unexpectedly")

    async def wait_read(self, after: int) -> None:
        """Return once more than ``after`` reads of the shared totals have succeeded
        (for readiness checks and tests; bound it with a timeout)."""
        while self.reads <= after:
            await self._read_event.wait()

    def watch(self, windows: Iterable[int]) -> None:
        """Read the totals of these window lengths (seconds) from the next refresh on."""
        new = {int(s) for s in windows} - self._lengths
        if new:
            self._lengths |= new
            if self._wake is not None:
                self._wake.set()

    # -- the hot path ------------------------------------------------------------------
    def remaining(self, identity: str, window: RowWindow, tables: Iterable[str]) -> int:
        """Rows ``identity`` may still read now from ``tables`` under ``window`` (the
        smallest over the tables); 0 when the shared totals are stale."""
        if window.seconds not in self._lengths:
            self.watch((window.seconds,))
        if self.stale():
            return 0
        now = self._clock()
        most = 0
        for table in tables or (EVERY_TABLE,):
            used = self.ledger.used(identity, table, window.seconds, now)
            if used is None:
                return 0
            most = max(most, used)
        return max(0, window.rows - most)

    def add(self, identity: str, window: RowWindow, tables: Iterable[str], rows: int) -> None:
        """``rows`` returned to ``identity`` by a statement reading ``tables``: each
        table is charged all of them. Never raises, never waits."""
        try:
            if rows <= 0:
                return
            if window.seconds not in self._lengths:
                self.watch((window.seconds,))
            if type(tables) is not tuple:
                tables = tuple(tables)
            self.ledger.charge(identity, tables or (EVERY_TABLE,), int(rows), self._clock())
        except Exception:
            log.exception("row windows: could not record %r rows for %r", rows, identity)

    def stale(self) -> bool:
        """True when the shared totals are too old to trust: reads are stopped."""
        if self._read_ok_at is None:
            return True
        return self._monotonic() - self._read_ok_at > self.stale_after_seconds

    def reason(self) -> str:
        """Why :meth:`remaining` returns 0 for every window (when :meth:`stale`)."""
        since = self._read_ok_at if self._read_ok_at is not None else self._created_at
        age = max(0.0, self._monotonic() - since)
        return (
            "dbgate cannot check the rows-per-window limit: the shared row counts in the "
            f"state database have not been read for {age:.0f} s ({self._error}); reads "
            "under that limit are stopped until they can be"
        )

    def describe(self, identity: str, window: RowWindow, tables: Iterable[str]) -> str:
        """The refusal text for a read that ``window`` leaves no rows: why."""
        if self.stale():
            return self.reason()
        per = _duration(window.seconds)
        if self.ledger.covering(window.seconds) is None:
            return (
                f"dbgate is reading the shared row counts for the {per} window of rule "
                f"'{window.rule}'; retry in a moment"
            )
        now = self._clock()
        used, table = max(
            ((self.ledger.used(identity, t, window.seconds, now) or 0, t) for t in tables),
            default=(0, ""),
        )
        return (
            f"{identity} has read {used} rows of {table or 'these tables'} in the last {per}, "
            f"across sessions and replicas; the rule '{window.rule}' allows {window.rows} "
            f"rows of each table per {per}"
        )

    # -- the background cycle ----------------------------------------------------------
    async def refresh(self) -> bool:
        """One cycle: write the pending counts, read the shared totals, delete old
        buckets when due. True when the totals are now current."""
        async with self._cycle:
            if not await self._flush():
                return False
            return await self._read()

    async def _flush(self) -> bool:
        ledger = self.ledger
        if not ledger.pending:
            return True
        batch = ledger.take_pending()
        identities, tables, ends, rows = [], [], [], []
        for (identity, table), buckets in batch.items():
            for end, n in buckets.items():
                identities.append(identity)
                tables.append(table)
                ends.append(datetime.fromtimestamp(end, UTC))
                rows.append(n)
        try:
            async with self.state.pool.acquire(timeout=self.state.timeout) as conn:
                await conn.execute(_FLUSH, identities, tables, ends, self.replica, rows)
        except STATE_ERRORS as e:
            ledger.flushed(batch, ok=False)
            self._failed(e)
            return False
        except BaseException:
            ledger.flushed(batch, ok=False)
            raise
        ledger.flushed(batch, ok=True)
        return True

    async def _read(self) -> bool:
        now = self._clock()
        lengths = sorted(self._lengths)
        at = datetime.fromtimestamp(now, UTC)
        longest = max(lengths, default=0)
        prune = self._pruned_at is None or self._monotonic() - self._pruned_at >= PRUNE_SECONDS
        keep = max(self.retention_seconds, longest) + self.ledger.bucket_seconds
        try:
            async with self.state.pool.acquire(timeout=self.state.timeout) as conn:
                rows: list[Any] = (
                    await conn.fetch(_TOTALS, lengths, at, float(longest)) if lengths else []
                )
                if prune:
                    await conn.execute(_PRUNE, at, float(keep))
        except STATE_ERRORS as e:
            self._failed(e)
            return False
        self.ledger.read_totals(
            {(r["identity"], r["table_name"], r["seconds"]): r["rows"] for r in rows}, lengths
        )
        self.ledger.forget_before(now - keep)
        if prune:
            self._pruned_at = self._monotonic()
        if self._read_ok_at is None or self.stale():
            log.info("row windows: shared row counts read from the state database")
        self._read_ok_at = self._monotonic()
        self.reads += 1
        done, self._read_event = self._read_event, asyncio.Event()
        done.set()
        return True

    def _failed(self, exc: BaseException) -> None:
        reason = describe(exc)
        if reason != self._error:
            log.warning("row windows: %s", reason)
        self._error = reason


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"
