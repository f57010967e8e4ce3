"""SQLAlchemy 2 through dbgate behaves exactly as straight to PostgreSQL, per dialect.

SQLAlchemy is how most agent frameworks reach a database. On top of the drivers it
adds dialect initialisation queries (version, standard_conforming_strings, isolation
level), DDL for ``create_all``, ORM unit-of-work batches (``insert ... returning``
with many rows, executemany) and the catalog queries behind ``inspect()``. Each
scenario runs the same ORM/introspection work on both targets in a schema made for
the test, with every dialect we ship drivers for.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from tests.integration.drivers_common import same_on_both, same_on_both_async, unique

SYNC_DIALECTS = ["psycopg", "psycopg2", "pg8000"]


def engine_url(dsn: str, dialect: str) -> str:
    return dsn.replace("postgresql://", f"postgresql+{dialect}://", 1)


def make_models(schema: str) -> tuple[type, type, type]:
    """Fresh declarative classes bound to ``schema``."""

    class Base(DeclarativeBase):
        pass

    class Customer(Base):
        __tablename__ = "customer"
        __table_args__ = (sa.UniqueConstraint("email"), {"schema": schema})
        id: Mapped[int] = mapped_column(primary_key=True)
        email: Mapped[str] = mapped_column(sa.String(200))
        name: Mapped[str | None]
        created: Mapped[dt.datetime] = mapped_column(
            sa.DateTime(timezone=True), server_default=sa.func.now()
        )
        orders: Mapped[list[Order]] = relationship(back_populates="customer")

    class Order(Base):
        __tablename__ = "orders"
        __table_args__ = (sa.Index("orders_status_idx", "status"), {"schema": schema})
        id: Mapped[int] = mapped_column(primary_key=True)
        customer_id: Mapped[int] = mapped_column(sa.ForeignKey(f"{schema}.customer.id"))
        total: Mapped[decimal.Decimal] = mapped_column(sa.Numeric(10, 2))
        status: Mapped[str] = mapped_column(sa.String(20), default="new")
        meta: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
        customer: Mapped[Customer] = relationship(back_populates="orders")

    return Base, Customer, Order


def sqlstate_of(exc: BaseException | None) -> str | None:
    """The SQLSTATE of a driver exception, whichever driver raised it."""
    for attr in ("sqlstate", "pgcode"):  # psycopg / asyncpg adapter, psycopg2
        if value := getattr(exc, attr, None):
            return str(value)
    for arg in getattr(exc, "args", ()):  # pg8000: the server's fields as a dict
        if isinstance(arg, dict):
            return arg.get("C")
    return None


def orm_work(session: Session, customer_cls: Any, order_cls: Any) -> list[Any]:
    """Create, read, update and delete through the ORM; return what was observed."""
    seen: list[Any] = []
    customers = [
        customer_cls(id=i, email=f"user{i}@example.com", name=f"User {i}") for i in range(1, 21)
    ]
    session.add_all(customers)
    session.flush()
    session.add_all(
        order_cls(id=i, customer_id=(i % 20) + 1, total=decimal.Decimal(i) / 4, meta={"n": i})
        for i in range(1, 101)
    )
    session.commit()
    top = session.scalars(
        sa.select(customer_cls).where(customer_cls.id <= 3).order_by(customer_cls.id)
    ).all()
    seen.append([(c.id, c.email, len(c.orders)) for c in top])
    totals = session.execute(
        sa.select(order_cls.customer_id, sa.func.sum(order_cls.total))
        .group_by(order_cls.customer_id)
        .order_by(order_cls.customer_id)
        .limit(3)
    ).all()
    seen.append([tuple(r) for r in totals])
    session.execute(sa.update(order_cls).where(order_cls.total > 20).values(status="big"))
    o = session.get(order_cls, 5)
    o.status = "edited"
    session.commit()
    seen.append(
        session.execute(
            sa.select(order_cls.status, sa.func.count())
            .group_by(order_cls.status)
            .order_by(order_cls.status)
        ).all()
    )
    session.execute(sa.delete(order_cls).where(order_cls.customer_id == 1))
    session.delete(session.get(customer_cls, 1))
    session.commit()
    seen.append(session.scalar(sa.select(sa.func.count()).select_from(order_cls)))
    # A failing flush rolls back and the session keeps working.
    session.add(customer_cls(id=99, email="user2@example.com"))
    with pytest.raises(sa.exc.IntegrityError) as info:
        session.commit()
    session.rollback()
    seen.append(sqlstate_of(info.value.orig))
    seen.append(session.scalar(sa.select(sa.func.count()).select_from(customer_cls)))
    seen.append(session.get(order_cls, 2).meta)
    return [tuple(map(tuple, s)) if isinstance(s, list) else s for s in seen]


def introspect(conn: sa.Connection, schema: str) -> dict[str, Any]:
    insp = sa.inspect(conn)
    return {
        "tables": sorted(insp.get_table_names(schema=schema)),
        "columns": {
            t: [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(t, schema)]
            for t in ("customer", "orders")
        },
        "pk": insp.get_pk_constraint("orders", schema)["constrained_columns"],
        "fks": [
            (fk["constrained_columns"], fk["referred_table"], fk["referred_columns"])
            for fk in insp.get_foreign_keys("orders", schema)
        ],
        "indexes": sorted(
            (i["name"], tuple(i["column_names"])) for i in insp.get_indexes("orders", schema)
        ),
        "uniques": [u["column_names"] for u in insp.get_unique_constraints("customer", schema)],
        "schemas": schema in insp.get_schema_names(),
    }


def run_sync(dsn: str, dialect: str, schema: str) -> Any:
    base, customer_cls, order_cls = make_models(schema)
    engine = sa.create_engine(engine_url(dsn, dialect))
    try:
        with engine.begin() as conn:
            conn.execute(sa.schema.CreateSchema(schema))
            base.metadata.create_all(conn)
        try:
            with Session(engine) as session:
                seen = orm_work(session, customer_cls, order_cls)
            with engine.connect() as conn:
                found = introspect(conn, schema)
                version = conn.dialect.server_version_info
        finally:
            with engine.begin() as conn:
                conn.execute(sa.schema.DropSchema(schema, cascade=True))
    finally:
        engine.dispose()
    return seen, found, version


EXPECTED_ORM = [
    ((1, "user1@example.com", 5), (2, "user2@example.com", 5), (3, "user3@example.com", 5)),
    (
        (1, decimal.Decimal("75.00")),  # orders 20, 40, 60, 80, 100, each total i/4
        (2, decimal.Decimal("51.25")),
        (3, decimal.Decimal("52.50")),
    ),
    (("big", 20), ("edited", 1), ("new", 79)),
    95,
    "23505",
    19,
    {"n": 2},
]


def check(result: Any, schema: str) -> None:
    seen, found, version = result
    assert seen == EXPECTED_ORM
    assert found["tables"] == ["customer", "orders"]
    assert found["columns"]["orders"] == [
        ("id", "INTEGER", False),
        ("customer_id", "INTEGER", False),
        ("total", "NUMERIC(10, 2)", False),
        ("status", "VARCHAR(20)", False),
        ("meta", "JSON", False),
    ]
    assert found["fks"] == [(["customer_id"], "customer", ["id"])]
    assert ("orders_status_idx", ("status",)) in found["indexes"]
    assert found["uniques"] == [["email"]]
    assert found["schemas"] is True
    assert version[0] >= 14


@pytest.mark.parametrize("dialect", SYNC_DIALECTS)
def test_orm_and_inspect_sync_dialects(pg_dsn: str, proxy_dsn: str, dialect: str) -> None:
    schema = unique(f"sa_{dialect}")
    check(same_on_both(pg_dsn, proxy_dsn, lambda dsn: run_sync(dsn, dialect, schema)), schema)


async def run_async(dsn: str, schema: str) -> Any:
    # Imported here: it needs greenlet (sqlalchemy[asyncio]); without it only this
    # test fails, not the whole module.
    from sqlalchemy.ext.asyncio import create_async_engine

    base, customer_cls, order_cls = make_models(schema)
    engine = create_async_engine(engine_url(dsn, "asyncpg"))
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.schema.CreateSchema(schema))
            await conn.run_sync(base.metadata.create_all)
        try:
            async with engine.connect() as conn:
                # The ORM's sync API on the asyncpg dialect, via greenlets.
                seen = await conn.run_sync(
                    lambda sync_conn: orm_work(
                        Session(bind=sync_conn, join_transaction_mode="create_savepoint"),
                        customer_cls,
                        order_cls,
                    )
                )
                await conn.commit()
            async with engine.connect() as conn:
                found = await conn.run_sync(lambda c: introspect(c, schema))
                version = conn.dialect.server_version_info
        finally:
            async with engine.begin() as conn:
                await conn.execute(sa.schema.DropSchema(schema, cascade=True))
    finally:
        await engine.dispose()
    return seen, found, version


async def test_orm_and_inspect_asyncpg_dialect(pg_dsn: str, proxy_dsn: str) -> None:
    schema = unique("sa_asyncpg")
    got = await same_on_both_async(
        pg_dsn, proxy_dsn, lambda dsn: asyncio.wait_for(run_async(dsn, schema), 60)
    )
    check(got, schema)
