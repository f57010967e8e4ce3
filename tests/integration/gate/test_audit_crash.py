"""``kill -9`` of a running ``dbgate serve`` under load, then a restart.

What the audit promises survives the crash: the trail still verifies (the restarted
writer continues its chain without a gap or a fork), and every statement that ran
after an approval has its durable "decided: approved" record, because that record
is committed before the statement is forwarded — checked against the data server's
own statement log (``log_statement = 'all'``), one approved statement in flight when
the process dies. The records of ordinary statements still in memory are lost, as
many as docs/audit.md bounds: ``audit.queue_size`` plus one per statement in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import uvloop

from bench.dbgate_target import Approvals, Dbgate, create_database
from bench.procs import free_port
from bench.targets import Target
from dbgate.approvals.accounts import AccountStore
from dbgate.approvals.db import StateDB, create_pool
from tests.integration.holds.harness import drop_database
from tests.integration.server_log import ran_since

DATA_DB = "gate_audit_crash_data"
STATE_DB = "gate_audit_crash_state"
TABLE = "ledger"
PASSWORD = "crash-identity-secret"
REPLICA = "crash-replica"
APPROVED_ROUNDS = 3
LOADERS = 4
#: A small queue, and records that wait up to a second for company: what the crash
#: can lose is then measurable, and bounded by the queue
QUEUE = 100
AUDIT = (("queue_size", QUEUE), ("batch_delay", 1.0))
#: What the loaders run (the trail's text and the server's are the same here)
LOADED = ("SELECT note FROM ledger WHERE id = $1", "UPDATE ledger SET note = $1 WHERE id = $2")
APPROVED = "UPDATE ledger SET note = $1"


async def _prepare(server: Target) -> str:
    data_dsn = await create_database(server, DATA_DB)
    conn = await asyncpg.connect(data_dsn)
    try:
        await conn.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, note text)")
        await conn.execute(f"INSERT INTO {TABLE} SELECT g, 'start' FROM generate_series(1, 20) g")
        await conn.execute(f"ALTER DATABASE {DATA_DB} SET log_statement = 'all'")
    finally:
        await conn.close()
    return await create_database(server, STATE_DB)


async def _approver_token(state_dsn: str) -> str:
    pool = await create_pool(state_dsn, max_size=2)
    try:
        accounts = AccountStore(StateDB(pool))
        await accounts.add("crash-approver", ["dba"], None)
        _, token = await accounts.issue_token("crash-approver", label="crash test")
        return str(token)
    finally:
        await pool.close()


def _start(server: Target, state_dsn: str, work: Path) -> Dbgate:
    gate = Dbgate(
        work,
        server.host,
        server.port,
        server.user,
        server.password,
        identity_password=PASSWORD,
        dbname=DATA_DB,
        log_level="warning",
        name=REPLICA,
        approvals=Approvals(state_dsn, free_port(), REPLICA, audit_settings=AUDIT),
    )
    try:
        gate.wait_ready()
    except BaseException:
        gate.stop()
        raise
    return gate


async def _load(target: Target, stop: asyncio.Event, done: list[int]) -> None:
    """Allowed, key-pinned reads and writes until the connection dies."""
    try:
        conn = await asyncpg.connect(**target.asyncpg_kwargs())  # type: ignore[arg-type]
    except (OSError, asyncpg.PostgresError):
        return
    try:
        i = 0
        while not stop.is_set():
            i += 1
            await conn.fetchval(f"SELECT note FROM {TABLE} WHERE id = $1", 1 + i % 20)
            await conn.execute(f"UPDATE {TABLE} SET note = $1 WHERE id = $2", f"l{i}", 1 + i % 20)
            done.append(1)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return  # the proxy was killed under us
    finally:
        conn.terminate()


async def _approved_rounds(gate: Dbgate, token: str) -> list[int]:
    """Hold, approve and run a whole-table UPDATE ``APPROVED_ROUNDS`` times."""
    assert gate.approvals is not None
    conn = await asyncpg.connect(**gate.target.asyncpg_kwargs())  # type: ignore[arg-type]
    notices: asyncio.Queue[str] = asyncio.Queue()
    conn.add_log_listener(lambda _c, msg: notices.put_nowait(msg.message))
    ids: list[int] = []
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with aiohttp.ClientSession(base_url=gate.approvals.web_url, headers=headers) as http:
            for i in range(APPROVED_ROUNDS):
                held = asyncio.create_task(conn.execute(f"UPDATE {TABLE} SET note = $1", f"h{i}"))
                message = await asyncio.wait_for(notices.get(), 30)
                rid = int(message.split("(request ", 1)[1].split(")", 1)[0])
                async with http.post(f"/api/approvals/{rid}/approve", json={}) as r:
                    assert r.status == 200, await r.text()
                assert await asyncio.wait_for(held, 30) == "UPDATE 20"
                ids.append(rid)
    finally:
        await conn.close()
    return ids


async def _approve_then_kill(gate: Dbgate, token: str) -> int:
    """Hold a whole-table UPDATE, approve it, and kill the process the moment the
    approval is given: the statement may be on its way to the server, or not yet."""
    assert gate.approvals is not None
    conn = await asyncpg.connect(**gate.target.asyncpg_kwargs())  # type: ignore[arg-type]
    notices: asyncio.Queue[str] = asyncio.Queue()
    conn.add_log_listener(lambda _c, msg: notices.put_nowait(msg.message))
    headers = {"Authorization": f"Bearer {token}"}
    try:
        held = asyncio.create_task(conn.execute(f"UPDATE {TABLE} SET note = $1", "last"))
        message = await asyncio.wait_for(notices.get(), 30)
        rid = int(message.split("(request ", 1)[1].split(")", 1)[0])
        async with (
            aiohttp.ClientSession(base_url=gate.approvals.web_url, headers=headers) as http,
            http.post(f"/api/approvals/{rid}/approve", json={}) as r,
        ):
            assert r.status == 200, await r.text()
        os.killpg(gate.pid, signal.SIGKILL)  # its own process group: every child too
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            await asyncio.wait_for(held, 30)
    finally:
        conn.terminate()
    return rid


async def _run_and_kill(gate: Dbgate, state_dsn: str) -> tuple[list[int], int]:
    token = await _approver_token(state_dsn)
    stop = asyncio.Event()
    done: list[int] = []
    loaders = [asyncio.create_task(_load(gate.target, stop, done)) for _ in range(LOADERS)]
    ids = await _approved_rounds(gate, token)
    while len(done) < 50:  # the loaders are really running when the process dies
        await asyncio.sleep(0.01)
    ids.append(await _approve_then_kill(gate, token))
    await asyncio.wait_for(asyncio.gather(*loaders), 30)
    return ids, len(done)


async def _loaded_records(state_dsn: str) -> int:
    """The loaders' statements the trail recorded (final records)."""
    conn = await asyncpg.connect(state_dsn)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM dbgate.audit_log WHERE kind = 'statement'"
                " AND event <> 'decided' AND statement = ANY($1::text[])",
                list(LOADED),
            )
        )
    finally:
        await conn.close()


