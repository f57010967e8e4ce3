"""ORDER BY / GROUP BY / DISTINCT ON that name an output column by position or alias.

A red-team run read a customer's e-mail one character code at a time with
``SELECT g, abs(g - ascii(substr(c.email, n, 1))) ... ORDER BY 2 LIMIT 1``: the walk
chose rows by the *constant* ``2`` (or the bare alias), not by the output column it
stands for, so ``g`` came back clean. The same with ``GROUP BY 2`` / ``GROUP BY alias``
and ``DISTINCT ON (2)`` feeding an outer ``max``, with an ORDER BY in a sub-select
whose rows an outer LIMIT cuts, and with a top-level ORDER BY cut by ``FETCH 1`` from a
cursor (``DECLARE c CURSOR FOR SELECT g ... ORDER BY abs(g - ascii(...))``) or by a
portal's row-limited Execute.
"""

from __future__ import annotations

import pytest

from tests.unit.pii.test_lineage_hunt import COV, output_of, show

S = "ascii(substr(c.email, 1, 1))"
FROM = "from generate_series(0, 300) g, customers c where c.id = 42"

LEAKS = [
    f"select g, abs(g - {S}) {FROM} order by 2 limit 1",
    f"select g, abs(g - {S}) as x {FROM} order by x limit 1",
    f"select g, abs(g - {S}) as id {FROM} order by id limit 1",
    f"select g, abs(g - {S}) {FROM} order by 2 fetch first 1 rows only",
    f"select max(m) from (select min(g) m, g >= {S} b {FROM} group by 2) s where b",
    f"select max(m) from (select min(g) m, g >= {S} b {FROM} group by b) s where b",
    f"select max(m) from (select min(g) m, g >= {S} b {FROM} group by rollup (2)) s where b",
    f"select max(m) from (select min(g) m, g >= {S} b {FROM} group by cube (b)) s where b",
    f"select max(m) from (select min(g) m, g >= {S} b {FROM} group by grouping sets ((2), ()))"
    " s where b",
    f"select max(m) from (select min(g) m, g >= {S} b {FROM} group by grouping sets ((1, b)))"
    " s where b",
    f"select max(g) from (select distinct on (b) g, g >= {S} b {FROM} order by b, g) s where b",
    f"select max(g) from (select distinct on (2) g, g >= {S} b {FROM} order by 2, g) s where b",
    f"select * from (select g, abs(g - {S}) {FROM} order by 2) s limit 1",
    f"select * from (select g {FROM} order by abs(g - {S})) s limit 1",
    f"select g, abs(g - {S}) {FROM} union all select 0, 0 order by 2 limit 1",
    # a PII column of a sub-select row, paired there with a clean one
    f"select g from (select g, g - {S} d {FROM}) s where d = 0",
    f"select g from (select g, abs(g - {S}) d {FROM}) s order by d limit 1",
    f"with s as (select g, g - {S} d {FROM}) select g from s where d = 0",
    "select g from generate_series(0, 300) g, lateral (select g - ascii(substr(c.email, 1, 1)) d"
    " from customers c where c.id = 42) s where d = 0",
    "select * from (values (108, abs(108 - (select ascii(email) from customers where id = 1))),"
    " (109, abs(109 - (select ascii(email) from customers where id = 1)))) v(a, b)"
    " order by b limit 1",
    "values (108, abs(108 - (select ascii(email) from customers where id = 1))),"
    " (109, abs(109 - (select ascii(email) from customers where id = 1))) order by 2 limit 1",
    # no LIMIT in the text: ``FETCH 1`` from a cursor or a portal's row-limited Execute
    f"select g {FROM} order by abs(g - {S})",
    f"select g, abs(g - {S}) {FROM} order by 2",
]


@pytest.mark.parametrize("sql", LEAKS, ids=[f"leak{i}" for i in range(len(LEAKS))])
def test_choosing_by_an_output_column_reference_is_pii(sql: str) -> None:
    out = output_of(sql, COV)
    assert out.columns and (out.columns[0].pii or out.columns[0].unknown), (
        sql,
        [show(c) for c in out.columns],
    )


CLEAN = [
    "select id, email from customers order by 2 limit 1",  # which customer is first
    "select id, email as e from customers order by e limit 1",
    "select id from customers order by 1 limit 3",
    "select g from generate_series(1, 10) g order by 1 limit 3",
    "select status, count(*) from orders group by 1",
    "select id from customers order by email",
    "select o.id from orders o join customers c on c.id = o.customer_id order by c.email",
]


@pytest.mark.parametrize("sql", CLEAN, ids=[f"clean{i}" for i in range(len(CLEAN))])
def test_clean_references_stay_clean(sql: str) -> None:
    out = output_of(sql, COV)
    assert not (out.columns[0].pii or out.columns[0].unknown), (sql, [show(c) for c in out.columns])
