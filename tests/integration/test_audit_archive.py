"""Retention: the oldest month leaves the live table, and what remains still verifies."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime

import asyncpg
import pytest

from dbgate.audit.archive import archive_month
from dbgate.audit.errors import AuditError
from dbgate.audit.verify import verify_database, verify_file
from dbgate.audit.writer import AuditWriter
from tests.integration.audit_support import (
    create_state_database,
    drop_state_database,
    fast_config,
    statement,
)

DB = "dbgate_audit_archive"


def months_back(n: int) -> date:
    today = datetime.now(UTC).date()
    y, m = today.year, today.month - n
    while m < 1:
        y, m = y - 1, m + 12
    return date(y, m, 1)


def noon(d: date, day: int = 10) -> float:
    return datetime(d.year, d.month, day, 12, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def state_dsn(pg_server) -> AsyncIterator[str]:
    """Chain A writes in months -3, -2, -1 and now; chain B from month -2 on; chain C
    only in month -3 (it ends there)."""
    dsn = await create_state_database(pg_server, DB)
    m3, m2, m1 = months_back(3), months_back(2), months_back(1)
    clock = Clock(noon(m3))
    a = AuditWriter(dsn, fast_config(), replica="a", clock=clock)
    c = AuditWriter(dsn, fast_config(), replica="c", clock=clock)
    await a.start()
    await c.start()
    for i in range(5):
        a.record(statement(i))
        c.record(statement(i))
    await a.flush()
    await c.stop()
    clock.t = noon(m2)
    b = AuditWriter(dsn, fast_config(), replica="b", clock=clock)
    await b.start()
    for month in (m2, m1):
        clock.t = noon(month)
        for i in range(5):
            a.record(statement(i))
            b.record(statement(i))
        await a.flush()
        await b.flush()
    clock.t = datetime.now(UTC).timestamp()
    a.record(statement(99))
    await a.stop()
    await b.stop()
    assert (await verify_database(dsn)).ok
    yield dsn
    await drop_state_database(pg_server, DB)


async def _partitions(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'dbgate.audit_events'::regclass ORDER BY 1"
        )
        return [r[0] for r in rows]
    finally:
        await conn.close()


async def test_archiving_months_in_order_keeps_verification_working(state_dsn, tmp_path) -> None:
    m3, m2 = months_back(3), months_back(2)
    before = await _partitions(state_dsn)
    assert len(before) == 4
    part, records, report = await archive_month(state_dsn, m3, tmp_path / "m3.jsonl")
    assert part == f"audit_events_{m3:%Y_%m}" and part not in await _partitions(state_dsn)
    assert records == 1 + 5 + 1 + 5 + 1  # A: start + 5; C: start + 5 + end
    assert report.ok and verify_file(tmp_path / "m3.jsonl").ok
    after = await verify_database(state_dsn)
    assert after.ok, after.text()
    assert any("archive anchor" in n for n in after.notes)
    conn = await asyncpg.connect(state_dsn)
    try:
        anchors = await conn.fetch(
            "SELECT chain, seq, records FROM dbgate.audit_archive ORDER BY chain"
        )
        assert [(r["seq"], r["records"]) for r in anchors] == [(6, 6), (7, 7)]
        # the detached table is still there until dropped
        assert await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"dbgate.{part}")
    finally:
        await conn.close()
    part2, _, _ = await archive_month(state_dsn, m2, tmp_path / "m2.jsonl", drop=True)
    assert part2 not in await _partitions(state_dsn)
    final = await verify_database(state_dsn)
    assert final.ok, final.text()
    file_report = verify_file(tmp_path / "m2.jsonl")
    assert file_report.ok and any("starts at seq" in n for n in file_report.notes)


async def test_only_the_oldest_past_month_can_be_archived(state_dsn, tmp_path) -> None:
    with pytest.raises(AuditError, match="not the oldest attached month"):
        await archive_month(state_dsn, months_back(1), tmp_path / "m1.jsonl")
    for n in (3, 2, 1):
        await archive_month(state_dsn, months_back(n), tmp_path / f"m{n}.jsonl")
    with pytest.raises(AuditError, match="current month"):
        await archive_month(state_dsn, months_back(0), tmp_path / "now.jsonl")
    with pytest.raises(AuditError, match="no attached audit partition"):
        await archive_month(state_dsn, months_back(3), tmp_path / "again.jsonl")
    assert (await verify_database(state_dsn)).ok


async def test_a_month_detached_without_anchors_shows_as_deleted(state_dsn) -> None:
    conn = await asyncpg.connect(state_dsn)
    try:
        await conn.execute(
            f"ALTER TABLE dbgate.audit_events DETACH PARTITION dbgate.audit_events_{months_back(3):%Y_%m}"
        )
    finally:
        await conn.close()
    report = await verify_database(state_dsn)
    problems = sorted((f.problem, f.seq or 0) for f in report.findings)
    # chain A lost seq 1-6 with no anchor; chain C vanished but is registered
    assert problems == [("deleted", 0), ("deleted", 1)]


async def test_the_archive_command(state_dsn, tmp_path) -> None:
    async def cli(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dbgate",
            "audit",
            "archive",
            "--dsn",
            state_dsn,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        return proc.returncode, out.decode()

    code, out = await cli("--month", "2026-13", "-o", str(tmp_path / "x"))
    assert code == 2 and "YYYY-MM" in out
    month = f"{months_back(3):%Y-%m}"
    code, out = await cli("--month", month, "-o", str(tmp_path / "m.jsonl"), "--drop")
    assert code == 0 and "dropped" in out, out
    code, out = await cli("--month", month, "-o", str(tmp_path / "again.jsonl"))
    assert code == 2 and "no attached audit partition" in out
    assert not (tmp_path / "again.jsonl").exists()
    code, out = await cli("--month", f"{months_back(2):%Y-%m}", "-o", str(tmp_path / "m.jsonl"))
    assert code == 2 and "exists" in out


async def test_heads_anchored_before_archiving_still_verify(state_dsn, tmp_path) -> None:
    conn = await asyncpg.connect(state_dsn)
    try:
        rows = await conn.fetch(
            "SELECT chain, seq, hash FROM dbgate.audit_log WHERE seq IN (3, 6, 12) ORDER BY 1, 2"
        )
    finally:
        await conn.close()
    heads = [(r["chain"], r["seq"], bytes.fromhex(r["hash"])) for r in rows]
    assert (await verify_database(state_dsn, heads)).ok
    await archive_month(state_dsn, months_back(3), tmp_path / "m3.jsonl")
    report = await verify_database(state_dsn, heads)
    assert report.ok, report.text()
    forged = [(c, s, bytes(32)) for c, s, _ in heads if s == 12]
    assert forged
    problems = [f.problem for f in (await verify_database(state_dsn, forged)).findings]
    assert problems == ["edited"] * len(forged)
