"""Writes sent through the extended protocol, measured as they run (the default pack).

A write the classifier cannot prove narrow is allowed up to ``max_rows_changed``
(100) rows. Sent as Parse/Bind/Execute/Sync — what asyncpg, psycopg 3 and
SQLAlchemy send — its batch runs under a savepoint dbgate sets up before the batch's
first message; the batch's answers wait for its ReadyForQuery; under the limit they
are the client's as PostgreSQL sent them, past it the batch is undone and held with
the measured count, and an approval sends it again. See dbgate/proxy/measure.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import asyncpg
import psycopg
import pytest

from dbgate.wire import messages as m
from tests.integration.holds.clients import AsyncpgNotices, PsycopgNotices, check_notice
from tests.integration.holds.harness import AGENT, AGENT_PASSWORD, HoldsEnv, admin_execute
from tests.integration.rawclient import RawClient, errors, extended, names, rows, status

TABLE = "mb"
SYNC = m.Sync().encode()
FLUSH = m.Flush().encode()


@pytest.fixture
def mb(env: HoldsEnv) -> str:
    """600 rows, all noted 'n'; ``n`` may not reach 1000 (a check to violate)."""
    admin_execute(
        env.admin_dsn,
        f"DROP TABLE IF EXISTS {TABLE}",
        f"CREATE TABLE {TABLE} (id int PRIMARY KEY, note text NOT NULL, "
        "n int NOT NULL DEFAULT 0 CHECK (n < 1000))",
        f"INSERT INTO {TABLE} (id, note) SELECT g, 'n' FROM generate_series(1, 600) g",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {TABLE} TO PUBLIC",
    )
    return TABLE


async def noted(env: HoldsEnv, note: str) -> int:
    conn = await asyncpg.connect(env.admin_dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {TABLE} WHERE note = $1", note))
    finally:
        await conn.close()


@pytest.fixture
async def agent_conn(env: HoldsEnv) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(env.dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def held(client: RawClient) -> int:
    """The request id of the hold notice the raw client gets next."""
    notice = (await client.until(m.NoticeResponse))[-1]
    return check_notice(notice.message, notice.fields.get("D", ""), notice.sqlstate)


async def raw_agent(env: HoldsEnv) -> RawClient:
    return await RawClient.connect(
        "127.0.0.1", env.app.port, user=AGENT, password=AGENT_PASSWORD, database=env.data_db
    )


# -- asyncpg: a named statement, bound in a batch of its own -----------------------------


async def test_an_unproven_write_through_bind_runs_measured_under_its_limit(
    env: HoldsEnv, mb: str, agent_conn: asyncpg.Connection
) -> None:
    notices = AsyncpgNotices(agent_conn)
    sql = f"UPDATE {mb} SET note = $1 WHERE id <= $2"
    done = agent_conn.execute(sql, "a", 50)
    assert await asyncio.wait_for(done, 30) == "UPDATE 50"
    assert notices.empty()  # not held
    assert await noted(env, "a") == 50
    assert not agent_conn.is_in_transaction()
    # the same prepared statement again, inside the client's own block
    tr = agent_conn.transaction()
    await tr.start()
    assert await agent_conn.execute(sql, "b", 60) == "UPDATE 60"
    assert agent_conn.is_in_transaction()
    await tr.rollback()
    assert await noted(env, "b") == 0
    async with agent_conn.transaction():
        assert await agent_conn.execute(sql, "b", 60) == "UPDATE 60"
    assert await noted(env, "b") == 60
    assert notices.empty()


async def test_an_unproven_write_through_bind_over_its_limit_is_undone_and_held(
    env: HoldsEnv, mb: str, agent_conn: asyncpg.Connection
) -> None:
    notices = AsyncpgNotices(agent_conn)
    running = asyncio.create_task(
        agent_conn.execute(f"UPDATE {mb} SET note = $1 WHERE id <= $2", "o", 500)
    )
    try:
        rid = await notices.held()
        assert await noted(env, "o") == 0  # undone while the approver decides
        row = await env.app.arequest(rid)
        reasons = json.loads(row["reasons"])
        over = [r for r in reasons if r["code"] == "changes-over-limit"]
        assert over and "would change 500 rows of" in over[0]["text"], reasons
        await env.app.aapprove(rid)
        assert await running == "UPDATE 500"  # sent again, once
        assert await noted(env, "o") == 500

        running = asyncio.create_task(agent_conn.execute(f"DELETE FROM {mb} WHERE note = $1", "o"))
        rid = await notices.held()
        await env.app.areject(rid, "too many")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await running
        assert await noted(env, "o") == 500
        # the session and its prepared statements go on
        assert await agent_conn.fetchval(f"SELECT note FROM {mb} WHERE id = $1", 7) == "o"
        assert await agent_conn.execute(f"DELETE FROM {mb} WHERE note = $1", "zz") == "DELETE 0"
    finally:
        running.cancel()


async def test_an_error_in_a_measured_batch_is_the_clients_error(
    env: HoldsEnv, mb: str, agent_conn: asyncpg.Connection
) -> None:
    sql = f"UPDATE {mb} SET n = n + $1 WHERE id <= $2"
    with pytest.raises(asyncpg.CheckViolationError):
        await agent_conn.execute(sql, 5000, 10)
    assert not agent_conn.is_in_transaction()
    assert await agent_conn.execute(sql, 1, 10) == "UPDATE 10"
    with pytest.raises(asyncpg.InFailedSQLTransactionError):
        async with agent_conn.transaction():
            with pytest.raises(asyncpg.CheckViolationError):
                await agent_conn.execute(sql, 5000, 10)
            await agent_conn.execute(sql, 1, 10)
    assert await agent_conn.fetchval(f"SELECT sum(n) FROM {mb}") == 10


# -- psycopg 3: Parse/Bind/Describe/Execute/Sync of the unnamed statement --------------


async def test_psycopg_returning_rows_arrive_once_and_the_status_is_the_servers(
    env: HoldsEnv, mb: str
) -> None:
    async with await psycopg.AsyncConnection.connect(env.dsn, autocommit=True) as conn:
        cur = await conn.execute(
            f"UPDATE {mb} SET note = %s WHERE id <= %s RETURNING id", ("r", 60)
        )
        assert sorted(r[0] for r in await cur.fetchall()) == list(range(1, 61))
        assert cur.statusmessage == "UPDATE 60"
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        async with conn.transaction(force_rollback=True):
            cur = await conn.execute(f"DELETE FROM {mb} WHERE id > %s RETURNING id", (590,))
            assert len(await cur.fetchall()) == 10
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert (await (await conn.execute(f"SELECT count(*) FROM {mb}")).fetchone()) == (600,)
        # prepared: a named Parse in the same batch as its Bind, then its Binds alone
        for _ in range(3):
            cur = await conn.execute(
                f"UPDATE {mb} SET n = n + 1 WHERE id <= %s", (20,), prepare=True
            )
            assert cur.statusmessage == "UPDATE 20"
        assert (await (await conn.execute(f"SELECT sum(n) FROM {mb}")).fetchone()) == (60,)


async def test_psycopg_over_the_limit_held_then_approved_returns_its_rows(
    env: HoldsEnv, mb: str
) -> None:
    async with await psycopg.AsyncConnection.connect(env.dsn, autocommit=True) as conn:
        notices = PsycopgNotices(conn)
        running = asyncio.create_task(
            conn.execute(f"UPDATE {mb} SET note = %s WHERE id > %s RETURNING id", ("p", 100))
        )
        try:
            rid = await notices.aheld()
            assert await noted(env, "p") == 0
            await env.app.aapprove(rid)
            cur = await running
            assert sorted(r[0] for r in await cur.fetchall()) == list(range(101, 601))
            assert cur.statusmessage == "UPDATE 500"
        finally:
            running.cancel()
        assert await noted(env, "p") == 500


async def test_psycopg_prepared_over_the_limit_rejected_leaves_nothing_prepared(
    env: HoldsEnv, mb: str
) -> None:
    """The rejected batch prepared a named statement; dbgate closed it again, so the
    driver (which saw its batch fail) prepares it afresh next time."""
    async with await psycopg.AsyncConnection.connect(
        env.dsn, autocommit=True, prepare_threshold=0
    ) as conn:
        notices = PsycopgNotices(conn)
        sql = f"UPDATE {mb} SET note = %s WHERE id <= %s"
        running = asyncio.create_task(conn.execute(sql, ("q", 300)))
        try:
            rid = await notices.aheld()
            await env.app.areject(rid, "no")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await running
        finally:
            running.cancel()
        assert await noted(env, "q") == 0
        cur = await conn.execute(sql, ("q", 30))
        assert cur.statusmessage == "UPDATE 30"
        cur = await conn.execute(sql, ("q", 40))
        assert cur.statusmessage == "UPDATE 40"
        assert await noted(env, "q") == 40


# -- on the wire: what drivers do not send ------------------------------------------------


async def test_a_named_statement_of_an_undone_batch_is_closed_then_prepared_again(
    env: HoldsEnv, mb: str
) -> None:
    client = await raw_agent(env)
    try:
        batch = (
            m.Parse("s1", f"UPDATE {mb} SET note = $1 WHERE id <= $2").encode(),
            m.Bind("", "s1", params=(b"w", b"400")).encode(),
            m.Execute("", 0).encode(),
            SYNC,
        )
        client.send(*batch)
        rid = await held(client)
        await env.app.areject(rid, "no")
        got = await client.until_ready()
        assert [e.sqlstate for e in errors(got)] == ["42501"]
        assert status(got) == "I"
        # s1 is gone, as the client now believes: preparing it again works
        client.send(*batch)
        rid = await held(client)
        await env.app.aapprove(rid)
        got = await client.until_ready()
        assert names(got) == ["ParseComplete", "BindComplete", "CommandComplete", "ReadyForQuery"]
        assert got[2].tag == "UPDATE 400"
        # and it exists now: a Bind alone runs it (measured, under the limit)
        client.send(m.Bind("", "s1", params=(b"v", b"10")).encode(), m.Execute("", 0), SYNC)
        got = await client.until_ready()
        assert names(got) == ["BindComplete", "CommandComplete", "ReadyForQuery"]
        assert got[1].tag == "UPDATE 10"
    finally:
        await client.close()
    assert await noted(env, "w") == 390


async def test_a_measured_bind_in_the_middle_of_a_batch_is_held_before_it_runs(
    env: HoldsEnv, mb: str
) -> None:
    """A set-up can only go before a batch's first message: a write bound later in a
    batch that no measurement covers is not run until a human says so."""
    client = await raw_agent(env)
    try:
        client.send(
            extended("SELECT 1"), extended(f"UPDATE {mb} SET note = 'x' WHERE note = 'n'"), SYNC
        )
        rid = await held(client)
        assert await noted(env, "x") == 0
        row = await env.app.arequest(rid)
        assert any(
            r["code"] == "changes-over-limit" and "could not count" in r["text"]
            for r in json.loads(row["reasons"])
        ), row["reasons"]
        await env.app.areject(rid, "no")
        got = await client.until_ready()
        assert [e.sqlstate for e in errors(got)] == ["42501"]
        assert rows(got) == [(b"1",)]
        assert status(got) == "I"
    finally:
        await client.close()
    assert await noted(env, "x") == 0


async def test_batches_pipelined_behind_a_measured_one_wait_and_keep_their_order(
    env: HoldsEnv, mb: str
) -> None:
    client = await raw_agent(env)
    try:
        client.send(
            extended(f"UPDATE {mb} SET note = 'k' WHERE id <= 10"),
            SYNC,
            extended(f"UPDATE {mb} SET note = 'k' WHERE id <= 500"),
            SYNC,
            extended(f"SELECT count(*) FROM {mb} WHERE note = 'k'"),
            SYNC,
        )
        first = await client.until_ready()
        assert [x.tag for x in first if isinstance(x, m.CommandComplete)] == ["UPDATE 10"]
        assert status(first) == "I"
        rid = await held(client)
        assert await noted(env, "k") == 10  # the second is undone, the third waits
        await env.app.aapprove(rid)
        second = await client.until_ready()
        assert [x.tag for x in second if isinstance(x, m.CommandComplete)] == ["UPDATE 500"]
        third = await client.until_ready()
        assert rows(third) == [(b"500",)]
    finally:
        await client.close()


async def test_a_batch_that_asks_for_its_answers_early_gets_them_and_past_the_limit_fails(
    env: HoldsEnv, mb: str
) -> None:
    """Flush: the answers cannot wait for the Sync, so they go as they come; past the
    limit the batch is undone and fails at its Sync (54000), like an error at commit."""
    client = await raw_agent(env)
    try:
        client.send(extended(f"UPDATE {mb} SET note = 'f' WHERE id <= 20"), FLUSH)
        got = await client.until(m.CommandComplete)
        assert got[-1].tag == "UPDATE 20"
        client.send(SYNC)
        assert status(await client.until_ready()) == "I"
        assert await noted(env, "f") == 20

        client.send(extended(f"UPDATE {mb} SET note = 'g' WHERE id <= 300"), FLUSH)
        got = await client.until(m.CommandComplete)
        assert got[-1].tag == "UPDATE 300"
        client.send(SYNC)
        got = await client.until_ready()
        assert [e.sqlstate for e in errors(got)] == ["54000"]
        assert "undone" in errors(got)[0].message
        assert status(got) == "I"
        assert await noted(env, "g") == 0
        assert await noted(env, "f") == 20
    finally:
        await client.close()


async def test_a_prepare_only_batch_and_a_proven_write_are_not_held(
    env: HoldsEnv, mb: str, agent_conn: asyncpg.Connection
) -> None:
    """asyncpg prepares in a batch of its own (Parse/Describe/Sync): a measurement
    opened for it binds nothing and is simply kept."""
    stmt = await agent_conn.prepare(f"UPDATE {mb} SET note = $1 WHERE note = $2")
    assert stmt.get_parameters()
    assert await stmt.fetch("h", "nothing") == []
    assert await agent_conn.execute(f"UPDATE {mb} SET note = $1 WHERE id = $2", "h", 3) == (
        "UPDATE 1"
    )
    assert await noted(env, "h") == 1


# -- other clients, and a failed block -------------------------------------------------


def test_sqlalchemy_and_pg8000_run_an_unproven_write_measured(env: HoldsEnv, mb: str) -> None:
    """SQLAlchemy (psycopg dialect, inside the transaction it begins) and pg8000
    (unnamed Parse/Bind/Execute/Sync) write under the limit without a hold."""
    import pg8000.dbapi
    import sqlalchemy as sa

    url = env.dsn.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            done = conn.execute(
                sa.text(f"UPDATE {mb} SET note = :n WHERE id <= :k"), {"n": "s", "k": 30}
            )
            assert done.rowcount == 30
    finally:
        engine.dispose()
    assert asyncio.run(noted(env, "s")) == 30

    port = env.app.port
    conn = pg8000.dbapi.connect(
        user=AGENT, password=AGENT_PASSWORD, host="127.0.0.1", port=port, database=env.data_db
    )
    try:
        cur = conn.cursor()
        cur.execute(f"UPDATE {mb} SET note = %s WHERE id <= %s", ("t", 40))
        assert cur.rowcount == 40
        conn.commit()
    finally:
        conn.close()
    assert asyncio.run(noted(env, "t")) == 40


async def test_a_measured_batch_in_a_failed_block_fails_as_the_block_does(
    env: HoldsEnv, mb: str
) -> None:
    """The set-up fails in a failed block (25P02) and nothing is measured: the
    client's batch fails by itself, exactly as without dbgate."""
    client = await raw_agent(env)
    try:
        await client.query("BEGIN")
        got = await client.query("SELECT 1/0")
        assert [e.sqlstate for e in errors(got)] == ["22012"] and status(got) == "E"
        client.send(extended(f"UPDATE {mb} SET note = 'e' WHERE id <= 10"), SYNC)
        got = await client.until_ready()
        assert [e.sqlstate for e in errors(got)] == ["25P02"]
        assert status(got) == "E"
        got = await client.query("ROLLBACK")
        assert status(got) == "I"
        client.send(extended(f"UPDATE {mb} SET note = 'e' WHERE id <= 10"), SYNC)
        got = await client.until_ready()
        assert [x.tag for x in got if isinstance(x, m.CommandComplete)] == ["UPDATE 10"]
        assert status(got) == "I"
    finally:
        await client.close()
    assert await noted(env, "e") == 10


