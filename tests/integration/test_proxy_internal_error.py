"""A bug in the relay ends its own session, clearly, and nothing else.

An exception dbgate did not expect — here raised through the proxy's seams: a row
rewriter of a result plan that fails on a row, an inspector's verdict the relay
cannot forward, the same verdict arriving after an awaited decision — must not
vanish into the event loop. The session fails closed: the client gets FATAL XX000
saying dbgate hit an internal error and closed the session (and not the row that
could not be processed), the log names the session with the traceback, the
upstream backend is ended (it disappears from pg_stat_activity), and every other
session — one inside an open transaction among them — goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import asyncpg
import pytest

from dbgate.proxy.seams import ALLOW, Allow, Statement
from dbgate.proxy.session_info import SessionInfo
from dbgate.wire import messages as m
from tests.integration.rawclient import agent, errors, rows


class FailingRows:
    def data_row(self, body: bytes) -> bytes:
        raise RuntimeError("a bug in a row rewriter")

    def copy_data(self, body: bytes) -> bytes:  # pragma: no cover - no COPY here
        raise RuntimeError("a bug in a row rewriter")


class FailingPlan:
    def rows(
        self,
        session: SessionInfo,
        description: bytes | None,
        formats: tuple[int, ...],
        statement: int | None = None,
    ) -> FailingRows:
        return FailingRows()

    def copy_out(self, session: SessionInfo, response: bytes) -> None:  # pragma: no cover
        return None


#: A verdict the relay cannot forward: the SQL to send instead is not text.
UNSENDABLE = Allow(replace_sql=42)  # type: ignore[arg-type]


class BuggyGate:
    """Allows everything; statements marked ``/*bug:...*/`` meet a bug of its making."""

    def inspect(self, session: SessionInfo, stmt: Statement) -> Allow | Awaitable[Allow]:
        if "/*bug:rows*/" in stmt.sql:
            return Allow(plan=FailingPlan())
        if "/*bug:verdict*/" in stmt.sql:
            return UNSENDABLE
        if "/*bug:decision*/" in stmt.sql:
            return self._later(UNSENDABLE)
        return ALLOW

    async def _later(self, verdict: Allow) -> Allow:
        await asyncio.sleep(0)
        return verdict


@pytest.fixture
async def admin(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()


async def backend_gone(admin: asyncpg.Connection, pid: int) -> None:
    """Until backend ``pid`` has exited (polls the server's own view)."""
    for _ in range(1000):
        if not await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"backend {pid} of the failed session is still there")


@pytest.mark.parametrize(
    ("sql", "where"),
    [
        ("SELECT 'raw value'::text AS v /*bug:rows*/", "relaying the server's messages"),
        ("SELECT 1 /*bug:verdict*/", "relaying the client's messages"),
        ("SELECT 1 /*bug:decision*/", "after a decision"),
    ],
)
async def test_a_bug_ends_only_its_session_with_a_clear_fatal(
    make_proxy: Any,
    pg_database: str,
    admin: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
    sql: str,
    where: str,
) -> None:
    caplog.set_level(logging.ERROR, logger="dbgate.session")
    proxy = make_proxy(inspector=BuggyGate())
    other = await asyncpg.connect(proxy.dsn(pg_database))
    client = await agent(proxy, pg_database)
    try:
        transaction = other.transaction()
        await transaction.start()
        assert await other.fetchval("SELECT 1") == 1
        ((pid,),) = rows(await client.query("SELECT pg_backend_pid()"))
        assert pid is not None
        pid = int(pid)

        client.send(m.query(sql))
        got = await client.until_closed()
        assert [(e.severity, e.sqlstate) for e in errors(got)] == [("FATAL", "XX000")]
        (fatal,) = errors(got)
        assert fatal.message.startswith(
            "dbgate hit an internal error and closed this session; nothing more of it runs"
        ), fatal.message
        assert b"raw value" not in client.received  # the row it failed on never left
        assert got[-1] is fatal

        await backend_gone(admin, pid)
        failures = [r for r in caplog.records if f"internal error {where}" in r.getMessage()]
        assert failures and failures[0].exc_info is not None
        assert f"session {pid}:" in failures[0].getMessage()

        # The others go on: an open transaction, and a new session.
        assert await other.fetchval("SELECT 2") == 2
        await transaction.commit()
        fresh = await asyncpg.connect(proxy.dsn(pg_database))
        try:
            assert await fresh.fetchval("SELECT 'still serving'") == "still serving"
        finally:
            await fresh.close()
    finally:
        client.abort()
        await other.close()
