"""The benchmark report's ratios: each one compares what it says it compares."""

from __future__ import annotations

from bench.report import _ratios


def test_audit_on_off_compares_with_the_same_state_features_when_measured() -> None:
    tps = {"direct": 100.0, "pgbouncer": 80.0, "dbgate": 50.0, "dbgate-audit": 36.0}
    assert _ratios(tps)["audit on/off"] == 36.0 / 50.0  # no state-only run: plain dbgate
    assert "state on/off" not in _ratios(tps)
    ratios = _ratios({**tps, "dbgate-noaudit": 40.0})
    assert ratios["audit on/off"] == 36.0 / 40.0
    assert ratios["state on/off"] == 40.0 / 50.0
    assert _ratios({**tps, "dbgate-noaudit": None})["audit on/off"] is None


def test_the_approval_service_alone_is_compared_with_dbgate_and_pgbouncer() -> None:
    tps = {"direct": 100.0, "pgbouncer": 80.0, "dbgate": 60.0, "dbgate-approvals": 58.0}
    ratios = _ratios(tps)
    assert ratios["approvals on/off"] == 58.0 / 60.0
    assert ratios["approvals/pgbouncer"] == 58.0 / 80.0
    assert "approvals on/off" not in _ratios(
        {k: v for k, v in tps.items() if k != "dbgate-approvals"}
    )


def test_the_approvals_target_has_no_window_on_pgbench_tables() -> None:
    from bench.dbgate_target import APPROVALS_ONLY_RULES, BENCH_RULES

    assert "max_rows_per_window: 1000000000" in BENCH_RULES
    assert "max_rows_per_window: 1000000000" not in APPROVALS_ONLY_RULES
    assert APPROVALS_ONLY_RULES.count("max_rows: 1000\n") == 1  # the row limit stays
