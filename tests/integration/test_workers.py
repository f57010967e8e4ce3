"""``dbgate serve --workers 2`` with real PostgreSQL, real drivers and real signals:
cancels that cross workers, a worker killed under load, a drain across workers, a
port held by someone else, and the metrics of all workers on one page."""

from __future__ import annotations

import asyncio
import base64
import functools
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil
import psycopg
import pytest

from dbgate.embedded import find_free_port
from tests.conftest import PgServer
from tests.integration.serve_process import (
    DBGATE,
    ServeProcess,
    serve_config,
    wait_until,
    worker_of,
)

CROSSED = "it arrived at a sibling"


@pytest.fixture
def served(tmp_path: Path, pg_server: PgServer) -> Any:
    started: list[ServeProcess] = []

    def start(workers: int = 2, **extra: Any) -> ServeProcess:
        server = ServeProcess(tmp_path, serve_config(pg_server, **extra), workers)
        started.append(server)
        server.wait_ready()
        return server

    yield start
    for server in started:
        server.kill()


async def _running(admin: asyncpg.Connection, pid: int) -> bool:
    state = await admin.fetchval(
        "select state from pg_stat_activity where pid = $1 and query like 'select pg_sleep%'",
        pid,
    )
    return bool(state == "active")


async def _sessions_on_two_workers(server: ServeProcess, connect: Any, n: int = 8) -> list[Any]:
    """At least ``n`` sessions, on both workers. The kernel spreads connections over
    SO_REUSEPORT sockets by a hash of their addresses: 8 land on one worker about once
    in 128 runs, so more are opened until both hold some (64 all on one: never)."""
    workers = server.worker_processes()
    assert len(workers) == 2
    conns = [await connect() for _ in range(n)]
    holders = {await worker_of(c, workers) for c in conns}
    while len(holders) < 2 and len(conns) < 64:
        conns.append(await connect())
        holders.add(await worker_of(conns[-1], workers))
    assert len(holders) == 2, f"{len(conns)} connections all landed on one worker"
    return conns


