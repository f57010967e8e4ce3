"""Tampering with the audit trail, by ordinary roles (refused) and by a superuser who
switches the triggers off (caught by ``audit verify``), one way at a time."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest

from dbgate.audit.canonical import INDEX, canonical, digest, link
from dbgate.audit.serial import from_db_values
from dbgate.audit.verify import read_heads, verify_database
from dbgate.audit.writer import AuditWriter, copy_tuple
from tests.integration.audit_support import (
    create_state_database,
    drop_state_database,
    fast_config,
    statement,
)

DB = "dbgate_audit_tamper"
RECORDS = 20  # statements; the chain holds chain_start + these + chain_end


@dataclass
class Trail:
    dsn: str
    chain: str
    conn: asyncpg.Connection  # superuser, triggers off (session_replication_role)

    async def row(self, seq: int) -> asyncpg.Record:
        """A record as reviewers see it (arrays as text[], hashes in hex)."""
        return await self.conn.fetchrow(
            "SELECT * FROM dbgate.audit_log WHERE chain = $1 AND seq = $2", self.chain, seq
        )

    async def id_of(self, seq: int) -> int:
        return await self.conn.fetchval(
            "SELECT id FROM dbgate.audit_events WHERE chain = $1 AND seq = $2", self.chain, seq
        )


@pytest.fixture
async def trail(pg_server, tmp_path) -> AsyncIterator[Trail]:
    dsn = await create_state_database(pg_server, DB)
    w = AuditWriter(dsn, fast_config(head_file=tmp_path / "heads.jsonl"))
    await w.start()
    for i in range(RECORDS):
        w.record(statement(i, identity=f"agent-{i % 3}"))
    await w.stop()
    conn = await asyncpg.connect(dsn)
    await conn.execute("SET session_replication_role = replica")  # user triggers off
    assert (await verify_database(dsn)).ok
    try:
        yield Trail(dsn, w.chain, conn)
    finally:
        await conn.close()
        await drop_state_database(pg_server, DB)


def _forge(values: list, prev: bytes) -> bytes:
    return link(prev, digest(canonical(values)))


async def _insert(conn: asyncpg.Connection, values: list, prev: bytes, hash_: bytes) -> None:
    from dbgate.audit.writer import COPY_COLUMNS

    cols = ", ".join(f'"{c}"' for c in COPY_COLUMNS)
    marks = ", ".join(f"${i + 1}" for i in range(len(COPY_COLUMNS)))
    await conn.execute(
        f"INSERT INTO dbgate.audit_events ({cols}) VALUES ({marks})",
        *copy_tuple(values, prev, hash_),
    )


async def _only_finding(dsn: str, heads=()) -> tuple[str, int | None, int | None, str]:
    """The one finding, the same whether one connection reads the trail in order or
    three read it in ranges of four records."""
    report = await verify_database(dsn, heads, jobs=1)
    assert not report.ok
    assert len(report.findings) == 1, report.text()
    ranged = await verify_database(dsn, heads, jobs=3, range_rows=4)
    assert [f.as_dict() for f in ranged.findings] == [f.as_dict() for f in report.findings]
    assert ranged.records == report.records
    f = report.findings[0]
    return f.problem, f.seq, f.id, f.message


# ---------------------------------------------------------------------- triggers


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE dbgate.audit_events SET statement = 'x'",
        "DELETE FROM dbgate.audit_events WHERE seq = 3",
        "TRUNCATE dbgate.audit_events",
        "UPDATE dbgate.{partition} SET statement = 'x'",
        "DELETE FROM dbgate.{partition}",
        "TRUNCATE dbgate.{partition}",
        "DELETE FROM dbgate.audit_chains",
        "UPDATE dbgate.audit_chains SET pid = 1",
        "TRUNCATE dbgate.audit_anchors",
    ],
)
async def test_changes_are_refused_by_triggers(trail: Trail, sql: str) -> None:
    await trail.conn.execute("SET session_replication_role = DEFAULT")
    partition = await trail.conn.fetchval(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'dbgate.audit_events'::regclass LIMIT 1"
    )
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await trail.conn.execute(sql.format(partition=partition))
    assert (await verify_database(trail.dsn)).ok


# ---------------------------------------------------------------------- edited


async def test_an_edited_record_is_named(trail: Trail) -> None:
    await trail.conn.execute(
        "UPDATE dbgate.audit_events SET statement = 'SELECT 1' WHERE chain = $1 AND seq = 5",
        trail.chain,
    )
    problem, seq, record_id, message = await _only_finding(trail.dsn)
    assert (problem, seq, record_id) == ("edited", 5, await trail.id_of(5))
    assert f"chain {trail.chain} seq 5" in message


async def test_an_edited_timestamp_is_caught(trail: Trail) -> None:
    await trail.conn.execute(
        "UPDATE dbgate.audit_events SET at = at - interval '1 microsecond' "
        "WHERE chain = $1 AND seq = 9",
        trail.chain,
    )
    assert (await _only_finding(trail.dsn))[:2] == ("edited", 9)


async def test_an_edit_with_a_recomputed_hash_is_caught_at_the_next_link(trail: Trail) -> None:
    row = await trail.row(5)
    values = from_db_values(row)
    values[INDEX["statement"]] = "SELECT 'nothing to see'"
    forged = _forge(values, bytes.fromhex(row["prev_hash"]))
    await trail.conn.execute(
        "UPDATE dbgate.audit_events SET statement = $3, hash = $4 WHERE chain = $1 AND seq = $2",
        trail.chain,
        5,
        values[INDEX["statement"]],
        forged,
    )
    problem, seq, record_id, message = await _only_finding(trail.dsn)
    assert (problem, seq, record_id) == ("edited", 5, await trail.id_of(5))
    assert "hash recomputed" in message


# ---------------------------------------------------------------------- deleted


async def test_a_deleted_record_is_named(trail: Trail) -> None:
    await trail.conn.execute(
        "DELETE FROM dbgate.audit_events WHERE chain = $1 AND seq = 5", trail.chain
    )
    problem, seq, _, message = await _only_finding(trail.dsn)
    assert (problem, seq) == ("deleted", 5)
    assert "seq 5 missing" in message


async def test_deleted_first_records_are_named(trail: Trail) -> None:
    await trail.conn.execute(
        "DELETE FROM dbgate.audit_events WHERE chain = $1 AND seq <= 3", trail.chain
    )
    problem, seq, _, message = await _only_finding(trail.dsn)
    assert (problem, seq) == ("deleted", 1)
    assert "seq 1 to 3 missing" in message


async def test_deleted_records_renumbered_to_close_the_gap_are_caught(trail: Trail) -> None:
    await trail.conn.execute(
        "DELETE FROM dbgate.audit_events WHERE chain = $1 AND seq = 5", trail.chain
    )
    await trail.conn.execute(
        "UPDATE dbgate.audit_events SET seq = seq - 1 WHERE chain = $1 AND seq > 5", trail.chain
    )
    problem, seq, record_id, message = await _only_finding(trail.dsn)
    assert (problem, seq, record_id) == ("deleted", 5, await trail.id_of(5))
    assert "the record before it was deleted" in message


async def test_records_deleted_from_the_end_are_caught_with_the_anchored_heads(
    trail: Trail, tmp_path
) -> None:
    await trail.conn.execute(
        "DELETE FROM dbgate.audit_events WHERE chain = $1 AND seq > 15", trail.chain
    )
    # the chain alone cannot show it: it now looks like a writer that crashed
    report = await verify_database(trail.dsn)
    assert report.ok and not report.chains[trail.chain].closed
    heads = read_heads(tmp_path / "heads.jsonl")
    problem, seq, _, message = await _only_finding(trail.dsn, heads)
    assert (problem, seq) == ("deleted", RECORDS + 2)
    assert "deleted from the end of the chain" in message


async def test_a_whole_chain_deleted_is_caught_by_its_registration(trail: Trail) -> None:
    await trail.conn.execute("DELETE FROM dbgate.audit_events WHERE chain = $1", trail.chain)
    problem, _, _, message = await _only_finding(trail.dsn)
    assert problem == "deleted" and "registered" in message


async def test_a_view_changed_to_hide_records_fails_verification(trail: Trail) -> None:
    definition = await trail.conn.fetchval("SELECT pg_get_viewdef('dbgate.audit_log'::regclass)")
    hidden = definition.rstrip().rstrip(";") + " WHERE identity IS DISTINCT FROM 'agent-1'"
    await trail.conn.execute(f"CREATE OR REPLACE VIEW dbgate.audit_log AS {hidden}")
    problem, _, _, _ = await _only_finding(trail.dsn)
    assert problem == "deleted"


# ---------------------------------------------------------------------- inserted


async def test_an_inserted_copy_with_the_same_seq_is_named(trail: Trail) -> None:
    row = await trail.row(5)
    await _insert(
        trail.conn, from_db_values(row), bytes.fromhex(row["prev_hash"]), bytes.fromhex(row["hash"])
    )
    problem, seq, _, message = await _only_finding(trail.dsn)
    assert (problem, seq) == ("inserted", 5)
    assert "a second record claims seq 5" in message


async def test_an_inserted_record_claiming_a_used_seq_is_named(trail: Trail) -> None:
    row = await trail.row(5)
    values = from_db_values(row)
    values[INDEX["statement"]] = "DROP TABLE orders"
    await _insert(trail.conn, values, bytes.fromhex(row["prev_hash"]), bytes.fromhex(row["hash"]))
    problem, seq, _, message = await _only_finding(trail.dsn)
    # whichever of the two comes first, seq 5 is where the chain stops verifying
    assert seq == 5 and problem in {"inserted", "edited"}
    assert f"chain {trail.chain} seq 5" in message


async def test_an_inserted_record_with_forged_hash_and_renumbering_is_named(trail: Trail) -> None:
    prev_row = await trail.row(5)
    values = from_db_values(prev_row)
    values[INDEX["seq"]] = 6
    values[INDEX["statement"]] = "SELECT 'I was always here'"
    forged = _forge(values, bytes.fromhex(prev_row["hash"]))
    await trail.conn.execute(
        "UPDATE dbgate.audit_events SET seq = seq + 1 WHERE chain = $1 AND seq >= 6", trail.chain
    )
    await _insert(trail.conn, values, bytes.fromhex(prev_row["hash"]), forged)
    problem, seq, _, message = await _only_finding(trail.dsn)
    assert (problem, seq) == ("inserted", 6)
    assert "seq 6" in message and "was inserted" in message


async def test_a_record_appended_after_the_chain_end_is_named(trail: Trail) -> None:
    last = await trail.conn.fetchrow(
        "SELECT * FROM dbgate.audit_log WHERE chain = $1 ORDER BY seq DESC LIMIT 1", trail.chain
    )
    assert last["event"] == "chain_end"
    values = from_db_values(last)
    values[INDEX["seq"]] = last["seq"] + 1
    values[INDEX["kind"]] = "statement"
    values[INDEX["event"]] = "completed"
    values[INDEX["statement"]] = "SELECT 'afterthought'"
    await _insert(
        trail.conn, values, bytes.fromhex(last["hash"]), _forge(values, bytes.fromhex(last["hash"]))
    )
    problem, seq, _, message = await _only_finding(trail.dsn)
    assert (problem, seq) == ("inserted", last["seq"] + 1)
    assert "chain_end" in message


async def test_a_chain_nobody_registered_is_named(trail: Trail) -> None:
    await trail.conn.execute("DELETE FROM dbgate.audit_chains WHERE chain = $1", trail.chain)
    problem, _, _, message = await _only_finding(trail.dsn)
    assert problem == "inserted" and "no writer registered it" in message


# ---------------------------------------------------------------------- reordered


async def test_two_swapped_records_are_named(trail: Trail) -> None:
    await trail.conn.execute(
        "UPDATE dbgate.audit_events SET seq = CASE seq WHEN 7 THEN 8 ELSE 7 END "
        "WHERE chain = $1 AND seq IN (7, 8)",
        trail.chain,
    )
    problem, seq, record_id, message = await _only_finding(trail.dsn)
    assert (problem, seq) == ("reordered", 7)
    assert record_id == await trail.id_of(7)
    assert "written as seq 8" in message


# ---------------------------------------------------------------------- the command


async def test_the_command_exits_non_zero_naming_the_record(trail: Trail) -> None:
    async def run() -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dbgate",
            "audit",
            "verify",
            "--dsn",
            trail.dsn,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        return proc.returncode, out.decode()

    code, out = await run()
    assert code == 0 and "intact" in out
    await trail.conn.execute(
        "UPDATE dbgate.audit_events SET identity = 'someone-else' WHERE chain = $1 AND seq = 12",
        trail.chain,
    )
    code, out = await run()
    assert code == 1
    assert f"chain {trail.chain} seq 12 (id {await trail.id_of(12)}) was edited" in out


# ------------------------------------------------------------- forged anchors


async def _forge_anchor(trail: Trail, seq: int, month: str) -> None:
    """What an owner or superuser can do without any trigger noticing: INSERT a row
    into audit_anchors, as if the chain's records up to ``seq`` had been archived."""
    h = await trail.conn.fetchval(
        "SELECT hash FROM dbgate.audit_events WHERE chain = $1 AND seq = $2", trail.chain, seq
    )
    await trail.conn.execute(
        "INSERT INTO dbgate.audit_anchors (chain, seq, hash, month, records)"
        " VALUES ($1, $2, $3, $4::text::date, $2)",
        trail.chain,
        seq,
        h,
        month,
    )


