"""Versioned migrations of the state database, against a real server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from dbgate.state.migrate import (
    MigrationError,
    apply_migrations,
    known_migrations,
    pending_migrations,
)


@pytest.fixture
async def state_conn(pg_server) -> AsyncIterator[asyncpg.Connection]:
    admin = await asyncpg.connect(pg_server.dsn("postgres"))
    try:
        await admin.execute("DROP DATABASE IF EXISTS dbgate_migrations_test WITH (FORCE)")
        await admin.execute("CREATE DATABASE dbgate_migrations_test")
    finally:
        await admin.close()
    conn = await asyncpg.connect(pg_server.dsn("dbgate_migrations_test"))
    try:
        yield conn
    finally:
        await conn.close()


async def test_applies_every_migration_once_and_records_it(state_conn) -> None:
    names = await apply_migrations(state_conn)
    assert names == [m.name for m in known_migrations()]
    assert await apply_migrations(state_conn) == []  # idempotent
    assert await pending_migrations(state_conn) == []
    recorded = await state_conn.fetch("SELECT version FROM dbgate.schema_migrations ORDER BY 1")
    assert [r["version"] for r in recorded] == [m.version for m in known_migrations()]


async def test_concurrent_replicas_migrate_exactly_once(pg_server, state_conn) -> None:
    others = [await asyncpg.connect(pg_server.dsn("dbgate_migrations_test")) for _ in range(3)]
    try:
        results = await asyncio.gather(*(apply_migrations(c) for c in others))
    finally:
        for c in others:
            await c.close()
    applied = [names for names in results if names]
    assert len(applied) == 1, results


async def test_an_edited_applied_migration_is_refused(state_conn) -> None:
    await apply_migrations(state_conn)
    await state_conn.execute(
        "UPDATE dbgate.schema_migrations SET checksum = 'x' WHERE version = '0001'"
    )
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await apply_migrations(state_conn)


async def test_a_database_migrated_by_a_newer_dbgate_is_refused(state_conn) -> None:
    await apply_migrations(state_conn)
    await state_conn.execute(
        "INSERT INTO dbgate.schema_migrations (version, checksum) VALUES ('9999', 'x')"
    )
    with pytest.raises(MigrationError, match="newer dbgate"):
        await pending_migrations(state_conn)
