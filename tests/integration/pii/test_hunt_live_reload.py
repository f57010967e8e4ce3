"""What changes under a live session — a reload of the PII catalog, keys and settings
(SIGHUP's ``reload_app``), or a schema snapshot read again — through the real gate,
every byte the client receives compared with the raw values read straight from the
server.

A value the catalog marks as PII when it leaves must be tokenized, whatever was
decided about its statement before: a notification or an error that arrives after a
reload, rows of a portal or cursor opened before it, a load of the schema that was
under way when it happened.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest

from dbgate.policy.rules import default_rules_dir
from dbgate.reload import reload_app
from tests.conftest import _admin_execute
from tests.integration.clients.conftest import DemoRole
from tests.integration.conftest import RunningProxy

SETUP = [
    "drop table if exists live_memos",
    "create table live_memos (id int primary key, body text)",
    "insert into live_memos select id, email || ' ' || phone from customers where id <= 6",
    "create or replace view live_memo_ids as select id from live_memos",
    # one table per test that marks its column: a mark the running room found stays
    "drop table if exists live_rows",
    "create table live_rows as select * from live_memos",
    "drop table if exists live_flight",
    "create table live_flight as select * from live_memos",
    "drop table if exists live_cursor",
    "create table live_cursor as select * from live_memos",
    "drop table if exists live_commented",
    "create table live_commented as select * from live_memos",
    "drop table if exists live_prepared",
    "create table live_prepared as select * from live_memos",
    "drop table if exists live_watch",
    "create table live_watch (id int primary key, body text)",
    "insert into live_watch select * from live_memos",
    "drop table if exists live_lean",
    "create table live_lean (id int primary key, body text)",
    "insert into live_lean select * from live_memos",
    "drop table if exists live_lean_bound",
    "create table live_lean_bound (id int primary key, body text)",
    "insert into live_lean_bound select * from live_memos",
]


@pytest.fixture(scope="module")
def memos(pg_server: Any, demo_db: str, demo_role: DemoRole) -> Iterator[list[str]]:
    """``live_memos.body``: customers' e-mails and phones in a column no catalog entry,
    comment or name default marks — until a reload says so. Its raw values."""
    _admin_execute(
        pg_server,
        *SETUP,
        f"grant select on live_memos, live_rows, live_flight, live_cursor, live_commented, live_prepared, live_watch, live_lean, live_lean_bound to {demo_role.name}",
        dbname=demo_db,
    )
    with psycopg.connect(pg_server.dsn(demo_db)) as direct:
        raw = [str(r[0]) for r in direct.execute("select body from live_memos order by id")]
    try:
        yield raw
    finally:
        _admin_execute(
            pg_server,
            "drop table live_memos cascade",
            "drop table live_rows, live_flight, live_cursor, live_commented, live_prepared",
            "drop table live_watch, live_lean, live_lean_bound",
            dbname=demo_db,
        )


@pytest.fixture(scope="module")
def hunt_proxy(memos: list[str], hunt_proxy: RunningProxy) -> RunningProxy:
    """The PII conftest's gate, started once ``live_memos`` exists."""
    return hunt_proxy


def _app(proxy: RunningProxy) -> Any:
    """What ``reload_app`` reloads: the running proxy's gate, PII gate and sessions."""
    gate = proxy.server.inspector
    return SimpleNamespace(
        gate=gate,
        pii=gate.pii,  # type: ignore[attr-defined]
        proxy=proxy.server,
        approvals=None,
        audit=None,
        config=gate.pii.config,  # type: ignore[attr-defined]
    )


def _catalog(tmp_path: Path, extra: str) -> Path:
    """The shipped catalog with ``extra`` lines added under ``columns:``."""
    text = (default_rules_dir() / "pii.yaml").read_text()
    head, sep, tail = text.partition("\ncolumns:\n")
    assert sep, "the shipped catalog has a columns section"
    path = tmp_path / "pii.yaml"
    path.write_text(head + sep + extra + tail)
    return path


def _reload(proxy: RunningProxy, **pii: Any) -> Any:
    """SIGHUP's reload with ``pii`` settings changed; returns the config in force before."""
    app = _app(proxy)
    before = app.config
    after = before.model_copy(update={"pii": before.pii.model_copy(update=pii)})
    result = proxy.call(reload_app(app, after))
    assert result.ok, result
    return before


