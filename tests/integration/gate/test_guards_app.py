"""Availability guards in a whole running dbgate (``App``, as ``dbgate serve`` runs it).

The shipped pack's session guards (statement_timeout 2min, lock_timeout 10s,
idle_in_transaction_session_timeout 1min, transaction_timeout 10min) are each
upstream session's starting values; RESET and DISCARD ALL come back to them, also
after an approved raise; a guard switched off runs with its ceiling, or is held
where the guard entry says so. The ``lock`` category is judged with the upstream's
real unique keys: row locks a key (or a LIMIT, OFFSET included) bounds run, the rest,
table locks above ROW SHARE and session-level advisory locks are held by
``hold-lock``. An agent idle in its transaction is ended by the server (FATAL 25P03
through dbgate), its locks are released, and the session's end is in the audit trail.

A test pack read before the shipped one gives short ceilings to some application
names only (``idle-test*``: idle_in_transaction_session_timeout 1s; ``strict-test*``:
a guard set to 0 is held, approve-then-retry). Bare-proxy run-time tests of the same
guards (every statement form, startup values, vanishing clients) are
tests/integration/test_guards_runtime.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from dbgate.wire import messages as m
from tests.integration.holds.clients import AsyncpgNotices, check_notice, check_retry_error
from tests.integration.holds.harness import (
    AGENT,
    AGENT_PASSWORD,
    HoldsEnv,
    admin_execute,
    start_env,
)
from tests.integration.rawclient import RawClient, rows
from tests.integration.test_guards_runtime import _ok, _waiting_for_lock

PACK = {
    "statement_timeout": "2min",
    "lock_timeout": "10s",
    "idle_in_transaction_session_timeout": "1min",
    "transaction_timeout": "10min",
}
GUARDS = tuple(PACK)

TEST_GUARDS = """\
version: 1
session_guards:
  - name: idle-test-guards
    match: {application_names: ["idle-test*"]}
    idle_in_transaction_session_timeout: 1s
  - name: strict-test-guards
    match: {application_names: ["strict-test*"]}
    statement_timeout: 2min
    lock_timeout: 10s
    idle_in_transaction_session_timeout: 1min
    transaction_timeout: 10min
    set_to_zero: hold
    approver_groups: [dba]
    wait_seconds: 0
"""

#: A direct writer waits at most this long for the agent's locks: far longer than the
#: idle ceiling (1s) that must free it first.
WRITER_LOCK_TIMEOUT = "20s"
ADVISORY_KEY = 4242


@pytest.fixture(scope="module")
def env(pg_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HoldsEnv]:
    tmp: Path = tmp_path_factory.mktemp("gate_guards")
    (tmp / "rules").mkdir()
    (tmp / "rules" / "05-guards-test.yaml").write_text(TEST_GUARDS)  # before the pack
    yield from start_env(pg_server, "gate_guards", tmp)


@pytest.fixture(scope="module", autouse=True)
def schema(env: HoldsEnv) -> str:
    """``guard_locks(id int primary key, v text)``, made before the first statement on
    the database, so the key catalog dbgate loads then knows its key."""
    admin_execute(
        env.admin_dsn,
        "DROP TABLE IF EXISTS guard_locks",
        "CREATE TABLE guard_locks (id int PRIMARY KEY, v text NOT NULL)",
    )
    return "guard_locks"


@pytest.fixture
def table(schema: str, env: HoldsEnv) -> str:
    """The table, with its ten rows as they started."""
    admin_execute(
        env.admin_dsn,
        f"TRUNCATE {schema}",
        f"INSERT INTO {schema} SELECT g, 'v' || g FROM generate_series(1, 10) g",
    )
    return schema


@pytest.fixture
async def admin(env: HoldsEnv) -> AsyncIterator[asyncpg.Connection]:
    """Straight to PostgreSQL: sees every session's locks."""
    conn = await asyncpg.connect(env.admin_dsn)
    yield conn
    await conn.close()


async def _show(conn: asyncpg.Connection) -> dict[str, str]:
    return {n: await conn.fetchval(f"SHOW {n}") for n in GUARDS}


async def _locked_rows(admin: asyncpg.Connection, table: str) -> int:
    """Rows of ``table`` some other session holds a row lock on (any strength)."""
    total = await admin.fetchval(f"SELECT count(*) FROM {table}")
    free = await admin.fetchval(
        f"SELECT count(*) FROM (SELECT id FROM {table} FOR UPDATE SKIP LOCKED) s"
    )
    return int(total) - int(free)


