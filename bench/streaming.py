"""Streaming benchmark: a million rows through asyncpg.

pgbench measures per-message latency; this measures bulk throughput, the other
thing a relay can get wrong (per-DataRow work, small writes, no back-pressure).

Method, and why:

* The rows come from a table created once (``bench_stream``: an int and a
  32-character md5 text, about 50 bytes per DataRow, ~50 MB per run), not from
  ``generate_series``/``md5()`` at query time, so the server's share of the CPU is
  a sequential scan and the relay's share is as large as it can be.
* The query is ``SELECT g, m FROM bench_stream WHERE g BETWEEN 1 AND 1000000``:
  the WHERE keeps it out of dbgate's default ``hold-dump`` rule (an unrestricted
  whole-table read is held for approval), so the policy inspector runs and allows
  it, as it would for an agent's large but bounded read.
* Timed with ``conn.fetch``: one Bind/Execute with no row limit, so the server
  pushes every DataRow back-to-back and the relay is the bottleneck, not round
  trips. (A server-side cursor fetched in batches of 10,000 rows — Execute with a
  row limit, PortalSuspended, one round trip per batch — is the variant
  ``--stream-method cursor`` runs: it exercises the proxy's portal handling.)
* The time covers only the query (connection and SCRAM handshake excluded) and
  the rows are counted, so a proxy that dropped rows could not look fast.
* Targets are interleaved (round-robin, starting position rotated each run) and
  the median of N runs is reported, because on a 2-core machine one noisy run is
  common and the client, the proxy and the server share the cores.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import asdict, dataclass

import asyncpg
import uvloop

from bench.procs import group_cpu_seconds
from bench.targets import Target

TABLE = "bench_stream"
#: The same rows with an e-mail column instead of the md5 text: dbgate's PII catalog
#: knows ``email`` by name, so every row's value is replaced by a token on the way out
#: (method "pii"; the issue's target is >= 0.5x direct, "fetch" stays >= 0.9x).
PII_TABLE = "bench_stream_pii"
CURSOR_BATCH = 10_000


@dataclass
class StreamResult:
    """One timed streaming run against one target."""

    target: str
    method: str
    run: int
    rows: int | None = None
    seconds: float | None = None
    rows_per_s: float | None = None
    mb_per_s: float | None = None
    error: str | None = None
    proxy_cpu_s: float | None = None  # user+system CPU of the proxy during the run

    @property
    def proxy_cpu_ns_per_row(self) -> float | None:
        if self.proxy_cpu_s is None or not self.rows:
            return None
        return self.proxy_cpu_s / self.rows * 1e9

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "proxy_cpu_ns_per_row": self.proxy_cpu_ns_per_row}


async def _prepare(target: Target, rows: int) -> None:
    conn = await asyncpg.connect(**target.asyncpg_kwargs())  # type: ignore[arg-type]
    try:
        have = await conn.fetchval(
            f"SELECT to_regclass('{TABLE}') IS NOT NULL AND to_regclass('{PII_TABLE}') IS NOT NULL"
        )
        if have and await conn.fetchval(f"SELECT count(*) FROM {TABLE}") == rows:
            return
        await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        await conn.execute(
            f"CREATE TABLE {TABLE} AS SELECT g, md5(g::text) AS m FROM generate_series(1, {rows}) g"
        )
        await conn.execute(f"VACUUM ANALYZE {TABLE}")
        await conn.execute(f"DROP TABLE IF EXISTS {PII_TABLE}")
        await conn.execute(
            f"CREATE TABLE {PII_TABLE} AS SELECT g, 'user' || g || '@example.com' AS email"
            f" FROM generate_series(1, {rows}) g"
        )
        await conn.execute(f"VACUUM ANALYZE {PII_TABLE}")
    finally:
        await conn.close()


def prepare(target: Target, rows: int) -> None:
    """Create the source table once, directly (not through a proxy)."""
    uvloop.run(_prepare(target, rows))


async def _stream_once(
    target: Target, method: str, expect_rows: int
) -> tuple[int, float, int, float | None]:
    """(rows received, seconds, approximate payload bytes, the proxy's CPU seconds) for
    one run; the CPU is read around the timed query alone (not the connection's
    set-up, its authentication or the warm-up query, which a proxy pays per
    connection, not per row)."""
    conn = await asyncpg.connect(**target.asyncpg_kwargs())  # type: ignore[arg-type]
    try:
        # A WHERE that selects every row: dbgate's default rules hold an unrestricted
        # whole-table read as a possible dump (rule hold-dump), and this benchmark
        # measures the relay of an allowed statement, not the approval path.
        query = f"SELECT g, m FROM {TABLE} WHERE g BETWEEN 1 AND {expect_rows}"
        if method == "pii":
            query = f"SELECT g, email FROM {PII_TABLE} WHERE g BETWEEN 1 AND {expect_rows}"
        # Warm the statement cache so Parse/Describe is not part of the timing.
        await conn.fetch(query + " LIMIT 1")
        gc.collect()
        gc.disable()  # a collection of a million fresh Records would be noise
        cpu0 = group_cpu_seconds(target.pgid) if target.pgid else None
        try:
            if method in ("fetch", "pii"):
                t0 = time.perf_counter()
                records = await conn.fetch(query)
                elapsed = time.perf_counter() - t0
                n = len(records)
                del records
            else:
                n = 0
                t0 = time.perf_counter()
                async with conn.transaction():
                    cursor = await conn.cursor(query)
                    while batch := await cursor.fetch(CURSOR_BATCH):
                        n += len(batch)
                elapsed = time.perf_counter() - t0
            cpu = None
            if cpu0 is not None:
                cpu1 = group_cpu_seconds(target.pgid)  # type: ignore[arg-type]
                cpu = (cpu1[0] - cpu0[0]) + (cpu1[1] - cpu0[1])
        finally:
            gc.enable()
    finally:
        await conn.close()
    if n != expect_rows:
        raise RuntimeError(f"expected {expect_rows} rows, received {n}")
    # DataRow on the wire: 'D' + len(4) + ncols(2) + (4 + 4) + (4 + 32) = 51 bytes.
    return n, elapsed, n * 51, cpu


def _run_one(target: Target, method: str, run_no: int, rows: int) -> StreamResult:
    result = StreamResult(target.name, method, run_no)
    try:
        # uvloop on the client too: the faster the client, the more the relay shows.
        n, secs, nbytes, cpu = uvloop.run(_stream_once(target, method, rows))
    except (
        TimeoutError,
        OSError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        RuntimeError,
    ) as e:
        result.error = f"{type(e).__name__}: {e}"
        return result
    result.proxy_cpu_s = cpu
    result.rows, result.seconds = n, secs
    result.rows_per_s = n / secs
    result.mb_per_s = nbytes / secs / 1e6
    return result


def run_interleaved(
    targets: list[Target], method: str, runs: int, rows: int, progress: bool = True
) -> list[StreamResult]:
    """``runs`` rounds over all available targets, rotating who goes first."""
    results: list[StreamResult] = []
    live = [t for t in targets if t.available]
    # One untimed run per target first: the client process's first million Records
    # pay for growing the heap (page faults), which would penalise whoever goes first.
    for target in live:
        _run_one(target, method, -1, rows)
    for run_no in range(runs):
        k = run_no % len(live) if live else 0
        for target in live[k:] + live[:k]:
            r = _run_one(target, method, run_no, rows)
            results.append(r)
            if progress:
                shown = f"{r.rows_per_s:>12,.0f} rows/s" if r.rows_per_s else f"ERROR {r.error}"
                print(
                    f"  stream {method:<6} run {run_no + 1}/{runs} {target.name:<10} {shown}",
                    flush=True,
                )
    return results


def median_rows_per_s(results: list[StreamResult], target: str, method: str) -> float | None:
    values = [
        r.rows_per_s for r in results if r.target == target and r.method == method and r.rows_per_s
    ]
    return statistics.median(values) if values else None
