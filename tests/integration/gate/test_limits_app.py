"""Run-time limits and proofs of narrowness in a running dbgate (the default pack).

Reads the classifier cannot prove narrow from the upstream's unique keys return at
most ``max_rows`` rows (1,000) and fail with 54000 past that; writes it cannot prove
narrow run measured (through the extended protocol: test_measured_batches.py); a
statement that switches a session guard off gets the identity's ceiling instead;
tables created after start are proven from their keys without a restart.
"""

from __future__ import annotations

import asyncio
import json

import asyncpg
import psycopg
import pytest

from tests.integration.holds.clients import AsyncpgNotices
from tests.integration.holds.harness import HoldsEnv, admin_execute


@pytest.fixture(scope="module")
def big(env: HoldsEnv) -> str:
    admin_execute(
        env.admin_dsn,
        "DROP TABLE IF EXISTS big",
        "CREATE TABLE big (id int PRIMARY KEY, note text NOT NULL)",
        "INSERT INTO big SELECT g, 'n' FROM generate_series(1, 1500) g",
        "GRANT SELECT, UPDATE ON big TO PUBLIC",
    )
    return "big"


async def test_a_read_not_proven_narrow_stops_at_the_row_limit(env: HoldsEnv, big: str) -> None:
    conn = await asyncpg.connect(env.dsn)
    try:
        with pytest.raises(asyncpg.ProgramLimitExceededError) as info:
            await conn.fetch(f"SELECT id FROM {big} WHERE note = 'n'")
        assert "more than 1000 rows" in info.value.message
        # the session goes on, and a read under the limit is untouched
        rows = await conn.fetch(f"SELECT id FROM {big} WHERE note = 'n' ORDER BY id LIMIT 10")
        assert [r["id"] for r in rows] == list(range(1, 11))
        assert await conn.fetchval(f"SELECT count(*) FROM {big}") == 1500
    finally:
        await conn.close()


def test_the_row_limit_holds_for_simple_queries_too(env: HoldsEnv, big: str) -> None:
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            conn.execute(f"SELECT id, note FROM {big} WHERE id > 0").fetchall()
        assert conn.execute("SELECT 1").fetchone() == (1,)


async def test_a_key_pinned_read_runs_and_an_unpinned_one_is_stopped_past_the_limit(
    env: HoldsEnv, big: str
) -> None:
    conn = await asyncpg.connect(env.dsn)
    try:
        # A literal IN-list on the primary key pins its 1,000 rows (the most a proof counts).
        in_list = ", ".join(str(i) for i in range(1, 1001))
        rows = await conn.fetch(f"SELECT id FROM {big} WHERE id IN ({in_list})")
        assert len(rows) == 1000
        # = ANY($1) pins nothing (its length is a value): limited, and 1,200 > 1,000.
        with pytest.raises(asyncpg.ProgramLimitExceededError):
            await conn.fetch(
                f"SELECT id FROM {big} WHERE id = ANY($1::int[])", list(range(1, 1201))
            )
        # the session is still usable, and a single key still reads
        assert await conn.fetchval(f"SELECT note FROM {big} WHERE id = $1", 1499) == "n"
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "source",
    [
        "generate_series(1, 1200) g",
        "(SELECT 1 FROM generate_series(1, 1200)) g",
        "pg_attribute g",
    ],
    ids=["function", "sub-select", "catalog"],
)
async def test_a_key_read_that_repeats_its_row_stops_at_the_row_limit(
    env: HoldsEnv, big: str, source: str
) -> None:
    """A key pins the one row of ``big`` the read reads, but the cross join returns it
    more than 1,000 times: the proof bounds the rows it reads, not the rows it returns,
    so the row limit applies and stops it, prepared and as a simple Query."""
    sql = f"SELECT b.id, b.note FROM {big} b, {source} WHERE b.id = 1"
    conn = await asyncpg.connect(env.dsn)
    try:
        with pytest.raises(asyncpg.ProgramLimitExceededError) as info:
            await conn.fetch(sql)
        assert "more than 1000 rows" in info.value.message
        assert await conn.fetchval(f"SELECT note FROM {big} WHERE id = 1") is not None
    finally:
        await conn.close()
    with psycopg.connect(env.dsn, autocommit=True) as simple:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            simple.execute(sql).fetchall()
        assert simple.execute("SELECT 1").fetchone() == (1,)


