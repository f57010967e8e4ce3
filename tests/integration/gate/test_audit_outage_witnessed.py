"""The server as the audit's witness while the state database is away.

The data database logs every statement (``log_statement = 'all'``); the state
database runs on a PostgreSQL of its own, which a test stops and starts again. After
the outage, what the data server logged for a session is compared, in order, with
that session's records (:mod:`tests.integration.server_log`):

* ``audit.on_failure: buffer``: ordinary traffic goes on; its records wait in the
  spill file and reach the trail when the database returns, each once, the chain
  unbroken;
* ``refuse`` (the default): what dbgate refused never reached the server, and each
  refusal has its record once the database is back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from dbgate.embedded import EmbeddedPostgres
from tests.integration.holds.harness import (
    HoldsEnv,
    RunningApp,
    admin_execute,
    app_config,
    drop_database,
    fresh_database,
)
from tests.integration.server_log import (
    compare,
    log_every_statement,
    session_over,
    show,
    verify_trail,
)

PID = "SELECT pg_backend_pid()"


@contextlib.contextmanager
def running(pg_server: Any, state: EmbeddedPostgres, name: str, **audit: Any) -> Iterator[HoldsEnv]:
    """A dbgate with its data database on the session's server (every statement
    logged) and its state database on ``state``."""
    admin = pg_server.dsn("postgres")
    data_db = f"{name}_data"
    fresh_database(admin, data_db)
    fresh_database(state.dsn("postgres"), name)
    admin_execute(
        pg_server.dsn(data_db),
        "CREATE TABLE out_items (id int PRIMARY KEY, note text NOT NULL DEFAULT 'n')",
        "INSERT INTO out_items (id) SELECT g FROM generate_series(1, 20) g",
        "GRANT ALL ON out_items TO PUBLIC",
    )
    config = app_config(
        pg_server,
        state.dsn(name),
        None,
        replica=f"{name}-a",
        state_timeout_seconds=2,
        audit={"connect_timeout": 1, "retry_max_seconds": 0.2, **audit},
    )
    app = RunningApp(config).start()
    try:
        yield HoldsEnv(app, data_db, pg_server.dsn(data_db), name, pg_server)
    finally:
        app.stop()
        drop_database(admin, data_db)
        if not state.running:  # a test that failed while it was stopped
            state.start()
        drop_database(state.dsn("postgres"), name)


@contextlib.asynccontextmanager
async def agent(env: HoldsEnv, app: str) -> AsyncIterator[tuple[asyncpg.Connection, int]]:
    conn = await asyncpg.connect(env.dsn, server_settings={"application_name": app})
    try:
        yield conn, await conn.fetchval(PID)
    finally:
        await conn.close()


async def traffic(conn: asyncpg.Connection, tag: int) -> None:
    """Statements of both protocols, one of them failing (in the simple protocol: the
    server logs it before it fails)."""
    await conn.fetchval("SELECT note FROM out_items WHERE id = $1", 1 + tag % 20)
    await conn.execute(f"UPDATE out_items SET note = 'u{tag}' WHERE id = {1 + tag % 20}")
    await conn.execute("SELECT 1; SELECT 2")
    with pytest.raises(asyncpg.DivisionByZeroError):
        await conn.execute("SELECT 1 / 0")


def in_order(ran: list[str], recs: list) -> None:
    """The server's statements and the records agree one by one: the failing one
    where the server ran it."""
    for line, rec in zip(ran, recs, strict=True):
        assert line.endswith("1 / 0") == (rec[0] == "failed"), show(ran, recs)


async def writer_stats(env: HoldsEnv) -> dict[str, Any]:
    async def stats() -> dict[str, Any]:
        assert env.app.app.audit is not None
        return env.app.app.audit.stats()

    return await env.app.acall(stats())  # type: ignore[no-any-return]


async def until(condition: Any, what: str, timeout: float = 20) -> Any:
    """Poll ``condition()`` (a coroutine function) until it is truthy, bounded."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await condition()
        if value:
            return value
        assert loop.time() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.05)  # polling dbgate's own counters, bounded


async def flushed(env: HoldsEnv) -> bool:
    """Whether the writer is back and has committed everything it held."""
    assert env.app.app.audit is not None
    try:
        await env.app.acall(env.app.app.audit.flush())
    except Exception:  # AuditUnavailable: still away
        return False
    return True