async def test_a_client_gone_during_the_hold_of_a_measured_batch_leaves_nothing_behind(
    env: HoldsEnv, mb: str
) -> None:
    client = await RawClient.connect(
        "127.0.0.1",
        env.app.port,
        user=AGENT,
        password=AGENT_PASSWORD,
        database=env.data_db,
        params={"application_name": "mb-gone"},
    )
    try:
        client.send(extended(f"UPDATE {mb} SET note = 'g' WHERE id <= 300"), SYNC)
        await held(client)
    finally:
        client.abort()
    assert await noted(env, "g") == 0
    # the upstream session ends with the client: nothing left running or locked
    conn = await asyncpg.connect(env.admin_dsn)
    try:
        for _ in range(500):
            left = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mb-gone'"
            )
            if left == 0:
                break
            await conn.execute("SELECT pg_sleep(0.01)")
        assert left == 0
    finally:
        await conn.close()


async def test_an_executemany_pipeline_is_measured_as_one_batch(
    env: HoldsEnv, mb: str, agent_conn: asyncpg.Connection
) -> None:
    """asyncpg's executemany: Bind/Execute per row, one Sync. Each Execute changes
    one row that no key proves; together they change 150, more than the 100 allowed."""
    notices = AsyncpgNotices(agent_conn)
    sql = f"UPDATE {mb} SET n = n + 1 WHERE id + 0 = $1"
    await agent_conn.executemany(sql, [(i,) for i in range(1, 41)])  # 40: kept
    assert notices.empty()
    running = asyncio.create_task(agent_conn.executemany(sql, [(i,) for i in range(1, 151)]))
    try:
        rid = await notices.held()
        row = await env.app.arequest(rid)
        assert "would change 150 rows" in row["reasons"], row["reasons"]
        assert await total_n(env) == 40  # undone meanwhile
        await env.app.aapprove(rid)
        await running
    finally:
        running.cancel()
    assert await total_n(env) == 190