async def _advisory_held(admin: asyncpg.Connection) -> int:
    return int(
        await admin.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1",
            ADVISORY_KEY,
        )
    )


async def _table_locks(admin: asyncpg.Connection, pid: int, table: str) -> list[str]:
    return [
        r["mode"]
        for r in await admin.fetch(
            "SELECT mode FROM pg_locks WHERE pid = $1 AND relation = $2::regclass",
            pid,
            table,
        )
    ]


# -- the values dbgate sets ------------------------------------------------------------
async def test_each_session_starts_with_the_packs_guards(env: HoldsEnv) -> None:
    conn = await asyncpg.connect(env.dsn)
    try:
        assert await _show(conn) == PACK
        sources = await conn.fetch(
            "SELECT name, source FROM pg_settings WHERE name = ANY($1::text[])", list(GUARDS)
        )
        assert {r["name"]: r["source"] for r in sources} == dict.fromkeys(GUARDS, "client")
    finally:
        await conn.close()
    idle = await asyncpg.connect(env.dsn, server_settings={"application_name": "idle-test-x"})
    try:  # first match per setting: the test entry's one ceiling, the pack's others
        assert await _show(idle) == {**PACK, "idle_in_transaction_session_timeout": "1s"}
    finally:
        await idle.close()


@pytest.mark.parametrize(
    "reset",
    ["RESET {name}", "SET {name} TO DEFAULT", "RESET ALL", "DISCARD ALL"],
)
async def test_reset_brings_back_dbgates_values_also_after_an_approved_raise(
    env: HoldsEnv, reset: str
) -> None:
    conn = await asyncpg.connect(env.dsn, statement_cache_size=0)  # DISCARD ALL drops them
    notices = AsyncpgNotices(conn)
    try:
        raising = asyncio.create_task(conn.execute("SET statement_timeout = '1h'"))
        rid = await notices.held()
        request = await env.app.arequest(rid)
        assert request["rule"] == "default-guards"
        await env.app.aapprove(rid)
        assert await raising == "SET"
        for name in GUARDS[1:]:
            await conn.execute(f"SET {name} = '500ms'")  # lowering: free
        assert await _show(conn) == {
            "statement_timeout": "1h",
            **dict.fromkeys(GUARDS[1:], "500ms"),
        }
        for name in GUARDS if "{name}" in reset else ("",):
            await conn.execute(reset.format(name=name))
        assert await _show(conn) == PACK
    finally:
        await conn.close()


async def test_a_guard_switched_off_runs_with_the_packs_ceiling(env: HoldsEnv) -> None:
    conn = await asyncpg.connect(env.dsn)
    try:
        for name in GUARDS:
            assert await conn.execute(f"SET {name} = 0") == "SET"
        assert await _show(conn) == PACK
    finally:
        await conn.close()


async def test_a_guard_switched_off_is_held_where_its_entry_says_so(env: HoldsEnv) -> None:
    """``set_to_zero: hold`` with ``wait_seconds: 0``: refused with a request to approve,
    nothing changed; once approved, the identical statement runs."""
    conn = await asyncpg.connect(env.dsn, server_settings={"application_name": "strict-test-1"})
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as info:
            await conn.execute("SET lock_timeout = 0")
        rid = check_retry_error(info.value.message, info.value.hint)
        request = await env.app.arequest(rid)
        assert request["rule"] == "strict-test-guards"
        assert "turns lock_timeout off (0)" in str(request["reasons"])
        assert await _show(conn) == PACK
        await env.app.aapprove(rid)
        assert await conn.execute("SET lock_timeout = 0") == "SET"
        assert await conn.fetchval("SHOW lock_timeout") == "0"
    finally:
        await conn.close()


