"""Where a security tester found PII under names no catalog rule marks, and in a plan
that runs nothing, on the real server (demo dataset).

A foreign key says that one column holds values of another: ``buyer text REFERENCES
customers(email)`` holds e-mail addresses whatever it is called, and so does the
column a PII column references (``customers.email REFERENCES registry(addr)``: every
customer's address is in ``registry``). So does a parent table's column hold what a
child's comment marks (its rows are the parent's too), a foreign table's column the
remote column it reads, and a camelCase column (``"emailAddress"``, or unquoted,
``emailaddress``) what its words say. Unit-level: tests/unit/pii/test_catalog.py.

A plain EXPLAIN prints what the planner evaluated for its estimates: a built-in that
reads what dbgate cannot follow (``pg_stat_get_backend_activity``) makes it unknown.

A column a migration added outside dbgate, which the schema snapshot does not know
yet, is tokenized until the snapshot is read again (within ``MAX_AGE_SECONDS``), and a
session that only repeats remembered texts does not keep the old snapshot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from dbgate.gate import schema_loads
from dbgate.proxy import tracker
from tests.integration.clients.conftest import start_pii_proxy
from tests.integration.conftest import RunningProxy
from tests.integration.pii.conftest import DBNAME, Demo
from tests.integration.pii.harness import apply_plan, connect, leaked, run_simple


async def _agent(pg_server: Any, pii_demo: Demo, sql: str) -> Any:
    """Plan ``sql`` as the agent's session, run it, put the answer through the room."""
    session = pii_demo.room.session("agent")
    plan = session.plan(sql)
    client = await connect(pg_server, DBNAME)
    try:
        res = apply_plan(plan, await run_simple(client, session.detokenize_sql(plan)))
    finally:
        await client.close()
    assert not res.errors, res.errors
    return res


def _sent(res: Any) -> bytes:
    """What the server sent, before the room."""
    return b"".join(b"".join(v or b"" for v in row) for row in res.rows_before)


async def test_columns_linked_to_pii_by_a_foreign_key_are_pii(
    pg_server: Any, pii_demo: Demo
) -> None:
    admin = await asyncpg.connect(pii_demo.dsn)
    try:
        await admin.execute(
            "create table hunt_buyers (id int primary key, buyer text references customers(email));"
            " insert into hunt_buyers select id, email from customers where id <= 3;"
            " create table hunt_registry (addr text primary key, kind text);"
            " insert into hunt_registry select email, 'r' from customers where id <= 3;"
            " create table hunt_people (id int primary key, email text"
            "   references hunt_registry(addr));"
            " insert into hunt_people select id, email from customers where id <= 3;"
            # a chain: a column referencing the registry holds its values too
            " create table hunt_refs (id int primary key, k text references hunt_registry(addr),"
            "   n int references hunt_buyers(id));"
            " insert into hunt_refs select id, email, id from customers where id <= 3"
        )
        await pii_demo.room.refresh_dsn(pii_demo.dsn)
        for sql, replaced in (
            ("select id, buyer from hunt_buyers order by id", {1}),
            ("select addr, kind from hunt_registry order by addr", {0}),
            ("select id, k, n from hunt_refs order by id", {1}),
            ("select r.addr, b.buyer from hunt_registry r, hunt_buyers b where b.id = 1", {0, 1}),
        ):
            res = await _agent(pg_server, pii_demo, sql)
            assert leaked(_sent(res), pii_demo.values), sql  # the server sent them raw
            assert not leaked(res.output_bytes, pii_demo.values), sql
            assert res.replaced == [replaced], sql
        res = await _agent(pg_server, pii_demo, "select kind from hunt_registry order by addr")
        assert [r[0] for r in res.rows_after] == [b"r"] * 3  # the clean column stays readable
    finally:
        await admin.execute(
            "drop table if exists hunt_refs, hunt_buyers, hunt_people, hunt_registry"
        )
        await admin.close()
        await pii_demo.room.refresh_dsn(pii_demo.dsn)


