"""Issue 7, "What was seen": each observation, reproduced as precisely as it was reported.

A test marked ``xfail(strict=True)`` reproduces a dbgate bug that is still there;
the mark names what is wrong, and must go when the fix lands (a strict xfail that
passes fails the run). The unmarked tests are the controls the issue cites ("the
same value sent as text is allowed", "GROUP BY is allowed") and must keep passing.
Scenarios of the same bugs in whole clients are in the other ``test_*_clients.py``
modules of this package (ORM ``.limit()``, pools, pipelines, psql, pg_dump, asyncpg).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

import psycopg
import pytest
from psycopg import errors

from dbgate.demo import build_config
from dbgate.demo_data import ensure_agent_role
from tests.conftest import ExternalPostgres, PgServer
from tests.integration.clients.conftest import enforcing_inspector
from tests.integration.clients.expect import (
    SYNTAX_ERROR,
    assert_names_reasons,
    assert_refused,
    seen,
)
from tests.integration.clients.tools import psql
from tests.integration.conftest import RunningProxy


def run(dsn: str, sql: str, params: Any = None) -> Any:
    """One statement on a fresh autocommit psycopg 3 connection: rows (or the command
    tag of a statement without rows), or the error."""
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        try:
            cur.execute(sql, params)
        except psycopg.Error as e:
            return e
        return cur.fetchall() if cur.description is not None else cur.statusmessage


def same_rows(sides: dict[str, str], sql: str, params: Any = None) -> list[Any]:
    direct, gate = (run(sides[s], sql, params) for s in ("direct", "gate"))
    assert not isinstance(direct, Exception), direct
    assert gate == direct, f"through dbgate: {gate!r}"
    return direct  # type: ignore[no-any-return]


# -- 1. binary bind parameters -----------------------------------------------------------

BOUND_READS = [
    # (SQL as psycopg 3 writes it, parameters): psycopg 3 sends ints in binary,
    # str in text, each with its own format code in the Bind.
    pytest.param(
        "SELECT customers.id FROM customers ORDER BY customers.id LIMIT %s::INTEGER",
        (5,),
        id="orm-limit",
    ),
    pytest.param("select id from orders order by id limit %s", (10,), id="limit"),
    pytest.param(
        "select id from orders order by id limit %s offset %s", (10, 20), id="limit-offset"
    ),
    pytest.param(
        "select id from orders order by id offset %s rows fetch first %s rows only",
        (20, 10),
        id="offset-fetch-first",
    ),
    pytest.param(
        "select id, %s::text as tag from orders order by id limit %s",
        ("mixed formats", 7),
        id="text-and-binary-formats",
    ),
]


@pytest.mark.parametrize(("sql", "params"), BOUND_READS)
def test_binary_limit_parameters_are_understood(
    sides: dict[str, str], sql: str, params: tuple[Any, ...]
) -> None:
    assert same_rows(sides, sql, params)


def test_the_same_limit_sent_as_text_is_allowed(sides: dict[str, str]) -> None:
    rows = same_rows(sides, "select id from customers order by id limit %s", ("5",))
    assert rows == [(i,) for i in range(1, 6)]


def test_a_large_binary_limit_is_held_by_the_dump_rule(sides: dict[str, str]) -> None:
    sql = "select email from customers order by id limit %s"
    error = run(sides["gate"], sql, (100_000,))
    assert isinstance(error, psycopg.Error), error
    assert_refused(error, "select email from customers order by id limit $1", (100_000,))


# -- 2. one refusal poisons a psycopg 3 connection ---------------------------------------

#: Held at Bind with the right rule today (0x1010: binary bytes that are valid UTF-8).
HELD_AT_BIND = ("select email from customers order by id limit %s", (4112,))
ORDINARY = [
    ("select %s::int", (1,)),
    ("select %s::int", (2,)),
    ("select id from orders where id = %s", (3,)),
    ("SELECT orders.id FROM orders WHERE orders.id = %s::BIGINT", (4,)),
    ("select %s::int", (5,)),
    ("select id from orders where id = %s", (6,)),
    ("SELECT orders.id FROM orders WHERE orders.id = %s::BIGINT", (7,)),
    ("select %s::int", (8,)),
]


def ordinary_after(conn: psycopg.Connection[Any]) -> list[Any]:
    out: list[Any] = []
    for sql, params in ORDINARY:
        try:
            out.append(conn.execute(sql, params).fetchone())
        except errors.InsufficientPrivilege as e:
            out.append(f"refused: {e.diag.message_hint}")
    return out


def test_one_refusal_does_not_poison_later_parameterised_statements(gate_dsn: str) -> None:
    with psycopg.connect(gate_dsn, autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(*HELD_AT_BIND)
        assert ordinary_after(conn) == [(i,) for i in range(1, 9)]


def test_an_allowed_set_config_does_not_poison_the_next_statement(gate_dsn: str) -> None:
    with psycopg.connect(gate_dsn, autocommit=True) as conn:
        assert conn.execute("select set_config(%s, %s, false)", ("work_mem", "8MB")).fetchall() == [
            ("8MB",)
        ]
        assert ordinary_after(conn) == [(i,) for i in range(1, 9)]


def test_a_refusal_at_parse_does_not_poison_the_connection(gate_dsn: str) -> None:
    """The control: a statement refused at Parse never reaches the tracking."""
    with psycopg.connect(gate_dsn, autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege) as info:
            conn.execute("select email from customers")
        assert_refused(info.value, "select email from customers")
        assert ordinary_after(conn) == [(i,) for i in range(1, 9)]


# -- 3. errors change class and say the wrong thing --------------------------------------

TYPO = "selec 1 frm"


def test_a_typo_is_a_syntax_error_with_its_position(sides: dict[str, str]) -> None:
    direct, gate = (run(sides[s], TYPO) for s in ("direct", "gate"))
    assert isinstance(direct, psycopg.Error) and isinstance(gate, psycopg.Error)
    want, got = seen(direct), seen(gate)
    assert (want.sqlstate, want.position) == (SYNTAX_ERROR, "1")
    assert (got.sqlstate, got.position) == (want.sqlstate, want.position), got
    assert want.message in got.message


def test_psql_draws_its_caret_under_a_typo(sides: dict[str, str]) -> None:
    direct, gate = (psql(sides[s], TYPO) for s in ("direct", "gate"))
    assert direct.returncode == 1 and "^" in direct.stderr
    assert (gate.returncode, gate.stderr) == (direct.returncode, direct.stderr)


#: Statements that stay refused once issue 7 is fixed, each with a reason of its own.
REFUSED = [
    pytest.param("select * from customers", None, id="whole-table"),
    pytest.param(
        "select attname, most_common_vals::text from pg_stats where tablename = 'customers'",
        None,
        id="catalog-column-samples",
    ),
    pytest.param("copy customers to stdout", None, id="copy-table"),
    pytest.param("delete from orders", None, id="delete-all"),
    pytest.param("grant select on customers to public", None, id="grant"),
    pytest.param("do $$ begin perform 1; end $$", None, id="do-block"),
    pytest.param("select pg_read_file('/etc/hostname')", None, id="server-file"),
    pytest.param(HELD_AT_BIND[0], HELD_AT_BIND[1], id="limit-at-bind"),
]


@pytest.mark.parametrize(("sql", "params"), REFUSED)
def test_refusals_have_their_class_and_rule(gate_dsn: str, sql: str, params: Any) -> None:
    error = run(gate_dsn, sql, params)
    assert isinstance(error, psycopg.Error), error
    assert_refused(error, sql.replace("%s", "$1"), params)


@pytest.mark.parametrize(("sql", "params"), REFUSED)
def test_refusals_name_this_statements_own_reasons(gate_dsn: str, sql: str, params: Any) -> None:
    error = run(gate_dsn, sql, params)
    assert isinstance(error, psycopg.Error), error
    assert_names_reasons(seen(error), sql.replace("%s", "$1"), params)


def test_the_operator_log_names_identity_rule_and_masked_statement(
    gate_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "999-12-3456"
    sql = f"update customers set ssn = '{secret}'"
    caplog.set_level(logging.INFO, logger="dbgate")
    error = run(gate_dsn, sql)
    assert isinstance(error, psycopg.Error)
    assert_refused(error, sql)
    lines = [r.getMessage() for r in caplog.records if "hold-destructive" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "agent" in lines[0]
    assert "update customers set ssn" in lines[0].lower(), lines[0]
    assert secret not in caplog.text


# -- 4. routine work refused -------------------------------------------------------------


def test_copy_of_a_bounded_query_to_stdout(sides: dict[str, str]) -> None:
    sql = "COPY (SELECT id, status FROM orders WHERE id < 10 ORDER BY id) TO STDOUT"
    out: dict[str, Any] = {}
    for side, dsn in sides.items():
        with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
            try:
                with cur.copy(sql) as copy:
                    out[side] = b"".join(bytes(b) for b in copy)
            except psycopg.Error as e:
                out[side] = e
    assert isinstance(out["direct"], bytes) and len(out["direct"].splitlines()) == 9
    assert out["gate"] == out["direct"]


def test_select_distinct_is_treated_like_group_by(sides: dict[str, str]) -> None:
    assert len(same_rows(sides, "SELECT DISTINCT status FROM orders ORDER BY status")) == 6


def test_group_by_is_allowed(sides: dict[str, str]) -> None:
    rows = same_rows(sides, "SELECT status, count(*) FROM orders GROUP BY status ORDER BY status")
    assert len(rows) == 6


#: What pg_dump --schema-only (PostgreSQL 18) sends that dbgate refuses today, in order.
PG_DUMP_START_UP = [
    pytest.param("SET row_security = off", id="row-security-off"),
    pytest.param(
        "SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings "
        "WHERE name = 'restrict_nonsystem_relation_kind'",
        id="set-config-from-pg-settings",
    ),
    pytest.param(
        "SELECT count(*) FROM pg_subscription WHERE subdbid = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())",
        id="count-subscriptions",
    ),
]


@pytest.mark.parametrize("sql", PG_DUMP_START_UP)
def test_pg_dump_start_up_statements_are_allowed(sides: dict[str, str], sql: str) -> None:
    for side in ("direct", "gate"):
        result = run(sides[side], sql)
        assert not isinstance(result, Exception), f"{side}: {result}"
    assert run(sides["gate"], sql) == run(sides["direct"], sql)


# -- 5. the agent runs upstream as a superuser -------------------------------------------


def test_the_demo_agent_is_not_a_superuser_upstream(pg_server: PgServer, demo_db: str) -> None:
    if isinstance(pg_server, ExternalPostgres) or demo_db != "demo":
        pytest.skip("the demo's configuration needs the embedded server's database 'demo'")
    password = secrets.token_urlsafe(12)
    upstream_password = secrets.token_urlsafe(12)
    asyncio.run(ensure_agent_role(pg_server.dsn(demo_db), upstream_password))
    config = build_config(pg_server, "127.0.0.1:0", password, upstream_password)  # type: ignore[arg-type]
    running = RunningProxy(config, inspector=enforcing_inspector(config)).start()
    try:
        with psycopg.connect(running.dsn("demo", "agent", password), autocommit=True) as conn:
            assert conn.execute("select count(*) > 0 from orders").fetchone() == (True,)
            role = conn.execute(
                "select current_user, rolsuper, rolbypassrls, rolcreaterole, "
                "current_setting('is_superuser') from pg_roles where rolname = current_user"
            ).fetchone()
    finally:
        running.stop()
    assert role is not None
    assert role[1:] == (False, False, False, "off"), f"the demo's agent runs as {role}"
