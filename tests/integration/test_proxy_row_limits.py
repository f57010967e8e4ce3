"""Run-time row limits (``Allow(max_rows=N)``), with real drivers and a real server.

A statement allowed under a row limit runs; once its result has more rows than the
limit dbgate stops forwarding rows, cancels it upstream, and fails it with 54000 —
and client and server agree that it failed (the transaction is aborted on both sides,
the rest of an extended-protocol batch is skipped, the session goes on).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from dbgate.proxy.seams import ALLOW, Allow, Refuse, Statement
from dbgate.proxy.session_info import SessionInfo
from dbgate.wire import messages as m
from dbgate.wire.framing import FrameReader

OVER = Refuse("54000", "dbgate: more rows than this statement may return", hint="test limit")
LIMITED = Allow(max_rows=10, over_limit=OVER)


class Limiting:
    """Statements that mention ``limited`` may return at most 10 rows."""

    inspects_binds = False

    def inspect(self, session: SessionInfo, stmt: Statement) -> Allow:
        return LIMITED if "limited" in stmt.sql else ALLOW


@pytest.fixture
def dsn(make_proxy: Any, pg_database: str) -> Iterator[str]:
    yield make_proxy(inspector=Limiting()).dsn(pg_database)


# cancelled mid-way: a set-returning function in the select list streams its rows (in
# FROM, the server would first materialize all fifty million of them, for seconds)
BIG = "select generate_series(1, 50000000) /* limited */ as g"
SMALL_OVER = "select g /* limited */ from generate_series(1, 11) g"  # done before the cancel
UNDER = "select g /* limited */ from generate_series(1, 10) g"


@pytest.mark.parametrize("sql", [BIG, SMALL_OVER])
def test_over_the_limit_is_54000_and_the_session_goes_on(dsn: str, sql: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.cursor()
        with pytest.raises(psycopg.errors.ProgramLimitExceeded) as info:
            cur.execute(sql)
            cur.fetchall()
        assert info.value.diag.message_primary == OVER.message
        assert info.value.diag.message_hint == "test limit"
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("select 42").fetchone() == (42,)


def test_under_the_limit_nothing_changes(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert [r[0] for r in conn.execute(UNDER).fetchall()] == list(range(1, 11))


@pytest.mark.parametrize("sql", [BIG, SMALL_OVER])
def test_inside_a_transaction_the_server_aborts_it_too(dsn: str, sql: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("select 1")
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            conn.execute(sql).fetchall()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("select 1")
        conn.rollback()
        assert conn.execute("select 7").fetchone() == (7,)


@pytest.mark.parametrize("sql", [BIG, SMALL_OVER])
async def test_extended_protocol_with_asyncpg(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        with pytest.raises(asyncpg.ProgramLimitExceededError):
            await conn.fetch(sql)
        assert await conn.fetchval("select 5") == 5
        async with conn.transaction():
            cur = await conn.cursor(sql.replace("/* limited */", "/* limited */ "))
            got = await cur.fetch(6)
            assert [r[0] for r in got] == list(range(1, 7))
            with pytest.raises(asyncpg.ProgramLimitExceededError):
                await cur.fetch(6)  # 12 rows in all: the limit counts across fetches
        assert await conn.fetchval("select 6") == 6
    finally:
        await conn.close()


def test_copy_to_stdout_over_the_limit(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        with (
            pytest.raises(psycopg.errors.ProgramLimitExceeded),
            conn.cursor().copy(f"copy ({BIG}) to stdout") as copy,
        ):
            for _ in copy:
                pass
        assert conn.execute("select 8").fetchone() == (8,)


def test_nothing_is_left_running_upstream(dsn: str, pg_dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            conn.execute(BIG).fetchall()
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            running = admin.execute(
                "select count(*) from pg_stat_activity where query like %s and state = 'active'",
                ["%generate_series(1, 50000000)%"],
            ).fetchone()
        assert running == (0,)


WIDE_LIMIT = Allow(max_rows=60_000, over_limit=OVER)
WIDE = "select g, md5(g::text) as m /* wide */ from generate_series(1, {n}) g"


class WideLimiting:
    """Statements that mention ``wide`` may return at most 60,000 rows."""

    inspects_binds = False

    def inspect(self, session: SessionInfo, stmt: Statement) -> Allow:
        return WIDE_LIMIT if "wide" in stmt.sql else ALLOW


@pytest.fixture
def split_runs(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Every answer of the relay's reader to "split this run here?"."""
    answers: list[bool] = []
    real = FrameReader._splits

    def recorded(self: FrameReader, *args: Any) -> bool:
        answer = real(self, *args)
        answers.append(answer)
        return answer

    monkeypatch.setattr(FrameReader, "_splits", recorded)
    return answers


def test_a_long_result_under_the_limit_is_relayed_in_split_runs(
    make_proxy: Any, pg_database: str, pg_dsn: str, split_runs: list[bool]
) -> None:
    """Reads that end inside a row while the limit has room for it are relayed as
    they came (the row's rest starts the next read): the client gets every row as
    the server sent it, and the limit still counts each row once."""
    dsn = make_proxy(inspector=WideLimiting()).dsn(pg_database)
    with psycopg.connect(pg_dsn, autocommit=True) as direct:
        expected = direct.execute(WIDE.format(n=60_000)).fetchall()
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute(WIDE.format(n=60_000)).fetchall() == expected
        assert any(split_runs)  # the path under test was taken
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            conn.execute(WIDE.format(n=60_001)).fetchall()
        assert conn.execute("select 9").fetchone() == (9,)


