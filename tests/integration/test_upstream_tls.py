"""TLS from dbgate to the upstream server (``upstream.sslmode``), against a real server.

The embedded wheel's PostgreSQL is built without SSL, so these tests start Debian's
``postgresql-15`` (installed on the machines this project runs on) with a certificate
made for the run. What they check is what the server itself reports about the
connection dbgate opened (``pg_stat_ssl``), for every sslmode, plus the failures an
operator must see clearly: TLS required but not offered, a certificate that does not
verify, a name that does not match.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dbgate.config import Config
from dbgate.embedded import EmbeddedPostgres
from tests.integration.certs import self_signed

DEBIAN_PG = Path("/usr/lib/postgresql/15/bin")

pytestmark = pytest.mark.skipif(
    not (DEBIAN_PG / "postgres").exists(),
    reason="needs Debian's postgresql-15 (apt-get install postgresql-15): the wheel has no SSL",
)

SSL_IN_USE = "select ssl from pg_stat_ssl where pid = pg_backend_pid()"


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory, cert_files: tuple[Path, Path]
) -> Iterator[Any]:
    server = EmbeddedPostgres(
        tmp_path_factory.mktemp("pg15") / "pg", bin_dir=DEBIAN_PG, tls=cert_files
    )
    server.start()
    yield server
    server.stop()


def _upstream(server: Any, **tls: Any) -> dict[str, Any]:
    return {
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "password": server.password,
        **tls,
    }


def _ssl_in_use(proxy: Any) -> bool:
    with psycopg.connect(proxy.dsn("postgres"), sslmode="disable") as conn:
        return bool(conn.execute(SSL_IN_USE).fetchone()[0])  # type: ignore[index]


@pytest.mark.parametrize(
    ("sslmode", "encrypted"),
    [
        ("disable", False),
        ("prefer", True),
        ("require", True),
        ("verify-ca", True),
        ("verify-full", True),
    ],
)
def test_each_sslmode_against_a_tls_server(
    make_proxy: Any, tls_server: Any, cert_files: tuple[Path, Path], sslmode: str, encrypted: bool
) -> None:
    tls: dict[str, Any] = {"sslmode": sslmode}
    if sslmode.startswith("verify-"):
        tls["sslrootcert"] = str(cert_files[0])
    proxy = make_proxy(upstream=_upstream(tls_server, **tls))
    assert _ssl_in_use(proxy) is encrypted


def test_prefer_falls_back_when_the_server_has_no_tls(make_proxy: Any, pg_server: Any) -> None:
    proxy = make_proxy(upstream=_upstream(pg_server, sslmode="prefer"))
    assert _ssl_in_use(proxy) is False


def _refused(proxy: Any, caplog: pytest.LogCaptureFixture) -> str:
    """What the operator's log says when the agent's connection fails.

    The agent itself only learns that dbgate could not reach the database: how the
    upstream is set up is none of its business.
    """
    caplog.clear()
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(proxy.dsn("postgres"), sslmode="disable", connect_timeout=10)
    assert "dbgate: cannot connect to the database" in str(info.value)
    return caplog.text


def test_require_against_a_server_without_tls_is_refused_clearly(
    make_proxy: Any, pg_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = make_proxy(upstream=_upstream(pg_server, sslmode="require"))
    assert "upstream server refused TLS (sslmode=require)" in _refused(proxy, caplog)
    # ... and the proxy keeps serving: a correctly configured one next to it works
    ok = make_proxy(upstream=_upstream(pg_server))
    assert _ssl_in_use(ok) is False


def test_a_certificate_from_another_ca_does_not_verify(
    make_proxy: Any, tls_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other_ca, _ = self_signed(tmp_path / "other")
    proxy = make_proxy(
        upstream=_upstream(tls_server, sslmode="verify-ca", sslrootcert=str(other_ca))
    )
    assert "certificate verify failed: self-signed certificate" in _refused(proxy, caplog)


def test_verify_full_checks_the_host_name(
    make_proxy: Any,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A certificate for another name verifies with verify-ca, not with verify-full."""
    cert, key = self_signed(tmp_path / "elsewhere", common_name="db.example.com", names=())
    server = EmbeddedPostgres(
        tmp_path_factory.mktemp("pg15-other") / "pg", bin_dir=DEBIAN_PG, tls=(cert, key)
    )
    server.start()
    try:
        chain_only = make_proxy(
            upstream=_upstream(server, sslmode="verify-ca", sslrootcert=str(cert))
        )
        assert _ssl_in_use(chain_only) is True
        full = make_proxy(upstream=_upstream(server, sslmode="verify-full", sslrootcert=str(cert)))
        assert "IP address mismatch" in _refused(full, caplog)
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("upstream", "message"),
    [
        ({"sslmode": "verify-full"}, "needs upstream.sslrootcert"),
        ({"sslmode": "verify-ca", "sslrootcert": "/nonexistent.pem"}, "is not a file"),
        ({"sslmode": "require", "host": "/var/run/postgresql"}, "Unix-socket"),
        ({"sslmode": "allow"}, "sslmode"),
    ],
)
def test_bad_tls_settings_are_rejected_at_load(upstream: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Config.model_validate(
            {"upstream": upstream, "identities": [{"name": "a", "password": "p"}]}
        )