async def test_buffered_records_of_an_outage_reach_the_trail(
    pg_server: Any, state_server: EmbeddedPostgres, tmp_path: Path
) -> None:
    app = "out-buffer"
    with running(
        pg_server,
        state_server,
        "gate_outage_buffer",
        on_failure="buffer",
        spill_dir=str(tmp_path / "spill"),
    ) as env:
        logged = log_every_statement(env)
        async with agent(env, app) as (conn, pid):
            await traffic(conn, 0)
            assert await flushed(env)
            await asyncio.to_thread(state_server.stop)
            for i in range(1, 4):  # ordinary traffic goes on while it is away
                await traffic(conn, i)

            async def spilled() -> bool:
                s = await writer_stats(env)
                return s["spilled"] > 0 and s["queued"] == 0

            await until(spilled, "the records of the outage in the spill file")
            await traffic(conn, 4)  # spilled too, behind the others
            await asyncio.to_thread(state_server.start)
            await until(lambda: flushed(env), "the writer back")
            await traffic(conn, 5)
        await session_over(env, app, pid)
        ran, recs = await asyncio.to_thread(compare, env, logged, app, pid)
        # each statement the server logged has its record, once, in order
        assert len(ran) == len(recs) == 1 + 4 * 6, show(ran, recs)
        in_order(ran, recs)
        verify_trail(state_server.dsn("gate_outage_buffer"))
        outages = env.app.rows(
            "SELECT details FROM dbgate.audit_log WHERE kind = 'audit' AND event = 'unavailable'"
        )
        assert len(outages) == 1, outages


async def test_refused_statements_never_reach_the_server_and_are_recorded(
    pg_server: Any, state_server: EmbeddedPostgres
) -> None:
    app = "out-refuse"
    with running(pg_server, state_server, "gate_outage_refuse") as env:
        logged = log_every_statement(env)
        async with agent(env, app) as (conn, pid):
            await traffic(conn, 0)
            assert await flushed(env)
            await asyncio.to_thread(state_server.stop)
            ran_before = 0

            async def refusing() -> bool:
                nonlocal ran_before
                try:
                    await conn.fetchval("SELECT note FROM out_items WHERE id = $1", 2)
                except asyncpg.InsufficientPrivilegeError:
                    return True
                ran_before += 1  # run before the writer noticed: recorded later
                return False

            await until(refusing, "statements refused")
            refused = 1
            for sql in ("SELECT 1; SELECT 2", "UPDATE out_items SET note = 'r' WHERE id = 3"):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(sql)
                refused += 1
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetchval("SELECT $1::int", 5)
            refused += 1
            await asyncio.to_thread(state_server.start)
            await until(lambda: flushed(env), "the writer back")

            async def runs() -> bool:
                nonlocal refused
                try:
                    return await conn.fetchval("SELECT 4") == 4
                except asyncpg.InsufficientPrivilegeError:
                    refused += 1
                    return False

            await until(runs, "statements run again")
        await session_over(env, app, pid)
        ran, recs = await asyncio.to_thread(compare, env, logged, app, pid)
        ran_recs = [r for r in recs if r[0] != "refused"]
        # the server ran exactly what dbgate recorded as run, in order, and nothing
        # of what it refused
        assert len(ran) == len(ran_recs) == 1 + 4 + ran_before + 1, show(ran, recs)
        in_order(ran, ran_recs)
        refusals = [r for r in recs if r[0] == "refused"]
        assert len(refusals) == refused, show(ran, recs)  # each refusal once
        assert {r[1:4:2] for r in refusals} == {("refused", "42501")}, show(ran, recs)
        verify_trail(state_server.dsn("gate_outage_refuse"))


QUEUE = 100  # audit.queue_size's least


