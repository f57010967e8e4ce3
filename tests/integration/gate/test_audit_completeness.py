"""The server as the audit's witness: every statement PostgreSQL ran for an agent's
session has its record in ``dbgate.audit_log``, and nothing the server skipped is
recorded as run.

The data database logs every statement (``log_statement = 'all'`` set on the
database, so it applies to the sessions dbgate opens for the agent); each scenario
runs on its own client connection named by ``application_name``, learns its backend
pid through dbgate, and compares what the server logged for that pid with the
records of that session, in order. Texts differ (the trail masks literals), so the
comparison is by count and order of statements and by outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from pathlib import Path

import asyncpg
import psycopg
import psycopg2
import pytest

from dbgate.wire import messages as wire
from tests.integration.holds.clients import AsyncpgNotices
from tests.integration.holds.harness import AGENT, AGENT_PASSWORD, HoldsEnv, admin_execute
from tests.integration.rawclient import RawClient, extended, rows
from tests.integration.server_log import (
    compare,
    log_every_statement,
    recorded,
    server_ran,
    session_over,
    show,
    wait_running,
)


@pytest.fixture(scope="module")
def logged(env: HoldsEnv) -> Path:
    log_file = log_every_statement(env)
    admin_execute(
        env.admin_dsn,
        "DROP TABLE IF EXISTS cmp_items",
        "CREATE TABLE cmp_items (id int PRIMARY KEY, note text NOT NULL DEFAULT 'n')",
        "INSERT INTO cmp_items (id) SELECT g FROM generate_series(1, 20) g",
        "GRANT ALL ON cmp_items TO PUBLIC",
        "DROP TABLE IF EXISTS cmp_big",
        "CREATE TABLE cmp_big (id int PRIMARY KEY, note text NOT NULL DEFAULT 'n')",
        "INSERT INTO cmp_big (id) SELECT g FROM generate_series(1, 150) g",
        "GRANT ALL ON cmp_big TO PUBLIC",
        "DROP TABLE IF EXISTS cmp_copy",
        "CREATE TABLE cmp_copy (id int PRIMARY KEY, note text NOT NULL DEFAULT 'n')",
        "GRANT ALL ON cmp_copy TO PUBLIC",
    )
    return log_file


PID = "SELECT pg_backend_pid()"


# -- scenarios: each returns its backend pid ------------------------------------------


SIMPLE = [
    "SELECT 1; SELECT 2",
    "SELECT 1; SELECT 1/0; SELECT 3",
    "BEGIN; SAVEPOINT a; SELECT 1; ROLLBACK TO SAVEPOINT a; COMMIT",
    "BEGIN",
    "SAVEPOINT b",
    "RELEASE SAVEPOINT b",
    "ROLLBACK",
    "SET work_mem = '8MB'",
    "RESET work_mem",
    "LISTEN cmp_chan",
    "NOTIFY cmp_chan, 'x'",
    "UNLISTEN *",
    "PREPARE p1 AS SELECT id FROM cmp_items WHERE id = $1",
    "EXECUTE p1(3)",
    "EXECUTE p1(4)",
    "DEALLOCATE p1",
    "BEGIN",
    "DECLARE c1 CURSOR FOR SELECT id FROM cmp_items ORDER BY id LIMIT 10",
    "FETCH 3 FROM c1",
    "MOVE 2 IN c1",
    "FETCH 1 FROM c1",
    "CLOSE c1",
    "COMMIT",
    "DISCARD ALL",
    "SET statement_timeout = 50; SELECT pg_sleep(5)",
    "RESET statement_timeout",
    "UPDATE cmp_items SET note = 'm' WHERE id < 5",
    "BEGIN",
    "DELETE FROM cmp_items WHERE id > 200",
    "COMMIT",
]


async def _simple(dsn: str, app: str) -> int:
    conn = await asyncpg.connect(dsn, server_settings={"application_name": app})
    try:
        pid = await conn.fetchval(PID)
        for sql in SIMPLE:
            with contextlib.suppress(asyncpg.DivisionByZeroError, asyncpg.QueryCanceledError):
                await conn.execute(sql, timeout=5)  # the two that fail are in the list
    finally:
        await conn.close()
    return pid


async def test_simple_query_traffic(env: HoldsEnv, logged: Path) -> None:
    app = "cmp-simple"
    pid = await _simple(env.dsn, app)
    ran, recs = await asyncio.to_thread(compare, env, logged, app, pid)
    assert len(ran) == len(recs), show(ran, recs)


async def _extended(dsn: str, app: str) -> int:
    conn = await asyncpg.connect(dsn, server_settings={"application_name": app})
    try:
        pid = await conn.fetchval(PID)
        await conn.fetchval("SELECT 7")
        await conn.fetchval("SELECT 7")
        await conn.fetchval(PID)
        stmt = await conn.prepare("SELECT id FROM cmp_items WHERE id = $1")
        for i in range(3):
            await stmt.fetchval(i + 1)
        await conn.executemany("UPDATE cmp_items SET note = $2 WHERE id = $1", [(1, "a"), (2, "b")])
        async with conn.transaction():
            cur = await conn.cursor("SELECT id FROM cmp_items ORDER BY id LIMIT 10")
            await cur.fetch(5)
            await cur.fetch(5)
        await conn.prepare("SELECT note FROM cmp_items WHERE id = $1")  # Describe only
        with pytest.raises(TimeoutError):  # asyncpg sends a CancelRequest
            await conn.execute("SELECT pg_sleep(30)", timeout=0.5)
    finally:
        await conn.close()
    return pid


async def test_extended_protocol_traffic(env: HoldsEnv, logged: Path) -> None:
    app = "cmp-extended"
    pid = await _extended(env.dsn, app)
    ran, recs = await asyncio.to_thread(compare, env, logged, app, pid)
    assert len(ran) == len(recs), show(ran, recs)
    assert recs[-1][0] == "failed" and recs[-1][3] == "57014", show(ran, recs)  # cancelled
    # a portal suspended at its Execute's row count returned that many rows, counted
    # by dbgate or not (a statement with no table, or one)
    assert [r[4] for r in recs if r[3] == "suspended"] == [1] * 7 + [5, 5], show(ran, recs)


def _pipeline(dsn: str, app: str) -> int:
    with psycopg.connect(dsn, application_name=app, autocommit=True) as conn:
        pid = conn.execute(PID).fetchone()[0]
        with conn.pipeline():
            conn.execute("SELECT id FROM cmp_items WHERE id = %s", (1,))
            conn.execute("SELECT id FROM cmp_items WHERE id = %s", (2,))
        with conn.pipeline():
            conn.execute("SELECT %s::int", (4,), prepare=True)
            conn.execute("SELECT %s::int", (5,), prepare=True)
        with conn.cursor() as cur:
            with cur.copy("COPY cmp_copy (id) FROM STDIN") as copy:
                copy.write_row((401,))
            with (
                pytest.raises(psycopg.errors.QueryCanceled),  # psycopg sends CopyFail
                cur.copy("COPY cmp_copy (id) FROM STDIN") as copy,
            ):
                copy.write_row((402,))
                raise psycopg.errors.QueryCanceled("stop")
    return pid


def _failed_pipeline(dsn: str, app: str) -> int:
    with psycopg.connect(dsn, application_name=app, autocommit=True) as conn:
        pid = conn.execute(PID).fetchone()[0]
        with pytest.raises(psycopg.errors.DivisionByZero), conn.pipeline() as p:
            conn.execute("SELECT %s::int", (1,))
            conn.execute("SELECT 1 / %s::int", (0,))  # fails at Bind (planned with its value)
            conn.execute("SELECT %s::int", (3,))  # skipped by the server
            p.sync()
    return pid


async def test_a_pipeline_with_an_error_in_the_middle(env: HoldsEnv, logged: Path) -> None:
    app = "cmp-failed-pipeline"
    pid = await asyncio.to_thread(_failed_pipeline, env.dsn, app)
    ran, recs = await asyncio.to_thread(compare, env, logged, app, pid)
    # the server ran the first statement, failed the second, skipped the third
    assert len(ran) == 2, show(ran, recs)
    assert [r[0] for r in recs] == ["completed", "completed", "failed", "failed"], show(ran, recs)
    # the failed one with its text; the skipped one too, never as completed, with the
    # batch's SQLSTATE (the server neither ran it nor gave it an error of its own)
    assert [r[1:4] for r in recs[2:]] == [
        ("allow", "SELECT $2 / $1::int", "22012"),
        ("allow", "SELECT $1::int", "22012"),
    ], show(ran, recs)


async def test_pipelines(env: HoldsEnv, logged: Path) -> None:
    app = "cmp-pipeline"
    pid = await asyncio.to_thread(_pipeline, env.dsn, app)
    ran, recs = await asyncio.to_thread(compare, env, logged, app, pid)
    assert len(ran) == len(recs), show(ran, recs)
    assert [r[0] for r in recs[-2:]] == ["completed", "failed"], show(ran, recs)
    assert recs[-1][3] == "57014", show(ran, recs)  # the server's answer to CopyFail


def _function_call(dsn: str, app: str) -> int:
    conn = psycopg2.connect(dsn, application_name=app)
    try:
        cur = conn.cursor()
        cur.execute(PID)
        pid = cur.fetchone()[0]
        with pytest.raises(psycopg2.OperationalError, match="fast-path function calls"):
            conn.lobject(0, "wb")  # lo_creat: a FunctionCall message
        conn.rollback()
    finally:
        conn.close()
    return pid


async def test_function_call(env: HoldsEnv, logged: Path) -> None:
    app = "cmp-fastpath"
    pid = await asyncio.to_thread(_function_call, env.dsn, app)
    ran, recs = await asyncio.to_thread(compare, env, logged, app, pid)
    # refused by dbgate, never sent: the server ran only the pid query and the ROLLBACK
    assert [r[0] for r in recs if r[0] != "refused"] == ["completed"] * len(ran), show(ran, recs)
    assert [r[:2] for r in recs if r[0] == "refused"] == [("refused", "refused")], show(ran, recs)


async def test_held_then_approved(env: HoldsEnv, logged: Path) -> None:
    app = "cmp-held"
    conn = await asyncpg.connect(env.dsn, server_settings={"application_name": app})
    notices = AsyncpgNotices(conn)
    try:
        pid = await conn.fetchval(PID)
        running = asyncio.create_task(conn.execute("UPDATE cmp_items SET note = 'h'"))
        rid = await asyncio.wait_for(notices.held(), 30)
        await env.app.aapprove(rid, "ok")
        await running
        out = io.BytesIO()
        copying = asyncio.create_task(
            conn.copy_from_query("SELECT id FROM cmp_items ORDER BY id", output=out)
        )
        rid = await asyncio.wait_for(notices.held(), 30)
        await env.app.aapprove(rid, "ok")
        assert await copying == "COPY 20"
        # COPY FROM STDIN of one row: measured, within the pack's limit
        assert await conn.copy_records_to_table("cmp_items", records=[(301, "a")]) == "COPY 1"
    finally:
        await conn.close()
    ran, recs = await asyncio.to_thread(compare, env, logged, app, pid)
    assert len(ran) == len(recs), show(ran, recs)
    assert [r[:2] + r[3:4] for r in recs[-3:]] == [
        ("completed", "approved", "UPDATE 20"),
        ("completed", "approved", "COPY 20"),
        ("completed", "allow", "COPY 1"),
    ], show(ran, recs)


async def test_a_measured_write_replayed_after_approval(env: HoldsEnv, logged: Path) -> None:
    app = "cmp-measured"
    conn = await asyncpg.connect(env.dsn, server_settings={"application_name": app})
    notices = AsyncpgNotices(conn)
    try:
        pid = await conn.fetchval(PID)
        # measured, over the pack's 100 changes: undone, held, approved, run again
        measured = asyncio.create_task(conn.execute("UPDATE cmp_big SET note = 'x' WHERE id > 0"))
        rid = await asyncio.wait_for(notices.held(), 30)
        await env.app.aapprove(rid, "ok")
        assert await measured == "UPDATE 150"
    finally:
        await conn.close()
    ran, recs = await asyncio.to_thread(compare, env, logged, app, pid)
    # the server ran it twice: measured (undone), then approved
    assert len(ran) == 3, show(ran, recs)
    # each run has its record: the measured one (undone by dbgate), then the approved
    assert [r[:2] + r[3:] for r in recs[-2:]] == [
        ("completed", "allow", "UPDATE 150", 150),
        ("completed", "approved", "UPDATE 150", 150),
    ], show(ran, recs)


async def test_a_client_gone_mid_statement(env: HoldsEnv, logged: Path) -> None:
    app = "cmp-gone"
    conn = await asyncpg.connect(env.dsn, server_settings={"application_name": app})
    pid = await conn.fetchval(PID)
    running = asyncio.create_task(conn.execute("SELECT pg_sleep(60)"))
    admin = await asyncpg.connect(env.admin_dsn)
    try:
        # the server runs it: then the client goes away without a word
        for _ in range(200):
            state = await admin.fetchval(
                "SELECT state FROM pg_stat_activity WHERE pid = $1 AND query LIKE 'SELECT pg_sleep%'",
                pid,
            )
            if state == "active":
                break
            await asyncio.sleep(0.05)  # polling the server's own view, bounded
        conn.terminate()
        with contextlib.suppress(Exception):
            await running
        recs: list = []
        for _ in range(200):  # dbgate cancels the orphan; its record follows
            recs = await asyncio.to_thread(recorded, env, app)
            if len(recs) == 2:
                break
            await asyncio.sleep(0.05)
    finally:
        await admin.close()
    ran = await asyncio.to_thread(server_ran, logged, pid)
    assert len(ran) == len(recs) == 2, show(ran, recs)
    # its answer never came: failed, connection failure
    assert recs[-1][:4] == ("failed", "allow", "SELECT pg_sleep($1)", "08006"), show(ran, recs)


# -- a client that leaves mid-pipeline ---------------------------------------------------


async def _raw(env: HoldsEnv, app: str) -> tuple[RawClient, int]:
    client = await RawClient.connect(
        "127.0.0.1",
        env.app.port,
        user=AGENT,
        password=AGENT_PASSWORD,
        database=env.data_db,
        params={"application_name": app},
    )
    answer = await client.query(PID)
    return client, int(rows(answer)[0][0])


def check_abandoned(ran: list[str], recs: list, sent: int) -> None:
    """What the server ran has its record, in order; what the client's answer never
    reached is ``failed`` 08006 (the server may have run it), never ``completed``
    unless the server ran it; nothing is recorded beyond what the client sent."""
    assert len(recs) == 1 + sent, show(ran, recs)  # the pid query, then each Execute
    assert len(ran) <= len(recs), show(ran, recs)
    assert all(r[0] == "completed" for r in recs[: len(ran)] if r[3] != "08006"), show(ran, recs)
    for r in recs[len(ran) :]:
        assert r[0] == "failed" and r[3] == "08006", show(ran, recs)


PIPELINED = [("SELECT id FROM cmp_items WHERE id = $1", (b"%d" % i,)) for i in range(1, 6)]


async def test_a_client_gone_after_a_pipeline_and_its_sync(env: HoldsEnv, logged: Path) -> None:
    app = "cmp-gone-pipeline"
    client, pid = await _raw(env, app)
    sent = [("SELECT pg_sleep($1)", (b"30",)), *PIPELINED]
    client.send(*(extended(sql, params) for sql, params in sent), wire.Sync())
    await client.writer.drain()
    await wait_running(env, pid, "%pg_sleep%")
    client.writer.close()  # before reading a single answer, without a Terminate
    await session_over(env, app, pid)
    ran, recs = await asyncio.to_thread(compare, env, logged, app, pid)
    check_abandoned(ran, recs, len(sent))
    # dbgate cancels what its client left running: the server skips the rest
    assert len(ran) == 2, show(ran, recs)


async def test_a_client_gone_between_executes(env: HoldsEnv, logged: Path) -> None:
    app = "cmp-gone-executes"
    client, pid = await _raw(env, app)
    # no Sync: the server runs each Execute as it comes, the client waits for none
    client.send(*(extended(sql, params) for sql, params in PIPELINED[:3]))
    await client.writer.drain()
    client.send(extended("SELECT pg_sleep($1)", (b"30",)))
    await client.writer.drain()
    await wait_running(env, pid, "%pg_sleep%")  # the server runs the last one: now leave
    client.abort()
    await session_over(env, app, pid)
    ran, recs = await asyncio.to_thread(compare, env, logged, app, pid)
    assert len(ran) == len(recs) == 5, show(ran, recs)
    check_abandoned(ran, recs, 4)
    assert recs[-1][2:4] == ("SELECT pg_sleep($1)", "08006"), show(ran, recs)


def _psycopg_gone(dsn: str, app: str) -> tuple[int, psycopg.Connection]:
    """psycopg's libpq in pipeline mode: the whole pipeline and its Sync sent, then
    the connection closed without an answer read."""
    conn = psycopg.connect(dsn, application_name=app, autocommit=True)
    pid = conn.execute(PID).fetchone()[0]
    pg = conn.pgconn
    pg.enter_pipeline_mode()
    for sql, params in [("SELECT pg_sleep($1)", (b"30",)), *PIPELINED]:
        pg.send_query_params(sql.encode(), list(params))
    pg.pipeline_sync()
    while pg.flush():
        pass
    return pid, conn


async def test_a_psycopg_pipeline_left_unread(env: HoldsEnv, logged: Path) -> None:
    app = "cmp-gone-psycopg"
    pid, conn = await asyncio.to_thread(_psycopg_gone, env.dsn, app)
    await wait_running(env, pid, "%pg_sleep%")
    conn.pgconn.finish()
    await session_over(env, app, pid)
    ran, recs = await asyncio.to_thread(compare, env, logged, app, pid)
    check_abandoned(ran, recs, 1 + len(PIPELINED))
    assert len(ran) == 2, show(ran, recs)


async def test_a_client_gone_while_its_pipeline_waits_for_an_approval(
    env: HoldsEnv, logged: Path
) -> None:
    """What the client sent behind a held statement waits in dbgate, unjudged; when
    the client leaves, the held statement is withdrawn and each statement behind it,
    which reached dbgate but never the server, is recorded refused (08006)."""
    app = "cmp-gone-held"
    client, pid = await _raw(env, app)
    client.send(wire.Parse("s1", "SELECT note FROM cmp_items WHERE id = $1"), wire.Sync())
    await client.until_ready()
    client.send(
        extended("UPDATE cmp_items SET note = $1", (b"w",)),  # held
        extended(*PIPELINED[0]),
        wire.Bind("", "s1", params=(b"3",)),
        wire.Execute("", 0),
        wire.Sync(),
        wire.Query("SELECT 5"),
    )
    await client.until(wire.NoticeResponse)  # held: the rest waits behind it
    client.writer.close()
    await session_over(env, app, pid)
    ran, recs = await asyncio.to_thread(compare, env, logged, app, pid)
    assert len(ran) == 1, show(ran, recs)  # the server ran nothing of the pipeline
    assert sorted((r[:4] for r in recs[1:]), key=str) == [
        ("refused", "refused", "SELECT $1", "08006"),
        ("refused", "refused", "SELECT id FROM cmp_items WHERE id = $1", "08006"),
        ("refused", "refused", "SELECT note FROM cmp_items WHERE id = $1", "08006"),
        ("refused", "withdrawn", "UPDATE cmp_items SET note = $1", None),
    ], show(ran, recs)
