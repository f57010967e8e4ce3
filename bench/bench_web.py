"""The approvers' page: how fast the queue renders, how fast a page decision lands.

1. **Queue render**: 1,000 pending requests in the state database, ``GET /approvals``
   by a signed-in approver, timed by the server itself (the ``Server-Timing`` header:
   from the handler's start to the rendered page, including the database read).
   Target: under 200 ms (median of the runs; the p90 is printed too).
2. **Decision from the page**: a statement held on one replica, approved with the
   page's form on another (HTTP POST with the session cookie and CSRF token), timed
   from just before the POST until the hold returns. The approvals target applies:
   p50 <= 50 ms, p99 <= 200 ms.

    .venv/bin/python -m bench.bench_web                # scratch embedded PostgreSQL
    .venv/bin/python -m bench.bench_web --dsn URL --pending 1000 --runs 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_QUEUE_MS = 200.0
TARGET_P50_MS = 50.0
TARGET_P99_MS = 200.0
PASSWORD = "bench-password"


async def _fill(svc: Any, pending: int) -> None:
    """``pending`` open requests, written in one statement (realistic field sizes)."""
    async with svc.store.db.connection() as conn:
        await conn.execute(
            """
            INSERT INTO dbgate.approval_requests (mode, deadline, identity, replica, purpose,
                model, statement, match_hash, fingerprint, categories, tables, columns,
                reasons, rule, estimated_rows, wait_seconds)
            SELECT 'retry', now() + interval '1 day', 'agent-' || (i % 17), 'bench-fill',
                   'nightly clean-up of stale orders, batch ' || i, 'bench-model',
                   'DELETE FROM orders WHERE created_at < ''<date>'' AND id = ' || i,
                   sha256(i::text::bytea), 'fp-' || (i % 50), ARRAY['destructive', 'write'],
                   ARRAY['orders'], ARRAY['orders.id', 'orders.created_at'],
                   '[{"code": "delete", "text": "DELETE removes rows"}]', 'bench',
                   i * 37, 0
            FROM generate_series(1, $1) i
            """,
            pending,
        )


async def _sign_in(http: Any) -> str:
    page = await (await http.get("/")).text()
    token = re.search(r'name="login_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    async with http.post(
        "/login", data={"name": "bench", "password": PASSWORD, "login_token": token}
    ) as r:
        text = await r.text()
        if r.status != 200:
            raise RuntimeError(f"sign-in answered {r.status}")
    return re.search(r'name="csrf" value="([^"]+)"', text).group(1)  # type: ignore[union-attr]


def _stats(samples: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "p50_ms": round(statistics.median(samples), 2),
        "p90_ms": round(cuts[89], 2),
        "p99_ms": round(cuts[98], 2),
        "max_ms": round(max(samples), 2),
    }


async def measure(
    state_dsn: str, *, pending: int = 1000, runs: int = 30, decisions: int = 50
) -> dict[str, Any]:
    import aiohttp

    from dbgate.approvals.model import ApprovalRequest, HoldStatus, Requester
    from dbgate.approvals.passwords import hash_password
    from dbgate.approvals.service import PgApprovalService
    from dbgate.web import WebServer, build_web_app

    holder = PgApprovalService(state_dsn, public_url="http://bench", replica="bench-holder")
    web_svc = PgApprovalService(state_dsn, public_url="http://bench", replica="bench-web")
    await holder.start()
    await web_svc.start()
    server = WebServer(build_web_app(web_svc), "127.0.0.1", 0)
    await server.start()
    try:
        async with web_svc.store.db.connection() as conn:
            await conn.execute(
                "INSERT INTO dbgate.approvers (name, groups, password_hash) VALUES "
                "('bench', '{bench}', $1) ON CONFLICT (name) DO NOTHING",
                hash_password(PASSWORD, log_n=12),
            )
            await conn.execute(
                "UPDATE dbgate.approval_requests SET status = 'expired', finished_at = now() "
                "WHERE status = 'pending'"
            )
        await _fill(web_svc, pending)
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(base_url=server.url, cookie_jar=jar) as http:
            csrf = await _sign_in(http)
            queue: list[float] = []
            size = 0
            for i in range(runs + 3):
                async with http.get("/approvals") as r:
                    body = await r.text()
                    timing = r.headers["Server-Timing"]
                if i >= 3:  # warm-up: template compilation, caches, pool
                    queue.append(float(timing.split("dur=")[1]))
                    size = len(body)
            shown = body.count("<tr data-id=")
            if shown != pending:
                raise RuntimeError(f"the queue shows {shown} rows, expected {pending}")
            await asyncio.wait_for(holder.waker.listening.wait(), 30)
            latency: list[float] = []
            for i in range(decisions + 5):
                recorded = asyncio.Event()
                ids: list[int] = []

                def notify(
                    message: str, _d: str, ids: list[int] = ids, ev: asyncio.Event = recorded
                ) -> None:
                    ids.append(int(message.split("(request ", 1)[1].split(")", 1)[0]))
                    ev.set()

                req = ApprovalRequest(
                    requester=Requester(identity="bench-agent", session_id=i),
                    sql=f"DELETE FROM orders WHERE id = {i}",
                    fingerprint="bench-page",
                    wait_seconds=60.0,
                )
                done_at: list[float] = []

                async def hold(
                    req: Any = req, notify: Any = notify, done_at: list[float] = done_at
                ) -> Any:
                    outcome = await holder.hold(req, notify)
                    done_at.append(time.perf_counter())
                    return outcome

                task = asyncio.create_task(hold())
                await recorded.wait()
                started = time.perf_counter()
                async with http.post(
                    f"/approvals/{ids[0]}/approve", data={"csrf": csrf}, allow_redirects=False
                ) as r:
                    if r.status != 303:
                        raise RuntimeError(f"the approve form answered {r.status}")
                outcome = await task
                if outcome.status is not HoldStatus.APPROVED:
                    raise RuntimeError(f"hold ended {outcome.status}")
                if i >= 5:
                    latency.append((done_at[0] - started) * 1000)
    finally:
        await server.stop()
        await web_svc.stop()
        await holder.stop()
    q, d = _stats(queue), _stats(latency)
    return {
        "pending": pending,
        "queue_runs": len(queue),
        "queue_bytes": size,
        "queue": q,
        "target_queue_ms": TARGET_QUEUE_MS,
        "decisions": len(latency),
        "decision": d,
        "target_p50_ms": TARGET_P50_MS,
        "target_p99_ms": TARGET_P99_MS,
        "ok": q["p50_ms"] < TARGET_QUEUE_MS
        and d["p50_ms"] <= TARGET_P50_MS
        and d["p99_ms"] <= TARGET_P99_MS,
    }


def run(state_dsn: str | None = None, **kw: Any) -> dict[str, Any]:
    """Measure on ``state_dsn``, or on a scratch embedded PostgreSQL when None."""
    import uvloop

    if state_dsn is not None:
        return uvloop.run(measure(state_dsn, **kw))
    from dbgate.embedded import EmbeddedPostgres

    work = Path(tempfile.mkdtemp(prefix="dbgate-bench-web-"))
    work.chmod(0o711)
    try:
        with EmbeddedPostgres(work / "pg") as pg:
            return uvloop.run(measure(pg.dsn(), **kw))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.bench_web", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--dsn", help="state database URL (default: a scratch embedded PostgreSQL)")
    p.add_argument("--pending", type=int, default=1000, help="pending requests (default 1000)")
    p.add_argument("--runs", type=int, default=30, help="queue renders to time (default 30)")
    p.add_argument("--decisions", type=int, default=50, help="page decisions to time (default 50)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    result = run(args.dsn, pending=args.pending, runs=args.runs, decisions=args.decisions)
    if args.json:
        print(json.dumps(result))
    else:
        q, d = result["queue"], result["decision"]
        print(
            f"queue page with {result['pending']} pending requests ({result['queue_bytes']:,} bytes), "
            f"server time over {result['queue_runs']} renders: p50 {q['p50_ms']} ms "
            f"(target < {TARGET_QUEUE_MS:g}), p90 {q['p90_ms']} ms, max {q['max_ms']} ms"
        )
        print(
            f"approve form -> held statement released, two replicas, n={result['decisions']}: "
            f"p50 {d['p50_ms']} ms (target <= {TARGET_P50_MS:g}), p99 {d['p99_ms']} ms "
            f"(target <= {TARGET_P99_MS:g}) -> {'OK' if result['ok'] else 'MISSED'}"
        )
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