class Upper:
    """Upper-cases the second column of every row (a plan's rewriter)."""

    def data_row(self, body: bytes) -> bytes:
        cols = list(m.parse_data_row(body))
        cols[1] = cols[1].upper()  # type: ignore[union-attr]
        return m.data_row(cols)[5:]

    def copy_data(self, body: bytes) -> bytes:  # pragma: no cover - no COPY here
        return body


class UpperPlan:
    def rows(
        self,
        session: SessionInfo,
        description: bytes | None,
        formats: Any,
        statement: int | None = None,
    ) -> Upper | None:
        return Upper() if description is not None else None

    def copy_out(self, session: SessionInfo, body: bytes) -> None:  # pragma: no cover
        return None


class RewrittenAndLimited:
    inspects_binds = False

    def inspect(self, session: SessionInfo, stmt: Statement) -> Allow:
        if "wide" in stmt.sql:
            return Allow(plan=UpperPlan(), max_rows=60_000, over_limit=OVER)
        return ALLOW


def test_rows_a_plan_rewrites_are_never_relayed_in_split_runs(
    make_proxy: Any, pg_database: str, split_runs: list[bool]
) -> None:
    """Under a limit with room, rows that a plan rewrites are still cut at whole rows:
    a split row's start would reach the client unrewritten."""
    dsn = make_proxy(inspector=RewrittenAndLimited()).dsn(pg_database)
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(WIDE.format(n=60_000)).fetchall()
    assert len(rows) == 60_000
    assert all(m == m.upper() and any(c.isalpha() for c in m) for _, m in rows[:1000])
    assert all(m == m.upper() for _, m in rows)
    assert not any(split_runs)


@pytest.mark.parametrize("pipelined", [False, True])
@pytest.mark.parametrize(
    "second", ["select 1", "select g /* limited */ from generate_series(1, 3) g"]
)
async def test_a_failed_bind_of_an_open_portal_does_not_reset_its_count(
    make_proxy: Any, pg_database: str, second: str, pipelined: bool
) -> None:
    """A Bind of a named portal that is still open fails ("cursor already exists")
    and leaves the old portal as it was: after ROLLBACK TO SAVEPOINT it runs on. Its
    rows returned so far still count, and its limit still holds, whatever the failed
    Bind would have bound (an unlimited statement, or a limited one counted afresh)."""
    from tests.integration.rawclient import agent, rows

    proxy = make_proxy(inspector=Limiting())
    client = await agent(proxy, pg_database)
    sync = m.Sync().encode()
    try:
        await client.query("BEGIN")
        client.send(
            m.Parse("s1", "select g /* limited */ from generate_series(1, 100) g").encode(),
            m.Bind("p", "s1").encode(),
            m.Execute("p", 5).encode(),
            sync,
        )
        got = rows(await client.until_ready())
        rebind = (m.Parse("s2", second).encode(), m.Bind("p", "s2").encode(), sync)
        later = m.Query("ROLLBACK TO SAVEPOINT sp").encode()
        await client.query("SAVEPOINT sp")
        if pipelined:  # the Executes are sent before the Bind's error is back
            client.send(*rebind, later, m.Execute("p", 5).encode(), sync)
            await client.until_ready()
            await client.until_ready()
        else:
            client.send(*rebind)
            await client.until_ready()
            client.send(later)
            await client.until_ready()
            client.send(m.Execute("p", 5).encode(), sync)
        answers = await client.until_ready()
        got += rows(answers)
        while not [x for x in answers if isinstance(x, m.ErrorResponse)]:
            client.send(m.Execute("p", 5).encode(), sync)
            answers = await client.until_ready()
            got += rows(answers)
            assert len(got) <= 10
        assert [x.sqlstate for x in answers if isinstance(x, m.ErrorResponse)] == ["54000"]
        assert len(got) == 10
    finally:
        await client.close()


async def test_a_limited_execute_pipelined_after_a_query_is_limited(
    make_proxy: Any, pg_database: str
) -> None:
    """A portal bound earlier, executed right behind a simple Query in one write: the
    Execute starts when the Query's ReadyForQuery arrives, and its rows often come in
    the same read. They are counted all the same (the read is split anew from there)."""
    from tests.integration.rawclient import agent, rows

    proxy = make_proxy(inspector=Limiting())
    client = await agent(proxy, pg_database)
    sync = m.Sync().encode()
    try:
        for _ in range(5):
            await client.query("BEGIN")
            client.send(
                m.Parse("", "select g /* limited */ from generate_series(1, 100) g").encode(),
                m.Bind("p", "").encode(),
                sync,
            )
            await client.until_ready()
            client.send(m.Query("select 1").encode(), m.Execute("p", 0).encode(), sync)
            got = await client.until_ready()
            got += await client.until_ready()
            assert len(rows(got)) <= 11  # the Query's row, and at most 10 of the portal's
            assert [x.sqlstate for x in got if isinstance(x, m.ErrorResponse)] == ["54000"]
            await client.query("ROLLBACK")
    finally:
        await client.close()
