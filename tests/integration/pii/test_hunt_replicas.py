"""Two dbgate replicas (whole Apps) sharing one state database and one PII key: what
one replica lets through must not make the other return PII raw.

Replica A is the holds harness's App (approvals, PII tokenization); replica B is a
second App on the same state database under another replica id. DDL held on A is
approved through A's API, as an approver would; the agent then reads through B.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.integration.holds.clients import AsyncpgNotices
from tests.integration.holds.harness import (
    HoldsEnv,
    RunningApp,
    admin_execute,
    admin_query,
    app_config,
    start_env,
)

READ = "SELECT label FROM board ORDER BY id LIMIT 3"
EMAILS = [f"person{i}@example.org" for i in range(1, 4)]
#: A table of e-mails (PII by name) and a clean one that a view may be redefined over.
PEOPLE_AND_LABELS = (
    "CREATE TABLE people (id int PRIMARY KEY, email text NOT NULL)",
    "INSERT INTO people VALUES " + ", ".join(f"({i}, '{e}')" for i, e in enumerate(EMAILS, 1)),
    "CREATE TABLE labels (id int PRIMARY KEY, label text NOT NULL)",
    "INSERT INTO labels VALUES (1, 'red'), (2, 'green'), (3, 'blue')",
)


@pytest.fixture(scope="module")
def replica_a(pg_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HoldsEnv]:
    env_iter = start_env(pg_server, "hunt_replicas", tmp_path_factory.mktemp("hunt_replicas"))
    env = next(env_iter)
    admin_execute(env.admin_dsn, *PEOPLE_AND_LABELS)
    try:
        yield env
    finally:
        next(env_iter, None)


@pytest.fixture(scope="module")
def replica_b(replica_a: HoldsEnv) -> Iterator[RunningApp]:
    config = app_config(
        replica_a.pg_server,
        replica_a.pg_server.dsn(replica_a.state_db),
        replica_a.app.config.rules_dir,
        replica="hunt_replicas-b",
    )
    b = RunningApp(config).start()
    try:
        yield b
    finally:
        b.stop()


async def _approved(
    env: HoldsEnv, sql: str, dsn: str | None = None, extended: bool = False
) -> None:
    """``sql`` sent by the agent through replica A (or ``dsn``) as a simple Query (or
    Parse, Bind, Execute: held at its Bind), held, approved through A's API, run."""
    conn = await asyncpg.connect(dsn or env.dsn)
    try:
        notices = AsyncpgNotices(conn)
        running = asyncio.create_task(conn.fetch(sql) if extended else conn.execute(sql))
        await env.app.aapprove(await notices.held(), "housekeeping")
        await running
    finally:
        await conn.close()


def _raw(values: list[Any]) -> list[str]:
    return [v for v in values if isinstance(v, str) and v in EMAILS]


@pytest.mark.parametrize("extended", [False, True], ids=["query", "extended"])
async def test_a_view_redefined_through_one_replica_is_not_read_raw_through_the_other(
    replica_a: HoldsEnv, replica_b: RunningApp, extended: bool
) -> None:
    """B's snapshot knew ``board.label`` as a clean column; A let an approved
    ``CREATE OR REPLACE VIEW`` make it read ``people.email``. B returned the e-mails
    raw until its own snapshot was 30 s old and read again."""
    view = "board_extended" if extended else "board"  # one view each: B's snapshot keeps it
    read = READ.replace("board", view)
    admin_execute(replica_a.admin_dsn, f"CREATE VIEW {view} AS SELECT id, label FROM labels")
    try:
        b = await asyncpg.connect(replica_b.dsn(replica_a.data_db))
        try:
            before = [r["label"] for r in await b.fetch(read)]
            assert before == ["red", "green", "blue"]  # B's snapshot now holds board
            await _approved(
                replica_a,
                f"CREATE OR REPLACE VIEW {view} AS SELECT id, email AS label FROM people",
                extended=extended,
            )
            assert admin_query(replica_a.admin_dsn, f"SELECT label FROM {view} ORDER BY id") == [
                (e,) for e in EMAILS
            ]
            after = [r["label"] for r in await b.fetch(read)]
            assert _raw(after) == [], after
            assert len(after) == 3
        finally:
            await b.close()
    finally:
        admin_execute(replica_a.admin_dsn, f"DROP VIEW IF EXISTS {view}")


