"""SQLAlchemy ORM work through dbgate with PII tokenization on, against the same work
straight to PostgreSQL, on the psycopg 3, asyncpg and pg8000 dialects.

What the ORM sends is what SQLAlchemy really sends: relationships loaded with
``joinedload`` (with ``.limit()`` the limited query becomes a FROM sub-select with a
bound ``LIMIT $1::INTEGER``, the collection joined to it), ``subqueryload``,
``selectinload``, lazy loads, ``offset`` pages, ``session.get``, ``stream_results``,
inserts with ``RETURNING`` of server defaults, bulk inserts, updates and deletes by key.
Every scenario is allowed under the shipped rule pack and PII catalog; its clean
attributes equal the direct run's and its PII attributes are tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import (
    func,
    insert,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import (
    Session,
    contains_eager,
    joinedload,
    selectinload,
    subqueryload,
)

from tests.integration.clients.conftest import DemoRole, start_pii_proxy
from tests.integration.clients.orm_demo import Base, Customer, Order, run_engine
from tests.integration.conftest import RunningProxy

DIALECTS = ("psycopg", "asyncpg", "pg8000")
PII = frozenset({"full_name", "email", "phone", "ssn", "birth_date", "address", "card_number"})


@pytest.fixture(scope="module")
def pii_gate(pg_server: Any, demo_role: DemoRole, demo_db: str) -> Iterator[RunningProxy]:
    running = start_pii_proxy(pg_server, demo_role)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def pii_sides(direct_dsn: str, pii_gate: RunningProxy, demo_db: str) -> dict[str, str]:
    return {"direct": direct_dsn, "gate": pii_gate.dsn(demo_db)}


def run_session(dialect: str, dsn: str, scenario: Callable[[Session], Any]) -> Any:
    """``scenario(session)`` on a fresh engine of ``dialect``, rolled back, then disposed."""

    def in_session(engine: Engine) -> Any:
        with Session(engine) as session:
            try:
                return scenario(session)
            finally:
                session.rollback()

    return run_engine(dialect, dsn, in_session)


def column_keys(obj: Base) -> list[str]:
    return [attr.key for attr in obj.__mapper__.column_attrs]


def seen(value: Any) -> Any:
    """Mapped objects as their column attributes, PII ones as a marker: what must
    agree with the direct run. (A PII value through dbgate must be a token.)"""
    if isinstance(value, Base):
        out = {}
        for key in column_keys(value):
            attr = getattr(value, key)
            out[key] = "<pii>" if key in PII else attr
        return out
    if isinstance(value, (list, tuple)):
        return [seen(v) for v in value]
    return value


def pii_values(value: Any) -> list[Any]:
    if isinstance(value, Base):
        return [getattr(value, k) for k in column_keys(value) if k in PII]
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in pii_values(item)]
    return []


def both(pii_sides: dict[str, str], dialect: str, scenario: Callable[[Session], Any]) -> None:
    """Run on both sides: the same clean values; through dbgate, PII as tokens (text) or
    stand-ins of their type (dates)."""
    results = {}
    for side, dsn in pii_sides.items():

        def capture(session: Session, side: str = side) -> Any:
            got = scenario(session)
            return seen(got), pii_values(got)

        results[side] = run_session(dialect, dsn, capture)
    (direct, direct_pii), (gate, gate_pii) = results["direct"], results["gate"]
    assert gate == direct
    assert len(gate_pii) == len(direct_pii)
    for raw, token in zip(direct_pii, gate_pii, strict=True):
        if isinstance(raw, str):
            assert token.startswith("tok_") and token != raw, token
        else:  # a stand-in date: under the suite's random key, one may fall on the value
            assert type(token) is type(raw), token


def with_orders(customers: Any) -> list[Any]:
    return [(c, list(c.orders)) for c in customers]


SCENARIOS: dict[str, Callable[[Session], Any]] = {
    "get": lambda s: [s.get(Customer, 42)],
    "query_filter_limit": lambda s: (
        s.query(Order).filter(Order.status == "paid").order_by(Order.id).limit(5).all()
    ),
    "select_where": lambda s: s.scalars(
        select(Customer).where(Customer.id < 4).order_by(Customer.id)
    ).all(),
    "joinedload_limit": lambda s: with_orders(
        s.scalars(
            select(Customer).options(joinedload(Customer.orders)).order_by(Customer.id).limit(3)
        ).unique()
    ),
    "joinedload_limit_offset": lambda s: with_orders(
        s.scalars(
            select(Customer)
            .options(joinedload(Customer.orders))
            .order_by(Customer.id)
            .limit(3)
            .offset(10)
        ).unique()
    ),
    "joinedload_filter_limit": lambda s: with_orders(
        s.scalars(
            select(Customer)
            .options(joinedload(Customer.orders))
            .where(Customer.email.like("%@gmail.com"))
            .order_by(Customer.id)
            .limit(3)
        ).unique()
    ),
    # a page sorted by a PII column: the ORM orders the outer query by the
    # sub-select's column (``ORDER BY anon_1.full_name``)
    "joinedload_order_by_pii_limit": lambda s: with_orders(
        s.scalars(
            select(Customer)
            .options(joinedload(Customer.orders))
            .order_by(Customer.full_name, Customer.id)
            .limit(3)
        ).unique()
    ),
    "order_by_pii_offset_page": lambda s: s.scalars(
        select(Customer).order_by(Customer.email).limit(5).offset(5)
    ).all(),
    "joinedload_many_to_one_limit": lambda s: [
        (o, o.customer)
        for o in s.scalars(
            select(Order).options(joinedload(Order.customer)).order_by(Order.id).limit(5)
        )
    ],
    "subqueryload_limit": lambda s: with_orders(
        s.scalars(
            select(Customer).options(subqueryload(Customer.orders)).order_by(Customer.id).limit(3)
        )
    ),
    "selectinload": lambda s: with_orders(
        s.scalars(
            select(Customer)
            .options(selectinload(Customer.orders).selectinload(Order.payments))
            .where(Customer.id < 4)
            .order_by(Customer.id)
        )
    ),
    "selectinload_limit": lambda s: with_orders(
        s.scalars(
            select(Customer).options(selectinload(Customer.orders)).order_by(Customer.id).limit(3)
        )
    ),
    "lazy_load": lambda s: list(s.get(Customer, 7).orders),  # type: ignore[union-attr]
    "offset_page": lambda s: s.scalars(select(Order).order_by(Order.id).limit(20).offset(40)).all(),
    "offset_page_of_customers": lambda s: s.scalars(
        select(Customer).order_by(Customer.created_at.desc(), Customer.id).limit(10).offset(100)
    ).all(),
    "count": lambda s: [s.scalar(select(func.count()).select_from(Customer))],
    "query_count": lambda s: [s.query(Order).filter(Order.status == "paid").count()],
    "group_by": lambda s: [
        tuple(r)
        for r in s.execute(
            select(Order.status, func.count(), func.sum(Order.total))
            .group_by(Order.status)
            .order_by(Order.status)
        )
    ],
    "contains_eager": lambda s: [
        (o, o.customer)
        for o in s.scalars(
            select(Order)
            .join(Order.customer)
            .options(contains_eager(Order.customer))
            .where(Order.id < 5)
            .order_by(Order.id)
        )
    ],
    "relationship_any": lambda s: s.scalars(
        select(Customer.id)
        .where(Customer.orders.any(Order.status == "refunded"))
        .order_by(Customer.id)
        .limit(5)
    ).all(),
    "stream_results": lambda s: list(
        s.execute(
            select(Customer).where(Customer.id < 30).order_by(Customer.id),
            execution_options={"stream_results": True, "yield_per": 10},
        ).scalars()
    ),
}


def insert_with_server_defaults(s: Session) -> Any:
    order = Order(customer_id=42, total=Decimal("3.21"), status="pending")
    s.add(order)
    s.flush()  # INSERT ... RETURNING id, created_at
    return [order.status, order.total, order.created_at is not None, order.id is not None]


def insert_customer_and_refresh(s: Session) -> Any:
    customer = Customer(
        full_name="Zed Quinn",
        email="zed.quinn@example.com",
        phone="555-0123",
        ssn="000-00-0000",
        birth_date=date(1990, 1, 1),
        address="1 Main St",
        created_at=datetime(2024, 1, 1, tzinfo=UTC),
    )
    s.add(customer)
    s.flush()
    s.refresh(customer)
    return [customer.created_at, customer.id is not None]


def bulk_inserts(s: Session) -> Any:
    s.add_all([Order(customer_id=i, total=Decimal("1.00"), status="pending") for i in range(1, 6)])
    s.flush()
    s.execute(insert(Order), [{"customer_id": i, "total": 2, "status": "pending"} for i in (1, 2)])
    rows = s.execute(
        insert(Order).returning(Order.customer_id, Order.status),
        [{"customer_id": i, "total": 2, "status": "pending"} for i in (3, 4)],
    )
    return sorted(tuple(r) for r in rows)


def update_and_delete_by_key(s: Session) -> Any:
    order = s.get(Order, 11)
    assert order is not None
    order.status = "shipped"
    customer = s.get(Customer, 43)
    assert customer is not None
    customer.phone = "555-0101"
    s.flush()
    extra = Order(customer_id=42, total=1, status="pending")
    s.add(extra)
    s.flush()
    s.delete(extra)
    s.flush()
    return [order.status, s.get(Order, 11)]


def lookup_by_token(s: Session) -> Any:
    """The token the agent read is a filter value like any other (on the direct side the
    'token' is the raw value itself)."""
    customer = s.get(Customer, 42)
    assert customer is not None
    email = customer.email
    ids = s.scalars(select(Customer.id).where(Customer.email == email)).all()
    one = s.query(Customer).filter_by(email=email).one()
    orders = s.scalars(
        select(Order).join(Order.customer).where(Customer.email == email).order_by(Order.id)
    ).all()
    return [ids, one.id, orders]


SCENARIOS.update(
    {
        "insert_with_server_defaults": insert_with_server_defaults,
        "insert_customer_and_refresh": insert_customer_and_refresh,
        "bulk_inserts": bulk_inserts,
        "update_and_delete_by_key": update_and_delete_by_key,
        "lookup_by_token": lookup_by_token,
    }
)


@pytest.mark.parametrize("name", list(SCENARIOS))
@pytest.mark.parametrize("dialect", DIALECTS)
def test_orm_workload_runs_with_only_pii_tokenized(
    pii_sides: dict[str, str], dialect: str, name: str
) -> None:
    both(pii_sides, dialect, SCENARIOS[name])


def test_a_large_joinedload_limit_is_still_held(pii_sides: dict[str, str]) -> None:
    """The LIMIT of the ORM's sub-select bounds the join only when it is small: a page
    of 5,000 customers with their orders is still a dump of orders, held."""
    from sqlalchemy.exc import DBAPIError

    def scenario(s: Session) -> Any:
        return with_orders(
            s.scalars(
                select(Customer)
                .options(joinedload(Customer.orders))
                .order_by(Customer.id)
                .limit(5000)
            ).unique()
        )

    with pytest.raises(DBAPIError) as raised:
        run_session("psycopg", pii_sides["gate"], scenario)
    assert getattr(raised.value.orig, "sqlstate", None) == "42501"
    assert "hold-dump" in (raised.value.orig.diag.message_hint or "")  # type: ignore[union-attr]
