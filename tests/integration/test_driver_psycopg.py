"""psycopg 3 through dbgate behaves exactly as psycopg 3 straight to PostgreSQL.

psycopg 3 exercises what other drivers rarely do: libpq pipeline mode (many
Parse/Bind/Execute batches in flight, one Sync per batch, errors that abort the rest
of the batch), binary result formats, COPY in text and binary, the libpq cancel APIs
(``PQcancel`` and the newer ``PQcancelCreate`` behind ``cancel_safe``). Each scenario
runs on both targets and the outcomes — values, which statements committed, which
raised, transaction status — must be identical.
"""

from __future__ import annotations

import datetime as dt
import decimal
import threading
import time
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any

import psycopg
import pytest
from psycopg import errors
from psycopg.pq import TransactionStatus

from tests.integration.drivers_common import (
    proxy_process_dsn,
    same_on_both,
    same_on_both_async,
    unique,
)

__all__ = ["proxy_process_dsn"]  # a fixture, used by the cancel tests


@pytest.fixture
def table(pg_dsn: str) -> Iterator[str]:
    """A unique table name; the table is dropped (if a scenario left it) afterwards."""
    name = unique("pg3")
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"drop table if exists {name}")


def ids(conn: psycopg.Connection, table: str) -> list[int]:
    return [r[0] for r in conn.execute(f"select id from {table} order by id")]


# -- pipeline mode ------------------------------------------------------------------------


def test_pipeline_autocommit_error_in_the_middle(pg_dsn: str, proxy_dsn: str, table: str) -> None:
    """Statements synced before the error commit; the failing batch is rolled back."""

    def scenario(conn: psycopg.Connection) -> Any:
        conn.execute(f"create table {table} (id int primary key)")
        raised = None
        try:
            with conn.pipeline() as p:
                conn.execute(f"insert into {table} values (1)")
                conn.execute(f"insert into {table} values (2)")
                p.sync()
                conn.execute(f"insert into {table} values (3)")
                conn.execute(f"insert into {table} values (1)")  # duplicate
                conn.execute(f"insert into {table} values (4)")
        except psycopg.Error as e:
            raised = (type(e).__name__, e.sqlstate)
        status = conn.info.transaction_status
        got = ids(conn, table)
        conn.execute(f"drop table {table}")
        return raised, status, got

    raised, status, got = same_on_both(
        pg_dsn, proxy_dsn, scenario, connect=partial(psycopg.connect, autocommit=True)
    )
    assert raised == ("UniqueViolation", "23505")
    assert status == TransactionStatus.IDLE
    assert got == [1, 2]


def test_pipeline_results_and_aborted_statements(pg_dsn: str, proxy_dsn: str, table: str) -> None:
    """Results read inside a pipeline; a failing pipeline raises its error; the session recovers."""

    def scenario(conn: psycopg.Connection) -> Any:
        conn.execute(f"create table {table} (id int primary key, v text)")
        events: list[Any] = []
        with conn.pipeline() as p:
            cur_a = conn.execute(f"insert into {table} values (1, 'a') returning id, v")
            cur_b = conn.cursor()
            cur_b.executemany(
                f"insert into {table} values (%s, %s)", [(i, f"v{i}") for i in range(10, 20)]
            )
            cur_c = conn.execute("select count(*) from pg_class where relname = %s", [table])
            p.sync()
            events.append(cur_a.fetchall())
            events.append(cur_c.fetchone())
        # Where the error surfaces (this execute, a later one, the sync or the end of the
        # block) depends on when psycopg happens to read results; compare *what* is raised.
        try:
            with conn.pipeline() as p:
                conn.execute("select 1/0")
                conn.execute("select 'after'")
                p.sync()
        except psycopg.Error as e:
            events.append(("raised", type(e).__name__, e.sqlstate))
        with conn.pipeline():
            events.append(conn.execute("select 'recovered'").fetchone())
        events.append(ids(conn, table))
        events.append(conn.info.transaction_status)
        conn.execute(f"drop table {table}")
        return events

    events = same_on_both(
        pg_dsn, proxy_dsn, scenario, connect=partial(psycopg.connect, autocommit=True)
    )
    assert events[0] == [(1, "a")]
    assert events[1] == (1,)
    assert events[2] == ("raised", "DivisionByZero", "22012")
    assert events[-3] == ("recovered",)
    assert events[-2] == [1, *range(10, 20)]


