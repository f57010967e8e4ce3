"""Turn two pytest runs into comparable per-test outcomes, counts and a bug list.

One outcome per test, so that "passes directly, fails through dbgate" is a simple
set difference: a test whose call passed but whose teardown (or one of whose
subtests) failed counts as failed, like a human reading the log would count it.
Precedence: failed > error > skipped > passed. "not run" marks tests that were
collected but never reported, i.e. the run was interrupted before reaching them.

junit XML (pytest ``--junitxml``, xunit1 family for the ``file`` attribute) is the
source of truth. When it is missing because the run had to be killed, the event
stream written by the suite's conftest stands in.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OUTCOMES = ("passed", "failed", "error", "skipped", "not run")
_RANK = {"passed": 0, "skipped": 1, "error": 2, "failed": 3}


@dataclass
class TestResult:
    """How one test ended, with the first line of its failure or skip reason."""

    outcome: str
    message: str = ""


@dataclass
class RunResult:
    """One run of the suite against one target."""

    name: str  # "direct" or "proxy"
    available: bool = True
    reason: str = ""  # why the run is unavailable or incomplete
    duration_s: float = 0.0
    exit_code: int | None = None
    interrupted: bool = False
    source: str = "junit"  # where the per-test outcomes came from
    tests: dict[str, TestResult] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # e.g. dbgate crashed, log errors

    def counts(self) -> dict[str, int]:
        c = dict.fromkeys(OUTCOMES, 0)
        for t in self.tests.values():
            c[t.outcome] += 1
        c["total"] = len(self.tests)
        return c

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["counts"] = self.counts() if self.available else None
        data["tests"] = {k: asdict(v) for k, v in sorted(self.tests.items())}
        return data


def _first_line(text: str | None) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""


def _nodeid(case: ET.Element) -> str:
    """pytest node id from an xunit1 testcase: file + class path + name."""
    file = case.get("file") or ""
    classname = case.get("classname") or ""
    name = case.get("name") or ""
    module = file[:-3].replace("/", ".") if file.endswith(".py") else ""
    if module and classname.startswith(module):
        classes = [p for p in classname[len(module) :].split(".") if p]
        return "::".join([file, *classes, name])
    return f"{classname}::{name}"


def _merge(tests: dict[str, TestResult], nodeid: str, outcome: str, message: str) -> None:
    old = tests.get(nodeid)
    if old is None or _RANK[outcome] > _RANK.get(old.outcome, -1):
        tests[nodeid] = TestResult(outcome, message)


def parse_junit(path: Path) -> dict[str, TestResult]:
    """Per-test outcomes from a pytest junit XML file."""
    tests: dict[str, TestResult] = {}
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        nodeid = _nodeid(case)
        outcome, message = "passed", ""
        for child in case:
            kind = {"failure": "failed", "error": "error", "skipped": "skipped"}.get(child.tag)
            if kind is None:
                continue
            if _RANK[kind] > _RANK[outcome]:
                outcome = kind
                message = _first_line(child.get("message") or child.text)
        _merge(tests, nodeid, outcome, message)
    return tests


def parse_events(path: Path) -> tuple[list[str], dict[str, TestResult]]:
    """Collected node ids and per-test outcomes from the conftest's event stream."""
    collected: list[str] = []
    tests: dict[str, TestResult] = {}
    if not path.exists():
        return collected, tests
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if ev.get("event") == "collected":
            # One event per pytest session; a resumed run collects a subset again.
            seen = set(collected)
            collected += [n for n in ev.get("nodeids") or [] if n not in seen]
        elif ev.get("event") == "report":
            outcome = ev.get("outcome", "failed")
            if outcome == "failed" and ev.get("when") in ("setup", "teardown"):
                outcome = "error"
            if outcome == "passed" and ev.get("when") != "call":
                continue  # setup/teardown passing says nothing about the test
            _merge(tests, ev["nodeid"], outcome, ev.get("message", ""))
    return collected, tests


def collect_outcomes(
    junits: list[Path], events: Path
) -> tuple[str, dict[str, TestResult], list[str]]:
    """Best available per-test outcomes of one run (one or more pytest sessions).

    Returns (source, outcomes, stray): junit files are read in session order, a
    later session filling in what an earlier one never reached; without junit
    the event stream stands in. Collected tests nobody reported are "not run".
    junit entries that are no collected test (pytest's "internal" pseudo-case
    after an INTERNALERROR) are returned as ``stray`` instead of being counted.
    """
    collected, from_events = parse_events(events)
    existing = [j for j in junits if j.exists()]
    tests: dict[str, TestResult] = {}
    if existing:
        source = "junit"
        for junit in existing:
            tests.update(parse_junit(junit))
        for nodeid, result in from_events.items():
            tests.setdefault(nodeid, result)  # reported, but the session died before its XML
    else:
        source, tests = "events", from_events
    stray: list[str] = []
    if collected:
        known = set(collected)
        stray = sorted(k for k in tests if k not in known)
        for k in stray:
            del tests[k]
    for nodeid in collected:
        tests.setdefault(nodeid, TestResult("not run"))
    return source, tests, stray


@dataclass
class Difference:
    """A test whose outcome differs between the direct run and the proxy run."""

    test: str
    direct: str
    proxy: str
    message: str  # first line of the proxy-side failure
    relay: str = ""  # outcome through the blind relay control, when that run was made
    recheck_runs: int = 0  # how many times the test was re-run on each side
    rechecks: dict[str, int] = field(default_factory=dict)  # side -> re-runs not passing


def proxy_only_failures(direct: RunResult, proxy: RunResult) -> list[Difference]:
    """Tests that pass directly but do not pass through dbgate: the bug list."""
    out = []
    for nodeid, d in sorted(direct.tests.items()):
        p = proxy.tests.get(nodeid)
        if d.outcome == "passed" and (p is None or p.outcome != "passed"):
            out.append(
                Difference(nodeid, d.outcome, p.outcome if p else "missing", p.message if p else "")
            )
    return out


def annotate_with_relay(diffs: list[Difference], relay: RunResult) -> None:
    """Record each difference's outcome through the blind relay (the control group)."""
    for d in diffs:
        r = relay.tests.get(d.test)
        d.relay = r.outcome if r else "missing"


def other_differences(direct: RunResult, proxy: RunResult) -> list[Difference]:
    """Every other outcome change (e.g. fails directly but passes through dbgate)."""
    out = []
    for nodeid in sorted(set(direct.tests) | set(proxy.tests)):
        d, p = direct.tests.get(nodeid), proxy.tests.get(nodeid)
        do, po = (d.outcome if d else "missing"), (p.outcome if p else "missing")
        if do != po and do != "passed":
            out.append(
                Difference(nodeid, do, po, (p.message if p else "") or (d.message if d else ""))
            )
    return out


def format_table(runs: list[RunResult]) -> str:
    """Counts side by side, one column per run."""
    width = 10
    header = f"{'':<10}" + "".join(f"{r.name:>{width}}" for r in runs)
    lines = [header]
    for key in (*OUTCOMES, "total"):
        row = f"{key:<10}"
        for r in runs:
            row += f"{(r.counts()[key] if r.available else '-')!s:>{width}}"
        lines.append(row)
    row = f"{'time':<10}"
    for r in runs:
        row += f"{(f'{r.duration_s:.0f}s' if r.available else '-'):>{width}}"
    lines.append(row)
    return "\n".join(lines)
