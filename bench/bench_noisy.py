"""Noisy neighbour: pgbench -S through dbgate while one client sends hostile SQL.

Issue 10's target: with one client sending the hostile inputs in a loop (nested
comments, operator runs, deep IN sub-selects, a 50 MB OR chain, 600,000 VALUES rows, a
50 MB literal), pgbench -S through the same dbgate keeps ≥ 0.8x its TPS without the
neighbour and a p99 latency ≤ 5x (and under 100 ms); the proxy's RSS is sampled
throughout (the dbgate process, and its classification workers apart).

Rounds alternate quiet and noisy so that drift on a shared host hits both alike;
medians are reported. p99 comes from pgbench's per-transaction log (``-l``).

Run alone: ``python -m bench.bench_noisy [--seconds 10] [--rounds 3]`` (embedded
PostgreSQL and a ``dbgate serve`` of its own); ``make bench`` runs it against its
dbgate target (skip with ``--no-noisy``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import psycopg

from bench.targets import Target

TARGET_TPS_RATIO = 0.8
TARGET_P99_RATIO = 5.0
TARGET_P99_MS = 100.0


def _nested_in(depth: int) -> str:
    sql = "SELECT 1 WHERE 1 = 1"
    for _ in range(depth):
        sql = f"SELECT 1 WHERE 1 IN ({sql})"
    return sql


def hostile_inputs(scale: float = 1.0) -> dict[str, str]:
    """Issue 10's table, at its sizes times ``scale``."""

    def n(x: int) -> int:
        return max(1, int(x * scale))

    return {
        "comments": "select 1 as uX " + "/*" * n(16000) + "*/" * n(16000),
        "operator_run": "select 1, 1 " + "+" * n(60000) + " 1",
        "nested_in": _nested_in(19),
        "or_chain": "select 1 where " + " or ".join(["1 = 1"] * n(50_000_000 // 11)),
        "values": "select count(*) from (values "
        + ",".join(f"({i})" for i in range(n(600_000)))
        + ") v(x)",
        "literal": "select length('" + "x" * n(50_000_000) + "')",
    }


class Neighbour:
    """One client sending the hostile inputs in a loop until stopped."""

    def __init__(self, target: Target, inputs: dict[str, str]) -> None:
        self.target = target
        self.inputs = inputs
        self.sent = 0
        self.outcomes: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t = self.target
        with psycopg.connect(
            host=t.host, port=t.port, user=t.user, password=t.password, dbname=t.dbname
        ) as conn:
            conn.autocommit = True
            while not self._stop.is_set():
                for name, sql in self.inputs.items():
                    if self._stop.is_set():
                        return
                    try:
                        conn.execute(sql).fetchall()
                        self.outcomes[name] = "ran"
                    except psycopg.Error as e:
                        self.outcomes[name] = f"{e.sqlstate}: {str(e).splitlines()[0][:80]}"
                    self.sent += 1

    def __enter__(self) -> Neighbour:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(120)


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        out = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in out.split()]


class RssSampler:
    """Peak RSS of the proxy process and, apart, of its children (the workers)."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.proxy_kb = 0
        self.workers_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while self.pid and not self._stop.wait(0.05):
            self.proxy_kb = max(self.proxy_kb, _rss_kb(self.pid))
            self.workers_kb = max(self.workers_kb, sum(_rss_kb(c) for c in _children(self.pid)))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def pgbench_select(
    binary: str, target: Target, work: Path, seconds: int, clients: int
) -> dict[str, float]:
    """pgbench -S -M simple; TPS and latency percentiles from the per-transaction log."""
    work.mkdir(parents=True, exist_ok=True)
    for old in work.glob("pgbench_log.*"):
        old.unlink()
    argv = [binary, "-n", "-S", "-M", "simple", "-c", str(clients), "-j", "2"]
    argv += ["-T", str(seconds), "-l"]  # pgbench_log.<pid>[.<thread>] in its directory
    out = subprocess.run(
        argv,
        env=target.libpq_env(),
        cwd=work,
        capture_output=True,
        text=True,
        timeout=seconds * 3 + 60,
    )
    if out.returncode != 0:
        raise RuntimeError(f"pgbench failed: {out.stderr.strip()[-300:]}")
    latencies: list[int] = []
    for log in work.glob("pgbench_log.*"):
        for line in log.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3:
                latencies.append(int(fields[2]))
    if not latencies:
        raise RuntimeError("pgbench logged no transactions")
    latencies.sort()
    tps = len(latencies) / seconds
    return {
        "tps": round(tps, 1),
        "p50_ms": round(latencies[len(latencies) // 2] / 1000, 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] / 1000, 3),
        "max_ms": round(latencies[-1] / 1000, 3),
    }


def run_noisy(
    binary: str,
    target: Target,
    work: Path,
    *,
    seconds: int = 10,
    rounds: int = 3,
    clients: int = 4,
    scale: float = 1.0,
) -> dict[str, Any]:
    """Alternate quiet and noisy pgbench rounds against ``target`` (a dbgate whose
    database holds pgbench's tables); medians and ratios."""
    inputs = hostile_inputs(scale)
    quiet: list[dict[str, float]] = []
    noisy: list[dict[str, float]] = []
    sent = 0
    outcomes: dict[str, str] = {}
    with RssSampler(target.pgid) as rss:
        for r in range(rounds):
            quiet.append(pgbench_select(binary, target, work / f"quiet{r}", seconds, clients))
            with Neighbour(target, inputs) as neighbour:
                noisy.append(pgbench_select(binary, target, work / f"noisy{r}", seconds, clients))
            sent += neighbour.sent
            outcomes.update(neighbour.outcomes)

    def median(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(x[key] for x in runs)

    result: dict[str, Any] = {
        "quiet_tps": median(quiet, "tps"),
        "noisy_tps": median(noisy, "tps"),
        "quiet_p99_ms": median(quiet, "p99_ms"),
        "noisy_p99_ms": median(noisy, "p99_ms"),
        "noisy_max_ms": max(x["max_ms"] for x in noisy),
        "hostile_statements_sent": sent,
        "hostile_outcomes": outcomes,
        "proxy_peak_rss_mb": round(rss.proxy_kb / 1024, 1),
        "workers_peak_rss_mb": round(rss.workers_kb / 1024, 1),
        "rounds": {"quiet": quiet, "noisy": noisy},
    }
    result["tps_ratio"] = round(result["noisy_tps"] / result["quiet_tps"], 3)
    result["p99_ratio"] = round(result["noisy_p99_ms"] / result["quiet_p99_ms"], 2)
    result["ok"] = (
        result["tps_ratio"] >= TARGET_TPS_RATIO
        and result["p99_ratio"] <= TARGET_P99_RATIO
        and result["noisy_p99_ms"] < TARGET_P99_MS
    )
    return result


def format_result(result: dict[str, Any]) -> str:
    return (
        f"noisy neighbour (pgbench -S while one client sends issue 10's hostile SQL, "
        f"{result['hostile_statements_sent']} sent): TPS {result['noisy_tps']:g} vs "
        f"{result['quiet_tps']:g} = {result['tps_ratio']}x (target >= {TARGET_TPS_RATIO}), "
        f"p99 {result['noisy_p99_ms']} ms vs {result['quiet_p99_ms']} ms = "
        f"{result['p99_ratio']}x (target <= {TARGET_P99_RATIO:g}, < {TARGET_P99_MS:g} ms), "
        f"proxy peak RSS {result['proxy_peak_rss_mb']} MB (+ workers "
        f"{result['workers_peak_rss_mb']} MB) -> {'OK' if result['ok'] else 'MISSED'}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.bench_noisy", description=(__doc__ or "").split("\n\n")[0]
    )
    p.add_argument("--seconds", type=int, default=10, help="seconds per pgbench round")
    p.add_argument("--rounds", type=int, default=3, help="quiet/noisy round pairs")
    p.add_argument("--clients", type=int, default=4, help="pgbench clients")
    p.add_argument("--scale", type=float, default=1.0, help="hostile input size x issue 10's")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    from bench import pgbench
    from bench.dbgate_target import BENCH_PII_KEY, Dbgate
    from dbgate.embedded import EmbeddedPostgres

    # Without a state database dbgate tokenizes with a key from the environment.
    os.environ.setdefault("DBGATE_PII_KEY", f"hex:{BENCH_PII_KEY}")

    work = Path(tempfile.mkdtemp(prefix="dbgate-bench-noisy-"))
    work.chmod(0o711)
    try:
        with EmbeddedPostgres(work / "pg") as pg:
            binary = pgbench.find_pgbench([pg.bin_dir])
            direct = Target("direct", pg.host, pg.port, pg.user, pg.password, "postgres")
            pgbench.initialize(binary, direct, 10)
            gate = Dbgate(
                work / "dbgate", pg.host, pg.port, pg.user, pg.password, "noisy-pw", "postgres"
            )
            try:
                gate.wait_ready()
                result = run_noisy(
                    binary,
                    gate.target,
                    work / "runs",
                    seconds=args.seconds,
                    rounds=args.rounds,
                    clients=args.clients,
                    scale=args.scale,
                )
            finally:
                gate.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result) if args.json else format_result(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
