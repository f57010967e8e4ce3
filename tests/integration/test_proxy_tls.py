"""TLS towards clients (SSLRequest) and the GSSENCRequest refusal, with real libpq."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dbgate.embedded import pg_bin_dir
from dbgate.wire.startup import GSSENCRequest, SSLRequest
from tests.integration.conftest import AGENT, AGENT_PASSWORD
from tests.integration.rawclient import RawClient, rows


@pytest.fixture
def tls_proxy(make_proxy: Any, cert_files: tuple[Path, Path]) -> Any:
    cert_file, key_file = cert_files
    return make_proxy(tls={"cert_file": str(cert_file), "key_file": str(key_file)})


def psql_with_ssl() -> str:
    """A psql whose libpq has SSL: the system's (the embedded wheel's has none)."""
    probe = "postgresql://x@127.0.0.1:1/x?sslmode=require&connect_timeout=2"
    for candidate in (shutil.which("psql"), str(pg_bin_dir() / "psql")):
        if candidate is None:
            continue
        out = subprocess.run(
            [candidate, "-X", "-c", "select 1", probe],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if "not compiled in" not in out.stderr:
            return candidate
    raise AssertionError("no psql with SSL support found (install postgresql-client)")


def psql(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [psql_with_ssl(), "-X", "-v", "ON_ERROR_STOP=1", *args, dsn],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_psycopg_sslmode_require_uses_tls(tls_proxy: Any, pg_database: str, cert_files: Any):
    dsn = tls_proxy.dsn(pg_database)
    with psycopg.connect(dsn, sslmode="require", connect_timeout=10) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select 'over tls'").fetchone() == ("over tls",)
    # verify-full against our own certificate: the proxy really presents it
    with psycopg.connect(
        dsn, sslmode="verify-full", sslrootcert=str(cert_files[0]), connect_timeout=10
    ) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select 1").fetchone() == (1,)


def test_psql_sslmode_require_shows_ssl(tls_proxy: Any, pg_database: str):
    dsn = tls_proxy.dsn(pg_database) + "?sslmode=require"
    result = psql(dsn, "-c", "\\conninfo", "-c", "select 'psql ok'")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "psql ok" in out
    # psql 18 prints a table ("SSL Connection | true"); older ones a sentence
    lines = [line.lower() for line in out.splitlines()]
    assert any(
        ("ssl connection" in line and "true" in line) or "ssl connection (protocol" in line
        for line in lines
    ), out


def test_without_tls_require_fails_and_prefer_works(proxy: Any, pg_database: str):
    dsn = proxy.dsn(pg_database)
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(dsn, sslmode="require", connect_timeout=10)
    assert "SSL" in str(info.value)
    with psycopg.connect(dsn, sslmode="prefer", connect_timeout=10) as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("select 'plain'").fetchone() == ("plain",)
    result = psql(dsn + "?sslmode=require", "-c", "select 1")
    assert result.returncode != 0 and "does not support SSL" in result.stderr


def test_gssencmode_prefer_works(proxy: Any, tls_proxy: Any, pg_database: str):
    for running in (proxy, tls_proxy):
        with psycopg.connect(
            running.dsn(pg_database), gssencmode="prefer", connect_timeout=10
        ) as conn:
            assert conn.execute("select 2").fetchone() == (2,)


async def test_gssencrequest_answered_n_then_startup_continues(
    proxy: Any, tls_proxy: Any, pg_database: str
):
    for running in (proxy, tls_proxy):
        client = await RawClient.open(running.host, running.port)
        try:
            client.send(GSSENCRequest().encode())
            assert await client.reader.readexactly(1) == b"N"
            await client.startup(user=AGENT, password=AGENT_PASSWORD, database=pg_database)
            assert rows(await client.query("select 'after gss no'")) == [(b"after gss no",)]
        finally:
            await client.close()


async def test_sslrequest_answers(proxy: Any, tls_proxy: Any, pg_database: str):
    # without TLS: 'N', then the same connection carries a plaintext startup
    client = await RawClient.open(proxy.host, proxy.port)
    try:
        client.send(SSLRequest().encode())
        assert await client.reader.readexactly(1) == b"N"
        await client.startup(user=AGENT, password=AGENT_PASSWORD, database=pg_database)
        assert rows(await client.query("select 3")) == [(b"3",)]
    finally:
        await client.close()
    # with TLS: 'S', then the TLS handshake, then the startup inside it
    client = await RawClient.open(tls_proxy.host, tls_proxy.port)
    try:
        client.send(SSLRequest().encode())
        assert await client.reader.readexactly(1) == b"S"
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        await client.writer.start_tls(ctx)
        await client.startup(user=AGENT, password=AGENT_PASSWORD, database=pg_database)
        assert rows(await client.query("select 4")) == [(b"4",)]
        assert client.writer.get_extra_info("ssl_object") is not None
    finally:
        await client.close()
