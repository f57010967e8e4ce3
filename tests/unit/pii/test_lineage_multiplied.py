"""Counts over rows whose multiplicity the text chose (``Scope.multiplied``).

``count(*) … WHERE ascii(substr(email, 3, 1)) & 4 <> 0`` is one bounded number: how
many customers have the bit. Over a join that repeats each kept customer ``2^(id % 20)``
times (``generate_series(1, 1 << c.id % 20)``, or a series met by ``g <= 1 << c.id %
20``), the same count is ``sum(2^(id % 20))`` over the kept rows: a bit per customer in
one number. A count at such a level carries the PII that kept its rows; over stored
relations joined by an equality of their columns (``o.customer_id = c.id``), how many
rows each meets is the data's, and the count stays a number. End to end:
tests/integration/pii/test_hunt_aggregates.py.
"""

from __future__ import annotations

import pytest

from tests.unit.pii.test_lineage_hunt import COV, output_of, show

B = "ascii(substr(c.email, 3, 1)) & 4 <> 0"
SERIES = "generate_series(1, 1048576) g"

LEAKS = [
    # a function in FROM sized by a column, lateral
    f"select count(*) from customers c, generate_series(1, 1 << c.id % 20) where {B}",
    f"select count(*) from customers c cross join lateral generate_series(1, 1 << c.id % 20)"
    f" g where {B}",
    f"select count(*) from customers c, unnest(array_fill(1, array[1 << c.id % 20])) where {B}",
    f"select count(c.id) from customers c, generate_series(1, 1 << c.id % 20) where {B}",
    # a series met by a predicate of a column, in WHERE or ON
    f"select count(*) from customers c, {SERIES} where g <= 1 << c.id % 20 and {B}",
    f"select count(*) from customers c join {SERIES} on g <= 1 << c.id % 20 where {B}",
    f"select count(*) from customers c left join {SERIES} on g <= 1 << c.id % 20 where {B}",
    # a stored table met by a theta join
    f"select count(*) from customers c, customers d where d.id <= c.id % 10 and {B}",
    # an equality with a sub-select that repeats each key at will
    f"select count(*) from customers c join (select k from generate_series(0, 19) k,"
    f" generate_series(1, 1 << k)) m on m.k = c.id where {B}",
    # a LATERAL sub-select
    f"select count(*) from customers c, lateral (select 1 from generate_series(1, 1 <<"
    f" c.id % 20)) x where {B}",
    # a set-returning function of a column in a nested select list
    f"select count(*) from (select generate_series(1, 1 << c.id % 20) from customers c"
    f" where {B}) s",
    # the multiplied level nested, its rows counted one level up
    f"select count(*) from (select c.id from customers c, generate_series(1, 1 << c.id % 20)"
    f" where {B}) s",
    # the kept rows a sub-select's, the multiplying one level up
    "select count(*) from (select id from customers where ascii(substr(email, 3, 1)) & 4 <> 0)"
    " s, generate_series(1, 1 << s.id % 20)",
    # grouped: a count per group
    f"select c.id % 2, count(*) from customers c, generate_series(1, 1 << c.id % 20)"
    f" where {B} group by 1",
]


@pytest.mark.parametrize("sql", LEAKS, ids=[f"l{i}" for i in range(len(LEAKS))])
def test_a_count_of_rows_the_text_multiplied_carries_the_pii_that_kept_them(sql: str) -> None:
    out = output_of(sql, COV)
    assert out.columns[-1].pii, (sql, [show(c) for c in out.columns])


CLEAN = [
    # not multiplied: one number of kept rows
    f"select count(*) from customers c where {B}",
    f"select count(*) from customers c, generate_series(1, 1000) g where {B}",
    f"select count(*) from customers c cross join orders o where {B}",
    # stored relations joined by an equality of their columns: the data's fan-out
    f"select count(*) from orders o join customers c on c.id = o.customer_id where {B}",
    f"select count(*) from orders o, customers c where o.customer_id = c.id and {B}",
    "select count(*) from orders o join customers c using (id) where c.email like '%@x.com'",
    # multiplied, but no row kept by its own PII
    "select count(*) from customers c, generate_series(1, 1 << c.id % 20)",
    "select count(*) from customers c, customers d where d.id <= c.id % 10",
    # a multiplied level's rows returned one by one count against the rows budget
    f"select c.id, g from customers c, generate_series(1, c.id % 3) g where {B}",
    # a bounded aggregate other than a count reads no multiplicity
    f"select max(c.id) from customers c, generate_series(1, 1 << c.id % 20) where {B}",
]


@pytest.mark.parametrize("sql", CLEAN, ids=[f"c{i}" for i in range(len(CLEAN))])
def test_a_count_over_the_datas_own_fan_out_stays_a_number(sql: str) -> None:
    out = output_of(sql, COV)
    assert not any(c.pii for c in out.columns), (sql, [show(c) for c in out.columns])