async def total_n(env: HoldsEnv) -> int:
    conn = await asyncpg.connect(env.admin_dsn)
    try:
        return int(await conn.fetchval(f"SELECT sum(n) FROM {TABLE}"))
    finally:
        await conn.close()


async def test_a_measured_query_slipped_into_an_open_batch_is_held_before_it_runs(
    env: HoldsEnv, mb: str
) -> None:
    """A Query after extended messages with no Sync between them runs in the same
    transaction as they do: a savepoint set up there would take their changes with it
    when undone, so the write is decided before it runs instead."""
    client = await raw_agent(env)
    try:
        client.send(
            extended(f"UPDATE {mb} SET note = 'p' WHERE id = 1"),  # proven: one row
            m.Query(f"UPDATE {mb} SET note = 'q' WHERE id <= 10").encode(),
        )
        rid = await held(client)
        assert await noted(env, "q") == 0
        await env.app.areject(rid, "no")
        got = await client.until_ready()
        assert [x.tag for x in got if isinstance(x, m.CommandComplete)] == ["UPDATE 1"]
        assert [e.sqlstate for e in errors(got)] == ["42501"]
        assert status(got) == "I"
    finally:
        await client.close()
    assert await noted(env, "q") == 0


async def test_a_deferred_constraint_fails_a_measured_batch_at_its_end_as_without_dbgate(
    env: HoldsEnv,
) -> None:
    """dbgate's COMMIT of a kept batch is where a deferred constraint fails: the
    client gets the error before its ReadyForQuery, as from PostgreSQL's own commit
    at Sync, and nothing is changed."""
    admin_execute(
        env.admin_dsn,
        "DROP TABLE IF EXISTS mbd",
        "CREATE TABLE mbd (id int PRIMARY KEY, u int UNIQUE DEFERRABLE INITIALLY DEFERRED)",
        "INSERT INTO mbd SELECT g, g FROM generate_series(1, 5) g",
        "GRANT SELECT, UPDATE ON mbd TO PUBLIC",
    )
    batch = (extended("UPDATE mbd SET u = 1 WHERE u <= 2"), SYNC)
    client = await raw_agent(env)
    try:
        client.send(*batch)
        got = await client.until_ready()
    finally:
        await client.close()
    admin = await asyncpg.connect(env.admin_dsn)
    try:
        assert await admin.fetchval("SELECT count(*) FROM mbd WHERE u = 1") == 1
        straight = await RawClient.connect(
            env.pg_server.host,
            env.pg_server.port,
            user=env.pg_server.user,
            password=env.pg_server.password,
            database=env.data_db,
        )
        try:
            straight.send(*batch)
            expected = await straight.until_ready()
        finally:
            await straight.close()
    finally:
        await admin.close()
    assert names(got) == names(expected)
    assert [e.sqlstate for e in errors(got)] == [e.sqlstate for e in errors(expected)] == ["23505"]
    assert status(got) == "I"


