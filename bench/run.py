"""``make bench``: dbgate against direct PostgreSQL and PgBouncer, interleaved.

One command, on a fresh machine, does everything (see bench/README.md):

1. a real PostgreSQL (``dbgate.embedded.EmbeddedPostgres``, loopback TCP, SCRAM);
2. PgBouncer in session mode in front of it (Debian's package, installed if missing);
3. dbgate in front of it, as ``dbgate serve -c <generated config>``, and two more
   sharing a state database: the audit trail on ("dbgate-audit") and off
   ("dbgate-noaudit", so that "audit on/off" is what the trail alone costs);
4. pgbench ``-S`` and TPC-B-like, in simple/extended/prepared modes, against the
   three targets interleaved round-robin;
5. a million rows through asyncpg against the three targets, interleaved;
6. a held statement end to end on two dbgate replicas sharing a state database:
   approve on one, result at a client of the other (``bench/bench_holds.py``);
7. the policy classifier microbenchmarks (``bench/bench_classify.py``) if present;
8. the PII rewrite and planning microbenchmarks (``bench/bench_pii.py``) if present;
9. the audit benchmarks (``bench/bench_audit.py``): records/s into a state database
   and ``audit verify`` records/s, on a PostgreSQL of their own;
10. the approvers' page (``bench/bench_web.py``): the queue with 1,000 pending
    requests, server time, and the approve form's latency to a held statement on
    another replica, on a PostgreSQL of its own;
11. worker scaling where the proxy is the bottleneck (``bench/bench_workers.py``):
    statements new to the classifier against ``dbgate`` and ``dbgate-w2``;

then prints one table of medians and ratios and writes the raw runs as JSON to
``bench/.work/results-<timestamp>.json``. Everything it starts is stopped at the
end, on error and on Ctrl-C/SIGTERM.

Why interleaved: the machine has two cores shared by the client, the proxy and
the server, and its speed drifts (other tenants, thermal, caches). Running all of
direct, then all of PgBouncer, then all of dbgate would attribute that drift to
the proxies. Round-robin short runs, with the starting target rotated each round,
expose every target to the same conditions, so the *ratios* are trustworthy even
when the absolute TPS are not.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import uvloop

from bench import pgbench, report, streaming
from bench.dbgate_target import (
    APPROVALS_ONLY_RULES,
    BENCH_RULES,
    NO_LIMITS_RULES,
    Approvals,
    Dbgate,
    create_database,
)
from bench.pgbouncer import PgBouncer, ensure_pgbouncer, pgbouncer_version
from bench.procs import free_port
from bench.pump import start_pump
from bench.targets import DEFAULT_TARGETS, TARGET_ORDER, Target

WORK_ROOT = Path(__file__).resolve().parent / ".work"
DBNAME = "bench"
STATE_DBNAME = "bench_state"  # dbgate-audit's state database (audit, approvals)
# Scratch-server settings on top of dbgate.embedded's defaults (fsync off etc.):
# every pgbench table and the streaming table fit in shared buffers, so the runs
# measure CPU and the relay, not the page cache.
SERVER_SETTINGS = {"shared_buffers": "512MB", "max_connections": "200"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Benchmark dbgate against direct PostgreSQL and PgBouncer (interleaved).",
    )
    p.add_argument(
        "--quick", action="store_true", help="3 rounds x 3 s (smoke run, about 4 minutes)"
    )
    # Five short rounds rather than three long ones: with bursty load from other work
    # on a 2-core machine, a median of five shrugs off two disturbed rounds.
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="rounds per target and workload (default 5; 3 with --quick)",
    )
    p.add_argument(
        "--seconds",
        type=int,
        default=None,
        help="seconds per pgbench run (default 5; 3 with --quick)",
    )
    p.add_argument("--clients", type=int, default=8, help="pgbench clients, -c (default 8)")
    p.add_argument("--threads", type=int, default=2, help="pgbench threads, -j (default 2)")
    p.add_argument("--scale", type=int, default=10, help="pgbench -i scale factor (default 10)")
    p.add_argument(
        "--modes", default=",".join(pgbench.MODES), help="pgbench -M modes, comma-separated"
    )
    p.add_argument(
        "--scripts", default=",".join(pgbench.SCRIPTS), help="select,tpcb (comma-separated)"
    )
    p.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help="direct,pgbouncer,dbgate,dbgate-w2 (default; dbgate-w2: --workers 2); "
        "opt-in: dbgate-nopolicy (policy: off), pump",
    )
    p.add_argument("--stream-rows", type=int, default=1_000_000, help="rows per streaming run")
    p.add_argument("--stream-runs", type=int, default=5, help="streaming runs per target (median)")
    p.add_argument(
        "--stream-method",
        choices=("fetch", "cursor", "pii", "both", "all", "default"),
        default="default",
        help="fetch: one Execute, all rows; cursor: 10,000-row Executes in a transaction; "
        "pii: fetch of a table with an e-mail column dbgate tokenizes; both: fetch and "
        "cursor; all: the three; default: fetch and pii",
    )
    p.add_argument("--no-pgbench", action="store_true", help="skip the pgbench matrix")
    p.add_argument("--no-streaming", action="store_true", help="skip the streaming benchmark")
    p.add_argument(
        "--no-classifier", action="store_true", help="skip the classifier microbenchmarks"
    )
    p.add_argument("--no-pii", action="store_true", help="skip the PII microbenchmarks")
    p.add_argument("--no-audit", action="store_true", help="skip the audit benchmarks")
    p.add_argument(
        "--no-web", action="store_true", help="skip the approvers' page benchmark (bench_web)"
    )
    p.add_argument(
        "--audit-records",
        type=int,
        default=200_000,
        help="records the audit write benchmark writes (default 200000)",
    )
    p.add_argument(
        "--no-holds",
        action="store_true",
        help="skip the held-statement latency benchmark (two replicas, bench/bench_holds.py)",
    )
    p.add_argument("--holds-n", type=int, default=200, help="held statements to time (default 200)")
    p.add_argument(
        "--no-noisy",
        action="store_true",
        help="skip the noisy-neighbour benchmark (pgbench -S beside hostile SQL, bench/bench_noisy.py)",
    )
    p.add_argument(
        "--no-large",
        action="store_true",
        help="skip the large-values benchmark (30-60 MB rows and statements through the "
        "relay vs direct, bench/bench_large_values.py)",
    )
    p.add_argument(
        "--no-workers",
        action="store_true",
        help="skip the proxy-bound workers scaling run (cold statements, --workers 1 vs 2, "
        "bench/bench_workers.py)",
    )
    p.add_argument(
        "--dbgate-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for 'dbgate serve' (repeatable), e.g. --dbgate-arg=--log-level=warning",
    )
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="SECONDS",
        help="also record dbgate with py-spy for SECONDS under pgbench (needs py-spy)",
    )
    p.add_argument(
        "--profile-script",
        default="select",
        choices=("select", "tpcb"),
        help="pgbench script while profiling: select (-S) or tpcb (the default transaction)",
    )
    p.add_argument(
        "--profile-native",
        action="store_true",
        help="py-spy --native: include C frames (uvloop, the kernel-call wrappers)",
    )
    p.add_argument(
        "--profile-target",
        default="dbgate",
        metavar="NAME",
        help="which dbgate target to profile (e.g. dbgate-audit); it must be among --targets",
    )
    p.add_argument(
        "--profile-mode",
        default="prepared",
        choices=pgbench.MODES,
        help="pgbench mode while profiling",
    )
    p.add_argument(
        "--keep", action="store_true", help="keep the server's data directory afterwards"
    )
    args = p.parse_args(argv)
    if args.seconds is None:
        args.seconds = 3 if args.quick else 5
    if args.rounds is None:
        args.rounds = 3 if args.quick else 5
    args.modes = _csv(args.modes, pgbench.MODES, "--modes")
    args.scripts = _csv(args.scripts, tuple(pgbench.SCRIPTS), "--scripts")
    args.targets = _csv(args.targets, TARGET_ORDER, "--targets")
    if "direct" not in args.targets:
        p.error("--targets must include direct (it is used to initialise the data)")
    if min(args.rounds, args.seconds, args.clients, args.threads, args.scale, args.stream_runs) < 1:
        p.error("counts and durations must be at least 1")
    return args


def _csv(value: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise SystemExit(f"{flag}: expected some of {', '.join(allowed)}, got {value!r}")
    return [v for v in allowed if v in items]  # canonical order


def say(message: str) -> None:
    print(message, flush=True)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM/SIGHUP like Ctrl-C so the ``finally`` blocks stop every child."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    # A shell without job control starts background jobs with SIGINT ignored, and
    # Python then keeps it ignored: make Ctrl-C/kill -INT work in every case.
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            check=False,
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def _dbgate_tree_dirty() -> bool | None:
    """Whether dbgate/ has uncommitted changes: the venv runs the working tree."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--", "dbgate"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
            check=False,
        )
    except OSError:
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