def test_pipeline_in_transaction_error_leaves_inerror(
    pg_dsn: str, proxy_dsn: str, table: str
) -> None:
    def scenario(conn: psycopg.Connection) -> Any:
        with conn.transaction():
            conn.execute(f"create table {table} (id int primary key)")
        raised = None
        try:
            with conn.pipeline():
                conn.execute(f"insert into {table} values (1)")
                conn.execute(f"insert into {table} values (x)")  # undefined column
                conn.execute(f"insert into {table} values (2)")
        except psycopg.Error as e:
            raised = (type(e).__name__, e.sqlstate)
        in_error = conn.info.transaction_status
        conn.rollback()
        after_rollback = conn.info.transaction_status
        got = ids(conn, table)
        conn.rollback()
        conn.execute(f"drop table {table}")
        conn.commit()
        return raised, in_error, after_rollback, got

    raised, in_error, after_rollback, got = same_on_both(
        pg_dsn, proxy_dsn, scenario, connect=psycopg.connect
    )
    assert raised == ("UndefinedColumn", "42703")
    assert in_error == TransactionStatus.INERROR
    assert after_rollback == TransactionStatus.IDLE
    assert got == []


# -- formats ---------------------------------------------------------------------------

TYPES_SQL = """
select 42::int4 i4, 9000000000::int8 i8, 1.5::float8 f8, 123.4500::numeric num,
       'héllo'::text t, '\\x00ff'::bytea b, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid u,
       '{"a": [1, 2]}'::jsonb jb, '{"x": 1}'::json j,
       '2024-02-29 13:14:15.5+02'::timestamptz ts, '2024-02-29'::date d,
       '1 day 2 hours'::interval iv, array[1, null, 3] ia, array['x', 'y'] ta,
       true bo, null::text nul, %s::numeric p_num, %s::bytea p_b, %s::timestamptz p_ts
"""
TYPES_ARGS = (
    decimal.Decimal("1.10"),
    b"\x01\x02",
    dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
)


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_types_in_text_and_binary_cursors(pg_dsn: str, proxy_dsn: str, binary: bool) -> None:
    def scenario(conn: psycopg.Connection) -> Any:
        cur = conn.cursor(binary=binary)
        cur.execute(TYPES_SQL, TYPES_ARGS)
        row = cur.fetchone()
        described = [(c.name, c.type_code) for c in cur.description]
        formats = [cur.pgresult.fformat(i) for i in range(cur.pgresult.nfields)]
        many = conn.cursor(binary=binary).execute(
            "select g, g::text, g * 1.5 from generate_series(1, 3000) g"
        )
        return row, described, formats, many.fetchall()

    row, described, formats, many = same_on_both(
        pg_dsn, proxy_dsn, scenario, connect=psycopg.connect
    )
    assert formats == [1 if binary else 0] * len(described)
    assert row[0:4] == (42, 9000000000, 1.5, decimal.Decimal("123.4500"))
    assert row[6] == uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    assert row[7] == {"a": [1, 2]}
    assert row[16:] == TYPES_ARGS
    assert many[-1] == (3000, "3000", decimal.Decimal("4500.0"))


# -- server-side cursors ---------------------------------------------------------------------


def test_named_cursor_with_itersize(pg_dsn: str, proxy_dsn: str) -> None:
    def scenario(conn: psycopg.Connection) -> Any:
        out = []
        with conn.transaction():
            cur = conn.cursor(name="drv_named")
            cur.itersize = 7
            cur.execute("select g, repeat('x', g % 5) from generate_series(1, 500) g")
            out.append(cur.fetchmany(3))
            out.append(sum(1 for _ in cur))
            cur.close()
            scroll = conn.cursor(name="drv_scroll", scrollable=True)
            scroll.execute("select g from generate_series(1, 50) g")
            scroll.scroll(40, mode="absolute")
            out.append(scroll.fetchone())
            scroll.scroll(-10)
            out.append(scroll.fetchone())
            scroll.close()
        with conn.cursor(name="drv_hold", withhold=True) as held:
            held.execute("select g from generate_series(1, 20) g")
            conn.commit()
            out.append(len(held.fetchall()))
        return out

    assert same_on_both(pg_dsn, proxy_dsn, scenario, connect=psycopg.connect) == [
        [(1, "x"), (2, "xx"), (3, "xxx")],
        497,
        (41,),
        (32,),
        20,
    ]


