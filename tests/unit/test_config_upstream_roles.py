"""Config keys of least privilege upstream: ``allow_privileged_upstream`` and the
per-identity upstream credentials the preflight logs in with."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbgate.config import Config, ConfigError, load_config
from dbgate.preflight import UpstreamLogin, upstream_login

CONFIG = """\
upstream:
  user: app_owner
  password: owner-pw
identities:
  - name: reporting
    password: r
    upstream_user: reporting_ro
    upstream_password: ro-pw
  - name: fallback
    password: f
  - name: same_password
    password: s
    upstream_user: other_role
"""


def _load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "dbgate.yaml"
    path.write_text(text)
    return load_config(path, environ={})


def test_privileged_upstream_is_refused_unless_the_config_says_otherwise(tmp_path: Path) -> None:
    assert _load(tmp_path, CONFIG).allow_privileged_upstream is False
    allowed = _load(tmp_path, CONFIG + "allow_privileged_upstream: true\n")
    assert allowed.allow_privileged_upstream is True


def test_a_non_boolean_is_a_clear_error_with_its_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, CONFIG + "allow_privileged_upstream: perhaps\n")
    message = str(info.value)
    assert f"{tmp_path / 'dbgate.yaml'}:14: allow_privileged_upstream:" in message
    assert "boolean" in message


def test_each_identity_logs_in_with_its_own_credentials_else_the_upstream_ones(
    tmp_path: Path,
) -> None:
    config = _load(tmp_path, CONFIG)
    logins = {i.name: upstream_login(config, i) for i in config.identities}
    assert logins == {
        "reporting": UpstreamLogin("reporting_ro", "ro-pw"),
        "fallback": UpstreamLogin("app_owner", "owner-pw"),
        # What the proxy does too: a role without its own password gets upstream.password.
        "same_password": UpstreamLogin("other_role", "owner-pw"),
    }
