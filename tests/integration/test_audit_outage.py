"""The state database goes away and comes back; a writer is killed with SIGKILL.
Whatever happens, ``audit verify`` passes and the chain has no gap."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from dbgate.audit.errors import AuditUnavailable
from dbgate.audit.events import SessionEvent
from dbgate.audit.verify import verify_database
from dbgate.audit.writer import AuditWriter
from dbgate.embedded import find_free_port
from tests.integration.audit_support import (
    create_state_database,
    drop_state_database,
    fast_config,
    state_link,
    statement,
    with_host_port,
)

DB = "dbgate_audit_outage"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def state_dsn(pg_server) -> AsyncIterator[str]:
    dsn = await create_state_database(pg_server, DB)
    yield dsn
    await drop_state_database(pg_server, DB)


async def _statements(dsn: str, chain: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(
            "SELECT seq, kind, event, statement, identity, details FROM dbgate.audit_log "
            "WHERE chain = $1 ORDER BY seq",
            chain,
        )
    finally:
        await conn.close()


def _numbers(rows: list[asyncpg.Record]) -> list[int]:
    """The i of statement(i) for every statement record, in chain order."""
    return [
        int(r["statement"].split("/* ")[1].split(" */")[0])
        for r in rows
        if r["kind"] == "statement"
    ]


async def test_refuse_mode_outage_resumes_the_chain_without_a_gap(pg_server, state_dsn) -> None:
    async with state_link(pg_server) as link:
        w = AuditWriter(with_host_port(state_dsn, "127.0.0.1", link.port), fast_config())
        await w.start()
        for i in range(100):
            w.record(statement(i))
        await w.flush()
        link.cut()
        for i in range(100, 150):
            w.record(statement(i))  # still accepted: these statements already ran
        with pytest.raises(AuditUnavailable):
            await w.flush()
        assert not w.available
        with pytest.raises(AuditUnavailable):
            w.admit()  # new statements are refused
        assert not w.admits_now()  # and nothing is let through without asking
        with pytest.raises(AuditUnavailable):
            await w.record_durable(statement(999, identity="held"))
        link.restore()
        await w.wait_available()
        for i in range(150, 200):
            w.record(statement(i))
        await w.flush()
        await w.stop()
    rows = await _statements(state_dsn, w.chain)
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    assert _numbers(rows) == list(range(200))
    assert not any(r["identity"] == "held" for r in rows)  # refused at once, not queued
    outages = [r for r in rows if r["event"] == "unavailable"]
    assert len(outages) == 1 and "since" in outages[0]["details"]
    report = await verify_database(state_dsn)
    assert report.ok, report.text()


async def test_refusals_past_a_full_queue_during_an_outage_are_counted(
    pg_server, state_dsn
) -> None:
    """While the audit is unavailable every new statement is refused, and each
    refusal is recorded once the database is back. An agent that retries in a loop
    must not grow the queue without bound meanwhile (a process that runs out of
    memory loses every record it holds): past the queue's bound, refusals are counted
    and the outage's record says how many, by identity."""
    async with state_link(pg_server) as link:
        w = AuditWriter(with_host_port(state_dsn, "127.0.0.1", link.port), fast_config())
        await w.start()
        link.cut()
        w.record(statement(0))  # ran before the loss was noticed
        with pytest.raises(AuditUnavailable):
            await w.flush()
        assert not w.available
        for i in range(1, 25_001):
            w.record(
                dataclasses.replace(
                    statement(i, identity=f"agent-{i % 2}"),
                    event="refused",
                    decision="refused",
                    outcome="42501",
                )
            )
        assert w.stats()["queued"] <= w.config.queue_size
        link.restore()
        await w.wait_available()
        await w.flush()
        await w.stop()
    rows = await _statements(state_dsn, w.chain)
    refused = [r for r in rows if r["event"] == "refused"]
    (outage,) = [r for r in rows if r["event"] == "unavailable"]
    counted = dict(json.loads(outage["details"])["refused_unrecorded"])
    assert len(refused) + sum(counted.values()) == 25_000
    assert counted.keys() == {"agent-0", "agent-1"}
    report = await verify_database(state_dsn)
    assert report.ok, report.text()


