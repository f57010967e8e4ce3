"""Audit benchmarks: how fast records reach the state database, and how fast
``audit verify`` proves them.

Targets (issue 12): sustained ≥ 20,000 records/s written, ≥ 100,000 records/s
verified, on the benchmark machine.

* **write**: one :class:`~dbgate.audit.writer.AuditWriter` with the default
  configuration, fed statement events as fast as its backpressure allows
  (``admit()`` before each, as the gate does), until ``flush()`` returns; the
  rate is records over that wall time. Events look like what the relay records:
  extended-protocol statements with raw parameters (hashed by the writer),
  simple-query statements with masked literals, categories, tables, tags.
* **paced**: the same events at a steady rate (``--paced-rate``, default 5,000/s,
  about what one dbgate process serves), as the relay hands them over: what the
  writer costs per record when records trickle in rather than arrive in a flood,
  and how many commits it makes for them (each one a WAL flush on the state
  database). The pacing loop's own cost (a timer every millisecond, about as much
  as the writer itself on this machine) is measured with a writer that does
  nothing and subtracted (``paced_loop_cpu_us_per_record``).
* **verify**: ``verify_database`` over everything written (median of three).

Wall-clock rates depend on everything else the two cores run; the CPU figures
(``writer_cpu_us_per_record``: the writer's own cost, event building subtracted;
``verify_client_cpu_us_per_record``) say what the code costs regardless.

PostgreSQL runs with ``fsync``, ``synchronous_commit`` and ``full_page_writes`` on,
as a state database should (every batch is a durable commit), and 512 MB of shared
buffers, as in the proxy benchmarks.

Run: ``python -m bench.bench_audit [--records N]`` (prints JSON); ``make bench``
calls :func:`run` after the proxy benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

WORK_ROOT = Path(__file__).resolve().parent / ".work"
TARGETS = {"write_records_per_s": 20_000.0, "verify_records_per_s": 100_000.0}
# A state database's settings: every commit durable; the trail fits in shared buffers.
SERVER = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "shared_buffers": "512MB",
}

_EXTENDED = (
    "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, "
    "CURRENT_TIMESTAMP)",
)
_SIMPLE = (
    "SELECT o.id, o.total, o.status FROM orders o WHERE o.customer_id = ? AND o.status = ? "
    "ORDER BY o.created_at DESC LIMIT 20",
    "SELECT count(*) FROM payments WHERE amount > ?",
)


def _events(n: int) -> Any:
    from dbgate.audit.events import StatementEvent

    for i in range(n):
        if i % 4:
            sql = _EXTENDED[i % 3]
            params: tuple[bytes, ...] = tuple(str(i * k).encode() for k in range(1, 3 + (i % 3)))
            tag = ("SELECT 1", "UPDATE 1", "INSERT 0 1")[i % 3]
        else:
            sql = _SIMPLE[i % 2]
            params = ()
            tag = "SELECT 20"
        yield StatementEvent(
            "completed",
            sql,
            identity="bench-agent",
            session_id=i % 64,
            application_name="pgbench",
            client_addr="127.0.0.1:50000",
            database="bench",
            params=params,
            fingerprint="a1b2c3d4e5f60718",
            categories=("read",) if i % 3 == 0 else ("write",),
            tables=("public.pgbench_accounts",),
            outcome=tag,
            rows=1,
            duration_us=150 + i % 500,
        )


def _producer_cpu_us(records: int) -> float:
    """CPU per event of building the events alone (the relay's share, not the writer's)."""
    sink = []
    cpu0 = time.process_time()
    for event in _events(records):
        sink.append(event)
        if len(sink) > 1000:
            sink.clear()
    return (time.process_time() - cpu0) / records * 1e6


async def _write(dsn: str, records: int) -> dict[str, float]:
    from dbgate.audit.writer import AuditWriter
    from dbgate.config import AuditConfig

    writer = AuditWriter(dsn, AuditConfig(param_key="bench"), replica="bench")
    await writer.start()
    waits = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    for event in _events(records):
        admission = writer.admit()
        if admission is not None:
            waits += 1
            await admission
        writer.record(event)
    await writer.flush()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await writer.stop()
    commits = await _commits(dsn, writer.chain)
    cpu_us = cpu / records * 1e6
    writer_us = cpu_us - _producer_cpu_us(min(records, 50_000))
    return {
        "write_records_per_s": round(records / elapsed),
        "write_seconds": round(elapsed, 2),
        "write_cpu_us_per_record": round(cpu_us, 1),
        # what the writer alone costs dbgate: records per second of one busy core
        "writer_cpu_us_per_record": round(writer_us, 1),
        "writer_records_per_cpu_s": round(1e6 / writer_us) if writer_us > 0 else 0,
        "write_backpressure_waits": waits,
        # each commit is a transaction, a COPY and a WAL flush on the state database
        "write_commits": commits,
        "write_records_per_commit": round(records / commits) if commits else 0,
    }


async def _commits(dsn: str, chain: str) -> int:
    """Transactions that wrote ``chain`` (a row's xmin is the one that inserted it)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(DISTINCT xmin::text) FROM dbgate.audit_events WHERE chain = $1",
                chain,
            )
        )
    finally:
        await conn.close()


