"""Session guards at run time: an agent cannot hold a real server's locks hostage.

dbgate starts every upstream session with the identity's ceilings for
``statement_timeout``, ``lock_timeout``, ``idle_in_transaction_session_timeout`` and
``transaction_timeout`` as StartupMessage parameters, so they are the session's
reset values. Here an agent works through dbgate (the gate enforcing the shipped
pack plus a test pack that allows row and table locks and sets short ceilings for
some application names) while a *direct* writer waits for its locks: the writer
must get them once a ceiling ends the agent's hold — or at once when the agent's
client vanishes — never blocked until the agent decides to let go. Every bound a
test relies on is the server's own timeout (the writer's ``lock_timeout``), never
a sleep or a stopwatch.

``pg_dump --schema-only`` under the shipped pack's guards (it sends ``SET
statement_timeout = 0`` and friends) is tests/integration/clients/
test_psql_pg_dump_clients.py, whose proxy is wired as ``dbgate serve`` wires it.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from dbgate.gate import Gate
from dbgate.gate.keys import KeyCatalogs
from dbgate.policy.rules import RuleSet, default_rules_dir, load_rules
from dbgate.policy.startup import StartupGuards
from dbgate.proxy.seams import Arrival, StatementRecord
from dbgate.proxy.session_info import SessionInfo
from dbgate.wire import messages as m
from tests.integration.conftest import RunningProxy, proxy_config
from tests.integration.rawclient import RawClient, agent, rows

GUARDS = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")
ALL_GUARDS = (*GUARDS, "transaction_timeout")

#: Ceilings as the server shows them (SHOW) for an ordinary session of this pack.
CEILINGS = {
    "statement_timeout": "30s",
    "lock_timeout": "3s",
    "idle_in_transaction_session_timeout": "1h",
    "transaction_timeout": "1h",
}

TEST_PACK = """
session_guards:
  - name: idle-test-guards          # goes idle in a transaction: ended after 1s
    match:
      application_names: [idle-test]
    idle_in_transaction_session_timeout: 1s
    lock_timeout: 1min
  - name: txn-test-guards           # keeps a transaction open while busy: ended after 2s
    match:
      application_names: [txn-test]
    transaction_timeout: 2s
  - name: short-statement-guards
    match:
      application_names: [short-statement]
    statement_timeout: 1s
  - name: test-guards
    statement_timeout: 30s
    lock_timeout: 3s
    idle_in_transaction_session_timeout: 1h
    transaction_timeout: 1h
rules:
  - name: allow-locks
    match:
      categories: [lock]
    action: allow
"""

#: The writer waits at most this long for a lock; every ceiling that should free it
#: (or the agent's disconnect) comes well before, the agent's own hold (1h) after.
WRITER_LOCK_TIMEOUT = "20s"


# -- fixtures --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rules(tmp_path_factory: pytest.TempPathFactory) -> RuleSet:
    """The shipped pack behind a test pack read first (its guards and rules win)."""
    d: Path = tmp_path_factory.mktemp("guard-rules")
    shutil.copy(default_rules_dir() / "default.yaml", d / "50-default.yaml")
    (d / "00-guards-test.yaml").write_text(TEST_PACK)
    return load_rules(d)


class Endings:
    """Observer: how each session ended (what ``session_ended`` sees)."""

    def __init__(self) -> None:
        self.ended: list[tuple[str, str]] = []
        self.event = threading.Event()

    def session_ended(self, session: SessionInfo) -> None:
        self.ended.append((session.ended_sqlstate, session.ended_message))
        self.event.set()

    def session_started(self, session: SessionInfo) -> None: ...
    def session_refused(self, *args: Any) -> None: ...
    def statement_received(self, session: SessionInfo, rec: StatementRecord) -> None: ...
    def statement_decided(self, session: SessionInfo, rec: StatementRecord) -> None: ...
    def statement_forwarded(self, session: SessionInfo, rec: StatementRecord) -> None: ...
    def statement_completed(self, session: SessionInfo, rec: StatementRecord) -> None: ...
    def statement_failed(self, session: SessionInfo, rec: StatementRecord) -> None: ...


@pytest.fixture
def endings() -> Endings:
    return Endings()


@pytest.fixture
def guarded(make_proxy: Any, pg_server: Any, rules: RuleSet, endings: Endings) -> RunningProxy:
    """dbgate as ``serve`` wires it: the gate with the upstream's unique keys (so a
    write that pins a key is proven narrow), and the session guards of its rules."""
    keys = KeyCatalogs(proxy_config(pg_server))
    proxy: RunningProxy = make_proxy(
        inspector=Gate(rules, keys=keys), observer=endings, session_setup=StartupGuards(rules)
    )
    return proxy


@pytest.fixture
def gdsn(guarded: RunningProxy, pg_database: str) -> str:
    return guarded.dsn(pg_database)


@pytest.fixture
def table(pg_dsn: str) -> Iterator[str]:
    name = f"guard_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
        conn.execute(f"INSERT INTO {name} SELECT g, 'v' || g FROM generate_series(1, 10) g")
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
async def writer(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A production writer straight to PostgreSQL, waiting at most its own lock_timeout."""
    conn = await asyncpg.connect(pg_dsn, server_settings={"lock_timeout": WRITER_LOCK_TIMEOUT})
    yield conn
    await conn.close()


