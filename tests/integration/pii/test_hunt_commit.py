"""Messages of code no statement shows, through the real proxy: code that runs when a
transaction ends, row-level security policies, column defaults and CHECK constraints
that call the database's own functions.

A constraint trigger ``DEFERRABLE INITIALLY DEFERRED`` (or one ``SET CONSTRAINTS``
deferred) fires at COMMIT, or at ``SET CONSTRAINTS … IMMEDIATE``: its ``RAISE`` is
then the error or notice of a statement that names no PII. The write that queued it
ran code lineage does not read, so every message of the session is withheld until its
transaction is over. A policy's expressions run at every read of its table, one
without PII too: its errors are withheld like those of a statement that reads PII.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.integration.clients.conftest import start_pii_proxy
from tests.integration.conftest import RunningProxy

TABLES = """
create table commit_says (id int, full_name text);
create function commit_says_f() returns trigger language plpgsql as $$
begin raise exception 'bad name %', new.full_name; end $$;
create constraint trigger commit_says_t after insert on commit_says
    deferrable initially deferred for each row execute function commit_says_f();
create table commit_notes (id int);
create function commit_notes_f() returns trigger language plpgsql as $$
begin
    raise notice 'saw %', (select full_name from customers where id = new.id);
    return null;
end $$;
create constraint trigger commit_notes_t after insert on commit_notes
    deferrable initially immediate for each row execute function commit_notes_f();
grant insert on commit_says, commit_notes to public;
create table policy_says (id int, label text);
insert into policy_says values (1, 'a');
alter table policy_says enable row level security;
create policy policy_says_p on policy_says using (
    current_setting('x.' || (select replace(full_name, ' ', '_') from customers where id = 1))
    is null);
grant select on policy_says to public;
create function checks_say(n int) returns boolean language plpgsql as $$
begin
    raise exception 'checked %', (select full_name from customers where id = n);