# -- the lock category -------------------------------------------------------------------
#: (statement, rows of the table it locks): allowed by the pack, run in a transaction.
ALLOWED_LOCKS = [
    ("SELECT v FROM {t} WHERE id = 1 FOR UPDATE", 1),
    ("SELECT v FROM {t} WHERE id = 2 FOR SHARE NOWAIT", 1),
    ("SELECT v FROM {t} WHERE id IN (1, 2) FOR NO KEY UPDATE", 2),
    ("SELECT v FROM {t} WHERE id = ANY('{{3,4,5}}') FOR KEY SHARE", 3),
    # LIMIT 2 OFFSET 3 locks five rows: the skipped ones too (and the classifier says so)
    ("SELECT v FROM {t} WHERE v LIKE 'v%' ORDER BY id LIMIT 2 OFFSET 3 FOR UPDATE", 5),
    ("LOCK TABLE {t} IN ACCESS SHARE MODE", 0),
    ("LOCK TABLE {t} IN ROW SHARE MODE", 0),
    (f"SELECT pg_advisory_xact_lock({ADVISORY_KEY})", 0),
]


@pytest.mark.parametrize(("sql", "locked"), ALLOWED_LOCKS, ids=[s for s, _ in ALLOWED_LOCKS])
async def test_locks_a_key_or_limit_bounds_run(
    env: HoldsEnv, table: str, admin: asyncpg.Connection, sql: str, locked: int
) -> None:
    conn = await asyncpg.connect(env.dsn)
    try:
        await conn.execute("BEGIN")
        await conn.execute(sql.format(t=table))
        assert await _locked_rows(admin, table) == locked
        await conn.execute("ROLLBACK")
        assert await _locked_rows(admin, table) == 0
        assert await _advisory_held(admin) == 0
    finally:
        await conn.close()


HELD_LOCKS = [
    "SELECT v FROM {t} WHERE id > 0 FOR UPDATE",
    "SELECT v FROM {t} WHERE v LIKE 'v%' FOR SHARE NOWAIT",
    "SELECT v FROM {t} ORDER BY id LIMIT 1 OFFSET 5000 FOR UPDATE",
    "SELECT v FROM {t} WHERE v = 'v1' LIMIT 1 OFFSET $1 FOR UPDATE",
    "LOCK TABLE {t} IN ACCESS EXCLUSIVE MODE",
    "LOCK {t}",
    "LOCK TABLE {t} IN SHARE ROW EXCLUSIVE MODE",
    f"SELECT pg_advisory_lock({ADVISORY_KEY})",
    f"SELECT pg_try_advisory_lock_shared({ADVISORY_KEY})",
    "PREPARE TRANSACTION 'guards-test'",
]


@pytest.mark.parametrize("sql", HELD_LOCKS)
async def test_locks_that_can_block_others_are_held(
    env: HoldsEnv, table: str, admin: asyncpg.Connection, sql: str
) -> None:
    conn = await asyncpg.connect(env.dsn)
    notices = AsyncpgNotices(conn)
    try:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        await conn.execute("BEGIN")
        args = (0,) if "$1" in sql else ()
        running = asyncio.create_task(conn.execute(sql.format(t=table), *args))
        rid = await notices.held()
        assert (await env.app.arequest(rid))["rule"] == "hold-lock"
        # while it waits for a human, nothing of it runs
        assert await _locked_rows(admin, table) == 0
        assert await _advisory_held(admin) == 0
        assert "AccessExclusiveLock" not in await _table_locks(admin, pid, table)
        await env.app.areject(rid, "no locks today")
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as info:
            await running
        assert "hold-lock" in info.value.hint
        await conn.execute("ROLLBACK")
    finally:
        await conn.close()


async def test_a_row_lock_on_a_table_made_since_the_keys_loaded_is_proven_by_its_key(
    env: HoldsEnv, admin: asyncpg.Connection
) -> None:
    conn = await asyncpg.connect(env.dsn)
    notices = AsyncpgNotices(conn)
    assert await conn.fetchval("SELECT 1") == 1  # the database's keys are loaded now
    name = f"guard_new_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
    await admin.execute(f"INSERT INTO {name} VALUES (1, 'a'), (2, 'b')")
    try:
        await conn.execute("BEGIN")
        running = asyncio.create_task(conn.execute(f"SELECT v FROM {name} WHERE id = 1 FOR UPDATE"))
        held = asyncio.create_task(notices.next())
        done, _ = await asyncio.wait({running, held}, return_when=asyncio.FIRST_COMPLETED)
        if held in done:  # held: answer it, so that the connection is free again
            await env.app.areject(check_notice_id(held.result()), "should not be held")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await running
        else:
            held.cancel()
        assert running in done and running.result() == "SELECT 1"
    finally:
        await conn.close()
        await admin.execute(f"DROP TABLE {name}")


