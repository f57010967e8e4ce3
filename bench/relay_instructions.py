"""Instructions of relay work per transaction, counted by valgrind (deterministic).

Timings of the replay (:mod:`bench.relay_replay`) move with whatever else runs on the
machine; instruction counts do not. This runs the replay under ``valgrind
--tool=callgrind`` twice per mode, with N and 3N transactions, and reports the
difference divided by 2N: the instructions one more transaction costs, with start-up
and warm-up cancelled out. Slow (valgrind runs Python ~50x slower): a minute or two.

Run as ``python -m bench.relay_instructions [--observer | --audit] [--transactions N]``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_TOTAL = re.compile(r"Collected : (\d+)")


def _count(
    mode: str, transactions: int, observer: bool, cwd: Path, audit: bool = False, script: str = ""
) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "bench.relay_replay",
            "--mode",
            mode,
            "--runs",
            "1",
            "--transactions",
            str(transactions),
        ]
        if observer:
            cmd.append("--observer")
        if audit:
            cmd.append("--audit")
        if script:
            cmd += ["--script", script]
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=True)
        found = _TOTAL.search(proc.stderr)
        if found is None:
            raise RuntimeError(f"no instruction total in valgrind's output: {proc.stderr[-500:]}")
        return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observer", action="store_true")
    parser.add_argument("--audit", action="store_true")
    parser.add_argument("--script", choices=("select", "tpcb"), default="select")
    parser.add_argument("--transactions", type=int, default=2000)
    parser.add_argument("--mode", action="append", choices=("simple", "extended", "prepared"))
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    cwd = Path(__file__).resolve().parent.parent
    n = args.transactions
    for mode in args.mode or ("simple", "extended", "prepared"):
        small = _count(mode, n, args.observer, cwd, args.audit, args.script)
        large = _count(mode, 3 * n, args.observer, cwd, args.audit, args.script)
        print(f"{mode:9s} {(large - small) / (2 * n):10,.0f} instructions/txn", flush=True)


if __name__ == "__main__":
    main()