# -- COPY ------------------------------------------------------------------------------------


def test_copy_text_and_binary_both_directions(pg_dsn: str, proxy_dsn: str, table: str) -> None:
    def scenario(conn: psycopg.Connection) -> Any:
        conn.execute(f"create table {table} (id int, name text, amount numeric, at timestamptz)")
        at = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
        cur = conn.cursor()
        with cur.copy(f"copy {table} from stdin") as copy:
            for i in range(1000):
                copy.write_row((i, f"name\t{i}", decimal.Decimal(i) / 8, at))
        text_in = cur.rowcount
        with cur.copy(f"copy {table} from stdin (format binary)") as copy:
            copy.set_types(["int4", "text", "numeric", "timestamptz"])
            for i in range(1000, 1500):
                copy.write_row((i, None, decimal.Decimal(-i), at))
        binary_in = cur.rowcount
        raw = b""
        with cur.copy(f"copy (select * from {table} order by id) to stdout") as copy:
            for chunk in copy:
                raw += bytes(chunk)
        with cur.copy(
            f"copy (select * from {table} order by id) to stdout (format binary)"
        ) as copy:
            copy.set_types(["int4", "text", "numeric", "timestamptz"])
            rows = list(copy.rows())
        # A COPY FROM that fails on the server mid-stream.
        with pytest.raises(errors.InvalidTextRepresentation) as bad:  # noqa: SIM117
            with cur.copy(f"copy {table} (id) from stdin") as copy:
                copy.write(b"1\nnope\n")
        conn.rollback()
        return text_in, binary_in, raw, rows, bad.value.sqlstate

    text_in, binary_in, raw, rows, bad = same_on_both(
        pg_dsn, proxy_dsn, scenario, connect=psycopg.connect
    )
    assert (text_in, binary_in, bad) == (1000, 500, "22P02")
    assert raw.splitlines()[1] == b"1\tname\\t1\t0.125\t2024-05-06 07:08:09+00"
    assert len(rows) == 1500
    assert rows[-1][:3] == (1499, None, decimal.Decimal(-1499))


# -- transactions --------------------------------------------------------------------------


def test_autocommit_and_transaction_status(pg_dsn: str, proxy_dsn: str, table: str) -> None:
    def scenario(conn: psycopg.Connection) -> Any:
        st = [conn.info.transaction_status]
        conn.execute(f"create table {table} (id int primary key)")
        st.append(conn.info.transaction_status)  # INTRANS: psycopg began implicitly
        conn.commit()
        st.append(conn.info.transaction_status)
        conn.execute(f"insert into {table} values (1)")
        with pytest.raises(errors.UniqueViolation):
            conn.execute(f"insert into {table} values (1)")
        st.append(conn.info.transaction_status)
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("select 1")
        conn.rollback()
        st.append(conn.info.transaction_status)
        with conn.transaction():
            conn.execute(f"insert into {table} values (2)")
            with pytest.raises(errors.UniqueViolation), conn.transaction():  # savepoint
                conn.execute(f"insert into {table} values (2)")
            st.append(conn.info.transaction_status)
        st.append(conn.info.transaction_status)
        conn.autocommit = True
        conn.execute(f"insert into {table} values (3)")
        st.append(conn.info.transaction_status)
        with pytest.raises(errors.UniqueViolation):
            conn.execute(f"insert into {table} values (3)")
        st.append(conn.info.transaction_status)
        got = ids(conn, table)
        conn.execute(f"drop table {table}")
        return [s.name for s in st], got

    assert same_on_both(pg_dsn, proxy_dsn, scenario, connect=psycopg.connect) == (
        ["IDLE", "INTRANS", "IDLE", "INERROR", "IDLE", "INTRANS", "IDLE", "IDLE", "IDLE"],
        [2, 3],
    )