@pytest.fixture
async def admin(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """Straight to PostgreSQL: watches pg_stat_activity, holds a row for a scenario."""
    conn = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()


async def _waiting_for_lock(admin: asyncpg.Connection, pid: int) -> None:
    """Until backend ``pid`` waits for a lock (polls the server's own view)."""
    for _ in range(1000):
        if await admin.fetchval(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
        ):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"backend {pid} never waited for a lock")


async def _running(admin: asyncpg.Connection, pid: int, text: str) -> None:
    """Until backend ``pid`` is running a statement containing ``text``."""
    for _ in range(1000):
        if await admin.fetchval(
            "SELECT state = 'active' AND strpos(query, $2) > 0 FROM pg_stat_activity "
            "WHERE pid = $1",
            pid,
            text,
        ):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"backend {pid} never ran {text!r}")


async def _gone(admin: asyncpg.Connection, pid: int) -> None:
    """Until backend ``pid`` has exited."""
    for _ in range(1000):
        if not await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"backend {pid} is still there")


#: How soon a vanished client's upstream backend must let go of its locks (issue 16:
#: "terminated or its transaction rolled back within a second").
RELEASE_DEADLINE = 1.0


async def _locks_released(admin: asyncpg.Connection, pid: int, since: float) -> None:
    """Until backend ``pid`` holds no lock (pg_locks), at most RELEASE_DEADLINE
    seconds after ``since`` (a time.monotonic() reading): polled, never slept on."""
    while await admin.fetchval("SELECT count(*) FROM pg_locks WHERE pid = $1", pid):
        waited = time.monotonic() - since
        assert waited < RELEASE_DEADLINE, f"backend {pid} still holds locks after {waited:.2f}s"
        await asyncio.sleep(0.005)


def _ok(msgs: list[Any]) -> list[Any]:
    errors = [x for x in msgs if isinstance(x, m.ErrorResponse)]
    assert not errors, errors[0].fields
    return msgs


def _error(msgs: list[Any]) -> dict[str, str]:
    errors = [x for x in msgs if isinstance(x, m.ErrorResponse)]
    assert errors, f"no error in {msgs}"
    fields: dict[str, str] = errors[0].fields
    return fields


async def _agent(proxy: RunningProxy, database: str, app: str = "guards-test") -> RawClient:
    return await agent(proxy, database, params={"application_name": app})


async def _agent_pid(client: RawClient) -> int:
    """The agent's upstream backend (asked of the server, not taken from BackendKeyData)."""
    ((pid,),) = rows(_ok(await client.query("SELECT pg_backend_pid()")))
    assert pid is not None
    return int(pid)


async def _show(conn: asyncpg.Connection, names: tuple[str, ...] = ALL_GUARDS) -> dict[str, str]:
    return {n: await conn.fetchval(f"SHOW {n}") for n in names}