async def _pipelined_after_a_measured_write(client: RawClient, mb: str, how: str) -> None:
    write = extended(f"UPDATE {mb} SET note = 'c' WHERE id <= 500")
    if how == "portal":  # a COMMIT bound to a portal before the batch, in the block
        client.send(m.Query("BEGIN").encode())
        await client.until_ready()
        client.send(m.Parse("", "COMMIT").encode(), m.Bind("pc", "").encode(), SYNC)
        await client.until_ready()
        client.send(write, m.Execute("pc", 0).encode(), SYNC)
    elif how == "named":  # a COMMIT prepared before the batch, bound in it
        client.send(m.Parse("cm", "commit").encode(), SYNC)
        await client.until_ready()
        client.send(write, m.Bind("", "cm").encode(), m.Execute("", 0).encode(), SYNC)
    elif how == "query":  # a simple Query amid the batch
        client.send(write, m.Query("SELECT 1; COMMIT").encode(), SYNC)
    else:
        client.send(write, extended(how), SYNC)


@pytest.mark.parametrize(
    "how",
    ["COMMIT", "END", ";/* c */ -- x\rcommit and chain", "ROLLBACK", "portal", "named", "query"],
)
async def test_a_measured_batch_cannot_commit_its_write_before_it_is_counted(
    env: HoldsEnv, mb: str, how: str
) -> None:
    """dbgate measures a batch inside a block of its own (or under a savepoint in the
    client's): a COMMIT the client pipelines after the write, in the same batch, would
    keep 500 changed rows past a limit of 100 before dbgate counts them, and its undo
    would then find nothing to roll back. Whatever could end or act on that block —
    parsed in the batch, bound from a statement prepared before it, run through a
    portal bound before it, or a simple Query amid it — is refused before it runs,
    and the write is undone with the batch."""
    client = await raw_agent(env)
    try:
        await _pipelined_after_a_measured_write(client, mb, how)
        got = await client.until_ready()
        if how == "query":  # the Query's ReadyForQuery, then the Sync's
            got += await client.until_ready()
        assert [e.sqlstate for e in errors(got)] == ["0A000"], names(got)
        assert "measured against its change limit" in errors(got)[0].message
        assert status(got) == ("E" if how == "portal" else "I")
    finally:
        await client.close()
    assert await noted(env, "c") == 0


