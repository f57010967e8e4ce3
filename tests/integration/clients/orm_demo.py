"""The demo dataset as SQLAlchemy 2 models, and a runner that drives one scenario on a
fresh engine of a dialect, for the ORM tests through dbgate and straight to PostgreSQL.

The models map the demo's tables as they are (``dbgate demo`` creates them; nothing
here creates or alters a table). Relationships are lazy, so a scenario that does not
touch them sends what the plain columns alone would.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import BigInteger, DateTime, ForeignKey, Identity, Numeric, create_engine, func
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.util import greenlet_spawn

from tests.integration.clients.conftest import run_async

T = TypeVar("T")


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    full_name: Mapped[str]
    email: Mapped[str]
    phone: Mapped[str]
    ssn: Mapped[str]
    birth_date: Mapped[date]
    address: Mapped[str]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    orders: Mapped[list[Order]] = relationship(back_populates="customer", order_by="Order.id")


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    customer_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("customers.id"))
    total: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    status: Mapped[str]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    customer: Mapped[Customer] = relationship(back_populates="orders")
    payments: Mapped[list[Payment]] = relationship(back_populates="order", order_by="Payment.id")


class Payment(Base):
    __tablename__ = "payments"
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    order_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("orders.id"))
    card_number: Mapped[str]
    amount: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    order: Mapped[Order] = relationship(back_populates="payments")


def run_engine(dialect: str, dsn: str, scenario: Callable[[Engine], T], **engine_kw: Any) -> T:
    """``scenario(engine)`` on a fresh engine of ``dialect`` for ``dsn``, then disposed.

    For asyncpg it runs on the async engine's ``sync_engine`` inside SQLAlchemy's own
    greenlet bridge, so every dialect runs the same ORM code and sends what SQLAlchemy
    really sends."""
    url = dsn.replace("postgresql://", f"postgresql+{dialect}://", 1)
    if dialect != "asyncpg":
        engine = create_engine(url, **engine_kw)
        try:
            return scenario(engine)
        finally:
            engine.dispose()

    async def main() -> T:
        async_engine = create_async_engine(url, **engine_kw)
        try:
            return await greenlet_spawn(scenario, async_engine.sync_engine)
        finally:
            await async_engine.dispose()

    return run_async(main())  # type: ignore[no-any-return]