async def test_first_records_deleted_behind_a_forged_anchor_are_caught(trail: Trail) -> None:
    # the records are this month's, still attached: no archive took them
    await _forge_anchor(trail, 10, "2000-01-01")
    await trail.conn.execute(
        "DELETE FROM dbgate.audit_events WHERE chain = $1 AND seq <= 10", trail.chain
    )
    problem, seq, _, message = await _only_finding(trail.dsn)
    assert (problem, seq) == ("deleted", 1)
    assert "anchor" in message


async def test_a_forged_anchor_of_this_month_is_caught(trail: Trail) -> None:
    month = await trail.conn.fetchval("SELECT date_trunc('month', now() AT TIME ZONE 'UTC')::date")
    await _forge_anchor(trail, 10, str(month))
    await trail.conn.execute(
        "DELETE FROM dbgate.audit_events WHERE chain = $1 AND seq <= 10", trail.chain
    )
    problem, seq, _, message = await _only_finding(trail.dsn)
    assert (problem, seq) == ("deleted", 1)
    assert "is not over" in message


async def test_a_whole_chain_deleted_behind_a_forged_anchor_is_caught_with_heads(
    trail: Trail, tmp_path
) -> None:
    """A forger who makes the database consistent — an anchor in a past month with no
    live records, the writer's start moved back before it — is caught by the heads
    logged outside: they were logged after that month ended."""
    last = RECORDS + 2
    month = await trail.conn.fetchval(
        "SELECT (date_trunc('month', now() AT TIME ZONE 'UTC') - interval '1 month')::date"
    )
    await _forge_anchor(trail, last, str(month))
    await trail.conn.execute(
        "UPDATE dbgate.audit_chains SET started_at = started_at - interval '62 days'"
    )
    await trail.conn.execute("DELETE FROM dbgate.audit_events WHERE chain = $1", trail.chain)
    # the database alone now says the chain's records were archived last month
    assert (await verify_database(trail.dsn)).ok
    heads = read_heads(tmp_path / "heads.jsonl")
    assert all(h[3] is not None for h in heads)
    problem, seq, _, message = await _only_finding(trail.dsn, heads)
    assert (problem, seq) == ("deleted", last)
    assert "no archive wrote that anchor" in message


