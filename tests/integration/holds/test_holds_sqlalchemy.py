"""Held statements through SQLAlchemy: the psycopg dialect (sync, on a worker
thread) and the asyncpg dialect (async), Core and ORM sessions.

SQLAlchemy runs everything inside a transaction it began itself, so a held
statement is always "inside an explicit transaction" here: refused, the session's
transaction is failed until rollback; approved, the change commits with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

from tests.integration.holds.clients import AsyncpgNotices, PsycopgNotices, check_retry_error
from tests.integration.holds.harness import HoldsEnv


@pytest.fixture(scope="module")
def engine(holds: HoldsEnv) -> Iterator[sa.Engine]:
    url = holds.dsn.replace("postgresql://", "postgresql+psycopg://", 1)
    eng = sa.create_engine(url, poolclass=sa.NullPool)
    yield eng
    eng.dispose()


@pytest.fixture
def worker() -> Iterator[Callable[..., Future[Any]]]:
    with ThreadPoolExecutor(1) as pool:
        yield pool.submit


def notices_of(conn: sa.Connection) -> PsycopgNotices:
    return PsycopgNotices(conn.connection.driver_connection)  # type: ignore[arg-type]


def test_orm_session_approved_commits(
    holds: HoldsEnv, engine: sa.Engine, worker: Callable[..., Future[Any]]
) -> None:
    t = holds.table("sa_approved", 3)
    with Session(engine) as session:
        notices = notices_of(session.connection())
        session.execute(sa.text(f"INSERT INTO {t} (id) VALUES (:i)"), {"i": 10})
        running = worker(session.execute, sa.text(f"UPDATE {t} SET note = :n"), {"n": "orm"})
        holds.app.approve(notices.held())
        assert running.result(30).rowcount == 4
        assert holds.notes(t) == ["n"] * 3  # not committed yet
        session.commit()
    assert holds.notes(t) == ["orm"] * 4


def test_orm_session_rejected_needs_a_rollback(
    holds: HoldsEnv, engine: sa.Engine, worker: Callable[..., Future[Any]]
) -> None:
    t = holds.table("sa_rejected", 3)
    with Session(engine) as session:
        notices = notices_of(session.connection())
        session.execute(sa.text(f"INSERT INTO {t} (id) VALUES (10)"))
        running = worker(session.execute, sa.text(f"DELETE FROM {t}"))
        holds.app.reject(notices.held(), "keep the rows")
        with pytest.raises(exc.ProgrammingError) as info:
            running.result(30)
        assert info.value.orig.sqlstate == "42501"  # type: ignore[union-attr]
        assert "keep the rows" in str(info.value.orig)
        with pytest.raises(exc.InternalError) as aborted:
            session.execute(sa.text("SELECT 1"))
        assert aborted.value.orig.sqlstate == "25P02"  # type: ignore[union-attr]
        session.rollback()
        assert session.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar() == 3


def test_core_expiry_and_retry(holds: HoldsEnv, engine: sa.Engine) -> None:
    e = holds.table("expiring_sa", 3)
    r = holds.table("retry_sa", 3)
    with engine.connect() as conn:
        with pytest.raises(exc.OperationalError) as expired:
            conn.execute(sa.text(f"DELETE FROM {e}"))
        assert expired.value.orig.sqlstate == "57014"  # type: ignore[union-attr]
        conn.rollback()
        update = sa.text(f"UPDATE {r} SET note = :n")
        with pytest.raises(exc.ProgrammingError) as first:
            conn.execute(update, {"n": "again"})
        diag = first.value.orig.diag  # type: ignore[union-attr]
        rid = check_retry_error(diag.message_primary or "", diag.message_hint or "")
        conn.rollback()
        holds.app.approve(rid)
        assert conn.execute(update, {"n": "again"}).rowcount == 3
        conn.commit()
    assert holds.notes(r) == ["again"] * 3 and holds.count(e) == 3


async def test_async_engine_with_asyncpg(holds: HoldsEnv) -> None:
    t = holds.table("sa_async", 3)
    url = holds.dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    eng = create_async_engine(url, poolclass=sa.NullPool)
    try:
        async with eng.connect() as conn:
            raw = await conn.get_raw_connection()
            notices = AsyncpgNotices(raw.driver_connection)  # type: ignore[arg-type]
            stmt = sa.text(f"UPDATE {t} SET note = :n")
            running = asyncio.create_task(conn.execute(stmt, {"n": "async"}))
            await holds.app.aapprove(await notices.held())
            assert (await running).rowcount == 3
            await conn.commit()
            running = asyncio.create_task(conn.execute(sa.text(f"DELETE FROM {t}")))
            await holds.app.areject(await notices.held(), "no")
            with pytest.raises(exc.DBAPIError) as info:
                await running
            assert "rejected by alice: no" in str(info.value)
            await conn.rollback()
    finally:
        await eng.dispose()
    assert holds.notes(t) == ["async"] * 3
