"""Schema changes after which the catalog no longer finds PII a relation holds: what
marks a column is its name, its ``pii:`` comment, its domain's name, a key, a parent,
a generation expression. ``ALTER TABLE t RENAME COLUMN email TO x`` or ``COMMENT ON
COLUMN t.body IS NULL`` (of a ``pii:`` comment), and the stored e-mails read back raw:
held like a copy of PII where the catalog will not find it.

Hand-made schema (no server); tests/integration/pii/test_hunt_unmarking.py runs them
against the demo database.
"""

from __future__ import annotations

import pytest

from dbgate.pii.lineage import analyze
from tests.unit.pii.test_lineage_hunt import COV

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
