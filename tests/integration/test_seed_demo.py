"""``dbgate seed-demo`` on a server of its own (the compose file's seeding step).

A private embedded server: the seed creates databases ``demo`` and ``dbgate_state``
and the role ``dbgate_agent``, names the shared test server's other suites use.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from typer.testing import CliRunner

from dbgate.cli import app
from dbgate.embedded import EmbeddedPostgres


@pytest.fixture(scope="module")
def private_pg() -> Iterator[EmbeddedPostgres]:
    tmp = Path(tempfile.mkdtemp(prefix="dbgate-test-seed-"))
    tmp.chmod(0o711)
    (tmp / "owner.pid").write_text(f"{os.getpid()}\n")
    pg = EmbeddedPostgres(tmp / "data")
    try:
        pg.start()
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def test_seed_demo_twice_and_the_agent_role_works(
    private_pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    pw = tmp_path / "agent.pw"
    pw.write_text("agent-role-pw\n")
    admin_pw = tmp_path / "admin.pw"
    admin_pw.write_text(private_pg.password + "\n")
    no_password = private_pg.dsn().replace(f":{private_pg.password}@", "@")
    args = [
        "seed-demo",
        "--admin-dsn",
        no_password,
        "--admin-password-file",
        str(admin_pw),
        "--agent-password-file",
        str(pw),
        "--customers",
        "40",
    ]
    runner = CliRunner()
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "demo dataset ready on" in first.stdout and "40 customers" in first.stdout
    assert private_pg.password not in first.stdout
    again = runner.invoke(app, args)  # idempotent: the dataset is kept
    assert again.exit_code == 0 and "40 customers" in again.stdout

    async def as_agent() -> tuple[int, bool]:
        dsn = private_pg.dsn("demo").replace(
            f"{private_pg.user}:{private_pg.password}@", "dbgate_agent:agent-role-pw@"
        )
        conn = await asyncpg.connect(dsn)
        try:
            n = await conn.fetchval("select count(*) from customers")
            states = await conn.fetchval(
                "select count(*) from pg_database where datname = 'dbgate_state'"
            )
            return n, bool(states)
        finally:
            await conn.close()

    assert asyncio.run(as_agent()) == (40, True)


def test_seed_demo_names_an_unreachable_server(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pw = tmp_path / "agent.pw"
    pw.write_text("x\n")
    result = CliRunner().invoke(
        app,
        [
            "seed-demo",
            "--admin-dsn",
            f"postgresql://postgres:pw@127.0.0.1:{port}/postgres",
            "--agent-password-file",
            str(pw),
        ],
    )
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"dbgate: the server 127.0.0.1:{port}/postgres refuses connections: start "
        "PostgreSQL there or fix --admin-dsn (host and port)"
    )