# -- the values dbgate sets --------------------------------------------------------------
async def test_each_guard_is_the_sessions_setting_as_dbgate_set_it(
    guarded: RunningProxy, pg_database: str, gdsn: str
) -> None:
    conn = await asyncpg.connect(gdsn)
    try:
        assert await _show(conn) == CEILINGS
        # Sent at startup: the session's reset values, from the client's startup packet.
        rows = await conn.fetch(
            "SELECT name, source, reset_val FROM pg_settings WHERE name = ANY($1::text[])",
            list(ALL_GUARDS),
        )
        assert {r["name"]: r["source"] for r in rows} == dict.fromkeys(ALL_GUARDS, "client")
        assert {r["name"]: r["reset_val"] for r in rows} == {
            "statement_timeout": "30000",
            "lock_timeout": "3000",
            "idle_in_transaction_session_timeout": "3600000",
            "transaction_timeout": "3600000",
        }
    finally:
        await conn.close()
    raw = await _agent(guarded, pg_database)
    try:  # nothing of them in what the client was told at startup
        assert not set(raw.params) & set(ALL_GUARDS)
    finally:
        await raw.close()


@pytest.mark.parametrize(
    ("app", "changed"),
    [
        ("idle-test", {"idle_in_transaction_session_timeout": "1s", "lock_timeout": "1min"}),
        ("txn-test", {"transaction_timeout": "2s"}),
    ],
)
async def test_the_guard_entry_is_chosen_by_the_arriving_client(
    gdsn: str, app: str, changed: dict[str, str]
) -> None:
    conn = await asyncpg.connect(gdsn, server_settings={"application_name": app})
    try:
        assert await _show(conn) == {**CEILINGS, **changed}
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "reset",
    [
        "RESET {name}",
        "SET {name} TO DEFAULT",
        "SET {name} = DEFAULT",
        "RESET ALL",
        "DISCARD ALL",
    ],
)
async def test_every_way_back_to_the_default_comes_back_to_dbgates_values(
    gdsn: str, reset: str
) -> None:
    conn = await asyncpg.connect(gdsn, statement_cache_size=0)  # DISCARD ALL drops them
    try:
        for name in ALL_GUARDS:
            await conn.execute(f"SET {name} = '500ms'")  # lowering: allowed
        assert set((await _show(conn)).values()) == {"500ms"}
        for name in ALL_GUARDS if "{name}" in reset else ("",):
            await conn.execute(reset.format(name=name))
        assert await _show(conn) == CEILINGS
    finally:
        await conn.close()


async def test_set_local_lasts_for_the_transaction_only(gdsn: str) -> None:
    conn = await asyncpg.connect(gdsn)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL statement_timeout = '5s'")
            await conn.execute("SELECT set_config('lock_timeout', '1s', true)")
            assert await _show(conn, ("statement_timeout", "lock_timeout")) == {
                "statement_timeout": "5s",
                "lock_timeout": "1s",
            }
        assert await _show(conn) == CEILINGS
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="above this identity"):
            async with conn.transaction():
                await conn.execute("SET LOCAL statement_timeout = '1h'")
        assert await _show(conn) == CEILINGS
    finally:
        await conn.close()


# -- raising them ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("SET statement_timeout = '1h'", "raises statement_timeout to 1h, above this identity"),
        ("SET lock_timeout TO '5min'", "raises lock_timeout to 5min, above this identity"),
        (
            "SET idle_in_transaction_session_timeout = '2h'",
            "raises idle_in_transaction_session_timeout to 2h",
        ),
        ("SET transaction_timeout = '1d'", "raises transaction_timeout to 1d"),
        ("SET SESSION statement_timeout = 3600000", "raises statement_timeout to 1h"),
        ("SET statement_timeout = '1m'", "cannot read in advance"),  # the server refuses 'm'
        (
            "SELECT set_config('statement_timeout', '2h', false)",
            "raises statement_timeout to 2h, above this identity",
        ),
        ("SELECT set_config('lock_timeout', current_setting('work_mem'), false)", "lock_timeout"),
        ("SELECT set_config('statement_timeout', (SELECT '5s'), false)", "computed at run time"),
        ("SELECT set_config('statement_timeout', NULL, false)", "cannot read in advance"),
    ],
)
async def test_raising_a_guard_past_its_ceiling_is_held_and_the_client_is_told(
    gdsn: str, sql: str, why: str
) -> None:
    conn = await asyncpg.connect(gdsn)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="needs approval") as info:
            await conn.execute(sql)
        assert why in str(info.value)
        assert await _show(conn) == CEILINGS  # nothing ran
    finally:
        await conn.close()