async def test_a_full_queue_makes_clients_wait_and_loses_nothing(
    pg_server: Any, state_server: EmbeddedPostgres
) -> None:
    """The audit table locked by another session: the writer's COPY waits, the queue
    fills, and the agent's statements wait for room — a prepared statement bound
    again and a Query whose verdict the session remembers included, which the relay
    sends on without asking the gate while the queue has room."""
    app = "out-locked"
    name = "gate_outage_locked"
    with running(pg_server, state_server, name, queue_size=QUEUE, write_timeout=60) as env:
        logged = log_every_statement(env)
        async with agent(env, app) as (conn, pid):
            stmt = await conn.prepare("SELECT $1::int")
            await stmt.fetchval(1)
            await conn.execute("SELECT 7")
            assert await flushed(env)
            locker = await asyncpg.connect(state_server.dsn(name))
            tx = locker.transaction()
            await tx.start()
            await locker.execute("LOCK TABLE dbgate.audit_events IN ACCESS EXCLUSIVE MODE")
            done = 0

            async def load() -> None:
                nonlocal done
                for i in range(3 * QUEUE):
                    if i % 2:
                        await stmt.fetchval(i)  # Bind/Execute only, its Parse allowed
                    else:
                        await conn.execute("SELECT 7")  # a Query judged before
                    done += 1

            loading = asyncio.create_task(load())
            try:

                async def full() -> bool:
                    return (await writer_stats(env))["queued"] >= QUEUE or loading.done()

                await until(full, "the audit queue full")
                # the client waits: it cannot finish while nothing can be written
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(loading), 1)
                stats = await writer_stats(env)
                assert stats["available"], stats
                # an admitted statement's record is always taken: one in flight
                assert stats["queued"] <= QUEUE + 1, stats
                assert done < 3 * QUEUE
            finally:
                await tx.rollback()  # the lock goes: the writer catches up
                await locker.close()
            await asyncio.wait_for(loading, 30)
        await session_over(env, app, pid)
        ran, recs = await asyncio.to_thread(compare, env, logged, app, pid)
        assert len(ran) == len(recs) == 3 + 3 * QUEUE, show(ran, recs)
        assert {r[0] for r in recs} == {"completed"}, show(ran, recs)
        verify_trail(state_server.dsn(name))


async def test_a_cursor_is_not_read_on_while_the_trail_cannot_be_written_but_rolled_back(
    pg_server: Any, state_server: EmbeddedPostgres
) -> None:
    """Each fetch from an open portal is a statement the server runs and logs (``execute
    fetch from``) and the trail records; while the audit is unavailable, it is
    refused like any other."""
    app = "out-cursor"
    with running(pg_server, state_server, "gate_outage_cursor") as env:
        logged = log_every_statement(env)
        async with agent(env, app) as (conn, pid), agent(env, "out-probe") as (probe, _):
            tr = conn.transaction()
            await tr.start()
            cur = await conn.cursor("SELECT id FROM out_items ORDER BY id LIMIT 10")
            assert len(await cur.fetch(2)) == 2
            assert await flushed(env)
            await asyncio.to_thread(state_server.stop)

            async def refusing() -> bool:
                try:
                    await probe.fetchval("SELECT 1")
                except asyncpg.InsufficientPrivilegeError:
                    return True
                return False

            await until(refusing, "statements refused")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await cur.fetch(2)
            # the transaction (aborted by the refusal) can still be ended, its locks
            # let go: a ROLLBACK alone runs, and is recorded once the trail is back
            await tr.rollback()
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("ROLLBACK; SELECT 1")
            await asyncio.to_thread(state_server.start)
            await until(lambda: flushed(env), "the writer back")
        await session_over(env, app, pid)
        ran, recs = await asyncio.to_thread(compare, env, logged, app, pid)
        # the server ran the first fetch only; the second was refused, and recorded
        assert sum(line.endswith("LIMIT 10") for line in ran) == 1, show(ran, recs)
        assert len(ran) == len([r for r in recs if r[0] != "refused"]), show(ran, recs)
        assert [r[:4] for r in recs[-3:]] == [
            ("refused", "refused", "SELECT id FROM out_items ORDER BY id LIMIT $1", "42501"),
            ("completed", "allow", "ROLLBACK;", "ROLLBACK"),
            ("refused", "refused", "ROLLBACK; SELECT $1", "42501"),
        ], show(ran, recs)


