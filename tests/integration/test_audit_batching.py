"""How the audit writer groups records into commits: ordinary records share one,
nothing that someone waits for is held back, batch boundaries lose nothing, and a
state database that disappears in the middle of a batch loses nothing either.

Which commit wrote a row is its ``xmin`` (the inserting transaction).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
import pytest

from dbgate.audit.errors import AuditUnavailable
from dbgate.audit.events import StatementEvent
from dbgate.audit.verify import verify_database
from dbgate.audit.writer import AuditWriter
from tests.integration.audit_support import (
    create_state_database,
    drop_state_database,
    fast_config,
    state_link,
    statement,
    with_host_port,
)

DB = "dbgate_audit_batching"
#: Long enough that a test would hang (and fail on its own bound) if a write it
#: expects waited for the delay to run out.
NEVER = 3600.0


@pytest.fixture(scope="module")
async def state_dsn(pg_server) -> AsyncIterator[str]:
    dsn = await create_state_database(pg_server, DB)
    yield dsn
    await drop_state_database(pg_server, DB)


async def _commits(dsn: str, chain: str) -> list[tuple[int, str, str]]:
    """(seq, transaction, statement) of every record of ``chain``, in chain order."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT seq, xmin::text AS tx, coalesce(statement, '') AS statement "
            "FROM dbgate.audit_events WHERE chain = $1 ORDER BY seq",
            chain,
        )
    finally:
        await conn.close()
    return [(r["seq"], r["tx"], r["statement"]) for r in rows]


async def _yield_to_the_writer(times: int = 20) -> None:
    """Let every ready task run a few turns (no waiting for time to pass)."""
    for _ in range(times):
        await asyncio.sleep(0)


@pytest.mark.parametrize("configured", [False, True], ids=["argument", "audit.batch_delay"])
async def test_records_that_arrive_one_by_one_share_a_commit(state_dsn, configured) -> None:
    if configured:  # the longest the configuration allows, far beyond this test's run
        w = AuditWriter(state_dsn, fast_config(batch_size=1000, batch_delay=10))
    else:
        w = AuditWriter(state_dsn, fast_config(batch_size=1000), batch_delay=NEVER)
    await w.start()
    w.record(statement(0))
    await w.flush()
    for i in range(1, 51):
        w.record(statement(i))
        await _yield_to_the_writer()  # the writer could write each one, and must not
    await asyncio.wait_for(w.flush(), 10)  # flush does not wait for the delay
    await w.stop()
    rows = await _commits(state_dsn, w.chain)
    assert [seq for seq, _, _ in rows] == list(range(1, 54))
    later = {tx for seq, tx, _ in rows if 3 <= seq <= 52}  # statement(1..50)
    assert len(later) == 1
    report = await verify_database(state_dsn)
    assert report.ok, report.text()


async def test_a_durable_record_is_not_held_back_and_takes_the_queue_along(state_dsn) -> None:
    w = AuditWriter(state_dsn, fast_config(batch_size=1000), batch_delay=NEVER)
    await w.start()
    w.record(statement(0))
    await w.flush()
    for i in range(1, 21):
        w.record(statement(i))
        await _yield_to_the_writer()
    held = StatementEvent("decided", "DELETE FROM orders", decision="hold", approval_id="9")
    await asyncio.wait_for(w.record_durable(held), 10)
    rows = await _commits(state_dsn, w.chain)  # before stop: committed by now
    await w.stop()
    assert rows[2][2] == "DELETE FROM orders"  # it jumped the queue...
    assert len(rows) == 3 + 20
    assert len({tx for seq, tx, _ in rows if seq >= 3}) == 1  # ...in one commit with it


async def test_clients_held_back_by_a_full_queue_do_not_wait_for_the_delay(state_dsn) -> None:
    w = AuditWriter(state_dsn, fast_config(queue_size=100, batch_size=1000), batch_delay=NEVER)
    await w.start()
    await w.flush()
    for i in range(100):
        w.record(statement(i))
    admission = w.admit()
    assert admission is not None  # full: the next statement waits for room...
    await asyncio.wait_for(admission, 10)  # ...and gets it without the delay running out
    assert w.admit() is None
    await w.stop()
    report = await verify_database(state_dsn)
    assert report.ok, report.text()


@pytest.mark.parametrize("records", [39, 40, 41, 80, 81, 123])
async def test_batch_boundaries_lose_and_repeat_nothing(state_dsn, records: int) -> None:
    w = AuditWriter(state_dsn, fast_config(batch_size=40), batch_delay=NEVER)
    await w.start()
    for i in range(records):
        w.record(statement(i))
        if i % 7 == 0:
            await _yield_to_the_writer(3)
    await asyncio.wait_for(w.flush(), 10)
    await w.stop()
    rows = await _commits(state_dsn, w.chain)
    numbers = [int(text.split("/* ")[1].split(" */")[0]) for _, _, text in rows[1:-1]]
    assert numbers == list(range(records))
    assert [seq for seq, _, _ in rows] == list(range(1, records + 3))
    assert max(Counter(tx for _, tx, _ in rows).values()) <= 40
    report = await verify_database(state_dsn)
    assert report.ok, report.text()


async def test_the_database_disappearing_mid_batch_loses_nothing(pg_server) -> None:
    name = DB + "_cut"
    dsn = await create_state_database(pg_server, name)
    try:
        async with state_link(pg_server) as link:
            w = AuditWriter(with_host_port(dsn, "127.0.0.1", link.port), fast_config(batch_size=50))
            await w.start()
            for i in range(20):
                w.record(statement(i))
            await w.flush()
            link.cut_when_copy_starts()
            for i in range(20, 140):  # more than two batches, queued at once
                w.record(statement(i))
            with pytest.raises(AuditUnavailable):
                await w.flush()
            assert link.cut_copies == 1
            assert not w.available
            link.restore()
            await w.wait_available()
            await w.flush()
            await w.stop()
        rows = await _commits(dsn, w.chain)
        numbers = [int(t.split("/* ")[1].split(" */")[0]) for _, _, t in rows if "/* " in t]
        assert numbers == list(range(140))
        assert [seq for seq, _, _ in rows] == list(range(1, len(rows) + 1))
        report = await verify_database(dsn)
        assert report.ok, report.text()
    finally:
        await drop_state_database(pg_server, name)