@pytest.mark.parametrize("portal", ["", "p"])
async def test_a_write_bound_in_a_measured_batch_cannot_run_in_a_later_one(
    env: HoldsEnv, mb: str, portal: str
) -> None:
    """Inside the client's block a portal outlives its batch: a write bound in a
    measured batch and executed in the next (which binds nothing, so nothing measures
    it) would change 500 rows past a limit of 100. dbgate closes the portals of a
    kept batch's measured Binds with its release, so the later Execute fails."""
    client = await raw_agent(env)
    try:
        client.send(m.Query("BEGIN").encode())
        await client.until_ready()
        client.send(
            m.Parse("", f"UPDATE {mb} SET note = 'l' WHERE id <= 500").encode(),
            m.Bind(portal, "").encode(),
            SYNC,
        )
        got = await client.until_ready()
        assert names(got) == ["ParseComplete", "BindComplete", "ReadyForQuery"]
        client.send(m.Execute(portal, 0).encode(), SYNC)
        got = await client.until_ready()
        assert [e.sqlstate for e in errors(got)] == ["34000"], names(got)  # no such portal
        client.send(m.Query("ROLLBACK").encode())
        await client.until_ready()
    finally:
        await client.close()
    assert await noted(env, "l") == 0


async def test_a_measured_write_executed_a_row_at_a_time_is_not_measurable_and_held(
    env: HoldsEnv, mb: str
) -> None:
    """An Execute with a row count of an UPDATE … RETURNING runs the whole update and
    ends suspended, with no command tag to count it by: it is undone and held as not
    measurable, not kept as a batch that changed nothing."""
    client = await raw_agent(env)
    try:
        client.send(
            m.Parse("", f"UPDATE {mb} SET note = 'r' WHERE id <= 500 RETURNING id").encode(),
            m.Bind("", "").encode(),
            m.Execute("", 1).encode(),
            SYNC,
        )
        rid = await held(client)
        assert await noted(env, "r") == 0  # undone while the approver decides
        await env.app.areject(rid, "no")
        got = await client.until_ready()
        assert [e.sqlstate for e in errors(got)] == ["42501"], names(got)
        assert not rows(got)
    finally:
        await client.close()
    assert await noted(env, "r") == 0