async def test_cancel_lands_on_any_worker_and_cancels_the_right_query(
    served: Any, pg_server: PgServer, pg_database: str
) -> None:
    web_port = find_free_port()
    server = served(web={"listen": f"127.0.0.1:{web_port}"})
    dsn = server.dsn(pg_database)
    admin = await asyncpg.connect(pg_server.dsn(pg_database))
    pg_conns = await _sessions_on_two_workers(
        server, lambda: psycopg.AsyncConnection.connect(dsn, autocommit=True)
    )
    apg_conns = await _sessions_on_two_workers(server, lambda: asyncpg.connect(dsn))
    try:
        # Both workers' sessions in one /metrics page (prometheus multiprocess mode).
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{web_port}/metrics") as r,
        ):
            body = await r.text()
        sessions = float(len(pg_conns) + len(apg_conns))
        assert f"dbgate_sessions {sessions}" in body.splitlines()

        rounds = {"psycopg": 0, "asyncpg": 0}
        for i in range(80):
            if min(rounds.values()) >= 4 and server.count(CROSSED) >= 2:
                break
            if i % 2 == 0:
                conn = pg_conns[(i // 2) % len(pg_conns)]
                pid = conn.info.backend_pid
                task = asyncio.ensure_future(conn.execute("select pg_sleep(60)"))
                await wait_until(functools.partial(_running, admin, pid))
                await conn.cancel_safe()  # libpq's cancel: a new connection to the port
                with pytest.raises(psycopg.errors.QueryCanceled) as cancelled:
                    await task
                assert cancelled.value.sqlstate == "57014"
                assert await (await conn.execute("select 41 + 1")).fetchone() == (42,)
                rounds["psycopg"] += 1
            else:
                conn = apg_conns[(i // 2) % len(apg_conns)]
                pid = conn.get_server_pid()
                task = asyncio.ensure_future(conn.fetchval("select pg_sleep(60)"))
                await wait_until(functools.partial(_running, admin, pid))
                task.cancel()  # asyncpg sends a CancelRequest and waits for the result
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert await conn.fetchval("select 41 + 1") == 42
                rounds["asyncpg"] += 1
            # Only that statement: every other session's backend is idle.
            busy = await admin.fetchval(
                "select count(*) from pg_stat_activity where query like 'select pg_sleep%'"
                " and state = 'active'"
            )
            assert busy == 0
        assert min(rounds.values()) >= 4
        server.wait_for(CROSSED, times=2, timeout=30)
    finally:
        for c in pg_conns:
            await c.close()
        for c in apg_conns:
            await c.close()
        await admin.close()
    assert server.stop() == 0, server.output()


async def test_a_killed_worker_is_replaced_and_the_others_go_on(
    served: Any, pg_database: str
) -> None:
    server = served()
    dsn = server.dsn(pg_database)
    conns = await _sessions_on_two_workers(server, lambda: asyncpg.connect(dsn))
    workers = server.worker_processes()
    holders = {c: await worker_of(c, workers) for c in conns}
    victim = workers[0].pid
    doomed = [c for c, pid in holders.items() if pid == victim]
    survivors = [c for c, pid in holders.items() if pid != victim]

    done = [0]
    errors: list[BaseException] = []
    stop = asyncio.Event()

    async def load(conn: asyncpg.Connection) -> None:
        while not stop.is_set():
            try:
                assert await conn.fetchval("select count(*) from generate_series(1, 500)") == 500
                done[0] += 1
            except Exception as e:  # recorded, asserted below
                errors.append(e)
                return

    loaders = [asyncio.ensure_future(load(c)) for c in survivors]
    try:
        await wait_until(lambda: _true(done[0] > 10))
        psutil.Process(victim).kill()
        for conn in doomed:  # a clean error: the connection is gone, nothing hangs
            with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError)):
                await asyncio.wait_for(conn.fetchval("select 1"), 30)
        # Connections racing the kill may meet its listening socket as the kernel
        # tears it down (reset); once the process is gone, new ones all work.
        await asyncio.to_thread(psutil.Process(victim).wait, 30)
        before = done[0]
        fresh = [await asyncpg.connect(dsn) for _ in range(6)]
        for c in fresh:
            assert await c.fetchval("select 41 + 1") == 42
            await c.close()
        server.wait_for("is serving again", timeout=120)
        await wait_until(lambda: _true(done[0] > before + 10))
    finally:
        stop.set()
        await asyncio.gather(*loaders)
    assert errors == []
    replaced = {p.pid for p in server.worker_processes()}
    assert len(replaced) == 2 and victim not in replaced
    assert server.count("killed by SIGKILL") == 1
    for c in survivors:
        await c.close()
    assert server.stop() == 0, server.output()


async def _true(value: bool) -> bool:
    return value


async def _true_of(probe: Any) -> bool:
    return bool(probe())


async def test_sigterm_drains_every_worker(served: Any, pg_database: str) -> None:
    server = served()
    dsn = server.dsn(pg_database)
    conns = await _sessions_on_two_workers(server, lambda: asyncpg.connect(dsn))
    workers = server.worker_processes()
    in_txn: dict[int, asyncpg.Connection] = {}
    for c in conns:
        in_txn.setdefault(await worker_of(c, workers), c)
    assert len(in_txn) == 2
    for c in in_txn.values():
        await c.execute("begin")
        assert await c.fetchval("select 1") == 1
    idle = [c for c in conns if c not in in_txn.values()]

    server.proc.send_signal(signal.SIGTERM)

    async def refused() -> bool:
        try:
            c = await asyncpg.connect(dsn, timeout=5)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return True
        await c.close()
        return False

    await wait_until(refused)
    for c in in_txn.values():  # both workers let an open transaction finish
        assert await c.fetchval("select 41 + 1") == 42
        await c.execute("commit")
    for c in [*idle, *in_txn.values()]:  # then every session is closed (57P01)
        await wait_until(functools.partial(_true_of, c.is_closed))
    assert server.proc.wait(60) == 0, server.output()
    assert not any(p.is_running() for p in workers)
    assert server.count("all workers stopped") == 1


def test_port_in_use_is_one_line_not_one_per_worker(tmp_path: Path, pg_server: PgServer) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = serve_config(pg_server, listen=f"127.0.0.1:{port}")
        path = tmp_path / "c.yaml"
        import yaml

        path.write_text(yaml.safe_dump(config))
        result = subprocess.run(
            [str(DBGATE), "serve", "-c", str(path), "--workers", "2"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("dbgate: ")]
    assert lines == [
        f"dbgate: cannot listen on 127.0.0.1:{port} (the proxy port, listen / --listen): "
        f"the address is already in use; stop the process that holds it "
        f"(ss -ltnp 'sport = :{port}') or choose another port"
    ]


ALLOW_DDL = """version: 1
rules:
  - name: allow-ddl
    match:
      categories: [ddl]
    action: allow
"""


async def test_ddl_through_one_worker_is_not_read_raw_through_the_other(
    served: Any, tmp_path: Path, pg_server: PgServer, pg_database: str
) -> None:
    """Each worker keeps its own catalog snapshots (PII columns, unique keys), and only
    DDL it let through itself put them in flux. Without a state database to carry the
    word, a view redefined through one worker to read e-mails under a clean column's
    name came back raw through the other until its snapshot was 30 s old (or, before
    the workers told each other over their local sockets, such DDL was refused). Now
    the other worker is told before the DDL runs (``dbgate.workers_schema``)."""
    from dbgate.policy.rules import default_rules_dir

    rules = tmp_path / "rules"
    rules.mkdir()
    shutil.copy(default_rules_dir() / "default.yaml", rules / "default.yaml")
    (rules / "00-ddl.yaml").write_text(ALLOW_DDL)
    key = base64.b64encode(os.urandom(32)).decode()
    server = served(rules_dir=str(rules), pii={"keys": [{"id": "test", "secret": key}]})
    assert "DDL the rules allow is refused" not in server.output()
    emails = [f"worker{i}@example.org" for i in range(1, 4)]
    admin = await asyncpg.connect(pg_server.dsn(pg_database))
    read = "select label from w_board order by id limit 3"
    try:
        await admin.execute(
            "create table w_people (id int primary key, email text not null);"
            "create table w_labels (id int primary key, label text not null);"
            "insert into w_labels values (1, 'red'), (2, 'green'), (3, 'blue');"
            "create view w_board as select id, label from w_labels"
        )
        await admin.executemany("insert into w_people values ($1, $2)", list(enumerate(emails, 1)))
        conns = await _sessions_on_two_workers(
            server, lambda: asyncpg.connect(server.dsn(pg_database)), 2
        )
        workers = server.worker_processes()
        by_worker = {await worker_of(c, workers): c for c in conns}
        changer, reader = by_worker.values()
        try:
            # the reader's worker now holds a snapshot in which w_board is clean
            assert [r["label"] for r in await reader.fetch(read)] == ["red", "green", "blue"]
            await changer.execute(
                "create or replace view w_board as select id, email as label from w_people"
            )
            assert [r[0] for r in await admin.fetch(read)] == emails
            after = [r["label"] for r in await reader.fetch(read)]
            assert len(after) == 3 and not set(after) & set(emails), after
        finally:
            for c in conns:
                await c.close()
    finally:
        await admin.execute("drop view if exists w_board; drop table if exists w_people, w_labels")
        await admin.close()
