"""A value made from PII stored in a PII column is held; a copy is not.

Read back from a PII column, a value gets the stored column's deterministic token, so
a piece of a value stored there (``substr(email, 1, 1)``) could be matched with the
token of a text the agent stored itself. Constants, parameters and columns are copies;
a token among them is resolved only when it stands for a stored value (``stores``).
"""

from __future__ import annotations

import pytest

from dbgate.pii.lineage import analyze
from tests.unit.pii.test_lineage_hunt import COV

TOKEN = "tok_email_h0123456789abcdef0123456789abcdef"

HELD = [
    "update customers set email = substr(email, 1, 1) where id = 9",
    "update customers set full_name = upper(full_name) where id = 3",
    f"update customers set email = lower('{TOKEN}') where id = 9",
    "insert into customers (id, email) select 9, substr(email, 1, 1) from customers where id = 1",
    "insert into customers (id, email) select 9, email from customers where id = 1"
    " union select 10, lower(email) from customers where id = 2",
    "update customers set email = (select lower(email) from customers where id = 2) where id = 9",
]

COPIES = [
    "update customers set email = email where id = 9",
    "update customers set email = $1 where id = 9",
    f"update customers set email = '{TOKEN}' where id = 9",
    "insert into customers (id, email) values (9, 'a@b.c')",
    "insert into customers select * from customers where id = 1",
    "insert into customers (id, email) select id + 1000, email from customers where id = 1",
    "insert into customers (id, email) values (9, $1::text)",
]


@pytest.mark.parametrize("sql", HELD)
def test_a_value_made_from_pii_stored_in_a_pii_column_is_held(sql: str) -> None:
    writes = analyze(sql, COV).pii_writes
    assert any("made from PII" in w for w in writes), (sql, writes)


@pytest.mark.parametrize("sql", COPIES)
def test_a_copy_stored_in_a_pii_column_is_not(sql: str) -> None:
    assert analyze(sql, COV).pii_writes == [], sql


def test_tokens_and_parameters_stored_in_a_pii_column_are_marked() -> None:
    a = analyze(f"update customers set email = '{TOKEN}' where email = '{TOKEN}'", COV)
    assert sorted(s.stores for s in a.token_sites) == [False, True]  # the filter's is not
    b = analyze("update customers set email = $1 where email = $2", COV)
    assert b.param_stores == {1}
