"""DISTINCT and GROUP BY are judged alike.

``SELECT DISTINCT x FROM t`` and ``SELECT x FROM t GROUP BY x`` return the same rows,
so whatever allows one allows the other and whatever holds one holds the other. Each
row: the DISTINCT form, the GROUP BY form, the categories both must have, and the
default pack's action for both.

Until the PII catalog and the run-time read budgets decide whether a whole column of
PII may be read (docs/rules.md, "Reading whole columns"), the classifier does not guess
from the SQL which columns are sensitive: the distinct values of one column (or one
expression) are a ``read``, as the grouped aggregate over the same key
(``status, count(*) ... GROUP BY status``) is, whether the column is ``status`` or
``email``; several columns, ``*`` or whole-row references may list whole rows:
``dump``.
"""

from __future__ import annotations

from typing import Any

import pytest

from dbgate.policy import Identity, load_rules
from dbgate.policy.classify import classify, clear_cache
from dbgate.policy.model import Category, D, R

PACK = load_rules()


def row(distinct: str, group_by: str, *cats: Category, action: str) -> Any:
    return pytest.param(distinct, group_by, frozenset(cats), action, id=distinct[:60])


TABLE = [
    row(
        "SELECT DISTINCT status FROM orders",
        "SELECT status FROM orders GROUP BY status",
        R,
        action="allow",
    ),
    row(
        "SELECT DISTINCT email FROM customers",
        "SELECT email FROM customers GROUP BY email",
        R,
        action="allow",
    ),
    row(
        "SELECT DISTINCT c FROM customers c",
        "SELECT c FROM customers c GROUP BY c",
        R,
        D,
        action="hold",
    ),
    row(
        "SELECT DISTINCT row_to_json(c) FROM customers c",
        "SELECT row_to_json(c) FROM customers c GROUP BY row_to_json(c)",
        R,
        D,
        action="hold",
    ),
    row(
        "SELECT DISTINCT status, customer_id FROM orders",
        "SELECT status, customer_id FROM orders GROUP BY status, customer_id",
        R,
        D,
        action="hold",
    ),
    row(
        "SELECT DISTINCT ON (status) status FROM orders",
        "SELECT status FROM orders GROUP BY status",
        R,
        action="allow",
    ),
    row(
        "SELECT DISTINCT ON (status) * FROM orders",
        "SELECT * FROM orders",
        R,
        D,
        action="hold",
    ),
    row(
        "SELECT DISTINCT status FROM orders WHERE customer_id = 7",
        "SELECT status FROM orders WHERE customer_id = 7 GROUP BY status",
        R,
        action="allow",
    ),
    row(
        "SELECT DISTINCT status FROM orders ORDER BY status LIMIT 20",
        "SELECT status FROM orders GROUP BY status ORDER BY status LIMIT 20",
        R,
        action="allow",
    ),
    row(
        "SELECT DISTINCT status, count(*) FROM orders GROUP BY status",
        "SELECT status, count(*) FROM orders GROUP BY status",
        R,
        action="allow",
    ),
    row(
        "SELECT count(*) FROM (SELECT DISTINCT status FROM orders) s",
        "SELECT count(*) FROM (SELECT status FROM orders GROUP BY status) s",
        R,
        action="allow",
    ),
    row(
        "SELECT count(DISTINCT status) FROM orders",
        "SELECT count(*) FROM (SELECT status FROM orders GROUP BY status) s",
        R,
        action="allow",
    ),
    row(
        "SELECT DISTINCT string_agg(email, ',') FROM customers",
        "SELECT string_agg(email, ',') FROM customers GROUP BY ()",
        R,
        D,
        action="hold",
    ),
]


@pytest.mark.parametrize(("distinct", "group_by", "cats", "action"), TABLE)
def test_distinct_and_group_by_are_judged_alike(
    distinct: str, group_by: str, cats: frozenset[Category], action: str
) -> None:
    clear_cache()
    for sql in (distinct, group_by):
        c = classify(sql)
        assert c.categories == cats, sql
        assert PACK.decide(Identity("agent"), c).action.value == action, sql