@pytest.mark.parametrize("column", ["chain", "seq", "hash"])
async def test_a_record_without_chain_seq_or_hash_is_named(trail: Trail, column: str) -> None:
    """The owner can drop a NOT NULL constraint; a record reviewers see without a chain
    or seq must not be one that verification never reads."""
    await trail.conn.execute(f"ALTER TABLE dbgate.audit_events ALTER COLUMN {column} DROP NOT NULL")
    row = await trail.row(5)
    values = from_db_values(row)
    values[INDEX["statement"]] = "GRANT ALL ON customers TO agent"
    await _insert(trail.conn, values, bytes.fromhex(row["prev_hash"]), bytes(32))
    await trail.conn.execute(
        f"UPDATE dbgate.audit_events SET {column} = NULL WHERE statement LIKE 'GRANT%'"
    )
    problem, _, _, message = await _only_finding(trail.dsn)
    if column == "hash":  # the forged copy or the original comes first: either is named
        assert problem in ("inserted", "edited")
    else:
        assert problem == "inserted" and f"no {column}" in message


async def test_a_forged_chain_with_its_registration_is_noted_with_heads(
    trail: Trail, tmp_path
) -> None:
    """A whole chain written by someone who knows the scheme, registration and all,
    recomputes and links: nothing in the database can tell. With the anchored heads,
    verify says which chains no head vouches for."""
    forged = "vm.00000000deadbeef"
    await trail.conn.execute(
        "INSERT INTO dbgate.audit_chains (chain, replica, host, pid, version, started_at)"
        " SELECT $1, replica, host, pid + 1, version, started_at FROM dbgate.audit_chains"
        " WHERE chain = $2",
        forged,
        trail.chain,
    )
    prev = bytes(32)
    for seq in range(1, RECORDS + 3):
        values = from_db_values(await trail.row(seq))
        values[INDEX["chain"]] = forged
        h = _forge(values, prev)
        await _insert(trail.conn, values, prev, h)
        prev = h
    heads = read_heads(tmp_path / "heads.jsonl")
    report = await verify_database(trail.dsn, heads)
    assert report.ok  # what no hash chain can show
    assert any(forged in n and "no head" in n for n in report.notes), report.text()
    assert not any(trail.chain in n for n in report.notes), report.text()