# -- asyncpg: a prepare (Parse/Describe/Flush, no Sync) right before a simple Query ------


async def test_asyncpg_copy_records_first_call_is_measured_not_held(
    env: HoldsEnv, mb: str, agent_conn: asyncpg.Connection
) -> None:
    """``copy_records_to_table`` prepares ``SELECT … LIMIT 1`` with Parse, Describe and a
    Flush, then sends the COPY as a Query with no Sync between: the batch prepared and
    ran nothing, so the COPY is measured as at a boundary, not held as a write bound
    in the middle of a batch."""
    notices = AsyncpgNotices(agent_conn)
    records = [(1000 + i, "copied") for i in range(20)]
    done = agent_conn.copy_records_to_table(mb, records=records, columns=["id", "note"])
    assert await asyncio.wait_for(done, 30) == "COPY 20"
    assert notices.empty()
    assert await noted(env, "copied") == 20
    assert not agent_conn.is_in_transaction()
    # past the limit it is undone and refused, as a COPY at a boundary is (its data
    # went to the server as it came: there is nothing to send again once approved)
    more = [(2000 + i, "bulk") for i in range(150)]
    with pytest.raises(asyncpg.PostgresError) as caught:
        await asyncio.wait_for(
            agent_conn.copy_records_to_table(mb, records=more, columns=["id", "note"]), 30
        )
    assert "changed 150 rows, more than its limit of 100" in str(caught.value)
    assert notices.empty()
    assert await noted(env, "bulk") == 0
    assert await agent_conn.fetchval("SELECT 41 + 1") == 42