def test_grouping_sets_over_a_key_read_stop_at_the_row_limit(env: HoldsEnv, big: str) -> None:
    """``GROUP BY ROLLUP`` counts each row in several groups: 1,000 key-pinned rows
    give 1,001 groups, one more than the limit."""
    in_list = ", ".join(str(i) for i in range(1, 1001))
    sql = f"SELECT id, count(*) FROM {big} WHERE id IN ({in_list}) GROUP BY ROLLUP (id)"
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            conn.execute(sql).fetchall()
        plain = sql.replace("ROLLUP (id)", "id")
        assert len(conn.execute(plain).fetchall()) == 1000


async def test_a_write_pinned_by_the_primary_key_runs(env: HoldsEnv, big: str) -> None:
    conn = await asyncpg.connect(env.dsn)
    try:
        for i in (1, 2, 3):  # prepared once, executed three times (pgbench-like)
            assert await conn.execute(f"UPDATE {big} SET note = $1 WHERE id = $2", "w", i) == (
                "UPDATE 1"
            )
    finally:
        await conn.close()


async def test_a_write_not_proven_narrow_runs_measured_under_its_limit(
    env: HoldsEnv, big: str
) -> None:
    conn = await asyncpg.connect(env.dsn)
    try:
        # a range is no proof: measured under a savepoint, 50 rows <= 100, kept (not held)
        done = conn.execute(f"UPDATE {big} SET note = 'm' WHERE id <= 50")
        assert await asyncio.wait_for(done, 30) == "UPDATE 50"
        assert await conn.fetchval(f"SELECT count(*) FROM {big} WHERE note = 'm'") == 50
        # inside the client's own block: kept or undone by the client, as without dbgate
        tr = conn.transaction()
        await tr.start()
        assert await conn.execute(f"UPDATE {big} SET note = 'r' WHERE id <= 60") == "UPDATE 60"
        await tr.rollback()
        assert await conn.fetchval(f"SELECT count(*) FROM {big} WHERE note = 'r'") == 0
        async with conn.transaction():
            assert await conn.execute(f"UPDATE {big} SET note = 'r' WHERE id <= 60") == (
                "UPDATE 60"
            )
        assert await conn.fetchval(f"SELECT count(*) FROM {big} WHERE note = 'r'") == 60
        assert not conn.is_in_transaction()
    finally:
        await conn.close()


