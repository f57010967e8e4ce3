"""pandas ``read_sql`` through the enforcing dbgate and directly.

With a SQLAlchemy engine (psycopg 3 dialect) and with a plain DBAPI connection
(psycopg 3; pandas warns that it only tests SQLAlchemy, sqlite3 and ADBC
connections, and works). Frames must be identical on both sides.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
import psycopg
import pytest
from sqlalchemy import create_engine, text

from tests.integration.clients.conftest import DEMO_CUSTOMERS
from tests.integration.clients.expect import assert_refused

BY_STATUS = (
    "select status, count(*) as n, sum(total) as total from orders group by status order by status"
)
ONE_CUSTOMER_SA = "select id, total, status from orders where customer_id = :c order by id"
ONE_CUSTOMER_DBAPI = "select id, total, status from orders where customer_id = %(c)s order by id"
FIRST_ROWS = "select id, customer_id, created_at from orders order by id limit 20"
WHOLE_TABLE = "select * from customers"


@contextmanager
def sqlalchemy_engine(dsn: str) -> Iterator[Any]:
    engine = create_engine(dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def dbapi_connection(dsn: str) -> Iterator[Any]:
    with psycopg.connect(dsn) as conn, warnings.catch_warnings():
        warnings.filterwarnings("ignore", "pandas only supports SQLAlchemy", UserWarning)
        yield conn


def frames(sides: dict[str, str], read: Callable[[str], pd.DataFrame]) -> dict[str, pd.DataFrame]:
    return {side: read(dsn) for side, dsn in sides.items()}


def assert_same(got: dict[str, pd.DataFrame]) -> pd.DataFrame:
    pd.testing.assert_frame_equal(got["gate"], got["direct"])
    return got["gate"]


def test_read_sql_with_an_engine(sides: dict[str, str]) -> None:
    def read(dsn: str) -> pd.DataFrame:
        with sqlalchemy_engine(dsn) as engine:
            parts = [
                pd.read_sql(BY_STATUS, engine),
                pd.read_sql(text(ONE_CUSTOMER_SA), engine, params={"c": 42}),
                pd.read_sql(FIRST_ROWS, engine, parse_dates=["created_at"]),
                pd.read_sql_query("select count(*) as n from customers", engine),
            ]
        return pd.concat({i: p for i, p in enumerate(parts)}, axis=1)

    frame = assert_same(frames(sides, read))
    assert frame[(3, "n")].iloc[0] == DEMO_CUSTOMERS
    assert list(frame[(2, "id")].head(20)) == list(range(1, 21))


def test_read_sql_with_a_dbapi_connection(sides: dict[str, str]) -> None:
    def read(dsn: str) -> pd.DataFrame:
        with dbapi_connection(dsn) as conn:
            parts = [
                pd.read_sql(BY_STATUS, conn),
                pd.read_sql(ONE_CUSTOMER_DBAPI, conn, params={"c": 42}),
                pd.read_sql(FIRST_ROWS, conn, parse_dates=["created_at"]),
            ]
        return pd.concat({i: p for i, p in enumerate(parts)}, axis=1)

    frame = assert_same(frames(sides, read))
    assert set(frame[(0, "status")].dropna()) == {
        "pending",
        "cancelled",
        "paid",
        "shipped",
        "delivered",
        "refunded",
    }


def test_read_sql_with_a_bound_limit(sides: dict[str, str]) -> None:
    sql = "select id, status from orders order by id limit :n"

    def read(dsn: str) -> pd.DataFrame:
        with sqlalchemy_engine(dsn) as engine:
            return pd.read_sql(text(sql), engine, params={"n": 10})

    assert list(assert_same(frames(sides, read))["id"]) == list(range(1, 11))


def test_read_sql_of_a_whole_table_is_refused_and_the_engine_carries_on(
    sides: dict[str, str],
) -> None:
    """``read_sql_table`` reflects (allowed), then reads every row of PII (held)."""
    with sqlalchemy_engine(sides["direct"]) as engine:
        assert len(pd.read_sql_table("customers", engine)) == DEMO_CUSTOMERS
    with sqlalchemy_engine(sides["gate"]) as engine:
        with pytest.raises(pd.errors.DatabaseError) as info:
            pd.read_sql_table("customers", engine)
        assert_refused(info.value, WHOLE_TABLE)
        with pytest.raises(pd.errors.DatabaseError) as info:
            pd.read_sql(WHOLE_TABLE, engine)
        assert_refused(info.value, WHOLE_TABLE)
        assert (
            pd.read_sql(BY_STATUS, engine)["n"].sum()
            == pd.read_sql("select count(*) as n from orders", engine)["n"].iloc[0]
        )
