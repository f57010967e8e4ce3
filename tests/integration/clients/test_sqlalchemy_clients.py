"""SQLAlchemy 2 on psycopg 3 and on asyncpg, through the enforcing dbgate and directly.

Each scenario is one function of a synchronous :class:`~sqlalchemy.engine.Engine`;
for the asyncpg dialect it runs on the async engine's ``sync_engine`` inside
SQLAlchemy's own greenlet bridge, so both dialects run the same ORM code and send
what SQLAlchemy really sends (psycopg 3 and asyncpg both send integers in binary).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from typing import Any, TypeVar

import pytest
from sqlalchemy import (
    MetaData,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeEngine

from tests.integration.clients.conftest import DEMO_CUSTOMERS
from tests.integration.clients.expect import assert_refused
from tests.integration.clients.orm_demo import Customer, Order, run_engine

T = TypeVar("T")
DIALECTS = ("psycopg", "asyncpg")


def on_both(sides: dict[str, str], dialect: str, scenario: Callable[[Engine], T]) -> dict[str, T]:
    return {side: run_engine(dialect, dsn, scenario) for side, dsn in sides.items()}


# -- reflection --------------------------------------------------------------------------


def comparable(value: Any) -> Any:
    """Reflection results with SQL types as their DDL text (type objects compare by id)."""
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [comparable(v) for v in value]
    if isinstance(value, TypeEngine):
        return str(value)
    return value


def reflect(engine: Engine) -> dict[str, Any]:
    metadata = MetaData()
    metadata.reflect(engine)
    insp = inspect(engine)
    return comparable(
        {
            "tables": {
                t.name: [(c.name, str(c.type), c.nullable, c.primary_key) for c in t.columns]
                for t in metadata.sorted_tables
            },
            "table_names": sorted(insp.get_table_names()),
            "view_names": insp.get_view_names(),
            "columns": insp.get_columns("customers"),
            "pk": insp.get_pk_constraint("customers"),
            "fks": [insp.get_foreign_keys(t) for t in ("orders", "payments")],
            "indexes": {t: insp.get_indexes(t) for t in ("customers", "orders", "payments")},
            "uniques": insp.get_unique_constraints("customers"),
            "checks": insp.get_check_constraints("orders"),
            "comment": insp.get_table_comment("customers"),
            "has_table": insp.has_table("orders"),
        }
    )


@pytest.mark.parametrize("dialect", DIALECTS)
def test_reflection(sides: dict[str, str], dialect: str) -> None:
    got = on_both(sides, dialect, reflect)
    assert got["gate"] == got["direct"]
    ref = got["gate"]
    assert ref["table_names"] == ["customers", "orders", "payments"]
    assert [c[0] for c in ref["tables"]["orders"]] == [
        "id",
        "customer_id",
        "total",
        "status",
        "created_at",
    ]
    assert ref["pk"]["constrained_columns"] == ["id"]
    assert ref["fks"][0][0]["referred_table"] == "customers"
    by_name = {c["name"]: c for c in ref["columns"]}
    assert by_name["ssn"]["comment"] == "PII: US social security number"
    assert "customers_email_key" in {i["name"] for i in ref["indexes"]["customers"]}
    assert ref["comment"]["text"].startswith("dbgate demo")


# -- ORM reads -----------------------------------------------------------------------------


def orm_limit_offset(engine: Engine) -> dict[str, Any]:
    with Session(engine) as s:
        return {
            "first5": s.scalars(select(Customer.id).order_by(Customer.id).limit(5)).all(),
            "page3": s.scalars(select(Order.id).order_by(Order.id).offset(20).limit(10)).all(),
            "newest": s.execute(
                select(Order.id, Order.status).order_by(Order.created_at.desc()).limit(3)
            ).all(),
        }


@pytest.mark.parametrize("dialect", DIALECTS)
def test_orm_query_with_limit_and_offset(sides: dict[str, str], dialect: str) -> None:
    got = on_both(sides, dialect, orm_limit_offset)
    assert got["gate"] == got["direct"]
    assert got["gate"]["first5"] == [1, 2, 3, 4, 5]
    assert got["gate"]["page3"] == list(range(21, 31))


def orm_reads_by_key(engine: Engine) -> dict[str, Any]:
    with Session(engine) as s:
        c = s.get(Customer, 42)
        assert c is not None
        return {
            "customer": (c.id, c.email, c.birth_date),
            "orders": s.scalars(
                select(Order.id).where(Order.customer_id == 42).order_by(Order.id)
            ).all(),
            "one": s.execute(select(Order.total, Order.status).where(Order.id == 7)).one(),
            "join": s.execute(
                select(Customer.email, func.sum(Order.total))
                .join(Order, Order.customer_id == Customer.id)
                .where(Customer.id.in_([3, 4, 5]))
                .group_by(Customer.email)
                .order_by(Customer.email)
            ).all(),
            "by_status": s.execute(
                select(Order.status, func.count()).group_by(Order.status).order_by(Order.status)
            ).all(),
            "count": s.scalar(select(func.count()).select_from(Customer)),
        }


@pytest.mark.parametrize("dialect", DIALECTS)
def test_orm_reads_by_primary_key_and_aggregates(sides: dict[str, str], dialect: str) -> None:
    got = on_both(sides, dialect, orm_reads_by_key)
    assert got["gate"] == got["direct"]
    assert got["gate"]["customer"][0] == 42
    assert got["gate"]["count"] == DEMO_CUSTOMERS
    assert len(got["gate"]["by_status"]) == 6


# -- ORM writes ----------------------------------------------------------------------------


def orm_writes_by_key(engine: Engine) -> dict[str, Any]:
    """Insert, update and delete one customer and one order by primary key; commit each."""
    tag = uuid.uuid4().hex[:10]
    with Session(engine) as s:
        customer = Customer(
            full_name="Ada Example",
            email=f"ada.{tag}@example.com",
            phone="555-0100",
            ssn="000-00-0000",
            birth_date=date(1990, 1, 2),
            address="1 Example Road",
        )
        s.add(customer)
        s.commit()
        cid = customer.id
        order = Order(customer_id=cid, total=Decimal("12.50"), status="pending")
        s.add(order)
        s.commit()
        oid = order.id

        order.status = "paid"
        customer.phone = "555-0199"
        s.commit()
        s.expire_all()
        after_update = (s.get(Order, oid).status, s.get(Customer, cid).phone)  # type: ignore[union-attr]

        s.delete(s.get(Order, oid))
        s.commit()
        s.delete(s.get(Customer, cid))
        s.commit()
        gone = (s.get(Order, oid), s.get(Customer, cid))
    return {
        "new_ids_after_dataset": cid > DEMO_CUSTOMERS,
        "after_update": after_update,
        "gone": gone,
    }


@pytest.mark.parametrize("dialect", DIALECTS)
def test_orm_insert_update_delete_by_primary_key(sides: dict[str, str], dialect: str) -> None:
    got = on_both(sides, dialect, orm_writes_by_key)
    assert got["gate"] == got["direct"]
    assert got["gate"] == {
        "new_ids_after_dataset": True,
        "after_update": ("paid", "555-0199"),
        "gone": (None, None),
    }


# -- a pooled connection after a refusal ---------------------------------------------------

#: Held at Parse: a whole column of PII.
PARSE_HELD = select(Customer.email)
PARSE_HELD_SQL = "select email from customers"
#: Held at Bind: a LIMIT above the dump threshold (1000), sent as a bound parameter;
#: 4112 (0x1010) because its binary bytes are valid UTF-8, so the refusal carries the
#: right rule even while binary values are misread (see test_psycopg_clients.py).
BIND_HELD = select(Customer.email).order_by(Customer.id).limit(4112)
BIND_HELD_SQL = "select email from customers order by id limit $1"


def pooled_reuse(held: Any) -> Callable[[Engine], dict[str, Any]]:
    """Refused statement on the pool's only connection, then ordinary work on it again."""

    def scenario(engine: Engine) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with Session(engine) as s:
            pid = s.scalar(text("select pg_backend_pid()"))
            try:
                out["held"] = len(s.execute(held).all())
            except DBAPIError as e:
                out["held"] = e
        with Session(engine) as s:  # checks the same connection out again
            out["same_connection"] = s.scalar(text("select pg_backend_pid()")) == pid
            out["work"] = [
                s.scalar(select(Order.total).where(Order.id == i)) for i in (3, 5, 8, 13)
            ]
            out["customer"] = s.get(Customer, 17).email  # type: ignore[union-attr]
            out["param"] = s.scalar(text("select cast(:x as int) + 1"), {"x": 41})
            out["count"] = s.scalar(
                select(func.count()).select_from(Order).where(Order.customer_id == 9)
            )
            s.commit()
        return out

    return scenario


