"""EmbeddedPostgres: the server every other integration test stands on.

These tests start their own servers (in temporary directories) rather than use the
session fixture, because what they check is the lifecycle itself: a real password
over TCP, no trust on the network, nothing left running after stop().
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest

from dbgate.embedded import EmbeddedPostgres, EmbeddedPostgresError, find_free_port
from tests.conftest import PgServer, docker_available

SYSTEM_PSQL = shutil.which("psql")


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path / "pg")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_asyncpg_connects_with_scram_password(pg: EmbeddedPostgres) -> None:
    conn = await asyncpg.connect(pg.dsn())
    try:
        assert await conn.fetchval("select current_user") == "postgres"
        assert await conn.fetchval("show password_encryption") == "scram-sha-256"
        assert await conn.fetchval("show fsync") == "off"
        assert await conn.fetchval("show max_connections") == "200"
        # The client really is on TCP, not on the trusted Unix socket.
        assert await conn.fetchval("select inet_client_addr()::text") == "127.0.0.1/32"
    finally:
        await conn.close()


async def test_wrong_password_is_rejected(pg: EmbeddedPostgres) -> None:
    bad = pg.dsn().replace(pg.password, "not-the-password")
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(bad)


@pytest.mark.skipif(SYSTEM_PSQL is None, reason="no psql on PATH")
def test_system_psql_connects_over_tcp(pg: EmbeddedPostgres) -> None:
    assert SYSTEM_PSQL is not None
    out = subprocess.run(
        [SYSTEM_PSQL, "-X", "-A", "-t", "-c", "select 40 + 2"],
        env=pg.psql_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert out.stdout.strip() == "42"
    denied = subprocess.run(
        [SYSTEM_PSQL, "-X", "-c", "select 1"],
        env={**pg.psql_env(), "PGPASSWORD": "wrong"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert denied.returncode != 0
    assert "password authentication failed" in denied.stderr


def test_stop_leaves_no_process_socket_or_port(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg")
    with server:
        pid = server.pid
        assert pid is not None
        family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        assert len(family) > 1  # postmaster plus its auxiliary processes
        socket_dir = server.socket_dir
        port = server.port
        assert _port_open("127.0.0.1", port)
    assert not server.running
    for proc in family:
        assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    assert not socket_dir.exists()
    assert not _port_open("127.0.0.1", port)
    server.stop()  # idempotent


def test_restart_keeps_data_and_password(tmp_path: Path) -> None:
    first = EmbeddedPostgres(tmp_path / "pg")
    with first:
        first.psql("create table kept(x int); insert into kept values (7)")
        password = first.password
    second = EmbeddedPostgres(tmp_path / "pg")
    with second:
        assert second.password == password
        assert second.psql("select x from kept").strip() == "7"


def test_explicit_password_replaces_stored_one(tmp_path: Path) -> None:
    with EmbeddedPostgres(tmp_path / "pg"):
        pass
    with EmbeddedPostgres(tmp_path / "pg", password="it's new") as pg:
        assert pg.psql("select 1").strip() == "1"
        assert (tmp_path / "pg" / "superuser.password").read_text().strip() == "it's new"


def test_requested_port_is_used(tmp_path: Path) -> None:
    port = find_free_port()
    with EmbeddedPostgres(tmp_path / "pg", port=port) as pg:
        assert pg.port == port
        assert pg.psql("show port").strip() == str(port)


def test_start_failure_reports_log_tail(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "pg", settings={"shared_buffers": "not-a-size"})
    with pytest.raises(EmbeddedPostgresError) as info:
        pg.start()
    assert "shared_buffers" in str(info.value)
    assert not pg.running


def test_busy_requested_port_fails_clearly(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        pg = EmbeddedPostgres(tmp_path / "pg", port=port)
        with pytest.raises(EmbeddedPostgresError, match="in use"):
            pg.start()
        assert not pg.running


async def test_session_fixtures(pg_server: PgServer, pg_database: str, pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("select current_database()") == pg_database
    finally:
        await conn.close()
    assert pg_server.dsn(pg_database) == pg_dsn


async def test_version_matrix(pg_version_matrix: PgServer) -> None:
    conn = await asyncpg.connect(pg_version_matrix.dsn())
    try:
        assert await conn.fetchval("select 1") == 1
    finally:
        await conn.close()


def test_docker_probe_answers_with_a_reason() -> None:
    ok, reason = docker_available()
    assert ok or "Docker" in reason


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="only root relocates")
async def test_cluster_survives_ancestor_turning_private(tmp_path: Path) -> None:
    """pytest resets /tmp/pytest-of-root to 0700 whenever a session starts.

    A server running as the unprivileged server user under such a directory must not
    PANIC at its next checkpoint: the cluster is relocated and data_dir/pgdata is a
    symlink to it, and the relocated copy is swept once data_dir is gone.
    """
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    data_dir = private / "pg"
    with EmbeddedPostgres(data_dir) as pg:
        assert (data_dir / "pgdata").is_symlink()
        relocated = pg.pgdata.parent
        assert oct(private.stat().st_mode & 0o777) == oct(0o700)  # not loosened
        private.chmod(0o700)
        conn = await asyncpg.connect(pg.dsn())
        try:
            await conn.execute("create table t as select g from generate_series(1, 1000) g")
            await conn.execute("checkpoint")
        finally:
            await conn.close()
    assert "PANIC" not in (data_dir / "postgres.log").read_text()
    assert relocated.exists()
    shutil.rmtree(data_dir)
    with EmbeddedPostgres(tmp_path / "other"):
        pass
    assert not relocated.exists()


def test_second_manager_on_same_data_dir_is_refused(pg: EmbeddedPostgres) -> None:
    """A second demo on the same directory must not mistake the live server for a leftover."""
    with pytest.raises(EmbeddedPostgresError, match="in use by another process"):
        EmbeddedPostgres(pg.data_dir).start()
    assert pg.running
    assert pg.psql("select 1").strip() == "1"
