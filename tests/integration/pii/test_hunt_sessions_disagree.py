"""Decisions dbgate takes once and reuses, where another session (or the same one,
after a change) reads the same text as something else: through the real gate and the
demo dataset, every byte compared with the raw values read straight from the server.

An unqualified name resolves by the session's own ``search_path``, which the agent
sets (``SET search_path``, ``set_config``, a startup option): where two schemas hold a
relation of that name, dbgate's snapshot must take what every one of them holds, by
name and by position, since a whole-row value, a column alias list or a set
operation reads the columns by position, not by name.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from dbgate.gate import schema_loads
from tests.conftest import _admin_execute
from tests.integration.clients.conftest import DemoRole
from tests.integration.conftest import RunningProxy

#: ``public.twin`` is clean; ``crm.twin`` holds e-mails (by its column's name) at
#: the same position
SETUP = [
    "drop schema if exists crm cascade",
    "create schema crm",
    "drop table if exists public.twin",
    "create table public.twin (id int, label text)",
    "insert into public.twin values (1, 'first'), (2, 'second')",
    "create table crm.twin (id int, email text)",
    "insert into crm.twin select id, email from public.customers where id < 4",
]


@pytest.fixture(scope="module")
def twins(pg_server: Any, demo_db: str, demo_role: DemoRole) -> Iterator[None]:
    _admin_execute(
        pg_server,
        *SETUP,
        f"grant usage on schema crm to {demo_role.name}",
        f"grant select on crm.twin, public.twin to {demo_role.name}",
        dbname=demo_db,
    )
    try:
        yield
    finally:
        _admin_execute(
            pg_server, "drop schema crm cascade", "drop table public.twin", dbname=demo_db
        )


@pytest.fixture(scope="module")
def hunt_proxy(twins: None, hunt_proxy: RunningProxy) -> RunningProxy:
    """The PII conftest's gate, started once both twins exist (its snapshot holds them)."""
    return hunt_proxy


@pytest.fixture(scope="module")
def emails(admin_dsn: str, twins: None) -> list[str]:
    with psycopg.connect(admin_dsn) as conn:
        rows = conn.execute("select email from crm.twin order by id").fetchall()
    return [str(r[0]) for r in rows]


def _received(dsn: str, statements: list[str]) -> str:
    """Everything one session got back, as text."""
    got: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for sql in statements:
            try:
                cur = conn.execute(sql)
                if cur.description is not None:
                    got.extend(repr(r) for r in cur.fetchall())
            except psycopg.Error as e:
                got.append(f"error {e.diag.sqlstate}: {e}")
    return "\n".join(got)


POSITIONAL = {
    "whole row": "select to_jsonb(t) from twin t where id < 10",
    "row as text": "select t::text from twin t where id < 10",
    "alias list": "select lower(b) from twin as t(a, b) where a < 10",
    "sub-select alias list": "select upper(s.b) from (select * from twin where id < 10) s(a, b)",
    "set operation": "select * from twin where id < 10 union all select * from twin where id < 10",
    "whole row of a sub-select": "select row_to_json(s) from (select * from twin where id < 10) s",
}


@pytest.mark.parametrize("name", list(POSITIONAL))
@pytest.mark.parametrize("how", ["set", "set_config"])
def test_a_relation_the_session_search_path_picks_is_read_as_it_is(
    dsn: str, emails: list[str], name: str, how: str
) -> None:
    """Session A reads ``twin`` as ``public.twin`` (the plan and the verdict are
    remembered); session B sets ``search_path`` so that the same text reads
    ``crm.twin``: the e-mails came back raw through the whole-row value, the alias list
    and the set operation, whose positions dbgate took from ``public.twin`` alone. (A's
    reads are tokenized too now: the text does not say which relation it reads.)"""
    sql = POSITIONAL[name]
    _received(dsn, [sql, sql])
    if how == "set":
        got = _received(dsn, ["set search_path = crm, public", sql])
    else:
        got = _received(dsn, ["select set_config('search_path', 'crm, public', false)", sql])
    assert "tok_" in got, got
    for email in emails:
        assert email not in got and email.lower() not in got and email.upper() not in got