def check_pooled_reuse(
    sides: dict[str, str], dialect: str, held: Any, held_sql: str, params: Any
) -> None:
    got = {
        side: run_engine(dialect, dsn, pooled_reuse(held), pool_size=1, max_overflow=0)
        for side, dsn in sides.items()
    }
    assert isinstance(got["direct"]["held"], int)  # directly, nothing is refused
    refusal = got["gate"].pop("held")
    assert isinstance(refusal, DBAPIError), refusal
    assert_refused(refusal, held_sql, params)
    got["direct"].pop("held")
    assert got["gate"] == got["direct"]
    assert got["gate"]["same_connection"] is True
    assert got["gate"]["param"] == 42


@pytest.mark.parametrize("dialect", DIALECTS)
def test_pooled_connection_reused_after_a_refusal_at_parse(
    sides: dict[str, str], dialect: str
) -> None:
    check_pooled_reuse(sides, dialect, PARSE_HELD, PARSE_HELD_SQL, None)


@pytest.mark.parametrize("dialect", ["psycopg", "asyncpg"])
def test_pooled_connection_reused_after_a_refusal_at_bind(
    sides: dict[str, str], dialect: str
) -> None:
    check_pooled_reuse(sides, dialect, BIND_HELD, BIND_HELD_SQL, (4112,))