def check_notice_id(notice: Any) -> int:
    return check_notice(notice.message, notice.detail, notice.sqlstate)


# -- an agent idle in its transaction ------------------------------------------------------
def _session_records(env: HoldsEnv, application_name: str) -> list[dict[str, Any]]:
    env.app.call(env.app.app.audit.flush())
    return env.app.rows(
        "SELECT * FROM dbgate.audit_log WHERE kind = 'session' AND application_name = $1 "
        "ORDER BY chain, seq",
        application_name,
    )


async def _disconnect_record(env: HoldsEnv, application_name: str) -> dict[str, Any]:
    """The session's disconnect record, once written (polled with a deadline)."""
    deadline = time.monotonic() + 10
    while True:
        recs = await asyncio.to_thread(_session_records, env, application_name)
        ended = [r for r in recs if r["event"] == "disconnect"]
        if ended:
            assert [r["event"] for r in recs] == ["connect", "disconnect"]
            return ended[0]
        assert time.monotonic() < deadline, f"no disconnect recorded: {recs}"
        await asyncio.sleep(0.02)


async def _idle_agent_ended(
    env: HoldsEnv, table: str, admin: asyncpg.Connection, application_name: str
) -> list[dict[str, str]]:
    """An agent updates a row, then waits (busy, so not idle yet) for an advisory lock
    the admin holds until a direct writer is seen waiting for the agent's row; then it
    goes idle in its transaction, and the 1s ceiling ends it. Returns the FATALs the
    client got; the writer's update has gone through."""
    writer = await asyncpg.connect(
        env.admin_dsn, server_settings={"lock_timeout": WRITER_LOCK_TIMEOUT}
    )
    client = await RawClient.connect(
        "127.0.0.1",
        env.app.port,
        user=AGENT,
        password=AGENT_PASSWORD,
        database=env.data_db,
        params={"application_name": application_name},
    )
    try:
        ((pid,),) = rows(_ok(await client.query("SELECT pg_backend_pid()")))
        agent_pid = int(pid)  # type: ignore[arg-type]
        await admin.execute("SELECT pg_advisory_lock($1)", ADVISORY_KEY)
        _ok(await client.query("BEGIN"))
        _ok(await client.query(f"UPDATE {table} SET v = 'agent' WHERE id = 1"))
        client.send(m.query(f"SELECT pg_advisory_xact_lock({ADVISORY_KEY})"))
        await _waiting_for_lock(admin, agent_pid)
        writing = asyncio.ensure_future(
            writer.execute(f"UPDATE {table} SET v = 'writer' WHERE id = 1")
        )
        await _waiting_for_lock(admin, writer.get_server_pid())
        await admin.execute("SELECT pg_advisory_unlock($1)", ADVISORY_KEY)
        _ok(await client.until_ready())  # now idle in its transaction
        ending = await client.until_closed(timeout=30)
        assert await writing == "UPDATE 1"  # freed long before its own lock_timeout
        assert not await admin.fetchval("SELECT count(*) FROM pg_locks WHERE pid = $1", agent_pid)
        return [x.fields for x in ending if isinstance(x, m.ErrorResponse)]
    finally:
        client.abort()
        await writer.close()


async def test_an_idle_agent_is_ended_by_the_server_and_its_end_recorded(
    env: HoldsEnv, table: str, admin: asyncpg.Connection
) -> None:
    app_name = f"idle-test-{uuid.uuid4().hex[:8]}"
    fatal = await _idle_agent_ended(env, table, admin, app_name)
    assert [(f["S"], f["C"]) for f in fatal] == [("FATAL", "25P03")]
    assert "idle-in-transaction timeout" in fatal[0]["M"]
    # rolled back: the writer's value stands, the agent's never committed
    assert await admin.fetchval(f"SELECT v FROM {table} WHERE id = 1") == "writer"
    record = await _disconnect_record(env, app_name)
    assert (record["identity"], record["database"]) == (AGENT, env.data_db)


async def test_the_disconnect_record_says_the_server_ended_the_session(
    env: HoldsEnv, table: str, admin: asyncpg.Connection
) -> None:
    app_name = f"idle-test-{uuid.uuid4().hex[:8]}"
    fatal = await _idle_agent_ended(env, table, admin, app_name)
    record = await _disconnect_record(env, app_name)
    assert (record["outcome"], record["reason"]) == ("25P03", fatal[0]["M"])