def test_reads_of_the_clean_twin_stay_as_they_are(dsn: str) -> None:
    """Outputs that are ``public.twin``'s columns as stored come back byte for byte."""
    got = _received(
        dsn,
        [
            "select id, label from twin where id < 10 order by id",
            "select * from twin where id < 10 order by id",
            "select lower(label) from twin where id < 10 order by id",
        ],
    )
    assert got == "\n".join(["(1, 'first')", "(2, 'second')"] * 2 + ["('first',)", "('second',)"])


#: a clean view an agent's driver prepares a read of; redefined outside dbgate (a
#: migration) to show e-mails under the same name
BOARD = "create or replace view {0} as select id, title as label from things"
BOARD_PII = "create or replace view {0} as select id, email::text as label from customers"
#: one view per test: the gate meets each name for the first time
BOARDS = iter(range(1_000_000))


@pytest.fixture
def board(pg_server: Any, demo_db: str, demo_role: DemoRole) -> Iterator[str]:
    view = f"board_{next(BOARDS)}"
    _admin_execute(
        pg_server,
        "create table if not exists things (id bigint, title text)",
        "truncate things",
        "insert into things select g, 'thing ' || g from generate_series(1, 9) g",
        BOARD.format(view),
        f"grant select on things, {view} to {demo_role.name}",
        dbname=demo_db,
    )
    try:
        yield view
    finally:
        _admin_execute(pg_server, f"drop view {view}", dbname=demo_db)


def _reloaded(dsn: str, sql: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wait until the gate has read the schema again (another session's fresh read of
    ``sql`` comes back tokenized)."""
    monkeypatch.setattr(schema_loads, "MAX_AGE_SECONDS", 0.0)
    deadline = time.monotonic() + 10
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as other:
        while "tok_" not in repr(other.execute(sql).fetchall()):
            assert time.monotonic() < deadline, "the schema was not read again"
            time.sleep(0.1)
    monkeypatch.setattr(schema_loads, "MAX_AGE_SECONDS", 30.0)


READS = {
    "column": "select id, label from {0} where id < 4 order by id",
    "expression": "select id, lower(label) from {0} where id < 4 order by id",
}


@pytest.mark.parametrize("name", list(READS))
@pytest.mark.parametrize("how", ["protocol", "sql"])
def test_a_statement_prepared_before_a_view_shows_pii_is_read_as_it_is_now(
    dsn: str,
    pg_server: Any,
    demo_db: str,
    board: str,
    name: str,
    how: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A named statement (a driver's statement cache, ``PREPARE``) parsed while the
    view's ``label`` was clean: the server re-plans it when the view is redefined, and
    its executions return what the new definition reads. Its Parse carried no PII plan,
    so dbgate let every later execution through untouched, after the schema reload too."""
    sql = READS[name].format(board)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql, prepare=False)  # the gate learns the view's name
        if how == "protocol":

            def run() -> list[Any]:
                return conn.execute(sql, prepare=True).fetchall()
        else:
            conn.execute(f"prepare board_read as {sql}")

            def run() -> list[Any]:
                return conn.execute("execute board_read").fetchall()

        before = run()
        assert [r[1].lower() for r in before] == [f"thing {i}" for i in (1, 2, 3)]
        _admin_execute(pg_server, BOARD_PII.format(board), dbname=demo_db)
        _reloaded(dsn, sql, monkeypatch)
        after = repr(run())
    with psycopg.connect(pg_server.dsn(demo_db)) as direct:
        raw = [str(r[0]) for r in direct.execute("select email from customers where id < 4")]
    assert "tok_" in after, after
    for email in raw:
        assert email not in after and email.lower() not in after


#: an operator's rule standing for an approver who lets the agent redefine its views
APPROVED_DDL = """\
version: 1
rules:
  - name: tests-approved-view-ddl
    match:
      identities: [agent]
      categories: [ddl]
    action: allow
"""


@pytest.fixture(scope="module")
def ddl_proxy(
    pg_server: Any,
    demo_role: DemoRole,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningProxy]:
    from dbgate.app import build_gate
    from dbgate.gate.observers import combine
    from dbgate.gate.pii import PiiGate
    from dbgate.gate.schema_loads import SchemaWatch
    from tests.integration.clients.conftest import pii_config
    from tests.integration.conftest import pack_with

    rules = pack_with(tmp_path_factory.mktemp("ddl-rules"), APPROVED_DDL)
    config = pii_config(pg_server, demo_role)
    config = config.model_copy(update={"rules_dir": str(rules)})
    pii = PiiGate(config)
    pii.check()
    running = RunningProxy(
        config,
        inspector=build_gate(config, None, pii),
        # as ``dbgate serve`` has it: the schema is read again after DDL
        observer=combine([SchemaWatch([pii.loads]), pii.held_cursors]),
        message_filter=pii.filter,
    ).start()
    yield running
    running.stop()


