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
