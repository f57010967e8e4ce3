"""Approve-then-retry matching: what counts as "the identical statement"."""

from __future__ import annotations

import pytest

from dbgate.approvals.matching import (
    context_hash,
    fixes_parameters,
    match_hash,
    normalized_sql,
    shape_key,
    statement_context,
)

KEY = b"k" * 32

SAME = [
    ("DELETE FROM orders WHERE id = 7", "delete   from ORDERS\n where id = 7"),
    ("DELETE FROM orders WHERE id = 7", "/* dbgate: purpose=x */ DELETE FROM orders WHERE id = 7"),
    ("DELETE FROM orders WHERE id = 7", "DELETE FROM orders WHERE id = 7 -- retry"),
    ("SELECT $1", "select $1"),
]
DIFFERENT = [
    # the server folds A-Z only: two tables, not one
    ("DROP TABLE Äpfel", "DROP TABLE äpfel"),
    ("DROP TABLE \u212aelvin", "DROP TABLE kelvin"),  # the Kelvin sign is no K
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


def test_the_context_a_statement_runs_in_is_part_of_the_retry_match() -> None:
    sql = "DROP TABLE orders"
    public = statement_context({"search_path": "public", "application_name": "a"})
    other = statement_context({"search_path": "other, public", "application_name": "a"})
    assert public == (("search_path", "public"),)  # the application's name is no context
    assert match_hash(KEY, sql, (), "db", public) != match_hash(KEY, sql, (), "db", other)
    assert match_hash(KEY, sql, (), "db", public) == match_hash(KEY, sql, (), "db", public)
    dates = statement_context({"DateStyle": "ISO, DMY"})
    assert match_hash(KEY, sql, (), "db", dates) != match_hash(KEY, sql, (), "db", ())


def test_declared_parameter_types_are_context_for_a_retry_not_for_a_shape() -> None:
    sql = "UPDATE t SET note = length($1)::text"
    as_text = statement_context({"search_path": "public"}, (25,))
    as_bytea = statement_context({"search_path": "public"}, (17,))
    inferred = statement_context({"search_path": "public"}, (0,))
    assert inferred == (("search_path", "public"),)  # left to the server: no entry
    assert match_hash(KEY, sql, ("€",), "", as_text) != match_hash(KEY, sql, ("€",), "", as_bytea)
    assert context_hash(KEY, "db", as_text) == context_hash(KEY, "db", as_bytea)
    assert context_hash(KEY, "db", as_text) == context_hash(KEY, "db", inferred)
    moved = statement_context({"search_path": "other"})
    assert context_hash(KEY, "db", as_text) != context_hash(KEY, "db", moved)
    assert context_hash(KEY, "db", moved) != context_hash(KEY, "db2", moved)


def test_a_free_shape_frees_compared_values_not_row_counts() -> None:
    """LIMIT and OFFSET decide how many rows a statement reads or changes: a shape
    approved with ``LIMIT 5000`` covers other ids, never ``LIMIT ALL``."""
    approved = shape_key("SELECT * FROM orders WHERE id = 1 LIMIT 5000")
    assert approved == shape_key("SELECT * FROM orders WHERE id = 2 LIMIT 5000")
    assert approved != shape_key("SELECT * FROM orders WHERE id = 1 LIMIT ALL")
    assert approved != shape_key("SELECT * FROM orders WHERE id = 1 LIMIT 1e12")
    offset = shape_key("SELECT * FROM orders OFFSET 10 ROWS FETCH FIRST 5 ROWS ONLY")
    assert offset != shape_key("SELECT * FROM orders OFFSET 10 ROWS FETCH FIRST 500 ROWS ONLY")
    assert offset != shape_key("SELECT * FROM orders OFFSET 0 ROWS FETCH FIRST 5 ROWS ONLY")
    # a parameter there is no data value either: only fixed values cover it
    assert fixes_parameters(shape_key("SELECT * FROM orders LIMIT $1") or "")
    assert not fixes_parameters(shape_key("SELECT * FROM orders WHERE id = $1") or "")
