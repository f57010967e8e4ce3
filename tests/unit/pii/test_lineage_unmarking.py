"""Schema changes after which the catalog no longer finds PII a relation holds: what
marks a column is its name, its ``pii:`` comment, its domain's name, a key, a parent,
a generation expression. ``ALTER TABLE t RENAME COLUMN email TO x`` or ``COMMENT ON
COLUMN t.body IS NULL`` (of a ``pii:`` comment), and the stored e-mails read back raw:
held like a copy of PII where the catalog will not find it.

An operator the database defines over a SQL function runs that function's code, which
may read any table: as unknown as a call of the function.

Hand-made schema (no server); tests/integration/pii/test_hunt_unmarking.py runs them
against the demo database.
"""

from __future__ import annotations

import pytest

from dbgate.pii.coverage import Coverage
from dbgate.pii.lineage import analyze
from tests.unit.pii.test_lineage_hunt import CATALOG, COV, _snapshot, output_of

HELD = [
    "alter table customers rename column email to contact",
    "alter table customers rename to c2",
    "alter table public.customers rename to c2",
    "alter schema public rename to p2",
    "alter table customers set schema archive",
    "comment on column customers.email is null",
    "comment on column public.customers.full_name is 'who'",
    "alter table customers alter column email type varchar(200)",
    "alter table customers alter column email type text using lower(email)",
    "alter table customers drop constraint customers_email_fkey",
    "alter table customers no inherit people",
    "drop trigger tg on customers",
    "alter domain email_address rename to d",
    "alter type contact_t rename attribute email to x",
    "alter type contact_t set schema archive",
]


@pytest.mark.parametrize("sql", HELD)
def test_a_schema_change_that_may_unmark_pii_is_held(sql: str) -> None:
    assert any("the catalog may no longer find it" in w for w in analyze(sql, COV).pii_writes), sql


NOT_HELD = [
    "alter table orders rename column status to state",
    "alter table orders rename to orders2",
    "comment on column orders.status is 'x'",
    "comment on column customers.email is 'pii:email'",
    "alter table orders alter column status type varchar(20)",
    "alter table customers add column note text",
    "alter table customers alter column full_name set not null",
    "drop trigger tg on orders",
]


@pytest.mark.parametrize("sql", NOT_HELD)
def test_a_schema_change_that_keeps_pii_marked_is_not_held(sql: str) -> None:
    assert analyze(sql, COV).pii_writes == [], sql


# ------------------------------------------------- operators of the database's own code


def _with_operator(name: str) -> Coverage:
    snap = _snapshot()
    snap.coded_operators = frozenset({name})
    return Coverage(snap, CATALOG)


def test_an_operator_over_code_of_the_database_is_unknown() -> None:
    """``CREATE OPERATOR + (leftarg = int, rightarg = text, function = f)`` over a SQL
    function that returns an e-mail: ``1 + 'x'::text`` calls it, as ``f(1, 'x')``."""
    cov = _with_operator("+")
    for sql in ("select 1 + 'x'::text", "select id + 1 from orders", "select 1 + 2"):
        assert output_of(sql, cov).columns[0].unknown, sql
    # other operators, and without such an operator, as before
    assert not output_of("select 'a' || 'b', 1 * 2", cov).union().unknown
    assert not output_of("select 1 + 'x'::text", COV).union().unknown


def test_a_cast_over_code_of_the_database_is_unknown() -> None:
    """``CREATE CAST (int AS wrap) WITH FUNCTION f(int)`` over a SQL function that
    returns an e-mail: ``1::wrap`` calls it."""
    snap = _snapshot()
    snap.coded_casts = frozenset({"wrap"})
    cov = Coverage(snap, CATALOG)
    for sql in (
        "select 1::wrap",
        "select (cast(2 as wrap)).v",
        "select id::public.wrap from orders",
    ):
        assert output_of(sql, cov).columns[0].unknown, sql
    assert not output_of("select 1::text, 'x'::varchar", cov).union().unknown
    assert not output_of("select 1::wrap", COV).union().unknown
