"""psycopg2 through dbgate behaves exactly as psycopg2 straight to PostgreSQL.

psycopg2 is libpq with client-side parameter interpolation: every statement is a
simple Query, results come back in text format. What it adds to the matrix: COPY via
``copy_expert``, server-side cursors via DECLARE/FETCH, ``pgcode``/``diag`` on errors,
libpq's transaction status and ``PQcancel`` from another thread.
"""

from __future__ import annotations

import datetime as dt
import decimal
import io
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions as ext
import psycopg2.extras
import pytest

from tests.integration.drivers_common import proxy_process_dsn, same_on_both, unique

__all__ = ["proxy_process_dsn"]  # a fixture, used by the cancel test


def connection(dsn: str) -> closing[Any]:
    """A fresh connection to ``dsn``, closed afterwards (psycopg2's own ``with`` only
    ends the transaction)."""
    return closing(psycopg2.connect(dsn))


@pytest.fixture
def table(pg_dsn: str) -> Iterator[str]:
    name = unique("pg2")
    yield name
    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    try:
        conn.cursor().execute(f"drop table if exists {name}")
    finally:
        conn.close()


def test_basic_queries_and_types(pg_dsn: str, proxy_dsn: str) -> None:
    def scenario(conn: Any) -> Any:
        cur = conn.cursor()
        cur.execute(
            "select %s::int, %s::text, %s::numeric, %s::timestamptz, %s::bytea, %s::int[],"
            " '{\"a\": 1}'::jsonb, null::text, 'NaN'::float8::text",
            (
                7,
                'it\'s "quoted"',
                decimal.Decimal("1.50"),
                dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
                psycopg2.Binary(b"\x00\x01"),
                [1, 2],
            ),
        )
        row = cur.fetchone()
        row = (*row[:4], bytes(row[4]), *row[5:])
        desc = [(d.name, d.type_code) for d in cur.description]
        cur.execute("select g, md5(g::text) from generate_series(1, 2000) g")
        many = cur.fetchall()
        dict_cur = conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor)
        dict_cur.execute("select 1 as a, 'b' as b")
        return row, desc, many, dict_cur.fetchall(), conn.server_version

    row, desc, many, dicts, version = same_on_both(pg_dsn, proxy_dsn, scenario, connect=connection)
    assert row[:3] == (7, 'it\'s "quoted"', decimal.Decimal("1.50"))
    assert row[4] == b"\x00\x01"
    assert [d[1] for d in desc[:3]] == [23, 25, 1700]  # int4, text, numeric
    assert row[5:8] == ([1, 2], {"a": 1}, None)
    assert len(many) == 2000
    assert dicts == [{"a": 1, "b": "b"}]
    assert version >= 140000


def test_copy_expert_in_and_out(pg_dsn: str, proxy_dsn: str, table: str) -> None:
    def scenario(conn: Any) -> Any:
        cur = conn.cursor()
        cur.execute(f"create table {table} (id int, name text, note text)")
        conn.commit()
        src = io.StringIO("".join(f'{i},n{i},"a, b {i}"\n' for i in range(3000)))
        cur.copy_expert(f"copy {table} from stdin with (format csv)", src)
        copied_in = cur.rowcount
        out = io.StringIO()
        cur.copy_expert(f"copy (select * from {table} order by id) to stdout with csv header", out)
        binary = io.BytesIO()
        cur.copy_expert(f"copy {table} to stdout with (format binary)", binary)
        with pytest.raises(psycopg2.errors.BadCopyFileFormat) as bad:
            cur.copy_expert(f"copy {table} from stdin with (format csv)", io.StringIO("1,2,3,4\n"))
        conn.rollback()
        cur.execute(f"drop table {table}")
        conn.commit()
        return copied_in, out.getvalue(), len(binary.getvalue()), bad.value.pgcode

    copied_in, csv, binlen, bad = same_on_both(pg_dsn, proxy_dsn, scenario, connect=connection)
    assert copied_in == 3000
    assert csv.splitlines()[:2] == ["id,name,note", '0,n0,"a, b 0"']
    assert binlen > 3000 * 10
    assert bad == "22P04"


def test_named_cursor(pg_dsn: str, proxy_dsn: str) -> None:
    def scenario(conn: Any) -> Any:
        cur = conn.cursor(name="drv_pg2_named")
        cur.itersize = 13
        cur.execute("select g, g * g from generate_series(1, 400) g")
        head = cur.fetchmany(5)
        cur.scroll(100, mode="absolute")
        after_scroll = cur.fetchone()
        rest = list(cur)
        cur.close()
        status = conn.info.transaction_status
        conn.commit()
        return head, after_scroll, len(rest), rest[-1], status

    head, after_scroll, rest_len, last, status = same_on_both(
        pg_dsn, proxy_dsn, scenario, connect=connection
    )
    assert head == [(1, 1), (2, 4), (3, 9), (4, 16), (5, 25)]
    assert after_scroll == (101, 10201)
    assert (rest_len, last) == (299, (400, 160000))
    assert status == ext.TRANSACTION_STATUS_INTRANS


