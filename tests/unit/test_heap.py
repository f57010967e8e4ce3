"""The C heap setting of a serving process (dbgate/heap.py), by what it changes: the
page faults of a relay-like churn of large reads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dbgate import heap

# Three 200 KiB buffers alive at once, then freed, again and again: what a relay does
# with the reads of a large result. Prints the minor page faults it took.
_CHURN = """
import resource, sys
from dbgate.heap import tune_heap
tuned = tune_heap() if sys.argv[1] == "tune" else False
blocks = []
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(300):
    blocks = [bytes([i % 251]) * 200_000 for _ in range(3)]
    blocks = []
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


def _churn(mode: str, **env: str) -> tuple[bool, int]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", _CHURN, mode],
        env={**environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_large_reads_reuse_the_heap_instead_of_faulting_in_fresh_pages() -> None:
    tuned, faults = _churn("tune")
    untuned, default_faults = _churn("default")
    assert tuned and not untuned
    # each round of the default heap gives its pages back and faults them in again
    assert default_faults > 300 * 40
    assert faults < default_faults / 10


def test_an_operators_malloc_settings_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    tuned, _ = _churn("tune", MALLOC_TRIM_THRESHOLD_="131072")
    assert not tuned
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert heap.tune_heap() is False