class _NoWriter:
    """What the paced loop calls, doing nothing: the loop's own cost."""

    def admit(self) -> None:
        return None

    def record(self, event: object) -> None:
        pass

    def stats(self) -> dict[str, int]:
        return {"queued": 0}


async def _pace(writer: Any, rate: int, total: int) -> tuple[float, float, int, int]:
    """Hand ``total`` events to ``writer`` at ``rate`` per second, every millisecond;
    (seconds, CPU seconds, backpressure waits, peak queue)."""
    events = _events(total)
    sent = waits = peak = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    while sent < total:
        due = min(total, int((time.perf_counter() - t0) * rate) + 1)
        while sent < due:
            admission = writer.admit()
            if admission is not None:
                waits += 1
                await admission
            writer.record(next(events))
            sent += 1
        peak = max(peak, writer.stats()["queued"])
        await asyncio.sleep(0.001)
    if not isinstance(writer, _NoWriter):
        await writer.flush()
    return time.perf_counter() - t0, time.process_time() - cpu0, waits, peak


async def _paced(dsn: str, rate: int, seconds: float) -> dict[str, float]:
    """Records at ``rate`` per second for ``seconds``, handed over every millisecond."""
    from dbgate.audit.writer import AuditWriter
    from dbgate.config import AuditConfig

    total = int(rate * seconds)
    writer = AuditWriter(dsn, AuditConfig(param_key="bench"), replica="bench-paced")
    await writer.start()
    await writer.flush()
    elapsed, cpu, waits, peak = await _pace(writer, rate, total)
    await writer.stop()
    commits = await _commits(dsn, writer.chain)
    _, loop_cpu, _, _ = await _pace(_NoWriter(), rate, total)  # events built, timer ticks
    writer_us = (cpu - loop_cpu) / total * 1e6
    return {
        "paced_rate": rate,
        "paced_seconds": round(elapsed, 2),
        "paced_writer_cpu_us_per_record": round(writer_us, 1),
        "paced_loop_cpu_us_per_record": round(loop_cpu / total * 1e6, 1),
        "paced_commits_per_s": round(commits / elapsed, 1),
        "paced_records_per_commit": round(total / commits) if commits else 0,
        "paced_peak_queue": peak,
        "paced_backpressure_waits": waits,
    }


async def _verify(dsn: str, rounds: int = 3) -> dict[str, float]:
    from dbgate.audit.verify import verify_database

    rates, cpus, records = [], [], 0
    for _ in range(rounds):
        cpu0 = time.process_time()
        report = await verify_database(dsn)
        cpus.append(time.process_time() - cpu0)
        if not report.ok:
            raise RuntimeError(f"the benchmark's own trail does not verify:\n{report.text()}")
        rates.append(report.rate)
        records = report.records
    return {
        "verify_records_per_s": round(statistics.median(rates)),
        "verify_client_cpu_us_per_record": round(statistics.median(cpus) / records * 1e6, 1),
        "verify_records": records,
    }


async def _measure(dsn: str, records: int, paced_rate: int = 5_000) -> dict[str, Any]:
    import asyncpg

    from dbgate.state import apply_migrations

    conn = await asyncpg.connect(dsn)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    result: dict[str, Any] = {"records": records}
    result.update(await _write(dsn, records))
    if paced_rate > 0:
        result.update(await _paced(dsn, paced_rate, 5.0))
    result.update(await _verify(dsn))
    return result


def run(records: int = 200_000, keep: bool = False, paced_rate: int = 5_000) -> dict[str, Any]:
    """Start a private PostgreSQL, measure, stop it; returns the numbers."""
    from dbgate.embedded import EmbeddedPostgres

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = WORK_ROOT / f"audit-{stamp}"
    pg = EmbeddedPostgres(work / "pg", settings=SERVER)
    pg.start()
    try:
        pg.psql("CREATE DATABASE audit_bench")
        result = asyncio.run(_measure(pg.dsn("audit_bench"), records, paced_rate))
    finally:
        pg.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    result["postgres"] = "fsync, synchronous_commit, full_page_writes on; shared_buffers 512MB"
    result["load_average_1m"] = round(os.getloadavg()[0], 2)
    for key, target in TARGETS.items():
        result[f"{key}_target"] = target
    result["within_targets"] = all(result[k] >= v for k, v in TARGETS.items())
    return result


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_audit", description=__doc__)
    p.add_argument("--records", type=int, default=200_000, help="records to write (default 200000)")
    p.add_argument("--keep", action="store_true", help="keep the server's data directory")
    p.add_argument(
        "--paced-rate",
        type=int,
        default=5_000,
        help="records/s of the paced run (default 5000; 0 skips it)",
    )
    args = p.parse_args()
    print(json.dumps(run(args.records, args.keep, args.paced_rate), indent=2))


if __name__ == "__main__":
    main()
