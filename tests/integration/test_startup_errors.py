"""Each start-up problem, produced for real, becomes one line naming it and the fix.

Real sockets (a port that is taken, a port where nothing listens), real TLS files
(missing, garbage, a key of another certificate), the real PostgreSQL (a wrong
password, a database that does not exist) and dbgate's own ProxyServer and
upstream connector where they are the thing that fails.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from dbgate.config import Config, ConfigError, load_config
from dbgate.config_check import connect_problems, file_problems
from dbgate.proxy.server import ProxyServer
from dbgate.proxy.upstream import connect_upstream
from dbgate.startup_errors import StartupError, explain, redact_dsn, startup_step
from tests.integration.certs import self_signed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(**data: Any) -> Config:
    base: dict[str, Any] = {"listen": "127.0.0.1:0", "identities": [{"name": "a", "password": "p"}]}
    base.update(data)
    return Config.model_validate(base)


def test_missing_config_key(tmp_path: Path) -> None:
    path = tmp_path / "dbgate.yaml"
    path.write_text("state:\n  pool_max: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    line = explain(info.value, step="config")
    assert line == (
        f"{path}:1: state.dsn: required key is missing "
        "(dbgate config check -c FILE lists every problem)"
    )


async def test_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        server = ProxyServer(_config(listen=address))
        with pytest.raises(StartupError) as info, startup_step("listen", address=address):
            await server.start()
    assert str(info.value) == (
        f"cannot listen on {address} (the proxy port, listen / --listen): the address is "
        f"already in use; stop the process that holds it (ss -ltnp 'sport = :{address.split(':')[1]}') "
        "or choose another port"
    )


async def test_address_of_no_interface() -> None:
    address = "192.0.2.1:6432"  # TEST-NET-1: never an address of this host
    server = ProxyServer(_config(listen=address))
    with (
        pytest.raises(
            StartupError, match=r"no network interface of this host has address 192\.0\.2\.1"
        ),
        startup_step("listen", address=address),
    ):
        await server.start()


def _tls_failure(cert: Path, key: Path) -> str:
    with pytest.raises(StartupError) as info, startup_step("tls", cert_file=cert, key_file=key):
        ProxyServer(_config(tls={"cert_file": str(cert), "key_file": str(key)}))
    return str(info.value)


def test_missing_tls_file(tmp_path: Path) -> None:
    _cert, key = self_signed(tmp_path / "a")
    missing = tmp_path / "nope.crt"
    assert _tls_failure(missing, key) == (
        f"tls.cert_file {missing} does not exist: create it or fix tls.cert_file"
    )


def test_bad_and_mismatched_tls_keys(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "a")
    _, other_key = self_signed(tmp_path / "b")
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key\n")
    assert _tls_failure(cert, other_key).startswith(
        f"tls.key_file {other_key} is not the key of tls.cert_file {cert}: "
    )
    assert _tls_failure(cert, garbage).startswith(
        f"tls.key_file {garbage} is not a usable private key"
    )
    assert _tls_failure(garbage, key).startswith(
        f"tls.cert_file {garbage} is not a PEM certificate"
    )


async def test_unreachable_upstream() -> None:
    port = _free_port()
    cfg = _config(upstream={"host": "127.0.0.1", "port": port, "connect_timeout": 2})
    step = startup_step("upstream", host="127.0.0.1", port=port, user="postgres")
    with pytest.raises(StartupError) as info, step:
        await connect_upstream(
            cfg.upstream,
            user="postgres",
            password="x",
            database="postgres",
            params={},
            max_message_size=1 << 20,
        )
    assert str(info.value) == (
        f"the upstream PostgreSQL 127.0.0.1:{port} refuses connections: start PostgreSQL "
        "there or fix upstream.host / upstream.port (host and port)"
    )


async def test_upstream_wrong_password(pg_server: Any) -> None:
    cfg = _config(upstream={"host": pg_server.host, "port": pg_server.port})
    with (
        pytest.raises(StartupError) as info,
        startup_step("upstream", host=pg_server.host, port=pg_server.port, user=pg_server.user),
    ):
        await connect_upstream(
            cfg.upstream,
            user=pg_server.user,
            password="wrong-pw",
            database="postgres",
            params={},
            max_message_size=1 << 20,
        )
    line = str(info.value)
    assert line.startswith(
        f"the upstream PostgreSQL {pg_server.host}:{pg_server.port} refused the login for role {pg_server.user}"
    )
    assert "identities[].upstream_user/upstream_password" in line
    assert "wrong-pw" not in line


async def test_unreachable_state_database() -> None:
    port = _free_port()
    dsn = f"postgresql://dbgate:pw-123@localhost:{port}/state"
    with pytest.raises(StartupError) as info, startup_step("state", dsn=dsn):
        await asyncpg.connect(dsn, timeout=5)
    assert str(info.value) == (
        f"the state database localhost:{port}/state refuses connections: start PostgreSQL "
        "there or fix state.dsn (host and port)"
    )


async def test_state_database_login_and_missing_database(pg_server: Any) -> None:
    bad_pw = pg_server.dsn("postgres").replace(f":{pg_server.password}@", ":wrong-pw@")
    with pytest.raises(StartupError) as info, startup_step("state", dsn=bad_pw):
        await asyncpg.connect(bad_pw)
    assert "refused the login" in str(
        info.value
    ) and "fix the user name or password in state.dsn" in str(info.value)
    assert "wrong-pw" not in str(info.value)
    missing = pg_server.dsn("no_such_state_db")
    with pytest.raises(StartupError) as info, startup_step("state", dsn=missing):
        await asyncpg.connect(missing)
    assert 'database "no_such_state_db" does not exist' in str(info.value)
    assert "create the database (CREATE DATABASE) or fix state.dsn" in str(info.value)


def test_redact_dsn() -> None:
    assert redact_dsn("postgresql://u:secret@h:5432/db") == "postgresql://u@h:5432/db"
    assert redact_dsn("postgresql://h/db") == "postgresql://h/db"


async def test_config_check_finds_files_rules_and_connections(
    tmp_path: Path, pg_server: Any
) -> None:
    cert, _key = self_signed(tmp_path / "a")
    _, other_key = self_signed(tmp_path / "b")
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "bad.yaml").write_text(
        "rules:\n  - name: x\n    match: {category: nonsense}\n    action: allow\n"
    )
    port = _free_port()
    path = tmp_path / "dbgate.yaml"
    path.write_text(
        f"tls:\n  cert_file: {cert}\n  key_file: {other_key}\n"
        f"upstream:\n  host: 127.0.0.1\n  port: {port}\n"
        "identities:\n  - name: a\n    scram_verifier: SCRAM-SHA-256$abc\n"
        f"rules_dir: {rules}\n"
        f"state:\n  dsn: {pg_server.dsn('postgres')}\n"
    )
    cfg = load_config(path, environ={})
    problems = file_problems(cfg)
    assert problems[0].startswith(f"tls.key_file {other_key} is not the key of")
    assert problems[1].startswith("identities[0].scram_verifier of 'a' is malformed")
    assert problems[2].startswith("rules: ")
    assert len(problems) >= 3
    reached = await connect_problems(cfg)
    assert reached == [
        f"the upstream PostgreSQL 127.0.0.1:{port} refuses connections: start PostgreSQL "
        "there or fix upstream.host / upstream.port (host and port)"
    ]  # the state database answered