def test_transaction_status_and_pgcode(pg_dsn: str, proxy_dsn: str, table: str) -> None:
    def scenario(conn: Any) -> Any:
        cur = conn.cursor()
        st = [conn.info.transaction_status]
        cur.execute(f"create table {table} (id int primary key, v int check (v > 0))")
        st.append(conn.info.transaction_status)
        conn.commit()
        st.append(conn.info.transaction_status)
        codes = []
        for sql in (
            f"insert into {table} values (1, 1), (1, 1)",
            f"insert into {table} values (2, 0)",
            "select 1/0",
            "select nope from nowhere",
        ):
            try:
                cur.execute(sql)
            except psycopg2.Error as e:
                codes.append((e.pgcode, type(e).__name__, e.diag.message_primary))
                st.append(conn.info.transaction_status)
                conn.rollback()
        st.append(conn.info.transaction_status)
        conn.autocommit = True
        cur.execute(f"insert into {table} values (3, 3)")
        st.append(conn.info.transaction_status)
        cur.execute(f"select count(*) from {table}")
        count = cur.fetchone()[0]
        cur.execute(f"drop table {table}")
        return st, codes, count

    st, codes, count = same_on_both(pg_dsn, proxy_dsn, scenario, connect=connection)
    idle, intrans, inerror = (
        ext.TRANSACTION_STATUS_IDLE,
        ext.TRANSACTION_STATUS_INTRANS,
        ext.TRANSACTION_STATUS_INERROR,
    )
    assert st == [idle, intrans, idle, inerror, inerror, inerror, inerror, idle, idle]
    assert [c[0] for c in codes] == ["23505", "23514", "22012", "42P01"]
    assert codes[0][1] == "UniqueViolation"
    assert count == 1


def test_cancel_from_another_thread(pg_dsn: str, proxy_process_dsn: str) -> None:
    """CancelRequest through dbgate's key map; uses a proxy process (see drivers_common)."""

    def scenario(conn: Any) -> Any:
        conn.autocommit = True
        cur = conn.cursor()
        timer = threading.Timer(0.5, conn.cancel)
        start = time.monotonic()
        timer.start()
        try:
            with pytest.raises(psycopg2.errors.QueryCanceled) as info:
                cur.execute("select pg_sleep(10)")
        finally:
            timer.join()
        elapsed = time.monotonic() - start
        assert elapsed < 3, f"cancel took {elapsed:.1f}s"
        cur.execute("select 'usable'")
        return info.value.pgcode, cur.fetchone(), conn.info.transaction_status

    assert same_on_both(pg_dsn, proxy_process_dsn, scenario, connect=connection) == (
        "57014",
        ("usable",),
        ext.TRANSACTION_STATUS_IDLE,
    )


def test_notices_and_notifies(pg_dsn: str, proxy_dsn: str) -> None:
    channel = unique("pg2_chan")

    def scenario(conn: Any) -> Any:
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute("do $$ begin raise notice 'psycopg2 notice %', 42; end $$")
        cur.execute(f"listen {channel}")
        cur.execute(f"notify {channel}, 'self'")
        conn.poll()
        return list(conn.notices), [(n.channel, n.payload) for n in conn.notifies]

    notices, notifies = same_on_both(pg_dsn, proxy_dsn, scenario, connect=connection)
    assert notices == ["NOTICE:  psycopg2 notice 42\n"]
    assert notifies == [(channel, "self")]


def test_large_objects_use_function_call(pg_dsn: str, proxy_dsn: str) -> None:
    """libpq's lo_* API goes through the fast-path FunctionCall message."""

    def scenario(conn: Any) -> Any:
        lo = conn.lobject(0, "wb")
        lo.write(b"dbgate" * 5000)
        oid = lo.oid
        lo.close()
        lo = conn.lobject(oid, "rb")
        lo.seek(6 * 100)
        part = lo.read(12)
        size = lo.seek(0, 2)
        lo.close()
        conn.lobject(oid).unlink()
        conn.commit()
        return part, size, conn.info.transaction_status

    assert same_on_both(pg_dsn, proxy_dsn, scenario, connect=connection) == (
        b"dbgatedbgate",
        30000,
        ext.TRANSACTION_STATUS_IDLE,
    )
