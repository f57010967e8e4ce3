"""Approve-then-retry matching: what counts as "the identical statement"."""

from __future__ import annotations

import pytest

from dbgate.approvals.matching import match_hash, normalized_sql

KEY = b"k" * 32

SAME = [
    ("DELETE FROM orders WHERE id = 7", "delete   from ORDERS\n where id = 7"),
    ("DELETE FROM orders WHERE id = 7", "/* dbgate: purpose=x */ DELETE FROM orders WHERE id = 7"),
    ("DELETE FROM orders WHERE id = 7", "DELETE FROM orders WHERE id = 7 -- retry"),
    ("SELECT $1", "select $1"),
]
DIFFERENT = [
    ("DELETE FROM orders WHERE id = 7", "DELETE FROM orders WHERE id = 8"),
    ("SELECT 'Ann'", "SELECT 'ann'"),  # literals keep their case
    ('SELECT "Orders".id FROM "Orders"', "SELECT orders.id FROM orders"),  # quoted names too
    ("DELETE FROM orders", "DELETE FROM orders WHERE true"),
]


@pytest.mark.parametrize(("a", "b"), SAME)
def test_same_statement(a: str, b: str) -> None:
    assert normalized_sql(a) == normalized_sql(b)
    assert match_hash(KEY, a) == match_hash(KEY, b)


@pytest.mark.parametrize(("a", "b"), DIFFERENT)
def test_different_statement(a: str, b: str) -> None:
    assert match_hash(KEY, a) != match_hash(KEY, b)


def test_parameters_and_key_are_part_of_the_hash() -> None:
    sql = "DELETE FROM orders WHERE id = $1"
    assert match_hash(KEY, sql, ("7",)) == match_hash(KEY, sql, ("7",))
    assert match_hash(KEY, sql, ("7",)) != match_hash(KEY, sql, ("8",))
    assert match_hash(KEY, sql, (None,)) != match_hash(KEY, sql, ("",))
    assert match_hash(KEY, sql, ("7",)) != match_hash(b"x" * 32, sql, ("7",))
    assert len(match_hash(KEY, sql)) == 32


def test_unscannable_text_matches_only_itself() -> None:
    assert normalized_sql("  SELECT 'open  ") == "SELECT 'open"
    assert match_hash(KEY, "SELECT 'open") != match_hash(KEY, "select 'open")
