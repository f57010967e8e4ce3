"""Large values through dbgate: the cost of one long DataRow or statement vs direct.

A relay that re-joins its buffer on every read pays O(n²) for an n-byte message (a
60 MB row took 3.9 s against 0.46 s direct). dbgate streams long messages it does
not need whole and collects the ones it does as a list joined once
(``dbgate/wire/framing.py``), so the target is about 1.5 times direct at every size, and
the same ratio at 10, 30 and 60 MB (linear, not super-linear).

For each size this times, with asyncpg, the median of ``--runs`` runs of

* ``row``: ``select repeat('x', N)`` — one N-byte DataRow from the server;
* ``statement``: ``select length('xx…x')`` — an N-byte statement from the client
  (Parse, which dbgate must hold whole to inspect),

straight to PostgreSQL and through a dbgate proxy (no policy: the relay alone), and
prints JSON with the seconds, the ratio and the proxy's memory budget peak. The
proxy runs on its own event loop thread in this process, so it shares the GIL with
the client: the ratios are on the pessimistic side.

Run: ``python -m bench.bench_large_values [--sizes 10,30,60] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import uvloop

from dbgate.config import Config
from dbgate.embedded import EmbeddedPostgres, find_free_port
from dbgate.proxy.server import ProxyServer

MB = 1024 * 1024
PASSWORD = "bench-large-pw"


async def _time(dsn: str, sql: str, runs: int) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        times = []
        for _ in range(runs):
            began = time.perf_counter()
            await conn.fetchval(sql)
            times.append(time.perf_counter() - began)
        return statistics.median(times)
    finally:
        await conn.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10,30,60", help="sizes in MB, comma separated")
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="dbgate-bench-large-"))
    pg = EmbeddedPostgres(tmp / "data", port=find_free_port())
    pg.start()
    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    config = Config.model_validate(
        {
            "listen": "127.0.0.1:0",
            "upstream": {
                "host": pg.host,
                "port": pg.port,
                "user": pg.user,
                "password": pg.password,
            },
            "identities": [{"name": "bench", "password": PASSWORD}],
            "policy": "off",
        }
    )
    server = ProxyServer(config)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
    direct = f"postgresql://{pg.user}:{pg.password}@{pg.host}:{pg.port}/postgres"
    proxied = f"postgresql://bench:{PASSWORD}@127.0.0.1:{server.port}/postgres"
    out: dict[str, Any] = {"runs": a.runs, "cases": []}
    try:
        for size in sizes:
            n = size * MB
            cases = {
                "row": f"select repeat('x', {n})",
                "statement": f"select length('{'x' * n}')",
            }
            for kind, sql in cases.items():
                d = asyncio.run(_time(direct, sql, a.runs))
                t = asyncio.run(_time(proxied, sql, a.runs))
                out["cases"].append(
                    {
                        "kind": kind,
                        "mb": size,
                        "direct_s": round(d, 4),
                        "dbgate_s": round(t, 4),
                        "ratio": round(t / d, 2),
                    }
                )
        out["budget_peak_bytes"] = server.budget.peak
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(1), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
