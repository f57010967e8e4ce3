"""What one audit record costs the state database's backend, by storage layout.

The audit trail stores one row per record (``dbgate.audit_events``). Issue 12's
audit on/off target counts every µs of CPU on the machine, and the state database's
backend takes 3.8 to 5.5 µs per record under pgbench. This measures, on a private
PostgreSQL, the backend CPU (``/proc/<pid>/stat``) and the WAL bytes of one COPY
of the same records in several layouts, so a change of layout is judged by numbers:

* ``row``: today's table, its three indexes (``(chain, seq)``, BRIN on ``at``, the
  partial ``approval_id`` index);
* ``row_no_index``: the same rows without indexes (what the indexes cost);
* ``blocks_N``: N records per row, every column an array of N values (one heap row
  and one index entry per block), with the arrays' default storage (compressed and
  moved out of line once a row passes 2 KB) and with ``STORAGE EXTERNAL`` (never
  compressed);
* ``narrow``: only what varies per record (time, session, parameters, outcome, rows,
  duration, hash) plus a reference to the fields its statement's other records share,
  which a normalised layout would store once.

The records are written first by a real :class:`~dbgate.audit.writer.AuditWriter`
(``bench.bench_audit``'s event mix), then read back and copied in each layout, each
three times (the median is reported).

Run: ``python -m bench.bench_audit_storage [--records N]`` (prints JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from bench.bench_audit import SERVER, WORK_ROOT, _write

_TICK = os.sysconf("SC_CLK_TCK")
_NARROW = (
    "seq, logged_at, at, session_id, 7::int AS shape, params, outcome, rows, duration_us, hash"
)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


async def _copy_cost(conn: Any, table: str, data: bytes, records: int) -> tuple[float, float]:
    """Backend µs and WAL bytes per record of one binary COPY of ``data``."""
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    lsn0 = await conn.fetchval("SELECT pg_current_wal_lsn()")
    cpu0 = _cpu_s(pid)
    async with conn.transaction():
        await conn.copy_to_table(table, source=io.BytesIO(data), format="binary")
    cpu = _cpu_s(pid) - cpu0
    wal = await conn.fetchval("SELECT pg_current_wal_lsn() - $1::pg_lsn", lsn0)
    return cpu / records * 1e6, float(wal) / records


async def _layout(conn: Any, records: int, create: str, query: str) -> dict[str, float]:
    await conn.execute("DROP TABLE IF EXISTS bench_layout")
    await conn.execute(create)
    out = io.BytesIO()
    await conn.copy_from_query(query, output=out, format="binary")
    data = out.getvalue()
    costs = []
    for _ in range(3):
        await conn.execute("TRUNCATE bench_layout")
        costs.append(await _copy_cost(conn, "bench_layout", data, records))
    return {
        "backend_us_per_record": round(statistics.median(c[0] for c in costs), 2),
        "wal_bytes_per_record": round(statistics.median(c[1] for c in costs), 1),
    }


async def _measure(dsn: str, records: int) -> dict[str, Any]:
    import asyncpg

    from dbgate.state import apply_migrations

    conn = await asyncpg.connect(dsn)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    await _write(dsn, records)
    conn = await asyncpg.connect(dsn)
    try:
        columns = [
            r["attname"]
            for r in await conn.fetch(
                "SELECT attname FROM pg_attribute WHERE attrelid = 'dbgate.audit_events'::regclass"
                " AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
            )
        ]
        like = "CREATE TABLE bench_layout (LIKE dbgate.audit_events)"
        every = "SELECT * FROM dbgate.audit_events ORDER BY chain, seq"
        result: dict[str, Any] = {"records": records}
        result["row"] = await _layout(
            conn,
            records,
            like + "; CREATE INDEX ON bench_layout (chain, seq);"
            " CREATE INDEX ON bench_layout USING brin (at);"
            " CREATE INDEX ON bench_layout (approval_id) WHERE approval_id IS NOT NULL",
            every,
        )
        result["row_no_index"] = await _layout(conn, records, like, every)
        arrays = ", ".join(f"array_agg({c} ORDER BY seq) AS {c}" for c in columns if c != "chain")
        for size in (16, 64):
            query = (
                f"SELECT chain, (seq - 1) / {size} AS block, {arrays} FROM dbgate.audit_events"
                f" GROUP BY chain, (seq - 1) / {size}"
            )
            create = (
                f"CREATE TABLE bench_layout AS {query} LIMIT 0;"
                " CREATE INDEX ON bench_layout (chain, block)"
            )
            result[f"blocks_{size}"] = await _layout(conn, records, create, query)
            external = "".join(
                f"; ALTER TABLE bench_layout ALTER {c} SET STORAGE EXTERNAL"
                for c in columns
                if c != "chain"
            )
            result[f"blocks_{size}_external"] = await _layout(
                conn, records, create + external, query
            )
        narrow = f"SELECT {_NARROW} FROM dbgate.audit_events"
        result["narrow"] = await _layout(
            conn,
            records,
            f"CREATE TABLE bench_layout AS {narrow} LIMIT 0; CREATE INDEX ON bench_layout (seq)",
            narrow,
        )
        return result
    finally:
        await conn.close()


def run(records: int = 100_000, keep: bool = False) -> dict[str, Any]:
    """Start a private PostgreSQL, measure, stop it; returns the numbers."""
    from dbgate.embedded import EmbeddedPostgres

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = WORK_ROOT / f"audit-storage-{stamp}"
    pg = EmbeddedPostgres(work / "pg", settings=SERVER)
    pg.start()
    started = time.perf_counter()
    try:
        pg.psql("CREATE DATABASE audit_storage")
        result = asyncio.run(_measure(pg.dsn("audit_storage"), records))
    finally:
        pg.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["load_average_1m"] = round(os.getloadavg()[0], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--keep", action="store_true", help="keep the server's directory")
    args = parser.parse_args()
    print(json.dumps(run(args.records, args.keep), indent=2))


if __name__ == "__main__":
    main()