async def test_logins_past_a_full_queue_during_an_outage_are_counted(pg_server, state_dsn) -> None:
    """Clients connecting in a loop during an outage (failed logins need no
    password) must not grow the queue without bound either: past its bound, session
    records are counted by event and user name, a hundred names and the others."""
    async with state_link(pg_server) as link:
        w = AuditWriter(with_host_port(state_dsn, "127.0.0.1", link.port), fast_config())
        await w.start()
        link.cut()
        w.record(statement(0))
        with pytest.raises(AuditUnavailable):
            await w.flush()
        for i in range(25_000):
            w.record(SessionEvent("auth_failed", identity=f"user-{i}", outcome="28P01"))
        assert w.stats()["queued"] <= w.config.queue_size
        link.restore()
        await w.wait_available()
        await w.flush()
        await w.stop()
    rows = await _statements(state_dsn, w.chain)
    failed = [r for r in rows if r["event"] == "auth_failed"]
    (outage,) = [r for r in rows if r["event"] == "unavailable"]
    counted = json.loads(outage["details"])["sessions_unrecorded"]
    assert len(failed) + sum(n for _, _, n in counted) == 25_000
    assert {e for e, _, _ in counted} == {"auth_failed"}
    assert len(counted) == 101 and ["auth_failed", "<others>"] in [c[:2] for c in counted]
    report = await verify_database(state_dsn)
    assert report.ok, report.text()


async def test_buffer_mode_spills_and_replays_in_order(pg_server, state_dsn, tmp_path) -> None:
    spill_dir = tmp_path / "spill"
    async with state_link(pg_server) as link:
        config = fast_config(on_failure="buffer", spill_dir=spill_dir, batch_size=16)
        w = AuditWriter(with_host_port(state_dsn, "127.0.0.1", link.port), config)
        await w.start()
        for i in range(100):
            w.record(statement(i))
        await w.flush()
        link.cut()
        for i in range(100, 150):
            w.record(statement(i))
        with pytest.raises(AuditUnavailable):
            await w.flush()
        with contextlib.suppress(AuditUnavailable):
            await w.flush()  # returns (or fails) once everything is in the spill file
        assert w.stats()["spilled"] == 50
        assert w.available and w.admit() is None  # buffering: traffic goes on
        with pytest.raises(AuditUnavailable):
            await w.record_durable(statement(999))  # but nothing counts as committed
        spill_files = list(spill_dir.glob("*.spill"))
        assert [p.name for p in spill_files] == [f"{w.chain}.spill"]
        assert "h:" in spill_files[0].read_text()  # parameters hashed before spilling
        link.restore()
        await w.wait_available()
        for i in range(150, 200):
            w.record(statement(i))
        await w.flush()
        await w.stop()
    rows = await _statements(state_dsn, w.chain)
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    assert _numbers(rows) == list(range(200))  # 999 was refused at once, never queued
    assert list(spill_dir.glob("*.spill")) == []
    report = await verify_database(state_dsn)
    assert report.ok, report.text()


async def test_a_lost_commit_answer_writes_nothing_twice(pg_server, state_dsn) -> None:
    async with state_link(pg_server) as link:
        w = AuditWriter(with_host_port(state_dsn, "127.0.0.1", link.port), fast_config())
        await w.start()
        w.record(statement(0))
        await w.flush()
        link.lose_next_commit_answer()
        for i in range(1, 100):
            w.record(statement(i))
        with pytest.raises(AuditUnavailable):
            await w.flush()
        assert link.lost_commits == 1
        await w.wait_available()
        await w.flush()
        await w.stop()
    rows = await _statements(state_dsn, w.chain)
    assert _numbers(rows) == list(range(100))
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    report = await verify_database(state_dsn)
    assert report.ok, report.text()


