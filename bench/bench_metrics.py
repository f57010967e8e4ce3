"""What a metric costs on the hot path: dbgate's tally functions vs prometheus-client.

dbgate counts every statement, relayed chunk and tokenized value. The target is
"well under a microsecond" per call. This prints ns per call for

* ``metrics.statement(category, decision)`` and ``metrics.bytes_from_client(n)``
  (dbgate's tallies, flushed into prometheus-client later);
* a bound prometheus-client counter child ``.inc()``, single-process and multiprocess;
* ``Counter.labels(...).inc()`` (what a naive call site would do);

each the best of five runs of 200,000 calls, in fresh subprocesses (multiprocess
mode is a process-wide switch in prometheus-client).

Run: ``python -m bench.bench_metrics`` (prints JSON).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

N = 200_000
ROUNDS = 5

_CHILD = r"""
import json, sys, timeit
mode, n, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
from dbgate import metrics
if mode == "multiprocess":
    metrics.init(multiprocess_dir=sys.argv[4])
else:
    metrics.init()
from prometheus_client import Counter, CollectorRegistry
c = Counter("bench_c", "x", ["a", "b"], registry=CollectorRegistry())
child = c.labels("read", "allow")
stmt = metrics.statement
relay = metrics.bytes_from_client
cases = {
    "dbgate_statement": lambda: stmt("read", "allow"),
    "dbgate_bytes_from_client": lambda: relay(512),
    "prometheus_child_inc": child.inc,
    "prometheus_labels_inc": lambda: c.labels("read", "allow").inc(),
    "empty_lambda": lambda: None,
}
out = {}
for name, fn in cases.items():
    best = min(timeit.repeat(fn, number=n, repeat=rounds)) / n
    out[name] = round(best * 1e9, 1)
metrics.flush()
print(json.dumps(out))
"""


def _run(mode: str, directory: str = "") -> dict[str, float]:
    args = [sys.executable, "-c", _CHILD, mode, str(N), str(ROUNDS)]
    if directory:
        args.append(directory)
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def run() -> dict[str, dict[str, float]]:
    """ns per call, by mode and case (each includes the ~30 ns of calling a lambda)."""
    with tempfile.TemporaryDirectory() as d:
        return {"single_process": _run("single"), "multiprocess": _run("multiprocess", d)}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