end $$;
create table check_says (id int check (checks_say(id)));
create table default_says (id int, n int default checks_say(1)::int);
create domain checked_id as int check (checks_say(value));
create domain checked_id_2 as checked_id;
create table domain_says (id checked_id_2);
grant insert on check_says, default_says, domain_says to public;
"""


@pytest.fixture(scope="module")
def deferred_code(admin_dsn: str) -> Iterator[None]:
    """Made before the proxy reads the schema."""
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(TABLES)
    yield
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            "drop table commit_says, commit_notes, policy_says, check_says, default_says,"
            " domain_says; drop domain checked_id_2, checked_id;"
            "drop function commit_says_f(), commit_notes_f(), checks_say(int)"
        )


@pytest.fixture(scope="module")
def commit_proxy(
    pg_server: Any,
    demo_role: Any,
    deferred_code: None,
) -> Iterator[RunningProxy]:
    running = start_pii_proxy(pg_server, demo_role)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def dsn(commit_proxy: RunningProxy, demo_db: str) -> str:
    return commit_proxy.dsn(demo_db)


@pytest.fixture(scope="module")
def name(admin_dsn: str) -> str:
    with psycopg.connect(admin_dsn) as conn:
        row = conn.execute("select full_name from customers where id = 1").fetchone()
    assert row is not None
    return str(row[0])


def _said(name: str, texts: list[str]) -> list[str]:
    parts = [name, *(p for p in name.split() if len(p) > 3)]
    return [t for t in texts if any(p.lower() in t.lower() for p in parts)]


def _texts(e: psycopg.Error) -> list[str]:
    d = e.diag
    return [
        str(x or "")
        for x in (d.message_primary, d.message_detail, d.message_hint, d.context, d.internal_query)
    ]


@pytest.mark.parametrize("ends", ["commit", "set constraints all immediate"])
def test_a_deferred_trigger_error_at_commit_is_withheld(dsn: str, name: str, ends: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(2):  # the second time, a verdict remembered for the same text
            _deferred_error(conn, name, ends)


def _deferred_error(conn: psycopg.Connection[Any], name: str, ends: str) -> None:
    conn.execute("begin")
    conn.execute("insert into commit_says select 1, full_name from customers where id = 1")
    with pytest.raises(psycopg.Error) as info:
        conn.execute(ends)
    conn.execute("rollback")
    assert info.value.diag.sqlstate == "P0001"
    assert "withheld" in str(info.value.diag.message_primary)
    assert not _said(name, _texts(info.value))
    # the transaction is over: a later statement's message is the server's again
    with pytest.raises(psycopg.Error) as later:
        conn.execute("select 1/0")
    assert "division by zero" in str(later.value.diag.message_primary)


def test_a_notice_of_a_trigger_deferred_by_set_constraints_is_withheld(dsn: str, name: str) -> None:
    notices: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.add_notice_handler(
            lambda d: notices.extend([str(d.message_primary or ""), str(d.context or "")])
        )
        conn.execute("begin")
        conn.execute("set constraints all deferred")
        conn.execute("insert into commit_notes values (1)")
        assert not notices  # deferred: nothing said yet
        conn.execute("commit")
    assert notices and "withheld" in notices[0]
    assert not _said(name, notices)


async def test_a_deferred_trigger_error_at_commit_through_the_extended_protocol(
    dsn: str, name: str
) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        tr = conn.transaction()
        await tr.start()
        await conn.execute(
            "insert into commit_says select $1::int, full_name from customers where id = 1", 1
        )
        with pytest.raises(asyncpg.PostgresError) as info:
            await tr.commit()
    finally:
        await conn.close()
    e = info.value
    texts = [str(getattr(e, a, "") or "") for a in ("message", "detail", "hint", "context")]
    assert e.sqlstate == "P0001"
    assert "withheld" in str(e.message)
    assert not _said(name, texts)


def test_an_error_of_a_row_level_security_policy_is_withheld(dsn: str, name: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(psycopg.Error) as info:
        conn.execute("select label from policy_says where id = 1")
    texts = _texts(info.value)
    assert info.value.diag.sqlstate == "42704"
    assert "withheld" in texts[0]
    assert not _said(name, [t.replace("_", " ") for t in texts])


def test_a_deferred_trigger_queued_by_a_query_that_opened_the_transaction(
    dsn: str, name: str
) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "begin; insert into commit_says select 1, full_name from customers where id = 1"
        )
        with pytest.raises(psycopg.Error) as info:
            conn.execute("commit")
    assert info.value.diag.sqlstate == "P0001"
    assert not _said(name, _texts(info.value))


async def test_a_deferred_trigger_in_an_implicit_transaction_of_the_extended_protocol(
    dsn: str, name: str
) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        with pytest.raises(asyncpg.PostgresError) as info:
            await conn.execute(
                "insert into commit_says select $1::int, full_name from customers where id = 1", 1
            )
    finally:
        await conn.close()
    e = info.value
    texts = [str(getattr(e, a, "") or "") for a in ("message", "detail", "hint", "context")]
    assert e.sqlstate == "P0001"
    assert not _said(name, texts)


@pytest.mark.parametrize("table", ["check_says", "default_says", "domain_says"])
def test_an_error_of_a_check_or_default_calling_a_function_is_withheld(
    dsn: str, name: str, table: str
) -> None:
    """``insert into check_says values (1)`` names no PII, but the CHECK constraint's
    function (or the check of the column's domain, over another domain) reads customer
    1 and says its name."""
    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(psycopg.Error) as info:
        conn.execute(f"insert into {table} (id) values (1)")
    assert info.value.diag.sqlstate == "P0001"
    assert not _said(name, _texts(info.value))


def test_a_deferred_trigger_error_at_a_pipelined_commit_is_withheld(dsn: str, name: str) -> None:
    """The write and its COMMIT in one pipelined batch: the COMMIT's error follows the
    write's completion without a ReadyForQuery between them."""
    conn = psycopg.connect(dsn, autocommit=True)
    try:
        with pytest.raises(psycopg.Error) as info, conn.pipeline():
            conn.execute("begin")
            conn.execute(
                "insert into commit_says select %s::int, full_name from customers where id = 1",
                (1,),
            )
            conn.execute("commit")
            conn.execute("select 1")
    finally:
        conn.close()
    assert info.value.diag.sqlstate == "P0001"
    assert not _said(name, _texts(info.value))