@pytest.fixture
def own_board(
    pg_server: Any,
    demo_db: str,
    demo_role: DemoRole,
    board: str,
) -> str:
    _admin_execute(
        pg_server,
        f"alter view {board} owner to {demo_role.name}",
        f"grant create on schema public to {demo_role.name}",
        dbname=demo_db,
    )
    return board


@pytest.mark.parametrize("end", ["rollback", "commit"])
def test_a_view_redefined_in_the_open_transaction_is_not_read_by_its_old_definition(
    ddl_proxy: RunningProxy,
    pg_server: Any,
    demo_db: str,
    own_board: str,
    end: str,
) -> None:
    """The snapshot is read again once the transaction that changed the schema is
    over (another connection cannot see it before): a read after an allowed ``CREATE
    OR REPLACE VIEW`` in the same transaction was judged by the view's old definition,
    ``label`` clean, and returned the e-mails raw — then rolled back, leaving nothing."""
    view = own_board
    reads = [
        f"select id, label from {view} where id < 4 order by id",
        f"select id, lower(label) from {view} where id < 4 order by id",
        f"select to_jsonb(b) from {view} b where id < 4",
    ]
    got: list[str] = []
    dsn = ddl_proxy.dsn(demo_db)
    with psycopg.connect(dsn) as conn, psycopg.connect(dsn, autocommit=True) as other:
        deadline = time.monotonic() + 10  # the gate knows the view, the last test's DDL read
        while "thing 1" not in repr(rows := other.execute(reads[0]).fetchall()):
            assert time.monotonic() < deadline, rows
            time.sleep(0.1)
        conn.execute(BOARD_PII.format(view))
        for sql in reads:
            got.append(repr(conn.execute(sql).fetchall()))
        getattr(conn, end)()
        for sql in reads:  # after the transaction, before and after the reload
            got.append(repr(conn.execute(sql).fetchall()))
            conn.commit()
        # one text that changes the view and reads it
        cur = conn.execute(f"{BOARD_PII.format(view)}; {reads[0]}")
        assert cur.nextset()
        got.append(repr(cur.fetchall()))
        conn.rollback()
        if end == "rollback":
            # once the snapshot is read again, the clean view comes back as it is
            deadline = time.monotonic() + 10
            while "thing 1" not in repr(rows := other.execute(reads[0]).fetchall()):
                got.append(repr(rows))
                assert time.monotonic() < deadline, rows
                time.sleep(0.1)
    with psycopg.connect(pg_server.dsn(demo_db)) as direct:
        raw = [str(r[0]) for r in direct.execute("select email from customers where id < 4")]
    text = "\n".join(got)
    for email in raw:
        assert email not in text and email.lower() not in text, text


def test_a_cursor_declared_while_the_schema_changes_is_not_read_by_the_old_snapshot(
    ddl_proxy: RunningProxy,
    pg_server: Any,
    demo_db: str,
    own_board: str,
) -> None:
    """A cursor ``WITH HOLD`` declared after the view was redefined, in the same
    transaction, keeps the rows of the new definition past the COMMIT; the session's
    record of what it returns was traced on the old snapshot, so once the snapshot had
    been read again a FETCH returned ``lower(label)``, the e-mails, raw."""
    view = own_board
    dsn = ddl_proxy.dsn(demo_db)
    read = f"select id, label from {view} where id < 4 order by id"
    with psycopg.connect(dsn) as conn, psycopg.connect(dsn, autocommit=True) as other:
        deadline = time.monotonic() + 10  # the gate knows the view, the last test's DDL read
        while "thing 1" not in repr(rows := other.execute(read).fetchall()):
            assert time.monotonic() < deadline, rows
            time.sleep(0.1)
        conn.execute(BOARD_PII.format(view))
        conn.execute(
            f"declare c cursor with hold for select id, lower(label) from {view}"
            " where id < 4 order by id"
        )
        conn.commit()
        deadline = time.monotonic() + 10
        while (rows := other.execute(read).fetchall())[0][0] != 1:  # read again: ids clean
            assert time.monotonic() < deadline, rows
            time.sleep(0.1)
        fetched = repr(conn.execute("fetch all from c").fetchall())
        conn.execute("close c")
        conn.commit()
    with psycopg.connect(pg_server.dsn(demo_db)) as direct:
        raw = [str(r[0]) for r in direct.execute("select email from customers where id < 4")]
    assert "tok_" in fetched, fetched
    for email in raw:
        assert email.lower() not in fetched, fetched


