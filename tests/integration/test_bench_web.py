"""The page benchmark runs end to end (its numbers belong to bench/, not here)."""

from __future__ import annotations

from bench.bench_web import measure
from tests.integration.approvals_helpers import drop_database, fresh_database

DB = "dbgate_bench_web_test"


async def test_the_benchmark_renders_every_pending_request(pg_server) -> None:
    dsn = await fresh_database(pg_server, DB)
    try:
        result = await measure(dsn, pending=120, runs=3, decisions=3)
    finally:
        await drop_database(pg_server, DB)
    assert result["pending"] == 120 and result["queue_runs"] == 3 and result["decisions"] == 3
    assert 0 < result["queue"]["p50_ms"] <= result["queue"]["max_ms"]
    assert 0 < result["decision"]["p50_ms"] <= result["decision"]["max_ms"]
    assert set(result) >= {"target_queue_ms", "ok", "queue_bytes"}
