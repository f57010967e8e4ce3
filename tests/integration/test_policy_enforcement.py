"""The default rule pack enforced by the real proxy, seen from real drivers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import psycopg2
import pytest

from dbgate.app import build_gate
from dbgate.gate.prepared_effects import sql_prepare_changes
from dbgate.proxy.prepared import PreparedStatements
from tests.integration.conftest import proxy_config


@pytest.fixture
def table(pg_dsn: str) -> Iterator[str]:
    name = f"pol_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"create table {name} (id int primary key, v text)")
        conn.execute(f"insert into {name} select g, 'v' || g from generate_series(1, 50) g")
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"drop table if exists {name}")


@pytest.fixture
def enforcing(make_proxy: Any, pg_server: Any, pg_database: str) -> str:
    proxy = make_proxy(inspector=build_gate(proxy_config(pg_server)))
    return proxy.dsn(pg_database)


async def test_ordinary_reads_and_bounded_writes_pass(enforcing: str, table: str) -> None:
    conn = await asyncpg.connect(enforcing)
    try:
        assert await conn.fetchval(f"select count(*) from {table}") == 50
        assert await conn.fetchval(f"select v from {table} where id = $1", 7) == "v7"
        await conn.execute(f"update {table} set v = 'x' where id = $1", 3)
        assert await conn.fetchval(f"select v from {table} where id = 3") == "x"
    finally:
        await conn.close()


async def test_denied_admin_statement_fails_with_42501_and_says_why(
    enforcing: str, table: str
) -> None:
    conn = await asyncpg.connect(enforcing)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as info:
            await conn.execute(f"copy {table} to program 'cat > /tmp/leak'")
        assert "denied" in str(info.value)
        assert info.value.hint == "rule: deny-server-admin"
        assert await conn.fetchval("select 1") == 1  # session still usable
    finally:
        await conn.close()


async def test_held_statement_is_refused_without_an_approval_service(
    enforcing: str, table: str, pg_dsn: str
) -> None:
    conn = await asyncpg.connect(enforcing)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as info:
            await conn.execute(f"delete from {table}")
        assert "needs approval" in str(info.value)
    finally:
        await conn.close()
    direct = await asyncpg.connect(pg_dsn)
    try:
        assert await direct.fetchval(f"select count(*) from {table}") == 50  # nothing ran
    finally:
        await direct.close()


def test_refusal_inside_a_transaction_fails_it_on_both_sides(enforcing: str, table: str) -> None:
    with psycopg.connect(enforcing) as conn:
        conn.execute(f"insert into {table} values (1000, 'in-tx')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"truncate {table}")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("select 1")
        conn.rollback()
        assert conn.execute(f"select count(*) from {table} where id = 1000").fetchone() == (0,)


async def test_set_config_is_decided_at_bind_with_the_actual_values(enforcing: str) -> None:
    conn = await asyncpg.connect(enforcing)
    try:
        stmt = await conn.prepare("select set_config($1, $2, false)")
        assert await stmt.fetchval("work_mem", "8MB") == "8MB"
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await stmt.fetchval("role", "postgres")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await stmt.fetchval("standard_conforming_strings", "off")
        assert await conn.fetchval("show work_mem") == "8MB"
        assert await conn.fetchval("select current_user") != "x"  # still usable
    finally:
        await conn.close()


def test_sql_prepare_and_execute_are_classified_by_the_body(enforcing: str, table: str) -> None:
    conn = psycopg2.connect(enforcing)  # simple protocol: EXECUTE runs as it was checked
    conn.autocommit = True
    try:
        cur = conn.cursor()
        cur.execute(f"prepare one_row as select v from {table} where id = $1")
        cur.execute("execute one_row(5)")
        assert cur.fetchall() == [("v5",)]
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute(f"prepare wipe as delete from {table}")
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("execute wipe")  # never prepared: opaque, held
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("execute one_row(set_config('role', 'none', false)::int)")
    finally:
        conn.close()


@pytest.fixture
def big_table(pg_dsn: str) -> Iterator[str]:
    """More rows than the default pack lets one read return (1,000) or one write
    change (100)."""
    name = f"polbig_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"create table {name} (id int primary key, v text)")
        conn.execute(f"insert into {name} select g, 'v' || g from generate_series(1, 1500) g")
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"drop table if exists {name}")


def test_execute_keeps_the_limits_of_the_statement_it_runs(
    enforcing: str, big_table: str, pg_dsn: str
) -> None:
    """EXECUTE, and whatever a string runs beside it or beside a PREPARE, is held to
    the rule's limits like the statement written out: a read past max_rows stops, a
    write that cannot be measured is held, a session guard is clamped."""
    t = big_table
    conn = psycopg2.connect(enforcing)  # simple protocol, as psql sends EXECUTE
    conn.autocommit = True
    try:
        cur = conn.cursor()
        cur.execute(f"prepare wipe_some as delete from {t} where id > $1")  # runs nothing
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("execute wipe_some(0)")
        cur.execute(f"prepare read_some as select id, v from {t} where id > $1")
        with pytest.raises(psycopg2.errors.ProgramLimitExceeded):
            cur.execute("execute read_some(0)")
        cur.execute("execute read_some(1490)")
        assert len(cur.fetchall()) == 10
        cur.execute("prepare nothing as select 1")
        with pytest.raises(psycopg2.errors.ProgramLimitExceeded):
            cur.execute(f"execute nothing; select id from {t} where id > 0")
        with pytest.raises(psycopg2.errors.ProgramLimitExceeded):
            cur.execute(f"prepare other as select 2; select id from {t} where id > 0")
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute(f"execute nothing; update {t} set v = 'x' where id > 0")
        cur.execute("execute nothing; set statement_timeout = 0")
        cur.execute("show statement_timeout")
        assert cur.fetchone() != ("0",)  # clamped to the pack's ceiling
    finally:
        conn.close()
    with psycopg.connect(pg_dsn, autocommit=True) as direct:
        assert direct.execute(f"select count(*) from {t} where v like 'v%'").fetchone() == (1500,)


async def test_execute_through_the_extended_protocol_is_refused(enforcing: str) -> None:
    """Through Parse/Bind/Execute the name would be looked up when the portal runs,
    after any Close/Parse the client pipelined in between: not what was checked."""
    conn = await asyncpg.connect(enforcing)
    try:
        await conn.execute("prepare one as select 1")  # a simple Query: fine
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="only as a simple query"):
            await conn.fetch("execute one")
        assert await conn.fetchval("select 2") == 2
    finally:
        await conn.close()


def test_fast_path_function_calls_are_refused(enforcing: str) -> None:
    conn = psycopg2.connect(enforcing)
    try:
        # libpq's large-object API uses FunctionCall messages; psycopg2 reports
        # lobject failures as OperationalError without the SQLSTATE.
        with pytest.raises(psycopg2.OperationalError) as info:
            conn.lobject(0, "wb")
        assert "dbgate: fast-path function calls are not allowed" in str(info.value)
    finally:
        conn.close()


async def test_unparseable_sql_is_refused_with_42601_and_the_parser_message(
    enforcing: str,
) -> None:
    """A typo is the agent's to fix, not a permission problem: 42601, the parser's
    message and its position, as PostgreSQL itself would report it."""
    conn = await asyncpg.connect(enforcing)
    try:
        with pytest.raises(asyncpg.PostgresSyntaxError) as info:
            await conn.execute("selec 1 frm")
        assert info.value.sqlstate == "42601"
        assert "syntax error" in str(info.value)
        assert "selec" in str(info.value)
        assert int(info.value.position) == 1
    finally:
        await conn.close()


def _run(sql: str, statements: PreparedStatements) -> dict[str, tuple[str, ...]]:
    """Apply the changes ``sql`` makes as the server confirms them (a clean cycle)."""
    for change in sql_prepare_changes(sql):
        statements.sent(1, change).resolve(True)
    return dict(statements.texts)


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("PREPARE a AS select 1", {"a": "select 1"}),
        ('prepare "Mixed Name" (int, text) as select $1, $2;', {"Mixed Name": "select $1, $2"}),
        ("prepare b as delete from t; select 1", {"b": "delete from t"}),
        ("select 'prepare c as x'", {}),
    ],
)
def test_sql_prepare_tracking(sql: str, expected: dict[str, str]) -> None:
    got = _run(sql, PreparedStatements())
    assert got == {k: (v,) for k, v in expected.items()}


def _with(*sqls: str) -> PreparedStatements:
    statements = PreparedStatements()
    for sql in sqls:
        _run(sql, statements)
    return statements


def test_deallocate_forgets_prepared_statements() -> None:
    statements = _with("prepare a as select 1", "prepare b as select 2")
    assert _run("deallocate a", statements) == {"b": ("select 2",)}
    assert _run("DEALLOCATE ALL", statements) == {}


def test_discard_all_forgets_prepared_statements() -> None:
    statements = _with("prepare a as select 1")
    assert _run("discard all", statements) == {}


async def test_sessions_with_nonstandard_strings_are_refused(enforcing: str) -> None:
    # With standard_conforming_strings off the server reads backslashes in literals
    # differently from the classifier; setting it is held, and a session where it is
    # off anyway (e.g. ALTER ROLE ... SET) gets every statement refused.
    conn = await asyncpg.connect(enforcing)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("set standard_conforming_strings = off")
        assert await conn.fetchval("show standard_conforming_strings") == "on"
    finally:
        await conn.close()


def test_off_standard_strings_reported_by_server_refuse_everything(
    make_proxy: Any, pg_server: Any, pg_database: str, pg_dsn: str
) -> None:
    role = f"scs_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(f"create role {role} login password 'pw'")
        admin.execute(f"alter role {role} set standard_conforming_strings = off")
        admin.execute(f"grant all on database {pg_database} to {role}")
    try:
        proxy = make_proxy(
            inspector=build_gate(proxy_config(pg_server)),
            identities=[
                {
                    "name": "agent",
                    "password": "agent-secret-pw",
                    "upstream_user": role,
                    "upstream_password": "pw",
                }
            ],
        )
        with psycopg.connect(proxy.dsn(pg_database)) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
                conn.execute("select 1")
            assert "standard_conforming_strings" in str(info.value)
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(f"revoke all on database {pg_database} from {role}")
            admin.execute(f"drop role {role}")
