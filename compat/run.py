"""``make compat``: asyncpg's own test suite, directly against PostgreSQL and through dbgate.

The suite is the strongest wire-compatibility check we can get for free: hundreds
of tests written by the people who know the protocol from the client side, none
written with dbgate in mind. Running it twice, against identical fresh servers,
and diffing per test isolates what dbgate changes. Every test that passes directly
but not through the proxy is either a dbgate bug or a limitation that
docs/compat.md must justify.

Usage (``make compat COMPAT_ARGS=...`` passes the flags)::

    python -m compat.run                       # both runs, full suite
    python -m compat.run --only proxy tests/test_copy.py -k copy_to
    python -m compat.run --policy enforce      # with dbgate's rules active

Writes ``compat/.work/results.json`` (counts, per-test outcomes, the difference
list) and keeps each run's pytest log, junit XML and dbgate log under
``compat/.work/<run>/``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from compat.results import (
    Difference,
    RunResult,
    annotate_with_relay,
    collect_outcomes,
    format_table,
    other_differences,
    proxy_only_failures,
)
from compat.suite import DESELECTED, WORK_DIR, Suite, SuiteError, prepare_suite
from compat.targets import Endpoint, Proxy, TargetError, blind_relay, dbgate, postgres

RUNS = ("direct", "relay", "proxy")


def _log(msg: str) -> None:
    print(f"[compat] {msg}", flush=True)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m compat.run",
        description="Run asyncpg's test suite directly and through dbgate; compare per test.",
    )
    p.add_argument("--only", choices=RUNS, help="run only one side (default: direct and proxy)")
    p.add_argument(
        "--with-relay",
        action="store_true",
        help="also run through a blind TCP relay (control group for timing/buffering effects)",
    )
    p.add_argument(
        "--policy",
        choices=("off", "enforce"),
        default="off",
        help="dbgate policy mode for the proxy run (default off: pure wire compatibility; "
        "the suite creates roles and databases that the default rules would hold)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=60,
        help="per-test timeout in seconds (default 60; pytest-timeout gets 30 s more as backstop)",
    )
    p.add_argument(
        "--run-timeout",
        type=float,
        default=420,
        help="interrupt one suite run after this many seconds (default 420)",
    )
    p.add_argument(
        "--recheck",
        type=int,
        default=2,
        metavar="N",
        help="re-run each differing test N more times on each side to tell consistent "
        "failures from races (default 2; 0 disables)",
    )
    p.add_argument("--uvloop", action="store_true", help="run the suite on uvloop (USE_UVLOOP=1)")
    p.add_argument("-k", dest="keyword", help="pytest -k expression")
    p.add_argument("--fail-on-diff", action="store_true", help="exit 1 if any proxy-only failure")
    p.add_argument(
        "--json", type=Path, default=WORK_DIR / "results.json", help="where to write the summary"
    )
    p.add_argument(
        "tests",
        nargs="*",
        help="test paths or node ids inside the suite (e.g. tests/test_copy.py); default all",
    )
    return p.parse_args(argv)


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment minus inherited libpq variables, plus ``extra``.

    A PGSSLMODE or PGOPTIONS left in the caller's shell would silently change
    what the suite tests; the two runs must differ only in the endpoint.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.pop("USE_UVLOOP", None)
    env.update(extra)
    return env


def _count_reports(events: Path) -> tuple[int, int]:
    """(tests finished, tests not passed) so far, from the event stream."""
    done, bad = 0, 0
    try:
        text = events.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return 0, 0
    for line in text.splitlines():
        if '"event": "report"' not in line:
            continue
        with contextlib.suppress(json.JSONDecodeError):
            ev = json.loads(line)
            if ev.get("subtest"):
                continue
            if ev.get("when") == "call" or (
                ev.get("when") == "setup" and ev.get("outcome") != "passed"
            ):
                done += 1
            if ev.get("outcome") == "failed":
                bad += 1
    return done, bad


def _interrupt(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT lets pytest write junit XML for what ran; SIGKILL if it does not stop."""
    for sig, wait in ((signal.SIGINT, 30.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _pytest_command(
    suite: Suite, args: argparse.Namespace, junit: Path, tests: list[str] | None
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-c",
        str(suite.ini),
        "--rootdir",
        str(suite.root),
        f"--junitxml={junit}",
        # Backstop only: the suite's own asyncio-level timeout (COMPAT_TEST_TIMEOUT,
        # see suite_conftest.py) fails a hanging test cleanly first. pytest-timeout's
        # SIGALRM can land inside pytest's traceback formatting, which on CPython
        # 3.11 ends the whole session with an INTERNALERROR.
        f"--timeout={args.timeout + 30:g}",
        "-q",
        "-rfE",
    ]
    for nodeid in DESELECTED:
        cmd += ["--deselect", nodeid]
    if tests is not None:
        cmd += tests  # exact node ids: -k would only narrow them further
    else:
        if args.keyword:
            cmd += ["-k", args.keyword]
        cmd += args.tests or ["tests"]
    return cmd


_MAX_SESSIONS = 4


def run_suite(
    name: str,
    suite: Suite,
    endpoint: Endpoint,
    args: argparse.Namespace,
    server_version: str,
    proxy: Proxy | None = None,
    tests: list[str] | None = None,
    quiet: bool = False,
) -> RunResult:
    """Run pytest on the suite against ``endpoint``; never raises for test failures.

    ``server_version`` (asked of the server directly) becomes ``PGVERSION``, and the
    installed driver's version ``ASYNCPG_VERSION``: with both set, the suite's
    environment tests run instead of skipping, and through dbgate they check that
    the proxy relays the real server_version and that the installed wheel is tested.

    If pytest itself dies (INTERNALERROR, a crash) before reaching every collected
    test, a new session runs the remaining ones, up to ``_MAX_SESSIONS`` in all,
    so one broken test cannot hide the results of all later ones.
    """
    run_dir = WORK_DIR / name
    run_dir.mkdir(parents=True, exist_ok=True)
    events, log_path = run_dir / "events.jsonl", run_dir / "pytest.log"
    for old in [events, *run_dir.glob("junit*.xml")]:
        old.unlink(missing_ok=True)
    env = _clean_env(
        {
            **endpoint.pg_env(),
            "PGVERSION": server_version,
            "ASYNCPG_VERSION": suite.asyncpg_version,
            "COMPAT_EVENTS": str(events),
            "COMPAT_TEST_TIMEOUT": f"{args.timeout:g}",
            "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
        }
    )
    if args.uvloop:
        env["USE_UVLOOP"] = "1"

    result = RunResult(name=name)
    if not quiet:
        _log(f"{name}: running asyncpg's suite against {endpoint.host}:{endpoint.port}")
        _log(f"{name}: log: {log_path}")
    started = time.monotonic()
    junits: list[Path] = []
    selection = tests
    with open(log_path, "wb") as log:
        for session in range(1, _MAX_SESSIONS + 1):
            junit = run_dir / ("junit.xml" if session == 1 else f"junit-{session}.xml")
            junits.append(junit)
            proc = subprocess.Popen(
                _pytest_command(suite, args, junit, selection),
                cwd=suite.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: an interrupt reaches every child
            )
            _supervise(name, proc, started, args, result, events, proxy, quiet)
            result.exit_code = proc.returncode
            # 0: all passed, 1: some failed, 5: nothing collected. Anything else means
            # pytest did not finish the session normally.
            if result.interrupted or proc.returncode in (0, 1, 5):
                break
            _, partial, _ = collect_outcomes(junits, events)
            pending = [k for k, v in partial.items() if v.outcome == "not run"]
            if not pending:
                break
            note = (
                f"pytest session {session} ended with exit code {proc.returncode} "
                f"before {len(pending)} tests; running them in a new session"
            )
            result.notes.append(note)
            _log(f"{name}: {note}")
            log.flush()
            selection = pending
    result.duration_s = round(time.monotonic() - started, 1)
    result.source, result.tests, stray = collect_outcomes(junits, events)
    result.notes += [f"junit entry outside the collected tests: {s}" for s in stray]
    if not result.tests:
        result.available = False
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        result.reason = (
            result.reason or f"pytest exited {result.exit_code} without results:\n{tail}"
        )
    if proxy is not None:
        if not proxy.alive() and not any("dbgate exited" in n for n in result.notes):
            result.notes.append(
                f"dbgate exited with code {proxy.process.returncode} during the run"
            )
        result.notes += _proxy_log_findings(proxy.log_file)
    counts = result.counts()
    _log(
        f"{name}: {counts['passed']} passed, {counts['failed']} failed, {counts['error']} errors, "
        f"{counts['skipped']} skipped, {counts['not run']} not run in {result.duration_s:.0f}s"
    )
    return result


def _supervise(
    name: str,
    proc: subprocess.Popen[bytes],
    started: float,
    args: argparse.Namespace,
    result: RunResult,
    events: Path,
    proxy: Proxy | None,
    quiet: bool,
) -> None:
    """Wait for one pytest session: progress lines, run deadline, dbgate liveness."""
    try:
        next_beat = time.monotonic() + 20
        while proc.poll() is None:
            now = time.monotonic()
            if now - started > args.run_timeout:
                result.interrupted = True
                result.reason = f"interrupted after {args.run_timeout:.0f}s (--run-timeout)"
                _log(f"{name}: {result.reason}")
                _interrupt(proc)
                break
            if proxy is not None and not proxy.alive():
                note = f"dbgate exited with code {proxy.process.returncode} during the run"
                if note not in result.notes:
                    result.notes.append(note)
                    _log(f"{name}: {note}")
            if now >= next_beat and not quiet:
                done, bad = _count_reports(events)
                _log(f"{name}: {done} tests done, {bad} not passing, {now - started:.0f}s")
                next_beat = now + 20
            time.sleep(0.5)
    finally:
        if proc.poll() is None:  # the runner itself is being interrupted
            _interrupt(proc)


_LOG_PROBLEM = re.compile(r"\b(ERROR|CRITICAL|Traceback)\b")


def _proxy_log_findings(log_file: Path, limit: int = 15) -> list[str]:
    """Distinct error lines dbgate logged during the run: leads for the bug analysis."""
    seen: dict[str, int] = {}
    try:
        lines = log_file.read_text(errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        if not _LOG_PROBLEM.search(line):
            continue
        # Drop the timestamp so that repeats of one problem collapse into one entry.
        key = re.sub(r"^\S+ \S+ ", "", line).strip()[:240]
        seen[key] = seen.get(key, 0) + 1
    findings = [f"dbgate log ({n}x): {k}" for k, n in seen.items()]
    if len(findings) > limit:
        findings = [*findings[:limit], f"... {len(findings) - limit} more distinct lines"]
    return findings


@dataclass(frozen=True)
class _Target:
    endpoint: Endpoint
    server_version: str
    proxy: Proxy | None = None


@contextlib.contextmanager
def _target(kind: str, args: argparse.Namespace, label: str) -> Iterator[_Target]:
    """A fresh server, plus the hop ``kind`` asks for, for as long as the block runs."""
    with postgres(WORK_DIR / label / "pg") as server:
        _log(f"{label}: PostgreSQL {server.version} on port {server.endpoint.port}")
        if kind == "direct":
            yield _Target(server.endpoint, server.version)
        elif kind == "relay":
            with blind_relay(server.endpoint) as relay:
                yield _Target(relay, server.version)
        else:
            with dbgate(WORK_DIR / label, server.endpoint, policy=args.policy) as proxy:
                _log(f"{label}: dbgate (policy {args.policy}) on port {proxy.endpoint.port}")
                yield _Target(proxy.endpoint, server.version, proxy)


def _full_run(kind: str, suite: Suite, args: argparse.Namespace) -> tuple[RunResult, str]:
    try:
        with _target(kind, args, kind) as t:
            result = run_suite(kind, suite, t.endpoint, args, t.server_version, t.proxy)
            return result, t.server_version
    except TargetError as e:
        return RunResult(kind, available=False, reason=str(e)), ""


def _recheck(
    suite: Suite, args: argparse.Namespace, diffs: list[Difference], kinds: tuple[str, ...]
) -> None:
    """Re-run only the differing tests ``args.recheck`` times on each side.

    A single run cannot tell a consistent failure from a race that the extra hop
    merely makes likelier; the counts recorded on each difference can.
    """
    nodeids = [d.test for d in diffs]
    for kind in kinds:
        label = f"{kind}-recheck"
        try:
            with _target(kind, args, label) as t:
                for i in range(args.recheck):
                    r = run_suite(
                        f"{label}{i + 1}",
                        suite,
                        t.endpoint,
                        args,
                        t.server_version,
                        t.proxy,
                        tests=nodeids,
                        quiet=True,
                    )
                    for d in diffs:
                        outcome = r.tests.get(d.test)
                        failed = outcome is None or outcome.outcome != "passed"
                        d.rechecks[kind] = d.rechecks.get(kind, 0) + int(failed)
        except TargetError as e:
            _log(f"{label}: unavailable: {e}")
    for d in diffs:
        d.recheck_runs = args.recheck


def _annotation(d: Difference) -> str:
    """' (blind relay: failed; rechecks failed: proxy 2/2, direct 0/2)' style context."""
    parts = []
    if d.relay:
        parts.append(f"blind relay: {d.relay}")
    if d.recheck_runs:
        counts = ", ".join(f"{k} {n}/{d.recheck_runs}" for k, n in d.rechecks.items())
        parts.append(f"rechecks failed: {counts}")
    return f" ({'; '.join(parts)})" if parts else ""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into KeyboardInterrupt so every context manager stops what it started.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the requested sides, compare, recheck, report. Exit 1 if a side could not run."""
    args = _parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    started_at = datetime.now(UTC)
    try:
        suite = prepare_suite()
    except SuiteError as e:
        _log(str(e))
        return 1
    _log(f"asyncpg {suite.asyncpg_version} test suite prepared in {suite.root}")

    runs: dict[str, RunResult] = {}
    server_version = ""
    for name in RUNS:
        if args.only and args.only != name:
            continue
        if name == "relay" and not (args.with_relay or args.only == "relay"):
            continue
        runs[name], version = _full_run(name, suite, args)
        server_version = server_version or version
        if not runs[name].available:
            _log(f"{name}: unavailable: {runs[name].reason}")

    bugs: list[Difference] = []
    others: list[Difference] = []
    comparable = all(name in runs and runs[name].available for name in ("direct", "proxy"))
    with_relay = "relay" in runs and runs["relay"].available
    if comparable:
        bugs = proxy_only_failures(runs["direct"], runs["proxy"])
        others = other_differences(runs["direct"], runs["proxy"])
        if with_relay:
            annotate_with_relay(bugs, runs["relay"])
        if bugs and args.recheck > 0:
            _log(f"rechecking {len(bugs)} differing tests {args.recheck}x on each side")
            _recheck(
                suite,
                args,
                bugs,
                ("direct", "relay", "proxy") if with_relay else ("direct", "proxy"),
            )

    summary = {
        "asyncpg_version": suite.asyncpg_version,
        "server_version": server_version,
        "python": platform.python_version(),
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round((datetime.now(UTC) - started_at).total_seconds(), 1),
        "options": {
            "policy": args.policy,
            "per_test_timeout_s": args.timeout,
            "run_timeout_s": args.run_timeout,
            "uvloop": args.uvloop,
            "recheck": args.recheck,
            "keyword": args.keyword,
            "tests": args.tests or ["tests"],
        },
        "deselected": DESELECTED,
        "runs": {name: r.to_json() for name, r in runs.items()},
        "proxy_only_failures": [asdict(d) for d in bugs],
        "other_differences": [asdict(d) for d in others],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2) + "\n")

    print()
    print(f"asyncpg {suite.asyncpg_version} test suite, PostgreSQL {server_version or '?'}")
    print(format_table(list(runs.values())))
    for r in runs.values():
        if not r.available:
            print(f"\n{r.name}: unavailable — {r.reason.splitlines()[0] if r.reason else '?'}")
        elif r.interrupted:
            print(f"\n{r.name}: {r.reason}")
        for note in r.notes:
            print(f"{r.name}: {note}")
    if comparable:
        print(f"\nPass directly, not through dbgate: {len(bugs)}")
        for d in bugs:
            print(f"  {d.test}  [{d.proxy}]{_annotation(d)} {d.message}")
        if others:
            print(f"\nOther differences: {len(others)}")
            for d in others:
                print(f"  {d.test}  direct={d.direct} proxy={d.proxy}  {d.message}")
    print(f"\nSummary: {args.json}")

    if any(not r.available for r in runs.values()):
        return 1
    if args.fail_on_diff and bugs:
        return 1
    return 0


def _entry() -> int:
    """``main`` with interrupts reported as such: every context manager has already
    stopped what it started by the time KeyboardInterrupt reaches this frame."""
    try:
        return main()
    except KeyboardInterrupt:
        _log("interrupted; servers, dbgate and pytest were stopped")
        return 130


if __name__ == "__main__":
    sys.exit(_entry())