async def test_set_config_with_a_constant_below_the_ceiling_runs(gdsn: str) -> None:
    conn = await asyncpg.connect(gdsn)
    try:
        assert await conn.fetchval("SELECT set_config('statement_timeout', '5s', false)") == "5s"
        assert await conn.fetchval("SHOW statement_timeout") == "5s"
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "function",
    [
        "CREATE FUNCTION {f}() RETURNS void LANGUAGE plpgsql AS "
        "$$BEGIN PERFORM set_config('statement_timeout', '0', false); END$$",
        "CREATE FUNCTION {f}() RETURNS void LANGUAGE plpgsql AS "
        "$$BEGIN EXECUTE 'SET lock_timeout = 0'; END$$",
        "CREATE FUNCTION {f}() RETURNS int LANGUAGE sql SET statement_timeout = 0 AS 'SELECT 1'",
    ],
)
async def test_a_function_that_sets_them_is_opaque_and_held(
    gdsn: str, pg_dsn: str, function: str
) -> None:
    name = f"guard_off_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(function.format(f=name))  # type: ignore[arg-type]
    conn = await asyncpg.connect(gdsn)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="needs approval") as info:
            await conn.execute(f"SELECT {name}()")
        assert "not a function dbgate knows" in str(info.value)
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="needs approval"):
            await conn.execute(
                "DO $$BEGIN PERFORM set_config('statement_timeout', '0', false); END$$"
            )
        assert await _show(conn) == CEILINGS
    finally:
        await conn.close()
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(f"DROP FUNCTION {name}")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ALL_GUARDS)
async def test_a_guard_set_to_zero_runs_with_its_ceiling(gdsn: str, name: str) -> None:
    """``SET x = 0`` ("no limit", what pg_dump sends) is forwarded as ``SET x = <the
    ceiling>``: the client sees SET, the session keeps its limit — in a transaction
    with ``SET LOCAL`` too, and the transaction's end restores the session's value."""
    conn = await asyncpg.connect(gdsn)
    try:
        assert await conn.execute(f"SET {name} = 0") == "SET"
        assert await conn.fetchval(f"SHOW {name}") == CEILINGS[name]
        await conn.execute(f"SET {name} = '700ms'")
        async with conn.transaction():
            assert await conn.execute(f"SET LOCAL {name} TO 0") == "SET"
            assert await conn.fetchval(f"SHOW {name}") == CEILINGS[name]
        assert await conn.fetchval(f"SHOW {name}") == "700ms"
    finally:
        await conn.close()


async def test_set_config_to_zero_cannot_be_clamped_and_is_held(gdsn: str) -> None:
    """Only a plain SET can be rewritten to the ceiling; ``set_config(…, '0', …)`` —
    as text or as a Bind value — is held, and nothing of it runs."""
    conn = await asyncpg.connect(gdsn)
    try:
        for sql, args in [
            ("SELECT set_config('statement_timeout', '0', false)", ()),
            ("SELECT set_config('lock_timeout', '0', true)", ()),
            ("SELECT set_config('statement_timeout', $1, false)", ("0",)),
            ("SELECT set_config('idle_in_transaction_session_timeout', $1, false)", ("2h",)),
        ]:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="needs approval"):
                await conn.fetchval(sql, *args)
            assert await _show(conn) == CEILINGS, sql
        # a lower value given at Bind runs
        assert await conn.fetchval("SELECT set_config('lock_timeout', $1, false)", "1s") == "1s"
        assert await conn.fetchval("SHOW lock_timeout") == "1s"
    finally:
        await conn.close()


