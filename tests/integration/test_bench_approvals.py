"""The decision-latency benchmark runs end to end (its numbers belong to bench/, not here)."""

from __future__ import annotations

from bench.bench_approvals import measure_decision_latency
from tests.integration.approvals_helpers import drop_database, fresh_database

DB = "dbgate_bench_approvals_test"


async def test_the_benchmark_measures_every_decision(pg_server) -> None:
    dsn = await fresh_database(pg_server, DB)
    try:
        result = await measure_decision_latency(dsn, n=5, warmup=1)
    finally:
        await drop_database(pg_server, DB)
    assert result["n"] == 5
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert set(result) >= {"p90_ms", "target_p50_ms", "target_p99_ms", "ok"}