async def _two_statements(conn: psycopg.AsyncConnection[Any], read: str, pipelined: bool) -> Any:
    """``UPDATE labels … WHERE id = 1`` then ``read``: in one simple Query, or as two
    extended-protocol statements in one pipeline; the rows of ``read``."""
    first = "UPDATE labels SET label = label WHERE id = 1"
    if not pipelined:
        cur = await conn.execute(f"{first}; {read}")
        assert cur.nextset()
        return await cur.fetchall()
    async with conn.pipeline():
        await conn.execute(first)
        cur = await conn.execute(read)
    return await cur.fetchall()


@pytest.mark.parametrize("reader", ["same replica", "other replica", "pipelined"])
async def test_a_statement_judged_before_a_view_was_redefined_and_run_after_it(
    replica_a: HoldsEnv, replica_b: RunningApp, reader: str
) -> None:
    """A simple Query is judged when it arrives, and its statements run one after the
    other: the second one of ``UPDATE …; SELECT label FROM board`` read the view as
    the server knew it when the first was done — after an approved ``CREATE OR
    REPLACE VIEW`` another session ran meanwhile — under the plan made from the old
    definition, and returned the e-mails raw. A statement pipelined behind a slow one
    (extended protocol) did the same."""
    view = "pipelined_" + reader.split()[0]
    read = READ.replace("board", view)
    admin_execute(replica_a.admin_dsn, f"CREATE VIEW {view} AS SELECT id, label FROM labels")
    dsn = replica_b.dsn(replica_a.data_db) if reader == "other replica" else replica_a.dsn
    blocker = await asyncpg.connect(replica_a.admin_dsn)
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    try:
        assert len(await (await conn.execute(read)).fetchall()) == 3  # the snapshot knows it
        await blocker.execute("BEGIN")
        await blocker.execute("SELECT 1 FROM labels WHERE id = 1 FOR UPDATE")
        # the first statement waits for the row; the second is judged already
        reading = asyncio.create_task(_two_statements(conn, read, reader == "pipelined"))
        while not await blocker.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND datname = current_database()"
        ):
            assert not reading.done(), reading.result()
            await asyncio.sleep(0.01)  # polls the server's own state
        await _approved(
            replica_a, f"CREATE OR REPLACE VIEW {view} AS SELECT id, email AS label FROM people"
        )
        await blocker.execute("COMMIT")
        after = [r[0] for r in await reading]
        assert _raw(after) == [], after
        assert len(after) == 3
    finally:
        await conn.close()
        await blocker.close()
        admin_execute(replica_a.admin_dsn, f"DROP VIEW IF EXISTS {view}")


def _replica(env: HoldsEnv, name: str, **pii: Any) -> RunningApp:
    return RunningApp(
        app_config(
            env.pg_server,
            env.pg_server.dsn(env.state_db),
            env.app.config.rules_dir,
            replica=f"hunt_replicas-{name}",
            pii=pii,
        )
    ).start()


async def _token_of(dsn: str, cid: int) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        token = await conn.fetchval("SELECT email FROM people WHERE id = $1", cid)
    finally:
        await conn.close()
    assert isinstance(token, str) and token.startswith("tok_email_"), token
    return token


async def _lookup(dsn: str, token: str) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(f"SELECT id FROM people WHERE email = '{token}'")
    finally:
        await conn.close()


@pytest.mark.parametrize("mode", ["hashed", "reversible"])
async def test_a_token_of_another_replica_resolves_only_under_the_same_key(
    replica_a: HoldsEnv, mode: str
) -> None:
    """Replicas with one key give one value one token; a token another key issued
    (a misconfigured replica) is refused with 22023, never matched as a literal that
    finds nothing, and never resolved into another value."""
    other_key = "base64:" + base64.b64encode(os.urandom(32)).decode()
    same = _replica(replica_a, f"{mode}-same", mode=mode)
    same_too = _replica(replica_a, f"{mode}-same-too", mode=mode)
    other = _replica(replica_a, f"{mode}-other", mode=mode, keys=[{"id": "x", "secret": other_key}])
    try:
        db = replica_a.data_db
        token = await _token_of(same.dsn(db), 2)
        assert await _token_of(same_too.dsn(db), 2) == token  # one key, one token
        assert await _lookup(same.dsn(db), token) == 2
        assert await _token_of(other.dsn(db), 2) != token
        with pytest.raises(asyncpg.PostgresError) as info:
            await _lookup(other.dsn(db), token)
        assert info.value.sqlstate == "22023"
    finally:
        for app in (same, same_too, other):
            app.stop()