def test_a_measured_write_returns_its_rows_once(env: HoldsEnv, big: str) -> None:
    """RETURNING through a simple Query (psycopg's client-side binding cursor): the
    rows arrive once, and the session's status is the server's."""
    with psycopg.connect(env.dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        cur = conn.execute(f"UPDATE {big} SET note = 'n' WHERE id <= %s RETURNING id", (60,))
        assert sorted(r[0] for r in cur.fetchall()) == list(range(1, 61))
        assert cur.statusmessage == "UPDATE 60"
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with conn.transaction():
            cur = conn.execute(f"DELETE FROM {big} WHERE id > %s RETURNING id", (1490,))
            assert len(cur.fetchall()) == 10
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
            raise psycopg.Rollback
        assert conn.execute(f"SELECT count(*) FROM {big}").fetchone() == (1500,)


async def test_a_write_over_its_limit_is_undone_and_held_with_the_measured_count(
    env: HoldsEnv, big: str
) -> None:
    conn = await asyncpg.connect(env.dsn)
    notices = AsyncpgNotices(conn)
    try:
        running = asyncio.create_task(conn.execute(f"UPDATE {big} SET note = 'o' WHERE id <= 500"))
        rid = await notices.held()
        # undone while the approver decides: nothing changed, nothing locked
        assert await env.app.acall(_count(env, big, "o")) == 0
        row = await env.app.arequest(rid)
        assert row["rule"] == "allow-bounded-writes"
        reasons = json.loads(row["reasons"])
        over = [r for r in reasons if r["code"] == "changes-over-limit"]
        assert over and "would change 500 rows" in over[0]["text"], reasons
        await env.app.aapprove(rid)
        assert await running == "UPDATE 500"
        assert await conn.fetchval(f"SELECT count(*) FROM {big} WHERE note = 'o'") == 500

        running = asyncio.create_task(conn.execute(f"DELETE FROM {big} WHERE note = 'o'"))
        rid = await notices.held()
        await env.app.areject(rid, "too many")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await running
        assert await conn.fetchval(f"SELECT count(*) FROM {big} WHERE note = 'o'") == 500
        await conn.execute(f"UPDATE {big} SET note = 'n' WHERE id <= 80")
    finally:
        running.cancel()
        await conn.close()


async def _count(env: HoldsEnv, table: str, note: str) -> int:
    conn = await asyncpg.connect(env.admin_dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table} WHERE note = $1", note))
    finally:
        await conn.close()


async def test_switching_a_guard_off_gets_the_ceiling(env: HoldsEnv) -> None:
    conn = await asyncpg.connect(env.dsn)
    try:
        assert await conn.execute("SET statement_timeout = 0") == "SET"
        assert await conn.fetchval("SHOW statement_timeout") == "2min"
        async with conn.transaction():
            await conn.execute("SET LOCAL lock_timeout = 0")
            assert await conn.fetchval("SHOW lock_timeout") == "10s"
    finally:
        await conn.close()


async def test_a_table_created_after_start_is_proven_from_its_keys(env: HoldsEnv) -> None:
    admin_execute(
        env.admin_dsn,
        "DROP TABLE IF EXISTS later_keys",
        "CREATE TABLE later_keys (code text PRIMARY KEY, note text)",
        "INSERT INTO later_keys SELECT 'c' || g, 'n' FROM generate_series(1, 1200) g",
        "GRANT SELECT, UPDATE ON later_keys TO PUBLIC",
    )
    conn = await asyncpg.connect(env.dsn)
    try:
        # pinned by the new table's key: runs at once, not held as an unproven write
        done = await asyncio.wait_for(
            conn.execute("UPDATE later_keys SET note = 'k' WHERE code = 'c7'"), 30
        )
        assert done == "UPDATE 1"
    finally:
        await conn.close()


async def test_a_delete_that_foreign_keys_cascade_is_held_though_its_key_pins_one_row(
    env: HoldsEnv,
) -> None:
    """``DELETE FROM acct WHERE id = 1`` is proven to delete one row of ``acct`` and its
    tag says ``DELETE 1``, while ON DELETE CASCADE takes every item of that account
    with it: held before it runs, and rejected nothing is lost."""
    admin_execute(
        env.admin_dsn,
        "DROP TABLE IF EXISTS acct_item, acct",
        "CREATE TABLE acct (id int PRIMARY KEY, note text)",
        "CREATE TABLE acct_item (id int PRIMARY KEY, "
        "acct_id int NOT NULL REFERENCES acct (id) ON DELETE CASCADE)",
        "INSERT INTO acct VALUES (1, 'a'), (2, 'b')",
        "INSERT INTO acct_item SELECT g, 1 FROM generate_series(1, 500) g",
        "GRANT SELECT, DELETE, UPDATE ON acct, acct_item TO PUBLIC",
    )
    conn = await asyncpg.connect(env.dsn)
    notices = AsyncpgNotices(conn)
    running = None
    try:
        running = asyncio.create_task(conn.execute("DELETE FROM acct WHERE id = 1"))
        rid = await notices.held()
        row = await env.app.arequest(rid)
        codes = [r["code"] for r in json.loads(row["reasons"])]
        assert "uncounted-changes" in codes, codes
        await env.app.areject(rid, "cascades")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await running
        assert await conn.fetchval("SELECT count(*) FROM acct_item") == 500
        # a write no foreign key follows keeps its proof: it runs at once
        assert await conn.execute("UPDATE acct SET note = 'x' WHERE id = 2") == "UPDATE 1"
        assert await conn.execute("DELETE FROM acct_item WHERE id = 1") == "DELETE 1"
    finally:
        if running is not None:
            running.cancel()
        await conn.close()
