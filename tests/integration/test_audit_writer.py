"""The audit writer against a real state database: what it records, backpressure,
durability, two writers, chain ownership, hostile text, bad configuration."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from dbgate.audit.errors import AuditError, AuditUnavailable
from dbgate.audit.events import SessionEvent, StatementEvent
from dbgate.audit.text import unescape
from dbgate.audit.verify import read_heads, verify_database
from dbgate.audit.writer import AuditWriter
from dbgate.embedded import find_free_port
from tests.integration.audit_support import (
    create_state_database,
    drop_state_database,
    fast_config,
    one_of_each,
    statement,
    with_host_port,
)

DB = "dbgate_audit_writer"


@pytest.fixture(scope="module")
async def state_dsn(pg_server) -> AsyncIterator[str]:
    dsn = await create_state_database(pg_server, DB)
    yield dsn
    await drop_state_database(pg_server, DB)


@pytest.fixture
async def conn(state_dsn) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(state_dsn)
    yield c
    await c.close()


async def _rows(conn, chain: str) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM dbgate.audit_log WHERE chain = $1 ORDER BY seq", chain)


async def test_every_kind_of_event_is_recorded_in_one_chain(state_dsn, conn) -> None:
    w = AuditWriter(state_dsn, fast_config(), replica="r1")
    await w.start()
    for e in one_of_each():
        w.record(e)
    await w.stop()
    rows = await _rows(conn, w.chain)
    kinds = [(r["kind"], r["event"]) for r in rows]
    assert kinds == [
        ("audit", "chain_start"),
        ("session", "connect"),
        ("session", "auth_failed"),
        ("session", "auth_ok"),
        ("statement", "decided"),
        ("approval", "approved"),
        ("statement", "completed"),
        ("detokenize", "detokenize"),
        ("reload", "rules"),
        ("session", "disconnect"),
        ("audit", "chain_end"),
    ]
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    held = rows[4]
    assert (held["decision"], held["rule"], held["approval_id"]) == (
        "hold",
        "exports-need-approval",
        "42",
    )
    assert (held["purpose"], held["model"], held["categories"]) == (
        "monthly churn report",
        "gpt-x",
        ["export"],
    )
    approval = rows[5]
    assert (approval["actor"], approval["decision"], approval["reason"]) == (
        "alice",
        "approved",
        "ok for Q3",
    )
    done = rows[6]
    assert (done["outcome"], done["rows"], done["tokenized"]) == ("COPY 1000", 1000, True)
    assert rows[2]["outcome"] == "28P01" and rows[2]["identity"] == "mallory"
    assert json.loads(rows[9]["details"]) == {"statements": 2}
    assert rows[8]["outcome"] == "ok" and json.loads(rows[8]["details"])["version"] == "sha256:abc"
    assert all(r["replica"] == "r1" for r in rows)
    registered = await conn.fetchrow(
        "SELECT replica, pid FROM dbgate.audit_writers WHERE chain = $1", w.chain
    )
    assert registered["replica"] == "r1"
    report = await verify_database(state_dsn)
    assert report.ok, report.text()


async def test_raw_parameters_are_stored_only_as_keyed_hashes(state_dsn, conn) -> None:
    w = AuditWriter(state_dsn, fast_config(param_key="k1"))
    await w.start()
    w.record(statement(1, params=(b"123-45-6789", b"123-45-6789", None, "<masked>")))
    await w.stop()
    other = AuditWriter(state_dsn, fast_config(param_key="k2"))
    await other.start()
    other.record(statement(1, params=(b"123-45-6789",)))
    await other.stop()
    params = (await _rows(conn, w.chain))[1]["params"]
    assert params[0] == params[1] and params[0].startswith("h:") and len(params[0]) == 34
    assert params[2] is None and params[3] == "<masked>"
    assert (await _rows(conn, other.chain))[1]["params"][0] != params[0]  # keyed
    dump = await conn.fetchval(
        "SELECT string_agg(t::text, ' ') FROM dbgate.audit_events t WHERE chain = $1", w.chain
    )
    assert "123-45-6789" not in dump


async def test_pii_a_caller_forgot_to_mask_is_scrubbed_and_counted(state_dsn, conn) -> None:
    w = AuditWriter(state_dsn, fast_config())
    await w.start()
    w.record(
        statement(
            1,
            sql="UPDATE customers SET email = 'jane.doe@example.com', ssn = '078-05-1120' "
            "WHERE card = '4111 1111 1111 1111' OR phone = '(415) 555-0134'",
            reason="asked by bob@example.org",
        )
    )
    await w.stop()
    row = (await _rows(conn, w.chain))[1]
    assert row["statement"] == (
        "UPDATE customers SET email = '<email>', ssn = '<ssn>' "
        "WHERE card = '<card>' OR phone = '<phone>'"
    )
    assert row["reason"] == "asked by <email>"
    assert row["scrubbed"] == 5


async def test_hostile_text_is_recorded_faithfully_and_chains(state_dsn, conn) -> None:
    hostile = [
        "SELECT 'it''s' AS \"q\"\"uote\", E'back\\\\slash\\n' -- \x01\x02\x1b[31m\x7f",
        "SELECT '\x00' AS nul",  # NUL: PostgreSQL text cannot hold it
        b"SELECT '\xff\xfe broken utf-8 \xc3\x28'".decode("utf-8", "surrogateescape"),
        "SELECT '\ud800 lone surrogate'",
        b"\x80\x81binary\x00junk\xff",
        "SELECT '\ufffd replacement and emoji \U0001f600'",
        "x" * 300_000,  # longer than max_statement_chars
    ]
    w = AuditWriter(state_dsn, fast_config(max_statement_chars=100_000))
    await w.start()
    for i, sql in enumerate(hostile):
        w.record(statement(i, sql=sql, params=("a\\b", None)))
    await w.stop()
    rows = (await _rows(conn, w.chain))[1:-1]
    plain = [0, 5, 6]
    for i in plain:  # storable as is: stored as is, backslashes and all
        assert rows[i]["escaped"] is False
        assert rows[i]["params"] == ["a\\b", None]
    assert rows[0]["statement"] == hostile[0]
    assert rows[5]["statement"] == hostile[5]
    assert len(rows[6]["statement"]) == 100_000 and rows[6]["statement_length"] == 300_000
    assert rows[1]["statement"] == "SELECT '\\x00' AS nul"
    assert rows[2]["statement"] == "SELECT '\\xff\\xfe broken utf-8 \\xc3('"
    assert rows[3]["statement"] == "SELECT '\\ud800 lone surrogate'"
    for i in (1, 2, 3, 4):  # escaped, every text field alike, and reversibly
        assert rows[i]["escaped"] is True
        assert rows[i]["params"] == ["a\\\\b", None]
        assert unescape(rows[i]["params"][0]) == "a\\b"
    for i in (1, 2, 3):
        assert unescape(rows[i]["statement"]) == hostile[i]
    assert unescape(rows[4]["statement"]).encode("utf-8", "surrogateescape") == hostile[4]
    report = await verify_database(state_dsn)
    assert report.ok, report.text()


async def test_bad_field_types_are_recorded_and_noted_not_dropped(state_dsn, conn) -> None:
    w = AuditWriter(state_dsn, fast_config())
    await w.start()
    w.record(
        StatementEvent(
            "completed",
            "SELECT 1",
            at="yesterday",  # type: ignore[arg-type]
            rows=2**70,
            session_id="12",  # type: ignore[arg-type]
            categories="read",  # type: ignore[arg-type]
            identity=42,  # type: ignore[arg-type]
        )
    )
    with pytest.raises(TypeError):
        w.record("not an event")  # type: ignore[arg-type]
    await w.stop()
    row = (await _rows(conn, w.chain))[1]
    assert row["rows"] is None and row["session_id"] == 12 and row["categories"] == ["read"]
    assert row["identity"] == "42"
    assert json.loads(row["details"])["coerced"] == [
        "at",
        "categories",
        "identity",
        "rows",
        "session_id",
    ]


async def test_record_durable_returns_once_committed(state_dsn, conn) -> None:
    w = AuditWriter(state_dsn, fast_config())
    await w.start()
    for i in range(500):
        w.record(statement(i))
    held = StatementEvent("decided", "DROP TABLE orders", decision="hold", approval_id="77")
    await w.record_durable(held)
    # committed: visible to another connection right now, ahead of queued records
    row = await conn.fetchrow(
        "SELECT seq FROM dbgate.audit_log WHERE chain = $1 AND approval_id = '77'", w.chain
    )
    assert row is not None
    await w.stop()
    assert (
        await conn.fetchval("SELECT count(*) FROM dbgate.audit_log WHERE chain = $1", w.chain)
    ) == 503


async def test_a_full_queue_applies_backpressure_and_loses_nothing(state_dsn, conn) -> None:
    w = AuditWriter(state_dsn, fast_config(queue_size=100, batch_size=40))
    await w.start()
    waited = 0
    for i in range(1000):
        at_once = w.admits_now()  # the relay's quick Bind judge asks this
        admission = w.admit()
        assert at_once == (admission is None)
        if admission is not None:
            waited += 1
            await admission
        w.record(statement(i))
    # events of statements already admitted are accepted beyond the bound
    for i in range(150):
        w.record(statement(1000 + i))
    assert not w.has_room and not w.admits_now()
    await w.flush()
    assert w.has_room and w.admits_now()
    await w.stop()
    assert waited > 0
    n = await conn.fetchval("SELECT count(*) FROM dbgate.audit_log WHERE chain = $1", w.chain)
    assert n == 1150 + 2


async def test_two_writers_at_once_keep_separate_unbroken_chains(state_dsn, conn) -> None:
    a = AuditWriter(state_dsn, fast_config(batch_size=50), replica="replica-a")
    b = AuditWriter(state_dsn, fast_config(batch_size=50), replica="replica-a")
    await a.start()
    await b.start()
    for i in range(2000):
        (a if i % 3 else b).record(statement(i))
        if i % 97 == 0:
            await a.record_durable(statement(i, identity="durable"))
    await a.stop()
    await b.stop()
    assert a.chain != b.chain
    for w in (a, b):
        seqs = [r["seq"] for r in await _rows(conn, w.chain)]
        assert seqs == list(range(1, len(seqs) + 1))
    report = await verify_database(state_dsn)
    assert report.ok, report.text()
    assert report.chains[a.chain].closed and report.chains[b.chain].closed


async def test_a_chain_claimed_by_another_writer_is_refused(state_dsn, conn) -> None:
    first = AuditWriter(state_dsn, fast_config())
    await first.start()
    first.record(statement(1))
    await first.flush()
    thief = AuditWriter(state_dsn, fast_config(), chain=first.chain)
    await thief.start()
    with pytest.raises(AuditUnavailable, match="one writer"):
        await thief.flush()
    with pytest.raises(AuditError, match="one writer"):
        await thief.wait_available()
    with pytest.raises(AuditUnavailable):
        thief.admit()
    await thief.stop()
    await first.stop()
    report = await verify_database(state_dsn)
    assert report.ok, report.text()


async def test_chain_heads_go_to_the_log_and_the_head_file(state_dsn, tmp_path, caplog) -> None:
    head_file = tmp_path / "heads.jsonl"
    w = AuditWriter(state_dsn, fast_config(head_file=head_file))
    await w.start()
    for i in range(10):
        w.record(statement(i))
    await w.flush()
    with caplog.at_level(logging.INFO, logger="dbgate.audit"):
        w.log_head()
    chain, seq, h = w.head
    assert seq == 11
    assert f"audit chain head: chain={chain} seq=11 hash={h.hex()}" in caplog.text
    await w.stop()
    heads = read_heads(head_file)
    assert heads[0][:3] == (chain, 11, h)
    assert heads[0][3] is not None  # when the head record was chained
    assert heads[-1][1] == 12  # the final head, at stop (chain_end)
    log_file = tmp_path / "operator.log"
    log_file.write_text(caplog.text)
    assert read_heads(log_file) == [heads[0]]
    report = await verify_database(state_dsn, heads)
    assert report.ok, report.text()


async def test_unreachable_state_database_refuses_then_recovers_nothing(state_dsn) -> None:
    dead = with_host_port(state_dsn, "127.0.0.1", find_free_port())
    w = AuditWriter(dead, fast_config())
    await w.start()  # an unreachable database is not a start-up error
    assert not w.available
    with pytest.raises(AuditUnavailable, match=r"unreachable|cannot reach"):
        w.admit()
    with pytest.raises(AuditUnavailable):
        await w.record_durable(statement(1))
    await w.stop(timeout=0.5)


async def test_bad_credentials_and_unmigrated_databases_fail_at_start(pg_server, state_dsn) -> None:
    parts = urlsplit(state_dsn)
    bad = urlunsplit(
        parts._replace(netloc=f"{parts.username}:wrong-password@{parts.hostname}:{parts.port}")
    )
    with pytest.raises(AuditError, match="refused"):
        await AuditWriter(bad, fast_config()).start()
    admin = await asyncpg.connect(pg_server.dsn("postgres"))
    try:
        await admin.execute("DROP DATABASE IF EXISTS dbgate_audit_empty WITH (FORCE)")
        await admin.execute("CREATE DATABASE dbgate_audit_empty")
        with pytest.raises(AuditError, match="migrations"):
            await AuditWriter(pg_server.dsn("dbgate_audit_empty"), fast_config()).start()
    finally:
        await admin.execute("DROP DATABASE IF EXISTS dbgate_audit_empty WITH (FORCE)")
        await admin.close()


async def test_record_after_stop_is_an_error_not_a_silent_loss(state_dsn) -> None:
    w = AuditWriter(state_dsn, fast_config())
    await w.start()
    await w.stop()
    with pytest.raises(AuditError):
        w.record(SessionEvent("disconnect"))


async def test_array_elements_of_any_text_round_trip(state_dsn, conn) -> None:
    odd = ['a"b', "c\\d", "NULL", "", "x,y}{", " spaced ", "tab\there", "new\nline", "ü€😀"]
    w = AuditWriter(state_dsn, fast_config())
    await w.start()
    w.record(statement(1, params=(*odd, None), categories=tuple(odd), tables=("t",), columns=odd))
    w.record(statement(2, params=("nul\x00", None), categories=("read",)))
    await w.stop()
    rows = await _rows(conn, w.chain)
    assert rows[1]["params"] == [*odd, None]
    assert rows[1]["categories"] == odd and rows[1]["columns"] == odd
    assert rows[2]["escaped"] and rows[2]["params"] == ["nul\\x00", None]
    report = await verify_database(state_dsn)
    assert report.ok, report.text()


async def test_the_head_is_logged_when_the_interval_is_due(state_dsn, caplog) -> None:
    w = AuditWriter(state_dsn, fast_config(head_log_seconds=3600))
    await w.start()
    w.record(statement(1))
    await w.flush()
    with caplog.at_level(logging.INFO, logger="dbgate.audit"):
        w._tick()  # not due yet: nothing
        assert "audit chain head" not in caplog.text
        w._next_tick = 0  # the interval has passed
        w._tick()
        assert f"audit chain head: chain={w.chain} seq=2 " in caplog.text
        caplog.clear()
        w._next_tick = 0
        w._tick()  # the head did not move: not logged again
        assert "audit chain head" not in caplog.text
    await w.stop()
