"""A token in array or JSON syntax is resolved only where the server reads the literal
as an array or JSON: left untyped, a literal takes the type of what it is compared
with, and a range reads ``'["tok_…", 5e15]'`` as its bounds, a ``line``
``'{tok_…,1,0}'`` as its coefficients."""

from __future__ import annotations

import pytest

from dbgate.pii.catalog_load import load_catalog
from dbgate.pii.coverage import Coverage
from dbgate.pii.lineage import analyze
from dbgate.pii.schema import SchemaSnapshot

TOKEN = "tok_card_r" + "0123456789abcdef" * 2
#: a range type of the database's own over text (not in the snapshot's types)
TEXTRANGE = 900_001

COV = Coverage(
    SchemaSnapshot.build(
        {
            "public.payments": ["id", "card_number"],
            "public.people": [("id", 20), ("doc", 3802), ("band", TEXTRANGE)],
        },
        comments={"public.people.doc": "pii:pii", "public.people.band": "pii:pii"},
    ),
    load_catalog(None),
)
RANGE = "numrange(0 * length(p.card_number), 1)"
LINE = "('{1,1,0}' || left(p.card_number, 0))::line"


@pytest.mark.parametrize(
    "sql",
    [
        f"select 1 from payments p where {RANGE} = '[\"{TOKEN}\", 5]'",
        f"select 1 from payments p where {RANGE} = '[\"{TOKEN}\", 5]'::numrange",
        f"select 1 from payments p where {RANGE} in ('[\"{TOKEN}\", 5]')",
        f"select 1 from payments p where {RANGE} = any(array['[\"{TOKEN}\", 5]'::numrange])",
        f"select 1 from payments p where {RANGE} @> '[\"{TOKEN}\", 5]'",
        f"select 1 from payments p where {LINE} = '{{{TOKEN},1,0}}'",
        f"select 1 from payments p where {LINE} = '{{{TOKEN},1,0}}'::line",
        f"select 1 from payments p where {RANGE} @> any(array['{TOKEN}'::numeric])",
        f"select 1 from payments p where {RANGE} @> any('{{{TOKEN}}}'::numeric[])",
        # a stored column of a type that is not an array or JSON: a JSON object too,
        # one element of a range over text
        f'select 1 from people where band @> \'{{"e": "{TOKEN}"}}\'',
        f'select 1 from people where band = \'["{TOKEN}", "z"]\'',
    ],
)
def test_a_token_in_syntax_read_as_another_type_is_refused(sql: str) -> None:
    a = analyze(sql, COV)
    assert a.token_sites and not any(s.allowed for s in a.token_sites), sql


@pytest.mark.parametrize(
    "sql",
    [
        f"select 1 from payments p where p.card_number = any('{{{TOKEN}}}')",
        f"select 1 from payments p where array[p.card_number] @> '{{{TOKEN}}}'",
        f"select 1 from payments p where array[p.card_number] = '{{{TOKEN}}}'::text[]",
        f"select 1 from payments p where to_jsonb(array[p.card_number]) @> '[\"{TOKEN}\"]'",
        f"select 1 from payments p where to_jsonb(p.card_number) = '\"{TOKEN}\"'::jsonb",
        f'select 1 from people where doc @> \'{{"e": "{TOKEN}"}}\'',
        f"select 1 from people where doc @> '[\"{TOKEN}\"]'",
        f"select 1 from people where doc -> 'e' = '\"{TOKEN}\"'",
    ],
)
def test_a_token_in_syntax_read_as_an_array_or_json_is_resolved(sql: str) -> None:
    a = analyze(sql, COV)
    assert [s.allowed for s in a.token_sites] == [True], sql


@pytest.mark.parametrize(
    ("sql", "loose"),
    [
        (f"select 1 from payments p where {RANGE} = $1", {1}),
        ("select 1 from people where band @> $1", {1}),
        ("select 1 from payments p where p.card_number = any($1)", set()),
        ("select 1 from people where doc @> $1", set()),
        (f"select 1 from payments p where {RANGE} = $1::jsonb", set()),
    ],
)
def test_a_parameter_not_read_as_an_array_or_json_is_noted(sql: str, loose: set[int]) -> None:
    assert analyze(sql, COV).param_loose == loose, sql


def test_a_token_written_in_the_syntax_of_the_columns_type() -> None:
    """Written into a PII column, a literal takes the column's type: array or JSON
    syntax is resolved into a column of an array type, json or jsonb only."""
    into_json = analyze(f"insert into people (id, doc) values (1, '[\"{TOKEN}\"]')", COV)
    assert [s.allowed for s in into_json.token_sites] == [True]
    into_range = analyze(f'insert into people (id, band) values (1, \'["{TOKEN}", "z"]\')', COV)
    assert [s.allowed for s in into_range.token_sites] == [False]
    assert analyze("insert into people (id, doc) values (1, $1)", COV).param_loose == set()
    assert analyze("insert into people (id, band) values (1, $1)", COV).param_loose == {1}


@pytest.mark.parametrize(
    "sql",
    [
        f"select 1 from payments p where ('{{1,1,0}}' || p.card_number)::line = '{TOKEN}'",
        "select 1 from payments p where line(point(0 * length(p.card_number), 0),"
        f" point(1, 1)) = '{TOKEN}'",
        "select 1 from payments p where box(point(0 * length(p.card_number), 0),"
        f" point(1, 1)) = '{TOKEN}'",
        f"select 1 from payments p where circle(p.card_number::point, 1) = '{TOKEN}'",
    ],
)
def test_a_token_read_as_a_geometric_type_is_refused(sql: str) -> None:
    """Geometric types read numbers as float8 and compare within 1e-6 (a line by the
    ratios of its coefficients): as with a cast to a float, no token is resolved."""
    a = analyze(sql, COV)
    assert a.token_sites and not any(s.allowed for s in a.token_sites), sql


READERS = Coverage(
    SchemaSnapshot.build(
        {"public.payments": ["id", "card_number"]},
        views={"public.v_now": "SELECT a.query FROM pg_stat_activity a"},
    ),
    load_catalog(None),
)


@pytest.mark.parametrize(
    "sql",
    [
        f"select 1 from payments p where p.card_number = '{TOKEN}' and current_query() > ''",
        f"select 1 from payments p where p.card_number = '{TOKEN}'; select current_query()",
        f"select 1 from payments p where p.card_number = '{TOKEN}'"
        " and exists (select 1 from pg_catalog.pg_stat_activity)",
        f"select 1 from payments p where p.card_number = '{TOKEN}' and exists (select 1 from v_now)",
        f"select 1 from payments p where p.card_number = '{TOKEN}'"
        " and exists (select 1 from pg_prepared_statement())",
    ],
)
def test_a_token_in_a_text_that_reads_statement_texts_is_refused(sql: str) -> None:
    """The forwarded text holds the resolved value, and these read it back."""
    a = analyze(sql, READERS)
    assert a.token_sites and not any(s.allowed for s in a.token_sites), sql
    assert "statement texts" in a.token_sites[0].why