async def test_a_parent_table_holds_what_a_child_marks(pg_server: Any, pii_demo: Demo) -> None:
    """A comment on a partition's column (or on an inheritance child's) marks what the
    parent returns too: a read of the parent reads the child's rows."""
    admin = await asyncpg.connect(pii_demo.dsn)
    try:
        await admin.execute(
            "create table hunt_events (id int, k int, note text) partition by list (k);"
            " create table hunt_events_a partition of hunt_events for values in (1);"
            " create table hunt_events_b partition of hunt_events for values in (2);"
            " comment on column hunt_events_a.note is 'pii:email';"
            " insert into hunt_events select id, 1 + id % 2, email from customers where id <= 4;"
            " create table hunt_base (id int, note text);"
            " create table hunt_kid (extra int) inherits (hunt_base);"
            " comment on column hunt_kid.note is 'pii:email';"
            " insert into hunt_kid select id, email, 0 from customers where id <= 3"
        )
        await pii_demo.room.refresh_dsn(pii_demo.dsn)
        for sql in (
            "select id, note from hunt_events order by id",
            "select id, note from hunt_events_b order by id",
            "select id, note from hunt_base order by id",
        ):
            res = await _agent(pg_server, pii_demo, sql)
            assert leaked(_sent(res), pii_demo.values), sql  # the server sent them raw
            assert not leaked(res.output_bytes, pii_demo.values), sql
            assert res.replaced == [{1}], sql
    finally:
        await admin.execute("drop table if exists hunt_events, hunt_base, hunt_kid")
        await admin.close()
        await pii_demo.room.refresh_dsn(pii_demo.dsn)


async def test_a_foreign_tables_column_is_named_by_its_remote_column(
    pg_server: Any, pii_demo: Demo
) -> None:
    """``c1 text OPTIONS (column_name 'email')``: a foreign table's column reads the
    remote ``email`` under a local name no default marks."""
    admin = await asyncpg.connect(pii_demo.dsn)
    try:
        if not await admin.fetchval(
            "select count(*) from pg_available_extensions where name = 'postgres_fdw'"
        ):
            # the embedded server (CI's) ships it; an external one may be built without
            # contrib, and then there is no foreign table to read
            pytest.skip("postgres_fdw is not available on this server")
        await admin.execute(
            "create extension if not exists postgres_fdw;"
            " create server hunt_loop foreign data wrapper postgres_fdw options"
            f" (host '{pg_server.host}', port '{pg_server.port}', dbname '{DBNAME}');"
            " create user mapping for current_user server hunt_loop options"
            f" (user '{pg_server.user}', password '{pg_server.password}');"
            " create foreign table hunt_remote (id int, c1 text options (column_name 'email'),"
            " c2 text options (column_name 'created_at')) server hunt_loop"
            " options (table_name 'customers')"
        )
        await pii_demo.room.refresh_dsn(pii_demo.dsn)
        res = await _agent(
            pg_server, pii_demo, "select id, c1, c2 from hunt_remote where id <= 3 order by id"
        )
    finally:
        await admin.execute("drop server if exists hunt_loop cascade")
        await admin.close()
        await pii_demo.room.refresh_dsn(pii_demo.dsn)
    assert leaked(_sent(res), pii_demo.values)  # the server sent them raw
    assert not leaked(res.output_bytes, pii_demo.values)
    assert res.replaced == [{1}]  # created_at stays readable


async def test_camel_case_column_names_are_read_as_their_words(
    pg_server: Any, pii_demo: Demo
) -> None:
    """ORMs name columns in camelCase, quoted (Prisma, TypeORM, Sequelize):
    ``"emailAddress"``, ``"dateOfBirth"``, ``"mobileNumber"``, ``"postalCode"`` are the
    name defaults' ``email_address``, ``date_of_birth`` ... spelled another way; and
    unquoted, PostgreSQL folds them to ``emailaddress``, ``homephone``."""
    admin = await asyncpg.connect(pii_demo.dsn)
    try:
        await admin.execute(
            'create table hunt_orm (id int primary key, "emailAddress" text,'
            ' "dateOfBirth" date, "mobileNumber" text, "homeAddress" text,'
            ' "socialSecurityNumber" text, "createdAt" timestamptz default now(),'
            " homePhone text);"  # unquoted: folded to homephone
            " insert into hunt_orm select id, email, birth_date, phone, address, ssn,"
            " now(), phone from customers where id <= 3"
        )
        await pii_demo.room.refresh_dsn(pii_demo.dsn)
        res = await _agent(pg_server, pii_demo, "select * from hunt_orm order by id")
    finally:
        await admin.execute("drop table if exists hunt_orm")
        await admin.close()
        await pii_demo.room.refresh_dsn(pii_demo.dsn)
    assert leaked(_sent(res), pii_demo.values)  # the server sent them raw
    assert not leaked(res.output_bytes, pii_demo.values)
    assert res.replaced == [{1, 2, 3, 4, 5, 7}]
    assert not any(row[2] in pii_demo.dates for row in res.rows_after)