def _restore(proxy: RunningProxy, config: Any) -> None:
    app = _app(proxy)
    result = proxy.call(reload_app(app, config))
    assert result.ok, result


def _leaks(got: Any, raw: list[str]) -> list[str]:
    text = repr(got)
    found = []
    for value in raw:
        for piece in value.split(" "):
            if piece and piece in text:
                found.append(piece)
    return found


def test_a_notification_after_a_reload_is_filtered(
    dsn: str, pg_server: Any, demo_db: str, memos: list[str], hunt_proxy: RunningProxy
) -> None:
    """A reload drops each session's PII state so that its next statement takes the
    new room; a notification (or an error, a notice) that arrives before that next
    statement found no filter and went out as the server sent it."""
    payload = memos[0]
    with psycopg.connect(dsn, autocommit=True) as agent:
        agent.execute("listen live_reload")
        _admin_execute(pg_server, f"notify live_reload, '{payload}'", dbname=demo_db)
        before = [n.payload for n in agent.notifies(timeout=10, stop_after=1)]
        assert before and not _leaks(before, memos), before
        config = _reload(hunt_proxy)  # nothing changed but the reload itself
        try:
            _admin_execute(pg_server, f"notify live_reload, '{payload}'", dbname=demo_db)
            after = [n.payload for n in agent.notifies(timeout=10, stop_after=1)]
        finally:
            _restore(hunt_proxy, config)
    assert after and not _leaks(after, memos), after


def test_a_schema_load_under_way_does_not_undo_a_reload(
    dsn: str,
    pg_server: Any,
    demo_db: str,
    memos: list[str],
    hunt_proxy: RunningProxy,
    tmp_path: Path,
) -> None:
    """A load of the schema (after DDL, or the 30 s one) builds on the room it started
    with and stores it when done: a reload that replaced the room meanwhile — a column
    marked in the catalog, an exemption taken away, a key rotated — was undone, and
    the column came back raw until the next reload. A view locked by another session
    (``pg_get_viewdef`` waits for it, up to 3 s) held the load open for as long."""
    pii = hunt_proxy.server.inspector.pii  # type: ignore[attr-defined]
    with psycopg.connect(dsn, autocommit=True) as agent:
        assert not _leaks(agent.execute("select 1").fetchall(), memos)
        with psycopg.connect(pg_server.dsn(demo_db)) as locker:
            locker.execute("lock table live_memo_ids in access exclusive mode")

            async def load() -> None:
                pii.loads.refresh_soon(demo_db)

            hunt_proxy.call(load())
            with psycopg.connect(pg_server.dsn(demo_db), autocommit=True) as watch:
                for _ in range(200):
                    waiting = watch.execute(
                        "select count(*) from pg_stat_activity where wait_event_type = 'Lock'"
                        " and query like '%pg_get_viewdef%'"
                    ).fetchone()
                    if waiting and waiting[0]:
                        break
                    watch.execute("select pg_sleep(0.01)")
                else:
                    pytest.fail("the schema load never waited for the view")
            config = _reload(
                hunt_proxy, catalog=_catalog(tmp_path, "  public.live_memos.body: pii\n")
            )
            locker.rollback()
        try:

            async def loaded() -> None:
                await pii.loads.ensure(demo_db)
                task = pii.loads._loading.get(demo_db)
                if task is not None:
                    await task

            hunt_proxy.call(loaded())
            read = "select id, body from live_memos where id <= 6 order by id"
            got = agent.execute(read).fetchall()
            with psycopg.connect(dsn, autocommit=True) as later:  # a session opened since
                got += later.execute(read).fetchall()
        finally:
            _restore(hunt_proxy, config)
    assert got and not _leaks(got, memos), got


READ = "select id, body from live_rows where id <= 6 order by id"


