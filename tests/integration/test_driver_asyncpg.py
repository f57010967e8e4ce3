"""asyncpg through dbgate behaves exactly as asyncpg straight to PostgreSQL.

asyncpg is the most protocol-hungry driver there is: binary formats for every type,
named prepared statements, Describe before Bind, row-limited Execute for cursors
(PortalSuspended), COPY both ways, asynchronous NotificationResponse and CancelRequest.
Each test runs one scenario against both targets and compares what came back.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import decimal
import io
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from tests.integration.drivers_common import same_on_both_async, unique


@contextlib.asynccontextmanager
async def connection(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A fresh connection to ``dsn``, closed afterwards."""
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


# -- types ------------------------------------------------------------------------------

TYPES_SQL = """
select 42::int4 as i4, 9000000000::int8 as i8, 1.5::float8 as f8,
       12345678901234567890.123456789::numeric as num, 'Infinity'::numeric as inf,
       'héllo wörld'::text as t, '\\x00ff10'::bytea as b,
       'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid as u,
       '{"k": [1, 2, {"x": null}]}'::json as j, '{"b": 2, "a": 1}'::jsonb as jb,
       '2024-02-29 13:14:15.123456+02'::timestamptz as ts, '2024-02-29'::date as d,
       '1 day 02:03:04'::interval as iv, array[1, null, 3]::int[] as ia,
       array[['a','b'],['c','d']]::text[] as ta, true as bo, null::int as nul,
       '192.168.1.0/24'::cidr as net, row(1, 'x'::text, 2.5::numeric) as anon
"""


async def test_binary_types_match_direct(pg_dsn: str, proxy_dsn: str) -> None:
    ctype = unique("drv_comp")

    async def scenario(conn: asyncpg.Connection) -> Any:
        await conn.execute(f"create type {ctype} as (id int, label text, tags text[])")
        try:
            rows = await conn.fetch(TYPES_SQL)
            comp = await conn.fetchval(f"select row(7, 'seven', array['a','b'])::{ctype}")
            # Parameters go out in binary too.
            echoed = await conn.fetchrow(
                "select $1::numeric n, $2::bytea b, $3::uuid u, $4::jsonb j,"
                " $5::timestamptz ts, $6::int[] a",
                decimal.Decimal("3.14159"),
                b"\x00\x01\xfe",
                uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
                '{"z": 1}',
                dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
                [1, 2, 3],
            )
            return [dict(r) for r in rows], tuple(comp), dict(echoed)
        finally:
            await conn.execute(f"drop type {ctype}")

    rows, comp, echoed = await same_on_both_async(pg_dsn, proxy_dsn, scenario, connect=connection)
    assert rows[0]["i8"] == 9000000000
    assert rows[0]["b"] == b"\x00\xff\x10"
    assert rows[0]["ia"] == [1, None, 3]
    assert rows[0]["anon"] == (1, "x", decimal.Decimal("2.5"))
    assert comp == (7, "seven", ["a", "b"])
    assert echoed["n"] == decimal.Decimal("3.14159")


async def test_text_format_codecs_match_direct(pg_dsn: str, proxy_dsn: str) -> None:
    """With text-format codecs asyncpg asks for text results of those columns."""

    async def scenario(conn: asyncpg.Connection) -> Any:
        for typ in ("numeric", "timestamptz", "jsonb", "uuid"):
            await conn.set_type_codec(
                typ, schema="pg_catalog", encoder=str, decoder=str, format="text"
            )
        return dict(
            await conn.fetchrow(
                "select 1.250::numeric n, '2024-02-29 13:14:15+00'::timestamptz ts,"
                " '{\"a\": 1}'::jsonb j, $1::uuid u",
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            )
        )

    got = await same_on_both_async(pg_dsn, proxy_dsn, scenario, connect=connection)
    assert got["n"] == "1.250"
    assert got["j"] == '{"a": 1}'


# -- prepared statements, executemany, cursors ---------------------------------------------


async def test_prepared_statements_reused(pg_dsn: str, proxy_dsn: str) -> None:
    async def scenario(conn: asyncpg.Connection) -> Any:
        stmt = await conn.prepare("select $1::int * 2 as doubled, $2::text || '!' as shout")
        results = [tuple(await stmt.fetchrow(i, f"v{i}")) for i in range(20)]
        params = [t.name for t in stmt.get_parameters()]
        attrs = [(a.name, a.type.name) for a in stmt.get_attributes()]
        # The connection's statement cache: the same text re-executed reuses its statement.
        cached = [await conn.fetchval("select $1::int + 1", i) for i in range(10)]
        names = await conn.fetchval("select count(*) from pg_prepared_statements")
        return results, params, attrs, cached, names > 0

    results, params, attrs, cached, has_named = await same_on_both_async(
        pg_dsn, proxy_dsn, scenario, connect=connection
    )
    assert results[19] == (38, "v19!")
    assert params == ["int4", "text"]
    assert attrs == [("doubled", "int4"), ("shout", "text")]
    assert cached == list(range(1, 11))
    assert has_named


