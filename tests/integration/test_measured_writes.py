"""Measured writes (``Allow(max_changes=N, over_changes=...)``) through a real proxy.

Under its limit a measured statement must look to the client exactly as without
dbgate (results, RETURNING rows once, transaction status, SQLSTATEs); over it, the
changes are undone before ``over_changes`` is asked, and its answer either runs the
statement again (an approval) or fails it as PostgreSQL fails a statement: inside a
block the block is failed (later statements 25P02), outside one nothing changed and
the status is idle. Each path is checked by counting the table's rows afterwards.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import psycopg
import psycopg2
import psycopg2.errors
import pytest

from dbgate.proxy.seams import Allow, Refuse, Statement
from dbgate.proxy.session_info import SessionInfo
from tests.integration.drivers_common import counted_table, unique
from tests.integration.test_driver_psql import psql

LIMIT = 5
OVER = Refuse("54000", "dbgate: too many rows changed", hint="ask for approval")


class Measuring:
    """Measures every statement that names the test's table; ``decide`` answers
    ``over_changes``, and every count it was asked about is noted."""

    def __init__(self, table: str, decide: Callable[[int], Any]) -> None:
        self.table = table
        self.decide = decide
        self.asked: list[int] = []

    def inspect(self, session: SessionInfo, stmt: Statement) -> Allow:
        if self.table not in stmt.sql or stmt.kind == "bind":
            return Allow()
        return Allow(max_changes=LIMIT, over_changes=self._over)

    def _over(self, count: int) -> Any:
        self.asked.append(count)
        return self.decide(count)


@pytest.fixture
def table(pg_dsn: str) -> Iterator[str]:
    yield from counted_table(pg_dsn, "measured")


def _changed(pg_dsn: str, table: str) -> int:
    with psycopg.connect(pg_dsn) as c:
        return c.execute(f"select count(*) from {table} where v <> 0").fetchone()[0]  # type: ignore[index]


def _proxy(make_proxy: Any, pg_database: str, inspector: Measuring) -> str:
    return make_proxy(inspector=inspector).dsn(pg_database)


# -- simple Query, outside a transaction block (psycopg2 autocommit, psql) ---------------


def test_under_the_limit_outside_a_block_is_committed_and_idle(
    make_proxy: Any, pg_database: str, pg_dsn: str, table: str
) -> None:
    inspector = Measuring(table, lambda n: OVER)
    conn = psycopg2.connect(_proxy(make_proxy, pg_database, inspector))
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute(f"update {table} set v = 1 where id <= 3 returning id")
    assert sorted(r[0] for r in cur.fetchall()) == [1, 2, 3]  # RETURNING rows, once
    assert cur.rowcount == 3
    assert conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    assert _changed(pg_dsn, table) == 3
    assert inspector.asked == []
    conn.close()


def test_over_the_limit_refused_outside_a_block_changes_nothing(
    make_proxy: Any, pg_database: str, pg_dsn: str, table: str
) -> None:
    inspector = Measuring(table, lambda n: OVER)
    conn = psycopg2.connect(_proxy(make_proxy, pg_database, inspector))
    conn.autocommit = True
    cur = conn.cursor()
    with pytest.raises(psycopg2.Error) as info:
        cur.execute(f"update {table} set v = 1 where id <= 12 returning id")
    assert info.value.pgcode == "54000" and "too many rows" in str(info.value)
    assert inspector.asked == [12]
    assert conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    assert _changed(pg_dsn, table) == 0
    cur.execute("select 1")  # the session goes on
    assert cur.fetchall() == [(1,)]
    conn.close()


def test_over_the_limit_approved_runs_again_once(
    make_proxy: Any, pg_database: str, pg_dsn: str, table: str
) -> None:
    inspector = Measuring(table, lambda n: Allow())
    conn = psycopg2.connect(_proxy(make_proxy, pg_database, inspector))
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute(f"update {table} set v = v + 1 where id <= 12 returning id, v")
    got = cur.fetchall()
    assert sorted(got) == [(i, 1) for i in range(1, 13)]  # ran once for good: v = 1
    assert inspector.asked == [12]
    assert _changed(pg_dsn, table) == 12
    conn.close()


def test_an_awaited_approval_and_a_refusal(
    make_proxy: Any, pg_database: str, pg_dsn: str, table: str
) -> None:
    """``over_changes`` may answer with an awaitable (a human deciding)."""

    async def later(n: int) -> Allow | Refuse:
        await asyncio.sleep(0)
        return Allow() if n < 15 else OVER

    inspector = Measuring(table, later)
    conn = psycopg2.connect(_proxy(make_proxy, pg_database, inspector))
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute(f"update {table} set v = 1 where id <= 10")
    assert cur.rowcount == 10
    with pytest.raises(psycopg2.Error) as info:
        cur.execute(f"delete from {table} where id > 0")
    assert info.value.pgcode == "54000"
    assert inspector.asked == [10, 20]
    assert _changed(pg_dsn, table) == 10
    with psycopg.connect(pg_dsn) as c:
        assert c.execute(f"select count(*) from {table}").fetchone() == (20,)
    conn.close()


def test_a_statement_that_fails_by_itself_keeps_its_error(
    make_proxy: Any, pg_database: str, pg_dsn: str, table: str
) -> None:
    inspector = Measuring(table, lambda n: OVER)
    conn = psycopg2.connect(_proxy(make_proxy, pg_database, inspector))
    conn.autocommit = True
    cur = conn.cursor()
    with pytest.raises(psycopg2.errors.DivisionByZero):
        cur.execute(f"update {table} set v = 1 / (id - 2) where id <= 3")
    assert conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    with pytest.raises(psycopg2.errors.UniqueViolation):
        cur.execute(f"insert into {table} values (1, 1)")
    assert _changed(pg_dsn, table) == 0 and inspector.asked == []
    conn.close()


def test_psql_multi_statement_query_is_measured_as_one(
    make_proxy: Any, pg_database: str, pg_dsn: str, table: str
) -> None:
    """A query string is one unit: its changes are summed, and undone together."""
    inspector = Measuring(table, lambda n: OVER)
    dsn = _proxy(make_proxy, pg_database, inspector)
    ok = psql(
        dsn, "-c", f"update {table} set v = 1 where id <= 2; update {table} set v = 2 where id = 3"
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split() == ["UPDATE", "2", "UPDATE", "1"]
    over = psql(
        dsn, "-c", f"update {table} set v = 3 where id <= 4; update {table} set v = 4 where id > 17"
    )
    assert over.returncode == 1 and "too many rows changed" in over.stderr
    assert inspector.asked == [7]
    assert _changed(pg_dsn, table) == 3
    with psycopg.connect(pg_dsn) as c:
        assert c.execute(f"select count(*) from {table} where v >= 3").fetchone() == (0,)


def test_psql_copy_from_stdin_is_measured(
    make_proxy: Any, pg_database: str, pg_dsn: str, table: str
) -> None:
    inspector = Measuring(table, lambda n: OVER)
    dsn = _proxy(make_proxy, pg_database, inspector)
    few = psql(dsn, "-c", f"copy {table} from stdin", stdin="101\t1\n102\t1\n\\.\n")
    assert few.returncode == 0 and few.stdout.strip() == "COPY 2", few
    many = "".join(f"{i}\t1\n" for i in range(200, 210)) + "\\.\n"
    over = psql(dsn, "-v", "VERBOSITY=verbose", "-c", f"copy {table} from stdin", stdin=many)
    # The client sent its data while the COPY ran: it cannot be held and sent again
    # (the client would be asked for its data twice), so past the limit dbgate
    # undoes it and refuses it itself, without asking over_changes.
    assert over.returncode == 1 and "ERROR:  54000: " in over.stderr, over.stderr
    assert "changed 10 rows" in over.stderr
    assert inspector.asked == []
    assert _changed(pg_dsn, table) == 2


# -- inside a transaction block (psycopg2's default) -----------------------------------


def test_inside_a_block_under_and_over_the_limit(
    make_proxy: Any, pg_database: str, pg_dsn: str, table: str
) -> None:
    inspector = Measuring(table, lambda n: OVER)
    conn = psycopg2.connect(_proxy(make_proxy, pg_database, inspector))
    cur = conn.cursor()
    cur.execute(f"update {table} set v = 1 where id <= 2 returning id")
    assert sorted(cur.fetchall()) == [(1,), (2,)]
    assert conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_INTRANS
    cur.execute("savepoint mine")  # the client's own savepoints still work
    cur.execute(f"update {table} set v = 1 where id = 3")
    cur.execute("rollback to savepoint mine")
    with pytest.raises(psycopg2.Error) as info:
        cur.execute(f"update {table} set v = 1 where id > 2")
    assert info.value.pgcode == "54000"
    assert conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_INERROR
    with pytest.raises(psycopg2.errors.InFailedSqlTransaction):
        cur.execute("select 1")
    # measured in a failed block: not measured, the server refuses it itself
    with pytest.raises(psycopg2.errors.InFailedSqlTransaction):
        cur.execute(f"update {table} set v = 1 where id = 4")
    conn.rollback()
    assert _changed(pg_dsn, table) == 0
    cur.execute(f"update {table} set v = 1 where id <= 2")
    conn.commit()
    assert _changed(pg_dsn, table) == 2
    assert inspector.asked == [18]
    conn.close()


def test_inside_a_block_approved(
    make_proxy: Any, pg_database: str, pg_dsn: str, table: str
) -> None:
    inspector = Measuring(table, lambda n: Allow())
    conn = psycopg2.connect(_proxy(make_proxy, pg_database, inspector))
    cur = conn.cursor()
    cur.execute(f"update {table} set v = v + 1 where id <= 10 returning v")
    assert cur.fetchall() == [(1,)] * 10
    assert conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_INTRANS
    conn.commit()
    assert _changed(pg_dsn, table) == 10 and inspector.asked == [10]
    conn.close()


# -- the extended protocol: decided before it runs, with count -1 ----------------------


def test_extended_protocol_is_decided_unmeasured(
    make_proxy: Any, pg_database: str, pg_dsn: str, table: str
) -> None:
    """psycopg 3 (also in pipeline mode) and asyncpg's executemany send Parse/Bind/
    Execute: ``over_changes(-1)`` decides before anything runs."""
    decisions = iter([Allow(), OVER, Allow(), Allow()])
    inspector = Measuring(table, lambda n: next(decisions))
    dsn = _proxy(make_proxy, pg_database, inspector)
    with psycopg.connect(dsn, autocommit=True) as c:
        assert c.execute(f"update {table} set v = 1 where id = %s", (1,)).rowcount == 1
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            c.execute(f"update {table} set v = 1 where id = %s", (2,))
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with c.pipeline():
            c.execute(f"update {table} set v = 1 where id = %s", (3,))
    assert _changed(pg_dsn, table) == 2

    async def many() -> None:
        a = await asyncpg.connect(dsn)
        try:
            await a.executemany(f"update {table} set v = 1 where id = $1", [(5,), (6,)])
        finally:
            await a.close()

    asyncio.run(many())
    assert _changed(pg_dsn, table) == 4
    assert inspector.asked == [-1, -1, -1, -1]


def test_asyncpg_execute_without_arguments_is_measured(
    make_proxy: Any, pg_database: str, pg_dsn: str, table: str
) -> None:
    """asyncpg's ``execute(sql)`` is a simple Query: measured."""
    inspector = Measuring(table, lambda n: OVER)
    dsn = _proxy(make_proxy, pg_database, inspector)

    async def run() -> None:
        a = await asyncpg.connect(dsn)
        try:
            assert await a.execute(f"update {table} set v = 1 where id <= 4") == "UPDATE 4"
            with pytest.raises(asyncpg.ProgramLimitExceededError):
                await a.execute(f"update {table} set v = 1")
            async with a.transaction():
                assert await a.execute(f"delete from {table} where id = 20") == "DELETE 1"
        finally:
            await a.close()

    asyncio.run(run())
    assert _changed(pg_dsn, table) == 4 and inspector.asked == [20]
    with psycopg.connect(pg_dsn) as c:
        assert c.execute(f"select count(*) from {table}").fetchone() == (19,)


def test_a_client_gone_while_the_approval_is_awaited_leaves_nothing_running(
    make_proxy: Any, pg_database: str, pg_dsn: str, table: str
) -> None:
    never: list[asyncio.Future[Any]] = []

    def hold(n: int) -> Any:
        fut = asyncio.get_running_loop().create_future()
        never.append(fut)
        return fut

    inspector = Measuring(table, hold)
    dsn = _proxy(make_proxy, pg_database, inspector)
    app = unique("gone")
    client = subprocess.Popen(
        ["psql", "-X", "-d", dsn, "-c", f"update {table} set v = 1"],
        env={"PGAPPNAME": app, "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        for _ in range(500):
            if inspector.asked:
                break
            admin.execute("select pg_sleep(0.01)")
        assert inspector.asked == [20]
        client.kill()
        client.wait(10)
        for _ in range(500):
            left = admin.execute(
                "select count(*) from pg_stat_activity where application_name = %s", (app,)
            ).fetchone()
            if left == (0,):
                break
            admin.execute("select pg_sleep(0.01)")
        assert left == (0,)
    assert _changed(pg_dsn, table) == 0