async def test_rows_left_after_a_reload_marked_their_column(
    dsn: str, memos: list[str], hunt_proxy: RunningProxy, tmp_path: Path
) -> None:
    """A reload marks ``live_rows.body`` as PII while a session has a portal suspended
    by a row-limited Execute (asyncpg's cursor), an SQL cursor open and a statement
    prepared: every row that leaves after it is tokenized. The portal went on under
    the verdict of its Bind, which had no plan (the column was clean), and its
    remaining rows came back raw."""
    import asyncpg

    agent = await asyncpg.connect(dsn)
    config = None
    try:
        prepared = await agent.prepare(READ)
        assert _leaks(await prepared.fetch(), memos)  # clean before the reload
        tx = agent.transaction()
        await tx.start()
        portal = await agent.cursor(READ)
        first = await portal.fetch(2)
        assert _leaks(first, memos)
        await agent.execute(f"declare sqlc cursor for {READ}")
        assert _leaks(await agent.fetch("fetch 1 from sqlc"), memos)
        config = _reload(hunt_proxy, catalog=_catalog(tmp_path, "  public.live_rows.body: pii\n"))
        got = [
            await portal.fetch(2),
            await agent.fetch("fetch 2 from sqlc"),
            await prepared.fetch(),
        ]
        await tx.rollback()
    finally:
        await agent.close()
        if config is not None:
            _restore(hunt_proxy, config)
    assert all(got), got
    assert not _leaks(got, memos), got


@pytest.mark.parametrize("table", ["live_flight", "live_lean", "live_lean_bound"])
def test_rows_of_a_statement_in_flight_across_a_reload(
    dsn: str,
    pg_server: Any,
    demo_db: str,
    memos: list[str],
    hunt_proxy: RunningProxy,
    tmp_path: Path,
    table: str,
) -> None:
    """A statement judged before a reload that marks its column, whose rows arrive
    after it (it waited for a lock): its rows are tokenized, as after a change of the
    schema. It ran under its old verdict, which had no plan, and returned them raw.
    ``live_lean``'s primary key proves the read narrow: no row limit either, and the
    relay did not look at its answer at all."""
    import threading

    read = f"select id, body from {table} where id in (1, 2, 3, 4, 5, %s) order by id"
    # through Parse/Bind/Execute (a parameter), or a simple Query (none)
    params = (6,) if table.endswith("_bound") else None
    if params is None:
        read = read.replace("%s", "6")
    got: list[Any] = []
    with psycopg.connect(dsn, autocommit=True) as agent:
        assert _leaks(agent.execute(read, params).fetchall(), memos)  # clean before
        with psycopg.connect(pg_server.dsn(demo_db)) as locker:
            locker.execute(f"lock table {table} in access exclusive mode")
            reader = threading.Thread(
                target=lambda: got.extend(agent.execute(read, params).fetchall())
            )
            reader.start()
            with psycopg.connect(pg_server.dsn(demo_db), autocommit=True) as watch:
                for _ in range(500):
                    waiting = watch.execute(
                        "select count(*) from pg_stat_activity where wait_event_type = 'Lock'"
                        " and query like %s",
                        (f"%{table}%",),
                    ).fetchone()
                    if waiting and waiting[0]:
                        break
                    watch.execute("select pg_sleep(0.01)")
                else:
                    pytest.fail("the read never waited for the lock")
            config = _reload(
                hunt_proxy, catalog=_catalog(tmp_path, f"  public.{table}.body: pii\n")
            )
            locker.rollback()
            reader.join(30)
        _restore(hunt_proxy, config)
    assert got and not _leaks(got, memos), got


def test_a_cursor_fetched_after_its_column_was_commented_pii(
    dsn: str, pg_server: Any, demo_db: str, memos: list[str], hunt_proxy: RunningProxy
) -> None:
    """A cursor declared over an expression of a clean column, then the column marked
    by a ``pii:`` comment (a DBA's, on the server) and the schema read again: what the
    next FETCH returns is PII. The cursor kept what its query was traced to return on
    the old snapshot, and ``lower(body)`` came back raw."""
    pii = hunt_proxy.server.inspector.pii  # type: ignore[attr-defined]
    read = "select id, lower(body) from live_cursor where id <= 6 order by id"
    with psycopg.connect(dsn) as agent:
        agent.execute(f"declare c cursor with hold for {read}")
        agent.commit()
        assert _leaks(agent.execute("fetch 1 from c").fetchall(), [m.lower() for m in memos])
        _admin_execute(
            pg_server, "comment on column live_cursor.body is 'pii:email'", dbname=demo_db
        )

        async def reread() -> None:
            import time

            await pii.loads.reload_since(demo_db, time.monotonic())

        hunt_proxy.call(reread())
        got = agent.execute("fetch 2 from c").fetchall()
        agent.execute("close c")
    assert got and not _leaks(got, [m.lower() for m in memos]), got