# -- what the client sends at startup ----------------------------------------------------
async def test_startup_guards_above_the_ceiling_become_the_ceiling(gdsn: str) -> None:
    conn = await asyncpg.connect(
        gdsn,
        server_settings={
            "statement_timeout": "0",  # "no limit": the ceiling instead
            "lock_timeout": "1s",  # lower: the client's
            "idle_in_transaction_session_timeout": "1d",  # higher: the ceiling
            "transaction_timeout": "10min",
        },
    )
    try:
        expected = {
            "statement_timeout": "30s",
            "lock_timeout": "1s",
            "idle_in_transaction_session_timeout": "1h",
            "transaction_timeout": "10min",
        }
        assert await _show(conn) == expected
        await conn.execute("SET lock_timeout = '100ms'")
        await conn.execute("RESET ALL")  # back to what the session started with
        assert await _show(conn) == expected
    finally:
        await conn.close()


async def test_a_startup_guard_the_server_would_refuse_is_refused(gdsn: str) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="lock_timeout has a value"):
        await asyncpg.connect(gdsn, server_settings={"lock_timeout": "1m"})


@pytest.mark.parametrize(
    "options",
    [
        "-c statement_timeout=0",
        "-c dbgate.purpose=x -c idle_in_transaction_session_timeout=0",
        "--lock-timeout=0",
    ],
)
def test_startup_options_that_set_them_are_refused(gdsn: str, options: str) -> None:
    with pytest.raises(psycopg.OperationalError, match="'options' parameter is not allowed"):
        psycopg.connect(gdsn, options=options)


@pytest.mark.parametrize(
    ("search_path", "refused"),
    [
        ('"pg_catalog,x", public, pg_catalog', "puts a schema before pg_catalog"),
        ("public, PG_CATALOG", "puts a schema before pg_catalog"),
        ("public,,pg_catalog", "not a valid list"),
        ("pg_temp, pg_catalog, public", None),
        ('"$user", public', None),
    ],
)
async def test_a_startup_search_path_is_read_as_the_server_reads_it(
    gdsn: str, search_path: str, refused: str | None
) -> None:
    if refused is not None:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match=refused):
            await asyncpg.connect(gdsn, server_settings={"search_path": search_path})
        return
    conn = await asyncpg.connect(gdsn, server_settings={"search_path": search_path})
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


# -- long statements and waits -----------------------------------------------------------
async def test_a_sleep_longer_than_the_ceiling_is_refused_up_front(gdsn: str) -> None:
    conn = await asyncpg.connect(gdsn)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="sleeps for 1min") as info:
            await conn.execute("SELECT pg_sleep(60)")
        assert "longer than this identity's statement_timeout (30s)" in str(info.value)
    finally:
        await conn.close()


async def test_a_statement_is_cancelled_at_the_statement_timeout(gdsn: str) -> None:
    conn = await asyncpg.connect(gdsn, server_settings={"application_name": "short-statement"})
    try:
        with pytest.raises(asyncpg.QueryCanceledError, match="statement timeout"):
            await conn.execute("SELECT pg_sleep(x) FROM (VALUES (20)) v(x)")  # not constant
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


async def test_an_agent_waiting_for_a_lock_gives_up_at_the_lock_timeout(
    gdsn: str, table: str, admin: asyncpg.Connection
) -> None:
    conn = await asyncpg.connect(gdsn)
    try:
        async with admin.transaction():
            await admin.execute(f"SELECT * FROM {table} WHERE id = 1 FOR UPDATE")
            with pytest.raises(asyncpg.LockNotAvailableError, match="lock timeout"):
                await conn.execute(f"UPDATE {table} SET v = 'agent' WHERE id = 1")
    finally:
        await conn.close()


# -- an agent holding locks, a direct writer waiting ------------------------------------
#: (what the agent runs to take locks, what the writer then runs, which waits for them)
HOLDS = {
    "row-update": (
        "UPDATE {t} SET v = 'agent' WHERE id = 1",
        "UPDATE {t} SET v = 'writer' WHERE id = 1",
    ),
    "for-update": (
        "SELECT v FROM {t} WHERE id = 1 FOR UPDATE",
        "UPDATE {t} SET v = 'writer' WHERE id = 1",
    ),
    "for-update-all": (
        "SELECT v FROM {t} WHERE id > 0 FOR UPDATE",
        "UPDATE {t} SET v = 'writer' WHERE id = 1",
    ),
    "lock-table": (
        "LOCK TABLE {t} IN ACCESS EXCLUSIVE MODE",
        "UPDATE {t} SET v = 'writer' WHERE id = 1",
    ),
    "lock-table-reader": ("LOCK TABLE {t} IN ACCESS EXCLUSIVE MODE", "SELECT count(*) FROM {t}"),
}