def test_a_table_explain_analyze_creates_is_a_copy_like_create_table_as(
    ddl_proxy: RunningProxy,
    pg_server: Any,
    demo_db: str,
    own_board: str,
) -> None:
    """``EXPLAIN ANALYZE`` runs what it explains: a ``CREATE TABLE … AS`` under it made
    the table, whose ``note`` (an e-mail under a clean name) was read back raw once the
    snapshot knew it. Held as the bare statement is (no approval service here)."""
    dsn = ddl_proxy.dsn(demo_db)
    clean = f"select id, label from {own_board} where id < 4 order by id"
    got: list[str] = []
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for sql in (
                "explain analyze create table hunt_explained as"
                " select id, email as note from customers where id < 4",
                "explain (analyze, costs off) select id, email as note into hunt_explained"
                " from customers where id < 4",
            ):
                try:
                    got.append(repr(conn.execute(sql).fetchall()))
                except psycopg.Error as e:
                    got.append(f"{e.diag.sqlstate}: {e}")
            deadline = time.monotonic() + 10  # the snapshot read again after the DDL
            while "thing 1" not in repr(rows := conn.execute(clean).fetchall()):
                assert time.monotonic() < deadline, rows
                time.sleep(0.1)
            try:
                got.append(repr(conn.execute("select note from hunt_explained limit 5").fetchall()))
            except psycopg.Error as e:
                got.append(f"{e.diag.sqlstate}: {e}")
    finally:
        _admin_execute(pg_server, "drop table if exists hunt_explained", dbname=demo_db)
    with psycopg.connect(pg_server.dsn(demo_db)) as direct:
        raw = [str(r[0]) for r in direct.execute("select email from customers where id < 4")]
    text = "\n".join(got)
    assert "copies PII into a new table" in text, text
    for email in raw:
        assert email not in text, text


def test_explain_analyze_execute_writes_its_arguments_as_execute_does(
    dsn: str,
    pg_server: Any,
    demo_db: str,
    demo_role: DemoRole,
) -> None:
    """Another session's last query text holds the values dbgate resolved from its
    tokens; ``EXECUTE w(pg_stat_get_backend_activity(n))`` of a statement that writes
    its parameter into a plain column is held as a copy, but under ``EXPLAIN ANALYZE``,
    which runs it, it was not, and the text was read back raw."""
    _admin_execute(
        pg_server,
        "drop table if exists hunt_texts",
        "create table hunt_texts (id int, body text)",
        f"grant select, insert on hunt_texts to {demo_role.name}",
        dbname=demo_db,
    )
    with psycopg.connect(pg_server.dsn(demo_db)) as direct:
        email = str(direct.execute("select email from customers where id = 1").fetchone()[0])  # type: ignore[index]
    got: list[str] = []
    try:
        with (
            psycopg.connect(dsn, autocommit=True) as first,
            psycopg.connect(dsn, autocommit=True) as second,
        ):
            token = first.execute("select email from customers where id = 1").fetchone()[0]  # type: ignore[index]
            first.execute(f"select id from customers where email = '{token}'").fetchall()
            second.execute("prepare w(int, text) as insert into hunt_texts values ($1, $2)")
            for k in range(1, 11):
                try:
                    second.execute(
                        f"explain analyze execute w({k}, pg_stat_get_backend_activity({k}))"
                    )
                except psycopg.Error as e:
                    got.append(f"{e.diag.sqlstate}: {e}")
            got.append(repr(second.execute("select body from hunt_texts where id < 20").fetchall()))
    finally:
        _admin_execute(pg_server, "drop table hunt_texts", dbname=demo_db)
    text = "\n".join(got)
    assert email not in text, text