async def test_executemany_and_its_atomicity(pg_dsn: str, proxy_dsn: str) -> None:
    table = unique("drv_em")

    async def scenario(conn: asyncpg.Connection) -> Any:
        await conn.execute(f"create table {table} (id int primary key, v text)")
        try:
            await conn.executemany(
                f"insert into {table} values ($1, $2)", [(i, f"r{i}") for i in range(200)]
            )
            first = await conn.fetchval(f"select count(*) from {table}")
            # A duplicate in the middle: asyncpg's executemany is atomic, nothing lands.
            with pytest.raises(asyncpg.UniqueViolationError) as info:
                await conn.executemany(
                    f"insert into {table} values ($1, $2)", [(1000, "a"), (5, "dup"), (1001, "b")]
                )
            after = await conn.fetchval(f"select count(*) from {table}")
            return first, info.value.sqlstate, after, conn.is_in_transaction()
        finally:
            await conn.execute(f"drop table {table}")

    got = await same_on_both_async(pg_dsn, proxy_dsn, scenario, connect=connection)
    assert got == (200, "23505", 200, False)


async def test_cursor_prefetch_uses_row_limited_execute(pg_dsn: str, proxy_dsn: str) -> None:
    async def scenario(conn: asyncpg.Connection) -> Any:
        async with conn.transaction():
            streamed = [
                r[0]
                async for r in conn.cursor("select g from generate_series(1, 1000) g", prefetch=37)
            ]
            cur = await conn.cursor("select g, g::text from generate_series(1, 100) g")
            first = await cur.fetch(10)
            moved = await cur.forward(25)
            one = await cur.fetchrow()
            rest = await cur.fetch(1000)
        return streamed, [tuple(r) for r in first], moved, tuple(one), len(rest)

    streamed, first, moved, one, rest = await same_on_both_async(
        pg_dsn, proxy_dsn, scenario, connect=connection
    )
    assert streamed == list(range(1, 1001))
    assert first[0] == (1, "1")
    assert moved == 25
    assert one == (36, "36")
    assert rest == 64


# -- COPY --------------------------------------------------------------------------------


async def test_copy_in_and_out(pg_dsn: str, proxy_dsn: str) -> None:
    table = unique("drv_copy")

    async def scenario(conn: asyncpg.Connection) -> Any:
        await conn.execute(f"create table {table} (id int, name text, amount numeric, b bytea)")
        try:
            n1 = await conn.copy_records_to_table(
                table,
                records=[
                    (i, f"n{i}", decimal.Decimal(i) / 4, bytes([i % 256])) for i in range(500)
                ],
            )
            src = io.BytesIO(
                b"".join(f"{i},csv{i},{i}.5,\\x0a\n".encode() for i in range(1000, 1100))
            )
            n2 = await conn.copy_to_table(table, source=src, format="csv")
            out = io.BytesIO()
            n3 = await conn.copy_from_query(
                f"select * from {table} where id % $1 = 0 order by id", 7, output=out, format="csv"
            )
            binary = io.BytesIO()
            await conn.copy_from_table(table, output=binary, format="binary")
            total = await conn.fetchval(f"select sum(amount) from {table}")
            return n1, n2, n3, out.getvalue(), len(binary.getvalue()), total
        finally:
            await conn.execute(f"drop table {table}")

    n1, n2, n3, csv, binlen, total = await same_on_both_async(
        pg_dsn, proxy_dsn, scenario, connect=connection
    )
    assert (n1, n2) == ("COPY 500", "COPY 100")
    assert n3 == "COPY 87"
    assert csv.startswith(b"0,n0,0,\\x00\n7,n7,1.75,\\x07\n")
    assert binlen > 0
    assert total == sum(decimal.Decimal(i) / 4 for i in range(500)) + sum(
        decimal.Decimal(i) + decimal.Decimal("0.5") for i in range(1000, 1100)
    )


# -- notifications ----------------------------------------------------------------------