@pytest.mark.parametrize("hold", sorted(HOLDS))
async def test_an_agent_idle_in_its_transaction_is_ended_and_the_writer_proceeds(
    guarded: RunningProxy,
    pg_database: str,
    table: str,
    writer: asyncpg.Connection,
    admin: asyncpg.Connection,
    endings: Endings,
    caplog: pytest.LogCaptureFixture,
    hold: str,
) -> None:
    """The agent takes its locks, then waits for an advisory lock the admin holds
    (busy, so the idle timer has not started) until the writer is seen waiting for
    the agent's locks; then the admin lets go, the agent goes idle in its
    transaction, and the server's idle-in-transaction timeout (1s for this
    application) ends it."""
    take, write = (s.format(t=table) for s in HOLDS[hold])
    caplog.set_level(logging.INFO, logger="dbgate.session")
    client = await _agent(guarded, pg_database, app="idle-test")
    agent_pid = await _agent_pid(client)
    key = uuid.uuid4().int & 0x7FFFFFFF
    await admin.execute("SELECT pg_advisory_lock($1)", key)
    _ok(await client.query("BEGIN"))
    _ok(await client.query(take))
    client.send(m.query(f"SELECT pg_advisory_xact_lock({key})"))  # waits for the admin
    await _waiting_for_lock(admin, agent_pid)
    writing = asyncio.ensure_future(writer.execute(write))
    await _waiting_for_lock(admin, writer.get_server_pid())
    await admin.execute("SELECT pg_advisory_unlock($1)", key)  # now idle in its transaction
    _ok(await client.until_ready())
    ending = await client.until_closed(timeout=30)
    fatal = [x.fields for x in ending if isinstance(x, m.ErrorResponse)]
    assert [(f["S"], f["C"]) for f in fatal] == [("FATAL", "25P03")]
    assert "idle-in-transaction timeout" in fatal[0]["M"]
    await writing  # not a LockNotAvailableError: freed long before its lock_timeout
    await _gone(admin, agent_pid)
    # rolled back: none of the agent's changes stayed
    assert await admin.fetchval(f"SELECT count(*) FROM {table} WHERE v = 'agent'") == 0
    # both sides closed; session_ended says why; the log says so
    assert await asyncio.to_thread(endings.event.wait, 10)
    assert endings.ended == [("25P03", fatal[0]["M"])]
    assert any("the server ended it: 25P03" in r.getMessage() for r in caplog.records)


async def test_a_busy_agent_transaction_is_ended_at_the_transaction_timeout(
    guarded: RunningProxy,
    pg_database: str,
    table: str,
    writer: asyncpg.Connection,
    admin: asyncpg.Connection,
    endings: Endings,
) -> None:
    client = await _agent(guarded, pg_database, app="txn-test")
    agent_pid = await _agent_pid(client)
    _ok(await client.query("BEGIN"))
    _ok(await client.query(f"UPDATE {table} SET v = 'agent' WHERE id = 1"))
    # never idle: one long statement inside the transaction (below statement_timeout)
    client.send(m.query("SELECT pg_sleep(x) FROM (VALUES (25)) v(x)"))
    await writer.execute(f"UPDATE {table} SET v = 'writer' WHERE id = 1")
    ending = await client.until_closed(timeout=30)
    fatal = [x.fields for x in ending if isinstance(x, m.ErrorResponse)]
    assert [(f["S"], f["C"]) for f in fatal] == [("FATAL", "25P04")]
    await _gone(admin, agent_pid)
    assert await admin.fetchval(f"SELECT v FROM {table} WHERE id = 1") == "writer"
    assert await asyncio.to_thread(endings.event.wait, 10)
    assert endings.ended == [("25P04", fatal[0]["M"])]