async def test_an_exemption_taken_away_with_a_portal_open(
    dsn: str, pg_server: Any, demo_db: str, hunt_proxy: RunningProxy
) -> None:
    """A session exempt when it bound a portal (asyncpg's cursor, row-limited
    Executes), whose exemption a reload takes away: the portal's next rows are
    tokenized, and so is what a statement prepared while exempt returns."""
    import asyncpg

    with psycopg.connect(pg_server.dsn(demo_db)) as direct:
        raw = [str(r[0]) for r in direct.execute("select email from customers where id <= 6")]
    read = "select id, email from customers where id <= 6 order by id"
    config = _reload(hunt_proxy, exempt_identities=["agent"])
    agent = await asyncpg.connect(dsn)
    try:
        prepared = await agent.prepare(read)
        assert _leaks(await prepared.fetch(), raw)  # exempt: the values themselves
        tx = agent.transaction()
        await tx.start()
        portal = await agent.cursor(read)
        assert _leaks(await portal.fetch(2), raw)
        _restore(hunt_proxy, config)
        got = [await portal.fetch(2), await prepared.fetch()]
        await tx.rollback()
    finally:
        await agent.close()
        _restore(hunt_proxy, config)
    assert all(got) and not _leaks(got, raw), got


async def test_a_portal_resumed_after_its_column_was_commented_pii(
    dsn: str, pg_server: Any, demo_db: str, memos: list[str], hunt_proxy: RunningProxy
) -> None:
    """A portal suspended by a row-limited Execute, then its column marked by a
    ``pii:`` comment a DBA added on the server, and the schema read again (the 30 s
    load, or one after DDL): its next rows are tokenized. They came back raw under the
    verdict of its Bind, taken when the column was clean."""
    import time

    import asyncpg

    pii = hunt_proxy.server.inspector.pii  # type: ignore[attr-defined]
    read = "select id, body from live_commented where id <= 6 order by id"
    agent = await asyncpg.connect(dsn)
    try:
        tx = agent.transaction()
        await tx.start()
        portal = await agent.cursor(read)
        assert _leaks(await portal.fetch(2), memos)  # clean before
        _admin_execute(
            pg_server, "comment on column live_commented.body is 'pii:email'", dbname=demo_db
        )

        async def reread() -> None:
            await pii.loads.reload_since(demo_db, time.monotonic())

        hunt_proxy.call(reread())
        got = await portal.fetch(2)
        await tx.rollback()
    finally:
        await agent.close()
    assert got and not _leaks(got, memos), got