@pytest.mark.parametrize("notifier_side", ["direct", "proxy"])
async def test_listen_notify_delivered(pg_dsn: str, proxy_dsn: str, notifier_side: str) -> None:
    channel = unique("drv_chan")
    listener = await asyncpg.connect(proxy_dsn)
    notifier = await asyncpg.connect(pg_dsn if notifier_side == "direct" else proxy_dsn)
    got: asyncio.Queue[tuple[int, str, str]] = asyncio.Queue()
    try:
        await listener.add_listener(
            channel, lambda _c, pid, ch, payload: got.put_nowait((pid, ch, payload))
        )
        notifier_pid = await notifier.fetchval("select pg_backend_pid()")
        await notifier.execute(f"notify {channel}, 'hello 1'")
        await notifier.execute("select pg_notify($1, $2)", channel, "hello 2")
        first = await asyncio.wait_for(got.get(), 5)
        second = await asyncio.wait_for(got.get(), 5)
        # Still a working connection after asynchronous messages.
        assert await listener.fetchval("select 1") == 1
    finally:
        await listener.close()
        await notifier.close()
    # The pid is the notifying *server* backend's pid (what pg_backend_pid() says).
    assert first == (notifier_pid, channel, "hello 1")
    assert second == (notifier_pid, channel, "hello 2")


# -- cancellation -----------------------------------------------------------------------


async def test_timeout_cancels_promptly_and_connection_recovers(
    pg_dsn: str, proxy_dsn: str
) -> None:
    async def scenario(conn: asyncpg.Connection) -> Any:
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(conn.fetch("select pg_sleep(10)"), 0.5)
        elapsed = time.monotonic() - start
        assert elapsed < 3, f"cancel took {elapsed:.1f}s"
        value = await conn.fetchval("select 'still usable'")
        # The server really stopped the sleep: no other backend of ours is still running it.
        busy = await conn.fetchval(
            "select count(*) from pg_stat_activity"
            " where query = 'select pg_sleep(10)' and state = 'active'"
        )
        return value, busy, conn.is_in_transaction()

    got = await same_on_both_async(pg_dsn, proxy_dsn, scenario, connect=connection)
    assert got == ("still usable", 0, False)


async def test_query_timeout_parameter(pg_dsn: str, proxy_dsn: str) -> None:
    async def scenario(conn: asyncpg.Connection) -> Any:
        with pytest.raises(TimeoutError):
            await conn.fetchval("select pg_sleep(10)", timeout=0.3)
        return await conn.fetchval("select 5")

    assert await same_on_both_async(pg_dsn, proxy_dsn, scenario, connect=connection) == 5


# -- transactions and errors --------------------------------------------------------------


async def test_transaction_state(pg_dsn: str, proxy_dsn: str) -> None:
    table = unique("drv_tx")

    async def scenario(conn: asyncpg.Connection) -> Any:
        states = [conn.is_in_transaction()]
        await conn.execute(f"create table {table} (id int primary key)")
        try:
            async with conn.transaction():
                states.append(conn.is_in_transaction())
                await conn.execute(f"insert into {table} values (1)")
            states.append(conn.is_in_transaction())
            tx = conn.transaction()
            await tx.start()
            await conn.execute(f"insert into {table} values (2)")
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.execute(f"insert into {table} values (1)")
            states.append(conn.is_in_transaction())
            with pytest.raises(asyncpg.InFailedSQLTransactionError) as failed:
                await conn.fetchval("select 1")
            await tx.rollback()
            states.append(conn.is_in_transaction())
            # Savepoints (nested transaction blocks).
            async with conn.transaction():
                await conn.execute(f"insert into {table} values (3)")
                with pytest.raises(asyncpg.UniqueViolationError):
                    async with conn.transaction():
                        await conn.execute(f"insert into {table} values (3)")
                states.append(conn.is_in_transaction())
            ids = [r[0] for r in await conn.fetch(f"select id from {table} order by id")]
            return states, failed.value.sqlstate, ids
        finally:
            await conn.execute(f"drop table {table}")

    got = await same_on_both_async(pg_dsn, proxy_dsn, scenario, connect=connection)
    assert got == ([False, True, False, True, False, True], "25P02", [1, 3])