@pytest.mark.parametrize("hold", sorted(HOLDS))
async def test_a_client_that_vanishes_holding_locks_frees_them(
    guarded: RunningProxy,
    pg_database: str,
    table: str,
    writer: asyncpg.Connection,
    admin: asyncpg.Connection,
    endings: Endings,
    hold: str,
) -> None:
    """Idle in its transaction (the idle ceiling is an hour): only the disconnect can
    free the writer before its own lock_timeout."""
    take, write = (s.format(t=table) for s in HOLDS[hold])
    client = await _agent(guarded, pg_database)
    agent_pid = await _agent_pid(client)
    _ok(await client.query("BEGIN"))
    _ok(await client.query(take))
    writing = asyncio.ensure_future(writer.execute(write))
    await _waiting_for_lock(admin, writer.get_server_pid())
    assert await admin.fetchval("SELECT count(*) FROM pg_locks WHERE pid = $1", agent_pid)
    client.abort()  # no Terminate: the client is simply gone
    await _locks_released(admin, agent_pid, time.monotonic())
    await writing
    await _gone(admin, agent_pid)
    assert await admin.fetchval(f"SELECT count(*) FROM {table} WHERE v = 'agent'") == 0
    assert await asyncio.to_thread(endings.event.wait, 10)
    assert endings.ended == [("", "")]  # the client's doing, not the server's


async def test_a_client_that_vanishes_mid_statement_frees_its_locks(
    guarded: RunningProxy,
    pg_database: str,
    table: str,
    writer: asyncpg.Connection,
    admin: asyncpg.Connection,
) -> None:
    """The backend reads nothing while it runs a statement, so closing the socket is
    not enough: dbgate cancels the statement, and the backend then reads the
    Terminate (or the closed socket) and rolls back."""
    client = await _agent(guarded, pg_database)
    agent_pid = await _agent_pid(client)
    _ok(await client.query("BEGIN"))
    _ok(await client.query(f"UPDATE {table} SET v = 'agent' WHERE id = 1"))
    client.send(m.query("SELECT pg_sleep(x) FROM (VALUES (25)) v(x)"))  # 25s > 20s: see below
    await _running(admin, agent_pid, "pg_sleep")
    writing = asyncio.ensure_future(writer.execute(f"UPDATE {table} SET v = 'writer' WHERE id = 1"))
    await _waiting_for_lock(admin, writer.get_server_pid())
    client.abort()
    await _locks_released(admin, agent_pid, time.monotonic())
    await writing  # before its 20s lock_timeout, so before the agent's sleep could end
    await _gone(admin, agent_pid)
    assert await admin.fetchval(f"SELECT v FROM {table} WHERE id = 1") == "writer"


# -- the server's version ----------------------------------------------------------------
class _WithExtra:
    """The rules' session setup plus one setting the server does not know."""

    def __init__(self, inner: StartupGuards, extra: Mapping[str, str]) -> None:
        self.inner = inner
        self.extra = dict(extra)

    def upstream_settings(self, arrival: Arrival) -> dict[str, str]:
        return {**self.inner.upstream_settings(arrival), **self.extra}

    def startup_setting(self, arrival: Arrival, name: str, value: str) -> tuple[str, str | None]:
        return self.inner.startup_setting(arrival, name, value)


async def test_a_setting_the_servers_version_lacks_is_left_out(
    make_proxy: Any, rules: RuleSet, pg_database: str, pg_dsn: str
) -> None:
    """As ``transaction_timeout`` on a server before 17: the first session learns the
    version (one refused try, then without it); later ones leave it out at once."""
    extra = {"dbgate_test_future_timeout": "1000"}  # unknown to every server
    proxy: RunningProxy = make_proxy(
        inspector=Gate(rules), session_setup=_WithExtra(StartupGuards(rules), extra)
    )
    dsn = proxy.dsn(pg_database)
    # Not marked as version-dependent: the server's own refusal reaches the client.
    with pytest.raises(asyncpg.UndefinedObjectError, match="dbgate_test_future_timeout"):
        await asyncpg.connect(dsn)
    proxy.server.upstream_settings.since["dbgate_test_future_timeout"] = 99
    direct = await asyncpg.connect(pg_dsn)
    try:
        major = int(await direct.fetchval("SHOW server_version_num")) // 10000
    finally:
        await direct.close()
    for _ in range(2):
        conn = await asyncpg.connect(dsn)
        try:
            assert await _show(conn) == CEILINGS
        finally:
            await conn.close()
        assert proxy.server.upstream_settings.major == major
