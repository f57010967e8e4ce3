"""A view whose definition chooses, keeps or orders its rows by PII: its columns carry
what chose them, but ``count(*)`` of it reads no column. ``SELECT count(*) FROM v``
over ``SELECT g FROM generate_series(1, 300) g, customers c WHERE c.id = 1 AND g <
ascii(c.email)`` returned the code. The view's item now carries its definition's
chosen, asked and ordered PII, as a sub-select's would.

Hand-made schema (no server); tests/integration/pii/test_hunt_view_rows.py runs the
same views against the demo database.
"""

from __future__ import annotations

import pytest

from dbgate.pii.coverage import Coverage
from dbgate.pii.schema import Column, Relation
from tests.unit.pii.test_lineage_hunt import CATALOG, _snapshot, output_of, show

VIEWS = {
    "v_sized": (
        ["g"],
        "SELECT g FROM generate_series(1, 300) g, customers c WHERE c.id = 1 AND g < ascii(c.email)",
    ),
    "v_kept": (["one"], "SELECT 1 AS one FROM customers WHERE ascii(substr(email, 1, 1)) & 4 <> 0"),
    "v_ordered": (["id"], "SELECT id FROM customers ORDER BY email"),
    "v_plain": (["id", "status"], "SELECT id, status FROM orders WHERE status = 'paid'"),
}


def _coverage() -> Coverage:
    snap = _snapshot()
    for i, (name, (cols, definition)) in enumerate(VIEWS.items()):
        oid = 950 + 2 * i
        columns = tuple(Column(c, k, 23) for k, c in enumerate(cols, start=1))
        snap.relations[oid] = Relation(oid, "public", name, "v", oid + 1, columns, definition)
    snap.by_name.clear()
    snap.by_row_type.clear()
    snap.__post_init__()
    return Coverage(snap, CATALOG)


COV = _coverage()

CASES = [
    ("select count(*) from v_sized", ["email"]),
    ("select (select count(*) from v_sized), 1", ["email", "-"]),
    # rows kept by a bit of their own e-mail: counted, one number; packed, a value
    ("select count(*) from v_kept", ["-"]),
    ("select sum(one) from v_kept", ["email"]),
    ("select (select count(*) from v_kept)", ["email"]),
    # read in the e-mails' order: what packs them in it carries it
    ("select string_agg(id::text, ',') from v_ordered", ["email"]),
    ("select count(*), sum(id) from v_plain", ["-", "-"]),
]


@pytest.mark.parametrize(("sql", "expected"), CASES)
def test_a_view_carries_what_chose_its_rows(sql: str, expected: list[str]) -> None:
    out = output_of(sql, COV)
    assert [show(out.at(i)) for i in range(len(expected))] == expected
