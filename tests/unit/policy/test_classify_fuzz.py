"""Robustness: whatever bytes an agent sends, classify() answers and fails closed.

Property tests (hypothesis) feed random text and random splices of real statements;
a thread test hammers the shared cache. The properties: no exception, at least one
category per statement, and never a category set that would be *less* severe than
the same text classified alone (no cross-talk through the cache).
"""

from __future__ import annotations

import threading

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbgate.policy.classify import classify, clear_cache
from dbgate.policy.model import Category

FRAGMENTS = [
    "SELECT",
    "*",
    "FROM customers",
    "WHERE id = 1",
    "LIMIT 5",
    ";",
    "pg_read_file('x')",
    "set_config('role', 'x', false)",
    "COPY customers TO STDOUT",
    "DELETE FROM orders",
    "/* c */",
    "-- c\n",
    "(",
    ")",
    "'",
    '"',
    "$$",
    'U&"d\\0061ta"',
    "UNION",
    "WITH x AS (SELECT 1)",
    "SET ROLE x",
    "EXPLAIN ANALYZE",
    ",",
    "$1",
]


def _check(sql: str) -> None:
    c = classify(sql)
    assert c.statements
    for s in c.statements:
        assert s.categories, sql
    if c.parse_error:
        assert c.categories == {Category.OPAQUE}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_random_text_never_raises(sql: str) -> None:
    _check(sql)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=12))
def test_random_splices_of_sql_never_raise(parts: list[str]) -> None:
    _check(" ".join(parts))


def test_concurrent_callers_get_the_cold_answer() -> None:
    sqls = [
        "SELECT * FROM orders WHERE id = 1",
        "SELECT * FROM orders WHERE id = 2",
        "SET standard_conforming_strings = off",
        "SET standard_conforming_strings = on",
        "SELECT set_config('role', 'x', false)",
        "SELECT set_config('application_name', 'x', false)",
        "SELECT * FROM customers LIMIT 5",
        "SELECT * FROM customers LIMIT 5000",
    ]
    expected = {}
    for s in sqls:
        clear_cache()
        expected[s] = classify(s).categories
    clear_cache()
    errors: list[str] = []

    def worker(offset: int) -> None:
        for i in range(400):
            s = sqls[(i + offset) % len(sqls)]
            got = classify(s).categories
            if got != expected[s]:
                errors.append(f"{s}: {got}")
            if i % 97 == 0:
                clear_cache()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
