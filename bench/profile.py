"""Sampling profile of a running dbgate under pgbench load (py-spy).

"Measure with a profiler before optimizing": this records the dbgate process
while pgbench drives it, then ranks functions by *self* time (where the CPU
actually is) and by *inclusive* time (which call path leads there). py-spy is a
sampling profiler that attaches from outside, so dbgate runs unmodified and the
overhead stays small; it is a developer tool, not a project dependency: install
it with ``.venv/bin/pip install py-spy`` and run ``make bench BENCH_ARGS="--profile 15"``.

Idle samples (the event loop waiting in epoll) are left out by py-spy, so the
percentages are of the time dbgate was on the CPU; ``busy`` compares the number
of samples with what a fully busy core would have given, which tells whether
dbgate itself is the bottleneck.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.procs import run_checked
from bench.targets import Target

RATE = 250  # samples per second
_LOCATION = re.compile(r"^(?P<func>.*) \((?P<file>[^():]+)(?::\d+)?\)$")


def find_py_spy() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else None


def _short(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py)``: aggregate over lines."""
    m = _LOCATION.match(frame.strip())
    if not m:
        return frame.strip()
    file = m.group("file")
    marker = "site-packages/"
    if marker in file:
        file = file.split(marker, 1)[1]
    elif "/dbgate/" in file:
        file = "dbgate/" + file.rsplit("/dbgate/", 1)[1]
    return f"{m.group('func')} ({file})"


def parse_collapsed(text: str) -> tuple[int, Counter[str], Counter[str]]:
    """(total samples, self samples per function, inclusive samples per function)."""
    total = 0
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";") if f.strip()]
        # py-spy puts the thread name first; it is not a function.
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        self_time[frames[-1]] += count
        for f in set(frames):
            inclusive[f] += count
    return total, self_time, inclusive


def _format(
    total: int,
    seconds: int,
    self_time: Counter[str],
    inclusive: Counter[str],
    mode: str,
    raw: Path,
    top: int = 25,
) -> str:
    busy = total / (seconds * RATE) if seconds else 0.0
    lines = [
        f"py-spy profile of dbgate under pgbench {mode}: {total} samples in {seconds}s "
        f"(dbgate busy {busy:.0%} of one core); raw stacks: {raw}",
        "",
        f"top {top} by self time:",
    ]
    for func, n in self_time.most_common(top):
        lines.append(f"  {100 * n / total:5.1f}%  {func}")
    lines += ["", f"top {top} by inclusive time:"]
    for func, n in inclusive.most_common(top):
        lines.append(f"  {100 * n / total:5.1f}%  {func}")
    return "\n".join(lines)


def profile_dbgate(
    pid: int,
    pgbench_bin: str,
    target: Target,
    mode: str,
    seconds: int,
    clients: int,
    threads: int,
    out_dir: Path,
    native: bool = False,
    script: str = "select",
) -> dict[str, Any]:
    """Record ``pid`` for ``seconds`` while pgbench runs ``script`` (``select``: -S,
    ``tpcb``: the default TPC-B-like transaction) against ``target``."""
    py_spy = find_py_spy()
    if py_spy is None:
        return {"text": "profile skipped: py-spy not found (.venv/bin/pip install py-spy)"}
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / f"dbgate-{mode}-{script}{'-native' if native else ''}.collapsed"
    load = subprocess.Popen(
        [
            pgbench_bin,
            "-n",
            *(["-S"] if script == "select" else []),
            "-M",
            mode,
            "-c",
            str(clients),
            "-j",
            str(threads),
            "-T",
            str(seconds + 4),
        ],
        env=target.libpq_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        time.sleep(2)  # connections established, steady state
        print(f"profiling dbgate (pid {pid}) for {seconds}s with py-spy ...", flush=True)
        argv = [py_spy, "record", "-p", str(pid), "-d", str(seconds), "-r", str(RATE)]
        argv += ["-f", "raw", "-o", str(raw), *(["--native"] if native else [])]
        run_checked(argv, timeout=seconds + 60)
    except RuntimeError as e:
        return {"text": f"profile failed: {e}"}
    finally:
        try:
            load.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            load.kill()
            load.wait()
    total, self_time, inclusive = parse_collapsed(raw.read_text())
    if total == 0:
        return {"text": f"profile recorded no samples ({raw})"}
    label = f"{'-S' if script == 'select' else 'TPC-B'} -M {mode}"
    return {
        "raw": str(raw),
        "mode": mode,
        "seconds": seconds,
        "samples": total,
        "busy_fraction": total / (seconds * RATE),
        "top_self": [(f, n / total) for f, n in self_time.most_common(40)],
        "top_inclusive": [(f, n / total) for f, n in inclusive.most_common(40)],
        "text": _format(total, seconds, self_time, inclusive, label, raw),
    }
