"""dbgate's own connections to the upstream (PII schema and key reads, row estimates)
verify the server as the relay's connection does: under ``verify-ca``/``verify-full``
a server an attacker on the path impersonated could otherwise answer the schema reads
(a snapshot with no PII in it: raw values to the agent) and be sent the password."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

from dbgate.app import _estimate_connection
from dbgate.approvals.model import Requester
from dbgate.config import Config
from dbgate.gate.schema_loads import upstream_dsn
from tests.integration.certs import self_signed


def _config(tmp_path: Path, **upstream: Any) -> Config:
    return Config.model_validate(
        {
            "upstream": {"host": "db.internal", "port": 5432, "user": "u", "password": "p"}
            | upstream,
            "identities": [{"name": "agent", "password": "x"}],
        }
    )


def _requester() -> Requester:
    return Requester(identity="agent", database="demo")


@pytest.mark.parametrize("mode", ["verify-ca", "verify-full"])
def test_verifying_modes_verify_the_server_on_every_connection(tmp_path: Path, mode: str) -> None:
    cert, _ = self_signed(tmp_path)
    config = _config(tmp_path, sslmode=mode, sslrootcert=str(cert))
    for where in (upstream_dsn(config, "demo"), _estimate_connection(config, _requester())):
        assert where is not None
        ctx = where["ssl"]
        assert isinstance(ctx, ssl.SSLContext), where["ssl"]
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert ctx.check_hostname is (mode == "verify-full")


@pytest.mark.parametrize("mode", ["disable", "prefer", "require"])
def test_other_modes_mean_what_they_mean_to_the_relay(tmp_path: Path, mode: str) -> None:
    config = _config(tmp_path, sslmode=mode)
    expected = False if mode == "disable" else mode
    assert upstream_dsn(config, "demo")["ssl"] == expected
    where = _estimate_connection(config, _requester())
    assert where is not None and where["ssl"] == expected