def test_a_key_rotated_under_a_live_session(
    dsn: str, pg_server: Any, demo_db: str, hunt_proxy: RunningProxy, tmp_path: Path
) -> None:
    """Reversible tokens, keys rotated by reloads while one session runs: a token of
    the old key still finds its row in the grace period and is refused (22023) after
    ``retire_after``; the same value gets the new key's token from the rotation on; a
    reload naming a key file that is gone fails, says why, and the running key goes on
    issuing the same tokens."""
    from dbgate.pii.keys import generate_key

    old_secret, new_secret = generate_key()[0], generate_key()[0]
    with psycopg.connect(pg_server.dsn(demo_db)) as direct:
        row = direct.execute("select email from customers where id = 1").fetchone()
    assert row is not None
    email = str(row[0])
    read = "select email from customers where id = 1"
    config = _reload(hunt_proxy, mode="reversible", keys=[{"id": "k1", "secret": old_secret}])
    try:
        with psycopg.connect(dsn, autocommit=True) as agent:
            cur = psycopg.ClientCursor(agent)
            old = str(cur.execute(read).fetchone()[0])  # type: ignore[index]
            assert old.startswith("tok_email_r"), old
            lookup = f"select id from customers where email = '{old}'"
            _reload(
                hunt_proxy,
                mode="reversible",
                keys=[
                    {"id": "k2", "secret": new_secret},
                    {"id": "k1", "secret": old_secret, "retire_after": "2999-01-01T00:00:00Z"},
                ],
            )
            assert cur.execute(lookup).fetchall() == [(1,)]  # in the grace period
            new = str(cur.execute(read).fetchone()[0])  # type: ignore[index]
            assert new.startswith("tok_email_r") and new != old
            _reload(
                hunt_proxy,
                mode="reversible",
                keys=[
                    {"id": "k2", "secret": new_secret},
                    {"id": "k1", "secret": old_secret, "retire_after": "2000-01-01T00:00:00Z"},
                ],
            )
            with pytest.raises(psycopg.errors.InvalidParameterValue):
                cur.execute(lookup)
            app = _app(hunt_proxy)
            gone = app.config.model_copy(
                update={
                    "pii": app.config.pii.model_copy(
                        update={"keys": [{"id": "k3", "secret_file": str(tmp_path / "gone")}]}
                    )
                }
            )
            result = hunt_proxy.call(reload_app(app, gone))
            assert not result.ok and "cannot read" in result.error, result
            assert str(cur.execute(read).fetchone()[0]) == new  # type: ignore[index]
            seen = repr(
                cur.execute(f"select email from customers where email = '{new}'").fetchall()
            )
            assert email not in seen, seen
    finally:
        _restore(hunt_proxy, config)


def test_an_sql_prepared_statement_executed_after_a_reload(
    dsn: str, memos: list[str], hunt_proxy: RunningProxy, tmp_path: Path
) -> None:
    """``PREPARE`` while ``live_prepared.body`` is clean, a reload that marks it,
    ``EXECUTE`` after: tokenized (the session's new PII state does not know the
    name, so what it returns is unknown)."""
    read = "select id, body, lower(body) from live_prepared where id <= 6 order by id"
    with psycopg.connect(dsn, autocommit=True) as agent:
        agent.execute(f"prepare sqlp as {read}")
        assert _leaks(agent.execute("execute sqlp").fetchall(), memos)
        config = _reload(
            hunt_proxy, catalog=_catalog(tmp_path, "  public.live_prepared.body: pii\n")
        )
        try:
            got = agent.execute("execute sqlp").fetchall()
        finally:
            _restore(hunt_proxy, config)
    assert got and not _leaks(got, memos + [m.lower() for m in memos]), got


async def test_a_portal_of_a_session_that_never_needed_watching(
    dsn: str, memos: list[str], hunt_proxy: RunningProxy, tmp_path: Path
) -> None:
    """A session whose statements so far had no result plan and no row limit (a read
    its primary key proves narrow): the relay did not follow its portals at all, so
    a portal bound before a reload that marks its column, resumed after it, returned
    the column raw. It is refused now (it has no description to tokenize its rows
    by), and a portal bound again after the reload is tokenized (the unit test of the
    tracker, ``test_a_portal_resumed_after_the_schema_epoch_moved``, takes both ways)."""
    import asyncpg

    read = "select id, body from live_watch where id in (1, 2, 3, 4) order by id"
    agent = await asyncpg.connect(dsn)
    config = None
    try:
        tx = agent.transaction()
        await tx.start()
        portal = await agent.cursor(read)
        assert _leaks(await portal.fetch(2), memos)  # clean before
        config = _reload(hunt_proxy, catalog=_catalog(tmp_path, "  public.live_watch.body: pii\n"))
        # refused when the relay did not follow the portal, tokenized when it did (a
        # row limit or a plan of the session's earlier reads): never the values
        try:
            resumed: Any = await portal.fetch(2)
        except asyncpg.InsufficientPrivilegeError as e:
            assert "bound before" in str(e), e
            resumed = []
        assert not _leaks(resumed, memos), resumed
        await tx.rollback()
        async with agent.transaction():
            got = await (await agent.cursor(read)).fetch(4)
    finally:
        await agent.close()
        if config is not None:
            _restore(hunt_proxy, config)
    assert got and not _leaks(got, memos), got
