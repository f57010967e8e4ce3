"""Where the raw value of a token the agent sent back lives on, on the server: dbgate
writes it into the text it forwards, and ``current_query()`` is that text — the whole
Query message, every statement of it. Code of the database's own that a statement
runs keeps it where a clean column reads it back: an audit trigger's ``INSERT INTO log
VALUES (current_query())`` (a write beside ``SELECT … WHERE email = 'tok_…'`` in one
Query, or one a foreign key cascades to), a view column's ``DEFAULT current_query()``
(stored in its base table's column), a domain's ``DEFAULT current_query()``. Through
the real gate and the demo dataset, every byte compared with the raw value read
straight from the server.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from dbgate.pii.tokens import TokenError
from tests.conftest import _admin_execute
from tests.integration.clients.conftest import DemoRole, start_pii_proxy
from tests.integration.conftest import RunningProxy
from tests.integration.pii.harness import make_room

SETUP = [
    "drop table if exists hunt_log, hunt_audited, hunt_plain, hunt_dd, hunt_kids,"
    " hunt_parents, hunt_rls cascade",
    "drop view if exists hunt_fv cascade",
    "drop domain if exists hunt_qd cascade",
    "create table hunt_log (id serial, q text)",
    "create table hunt_audited (id int, note text, email text)",
    "create or replace function hunt_log_fn() returns trigger language plpgsql as"
    " $$ begin insert into hunt_log(q) values (current_query()); return null; end $$",
    "create trigger hunt_t after insert or update or delete on hunt_audited"
    " for each row execute function hunt_log_fn()",
    # a view column's default is stored in the base table's (clean) column
    "create table hunt_plain (id int, note text)",
    "create view hunt_v as select id, note from hunt_plain",
    "alter view hunt_v alter column note set default current_query()",
    # a domain's default is a column's when it has none of its own
    "create domain hunt_qd as text default current_query()",
    "create domain hunt_qd2 as hunt_qd",  # no default of its own: hunt_qd's
    "create table hunt_dd (id int, q hunt_qd, q2 hunt_qd2)",
    # a delete of a parent cascades to audited children
    "create table hunt_parents (id int primary key)",
    "create table hunt_kids (id int, parent int references hunt_parents on delete cascade)",
    "create trigger hunt_k after delete on hunt_kids for each row execute function hunt_log_fn()",
    "insert into hunt_parents values (7)",
    "insert into hunt_kids values (1, 7)",
    # code a read runs: a view's definition, row-level security policies
    "create or replace function hunt_note() returns int language plpgsql volatile as"
    " $$ begin insert into hunt_log(q) values (current_query()); return 1; end $$",
    "create view hunt_fv as select id, email, hunt_note() as n from customers",
    "create view hunt_fv2 as select id, email from hunt_fv",
    "create table hunt_rls (id int, email text)",
    "insert into hunt_rls select id, email from customers where id < 5",
    "alter table hunt_rls enable row level security",
    "create policy hunt_p on hunt_rls using (hunt_note() = 1)",
]


@pytest.fixture(scope="module")
def objects(pg_server: Any, demo_db: str, demo_role: DemoRole) -> Iterator[None]:
    _admin_execute(
        pg_server,
        *SETUP,
        "grant select, insert, update, delete on hunt_log, hunt_audited, hunt_plain, hunt_v,"
        f" hunt_dd, hunt_parents, hunt_kids, hunt_fv, hunt_fv2, hunt_rls to {demo_role.name}",
        f"grant usage on sequence hunt_log_id_seq to {demo_role.name}",
        dbname=demo_db,
    )
    try:
        yield
    finally:
        _admin_execute(pg_server, *SETUP[:3], dbname=demo_db)


@pytest.fixture(scope="module")
def hunt_proxy(pg_server: Any, demo_role: DemoRole, objects: None) -> Iterator[RunningProxy]:
    running = start_pii_proxy(pg_server, demo_role)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def dsn(hunt_proxy: RunningProxy, demo_db: str) -> str:
    return hunt_proxy.dsn(demo_db)


@pytest.fixture(scope="module")
def email(pg_server: Any, demo_db: str) -> str:
    with psycopg.connect(pg_server.dsn(demo_db)) as direct:
        row = direct.execute("select email from customers where id = 1").fetchone()
    assert row is not None
    return str(row[0])


def _run(conn: Any, sql: str, params: Any = None) -> str:
    """What the agent gets back from ``sql``: every result set, or the error."""
    try:
        cur = conn.execute(sql, params)
        out = []
        while True:
            if cur.description is not None:
                out.append(repr(cur.fetchall()))
            if not cur.nextset():
                break
        return "ok " + " | ".join(out)
    except psycopg.Error as e:
        return f"{e.diag.sqlstate}: {e}"


def _stored(pg_server: Any, demo_db: str, sql: str) -> str:
    with psycopg.connect(pg_server.dsn(demo_db)) as direct:
        return repr(direct.execute(sql).fetchall())


def _token(conn: Any) -> str:
    return str(conn.execute("select email from customers where id = 1").fetchone()[0])


def test_an_audit_trigger_keeps_the_text_a_token_was_resolved_into(
    dsn: str,
    pg_server: Any,
    demo_db: str,
    email: str,
) -> None:
    """``current_query()`` in a trigger is the whole Query: a write to an audited
    table beside a lookup by token stored the raw e-mail in the log, whose clean
    column the agent read back."""
    with psycopg.connect(dsn, autocommit=True) as agent:
        token = _token(agent)
        got = [
            _run(
                agent,
                f"select id from customers where email = '{token}';"
                " insert into hunt_audited values (1, 'x')",
            ),
            # a token written into a PII column of the audited table itself
            _run(agent, f"insert into hunt_audited values (2, 'y', '{token}')"),
            _run(
                agent,
                f"select id from customers where email = '{token}';"
                " update hunt_audited set note = 'z' where id = 0",
            ),
            _run(agent, "select id, q from hunt_log where id < 100"),
        ]
        # a Bind value is not in the text (``$1`` is): it is still resolved
        bound = _run(agent, "insert into hunt_audited values (3, 'w', %s)", (token,))
        logged = _run(agent, "select id, q from hunt_log where id < 100")
    text = "\n".join(got)
    assert email not in text, text
    assert text.count("22023") == 3, text
    assert "send the value as a Bind parameter" in text, text
    assert bound == "ok ", bound
    assert "$1" in logged, logged
    stored = _stored(pg_server, demo_db, "select q from hunt_log")
    assert email not in stored, stored
    assert email in _stored(pg_server, demo_db, "select email from hunt_audited where id = 3")


async def test_a_cascade_to_an_audited_table_keeps_the_text(
    pg_server: Any,
    demo_db: str,
    objects: None,
) -> None:
    """A DELETE of a table with no trigger of its own cascades, by a foreign key, to
    one whose trigger logs ``current_query()`` (the rules hold such a DELETE for its
    uncounted changes; once approved, the token would be resolved into its text). A
    plain INSERT cascades nowhere."""
    room = make_room()
    await room.refresh_dsn(pg_server.dsn(demo_db))
    session = room.session("agent")
    token = room.tokenizer.token("email", b"someone@example.com")
    plan = session.plan(
        f"select id from customers where email = '{token}'; delete from hunt_parents where id = 7"
    )
    assert any("hunt_kids" in why for why in plan.analysis.hidden_code), plan.analysis
    with pytest.raises(TokenError, match="hunt_kids"):
        session.detokenize_sql(plan)
    plan = session.plan(
        f"select id from customers where email = '{token}'; insert into hunt_parents values (8)"
    )
    assert not plan.analysis.hidden_code, plan.analysis.hidden_code


def test_code_a_read_runs_keeps_the_text(
    dsn: str,
    pg_server: Any,
    demo_db: str,
    email: str,
) -> None:
    """A view whose definition calls a function of the database's own runs it on
    every read (the rules see a view, not the function), and so do row-level security
    policies that call one: ``current_query()`` there is the text with the value."""
    with psycopg.connect(dsn, autocommit=True) as agent:
        token = _token(agent)
        got = [
            _run(agent, f"select id from hunt_fv where email = '{token}'"),
            _run(agent, f"select id from hunt_fv2 where email = '{token}'"),
            _run(agent, f"select id from hunt_rls where email = '{token}'"),
        ]
        bound = _run(agent, "select id from hunt_fv where email = %s", (token,))
        logged = _run(agent, "select id, q from hunt_log where id < 100")
    text = "\n".join(got)
    assert text.count("22023") == 3, text
    assert "hunt_note()" in text and "policies of public.hunt_rls" in text, text
    assert bound == "ok [(1,)]", bound
    assert email not in logged, logged
    assert email not in _stored(pg_server, demo_db, "select q from hunt_log")


def test_a_view_columns_default_is_stored_in_its_base_table(
    dsn: str,
    pg_server: Any,
    demo_db: str,
    email: str,
) -> None:
    """``ALTER VIEW hunt_v ALTER note SET DEFAULT current_query()``: an INSERT through
    the view stores the text in ``hunt_plain.note``, a clean column."""
    with psycopg.connect(dsn, autocommit=True) as agent:
        token = _token(agent)
        got = _run(
            agent,
            f"select id from customers where email = '{token}'; insert into hunt_v (id) values (1)",
        )
        read = _run(agent, "select id, note from hunt_plain where id = 1")
    assert got.startswith("22023"), got
    assert email not in read, read
    assert email not in _stored(pg_server, demo_db, "select note from hunt_plain")


def test_a_domains_default_of_the_query_text_is_read_as_unknown(
    dsn: str,
    pg_server: Any,
    demo_db: str,
    email: str,
) -> None:
    """``CREATE DOMAIN hunt_qd AS text DEFAULT current_query()``: a column of it with
    no default of its own keeps every writing statement's text, as ``q text DEFAULT
    current_query()`` does."""
    with psycopg.connect(dsn, autocommit=True) as agent:
        token = _token(agent)
        wrote = _run(
            agent,
            f"select id from customers where email = '{token}';"
            " insert into hunt_dd (id) values (1)",
        )
        read = _run(agent, "select id, q, q2 from hunt_dd where id = 1")
    assert wrote == "ok [(1,)]", wrote
    assert email in _stored(pg_server, demo_db, "select q from hunt_dd")  # the server kept it
    assert email not in read, read
    assert read.count("tok_unknown_") == 2, read


def test_monitoring_and_explain_stay_usable(dsn: str) -> None:
    """An agent watching its sessions reads their pids, states and waits as they are
    (the texts tokenized), and a plain EXPLAIN of its own query as it is."""
    with psycopg.connect(dsn, autocommit=True) as agent:
        rows = agent.execute(
            "select pid, state, wait_event_type, query from pg_stat_activity"
            " where datname = current_database() and pid = pg_backend_pid()"
        ).fetchall()
        plan = agent.execute("explain select id from orders where status = 'paid'").fetchall()
    assert rows and isinstance(rows[0][0], int) and rows[0][1] == "active", rows
    assert str(rows[0][3]).startswith("tok_"), rows
    assert any("Seq Scan on orders" in r[0] or "Index" in r[0] for r in plan), plan


def test_the_servers_log_lines_are_withheld(
    dsn: str,
    pg_server: Any,
    demo_db: str,
    demo_role: DemoRole,
) -> None:
    """With ``log_min_duration_statement = 0`` on the server (an operator's setting,
    for pgBadger), an agent that lowers ``client_min_messages`` to ``log`` gets each
    log line too. A line comes after the message it is about has completed, when in a
    pipeline the next one is running: ``duration: … execute <unnamed>: … Parameters:
    $1 = 'Matthew Smith'`` of a Bind whose token was resolved went out under the
    next, clean statement's verdict."""
    _admin_execute(
        pg_server, f"alter role {demo_role.name} set log_min_duration_statement = 0", dbname=demo_db
    )
    with psycopg.connect(pg_server.dsn(demo_db)) as direct:
        row = direct.execute("select full_name from customers where id = 1").fetchone()
    assert row is not None
    name = str(row[0])
    notices: list[str] = []
    try:
        with psycopg.connect(dsn, autocommit=True) as agent:
            agent.add_notice_handler(
                lambda n: notices.append(f"{n.severity}: {n.message_primary} {n.message_detail}")
            )
            token = agent.execute("select full_name from customers where id = 1").fetchone()[0]  # type: ignore[index]
            agent.execute("set client_min_messages = log")
            with agent.pipeline():
                agent.execute("select id from customers where full_name = %s", (token,))
                agent.execute("select 1 where %s::int = 1", (1,))
                agent.execute("select 2")
            with agent.pipeline():
                agent.execute(f"select id from customers where full_name = '{token}'", prepare=True)
                agent.execute("select 4", prepare=True)
            assert agent.execute("select 5").fetchone() == (5,)
    finally:
        _admin_execute(
            pg_server,
            f"alter role {demo_role.name} reset log_min_duration_statement",
            dbname=demo_db,
        )
    text = "\n".join(notices)
    assert "LOG" in text, text  # the lines came, withheld
    assert name not in text, text
