"""Classification work grows linearly with the statement: issue 10's hostile shapes
and the nestings the walk recurses through, at n and 4n, with and without a key
catalog (the proof of narrowness walks more).

Work is counted, not timed: the Python function calls one classification makes (the
walk, the prescan, the caches), from a profile hook — deterministic for a given text.
PostgreSQL's own scanner (C) is kept linear by the prescan: the tests also pin that the
two inputs it reads in quadratic time never reach it as they are. Wall time at the
issue's sizes is in bench/bench_classify.py (``--hostile``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import pytest

from dbgate.policy.classify import classify, clear_cache
from dbgate.policy.keys import KeyCatalog, Relation
from dbgate.policy.model import Category
from dbgate.policy.prescan import prepare

KEYS = KeyCatalog(
    {
        "public.orders": Relation(
            (frozenset({"id"}),), columns=frozenset({"id", "customer_id", "total"})
        ),
        "public.customers": Relation((frozenset({"id"}),), columns=frozenset({"id", "email"})),
    },
    ("public",),
    version="linear",
)


def _nest(inner: str, outer: Callable[[str, int], str]) -> Callable[[int], str]:
    def make(depth: int) -> str:
        sql = inner
        for i in range(depth):
            sql = outer(sql, i)
        return sql

    return make


#: family: (the text for size n, base n)
FAMILIES: dict[str, tuple[Callable[[int], str], int]] = {
    "comments": (lambda n: "select 1 as uX " + "/*" * n + "*/" * n, 400),
    "or_chain": (lambda n: "select 1 where " + " or ".join(["1 = 1"] * n), 200),
    "values": (
        lambda n: "select count(*) from (values " + ",".join(f"({i})" for i in range(n)) + ") v(x)",
        200,
    ),
    "literal": (lambda n: "select length('" + "x" * n + "')", 20_000),
    "in_list": (
        lambda n: "select * from orders where id in (" + ",".join(map(str, range(n))) + ")",
        200,
    ),
    "nested_in": (
        _nest(
            "SELECT id FROM orders WHERE id = 1",
            lambda s, _: f"SELECT id FROM orders WHERE id IN ({s})",
        ),
        6,
    ),
    "nested_exists": (
        _nest(
            "SELECT 1 FROM orders o WHERE o.id = 1",
            lambda s, i: f"SELECT 1 FROM orders o{i} WHERE o{i}.id = 1 AND EXISTS ({s})",
        ),
        6,
    ),
    "nested_scalar": (
        _nest(
            "SELECT total FROM orders WHERE id = 1",
            lambda s, _: f"SELECT total FROM orders WHERE id = ({s})",
        ),
        6,
    ),
    "nested_from": (
        _nest("SELECT id FROM orders", lambda s, i: f"SELECT id FROM ({s}) s{i} WHERE id = 1"),
        6,
    ),
    "nested_cte": (
        _nest(
            "SELECT id FROM orders WHERE id = 1",
            lambda s, i: f"WITH c{i} AS ({s}) SELECT id FROM c{i}",
        ),
        6,
    ),
    "join_chain": (
        lambda n: (
            "SELECT * FROM orders o0 "
            + " ".join(f"JOIN orders o{i} ON o{i}.id = o{i - 1}.id" for i in range(1, n))
            + " WHERE o0.id = 1"
        ),
        60,
    ),
    "and_or": (
        lambda n: (
            "SELECT * FROM orders WHERE "
            + _nest("id = 1", lambda s, i: f"({s} OR (id = {i} AND total > 0))")(n)
        ),
        8,
    ),
    "case": (
        lambda n: (
            "SELECT "
            + _nest("1", lambda s, _: f"CASE WHEN total > 1 THEN {s} ELSE 0 END")(n)
            + " FROM orders WHERE id = 1"
        ),
        8,
    ),
    "union": (lambda n: " UNION ALL ".join(["SELECT id FROM orders WHERE id = 1"] * n), 8),
}


def _work(sql: str, keys: KeyCatalog | None) -> tuple[int, Any]:
    """Python calls made classifying ``sql`` cold."""
    clear_cache()
    calls = 0

    def count(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        if event == "call" or event == "c_call":
            calls += 1

    sys.setprofile(count)
    try:
        result = classify(sql, keys=keys)
    finally:
        sys.setprofile(None)
    clear_cache()
    return calls, result


@pytest.mark.parametrize("keys", [None, KEYS], ids=["no-keys", "keys"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_work_grows_linearly(family: str, keys: KeyCatalog | None) -> None:
    make, n = FAMILIES[family]
    small, large = make(n), make(4 * n)
    growth = len(large) / len(small)
    assert growth > 3  # the text itself grows about 4x
    work_small, result = _work(small, keys)
    work_large, large_result = _work(large, keys)
    assert Category.OPAQUE not in result.categories, result.reasons
    assert Category.OPAQUE not in large_result.categories, large_result.reasons
    # Linear: the work may grow as the text does (plus slack for fixed costs); a
    # quadratic path at these sizes grows it 12-16x, an exponential one far more.
    assert work_large <= 1.3 * growth * work_small, (work_small, work_large)


def test_the_scanner_never_sees_its_quadratic_inputs() -> None:
    """Nested comments are rewritten to plain ones (same length) and long operator
    runs are refused before PostgreSQL's scanner would rescan them per token; so are
    comments with so many openers in a row that the server's own scanner would take
    seconds over them (issue 10's 16,000: 5.6 s of a backend's CPU)."""
    comments = "select 1 as uX " + "/*" * 1600 + "*/" * 1600
    rewritten = prepare(comments)
    assert rewritten.rewritten and len(rewritten.text) == len(comments)
    assert "/*/*" not in rewritten.text
    hostile = "select 1 as uX " + "/*" * 16000 + "*/" * 16000
    assert prepare(hostile).operator_run == (15, 64000)
    work, result = _work(hostile, None)
    assert result.categories == {Category.OPAQUE}
    assert result.reasons[0].code == "operator-run"
    larger, _ = _work("select 1 as uX " + "/*" * 64000 + "*/" * 64000, None)
    assert larger <= 1.3 * 4 * work  # found in linear work (comment tokens), never parsed
    operators = "select 1, 1 " + "+" * 60000 + " 1"
    assert prepare(operators).operator_run == (12, 60000)
    work, result = _work(operators, None)
    assert result.categories == {Category.OPAQUE}
    assert result.reasons[0].code == "operator-run"
    assert work < 200  # refused without parsing


def test_deep_nesting_is_not_exponential() -> None:
    """Issue 10's 19-deep IN sub-selects froze the loop for ~12 s; each level is now
    walked once, so the work per level stays flat as depth grows."""
    make, _ = FAMILIES["nested_in"]
    per_level = [_work(make(depth), KEYS)[0] / depth for depth in (19, 38, 76)]
    assert per_level[2] <= 1.2 * per_level[0], per_level