async def test_a_plain_explain_shows_what_the_planner_evaluated(
    pg_server: Any, pii_demo: Demo
) -> None:
    """A plain EXPLAIN runs nothing, but the planner evaluates the stable expressions
    that read no column — for its row estimates (``LIMIT f()``, ``id < f()``) and for
    pruning partitions when the executor starts — and prints what they gave. A built-in
    that reads data dbgate cannot follow, ``pg_stat_get_backend_activity(n)`` (another
    session's query text, holding the raw value of a token that session sent back), is
    such an expression: ``rows=109`` was the e-mail's first character."""
    c = await asyncpg.connect(pii_demo.dsn)
    try:
        email = await c.fetchval("select email from customers where id = 1")
    finally:
        await c.close()
    token = pii_demo.room.tokenizer.token("email", email.encode())
    session = pii_demo.room.session("agent")
    plan = session.plan(f"select id from customers where email = '{token}'")
    other = await connect(pg_server, DBNAME)  # the agent's other session, left idle
    try:
        await run_simple(other, session.detokenize_sql(plan))
        text = await _activity_text(pii_demo, other)
        at = text.index(email) + 1  # 1-based position of the raw value in that text
        backend = await _backend_id(pii_demo, text)
        code = ord(email[0])
        for sql in (
            f"explain select * from orders limit ascii(substr("
            f"pg_stat_get_backend_activity({backend}), {at}, 1))",
            f"explain select * from generate_series(1, ascii(substr("
            f"pg_stat_get_backend_activity({backend}), {at}, 1)))",
        ):
            res = await _agent(pg_server, pii_demo, sql)
            assert f"rows={code} ".encode() in _sent(res), sql  # the server said it
            assert f"rows={code} ".encode() not in res.output_bytes, sql
            assert all(row[0].startswith(b"tok_unknown_") for row in res.rows_after), sql
        res = await _agent(pg_server, pii_demo, "explain select * from orders limit 109")
        assert b"rows=109 " in res.output_bytes  # the agent's own literals stay readable
    finally:
        await other.close()


async def _activity_text(pii_demo: Demo, client: Any) -> str:
    c = await asyncpg.connect(pii_demo.dsn)
    try:
        for _ in range(50):
            rows = await c.fetch(
                "select query from pg_stat_activity where query like '%$dbgate$%'"
                " and pid <> pg_backend_pid()"
            )
            if rows:
                return str(rows[0]["query"])
            await asyncio.sleep(0.05)
    finally:
        await c.close()
    raise AssertionError("the other session's text is not in pg_stat_activity")


async def _backend_id(pii_demo: Demo, text: str) -> int:
    c = await asyncpg.connect(pii_demo.dsn)
    try:
        return int(
            await c.fetchval(
                "select b from pg_stat_get_backend_idset() b"
                " where pg_stat_get_backend_activity(b) = $1",
                text,
            )
        )
    finally:
        await c.close()


# --------------------------------------------------------------------------------------
# DDL that did not pass through dbgate: a migration adds a column, a DBA comments one.


@pytest.fixture(scope="module")
def stale_proxy(pg_server: Any, demo_role: Any) -> Iterator[RunningProxy]:
    running = start_pii_proxy(pg_server, demo_role)
    yield running
    running.stop()


def _raw_phone_and_email(admin_dsn: str) -> tuple[str, str]:
    with psycopg.connect(admin_dsn) as conn:
        row = conn.execute("select phone, email from customers where id = 1").fetchone()
    assert row is not None
    return str(row[0]), str(row[1])


