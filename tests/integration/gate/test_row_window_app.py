"""Rows per identity and table over a window (``max_rows_per_window``) in a running
dbgate: counted across statements, sessions and prepared executions, per identity,
and a read past what is left is stopped with 54000 (the test pack's rule
``small-window``: 30 rows of each ``windowed_*`` table per hour)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.integration.holds.harness import (
    OTHER_AGENT,
    OTHER_PASSWORD,
    HoldsEnv,
    admin_execute,
    start_env,
    statements_seen,
)


@pytest.fixture(scope="module", params=["audited", "unaudited"])
def env(
    pg_server: Any, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HoldsEnv]:
    """The App with its audit trail, and without: then no observer follows every
    statement, and the windows' charges come only from the statements the window
    observer follows (``Observer.follows``) — which must be every windowed one."""
    name = f"gate_row_window_{request.param}"
    audit = None if request.param == "audited" else {"enabled": False}
    yield from start_env(pg_server, name, tmp_path_factory.mktemp(name), audit=audit)


@pytest.fixture(scope="module")
def tables(env: HoldsEnv) -> None:
    admin_execute(
        env.admin_dsn,
        "CREATE TABLE windowed_a (id int PRIMARY KEY, v text NOT NULL)",
        "INSERT INTO windowed_a SELECT g, 'v' || g FROM generate_series(1, 100) g",
        "CREATE TABLE windowed_b (id int PRIMARY KEY, v text NOT NULL)",
        "INSERT INTO windowed_b SELECT g, 'v' || g FROM generate_series(1, 100) g",
        "CREATE TABLE windowed_e (id int PRIMARY KEY, v text NOT NULL)",
        "INSERT INTO windowed_e SELECT g, 'v' || g FROM generate_series(1, 100) g",
        "CREATE TABLE windowed_f (id int PRIMARY KEY, v text NOT NULL)",
        "INSERT INTO windowed_f SELECT g, 'v' || g FROM generate_series(1, 100) g",
        "CREATE TABLE windowed_g (id int PRIMARY KEY, v text NOT NULL)",
        "INSERT INTO windowed_g SELECT g, 'v' || g FROM generate_series(1, 100) g",
        "CREATE TABLE windowed_h (id int PRIMARY KEY, v text NOT NULL)",
        "INSERT INTO windowed_h SELECT g, 'v' || g FROM generate_series(1, 100) g",
        "CREATE TABLE windowed_i (id int PRIMARY KEY, v text NOT NULL)",
        "INSERT INTO windowed_i SELECT g, 'v' || g FROM generate_series(1, 100) g",
        "CREATE TABLE windowed_j (id int PRIMARY KEY, v text NOT NULL)",
        "INSERT INTO windowed_j SELECT g, 'v' || g FROM generate_series(1, 100) g",
        "CREATE TABLE windowed_p (id int, region text NOT NULL, v text NOT NULL)"
        " PARTITION BY LIST (region)",
        "CREATE TABLE windowed_p_eu PARTITION OF windowed_p FOR VALUES IN ('eu')",
        "CREATE TABLE windowed_p_us PARTITION OF windowed_p FOR VALUES IN ('us')",
        "INSERT INTO windowed_p SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END,"
        " 'v' || g FROM generate_series(1, 100) g",
        "GRANT SELECT ON windowed_a, windowed_b, windowed_e, windowed_f, windowed_g,"
        " windowed_h, windowed_i, windowed_j, windowed_p, windowed_p_eu, windowed_p_us"
        " TO PUBLIC",
    )


async def test_reads_are_counted_across_statements_and_sessions(
    env: HoldsEnv, tables: None
) -> None:
    conn = await asyncpg.connect(env.dsn)
    try:
        rows = await conn.fetch("SELECT id FROM windowed_a WHERE id <= 20 ORDER BY id")
        assert len(rows) == 20
        # 10 rows left: a read of 20 is stopped at the 10th, and the 10 count
        with pytest.raises(asyncpg.ProgramLimitExceededError) as info:
            await conn.fetch("SELECT id FROM windowed_a WHERE id > 50")
        assert "10 rows agent has left of public.windowed_a" in info.value.message
        assert "small-window" in info.value.message
        # nothing left: refused before it runs, a key read too, qualified or not
        for sql in (
            "SELECT v FROM windowed_a WHERE id = 1",
            "SELECT v FROM public.windowed_a WHERE id = 2",
        ):
            with pytest.raises(asyncpg.ProgramLimitExceededError) as info:
                await conn.fetch(sql)
            assert "agent has read 30 rows of public.windowed_a" in info.value.message
        # the session goes on: another table has its own account
        assert await conn.fetchval("SELECT v FROM windowed_b WHERE id = 1") == "v1"
    finally:
        await conn.close()
    # another session of the same identity, simple Query protocol: the same account
    with psycopg.connect(env.dsn, autocommit=True) as other:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            other.execute("SELECT v FROM windowed_a WHERE id = 3", prepare=False)
        assert other.execute("SELECT 1").fetchone() == (1,)
    if not env.app.config.audit.enabled:
        return
    # the refusal is in the audit trail like any other (literals masked)
    rows = await env.app.acall(_audited(env))
    assert {
        "statement": "SELECT v FROM windowed_a WHERE id = $1",
        "decision": "deny",
        "outcome": "54000",
    } in rows, rows


async def _audited(env: HoldsEnv) -> list[dict[str, object]]:
    conn = await asyncpg.connect(env.pg_server.dsn(env.state_db))
    try:
        found = await conn.fetch(
            "SELECT statement, decision, outcome FROM dbgate.audit_log "
            "WHERE kind = 'statement' ORDER BY id DESC LIMIT 10"
        )
        return [dict(r) for r in found]
    finally:
        await conn.close()


async def test_each_execution_of_a_prepared_statement_is_counted(
    env: HoldsEnv, tables: None
) -> None:
    """Another identity has its own account; a prepared statement executed again and
    again (asyncpg's statement cache) is capped by what is left at each Bind."""
    dsn = env.app.dsn(env.data_db, OTHER_AGENT, OTHER_PASSWORD)
    conn = await asyncpg.connect(dsn)
    try:
        stmt = await conn.prepare("SELECT v FROM windowed_a WHERE id = $1")
        for i in range(1, 31):
            assert await stmt.fetchval(i) == f"v{i}"
        with pytest.raises(asyncpg.ProgramLimitExceededError) as info:
            await stmt.fetchval(31)
        assert f"{OTHER_AGENT} has read 30 rows of public.windowed_a" in info.value.message
        # a row-limited read of the other table stops at what is left
        rows = await conn.fetch("SELECT id FROM windowed_b WHERE id <= 25")
        assert len(rows) == 25
        with pytest.raises(asyncpg.ProgramLimitExceededError):
            await conn.fetch("SELECT id FROM windowed_b WHERE id <= 25")
    finally:
        await conn.close()


async def test_the_binds_of_a_prepared_read_are_capped_without_asking_the_gate(
    env: HoldsEnv,
) -> None:
    """Each Bind of a prepared read under a window is capped by its Parse verdict's
    quick judge: counted as before, without the gate judging it again, until nothing
    is left: then the gate sees the Bind and refuses it. The same for a driver that
    sends an unnamed Parse with every execution (the Parse is remembered)."""
    admin_execute(
        env.admin_dsn,
        "DROP TABLE IF EXISTS windowed_c",
        "CREATE TABLE windowed_c (id int PRIMARY KEY, v text NOT NULL)",
        "INSERT INTO windowed_c SELECT g, 'v' || g FROM generate_series(1, 100) g",
        "GRANT SELECT ON windowed_c TO PUBLIC",
    )
    gate = env.app.app.gate
    judged: list[tuple[str, str]] = []
    inspect = gate.inspect

    def counting(session: Any, statement: Any) -> Any:
        judged.append((statement.kind, statement.sql))
        return inspect(session, statement)

    gate.inspect = counting  # the relay asks the gate's attribute at each statement

    def kinds(kind: str) -> int:
        return sum(1 for k, _ in judged if k == kind)

    try:
        conn = await asyncpg.connect(env.dsn)
        try:
            stmt = await conn.prepare("SELECT v FROM windowed_c WHERE id = $1")
            for i in range(1, 21):
                assert await stmt.fetchval(i) == f"v{i}"
            assert kinds("bind") == 0
        finally:
            await conn.close()
        parses = kinds("parse")  # the first one may be judged twice (after a reload)
        with psycopg.connect(env.dsn, autocommit=True) as other:  # unnamed Parse each time
            for i in range(21, 31):
                sql = "SELECT v FROM windowed_c WHERE id = %s"
                assert other.execute(sql, (i,), prepare=False).fetchone() == (f"v{i}",)
            assert (kinds("parse"), kinds("bind")) == (parses + 1, 0)  # then remembered
            with pytest.raises(psycopg.errors.ProgramLimitExceeded) as info:
                other.execute("SELECT v FROM windowed_c WHERE id = %s", (31,), prepare=False)
            assert "agent has read 30 rows of public.windowed_c" in str(info.value)
            assert (kinds("parse"), kinds("bind")) == (parses + 1, 1)  # refused by the gate
    finally:
        del gate.inspect


async def test_a_changed_setting_has_the_next_bind_judged_by_the_gate(env: HoldsEnv) -> None:
    """Rules may match on application_name: once the session changes it, the next
    Bind of a prepared windowed read is judged by the gate (with the identity as it
    is now), and the quick judge takes over again after it."""
    admin_execute(
        env.admin_dsn,
        "DROP TABLE IF EXISTS windowed_d",
        "CREATE TABLE windowed_d (id int PRIMARY KEY, v text NOT NULL)",
        "INSERT INTO windowed_d SELECT g, 'v' || g FROM generate_series(1, 10) g",
        "GRANT SELECT ON windowed_d TO PUBLIC",
    )
    gate = env.app.app.gate
    binds: list[str] = []
    inspect = gate.inspect

    def counting(session: Any, statement: Any) -> Any:
        if statement.kind == "bind":
            binds.append(session.application_name)
        return inspect(session, statement)

    gate.inspect = counting
    try:
        conn = await asyncpg.connect(env.dsn)
        try:
            stmt = await conn.prepare("SELECT v FROM windowed_d WHERE id = $1")
            assert await stmt.fetchval(1) == "v1"
            assert binds == []
            await conn.execute("SET application_name = 'reporting'")
            for i in (2, 3, 4):
                assert await stmt.fetchval(i) == f"v{i}"
            assert len(binds) == 1  # the first Bind after the change only
        finally:
            await conn.close()
    finally:
        del gate.inspect


def test_rows_fetched_from_a_cursor_count_against_the_tables_it_reads(env: HoldsEnv) -> None:
    """A FETCH names no table: it is charged to the tables its cursor's DECLARE reads,
    and capped by what is left of them, through the simple Query protocol (psql,
    psycopg2's named cursors) and the extended one (psycopg 3's named cursors)."""
    admin_execute(
        env.admin_dsn,
        "DROP TABLE IF EXISTS windowed_cur, windowed_cur2",
        "CREATE TABLE windowed_cur (id int PRIMARY KEY, v text NOT NULL)",
        "INSERT INTO windowed_cur SELECT g, 'v' || g FROM generate_series(1, 100) g",
        "CREATE TABLE windowed_cur2 (id int PRIMARY KEY, v text NOT NULL)",
        "INSERT INTO windowed_cur2 SELECT g, 'v' || g FROM generate_series(1, 100) g",
        "GRANT SELECT ON windowed_cur, windowed_cur2 TO PUBLIC",
    )
    with psycopg.connect(env.dsn) as conn:
        conn.execute("DECLARE c CURSOR FOR SELECT id FROM windowed_cur WHERE id > 0", prepare=False)
        assert len(conn.execute("FETCH 20 FROM c", prepare=False).fetchall()) == 20
        with pytest.raises(psycopg.errors.ProgramLimitExceeded) as info:
            conn.execute("FETCH 20 FROM c", prepare=False).fetchall()  # 10 left
        assert "public.windowed_cur" in info.value.diag.message_primary
    with (
        psycopg.connect(env.dsn, autocommit=True) as other,
        pytest.raises(psycopg.errors.ProgramLimitExceeded),  # all 30 were read
    ):
        other.execute("SELECT v FROM windowed_cur WHERE id = 1", prepare=False)
    with psycopg.connect(env.dsn) as conn, conn.cursor(name="named") as cur:
        cur.execute("SELECT id FROM windowed_cur2 WHERE id > 0")
        got = []
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            while len(got) < 100:
                got += cur.fetchmany(7)
        assert len(got) == 28  # four fetches of 7; the fifth would pass the 30


async def test_a_read_proven_bounded_is_charged_its_bound_once(env: HoldsEnv, tables: None) -> None:
    """A key read (proven to read at most one row: the key catalog, read at the
    session's start, knows the table's key) is charged that row as it is let through,
    found or not, and only once, with the audit trail following every statement or
    without: 15 reads that find their row and 15 that do not use the 30 rows of the
    window, prepared or sent as simple Queries, and the 31st is refused."""
    conn = await asyncpg.connect(env.dsn)
    try:
        stmt = await conn.prepare("SELECT v FROM windowed_e WHERE id = $1")
        for i in range(1, 11):
            assert await stmt.fetchval(i) == f"v{i}"
            assert await stmt.fetchval(1000 + i) is None  # no row: still charged one
    finally:
        await conn.close()
    with psycopg.connect(env.dsn, autocommit=True) as other:
        for i in range(11, 16):
            sql = f"SELECT v FROM windowed_e WHERE id = {i}"
            assert other.execute(sql, prepare=False).fetchone() == (f"v{i}",)
            missing = f"SELECT v FROM windowed_e WHERE id = {1000 + i}"
            assert other.execute(missing, prepare=False).fetchone() is None
        with pytest.raises(psycopg.errors.ProgramLimitExceeded) as info:
            other.execute("SELECT v FROM windowed_e WHERE id = 99", prepare=False)
        assert "agent has read 30 rows of public.windowed_e" in str(info.value)


async def test_a_key_read_that_repeats_its_row_is_charged_the_rows_it_returned(
    env: HoldsEnv, tables: None
) -> None:
    """A key pins the one row of ``windowed_i`` this read reads, but the cross join
    with ``generate_series`` returns it 20 times: it is not proven to return one row,
    so it is watched and charged the 20 rows it returned (not the one it read); ten
    key reads use the rest of the window, and the next is refused."""
    conn = await asyncpg.connect(env.dsn)
    try:
        sql = "SELECT w.v, g FROM windowed_i w, generate_series(1, 20) g WHERE w.id = 1"
        assert len(await conn.fetch(sql)) == 20
        for i in range(2, 12):
            assert await conn.fetchval("SELECT v FROM windowed_i WHERE id = $1", i) == f"v{i}"
        with pytest.raises(asyncpg.ProgramLimitExceededError) as info:
            await conn.fetchval("SELECT v FROM windowed_i WHERE id = 50")
        assert "agent has read 30 rows of public.windowed_i" in info.value.message
    finally:
        await conn.close()


@pytest.mark.parametrize("prepare", [False, True], ids=["simple", "extended"])
def test_a_key_read_that_repeats_its_row_stops_at_what_is_left(
    env: HoldsEnv, tables: None, prepare: bool
) -> None:
    """The same kind of read asking for more rows than the window has left (40 of
    30) is stopped there with 54000, through the simple and the extended protocol."""
    # one identity per protocol: the first run uses up its window
    dsn = env.app.dsn(env.data_db, OTHER_AGENT, OTHER_PASSWORD) if prepare else env.dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        sql = "SELECT w.v, g FROM windowed_j w, generate_series(1, 40) g WHERE w.id = 1"
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            conn.execute(sql, prepare=prepare).fetchall()
        assert conn.execute("SELECT 1").fetchone() == (1,)


async def test_the_partitions_of_a_table_share_its_window(env: HoldsEnv, tables: None) -> None:
    """Rows read from a partition are rows of the partitioned table: one account for
    all of them, read through the parent or from each partition directly (else every
    partition would have a window of its own: 30 rows of each)."""
    conn = await asyncpg.connect(env.dsn)
    try:
        eu = await conn.fetch("SELECT v FROM windowed_p_eu WHERE v LIKE 'v1%'")
        us = await conn.fetch("SELECT v FROM windowed_p_us WHERE v LIKE 'v2%'")
        assert len(eu) + len(us) == 6 + 5  # v10..v18 even + v1, v100; v21..v29 odd
        parent = await conn.fetch("SELECT v FROM windowed_p WHERE v LIKE 'v3%'")
        assert len(parent) == 11  # charged to the same account: 22 of 30 now
        with pytest.raises(asyncpg.ProgramLimitExceededError) as info:
            await conn.fetch("SELECT v FROM windowed_p_us WHERE v LIKE 'v5%' OR v LIKE 'v7%'")
        assert "public.windowed_p" in info.value.message
    finally:
        await conn.close()


async def test_a_prepared_read_not_proven_bounded_is_charged_what_it_returned(
    env: HoldsEnv, tables: None
) -> None:
    """A prepared read no key bounds (``v`` is not unique) is capped at each Bind by
    its Parse's quick judge, and charged the rows each execution returned: the relay
    follows its Executes although nothing else in the session is followed (the Parse
    is not: each Bind is charged on its own)."""
    with statements_seen(env.app.app.gate) as seen:
        conn = await asyncpg.connect(env.dsn)
        try:
            stmt = await conn.prepare("SELECT id FROM windowed_f WHERE v = $1")
            for i in range(1, 31):
                assert await stmt.fetch("nothing") == []  # charged nothing
                assert await stmt.fetch(f"v{i}") == [(i,)]
            # every Bind judged by the quick judge
            assert [st for st in seen if st.kind == "bind"] == []
            with pytest.raises(asyncpg.ProgramLimitExceededError) as info:
                await stmt.fetch("nothing")  # nothing left: refused before it runs
            assert "agent has read 30 rows of public.windowed_f" in info.value.message
        finally:
            await conn.close()


@pytest.mark.parametrize(
    ("table", "where"),
    [("windowed_g", "id = {i}"), ("windowed_h", "v = 'v{i}'")],
    ids=["proven", "unproven"],
)
async def test_fresh_literals_of_a_windowed_read_are_capped_and_charged_from_the_shape(
    env: HoldsEnv, tables: None, table: str, where: str
) -> None:
    """Simple Queries that differ only in their literals (pgbench -M simple, agents
    that inline values) are answered from their shape, each capped by what is left and
    charged — its proven bound ahead, or what it returned — and the read that finds
    nothing left goes the long way, which refuses it."""
    with (
        statements_seen(env.app.app.gate, "_judge") as judged,
        psycopg.connect(env.dsn, autocommit=True) as conn,
    ):
        for i in range(1, 31):
            sql = f"SELECT id FROM {table} WHERE {where.format(i=i)}"
            assert conn.execute(sql, prepare=False).fetchone() == (i,)
        assert 1 <= len(judged) <= 3, judged  # the rest came from the shape
        with pytest.raises(psycopg.errors.ProgramLimitExceeded) as info:
            conn.execute(f"SELECT id FROM {table} WHERE {where.format(i=31)}", prepare=False)
        assert f"agent has read 30 rows of public.{table}" in str(info.value)