async def test_errors_keep_sqlstate_and_fields(pg_dsn: str, proxy_dsn: str) -> None:
    table = unique("drv_err")

    async def scenario(conn: asyncpg.Connection) -> Any:
        await conn.execute(
            f"create table {table} (id int primary key, v int check (v > 0), n text not null)"
        )
        try:
            seen = []
            for sql in (
                f"insert into {table} values (1, 1, 'a'), (1, 2, 'b')",
                f"insert into {table} values (2, -1, 'a')",
                f"insert into {table} values (3, 1, null)",
                "select 1/0",
                "select * from no_such_table_drv",
                "selec 1",
                "select 'abc'::int",
                "do $$ begin raise exception using errcode = 'P0001', message = 'custom',"
                " detail = 'the detail', hint = 'the hint'; end $$",
            ):
                with pytest.raises(asyncpg.PostgresError) as info:
                    await conn.execute(sql)
                e = info.value
                seen.append(
                    (
                        type(e).__name__,
                        e.sqlstate,
                        e.message,
                        e.detail,
                        e.hint,
                        e.position,
                        e.constraint_name,
                        e.table_name,
                        e.column_name,
                    )
                )
            return seen
        finally:
            await conn.execute(f"drop table {table}")

    seen = await same_on_both_async(pg_dsn, proxy_dsn, scenario, connect=connection)
    assert [s[1] for s in seen] == [
        "23505",
        "23514",
        "23502",
        "22012",
        "42P01",
        "42601",
        "22P02",
        "P0001",
    ]
    assert seen[0][0] == "UniqueViolationError"
    assert seen[0][6] == f"{table}_pkey"
    assert seen[-1][3:5] == ("the detail", "the hint")


async def test_serialization_failure_40001(pg_dsn: str, proxy_dsn: str) -> None:
    table = unique("drv_ser")

    async def run(dsn: str) -> Any:
        a = await asyncpg.connect(dsn)
        b = await asyncpg.connect(dsn)
        try:
            await a.execute(f"create table {table} (id int primary key, v int)")
            await a.execute(f"insert into {table} values (1, 0)")
            tx = a.transaction(isolation="repeatable_read")
            await tx.start()
            assert await a.fetchval(f"select v from {table} where id = 1") == 0
            await b.execute(f"update {table} set v = 1 where id = 1")
            with pytest.raises(asyncpg.SerializationError) as info:
                await a.execute(f"update {table} set v = 2 where id = 1")
            await tx.rollback()
            return info.value.sqlstate, info.value.message, a.is_in_transaction()
        finally:
            await b.execute(f"drop table if exists {table}")
            await a.close()
            await b.close()

    direct = await same_on_both_async(pg_dsn, proxy_dsn, run)
    assert direct[0] == "40001"


# -- server identity and settings ---------------------------------------------------------

SETTING_NAMES = (
    "server_version",
    "server_encoding",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "integer_datetimes",
    "standard_conforming_strings",
    "is_superuser",
    "session_authorization",
    "default_transaction_read_only",
    "in_hot_standby",
    "application_name",
)


async def test_server_version_and_settings(pg_dsn: str, proxy_dsn: str) -> None:
    async def run(dsn: str) -> Any:
        conn = await asyncpg.connect(
            dsn, server_settings={"application_name": "drv-matrix", "search_path": "public"}
        )
        try:
            settings = conn.get_settings()
            before = {n: getattr(settings, n, None) for n in SETTING_NAMES}
            shown = await conn.fetchrow(
                "select current_setting('application_name') app,"
                " current_setting('search_path') sp, current_user cu"
            )
            # A ParameterStatus sent mid-session is seen by the driver.
            await conn.execute("set timezone = 'Asia/Tokyo'")
            tz = conn.get_settings().TimeZone
            return conn.get_server_version(), before, dict(shown), tz
        finally:
            await conn.close()

    direct = await same_on_both_async(pg_dsn, proxy_dsn, run)
    version, settings, shown, tz = direct
    assert version.major >= 14
    assert settings["application_name"] == "drv-matrix"
    assert shown["app"] == "drv-matrix"
    assert shown["sp"] == "public"
    assert tz == "Asia/Tokyo"


async def test_large_values_cross_many_reads(pg_dsn: str, proxy_dsn: str) -> None:
    """Messages far larger than one socket read are framed correctly both ways."""

    async def scenario(conn: asyncpg.Connection) -> Any:
        big_out = await conn.fetchval("select repeat('x', 30000000)")
        big_in = await conn.fetchval("select md5($1::bytea)", bytes(range(256)) * 80_000)
        return len(big_out), big_in

    got = await same_on_both_async(pg_dsn, proxy_dsn, scenario, connect=connection)
    assert got[0] == 30_000_000


async def test_server_pid_matches_backend_pid(proxy_dsn: str) -> None:
    conn = await asyncpg.connect(proxy_dsn)
    try:
        assert conn.get_server_pid() == await conn.fetchval("select pg_backend_pid()")
    finally:
        await conn.close()
