"""The approvals part of the config: keys, validation, and the service built from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbgate.approvals.service import PgApprovalService
from dbgate.config import Config, ConfigError, load_config

BASE = """
state:
  dsn: postgresql://dbgate:pw@state.internal/dbgate
web:
  listen: 0.0.0.0:8080
  public_url: https://dbgate.example.com/
identities:
  - name: agent
    password: x
    owners: [alice, bob]
  - name: other
    password: y
"""


def _load(tmp_path: Path, extra: str = "") -> Config:
    path = tmp_path / "dbgate.yaml"
    path.write_text(BASE + extra)
    return load_config(path)


def test_defaults_owners_and_the_service_built_from_them(tmp_path: Path) -> None:
    cfg = _load(tmp_path)
    assert cfg.owners() == {"agent": ("alice", "bob")}
    a = cfg.approvals
    assert (a.default_wait_seconds, a.approved_lifetime_seconds, a.recheck_seconds) == (300, 900, 2)
    svc = PgApprovalService.from_config(cfg)
    assert svc.public_url == "https://dbgate.example.com"
    assert svc.url_for(17) == "https://dbgate.example.com/approvals/17"
    assert svc.owners == {"agent": ("alice", "bob")}
    assert ":" in svc.replica  # hostname:pid


def test_keys_are_read_and_checked(tmp_path: Path) -> None:
    cfg = _load(
        tmp_path,
        "approvals:\n  replica_id: pod-1\n  recheck_seconds: 0.5\n  match_key: 0123456789abcdef\n",
    )
    svc = PgApprovalService.from_config(cfg)
    assert svc.replica == "pod-1"
    for bad, why in [
        ("approvals:\n  recheck_seconds: 0\n", "recheck_seconds"),
        ("approvals:\n  match_key: short\n", "match_key"),
        ("approvals:\n  max_shape_minutes: 0\n", "max_shape_minutes"),
        ("approvals:\n  nonsense: 1\n", "nonsense"),
    ]:
        with pytest.raises(ConfigError, match=why):
            _load(tmp_path, bad)


def test_a_service_needs_a_state_database(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("identities: []\n")
    with pytest.raises(ValueError, match=r"state\.dsn"):
        PgApprovalService.from_config(load_config(path))
