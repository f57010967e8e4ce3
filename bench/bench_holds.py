"""Held statement, end to end: from the approve API call to the result at the client.

Two replicas, as deployed: replica A and replica B are two ``dbgate serve``
processes sharing one state database. A real client (asyncpg) on replica A sends
``UPDATE ... SET note = $1`` (no WHERE: the default rules hold it); once its hold
notice has arrived the clock starts, an approver's ``POST
/api/approvals/{id}/approve`` goes to replica **B**'s API, and the clock stops when
the client's ``execute`` returns its command tag. The time covers B's HTTP handling
and token check, the locked decision and its commit, the NOTIFY, A's wake-up and
final read, the statement running on PostgreSQL and its result travelling back
through A to the client. Holds are decided one at a time: latency, not throughput.

Targets (issue: approvals on the wire): p50 <= 50 ms, p99 <= 200 ms.

    .venv/bin/python -m bench.bench_holds              # a scratch embedded PostgreSQL
    .venv/bin/python -m bench.bench_holds -n 500 --json

``make bench`` runs it against the benchmark's own server (``bench/run.py``);
``bench/bench_approvals.py`` measures the service alone (no proxy, no client).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from bench.dbgate_target import Approvals, Dbgate, create_database
from bench.procs import free_port
from bench.targets import Target

TARGET_P50_MS = 50.0
TARGET_P99_MS = 200.0
DATA_DB = "bench_holds"
STATE_DB = "bench_holds_state"
TABLE = "bench_held"
APPROVER = "bench-approver"
APPROVER_GROUP = "dba"  # the default rules hold destructive statements for group dba
IDENTITY_PASSWORD = "bench-holds-identity"


async def _prepare(server: Target) -> str:
    """The data database with its table, and a fresh state database; the state DSN."""
    import asyncpg

    data_dsn = await create_database(server, DATA_DB)
    conn = await asyncpg.connect(data_dsn)
    try:
        await conn.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, note text)")
        await conn.execute(f"INSERT INTO {TABLE} VALUES (1, 'start')")
    finally:
        await conn.close()
    return await create_database(server, STATE_DB)


def start_replicas(server: Target, state_dsn: str, work: Path) -> tuple[Dbgate, Dbgate]:
    """Replicas A and B (``dbgate serve``, default rules, one state database)."""
    gates: list[Dbgate] = []
    try:
        for name in ("replica-a", "replica-b"):
            gate = Dbgate(
                work / name,
                server.host,
                server.port,
                server.user,
                server.password,
                identity_password=IDENTITY_PASSWORD,
                dbname=DATA_DB,
                log_level="warning",
                name=name,
                approvals=Approvals(state_dsn, free_port(), name),
            )
            gates.append(gate)
            gate.wait_ready()  # one at a time: the first one migrates the state database
    except BaseException:
        for gate in gates:
            gate.stop()
        raise
    return gates[0], gates[1]


async def _approver_token(state_dsn: str) -> str:
    from dbgate.approvals.accounts import AccountStore
    from dbgate.approvals.db import StateDB, create_pool

    pool = await create_pool(state_dsn, max_size=2)
    try:
        accounts = AccountStore(StateDB(pool))
        await accounts.add(APPROVER, [APPROVER_GROUP], None)
        _, token = await accounts.issue_token(APPROVER, label="bench")
        return str(token)
    finally:
        await pool.close()


async def measure(
    holder: Dbgate, decider: Dbgate, state_dsn: str, *, n: int, warmup: int
) -> list[float]:
    """Milliseconds from the approve call (to ``decider``) to the result at a client
    of ``holder``, ``n`` times after ``warmup`` untimed rounds."""
    import aiohttp
    import asyncpg

    assert decider.approvals is not None
    token = await _approver_token(state_dsn)
    notices: asyncio.Queue[str] = asyncio.Queue()
    conn = await asyncpg.connect(**holder.target.asyncpg_kwargs())  # type: ignore[arg-type]
    conn.add_log_listener(lambda _c, msg: notices.put_nowait(msg.message))
    samples: list[float] = []
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with aiohttp.ClientSession(
            base_url=decider.approvals.web_url, headers=headers
        ) as http:
            for i in range(warmup + n):
                held = asyncio.create_task(
                    conn.execute(f"UPDATE {TABLE} SET note = $1", f"note {i}")
                )
                message = await asyncio.wait_for(notices.get(), 30)
                rid = int(message.split("(request ", 1)[1].split(")", 1)[0])
                started = time.perf_counter()
                async with http.post(f"/api/approvals/{rid}/approve", json={}) as r:
                    if r.status != 200:
                        raise RuntimeError(f"approve answered {r.status}: {await r.text()}")
                tag = await asyncio.wait_for(held, 30)
                elapsed = (time.perf_counter() - started) * 1000
                if tag != "UPDATE 1":
                    raise RuntimeError(f"the approved statement answered {tag!r}")
                if i >= warmup:
                    samples.append(elapsed)
    finally:
        await conn.close()
    return samples


def summarize(samples: list[float]) -> dict[str, Any]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    p50, p99 = statistics.median(samples), cuts[98]
    return {
        "n": len(samples),
        "p50_ms": round(p50, 2),
        "p90_ms": round(cuts[89], 2),
        "p99_ms": round(p99, 2),
        "max_ms": round(max(samples), 2),
        "target_p50_ms": TARGET_P50_MS,
        "target_p99_ms": TARGET_P99_MS,
        "ok": p50 <= TARGET_P50_MS and p99 <= TARGET_P99_MS,
    }


def run_end_to_end(server: Target, work: Path, *, n: int = 200, warmup: int = 10) -> dict[str, Any]:
    """Start two replicas on ``server`` (a superuser target), measure, stop them."""
    state_dsn = uvloop.run(_prepare(server))
    a, b = start_replicas(server, state_dsn, work)
    try:
        samples = uvloop.run(measure(a, b, state_dsn, n=n, warmup=warmup))
    finally:
        b.stop()
        a.stop()
    return summarize(samples)


def format_result(result: dict[str, Any]) -> str:
    return (
        "held statement, approve API call on replica B -> result at the client of replica A, "
        f"n={result['n']}: p50 {result['p50_ms']} ms (target <= {TARGET_P50_MS:g}), "
        f"p90 {result['p90_ms']} ms, p99 {result['p99_ms']} ms (target <= {TARGET_P99_MS:g}), "
        f"max {result['max_ms']} ms -> {'OK' if result['ok'] else 'MISSED'}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.bench_holds", description=(__doc__ or "").split("\n\n")[0]
    )
    p.add_argument("-n", type=int, default=200, help="decisions to time (default 200)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    from dbgate.embedded import EmbeddedPostgres

    work = Path(tempfile.mkdtemp(prefix="dbgate-bench-holds-"))
    work.chmod(0o711)
    try:
        with EmbeddedPostgres(work / "pg") as pg:
            server = Target("direct", pg.host, pg.port, pg.user, pg.password, "postgres")
            result = run_end_to_end(server, work, n=args.n)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result) if args.json else format_result(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