class Bench:
    """State of one benchmark run: the processes it owns and the results so far."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.work = WORK_ROOT / f"run-{self.stamp}"
        self.targets: dict[str, Target] = {}
        self.stoppers: list[tuple[str, Callable[[], None]]] = []  # stopped in reverse
        self.pgbench_runs: list[pgbench.PgbenchResult] = []
        self.stream_runs: list[streaming.StreamResult] = []
        self.classifier: dict[str, Any] | None = None
        self.classifier_error: str | None = None
        self.pii: dict[str, Any] | None = None
        self.pii_error: str | None = None
        self.audit: dict[str, Any] | None = None
        self.audit_error: str | None = None
        self.web: dict[str, Any] | None = None
        self.web_error: str | None = None
        self.profile: dict[str, Any] | None = None
        self.holds: dict[str, Any] | None = None
        self.holds_error: str | None = None
        self.noisy: dict[str, Any] | None = None
        self.noisy_error: str | None = None
        self.workers: dict[str, Any] | None = None
        self.workers_error: str | None = None
        self.large: dict[str, Any] | None = None
        self.large_error: str | None = None
        self.setup_log: list[str] = []
        self.meta: dict[str, Any] = {
            "started_at": self.stamp,
            "host": platform.node(),
            "cpu": _cpu_model(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "dbgate_commit": _git_commit(),
            "dbgate_tree_dirty": _dbgate_tree_dirty(),
            # Other work on the machine skews absolute numbers (less so the ratios).
            "loadavg_start": os.getloadavg(),
        }
        self.dbgate: Dbgate | None = None
        self.gates: dict[str, Dbgate] = {}  # every dbgate process, by target name
        self.pgbench_bin = ""

    # ----------------------------------------------------------------- set-up

    def setup(self) -> None:
        from dbgate.embedded import EmbeddedPostgres

        self.work.mkdir(parents=True, exist_ok=True)
        a = self.args
        say(f"work directory: {self.work}")

        pg = EmbeddedPostgres(self.work / "pg", settings=SERVER_SETTINGS)
        say("starting PostgreSQL (embedded) ...")
        pg.start()
        self.stoppers.append(("postgres", pg.stop))
        self.meta["postgres"] = pg.psql("SELECT version()").strip()
        pg.psql(f"CREATE DATABASE {DBNAME}")
        direct = Target("direct", pg.host, pg.port, pg.user, pg.password, DBNAME)
        self.targets["direct"] = direct

        self.pgbench_bin = pgbench.find_pgbench([pg.bin_dir])
        self.meta["pgbench"] = pgbench.pgbench_version(self.pgbench_bin)
        if not a.no_pgbench or a.profile:
            say(f"pgbench -i -s {a.scale} (direct) ...")
            t0 = time.monotonic()
            pgbench.initialize(self.pgbench_bin, direct, a.scale)
            say(f"  initialised in {time.monotonic() - t0:.1f}s")
        if not a.no_streaming:
            say(f"creating the {a.stream_rows:,}-row streaming table (direct) ...")
            streaming.prepare(direct, a.stream_rows)

        if "pgbouncer" in a.targets:
            self._start_pgbouncer(pg.host, pg.port, pg.user, pg.password)
        if "dbgate" in a.targets:
            self._start_dbgate(pg.host, pg.port, pg.user, pg.password)
        stateful = (
            ("dbgate-audit", True, BENCH_RULES),
            ("dbgate-noaudit", False, BENCH_RULES),
            ("dbgate-approvals", False, APPROVALS_ONLY_RULES),
        )
        if any(name in a.targets for name, _, _ in stateful):
            state_dsn = uvloop.run(create_database(direct, STATE_DBNAME))
        for name, audit, rules in stateful:
            if name in a.targets:  # one state database, shared as replicas would
                approvals = Approvals(state_dsn, free_port(), f"bench-{name}", audit=audit)
                self._start_dbgate(
                    pg.host, pg.port, pg.user, pg.password, name, approvals=approvals, rules=rules
                )
        if "dbgate-w2" in a.targets:
            self._start_dbgate(pg.host, pg.port, pg.user, pg.password, "dbgate-w2", workers=2)
        if "dbgate-nolimits" in a.targets:
            self._start_dbgate(
                pg.host, pg.port, pg.user, pg.password, "dbgate-nolimits", rules=NO_LIMITS_RULES
            )
        if "dbgate-nopolicy" in a.targets:
            self._start_dbgate(pg.host, pg.port, pg.user, pg.password, "dbgate-nopolicy", "off")
        if "pump" in a.targets:
            pump = start_pump(self.work / "pump", pg.host, pg.port)
            self.stoppers.append(("pump", pump.stop))
            self.targets["pump"] = Target(
                "pump", "127.0.0.1", pump.port, pg.user, pg.password, DBNAME, pgid=pump.process.pid
            )
            say(f"pump (blind Python relay) on 127.0.0.1:{pump.port}")

    def _start_pgbouncer(self, host: str, port: int, user: str, password: str) -> None:
        try:
            binary = ensure_pgbouncer(self.note)
            self.meta["pgbouncer"] = pgbouncer_version(binary)
            bouncer = PgBouncer(
                self.work / "pgbouncer",
                host,
                port,
                user,
                password,
                pool_size=self.args.clients + 4,
                binary=binary,
            )
        except (RuntimeError, OSError) as e:
            say(f"PgBouncer unavailable: {e}")
            self.targets["pgbouncer"] = Target(
                "pgbouncer", "", 0, "", "", DBNAME, unavailable=str(e)
            )
            return
        self.stoppers.append(("pgbouncer", bouncer.stop))
        self.targets["pgbouncer"] = Target(
            "pgbouncer",
            bouncer.host,
            bouncer.port,
            user,
            password,
            DBNAME,
            pgid=bouncer.process.pid,
        )
        say(f"PgBouncer ({self.meta['pgbouncer']}, session mode) on {bouncer.host}:{bouncer.port}")

    def _start_dbgate(
        self,
        host: str,
        port: int,
        user: str,
        password: str,
        name: str = "dbgate",
        policy: str | None = None,
        approvals: Approvals | None = None,
        workers: int = 1,
        rules: str = BENCH_RULES,
    ) -> None:
        flags = f" --workers {workers}" + (", policy off" if policy == "off" else "")
        say(f"starting {name} (dbgate serve{flags}) ...")
        try:
            gate = Dbgate(
                self.work / name,
                host,
                port,
                user,
                password,
                identity_password="bench-identity-secret",
                dbname=DBNAME,
                extra_args=["--workers", str(workers), *(self.args.dbgate_arg or [])],
                name=name,
                policy=policy,
                approvals=approvals,
                extra_rules=rules,
            )
        except (RuntimeError, OSError) as e:
            say(f"{name} unavailable: {e}")
            self.targets[name] = Target(name, "", 0, "", "", DBNAME, unavailable=str(e))
            return
        self.stoppers.append((name, gate.stop))
        try:
            gate.wait_ready()
        except RuntimeError as e:
            reason = str(e)
            say(
                f"{name} unavailable (benchmarked without it):\n  {reason.replace(chr(10), chr(10) + '  ')}"
            )
            gate.stop()
            gate.target.unavailable = reason.splitlines()[0]
        else:
            say(f"{name} on {gate.target.host}:{gate.target.port} (pid {gate.pid})")
        self.gates[name] = gate
        if name == "dbgate":
            self.dbgate = gate
        self.targets[name] = gate.target

    def note(self, message: str) -> None:
        """Print a set-up step and keep it for the JSON (what this run had to do)."""
        say(message)
        self.setup_log.append(message)

    def live_targets(self) -> list[Target]:
        return [
            self.targets[n] for n in TARGET_ORDER if n in self.targets and self.targets[n].available
        ]

    def _check_dbgate(self) -> None:
        """A dbgate that crashed mid-benchmark is reported once and skipped after."""
        for name, gate in self.gates.items():
            if gate.target.available and not gate.alive():
                gate.target.unavailable = (
                    f"{name} exited during the benchmark (see {gate.process.log_path})"
                )
                say(f"  !! {gate.target.unavailable}\n{gate.process.log_tail()}")

    # ----------------------------------------------------------------- pgbench

    def run_pgbench(self) -> None:
        a = self.args
        live = self.live_targets()
        warm = 1 if a.quick else 2
        say(f"warm-up: {warm}s pgbench -S per target")
        for t in live:
            pgbench.run_once(
                self.pgbench_bin, t, "simple", "select", warm, a.clients, a.threads, -1
            )
        total = len(a.modes) * len(a.scripts) * a.rounds * len(live) * a.seconds
        say(f"pgbench matrix: about {total // 60}m{total % 60:02d}s of runs")
        for mode in a.modes:
            for script in a.scripts:
                for round_no in range(a.rounds):
                    self._check_dbgate()
                    live = self.live_targets()
                    k = round_no % len(live)
                    for t in live[k:] + live[:k]:
                        r = pgbench.run_once(
                            self.pgbench_bin,
                            t,
                            mode,
                            script,
                            a.seconds,
                            a.clients,
                            a.threads,
                            round_no,
                        )
                        self.pgbench_runs.append(r)
                        shown = (
                            f"{r.tps:>10,.0f} tps {r.latency_ms:7.3f} ms"
                            if r.tps is not None and r.latency_ms is not None
                            else f"ERROR {(r.error or '').splitlines()[-1:]}"
                        )
                        say(
                            f"  {mode:<8} {script:<6} round {round_no + 1}/{a.rounds} {t.name:<10} {shown}"
                        )

    # ----------------------------------------------------------------- streaming

    def run_streaming(self) -> None:
        a = self.args
        self._check_dbgate()
        for method in self.stream_methods():
            say(
                f"streaming {a.stream_rows:,} rows with asyncpg ({method}), {a.stream_runs} runs per target"
            )
            self.stream_runs += streaming.run_interleaved(
                self.live_targets(), method, a.stream_runs, a.stream_rows
            )

    def stream_methods(self) -> list[str]:
        m = self.args.stream_method
        return {
            "both": ["fetch", "cursor"],
            "all": ["fetch", "cursor", "pii"],
            "default": ["fetch", "pii"],
        }.get(m, [m])

    # ----------------------------------------------------------------- profile

    def run_profile(self) -> None:
        from bench.profile import profile_dbgate

        gate = self.gates.get(self.args.profile_target)
        if gate is None or not gate.target.available:
            say(f"profile skipped: {self.args.profile_target} is not running")
            return
        self.profile = profile_dbgate(
            gate.pid,
            self.pgbench_bin,
            gate.target,
            self.args.profile_mode,
            self.args.profile,
            self.args.clients,
            self.args.threads,
            self.work / "profile",
            native=self.args.profile_native,
            script=self.args.profile_script,
        )

    # ----------------------------------------------------------------- holds

    def run_holds(self) -> None:
        """Approval latency end to end (two ``dbgate serve`` replicas, one state DB)."""
        from bench.bench_holds import format_result, run_end_to_end

        say("held statements: approve on replica B -> result at a client of replica A ...")
        try:
            self.holds = run_end_to_end(
                self.targets["direct"], self.work / "holds", n=self.args.holds_n
            )
        except Exception as e:  # report, and let the rest of the run finish
            self.holds_error = f"{type(e).__name__}: {e}"
            say(f"  held-statement benchmark failed: {self.holds_error}")
        else:
            say(f"  {format_result(self.holds)}")

    # ----------------------------------------------------------------- noisy neighbour

    def run_noisy(self) -> None:
        """pgbench -S through dbgate, quiet and beside a client sending hostile SQL."""
        from bench.bench_noisy import format_result, run_noisy

        gate = self.targets.get("dbgate")
        if gate is None or not gate.available:
            self.noisy_error = "no dbgate target"
            return
        say("noisy neighbour: pgbench -S through dbgate beside issue 10's hostile SQL ...")
        try:
            self.noisy = run_noisy(
                self.pgbench_bin, gate, self.work / "noisy", seconds=self.args.seconds
            )
        except Exception as e:  # report, and let the rest of the run finish
            self.noisy_error = f"{type(e).__name__}: {e}"
            say(f"  noisy-neighbour benchmark failed: {self.noisy_error}")
        else:
            say(f"  {format_result(self.noisy)}")

    # ----------------------------------------------------------------- large values

    def run_large(self) -> None:
        """30-60 MB rows and statements through dbgate's relay (policy off) vs direct."""
        from bench.bench_large_values import format_result, run_large_values

        direct = self.targets["direct"]
        say("large values: 10/30/60 MB rows and statements, relay (policy off) vs direct ...")
        gate = self.gates.get("dbgate-nopolicy")
        own = None
        try:
            if gate is None or not gate.target.available:
                own = gate = Dbgate(
                    self.work / "dbgate-relay",
                    direct.host,
                    direct.port,
                    direct.user,
                    direct.password,
                    identity_password="bench-identity-secret",
                    dbname=DBNAME,
                    extra_args=list(self.args.dbgate_arg or []),
                    name="dbgate-relay",
                    policy="off",
                )
                gate.wait_ready()
            self.large = run_large_values(direct, gate.target, pid=gate.pid)
        except Exception as e:  # report, and let the rest of the run finish
            self.large_error = f"{type(e).__name__}: {e}"
            say(f"  large-values benchmark failed: {self.large_error}")
        else:
            say(f"  {format_result(self.large)}")
        finally:
            if own is not None:
                own.stop()

    # ----------------------------------------------------------------- workers

    def run_workers(self) -> None:
        """``--workers 1`` vs ``2`` with the proxy the bottleneck (bench/bench_workers.py)."""
        from bench.bench_workers import format_result, run_workers

        one, two = self.targets.get("dbgate"), self.targets.get("dbgate-w2")
        if one is None or two is None or not (one.available and two.available):
            self.workers_error = "needs the dbgate and dbgate-w2 targets"
            return
        say("proxy-bound workers scaling: statements new to the classifier, --workers 1 vs 2 ...")
        try:
            self.workers = run_workers(
                self.pgbench_bin,
                one,
                two,
                self.work / "workers",
                seconds=self.args.seconds,
                rounds=self.args.rounds,
                threads=self.args.threads,
                scale=self.args.scale,
            )
        except Exception as e:  # report, and let the rest of the run finish
            self.workers_error = f"{type(e).__name__}: {e}"
            say(f"  workers scaling benchmark failed: {self.workers_error}")
        else:
            say(f"  {format_result(self.workers)}")

    # ----------------------------------------------------------------- classifier

    def run_classifier(self) -> None:
        """Call ``bench.bench_classify.run()`` when that module exists (another owner)."""
        if importlib.util.find_spec("bench.bench_classify") is None:
            self.classifier_error = "bench/bench_classify.py not present"
            return
        say("classifier microbenchmarks (bench/bench_classify.py) ...")
        try:
            module = importlib.import_module("bench.bench_classify")
            result = module.run()
            self.classifier = dict(result) if result is not None else {}
        except Exception as e:  # someone else's code: report, never abort the run
            self.classifier_error = f"{type(e).__name__}: {e}"

    # ----------------------------------------------------------------- PII

    def run_pii(self) -> None:
        """Call ``bench.bench_pii.run()`` (row rewrite rows/s, planning µs)."""
        if importlib.util.find_spec("bench.bench_pii") is None:
            self.pii_error = "bench/bench_pii.py not present"
            return
        say("PII microbenchmarks (bench/bench_pii.py) ...")
        try:
            module = importlib.import_module("bench.bench_pii")
            result = module.run()
            self.pii = dict(result) if result is not None else {}
        except Exception as e:  # report, never abort the run
            self.pii_error = f"{type(e).__name__}: {e}"

    # ----------------------------------------------------------------- audit

    def run_audit(self) -> None:
        """``bench.bench_audit.run()``: starts and stops its own PostgreSQL."""
        say(f"audit benchmarks (bench/bench_audit.py, {self.args.audit_records:,} records) ...")
        try:
            from bench.bench_audit import run as run_audit

            self.audit = run_audit(self.args.audit_records, keep=self.args.keep)
        except Exception as e:  # report, never abort the run
            self.audit_error = f"{type(e).__name__}: {e}"

    # ----------------------------------------------------------------- web page

    def run_web(self) -> None:
        """``bench.bench_web.run()``: starts and stops its own PostgreSQL."""
        say("approvers' page (bench/bench_web.py: 1,000 pending, page decisions) ...")
        try:
            from bench.bench_web import run as run_web

            self.web = run_web()
        except Exception as e:  # report, never abort the run
            self.web_error = f"{type(e).__name__}: {e}"

    # ----------------------------------------------------------------- teardown

    def stop_all(self) -> None:
        while self.stoppers:
            name, stop = self.stoppers.pop()
            try:
                stop()
            except Exception as e:  # keep stopping the others
                say(f"warning: stopping {name} failed: {e}")
        if not self.args.keep:
            shutil.rmtree(self.work / "pg" / "pgdata", ignore_errors=True)

    # ----------------------------------------------------------------- output

    def unavailable(self) -> dict[str, str]:
        return {n: t.unavailable for n, t in self.targets.items() if t.unavailable}

    def results(self) -> dict[str, Any]:
        a = self.args
        return {
            "meta": self.meta,
            "settings": {
                "rounds": a.rounds,
                "seconds": a.seconds,
                "clients": a.clients,
                "threads": a.threads,
                "scale": a.scale,
                "modes": a.modes,
                "scripts": a.scripts,
                "stream_rows": a.stream_rows,
                "stream_runs": a.stream_runs,
                "stream_methods": self.stream_methods(),
                "dbgate_args": a.dbgate_arg,
            },
            "unavailable": self.unavailable(),
            "setup_log": self.setup_log,
            "pgbench": {
                "summary": report.summarize_pgbench(self.pgbench_runs, a.modes, a.scripts),
                "runs": [r.as_dict() for r in self.pgbench_runs],
            },
            "streaming": {
                "summary": report.summarize_streaming(self.stream_runs, self.stream_methods()),
                "runs": [r.as_dict() for r in self.stream_runs],
            },
            "classifier": self.classifier,
            "classifier_error": self.classifier_error,
            "pii": self.pii,
            "pii_error": self.pii_error,
            "audit": self.audit,
            "audit_error": self.audit_error,
            "web": self.web,
            "web_error": self.web_error,
            "profile": self.profile,
            "holds": self.holds,
            "holds_error": self.holds_error,
            "noisy": self.noisy,
            "noisy_error": self.noisy_error,
            "workers": self.workers,
            "workers_error": self.workers_error,
            "large": self.large,
            "large_error": self.large_error,
        }

    def run_errors(self) -> list[str]:
        """One line per (target, workload) that failed, so failures are not only in JSON."""
        seen: dict[tuple[str, str], str] = {}
        for r in self.pgbench_runs:
            if r.error:
                seen.setdefault((r.target, f"pgbench {r.mode} {r.script}"), r.error)
        for sr in self.stream_runs:
            if sr.error:
                seen.setdefault((sr.target, f"stream {sr.method}"), sr.error)
        return [
            f"{target:<9} {what:<24} {(err.strip().splitlines() or ['?'])[-1][:160]}"
            for (target, what), err in seen.items()
        ]

    def print_report(self, data: dict[str, Any]) -> None:
        a = self.args
        m = self.meta
        say("")
        say("=" * 100)
        say(
            f"dbgate benchmark  {m['started_at']}  commit {m.get('dbgate_commit')}"
            + (" + uncommitted changes in dbgate/" if m.get("dbgate_tree_dirty") else "")
            + f"  {m['cpus']} CPUs: {m['cpu']}"
        )
        say(f"server: {m.get('postgres', '?')}")
        load = "/".join(f"{x:.1f}" for x in m["loadavg_start"])
        load_end = "/".join(f"{x:.1f}" for x in m.get("loadavg_end", ()))
        say(f"load average (1/5/15 min) at start {load}, at end {load_end}")
        say(
            f"client: {m.get('pgbench', '?')}; proxy reference: {m.get('pgbouncer', 'n/a')} (session mode)"
        )
        for name, why in self.unavailable().items():
            say(f"UNAVAILABLE {name}: {why}")
        if self.pgbench_runs:
            say("")
            say(
                f"pgbench: {a.clients} clients, {a.threads} threads, scale {a.scale}, -n; "
                f"median of {a.rounds} interleaved rounds x {a.seconds}s; TPS and average latency"
            )
            say(
                report.format_pgbench_table(
                    data["pgbench"]["summary"], self.unavailable(), self.args.targets
                )
            )
            say("")
            say(
                "proxy CPU (user+system, whole process group) per transaction, cores used, system share:"
            )
            say(report.format_cpu_table(data["pgbench"]["summary"], self.args.targets))
        if self.stream_runs:
            say("")
            say(
                f"streaming: {a.stream_rows:,} rows (int, text(32)) through asyncpg, "
                f"median of {a.stream_runs} interleaved runs"
            )
            say(
                report.format_streaming_table(
                    data["streaming"]["summary"], self.unavailable(), self.args.targets
                )
            )
            say(report.format_stream_cpu(data["streaming"]["summary"], self.args.targets))
        errors = self.run_errors()
        if errors:
            say("")
            say("failed runs (first error of each target and workload; all of them in the JSON):")
            for line in errors:
                say(f"  {line}")
        say("")
        if self.holds is not None:
            from bench.bench_holds import format_result

            say(format_result(self.holds))
        else:
            say(f"held-statement latency: {self.holds_error or 'skipped'}")
        if self.noisy is not None:
            from bench.bench_noisy import format_result as format_noisy

            say(format_noisy(self.noisy))
        else:
            say(f"noisy neighbour: {self.noisy_error or 'skipped'}")
        if self.large is not None:
            from bench.bench_large_values import format_result as format_large

            say(format_large(self.large))
        else:
            say(f"large values: {self.large_error or 'skipped'}")
        if self.workers is not None:
            from bench.bench_workers import format_result as format_workers

            say(format_workers(self.workers))
        else:
            say(f"proxy-bound workers scaling: {self.workers_error or 'skipped'}")
        if self.classifier is not None:
            say("classifier microbenchmarks (bench/bench_classify.py):")
            say(report.format_flat(self.classifier))
        else:
            say(f"classifier microbenchmarks: {self.classifier_error or 'skipped'}")
        if self.pii is not None:
            say("PII microbenchmarks (bench/bench_pii.py; rows/s and µs):")
            say(report.format_flat(self.pii))
        else:
            say(f"PII microbenchmarks: {self.pii_error or 'skipped'}")
        say("")
        if self.audit is not None:
            say(
                "audit (bench/bench_audit.py): targets >= 20,000 records/s written, >= 100,000 verified"
            )
            say(report.format_flat(self.audit))
        else:
            say(f"audit benchmarks: {self.audit_error or 'skipped'}")
        if self.web is not None:
            say(
                "approvers' page (bench/bench_web.py): targets queue of 1,000 < 200 ms server "
                "time; page decision to held statement p50 <= 50 ms, p99 <= 200 ms"
            )
            say(report.format_flat(self.web))
        else:
            say(f"approvers' page benchmark: {self.web_error or 'skipped'}")
        if self.profile:
            say("")
            say(self.profile.get("text", ""))
        say("=" * 100)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    status = 0
    with terminate_as_interrupt():
        try:
            try:
                bench.setup()
                if not args.no_pgbench:
                    bench.run_pgbench()
                if not args.no_streaming:
                    bench.run_streaming()
                if args.profile:
                    bench.run_profile()
                if not args.no_holds:
                    bench.run_holds()
                if not args.no_noisy and not args.no_pgbench:
                    bench.run_noisy()
                if not args.no_large:
                    bench.run_large()
                if not args.no_workers and not args.no_pgbench:
                    bench.run_workers()
            finally:
                say("stopping dbgate, PgBouncer and PostgreSQL ...")
                bench.stop_all()
            if not args.no_classifier:
                bench.run_classifier()
            if not args.no_pii:
                bench.run_pii()
            if not args.no_audit:
                bench.run_audit()
            if not args.no_web:
                bench.run_web()
        except KeyboardInterrupt:
            say("\ninterrupted: everything started has been stopped; partial results follow")
            status = 130
        bench.meta["loadavg_end"] = os.getloadavg()
        data = bench.results()
        WORK_ROOT.mkdir(parents=True, exist_ok=True)
        out = WORK_ROOT / f"results-{bench.stamp}.json"
        out.write_text(json.dumps(data, indent=2, default=str) + "\n")
        bench.print_report(data)
        say(f"results written to {out}")
    if status == 0 and "dbgate" in args.targets and "dbgate" in bench.unavailable():
        status = 1  # the table is printed, but a bench run that could not measure dbgate is not a success
    return status


if __name__ == "__main__":
    sys.exit(main())
