"""Decision latency: from the approve API call to the waiting ``hold()`` returning.

Two :class:`~dbgate.approvals.service.PgApprovalService` instances stand for two
replicas (each with its own pool and its own LISTEN connection) on one state
database. The statement is held on replica A; the decision is an HTTP
``POST /api/approvals/{id}/approve`` to replica B's API (a real aiohttp server on
loopback). The clock starts just before the POST is sent and stops when A's
``hold()`` returns APPROVED, so it covers the HTTP call, token check, the locked
decision, the commit, the NOTIFY, A's wake-up and A's final read.

Both replicas share one process and one uvloop event loop (the numbers therefore
include their competition for it, like a busy replica would). Holds are decided
one at a time: this measures latency, not throughput.

Targets (issue: approvals on the wire): p50 <= 50 ms, p99 <= 200 ms.

    .venv/bin/python -m bench.bench_approvals                 # embedded PostgreSQL
    .venv/bin/python -m bench.bench_approvals --dsn URL -n 500
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

TARGET_P50_MS = 50.0
TARGET_P99_MS = 200.0


def _request(i: int) -> Any:
    from dbgate.approvals.model import ApprovalRequest, Requester

    return ApprovalRequest(
        requester=Requester(identity="bench-agent", application_name="bench", session_id=i),
        sql=f"DELETE FROM orders WHERE id = {i}",
        fingerprint="bench-delete",
        categories=("destructive",),
        rule="bench",
        wait_seconds=60.0,
    )


async def measure_decision_latency(
    state_dsn: str, *, n: int = 200, warmup: int = 10
) -> dict[str, Any]:
    """Hold on one replica, approve through the other's API, ``n`` times; the stats."""
    import aiohttp

    from dbgate.approvals.model import HoldStatus
    from dbgate.approvals.service import PgApprovalService
    from dbgate.web import WebServer, build_web_app

    holder = PgApprovalService(state_dsn, public_url="http://bench", replica="bench-holder")
    decider = PgApprovalService(state_dsn, public_url="http://bench", replica="bench-decider")
    await holder.start()
    await decider.start()
    server = WebServer(build_web_app(decider), "127.0.0.1", 0)
    await server.start()
    samples: list[float] = []
    try:
        name = f"bench-{int(time.time() * 1000)}"
        await decider.accounts.add(name, ["bench"], None)
        _, token = await decider.accounts.issue_token(name)
        await asyncio.wait_for(holder.waker.listening.wait(), 30)
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(base_url=server.url, headers=headers) as http:
            for i in range(warmup + n):
                recorded = asyncio.Event()
                ids: list[int] = []

                def notify(
                    message: str, _detail: str, ids: list[int] = ids, ev: asyncio.Event = recorded
                ) -> None:
                    ids.append(int(message.split("(request ", 1)[1].split(")", 1)[0]))
                    ev.set()

                done_at: list[float] = []

                async def hold(
                    i: int = i, notify: Any = notify, done_at: list[float] = done_at
                ) -> Any:
                    outcome = await holder.hold(_request(i), notify)
                    done_at.append(time.perf_counter())
                    return outcome

                task = asyncio.create_task(hold())
                await recorded.wait()
                started = time.perf_counter()
                async with http.post(f"/api/approvals/{ids[0]}/approve", json={}) as r:
                    if r.status != 200:
                        raise RuntimeError(f"approve answered {r.status}: {await r.text()}")
                outcome = await task
                if outcome.status is not HoldStatus.APPROVED:
                    raise RuntimeError(f"hold ended {outcome.status}: {outcome.reason}")
                if i >= warmup:
                    samples.append((done_at[0] - started) * 1000)
    finally:
        await server.stop()
        await decider.stop()
        await holder.stop()
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


def run(state_dsn: str | None = None, *, n: int = 200) -> dict[str, Any]:
    """Measure on ``state_dsn``, or on a scratch embedded PostgreSQL when None."""
    import uvloop

    if state_dsn is not None:
        return uvloop.run(measure_decision_latency(state_dsn, n=n))
    from dbgate.embedded import EmbeddedPostgres

    work = Path(tempfile.mkdtemp(prefix="dbgate-bench-approvals-"))
    work.chmod(0o711)
    try:
        with EmbeddedPostgres(work / "pg") as pg:
            return uvloop.run(measure_decision_latency(pg.dsn(), n=n))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.bench_approvals", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--dsn", help="state database URL (default: a scratch embedded PostgreSQL)")
    p.add_argument("-n", type=int, default=200, help="decisions to time (default 200)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    result = run(args.dsn, n=args.n)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"approve API call -> held statement released, two replicas, n={result['n']}: "
            f"p50 {result['p50_ms']} ms (target <= {TARGET_P50_MS:g}), "
            f"p90 {result['p90_ms']} ms, p99 {result['p99_ms']} ms (target <= {TARGET_P99_MS:g}), "
            f"max {result['max_ms']} ms -> {'OK' if result['ok'] else 'MISSED'}"
        )
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