async def test_a_write_query_right_after_a_prepare_is_measured(env: HoldsEnv, mb: str) -> None:
    """The same on the wire: Parse/Describe/Flush answered, then an unproven UPDATE as
    a Query (no Sync): measured and kept, the prepared statement still usable."""
    client = await raw_agent(env)
    try:
        client.send(
            m.Parse("s1", f"SELECT note FROM {mb} WHERE id = $1", ()).encode(),
            m.Describe("S", "s1").encode(),
            FLUSH,
        )
        assert names(await client.until(m.RowDescription)) == [
            "ParseComplete",
            "ParameterDescription",
            "RowDescription",
        ]
        answers = await client.query(f"UPDATE {mb} SET note = 'q' WHERE id <= 30")
        assert not errors(answers), answers
        assert [x.tag for x in answers if isinstance(x, m.CommandComplete)] == ["UPDATE 30"]
        assert status(answers) == "I"
        client.send(
            m.Bind("", "s1", (0,), (b"7",), ()).encode(),
            m.Execute("", 0).encode(),
            SYNC,
        )
        assert rows(await client.until_ready()) == [(b"q",)]
    finally:
        await client.close()
    assert await noted(env, "q") == 30


async def test_a_write_query_after_an_unsynced_execute_is_held_before_it_runs(
    env: HoldsEnv, mb: str
) -> None:
    """After an Execute with no Sync since, dbgate's set-up would take the client's
    executed statement into its own block (and undo it with the write): the Query
    is not measured, it is held before it runs."""
    client = await raw_agent(env)
    try:
        client.send(
            m.Parse("", "SELECT 1", ()).encode(),
            m.Bind("", "", (), (), ()).encode(),
            m.Execute("", 0).encode(),
            FLUSH,
        )
        assert rows(await client.until(m.CommandComplete)) == [(b"1",)]
        client.send(m.Query(f"UPDATE {mb} SET note = 'u' WHERE id <= 30").encode())
        rid = await held(client)
        assert await noted(env, "u") == 0
        await env.app.areject(rid, "no")
        assert errors(await client.until_ready())
    finally:
        await client.close()
    assert await noted(env, "u") == 0
