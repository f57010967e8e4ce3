"""Verify the chains in the state database: rows read in ``(chain, seq)`` order from
the view reviewers read, their canonical text built by PostgreSQL
(:func:`dbgate.audit.canonical.canonical_sql`), the hashes computed here."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from typing import Any

from dbgate.audit.canonical import canonical_sql
from dbgate.audit.export import month_range
from dbgate.audit.times import to_us
from dbgate.audit.verify.chains import Report, Verifier

# The view shows the hashes in hex; they are decoded here (cheaper than in the server,
# which is the busier side of verification).
_ROWS_SQL = (
    "SELECT chain, seq, id, coalesce(prev_hash, '') AS prev, coalesce(hash, '') AS hash, "
    f"{canonical_sql()} AS content, "
    "(kind = 'audit' AND event = 'chain_end') AS chain_end "
    "FROM dbgate.audit_log"
)
_RANGE_SQL = _ROWS_SQL + " WHERE chain = $1 AND seq BETWEEN $2 AND $3 ORDER BY seq"
# The first seq of every `range_rows` records of each chain: where ranges start; and
# any record without a chain or seq (the owner can drop the NOT NULL constraints),
# which no range would read.
_BOUNDS_SQL = (
    "SELECT chain, seq FROM (SELECT chain, seq, row_number() OVER "
    "(PARTITION BY chain ORDER BY seq) AS n FROM dbgate.audit_log) AS numbered "
    "WHERE n % $1 = 1 OR chain IS NULL OR seq IS NULL ORDER BY chain, seq"
)
_UNPLACED_SQL = _ROWS_SQL + " WHERE chain IS NULL OR seq IS NULL ORDER BY id"
_SETTINGS = {
    "application_name": "dbgate-audit-verify",
    # the (chain, seq) index gives the order: never sort the whole trail
    "enable_sort": "off",
    "max_parallel_workers_per_gather": "0",
}
_MAX_SEQ = 2**63 - 1


def verify_query() -> str:
    return _ROWS_SQL + " ORDER BY chain, seq"


async def verify_database(
    dsn: str,
    heads: Iterable[tuple[Any, ...]] = (),
    jobs: int = 3,
    range_rows: int = 4_000,
) -> Report:
    """Verify every chain in the state database at ``dsn`` (one consistent snapshot).

    PostgreSQL builds each row's canonical text, which costs it about twice what
    hashing costs here; so ``jobs`` connections (sharing one exported snapshot)
    fetch consecutive ranges of ``range_rows`` records ahead, and one verifier
    consumes them in ``(chain, seq)`` order — exactly the order a single query
    would give.
    """
    import asyncpg

    conn = await asyncpg.connect(dsn, server_settings=_SETTINGS)
    extra: list[Any] = []
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            archive = await conn.fetch("SELECT chain, seq, hash, month FROM dbgate.audit_archive")
            anchors = {(r["chain"], r["seq"]): bytes.fromhex(r["hash"]) for r in archive}
            ends = {(r["chain"], r["seq"]): month_range(r["month"])[1] for r in archive}
            writers = await conn.fetch("SELECT chain, started_at FROM dbgate.audit_writers")
            registered = [r["chain"] for r in writers]
            verifier = Verifier(
                "database",
                anchors=anchors,
                heads=heads,
                anchor_ends={k: to_us(v) for k, v in ends.items()},
            )
            await _check_anchors(conn, verifier, archive, ends, writers)
            if jobs <= 1:
                await _feed_cursor(verifier, conn, range_rows)
            else:
                bounds = await conn.fetch(_BOUNDS_SQL, range_rows)
                placed = [b for b in bounds if b[0] is not None and b[1] is not None]
                if len(placed) < len(bounds):
                    verifier.feed_rows(await conn.fetch(_UNPLACED_SQL))
                ranges = _ranges(placed)
                snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
                for _ in range(min(jobs, len(ranges)) - 1):
                    extra.append(await _snapshot_connection(dsn, snapshot))
                await _feed_ranges(verifier, [conn, *extra], ranges)
    finally:
        for c in extra:
            await c.close()
        await conn.close()
    return verifier.finish(registered, archived_chains={c for c, _ in anchors})


async def _check_anchors(
    conn: Any, verifier: Verifier, archive: list[Any], ends: dict[Any, Any], writers: list[Any]
) -> None:
    """Reject anchors no archive can have written. ``audit_detach_month`` anchors every
    chain of the oldest attached past month and detaches it in one transaction, so an
    anchor's month is over, holds no live record, and ended after its chain's process
    started. Anyone who may INSERT into ``audit_anchors`` (its owner, a superuser) could
    otherwise delete a chain's first records — or all of them — and anchor the rest."""
    if not archive:
        return
    now = await conn.fetchval("SELECT now()")
    live: dict[Any, bool] = {}
    for month in sorted({r["month"] for r in archive}):
        first, nxt = month_range(month)
        live[month] = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM dbgate.audit_log WHERE logged_at >= $1 AND logged_at < $2)",
            first,
            nxt,
        )
    started = {r["chain"]: r["started_at"] for r in writers}
    for r in sorted(archive, key=lambda r: (r["chain"], r["seq"])):
        chain, seq, month = r["chain"], r["seq"], r["month"]
        end = ends[(chain, seq)]
        why = None
        if end > now:
            why = "is not over"
        elif live[month]:
            why = "still holds records in the live trail"
        elif chain in started and end <= started[chain]:
            why = f"ended before the chain's writer started ({started[chain]:%Y-%m-%d %H:%M:%S})"
        if why is not None:
            verifier.reject_anchor(
                chain,
                seq,
                f"chain {chain}: the archive anchor at seq {seq} says month {month:%Y-%m} was "
                f"archived, but that month {why}: no archive wrote the anchor, and the "
                "records it accounts for were deleted",
            )


