"""A token is resolved only where the server compares the whole value: not against a
PII column of a collation that is not deterministic (ICU, ``deterministic = false``),
under which equal is what a tailoring says — a part of the value, or its shape — nor
under a ``COLLATE`` clause naming a collation the database defines.

The embedded server is built without ICU, so these are checked on a hand-made schema;
tests/integration/clients/test_pii_through_dbgate.py checks the COLLATE clause through
the relay.
"""

from __future__ import annotations

import pytest

from dbgate.pii.catalog_load import load_catalog
from dbgate.pii.coverage import Coverage
from dbgate.pii.lineage import analyze
from dbgate.pii.schema import SchemaSnapshot

TOKEN = "tok_email_r" + "0123456789abcdef" * 2

COV = Coverage(
    SchemaSnapshot.build(
        {
            "public.customers": ["id", "email"],
            "public.shapes": ["id", ("email", 25, True)],
        }
    ),
    load_catalog(None),
)


@pytest.mark.parametrize(
    "sql",
    [
        f"select id from shapes where email = '{TOKEN}'",
        f"select id from (select id, email from shapes) s where s.email = '{TOKEN}'",
        f"select c.id from customers c where c.email = '{TOKEN}'"
        " and exists (select 1 from shapes s where s.email = c.email)",
        f"select id from customers where email collate shapes_ci = '{TOKEN}'",
        f"select id from (select email collate shapes_ci e, id from customers) s where e = '{TOKEN}'",
    ],
)
def test_a_token_compared_under_a_nondeterministic_collation_is_refused(sql: str) -> None:
    a = analyze(sql, COV)
    assert a.token_sites and not any(s.allowed for s in a.token_sites), sql
    p = analyze(sql.replace(f"'{TOKEN}'", "$1"), COV)
    assert p.param_sites.get(1), sql


@pytest.mark.parametrize(
    "sql",
    [
        f"select id from customers where email = '{TOKEN}'",
        f"select id from customers where email collate \"C\" = '{TOKEN}'",
    ],
)
def test_a_token_compared_byte_for_byte_is_resolved(sql: str) -> None:
    a = analyze(sql, COV)
    assert [s.allowed for s in a.token_sites] == [True], sql
