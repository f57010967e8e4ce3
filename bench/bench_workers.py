"""Worker scaling where the proxy is the bottleneck: ``--workers 1`` against ``--workers 2``.

Under pgbench -S dbgate uses about half a core while PostgreSQL and pgbench take
the rest of this 2-core machine, so a second worker process has nothing to do and
the pgbench matrix can only show that it costs nothing. To show what it buys, this
run makes the proxy the bottleneck: every statement is one dbgate has never seen.

The client is pgbench ``-M simple`` (C, a few microseconds per statement) with a
script whose statement gets a new column alias every time::

    SELECT abalance AS a_<random> FROM pgbench_accounts WHERE aid = <random>

The alias is part of the statement's shape, not a literal, so each text misses all
three caches of the classifier (exact text, literal-masked text and normalized text,
see :mod:`dbgate.policy.classify`) and the PII planner's: each is parsed, walked and
planned on the proxy's event loop, as a client that builds fresh SQL each time
would make it. Rounds alternate the two dbgates (the first one rotated), and the
medians of TPS and of the proxy's CPU per transaction are reported with the ratio
``--workers 2`` / ``--workers 1``. With two cores shared by the client, the server
and the proxy, the ratio is below 2 even when the proxy scales perfectly.

Run alone: ``python -m bench.bench_workers [--seconds 5] [--rounds 3]`` (embedded
PostgreSQL and two ``dbgate serve`` of its own); ``make bench`` runs it against its
``dbgate`` and ``dbgate-w2`` targets after the pgbench matrix (skip with
``--no-workers``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.pgbench import parse_output
from bench.procs import group_cpu_seconds, run_checked
from bench.targets import Target

#: The statement pgbench sends, with its variables; ``:tag`` makes each text new.
STATEMENT = "SELECT abalance AS a_:tag FROM pgbench_accounts WHERE aid = :aid"
SCRIPT = f"""\\set aid random(1, 100000 * :scale)
\\set tag random(1, 2000000000)
{STATEMENT};
"""


def render(aid: int, tag: int) -> str:
    """The text pgbench -M simple sends for these values (it substitutes ``:name``)."""
    return STATEMENT.replace(":tag", str(tag)).replace(":aid", str(aid))


def run_cold(
    binary: str,
    target: Target,
    work: Path,
    *,
    seconds: int,
    clients: int,
    threads: int,
    scale: int,
) -> dict[str, float]:
    """One timed pgbench run of :data:`SCRIPT` against ``target``; raises on failure."""
    work.mkdir(parents=True, exist_ok=True)
    script = work / "cold.sql"
    script.write_text(SCRIPT)
    argv = [binary, "-n", "-M", "simple", "-f", str(script), "-s", str(scale)]
    argv += ["-c", str(clients), "-j", str(min(threads, clients)), "-T", str(seconds)]
    cpu0 = group_cpu_seconds(target.pgid) if target.pgid else None
    try:
        out = run_checked(argv, env=target.libpq_env(), timeout=seconds * 3 + 60)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"pgbench against {target.name} failed: {str(e)[-300:]}") from None
    tps, latency_ms, transactions, failed = parse_output(out)
    result = {
        "tps": tps,
        "latency_ms": latency_ms,
        "transactions": transactions,
        "failed": failed,
    }
    if cpu0 is not None and target.pgid and transactions:
        cpu1 = group_cpu_seconds(target.pgid)
        used = (cpu1[0] - cpu0[0]) + (cpu1[1] - cpu0[1])
        result["proxy_cpu_us_per_txn"] = round(used / transactions * 1e6, 1)
        result["proxy_cores"] = round(used / seconds, 2)
    return result


def run_workers(
    binary: str,
    one: Target,
    two: Target,
    work: Path,
    *,
    seconds: int = 5,
    rounds: int = 3,
    clients: int = 16,
    threads: int = 2,
    scale: int = 10,
) -> dict[str, Any]:
    """Interleaved cold-statement rounds against ``one`` (``--workers 1``) and ``two``
    (``--workers 2``), both in front of a database pgbench initialised at ``scale``."""
    runs: dict[str, list[dict[str, float]]] = {"w1": [], "w2": []}
    sides = [("w1", one), ("w2", two)]
    for r in range(rounds):
        for name, target in sides[r % 2 :] + sides[: r % 2]:
            runs[name].append(
                run_cold(
                    binary,
                    target,
                    work / f"{name}-{r}",
                    seconds=seconds,
                    clients=clients,
                    threads=threads,
                    scale=scale,
                )
            )

    def median(name: str, key: str) -> float | None:
        values = [x[key] for x in runs[name] if key in x]
        return round(statistics.median(values), 2) if values else None

    result: dict[str, Any] = {
        "statement": STATEMENT,
        "client": f"pgbench -M simple, {clients} clients, {threads} threads",
        "seconds": seconds,
        "rounds": rounds,
        "failed": sum(int(x["failed"]) for side in runs.values() for x in side),
        "runs": runs,
    }
    for name in runs:
        result[name] = {
            key: median(name, key)
            for key in ("tps", "latency_ms", "proxy_cpu_us_per_txn", "proxy_cores")
        }
    w1, w2 = result["w1"]["tps"], result["w2"]["tps"]
    result["ratio"] = round(w2 / w1, 3) if w1 else None
    return result


def format_result(result: dict[str, Any]) -> str:
    w1, w2 = result["w1"], result["w2"]

    def cpu(side: dict[str, Any]) -> str:
        us, cores = side.get("proxy_cpu_us_per_txn"), side.get("proxy_cores")
        return f"{us:g} µs/txn, {cores:g} cores" if us is not None and cores is not None else "n/a"

    return (
        f"proxy-bound workers scaling (every statement new to the classifier, "
        f"{result['client']}): --workers 1 {w1['tps']:,.0f} tps ({cpu(w1)}), "
        f"--workers 2 {w2['tps']:,.0f} tps ({cpu(w2)}) -> {result['ratio']}x"
        + (f"; {result['failed']} failed transactions" if result["failed"] else "")
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.bench_workers", description=(__doc__ or "").split("\n\n")[0]
    )
    p.add_argument("--seconds", type=int, default=5, help="seconds per pgbench run")
    p.add_argument("--rounds", type=int, default=3, help="runs per dbgate (interleaved)")
    p.add_argument("--clients", type=int, default=16, help="pgbench clients")
    p.add_argument("--scale", type=int, default=10, help="pgbench -i scale factor")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    from bench import pgbench
    from bench.dbgate_target import Dbgate
    from dbgate.embedded import EmbeddedPostgres

    work = Path(tempfile.mkdtemp(prefix="dbgate-bench-workers-"))
    work.chmod(0o711)
    gates: list[Dbgate] = []
    try:
        with EmbeddedPostgres(work / "pg") as pg:
            binary = pgbench.find_pgbench([pg.bin_dir])
            direct = Target("direct", pg.host, pg.port, pg.user, pg.password, "postgres")
            pgbench.initialize(binary, direct, args.scale)
            try:
                for n in (1, 2):
                    gate = Dbgate(
                        work / f"dbgate-w{n}",
                        pg.host,
                        pg.port,
                        pg.user,
                        pg.password,
                        "workers-pw",
                        "postgres",
                        extra_args=["--workers", str(n)],
                        name=f"dbgate-w{n}",
                    )
                    gates.append(gate)
                    gate.wait_ready()
                result = run_workers(
                    binary,
                    gates[0].target,
                    gates[1].target,
                    work / "runs",
                    seconds=args.seconds,
                    rounds=args.rounds,
                    clients=args.clients,
                    scale=args.scale,
                )
            finally:
                for gate in gates:
                    gate.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result) if args.json else format_result(result))
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
