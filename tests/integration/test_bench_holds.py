"""The end-to-end hold benchmark runs (its numbers belong to bench/, not here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.bench_holds import DATA_DB, STATE_DB, run_end_to_end
from bench.targets import Target
from tests.integration.holds.harness import drop_database


def test_the_benchmark_times_every_decision(pg_server: Any, tmp_path: Path) -> None:
    server = Target(
        "direct", pg_server.host, pg_server.port, pg_server.user, pg_server.password, "postgres"
    )
    try:
        result = run_end_to_end(server, tmp_path, n=3, warmup=1)
    finally:
        for db in (DATA_DB, STATE_DB):
            drop_database(pg_server.dsn("postgres"), db)
    assert result["n"] == 3
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert set(result) >= {"p90_ms", "target_p50_ms", "target_p99_ms", "ok"}
