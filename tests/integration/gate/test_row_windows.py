"""Rows per window shared by replicas through one real state database.

Each replica is a :class:`RowWindows` with its own pool; time is a clock the test
moves, and every refresh is triggered by the test (no background loop runs, nothing
sleeps). The outage tests put a cuttable TCP link between a replica and the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest

from dbgate.approvals.db import StateDB, create_pool
from dbgate.gate.row_window import PRUNE_SECONDS, RowWindows
from dbgate.policy.model import RowWindow
from tests.integration.audit_support import (
    StateLink,
    create_state_database,
    drop_state_database,
    state_link,
    with_host_port,
)

DB = "dbgate_row_windows"
ORDERS = "public.orders"
CUSTOMERS = "public.customers"
MINUTE = RowWindow(1000, 60, "allow-reads", frozenset({ORDERS}))
JOIN = RowWindow(1000, 60, "allow-reads", frozenset({ORDERS, CUSTOMERS}))
START = 1_700_000_000.0  # a bucket boundary (10 s buckets)


@dataclass
class Clock:
    """Wall time for buckets, monotonic time for staleness; both moved by the test."""

    wall: float = START + 1.0
    mono: float = 1000.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


@pytest.fixture(scope="module")
async def state_dsn(pg_server) -> AsyncIterator[str]:
    dsn = await create_state_database(pg_server, DB)
    yield dsn
    await drop_state_database(pg_server, DB)


@pytest.fixture
async def admin(state_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(state_dsn)
    await conn.execute("TRUNCATE dbgate.row_window_counts")
    yield conn
    await conn.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


class Replicas:
    """RowWindows instances over one state database, closed at the end of a test."""

    def __init__(self, dsn: str, clock: Clock) -> None:
        self.dsn = dsn
        self.clock = clock
        self.pools: list[asyncpg.Pool] = []

    async def make(self, replica: str, dsn: str | None = None, **kw) -> RowWindows:
        pool = await create_pool(dsn or self.dsn, max_size=2, timeout=2.0)
        self.pools.append(pool)
        kw.setdefault("windows", (60,))
        kw.setdefault("refresh_seconds", 1.0)
        return RowWindows(
            StateDB(pool, timeout=2.0),
            replica,
            clock=lambda: self.clock.wall,
            monotonic=lambda: self.clock.mono,
            **kw,
        )

    async def close(self) -> None:
        for pool in self.pools:
            pool.terminate()


@pytest.fixture
async def replicas(state_dsn: str, admin, clock: Clock) -> AsyncIterator[Replicas]:
    r = Replicas(state_dsn, clock)
    yield r
    await r.close()


async def test_rows_read_through_one_replica_are_seen_by_the_other_after_a_refresh(
    replicas: Replicas, admin
) -> None:
    a, b = await replicas.make("a"), await replicas.make("b")
    assert await a.refresh() and await b.refresh()
    assert a.remaining("agent", MINUTE, MINUTE.tables) == 1000

    a.add("agent", MINUTE, MINUTE.tables, 300)
    assert a.remaining("agent", MINUTE, MINUTE.tables) == 700  # its own: at once
    assert b.remaining("agent", MINUTE, MINUTE.tables) == 1000  # not yet written
    assert await a.refresh()
    assert b.remaining("agent", MINUTE, MINUTE.tables) == 1000  # written, not yet read
    assert await b.refresh()
    assert b.remaining("agent", MINUTE, MINUTE.tables) == 700
    assert a.remaining("agent", MINUTE, MINUTE.tables) == 700  # not counted twice

    # A join's rows are charged to every table it reads; the smallest allowance wins.
    b.add("agent", JOIN, JOIN.tables, 200)
    assert b.remaining("agent", JOIN, JOIN.tables) == 500
    assert await b.refresh() and await a.refresh()
    assert a.remaining("agent", JOIN, JOIN.tables) == 500
    assert a.remaining("agent", JOIN, {CUSTOMERS}) == 800
    assert a.remaining("someone-else", JOIN, JOIN.tables) == 1000

    rows = await admin.fetch(
        "SELECT replica, table_name, sum(rows) AS rows FROM dbgate.row_window_counts "
        "GROUP BY 1, 2 ORDER BY 1, 2"
    )
    assert [tuple(r) for r in rows] == [
        ("a", ORDERS, 300),
        ("b", CUSTOMERS, 200),
        ("b", ORDERS, 200),
    ]


async def test_many_statements_make_one_row_per_bucket(replicas: Replicas, admin, clock) -> None:
    a = await replicas.make("a")
    for _ in range(50):
        a.add("agent", MINUTE, MINUTE.tables, 2)
    assert await a.refresh()
    clock.advance(3)  # same 10 s bucket
    for _ in range(50):
        a.add("agent", MINUTE, MINUTE.tables, 2)
    assert await a.refresh()
    rows = await admin.fetch("SELECT bucket_end, rows FROM dbgate.row_window_counts")
    assert [(r["bucket_end"].timestamp(), r["rows"]) for r in rows] == [(START + 10, 200)]
    assert a.remaining("agent", MINUTE, MINUTE.tables) == 800


async def test_rows_leave_the_window_at_its_boundary(replicas: Replicas, clock) -> None:
    a, b = await replicas.make("a"), await replicas.make("b")
    a.add("agent", MINUTE, MINUTE.tables, 400)  # at START+1: the bucket ending START+10
    assert await a.refresh()
    clock.advance(30)
    b.add("agent", MINUTE, MINUTE.tables, 100)  # at START+31: the bucket ending START+40
    assert await b.refresh() and await a.refresh()
    assert a.remaining("agent", MINUTE, MINUTE.tables) == 500

    clock.wall = START + 69.9  # the first bucket still ends inside the last minute
    assert await a.refresh()
    assert a.remaining("agent", MINUTE, MINUTE.tables) == 500
    clock.wall = START + 70  # ... and no longer
    assert a.remaining("agent", MINUTE, MINUTE.tables) == 500  # freed at the next read
    assert await a.refresh()
    assert a.remaining("agent", MINUTE, MINUTE.tables) == 900
    clock.wall = START + 100
    assert await a.refresh()
    assert a.remaining("agent", MINUTE, MINUTE.tables) == 1000


async def test_a_replicas_own_rows_leave_the_window_without_a_refresh(
    replicas: Replicas, clock
) -> None:
    a = await replicas.make("a")
    assert await a.refresh()
    a.add("agent", MINUTE, MINUTE.tables, 400)  # pending: never written
    clock.wall = START + 69.9
    assert a.remaining("agent", MINUTE, MINUTE.tables) == 600
    clock.wall = START + 70
    assert a.remaining("agent", MINUTE, MINUTE.tables) == 1000


async def test_each_window_length_sums_its_own_span(replicas: Replicas, clock) -> None:
    hour = RowWindow(5000, 3600, "slow", MINUTE.tables)
    a = await replicas.make("a", windows=(60, 3600))
    a.add("agent", MINUTE, MINUTE.tables, 100)
    clock.advance(600)
    a.add("agent", hour, MINUTE.tables, 10)
    assert await a.refresh()
    assert a.remaining("agent", MINUTE, MINUTE.tables) == 990
    assert a.remaining("agent", hour, MINUTE.tables) == 4890


async def test_a_new_window_length_is_read_before_it_is_trusted(replicas: Replicas) -> None:
    a, b = await replicas.make("a"), await replicas.make("b", windows=())
    a.add("agent", MINUTE, MINUTE.tables, 250)
    assert await a.refresh() and await b.refresh()
    # b never read a one-minute total: it cannot know what a read, so it stops.
    assert b.remaining("agent", MINUTE, MINUTE.tables) == 0
    assert "reading the shared row counts" in b.describe("agent", MINUTE, MINUTE.tables)
    assert await b.refresh()  # asking registered the length
    assert b.remaining("agent", MINUTE, MINUTE.tables) == 750
    assert "has read 250 rows of public.orders" in b.describe("agent", MINUTE, MINUTE.tables)


async def test_never_read_is_stale(replicas: Replicas) -> None:
    a = await replicas.make("a")
    assert a.stale()
    assert a.remaining("agent", MINUTE, MINUTE.tables) == 0
    assert "have not been read yet" in a.reason()


async def test_the_state_database_away_stops_reads_after_the_bound_and_recovers(
    pg_server, replicas: Replicas, clock, admin
) -> None:
    async with state_link(pg_server) as link:
        link: StateLink
        dsn = with_host_port(replicas.dsn, "127.0.0.1", link.port)
        a = await replicas.make("a", dsn, refresh_seconds=1.0)  # stale after 3 s
        b = await replicas.make("b")
        assert await a.refresh()
        a.add("agent", MINUTE, MINUTE.tables, 100)

        link.cut()
        clock.advance(1)
        assert not await a.refresh()
        a.add("agent", MINUTE, MINUTE.tables, 50)  # recorded all the same
        clock.advance(1.9)
        assert not await a.refresh()
        assert not a.stale()  # within the bound: the local view still answers
        assert a.remaining("agent", MINUTE, MINUTE.tables) == 850
        clock.advance(0.2)  # 3.1 s since the last read
        assert a.stale()
        assert a.remaining("agent", MINUTE, MINUTE.tables) == 0
        reason = a.describe("agent", MINUTE, MINUTE.tables)
        assert "have not been read for 3 s" in reason
        assert "state database" in reason and "stopped" in reason
        a.add("agent", MINUTE, MINUTE.tables, 5)  # never raises while away

        link.restore()
        assert await a.refresh()
        assert not a.stale()
        assert a.remaining("agent", MINUTE, MINUTE.tables) == 845
        assert await b.refresh()
        assert b.remaining("agent", MINUTE, MINUTE.tables) == 845  # nothing was lost
        total = await admin.fetchval("SELECT sum(rows) FROM dbgate.row_window_counts")
        assert total == 155


async def test_stop_writes_what_is_pending_and_start_reads_at_once(
    replicas: Replicas, admin
) -> None:
    a = await replicas.make("a", refresh_seconds=3600.0)  # the loop never runs here
    await a.start()
    assert not a.stale()
    a.add("agent", MINUTE, MINUTE.tables, 42)
    await a.stop()
    assert await admin.fetchval("SELECT sum(rows) FROM dbgate.row_window_counts") == 42

    b = await replicas.make("b", refresh_seconds=3600.0)
    await b.start()
    assert b.remaining("agent", MINUTE, MINUTE.tables) == 958
    await b.stop()


async def test_a_replica_started_with_the_state_database_away_stops_reads(
    pg_server, replicas: Replicas
) -> None:
    async with state_link(pg_server) as link:
        link.cut()
        dsn = with_host_port(replicas.dsn, "127.0.0.1", link.port)
        a = await replicas.make("a", dsn, refresh_seconds=3600.0)
        await a.start()  # does not raise
        assert a.stale()
        assert a.remaining("agent", MINUTE, MINUTE.tables) == 0
        assert "state database" in a.reason()
        link.restore()
        assert await a.refresh()
        assert a.remaining("agent", MINUTE, MINUTE.tables) == 1000
        await a.stop()


async def test_old_buckets_are_deleted_past_the_retention(replicas: Replicas, clock, admin) -> None:
    a = await replicas.make("a", retention_seconds=120)
    a.add("agent", MINUTE, MINUTE.tables, 1)
    assert await a.refresh()  # the first read also prunes
    clock.advance(100)
    a.add("agent", MINUTE, MINUTE.tables, 2)
    assert await a.refresh()  # nothing old enough to delete yet
    assert await admin.fetchval("SELECT count(*) FROM dbgate.row_window_counts") == 2
    clock.advance(max(PRUNE_SECONDS, 40.0))  # the first bucket is now past 120 s + a bucket
    assert await a.refresh()
    rows = await admin.fetch("SELECT rows FROM dbgate.row_window_counts")
    assert [r["rows"] for r in rows] == [2]


async def test_the_background_task_reads_a_new_window_length_at_once(replicas: Replicas) -> None:
    a = await replicas.make("a", refresh_seconds=3600.0)  # only a wake-up makes it run
    await a.start()
    hour = RowWindow(5000, 3600, "slow", MINUTE.tables)
    before = a.reads
    assert a.remaining("agent", hour, hour.tables) == 0  # never read: stopped, and asked for
    await asyncio.wait_for(a.wait_read(before), timeout=30)
    assert a.remaining("agent", hour, hour.tables) == 5000
    await a.stop()


async def test_a_verdict_is_capped_once_while_its_own_limit_fits_in_what_is_left(
    replicas: Replicas,
) -> None:
    from dbgate.gate.notes import GateNote
    from dbgate.gate.windows import windowed
    from dbgate.policy.classify import classify
    from dbgate.proxy.seams import Allow, Refuse

    a = await replicas.make("a")
    assert await a.refresh()
    note = GateNote(classify("SELECT * FROM orders"), "allow", "read")
    verdict = Allow(note=note, max_rows=100, repeatable=True)
    first = windowed(verdict, MINUTE, a, "agent", None)
    assert isinstance(first, Allow)
    assert (first.max_rows, first.repeatable, first.over_limit) == (100, False, None)
    assert first.note.window_tables == (ORDERS,)
    assert windowed(verdict, MINUTE, a, "agent", None) is first  # made once
    a.add("agent", MINUTE, MINUTE.tables, 950)  # 50 left: the cap is what is left
    capped = windowed(verdict, MINUTE, a, "agent", None)
    assert isinstance(capped, Allow)
    assert capped.max_rows == 50 and capped.over_limit is not None
    assert "50 rows agent has left of public.orders" in capped.over_limit.message
    a.add("agent", MINUTE, MINUTE.tables, 50)  # nothing left: refused
    assert isinstance(windowed(verdict, MINUTE, a, "agent", None), Refuse)
    other = windowed(verdict, MINUTE, a, "someone-else", None)
    assert other is first  # another identity with room: the same capped verdict


async def test_a_verdict_without_its_own_limit_is_capped_at_what_is_left_every_time(
    replicas: Replicas,
) -> None:
    from dbgate.gate.notes import GateNote
    from dbgate.gate.windows import windowed
    from dbgate.policy.classify import classify
    from dbgate.proxy.seams import Allow

    a = await replicas.make("a")
    assert await a.refresh()
    verdict = Allow(note=GateNote(classify("SELECT * FROM orders WHERE id = 1"), "allow", "read"))
    first = windowed(verdict, MINUTE, a, "agent", None)
    a.add("agent", MINUTE, MINUTE.tables, 1)
    second = windowed(verdict, MINUTE, a, "agent", None)
    assert isinstance(first, Allow) and isinstance(second, Allow)
    assert (first.max_rows, second.max_rows) == (1000, 999)
    assert "999 rows agent has left" in second.over_limit.message
    assert first.note.window_tables == second.note.window_tables == (ORDERS,)
    assert second.note is first.note  # the note naming the accounts is made once


async def test_a_read_proven_within_what_is_left_is_capped_at_its_bound_once(
    replicas: Replicas,
) -> None:
    """A read a unique key pins (``result_bound``) is capped at its bound while that
    fits in what is left: the same verdict at every read, which the relay counts
    rather than watches; once less is left, it is capped at what is left."""
    from dbgate.gate.notes import GateNote
    from dbgate.gate.windows import windowed
    from dbgate.policy.classify import classify
    from dbgate.proxy.seams import Allow

    a = await replicas.make("a")
    assert await a.refresh()
    note = GateNote(classify("SELECT * FROM orders WHERE id = 1"), "allow", "read")
    verdict = Allow(note=note, result_bound=1)
    first = windowed(verdict, MINUTE, a, "agent", None)
    assert isinstance(first, Allow)
    assert (first.max_rows, first.result_bound, first.repeatable) == (1, 1, False)
    assert first.note.window_tables == (ORDERS,)
    a.add("agent", MINUTE, MINUTE.tables, 998)
    assert windowed(verdict, MINUTE, a, "agent", None) is first  # 2 left: the same
    two = Allow(note=note, result_bound=2)
    assert windowed(two, MINUTE, a, "agent", None).max_rows == 2  # type: ignore[union-attr]
    a.add("agent", MINUTE, MINUTE.tables, 1)
    capped = windowed(two, MINUTE, a, "agent", None)  # 1 left, below its bound
    assert isinstance(capped, Allow) and capped.max_rows == 1
    assert "1 rows agent has left" in capped.over_limit.message  # type: ignore[union-attr]
