"""``audit.on_failure: refuse`` (the default): while the audit trail cannot be
written, statements are refused with a clear 42501; when the state database returns,
they run again and the trail verifies, with no gap.

The state database runs on a PostgreSQL of its own, so the test can stop it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from dbgate.embedded import EmbeddedPostgres
from tests.integration.holds.harness import (
    HoldsEnv,
    RunningApp,
    app_config,
    drop_database,
    fresh_database,
)

NAME = "gate_audit_refuse"


@pytest.fixture(scope="module")
def env(pg_server: Any, state_server: EmbeddedPostgres) -> Iterator[HoldsEnv]:
    admin = pg_server.dsn("postgres")
    data_db = f"{NAME}_data"
    fresh_database(admin, data_db)
    fresh_database(state_server.dsn("postgres"), NAME)
    config = app_config(
        pg_server,
        state_server.dsn(NAME),
        None,
        replica=f"{NAME}-a",
        state_timeout_seconds=2,
        audit={"connect_timeout": 1, "retry_max_seconds": 0.5},
    )
    app = RunningApp(config).start()
    try:
        yield HoldsEnv(app, data_db, pg_server.dsn(data_db), NAME, pg_server)
    finally:
        app.stop()
        drop_database(admin, data_db)


async def test_statements_are_refused_while_the_trail_cannot_be_written(
    env: HoldsEnv, state_server: EmbeddedPostgres
) -> None:
    conn = await asyncpg.connect(env.dsn)
    try:
        assert await conn.fetchval("SELECT 1") == 1
        await asyncio.to_thread(state_server.stop)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while True:  # the writer notices the loss at its next write
            try:
                await conn.fetchval("SELECT 2")
            except asyncpg.InsufficientPrivilegeError as e:
                refused = e
                break
            assert loop.time() < deadline, "statements were still run without an audit trail"
        assert refused.sqlstate == "42501"
        assert refused.message.startswith("dbgate: the audit trail cannot be written")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetchval("SELECT 3")  # the session stays usable, and refused

        await asyncio.to_thread(state_server.start)
        deadline = loop.time() + 30
        while True:
            try:
                assert await conn.fetchval("SELECT 4") == 4
                break
            except asyncpg.InsufficientPrivilegeError:
                assert loop.time() < deadline, "statements stayed refused after the outage"
                await asyncio.sleep(0.1)
    finally:
        await conn.close()
    env.app.call(env.app.app.audit.flush())
    done = subprocess.run(
        [sys.executable, "-m", "dbgate", "audit", "verify", "--dsn", state_server.dsn(NAME)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = env.app.rows(
        "SELECT statement, decision, outcome FROM dbgate.audit_log "
        "WHERE kind = 'statement' ORDER BY chain, seq"
    )
    seen = {tuple(r.values()) for r in rows}
    # asyncpg fetches one row per Execute, so the portal is suspended, not completed
    assert ("SELECT $1", "allow", "suspended") in seen  # before and after the outage
    assert ("SELECT $1", "refused", "42501") in seen  # during it: recorded once it was back
