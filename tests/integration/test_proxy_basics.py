"""Relay basics through the real proxy: results, errors and transaction state match direct."""

from __future__ import annotations

import asyncpg
import pytest


async def test_simple_and_extended_results_match_direct(proxy_dsn: str, pg_dsn: str) -> None:
    queries = [
        ("select 1 as one, 'x'::text as t, null::int as n", ()),
        ("select g, g * 2 from generate_series(1, 500) g", ()),
        ("select $1::int + $2::int as s", (2, 3)),
        ("select array[1,2,3] as a, '{\"k\": 1}'::jsonb as j, now()::date as d", ()),
    ]
    direct = await asyncpg.connect(pg_dsn)
    through = await asyncpg.connect(proxy_dsn)
    try:
        for sql, args in queries:
            assert await through.fetch(sql, *args) == await direct.fetch(sql, *args)
    finally:
        await direct.close()
        await through.close()


async def test_errors_keep_sqlstate_and_session_recovers(proxy_dsn: str) -> None:
    conn = await asyncpg.connect(proxy_dsn)
    try:
        with pytest.raises(asyncpg.UndefinedTableError) as info:
            await conn.fetch("select * from no_such_table_xyz")
        assert info.value.sqlstate == "42P01"
        with pytest.raises(asyncpg.DivisionByZeroError):
            await conn.fetchval("select 1/0")
        assert await conn.fetchval("select 41 + 1") == 42
    finally:
        await conn.close()


async def test_wrong_password_and_unknown_identity_are_refused(
    proxy: object, pg_database: str
) -> None:
    dsn_bad = proxy.dsn(pg_database, password="wrong")  # type: ignore[attr-defined]
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(dsn_bad)
    dsn_unknown = proxy.dsn(pg_database, user="nobody", password="x")  # type: ignore[attr-defined]
    with pytest.raises(asyncpg.InvalidPasswordError) as info:
        await asyncpg.connect(dsn_unknown)
    assert "nobody" in str(info.value)
