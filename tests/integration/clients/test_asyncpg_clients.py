"""asyncpg's bulk and cursor APIs through the enforcing dbgate and directly.

asyncpg prepares every statement under a name (its statement cache) and sends
integers in binary: the paths where dbgate decides at Bind on binary values.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.integration.clients.conftest import DemoRole
from tests.integration.clients.expect import assert_refused


@pytest.fixture
def scratch(admin_dsn: str, demo_role: DemoRole) -> Iterator[str]:
    """A table of this test's own, made by the server's user (DDL through dbgate is held)."""
    name = f"scratch_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f"create table {name} (id int primary key, label text, amount numeric(12,2))")
        admin.execute(f"grant select, insert, update, delete on {name} to {demo_role.name}")
    yield name
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f"drop table {name}")


Scenario = Callable[[asyncpg.Connection], Awaitable[Any]]


async def on_both(sides: dict[str, str], scenario: Scenario) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for side, dsn in sides.items():
        conn = await asyncpg.connect(dsn)
        try:
            out[side] = await scenario(conn)
            out[side + " in transaction"] = conn.is_in_transaction()
        finally:
            await conn.close()
    return out


def same(got: dict[str, Any]) -> Any:
    assert got["gate"] == got["direct"]
    assert got["gate in transaction"] == got["direct in transaction"]
    return got["gate"]


async def test_copy_from_query_of_a_bounded_query(sides: dict[str, str]) -> None:
    async def scenario(conn: asyncpg.Connection) -> bytes:
        out = io.BytesIO()
        status = await conn.copy_from_query(
            "select id, status, total from orders where id <= $1 order by id", 100, output=out
        )
        assert status == "COPY 100"
        return out.getvalue()

    assert len(same(await on_both(sides, scenario)).splitlines()) == 100


async def test_copy_records_to_table(sides: dict[str, str], scratch: str) -> None:
    async def scenario(conn: asyncpg.Connection) -> Any:
        async with conn.transaction():
            status = await conn.copy_records_to_table(
                scratch,
                records=[(i, f"row {i}", Decimal(i) / 4) for i in range(1, 501)],
                columns=["id", "label", "amount"],
            )
            rows = await conn.fetch(
                f"select count(*), sum(amount), max(label) from {scratch} where id > $1", 0
            )
            await conn.execute(f"delete from {scratch} where id between $1 and $2", 1, 500)
        return status, [tuple(r) for r in rows]

    status, rows = same(await on_both(sides, scenario))
    assert status == "COPY 500"
    assert rows == [(500, Decimal("31312.50"), "row 99")]


async def test_executemany(sides: dict[str, str], scratch: str) -> None:
    async def scenario(conn: asyncpg.Connection) -> Any:
        await conn.executemany(
            f"insert into {scratch} (id, label, amount) values ($1, $2, $3)",
            [(i, f"n{i}", Decimal(i)) for i in range(1, 101)],
        )
        await conn.executemany(
            f"update {scratch} set amount = amount * $1 where id = $2",
            [(2, i) for i in range(1, 101, 2)],
        )
        total = await conn.fetchval(f"select sum(amount) from {scratch} where id <= $1", 100)
        with pytest.raises(asyncpg.UniqueViolationError):  # atomic: nothing of it stays
            await conn.executemany(
                f"insert into {scratch} (id, label) values ($1, $2)", [(1000, "a"), (1, "dup")]
            )
        left = await conn.fetchval(f"select count(*) from {scratch} where id = $1", 1000)
        await conn.execute(f"delete from {scratch} where id <= $1", 1000)
        return total, left

    assert same(await on_both(sides, scenario)) == (Decimal(5050 + 2500), 0)


async def test_cursors(sides: dict[str, str]) -> None:
    async def scenario(conn: asyncpg.Connection) -> Any:
        async with conn.transaction():
            iterated = [
                r["id"]
                async for r in conn.cursor(
                    "select id from orders where customer_id = $1 order by id", 7, prefetch=2
                )
            ]
            cur = await conn.cursor("select id, total from orders where id <= $1 order by id", 60)
            first = await cur.fetch(5)
            await cur.forward(10)
            after = await cur.fetchrow()
            stmt = await conn.prepare(
                "select id from orders where id between $1 and $2 order by id"
            )
            prepared = [r["id"] async for r in stmt.cursor(100, 149, prefetch=7)]
        return iterated, [tuple(r) for r in first], tuple(after), prepared

    iterated, first, after, prepared = same(await on_both(sides, scenario))
    assert iterated and iterated == sorted(iterated)
    assert [r[0] for r in first] == [1, 2, 3, 4, 5] and after[0] == 16
    assert prepared == list(range(100, 150))


async def test_fetch_with_a_bound_limit(sides: dict[str, str]) -> None:
    async def scenario(conn: asyncpg.Connection) -> Any:
        return [r["id"] for r in await conn.fetch("select id from orders order by id limit $1", 10)]

    assert same(await on_both(sides, scenario)) == list(range(1, 11))


async def test_refusal_between_ordinary_statements(sides: dict[str, str]) -> None:
    """A held whole-table read, then the same connection's cached statements again."""
    held = "select ssn from customers"
    got: dict[str, Any] = {}
    for side, dsn in sides.items():
        conn = await asyncpg.connect(dsn)
        try:
            before = await conn.fetchval("select total from orders where id = $1", 11)
            try:
                outcome: Any = len(await conn.fetch(held))
            except asyncpg.InsufficientPrivilegeError as e:
                outcome = e
            after = [
                await conn.fetchval("select total from orders where id = $1", i) for i in (11, 12)
            ]
            got[side] = {"held": outcome, "work": (before, after, conn.is_in_transaction())}
        finally:
            await conn.close()
    assert isinstance(got["direct"]["held"], int) and got["direct"]["held"] > 0
    assert_refused(got["gate"]["held"], held)
    assert got["gate"]["work"] == got["direct"]["work"]
    before, after, in_transaction = got["gate"]["work"]
    assert (after[0], in_transaction) == (before, False)


async def test_a_statement_with_more_parameters_than_a_signed_int16(sides: dict[str, str]) -> None:
    """PostgreSQL describes 32,768 parameters (its count is unsigned); asyncpg refuses
    to bind them itself, and the session goes on (asyncpg's own test_prepare_28)."""
    query = "select 1 where 1 in (" + ",".join(f"${i}" for i in range(1, 32_769)) + ")"

    async def scenario(conn: asyncpg.Connection) -> Any:
        with pytest.raises(asyncpg.InterfaceError) as refused:
            await conn.fetchval(query, *range(1, 32_769))
        return str(refused.value), await conn.fetchval("select 1")

    message, one = same(await on_both(sides, scenario))
    assert "cannot exceed 32767" in message and one == 1