def test_error_fields_match(pg_dsn: str, proxy_dsn: str) -> None:
    def scenario(conn: psycopg.Connection) -> Any:
        out = []
        for sql in ("select 1/0", "select * from nope_pg3", "select 'x'::int", "selct"):
            with pytest.raises(psycopg.Error) as info:
                conn.execute(sql)
            d = info.value.diag
            out.append(
                (
                    type(info.value).__name__,
                    d.sqlstate,
                    d.severity,
                    d.severity_nonlocalized,
                    d.message_primary,
                    d.statement_position,
                    d.source_function,
                )
            )
        return out

    out = same_on_both(
        pg_dsn, proxy_dsn, scenario, connect=partial(psycopg.connect, autocommit=True)
    )
    assert [o[1] for o in out] == ["22012", "42P01", "22P02", "42601"]


# -- notifications and cancel ------------------------------------------------------------------


@pytest.mark.parametrize("notifier_side", ["direct", "proxy"])
def test_notifications(pg_dsn: str, proxy_dsn: str, notifier_side: str) -> None:
    channel = unique("pg3_chan")
    notifier_dsn = pg_dsn if notifier_side == "direct" else proxy_dsn
    with (
        psycopg.connect(proxy_dsn, autocommit=True) as listener,
        psycopg.connect(notifier_dsn, autocommit=True) as notifier,
    ):
        listener.execute(f"listen {channel}")
        pid = notifier.execute("select pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        notifier.execute(f"notify {channel}, 'one'")
        notifier.execute("select pg_notify(%s, %s)", [channel, "two"])
        got = [(n.channel, n.payload, n.pid) for n in listener.notifies(timeout=5, stop_after=2)]
        assert listener.execute("select 7").fetchone() == (7,)
    assert got == [(channel, "one", pid), (channel, "two", pid)]


@pytest.mark.parametrize("method", ["cancel", "cancel_safe"])
def test_cancel_running_sleep(pg_dsn: str, proxy_process_dsn: str, method: str) -> None:
    """libpq's CancelRequest reaches dbgate, which maps its key to the upstream's.

    Uses the proxy in a separate process: see ``proxy_process_dsn`` for why.
    """

    def scenario(conn: psycopg.Connection) -> Any:
        timer = threading.Timer(0.5, getattr(conn, method))
        start = time.monotonic()
        timer.start()
        try:
            with pytest.raises(errors.QueryCanceled) as info:
                conn.execute("select pg_sleep(10)")
        finally:
            timer.join()
        elapsed = time.monotonic() - start
        assert elapsed < 3, f"{method} took {elapsed:.1f}s"
        status = conn.info.transaction_status
        value = conn.execute("select 'usable'").fetchone()
        return info.value.sqlstate, info.value.diag.message_primary, status.name, value

    got = same_on_both(
        pg_dsn, proxy_process_dsn, scenario, connect=partial(psycopg.connect, autocommit=True)
    )
    assert got == ("57014", "canceling statement due to user request", "IDLE", ("usable",))


async def test_async_connection_pipeline_and_cancel(pg_dsn: str, proxy_dsn: str) -> None:
    """The asyncio flavour of psycopg goes through the same protocol paths."""

    async def scenario(dsn: str) -> Any:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            async with conn.pipeline():
                curs = [await conn.execute("select %s::int * 3", [i]) for i in range(20)]
            values = [(await c.fetchone())[0] for c in curs]  # type: ignore[index]
            with pytest.raises(errors.QueryCanceled):
                await conn.execute("set statement_timeout = 200")
                await conn.execute("select pg_sleep(5)")
            return values, (await (await conn.execute("select 1")).fetchone())

    got = await same_on_both_async(pg_dsn, proxy_dsn, scenario)
    assert got == ([i * 3 for i in range(20)], (1,))


def test_protocol_3_2_and_its_long_cancel_key(pg_dsn: str, proxy_process_dsn: str) -> None:
    """libpq 18 can ask for protocol 3.2; the 32-byte cancel key must still cancel."""

    def scenario(conn: psycopg.Connection) -> Any:
        version = conn.pgconn.full_protocol_version
        timer = threading.Timer(0.5, conn.cancel_safe)
        timer.start()
        try:
            with pytest.raises(errors.QueryCanceled):
                conn.execute("select pg_sleep(10)")
        finally:
            timer.join()
        return version, conn.execute("select 1").fetchone()

    got = same_on_both(
        pg_dsn,
        proxy_process_dsn,
        scenario,
        connect=partial(psycopg.connect, autocommit=True, max_protocol_version="3.2"),
    )
    assert got == (30002, (1,))
