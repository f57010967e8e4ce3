"""dbgate.metrics: the tallies reach Prometheus, totals feed the log summary, and
multiprocess mode sums the workers (run in real subprocesses: the mode is a
process-wide switch in prometheus-client)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dbgate import metrics


def _samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def fresh() -> None:
    metrics.init(version="test")


def test_statement_tallies_are_flushed_into_counters(fresh: None) -> None:
    for _ in range(3):
        metrics.statement("read", "allow")
    metrics.statement("dump", "hold")
    body, ctype = metrics.exposition()
    assert ctype.startswith("text/plain")
    s = _samples(body)
    assert s[("dbgate_statements_total", (("category", "read"), ("decision", "allow")))] == 3
    assert s[("dbgate_statements_total", (("category", "dump"), ("decision", "hold")))] == 1
    metrics.statement("read", "allow")
    s = _samples(metrics.exposition()[0])
    assert s[("dbgate_statements_total", (("category", "read"), ("decision", "allow")))] == 4


def test_every_named_metric_is_exposed(fresh: None) -> None:
    metrics.bytes_from_client(100)
    metrics.bytes_from_upstream(2500)
    metrics.tokenized("email", 7)
    metrics.session_opened()
    metrics.session_opened()
    metrics.session_closed()
    metrics.hold_started()
    metrics.hold_finished("approved", 42.0)
    metrics.hold_started()
    metrics.approvals_pending(5)
    metrics.budget_hit("agent", "max_rows")
    metrics.audit_queue(12, 0.5)
    metrics.upstream_error("connect")
    metrics.connection_refused("too_many_clients")
    metrics.client_wait_started()
    metrics.log_records_dropped(3)
    s = _samples(metrics.exposition()[0])
    assert s[("dbgate_relay_bytes_total", (("direction", "client"),))] == 100
    assert s[("dbgate_relay_bytes_total", (("direction", "upstream"),))] == 2500
    assert s[("dbgate_tokenized_values_total", (("kind", "email"),))] == 7
    assert s[("dbgate_sessions", ())] == 1
    assert s[("dbgate_sessions_opened_total", ())] == 2
    assert s[("dbgate_sessions_closed_total", ())] == 1
    assert s[("dbgate_holds_waiting", ())] == 1
    assert s[("dbgate_hold_seconds_count", (("outcome", "approved"),))] == 1
    assert s[("dbgate_hold_seconds_bucket", (("le", "30.0"), ("outcome", "approved")))] == 0
    assert s[("dbgate_hold_seconds_bucket", (("le", "60.0"), ("outcome", "approved")))] == 1
    assert s[("dbgate_approvals_pending", ())] == 5
    assert s[("dbgate_budget_hits_total", (("identity", "agent"), ("limit", "max_rows")))] == 1
    assert s[("dbgate_audit_queue_depth", ())] == 12
    assert s[("dbgate_audit_lag_seconds", ())] == 0.5
    assert s[("dbgate_upstream_errors_total", (("kind", "connect"),))] == 1
    assert s[("dbgate_connections_refused_total", (("reason", "too_many_clients"),))] == 1
    assert s[("dbgate_clients_waiting", ())] == 1
    assert s[("dbgate_log_records_dropped_total", ())] == 3
    assert s[("dbgate_build_info", (("version", "test"),))] == 1
    assert ("process_cpu_seconds_total", ()) in s  # single-process: process metrics too


def test_snapshot_is_cumulative_per_process(fresh: None) -> None:
    metrics.statement("read", "allow")
    metrics.statement("admin", "deny")
    metrics.statement("admin", "deny")
    metrics.session_opened()
    metrics.connection_refused("auth")
    metrics.hold_started()
    metrics.hold_finished("rejected", 3.0)
    snap = metrics.snapshot()
    assert snap.statements == {"allow": 1, "deny": 2}
    assert snap.sessions_opened == 1 and snap.sessions_open == 1
    assert snap.connections_refused == 1
    assert snap.holds_finished == {"rejected": 1} and snap.holds_waiting == 0
    metrics.statement("read", "allow")
    assert metrics.snapshot().statements == {"allow": 2, "deny": 2}


def test_init_resets(fresh: None) -> None:
    metrics.statement("read", "allow")
    metrics.init(version="again")
    s = _samples(metrics.exposition()[0])
    assert not any(name == "dbgate_statements_total" for name, _ in s)


_WORKER = r"""
import json, os, sys
from dbgate import metrics
metrics.init(multiprocess_dir=sys.argv[1])
n = int(sys.argv[2])
for _ in range(n):
    metrics.statement("read", "allow")
metrics.bytes_from_upstream(1000)
metrics.session_opened()
metrics.flush()
print(os.getpid())
"""

_SCRAPER = r"""
import sys
from dbgate import metrics
metrics.init(multiprocess_dir=sys.argv[1])
for pid in sys.argv[2:]:
    metrics.worker_exited(int(pid))
sys.stdout.write(metrics.exposition()[0].decode())
"""


def _py(code: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True
    )
    return done.stdout


def test_multiprocess_mode_sums_the_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # prepare_multiprocess_dir exports the directory for workers: undone after the test.
    monkeypatch.setenv(metrics.ENV_MULTIPROC, "")
    d = metrics.prepare_multiprocess_dir(tmp_path / "mp")
    (d / "counter_99999.db").write_bytes(b"stale from an earlier run")
    d = metrics.prepare_multiprocess_dir(tmp_path / "mp")  # empties the directory
    assert not list(d.glob("*.db"))
    pid1 = _py(_WORKER, str(d), "3").strip()
    pid2 = _py(_WORKER, str(d), "4").strip()
    s = _samples(_py(_SCRAPER, str(d)).encode())
    assert s[("dbgate_statements_total", (("category", "read"), ("decision", "allow")))] == 7
    assert s[("dbgate_relay_bytes_total", (("direction", "upstream"),))] == 2000
    assert s[("dbgate_sessions", ())] == 2  # both workers' files are still "live"
    # The parent learns that worker 1 exited: its sessions stop counting, its
    # counters do not (a counter never goes down).
    s = _samples(_py(_SCRAPER, str(d), pid1).encode())
    assert s[("dbgate_sessions", ())] == 1
    assert s[("dbgate_statements_total", (("category", "read"), ("decision", "allow")))] == 7
    assert pid1 != pid2  # two real processes


async def test_flusher_flushes_on_stop(fresh: None) -> None:
    flusher = metrics.Flusher(interval=3600)
    flusher.start()
    metrics.statement("write", "allow")
    await flusher.stop()
    fam = metrics._families()
    assert fam.statements.labels("write", "allow")._value.get() == 1