async def _child(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.audit_child",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


async def _line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert line, "the child exited early"
    return line.decode().strip()


async def test_kill_9_under_load_then_restart_verifies(state_dsn) -> None:
    proc = await _child("load", state_dsn)
    try:
        chain = (await _line(proc)).removeprefix("chain ")
        durable = []
        while len(durable) < 8:
            line = await _line(proc)
            durable.append(int(line.removeprefix("durable ")))
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    restarted = AuditWriter(state_dsn, fast_config(), replica="child")
    await restarted.start()
    for i in range(20):
        restarted.record(statement(i))
    await restarted.stop()
    assert restarted.chain != chain  # a new process starts a new chain
    report = await verify_database(state_dsn)
    assert report.ok, report.text()
    assert not report.chains[chain].closed and report.chains[restarted.chain].closed
    conn = await asyncpg.connect(state_dsn)
    try:
        found = {
            r["identity"]
            for r in await conn.fetch(
                "SELECT identity FROM dbgate.audit_log WHERE chain = $1 AND identity LIKE 'durable-%'",
                chain,
            )
        }
    finally:
        await conn.close()
    assert {f"durable-{n}" for n in durable} <= found


async def test_a_dead_writers_spill_file_is_adopted_and_replayed(state_dsn, tmp_path) -> None:
    spill_dir = tmp_path / "spill"
    dead = with_host_port(state_dsn, "127.0.0.1", find_free_port())
    proc = await _child("spill", dead, str(spill_dir), "40")
    try:
        chain = (await _line(proc)).removeprefix("chain ")
        assert await _line(proc) == "spilled 41"  # chain_start and 40 statements
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert [p.name for p in spill_dir.glob("*.spill")] == [f"{chain}.spill"]
    config = fast_config(on_failure="buffer", spill_dir=spill_dir)
    heir = AuditWriter(state_dsn, config)
    await heir.start()
    heir.record(statement(1000))
    await heir.flush()
    await heir.stop()
    rows = await _statements(state_dsn, chain)
    assert [r["seq"] for r in rows] == list(range(1, 42))
    assert rows[0]["event"] == "chain_start" and _numbers(rows) == list(range(40))
    assert list(spill_dir.glob("*.spill")) == []
    report = await verify_database(state_dsn)
    assert report.ok, report.text()
    assert set(report.chains) == {chain, heir.chain}


async def test_a_full_spill_file_makes_the_audit_unavailable_and_loses_nothing(
    pg_server, state_dsn, tmp_path
) -> None:
    spill_dir = tmp_path / "spill"
    big = "SELECT '" + "x" * 20_000 + "' /* {} */"
    async with state_link(pg_server) as link:
        config = fast_config(
            on_failure="buffer", spill_dir=spill_dir, spill_max_bytes=1024 * 1024, batch_size=10
        )
        w = AuditWriter(with_host_port(state_dsn, "127.0.0.1", link.port), config)
        await w.start()
        await w.flush()
        link.cut()
        for i in range(100):  # about 2 MB: twice what the spill file may hold
            w.record(statement(i, sql=big.format(i)))
        with pytest.raises(AuditUnavailable):
            await w.flush()
        with pytest.raises(AuditUnavailable, match="spill file is full"):
            await w.wait_for_room()  # the gate's backpressure path refuses too
        assert not w.available
        with pytest.raises(AuditUnavailable, match="spill file is full"):
            w.admit()
        spilled = w.stats()["spilled"]
        assert 0 < spilled < 100
        link.restore()
        await w.wait_available()
        await w.flush()
        await w.stop()
    rows = await _statements(state_dsn, w.chain)
    assert _numbers(rows) == list(range(100))  # spilled ones first, then the rest, in order
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    report = await verify_database(state_dsn)
    assert report.ok, report.text()
