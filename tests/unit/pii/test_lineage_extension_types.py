"""Tokens compared with values of extensions' types (hand-made schema): a token is
resolved only where the server reads its value whole.

Through the gate a cast to an extension's type is held by the default rules
(``unknown-type``); these are what applies once such a statement is approved.
"""

from __future__ import annotations

import pytest

from dbgate.pii.catalog_load import load_catalog
from dbgate.pii.coverage import Coverage
from dbgate.pii.lineage import analyze
from dbgate.pii.schema import SchemaSnapshot

TOKEN = "tok_card_r" + "0123456789abcdef" * 2

COV = Coverage(
    SchemaSnapshot.build({"public.payments": ["id", "card_number"]}),
    load_catalog(None),
)


@pytest.mark.parametrize(
    "sql",
    [
        # cube (earth over it) reads a number as a float8, seg as a float4: a near miss
        # of the value matches, as under a cast to float4
        "select 1 from payments p where case when p.id < 0 then p.card_number::cube"
        f" else '1'::cube end = '{TOKEN}'::cube",
        "select 1 from payments p where case when p.id < 0 then p.card_number::seg"
        f" else '1'::seg end = '{TOKEN}'",
        "select 1 from payments p where case when p.id < 0 then p.card_number::earth"
        f" else '(1)'::earth end = '{TOKEN}'",
        # a range's containment: within bounds the other operand chose
        f"select 1 from payments p where numrange(0 * length(p.card_number), 5) @> '{TOKEN}'",
        f"select 1 from payments p where '{TOKEN}'::numeric <@ numrange(0 * length(p.card_number), 5)",
        "select 1 from payments p where case when p.id < 0 then p.card_number::ltree"
        f" else 'a.b'::ltree end @> '{TOKEN}'",
    ],
)
def test_a_token_read_in_part_is_refused(sql: str) -> None:
    a = analyze(sql, COV)
    assert a.token_sites and not any(s.allowed for s in a.token_sites), sql


@pytest.mark.parametrize(
    "sql",
    [
        f"select 1 from payments p where array[p.card_number] @> array['{TOKEN}']",
        f"select 1 from payments p where array[p.card_number] <@ '{{{TOKEN}}}'",
        f"select 1 from payments p where jsonb_build_object('c', p.card_number) @> '{{\"c\": \"{TOKEN}\"}}'",
        f"select 1 from payments p where p.card_number = '{TOKEN}'",
    ],
)
def test_a_token_compared_whole_is_resolved(sql: str) -> None:
    a = analyze(sql, COV)
    assert [s.allowed for s in a.token_sites] == [True], sql


def test_a_parameter_compared_by_containment_is_checked_at_bind() -> None:
    a = analyze("select 1 from payments p where array[p.card_number] @> $1", COV)
    assert a.param_contained == {1} and not a.param_sites.get(1)
