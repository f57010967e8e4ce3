"""The state database goes away: holds fail closed, ordinary traffic goes on.

The state database runs on a PostgreSQL server of its own here (the data stays on
the session's server), so the test can stop it outright — connection refused, as
when the state server is down — and start it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from dbgate.app import StartupError
from dbgate.embedded import EmbeddedPostgres
from tests.integration.holds.clients import AsyncpgNotices
from tests.integration.holds.harness import (
    APPROVER,
    HoldsEnv,
    RunningApp,
    app_config,
    drop_database,
    fresh_database,
    rules_for_tests,
)

NAME = "holds_state_down"


@pytest.fixture(scope="module")
def holds(
    pg_server: Any, state_server: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HoldsEnv]:
    admin = pg_server.dsn("postgres")
    data_db = f"{NAME}_data"
    fresh_database(admin, data_db)
    fresh_database(state_server.dsn("postgres"), NAME)
    config = app_config(
        pg_server,
        state_server.dsn(NAME),
        rules_for_tests(tmp_path_factory.mktemp(NAME) / "rules"),
        replica=f"{NAME}-a",
        state_timeout_seconds=2,
        # ordinary traffic goes on while the state database is away: its audit records
        # wait in a spill file (with the default, "refuse", it would be refused too)
        audit={"on_failure": "buffer", "spill_dir": str(tmp_path_factory.mktemp("spill"))},
    )
    app = RunningApp(config).start()
    try:
        app.add_approver(APPROVER, "dba")
        yield HoldsEnv(app, data_db, pg_server.dsn(data_db), NAME, pg_server)
    finally:
        app.stop()
        drop_database(admin, data_db)


async def test_holds_fail_closed_while_the_state_database_is_down(
    holds: HoldsEnv, state_server: EmbeddedPostgres
) -> None:
    t = holds.table("sd_table", 3)
    conn = await asyncpg.connect(holds.dsn)
    notices = AsyncpgNotices(conn)
    try:
        running = asyncio.create_task(conn.execute(f"DELETE FROM {t}"))  # works while up
        await holds.app.aapprove(await notices.held())
        assert await running == "DELETE 3"
        holds.table(t, 3)

        await asyncio.to_thread(state_server.stop)
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as info:
            await conn.execute(f"DELETE FROM {t}")
        e = info.value
        assert e.sqlstate == "42501"
        assert e.message.startswith(
            "dbgate: this statement needs approval (deletes every row of sd_table"
        )
        # its hold is recorded in the audit trail before it waits, and that cannot be
        assert "the approval could not be obtained (the audit trail cannot record it" in (e.message)
        assert e.message.endswith("so it was not run")
        assert notices.empty()  # nothing was recorded, so nothing was announced
        # Ordinary traffic is not affected, on this session and on a new one.
        assert await conn.fetchval(f"SELECT count(*) FROM {t} WHERE id = 1") == 1
        await conn.execute(f"INSERT INTO {t} (id) VALUES (4)")
        other = await asyncpg.connect(holds.dsn)
        try:
            assert await other.fetchval("SELECT 40 + 2") == 42
        finally:
            await other.close()
        assert holds.count(t) == 4

        await asyncio.to_thread(state_server.start)
        # After a failure the service refuses at once for a cool-off second (so an
        # outage does not make every hold wait for a timeout); an agent retries.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while True:
            running = asyncio.create_task(conn.execute(f"DELETE FROM {t}"))
            notice = asyncio.create_task(notices.held())
            await asyncio.wait([running, notice], return_when=asyncio.FIRST_COMPLETED)
            if notice.done():
                rid = notice.result()  # recorded and announced: holds work again
                break
            notice.cancel()
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="could not be obtained"):
                await running
            assert loop.time() < deadline, "holds did not recover after the state database"
            await asyncio.sleep(0.1)
        await holds.app.aapprove(rid)
        assert await running == "DELETE 4"
    finally:
        await conn.close()


def test_a_replica_starts_while_the_state_database_is_down(
    pg_server: Any, holds: HoldsEnv, state_server: EmbeddedPostgres, tmp_path: Path
) -> None:
    """Without its state database a replica does not start, and says why (a replica
    already running keeps serving, as above)."""
    state_server.stop()
    try:
        config = app_config(
            pg_server,
            state_server.dsn(NAME),
            rules_for_tests(tmp_path / "rules"),
            replica=f"{NAME}-b",
            state_timeout_seconds=2,
        )
        app = RunningApp(config)
        with pytest.raises(
            StartupError,
            match=r"the state database \S+ refuses connections: start PostgreSQL there",
        ):
            app.start()
    finally:
        state_server.start()