async def test_a_cursor_read_a_row_at_a_time_waits_for_room_in_a_full_queue(
    pg_server: Any, state_server: EmbeddedPostgres
) -> None:
    """An Execute that resumes an open portal (a cursor's next fetch) had no verdict to
    wait for: while the queue was full, a client reading a cursor one row at a time
    added a record per fetch past the bound. It now waits for room as new statements
    do, and each fetch the server ran is recorded once the writer catches up."""
    app = "out-cursor-full"
    name = "gate_outage_cursor_full"
    rows = 3 * QUEUE
    with running(pg_server, state_server, name, queue_size=QUEUE, write_timeout=60) as env:
        admin_execute(
            env.admin_dsn,
            "CREATE TABLE many_items (id int PRIMARY KEY)",
            f"INSERT INTO many_items SELECT g FROM generate_series(1, {rows}) g",
            "GRANT ALL ON many_items TO PUBLIC",
        )
        logged = log_every_statement(env)
        async with agent(env, app) as (conn, pid), agent(env, "out-filler") as (filler, _):
            tr = conn.transaction()
            await tr.start()
            cur = await conn.cursor(f"SELECT id FROM many_items ORDER BY id LIMIT {rows}")
            assert len(await cur.fetch(1)) == 1
            assert await flushed(env)
            locker = await asyncpg.connect(state_server.dsn(name))
            tx = locker.transaction()
            await tx.start()
            await locker.execute("LOCK TABLE dbgate.audit_events IN ACCESS EXCLUSIVE MODE")
            fetched = 1

            async def fill() -> None:
                while True:
                    await filler.execute("SELECT 7")

            async def read_on() -> None:
                nonlocal fetched
                while fetched < rows:
                    assert len(await cur.fetch(1)) == 1
                    fetched += 1

            filling = asyncio.create_task(fill())
            reading: asyncio.Task[None] | None = None
            try:

                async def full() -> bool:
                    return (await writer_stats(env))["queued"] >= QUEUE

                await until(full, "the audit queue full")
                reading = asyncio.create_task(read_on())
                # the client waits: its fetches cannot go on while nothing can be written
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(reading), 1)
                stats = await writer_stats(env)
                assert stats["available"], stats
                assert stats["queued"] <= QUEUE + 1, stats  # an admitted one in flight
                assert fetched < rows
            finally:
                await tx.rollback()  # the lock goes: the writer catches up
                await locker.close()
            await asyncio.wait_for(reading, 60)
            filling.cancel()
            with contextlib.suppress(asyncio.CancelledError, asyncpg.PostgresError):
                await filling
            await tr.commit()
        await session_over(env, app, pid)
        ran, recs = await asyncio.to_thread(compare, env, logged, app, pid)
        # each fetch the server ran has its record, in order
        assert sum(line.endswith(f"LIMIT {rows}") for line in ran) == rows, show(ran, recs)
        assert len(ran) == len(recs), show(ran, recs)
        assert {r[0] for r in recs} == {"completed"}, show(ran, recs)
        verify_trail(state_server.dsn(name))


async def test_a_fetch_kept_back_for_room_is_recorded_when_the_client_leaves(
    pg_server: Any, state_server: EmbeddedPostgres
) -> None:
    """A client that leaves while its cursor's next fetch waits for room: the fetch
    never reached the server, and is recorded as not sent (08006)."""
    app = "out-cursor-left"
    name = "gate_outage_cursor_left"
    with running(pg_server, state_server, name, queue_size=QUEUE, write_timeout=60) as env:
        logged = log_every_statement(env)
        async with agent(env, "out-filler") as (filler, _):
            conn = await asyncpg.connect(env.dsn, server_settings={"application_name": app})
            pid = await conn.fetchval(PID)
            tr = conn.transaction()
            await tr.start()
            cur = await conn.cursor("SELECT id FROM out_items ORDER BY id LIMIT 20")
            assert len(await cur.fetch(1)) == 1
            assert await flushed(env)
            locker = await asyncpg.connect(state_server.dsn(name))
            tx = locker.transaction()
            await tx.start()
            await locker.execute("LOCK TABLE dbgate.audit_events IN ACCESS EXCLUSIVE MODE")

            async def fill() -> None:
                while True:
                    await filler.execute("SELECT 7")

            filling = asyncio.create_task(fill())
            try:

                async def full() -> bool:
                    return (await writer_stats(env))["queued"] >= QUEUE

                await until(full, "the audit queue full")
                reading = asyncio.create_task(cur.fetch(1))
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(reading), 1)
                conn.terminate()
                with contextlib.suppress(Exception):
                    await reading
            finally:
                await tx.rollback()
                await locker.close()
            filling.cancel()
            with contextlib.suppress(asyncio.CancelledError, asyncpg.PostgresError):
                await filling
        await session_over(env, app, pid)
        ran, recs = await asyncio.to_thread(compare, env, logged, app, pid)
        # the server ran the first fetch only; the second is recorded, never sent
        assert sum(line.endswith("LIMIT 20") for line in ran) == 1, show(ran, recs)
        assert recs[-1][:4] == (
            "refused",
            "refused",
            "SELECT id FROM out_items ORDER BY id LIMIT $1",
            "08006",
        ), show(ran, recs)
        verify_trail(state_server.dsn(name))
