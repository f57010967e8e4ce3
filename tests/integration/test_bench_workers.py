"""The proxy-bound workers benchmark runs, and its statements are cold (its numbers
belong to bench/, not here)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import uvloop

from bench import pgbench
from bench.bench_workers import STATEMENT, render, run_workers
from bench.dbgate_target import Dbgate, create_database
from bench.targets import Target
from dbgate.policy.classify import cache_info, classify
from tests.integration.holds.harness import drop_database

DB = "bench_workers_smoke"


def test_every_statement_of_the_script_is_new_to_the_classifier() -> None:
    before = cache_info()["cold"]
    for tag in range(1, 21):
        classify(render(aid=7, tag=tag))
    assert cache_info()["cold"] - before == 20  # the alias changes the shape each time
    again = cache_info()["cold"]
    classify(render(aid=8, tag=1))  # a new aid alone is only a new literal: cached
    assert cache_info()["cold"] == again
    assert render(aid=8, tag=1) == "SELECT abalance AS a_1 FROM pgbench_accounts WHERE aid = 8"


def test_the_benchmark_measures_one_and_two_workers(pg_server: Any, tmp_path: Path) -> None:
    server = Target(
        "direct", pg_server.host, pg_server.port, pg_server.user, pg_server.password, "postgres"
    )
    uvloop.run(create_database(server, DB))
    gates: list[Dbgate] = []
    try:
        binary = pgbench.find_pgbench()
        pgbench.initialize(binary, dataclasses.replace(server, dbname=DB), 1)
        for n in (1, 2):
            gate = Dbgate(
                tmp_path / f"w{n}",
                pg_server.host,
                pg_server.port,
                pg_server.user,
                pg_server.password,
                "smoke-pw",
                DB,
                extra_args=["--workers", str(n)],
                name=f"dbgate-w{n}",
            )
            gates.append(gate)
            gate.wait_ready(timeout=120)
        result = run_workers(
            binary,
            gates[0].target,
            gates[1].target,
            tmp_path / "runs",
            seconds=1,
            rounds=1,
            clients=4,
            scale=1,
        )
    finally:
        for gate in gates:
            gate.stop()
        drop_database(pg_server.dsn("postgres"), DB)
    assert result["statement"] == STATEMENT
    assert result["failed"] == 0
    for side in ("w1", "w2"):
        assert result[side]["tps"] > 0
        assert result[side]["proxy_cpu_us_per_txn"] > 0
        assert len(result["runs"][side]) == 1
    assert result["ratio"] == round(result["w2"]["tps"] / result["w1"]["tps"], 3)