def test_a_column_added_outside_dbgate_is_not_read_raw(
    stale_proxy: RunningProxy,
    demo_db: str,
    admin_dsn: str,
    demo_role: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The snapshot knows the table but not the column a migration added since: the
    RowDescription names the column by an attribute number the snapshot lacks. Until
    the schema is read again that column is tokenized (as a name default says, or as
    unknown); a snapshot older than ``MAX_AGE_SECONDS`` is read again when a session
    asks for it, after which it is what the catalog says."""
    phone, email = _raw_phone_and_email(admin_dsn)
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            "drop table if exists hunt_migrated; create table hunt_migrated (id int primary key,"
            f" label text); insert into hunt_migrated values (1, 'a');"
            f" grant select on hunt_migrated to {demo_role.name}"
        )
    try:
        with psycopg.connect(stale_proxy.dsn(demo_db), autocommit=True) as conn:
            # the proxy learns the table (a name it did not know: read again)
            assert conn.execute("select label from hunt_migrated where id = 1").fetchall() == [
                ("a",)
            ]
            with psycopg.connect(admin_dsn, autocommit=True) as admin:
                admin.execute(
                    "alter table hunt_migrated add column phone text, add column contact text;"
                    " update hunt_migrated set phone = c.phone, contact = c.email"
                    " from customers c where c.id = 1;"
                    " comment on column hunt_migrated.contact is 'pii:email'"
                )
            for sql in (
                "select id, label, phone, contact from hunt_migrated where id = 1",
                "select id, phone as p, contact as c from hunt_migrated where id = 1",
                "select x.phone, x.contact from (select id, phone, contact from hunt_migrated) x"
                " where id = 1",
            ):
                (row,) = conn.execute(sql).fetchall()
                text = repr(row)
                assert phone not in text and email not in text, (sql, row)
                assert row[0] == 1 or sql.startswith("select x."), row  # clean columns stay
            # once the snapshot is old, a statement has it read again: the catalog's
            # own word for the column (an e-mail, by its comment) replaces "unknown"
            (row,) = conn.execute("select contact from hunt_migrated where id = 1").fetchall()
            assert row[0].startswith("tok_unknown_"), row  # its comment is not known yet
            monkeypatch.setattr(schema_loads, "MAX_AGE_SECONDS", 0.0)
            deadline = time.monotonic() + 10
            while not row[0].startswith("tok_email_") and time.monotonic() < deadline:
                time.sleep(0.1)
                (row,) = conn.execute("select contact from hunt_migrated where id = 1").fetchall()
                assert email not in repr(row), row
            # read again: SELECT * now expands to the columns it names, each as the
            # catalog says (until then it was judged by the old snapshot: docs/security.md)
            # (a statement in flight when a load found the schema changed comes back
            # tokenized whole, id and label too: the loads run at every statement here)
            deadline = time.monotonic() + 10
            (row,) = conn.execute("select * from hunt_migrated where id = 1").fetchall()
            while row[0] != 1 and time.monotonic() < deadline:
                assert phone not in repr(row) and email not in repr(row), row
                time.sleep(0.1)
                (row,) = conn.execute("select * from hunt_migrated where id = 1").fetchall()
            assert phone not in repr(row) and email not in repr(row), row
            assert row[:2] == (1, "a") and row[2].startswith("tok_phone_"), row
            assert row[3].startswith("tok_email_"), row
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute("drop table if exists hunt_migrated")


def test_a_remembered_verdict_does_not_keep_an_old_snapshot(
    stale_proxy: RunningProxy,
    demo_db: str,
    admin_dsn: str,
    demo_role: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The relay remembers the verdict of a text it was allowed to send again, and
    asks nothing when it comes back: a session that only repeats a ``SELECT *`` it sent
    before a migration added a PII column must not keep the snapshot from being read
    again (nor its own verdict from being taken again) for ever."""
    phone, _email = _raw_phone_and_email(admin_dsn)
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            "drop table if exists hunt_polled; create table hunt_polled (id int primary key,"
            " label text); insert into hunt_polled values (1, 'a');"
            f" grant select on hunt_polled to {demo_role.name}"
        )
    sql = "select * from hunt_polled where id = 1"
    try:
        with psycopg.connect(stale_proxy.dsn(demo_db), autocommit=True) as conn:
            assert conn.execute(sql).fetchall() == [(1, "a")]
            assert conn.execute(sql).fetchall() == [(1, "a")]  # remembered now
            with psycopg.connect(admin_dsn, autocommit=True) as admin:
                admin.execute(
                    "alter table hunt_polled add column phone text;"
                    " update hunt_polled set phone = c.phone from customers c where c.id = 1"
                )
            monkeypatch.setattr(schema_loads, "MAX_AGE_SECONDS", 0.0)
            monkeypatch.setattr(tracker, "MEMO_MAX_AGE_SECONDS", 0.0)
            deadline = time.monotonic() + 10
            # until the new snapshot is read; a statement judged before the load found
            # the schema changed comes back tokenized whole (id and label too)
            rows = conn.execute(sql).fetchall()
            while (phone in repr(rows) or rows[0][0] != 1) and time.monotonic() < deadline:
                time.sleep(0.1)
                rows = conn.execute(sql).fetchall()
            assert phone not in repr(rows), rows
            assert rows[0][:2] == (1, "a") and rows[0][2].startswith("tok_phone_"), rows
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute("drop table if exists hunt_polled")


async def test_a_reload_of_an_unchanged_schema_keeps_the_snapshot(pii_demo: Demo) -> None:
    """Read again every 30 s while used: an unchanged schema keeps its snapshot, its
    coverage and the plans made on it; a changed one is taken."""
    room = pii_demo.room
    await room.refresh_dsn(pii_demo.dsn)
    version, coverage = room.version, room.coverage
    await room.refresh_dsn(pii_demo.dsn)
    assert room.reloaded_unchanged and room.version == version and room.coverage is coverage
    admin = await asyncpg.connect(pii_demo.dsn)
    try:
        await admin.execute("create table hunt_new (id int)")
        await room.refresh_dsn(pii_demo.dsn)
        assert not room.reloaded_unchanged and room.version != version
    finally:
        await admin.execute("drop table if exists hunt_new")
        await admin.close()
        await room.refresh_dsn(pii_demo.dsn)