SENTINEL_DB = "hunt_replicas_sentinel"


async def _heard_so_far(b: RunningApp, admin_dsn: str) -> None:
    """Returns once B heard every announcement committed before now: a notification
    of the admin's, committed after them, arrives after them."""
    peers = b.app.peers
    assert peers is not None
    loop = asyncio.get_running_loop()
    heard = loop.create_future()
    own = peers.heard

    def hear(payload: str) -> None:
        if SENTINEL_DB in payload:
            loop.call_soon_threadsafe(lambda: heard.done() or heard.set_result(None))
            return
        own(payload)

    peers.heard = hear  # type: ignore[method-assign]
    try:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(
                "SELECT pg_notify($1, $2)",
                "dbgate_schema",
                json.dumps({"r": "sentinel", "db": SENTINEL_DB, "open": False}),
            )
        finally:
            await conn.close()
        await heard
    finally:
        del peers.heard


async def _settled(a: RunningApp, b: RunningApp, state_dsn: str) -> None:
    """Returns once what A announced of earlier DDL was sent, heard by B, and B read
    its snapshots again after it."""
    assert a.app.peers is not None and b.app.peers is not None
    peers_a, peers_b = a.app.peers, b.app.peers

    async def sent() -> None:
        await asyncio.gather(*peers_a._sends)

    async def read_again() -> None:
        for loads in peers_b.loads:
            await asyncio.gather(*loads._settling)

    await a.acall(sent())
    await _heard_so_far(b, state_dsn)
    await b.acall(read_again())


async def _b_in_flux(b: RunningApp, db: str) -> bool:
    async def in_flux() -> bool:
        assert b.app.pii is not None
        return b.app.pii.loads.in_flux(db)

    return bool(await b.acall(in_flux()))


async def test_ddl_prepared_and_never_bound_leaves_the_other_replica_settled(
    replica_a: HoldsEnv, replica_b: RunningApp
) -> None:
    """A DDL statement was announced at its Parse: a client that prepared one and never
    sent its Bind (nothing ran) kept every other replica tokenizing the database whole
    for 30 s."""
    state_dsn = replica_a.pg_server.dsn(replica_a.state_db)
    b = await asyncpg.connect(replica_b.dsn(replica_a.data_db))
    a = await asyncpg.connect(replica_a.dsn)
    try:
        await b.fetch("SELECT 1")  # B's snapshot of the database is loaded
        await _settled(replica_a.app, replica_b, state_dsn)
        assert not await _b_in_flux(replica_b, replica_a.data_db)
        await a.prepare("CREATE OR REPLACE VIEW never_bound AS SELECT id, email FROM people")
        await _heard_so_far(replica_b, state_dsn)
        assert not await _b_in_flux(replica_b, replica_a.data_db)
    finally:
        await a.close()
        await b.close()


async def test_ddl_bound_and_approved_puts_the_other_replica_in_flux_before_it_runs(
    replica_a: HoldsEnv, replica_b: RunningApp
) -> None:
    """Announced at its approved Bind, the DDL is heard of before the server runs it:
    here it waits for a lock while the other replica already tokenizes whole."""
    state_dsn = replica_a.pg_server.dsn(replica_a.state_db)
    db = replica_a.data_db
    admin_execute(replica_a.admin_dsn, "CREATE VIEW bound_later AS SELECT id, label FROM labels")
    blocker = await asyncpg.connect(replica_a.admin_dsn)
    conn = await asyncpg.connect(replica_a.dsn)
    try:
        b = await asyncpg.connect(replica_b.dsn(db))
        try:
            await b.fetch(READ.replace("board", "bound_later"))  # B's snapshot knows the view
        finally:
            await b.close()
        await _settled(replica_a.app, replica_b, state_dsn)
        notices = AsyncpgNotices(conn)
        statement = await conn.prepare(
            "CREATE OR REPLACE VIEW bound_later AS SELECT id, email AS label FROM people"
        )
        await _heard_so_far(replica_b, state_dsn)
        assert not await _b_in_flux(replica_b, db)
        await blocker.execute("BEGIN")
        await blocker.execute("LOCK TABLE people IN ACCESS EXCLUSIVE MODE")
        running = asyncio.create_task(statement.fetch())
        await replica_a.app.aapprove(await notices.held(), "housekeeping")
        while not await blocker.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND datname = current_database()"
        ):
            assert not running.done(), running.result()
            await asyncio.sleep(0.01)  # polls the server's own state
        await _heard_so_far(replica_b, state_dsn)
        assert await _b_in_flux(replica_b, db)  # the DDL has not run yet
        await blocker.execute("COMMIT")
        await running
    finally:
        await conn.close()
        await blocker.close()
        admin_execute(replica_a.admin_dsn, "DROP VIEW IF EXISTS bound_later")