async def _feed_cursor(verifier: Verifier, conn: Any, fetch: int) -> None:
    """One connection: ask for the next rows before hashing these, so that
    PostgreSQL builds them meanwhile (batches small enough for the socket buffers,
    or the server would stall)."""
    cursor = await conn.cursor(verify_query())
    pending = asyncio.ensure_future(cursor.fetch(fetch))
    while True:
        rows = await pending
        if not rows:
            break
        pending = asyncio.ensure_future(cursor.fetch(fetch))
        await asyncio.sleep(0)
        verifier.feed_rows(rows)


def _ranges(bounds: list[Any]) -> list[tuple[str, int, int]]:
    """Consecutive ``(chain, first seq, last seq)`` ranges covering every record."""
    out: list[tuple[str, int, int]] = []
    for i, (chain, seq) in enumerate(bounds):
        if out and out[-1][0] == chain and out[-1][1] == seq:
            continue  # a duplicated seq on a boundary: one range holds both
        nxt = bounds[i + 1] if i + 1 < len(bounds) else None
        last = nxt[1] - 1 if nxt is not None and nxt[0] == chain else _MAX_SEQ
        out.append((chain, seq, max(seq, last)))
    return out


async def _snapshot_connection(dsn: str, snapshot: str) -> Any:
    import asyncpg

    if not re.fullmatch(r"[0-9A-Fa-f-]+", snapshot):
        raise AuditVerifyError(f"unexpected snapshot id {snapshot!r}")
    conn = await asyncpg.connect(dsn, server_settings=_SETTINGS)
    await conn.execute(
        f"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{snapshot}'"
    )
    return conn


async def _feed_ranges(verifier: Verifier, conns: list[Any], ranges: list[Any]) -> None:
    jobs = len(conns)
    queues: list[asyncio.Queue[Any]] = [asyncio.Queue(maxsize=2) for _ in conns]

    async def fetch(w: int) -> None:
        try:
            for chain, lo, hi in ranges[w::jobs]:
                await queues[w].put(await conns[w].fetch(_RANGE_SQL, chain, lo, hi))
        except Exception as e:  # handed to the consumer, which raises it
            await queues[w].put(e)

    workers = [asyncio.ensure_future(fetch(w)) for w in range(jobs)]
    try:
        for i in range(len(ranges)):
            rows = await queues[i % jobs].get()
            if isinstance(rows, Exception):
                raise rows
            verifier.feed_rows(rows)
    finally:
        for t in workers:
            t.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


class AuditVerifyError(Exception):
    """Verification could not run (not: found tampering)."""