async def _records(state_dsn: str, rids: list[int]) -> dict[int, list[tuple[str, str]]]:
    conn = await asyncpg.connect(state_dsn)
    try:
        rows = await conn.fetch(
            "SELECT approval_id, event, decision FROM dbgate.audit_log"
            " WHERE kind = 'statement' AND approval_id = ANY($1::text[]) ORDER BY at, seq",
            [str(r) for r in rids],
        )
    finally:
        await conn.close()
    out: dict[int, list[tuple[str, str]]] = {r: [] for r in rids}
    for row in rows:
        out[int(row["approval_id"])].append((row["event"], row["decision"]))
    return out


def test_kill_9_under_load_then_restart_keeps_the_trail_whole(
    pg_server: Any, tmp_path: Path
) -> None:
    log_file = getattr(pg_server, "log_file", None)
    if log_file is None:
        pytest.skip("needs the embedded server, whose log this test reads")
    offset = Path(log_file).stat().st_size
    server = Target(
        "direct", pg_server.host, pg_server.port, pg_server.user, pg_server.password, "postgres"
    )
    state_dsn = uvloop.run(_prepare(server))
    try:
        first = _start(server, state_dsn, tmp_path / "first")
        try:
            rids, loaded = uvloop.run(_run_and_kill(first, state_dsn))
        finally:
            first.stop()
        assert loaded >= 50
        second = _start(server, state_dsn, tmp_path / "second")  # the same replica id
        second.stop()  # a clean stop flushes what the restarted writer recorded

        verified = subprocess.run(
            [sys.executable, "-m", "dbgate", "audit", "verify", "--dsn", state_dsn],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
        records = uvloop.run(_records(state_dsn, rids))
        ran = [line for _, line in ran_since(Path(log_file), offset)]
        # the server's witness: each approved statement it ran has its record, durable
        # before the statement was forwarded, so the crash cannot lose it
        approved_runs = sum(line.endswith(": " + APPROVED) for line in ran)
        assert approved_runs in (APPROVED_ROUNDS, APPROVED_ROUNDS + 1), ran
        for rid in rids[:approved_runs]:
            assert ("decided", "approved") in records[rid], (rid, records[rid])
        # ordinary statements: the records the crash lost were in memory, at most the
        # queue and one per statement in flight (each session runs one at a time)
        loaded_runs = sum(line.endswith(LOADED) for line in ran)
        lost = loaded_runs - uvloop.run(_loaded_records(state_dsn))
        assert 0 <= lost <= QUEUE + LOADERS, (lost, loaded_runs)
    finally:
        for db in (DATA_DB, STATE_DB):
            drop_database(pg_server.dsn("postgres"), db)