ALLOW_DDL = """version: 1
rules:
  - name: allow-ddl
    match:
      categories: [ddl]
    action: allow
"""


async def test_ddl_the_rules_allow_is_announced_at_its_bind_not_its_parse(
    replica_a: HoldsEnv, tmp_path: Path
) -> None:
    """Two replicas whose rules allow DDL: a Parse of it, never bound, put neither the
    replica it went through nor the other in flux; its Bind, once sent, puts the other
    in flux before the server runs it."""
    rules_dir = replica_a.app.config.rules_dir
    assert rules_dir is not None
    rules = tmp_path / "rules"
    shutil.copytree(rules_dir, rules)
    (rules / "00-allow-ddl.yaml").write_text(ALLOW_DDL)
    state_dsn = replica_a.pg_server.dsn(replica_a.state_db)
    db = replica_a.data_db

    def replica(name: str) -> RunningApp:
        config = app_config(
            replica_a.pg_server, state_dsn, rules, replica=f"hunt_replicas-allow-{name}"
        )
        return RunningApp(config).start()

    admin_execute(replica_a.admin_dsn, "CREATE VIEW allowed_later AS SELECT id, label FROM labels")
    sender, hearer = replica("sender"), replica("hearer")
    blocker = await asyncpg.connect(replica_a.admin_dsn)
    try:
        conn = await asyncpg.connect(sender.dsn(db))
        b = await asyncpg.connect(hearer.dsn(db))
        try:
            await b.fetch(READ.replace("board", "allowed_later"))  # its snapshot knows the view
            await conn.fetch("SELECT 1")
            await _settled(sender, hearer, state_dsn)
            statement = await conn.prepare(
                "CREATE OR REPLACE VIEW allowed_later AS SELECT id, email AS label FROM people"
            )
            await _heard_so_far(hearer, state_dsn)
            assert not await _b_in_flux(hearer, db)
            assert not await _b_in_flux(sender, db)
            await blocker.execute("BEGIN")
            await blocker.execute("LOCK TABLE people IN ACCESS EXCLUSIVE MODE")
            running = asyncio.create_task(statement.fetch())
            while not await blocker.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()"
            ):
                assert not running.done(), running.result()
                await asyncio.sleep(0.01)  # polls the server's own state
            await _heard_so_far(hearer, state_dsn)
            assert await _b_in_flux(hearer, db)  # the DDL has not run yet
            await blocker.execute("COMMIT")
            await running
            after = [r["label"] for r in await b.fetch(READ.replace("board", "allowed_later"))]
            assert _raw(after) == [], after
            # Parse, Bind and Execute in one batch (libpq): announced at the Bind too
            await _settled(sender, hearer, state_dsn)
            assert not await _b_in_flux(hearer, db)
            async with await psycopg.AsyncConnection.connect(sender.dsn(db)) as pq:
                async with pq.pipeline():  # the extended protocol, one batch
                    await pq.execute(
                        "CREATE OR REPLACE VIEW allowed_later AS SELECT id, label FROM labels"
                    )
                await _heard_so_far(hearer, state_dsn)
                assert await _b_in_flux(hearer, db)  # its transaction is still open
                await pq.rollback()
        finally:
            await conn.close()
            await b.close()
    finally:
        await blocker.close()
        sender.stop()
        hearer.stop()
        admin_execute(replica_a.admin_dsn, "DROP VIEW IF EXISTS allowed_later")
