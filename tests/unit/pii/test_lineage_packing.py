"""Aggregates and window functions that pack rows kept, or ordered, by their own PII.

A predicate that relates a row's PII only with itself or constants (``WHERE
ascii(substr(email, 3, 1)) & 4 <> 0``, ``WHERE email LIKE 'a%'``) answers one bit per
row, and each row returned counts against the rows-per-window budget. An aggregate at
that level packs every kept row into one returned row: ``string_agg(id::text, ',')``
lists the ids whose bit is 1, every customer's bit in one row (about 175 statements
read every e-mail of the table). So at a level whose rows were kept or grouped so, or
that reads rows in an order PII chose (a sub-select ordered by ``email``), an aggregate
or window function whose value can hold more than one bounded number carries that PII;
``count(*)``, ``count(col)``, ``min``/``max``/``bool_and``/``bool_or``/``every`` of a
column as it is stay clean. End to end: tests/integration/pii/test_hunt_aggregates.py.
"""

from __future__ import annotations

import pytest

from tests.unit.pii.test_lineage_hunt import COV, output_of, show

B = "ascii(substr(email, 3, 1)) & 4 <> 0"

LEAKS = [
    f"select string_agg(id::text, ',') from customers where {B}",
    f"select array_agg(id) from customers where {B}",
    f"select array_agg(id order by id) from customers where {B}",
    "select array_agg(id order by id) from customers where email like 'a%'",
    f"select json_agg(id) from customers where {B}",
    f"select jsonb_agg(id) from customers where {B}",
    f"select json_object_agg(id, 1) from customers where {B}",
    f"select jsonb_object_agg(id, 1) from customers where {B}",
    f"select xmlagg(xmlelement(name i, id)) from customers where {B}",
    f"select range_agg(int8range(id, id + 1)) from customers where {B}",
    f"select sum(power(2::numeric, id)) from customers where {B}",
    f"select sum(1::bigint << id::int) from customers where id < 62 and {B}",
    f"select bit_or(1::bigint << id::int) from customers where id < 62 and {B}",
    f"select avg(id) from customers where {B}",
    f"select any_value(id) from customers where {B}",
    f"select count(*) filter (where id = 7) from customers where {B}",
    f"select count(nullif(id, 7)) from customers where {B}",
    f"select bool_or(id = 7) from customers where {B}",
    f"select min(case when id = 7 then 0 else 1 end) from customers where {B}",
    f"select array_agg(id) from customers group by {B}",
    f"select array_agg(id) from customers group by {B} order by {B}",
    # a sub-select, a CTE, a join kept so
    f"select string_agg(id::text, ',') from (select id from customers where {B}) s",
    f"with k as (select id from customers where {B}) select string_agg(id::text, ',') from k",
    f"select string_agg(c.id::text, ',') from customers c join orders t on t.id = 1 and {B}",
    f"select string_agg(c.id::text, ',') from customers c, (select 1) x where {B}",
    "select sum(id) from customers where email like '%@x.com'",
    "select sum(total) from orders where customer_id in"
    " (select id from customers where email like '%@x.com')",
    # HAVING, and a window over the kept rows
    f"select string_agg(id::text, ',') over () from customers where {B} limit 1",
    f"select id, count(*) over (partition by id = 7) from customers where {B} limit 1",
    f"select id, rank() over (order by id <> 7) from customers where {B} limit 1",
    f"select id, count(*) over (order by id range between current row and 7 following)"
    f" from customers where {B} limit 1",
    f"select id, lag(id) over (order by id) from customers where {B} limit 1",
    f"select id, max(id) over (order by id rows between 1 preceding and 1 preceding)"
    f" from customers where {B} limit 1",
    f"select id, sum(count(*)) over () from customers where {B} group by id limit 1",
    # a bounded aggregate of a sub-select's column, which may be computed there
    f"select bool_or(k1), bool_or(k2) from (select id = 1 k1, id = 2 k2 from customers"
    f" where {B}) s",
    f"select max(k1) from (select (id = 1)::int k1 from customers where {B}) s",
    f"select count(k1) from (select nullif(id, 1) k1 from customers where {B}) s",
    f"select bool_or(k1) from (select id = 1 k1 from customers where {B}) s",
    f"select id, count(*) over (partition by k1) from (select id, id = 1 k1 from customers"
    f" where {B}) s limit 1",
    f"select id, rank() over (order by k1) from (select id, id <> 1 k1 from customers"
    f" where {B}) s limit 1",
    f"with s as (select id = 1 k1 from customers where {B}) select bool_and(k1) from s",
    f"select id, count(*) over w2 from customers where {B}"
    " window w as (partition by id = 7), w2 as (w) limit 1",
    # groups kept by HAVING, then numbered by a window over them
    "select string_agg(id::text, ',') over () from customers group by id"
    " having bool_or(ascii(substr(email, 3, 1)) & 4 <> 0) limit 1",
    "select string_agg(id::text, ',') over () from customers group by id"
    " having count(*) filter (where ascii(substr(email, 3, 1)) & 4 <> 0) > 0 limit 1",
    # an aggregate of the outer level written inside a sub-select
    f"select (select string_agg(c.id::text, ',')) from customers c where {B}",
    # an order chosen by PII, by a column as it is too
    "select string_agg(id::text, ',') from (select id from customers order by email) s",
    "select array_agg(id) from (select id from customers order by birth_date) s",
    "with s as (select id from customers order by email) select json_agg(id) from s",
    "select array(select id from customers order by email)",
    "select (select string_agg(id::text, ',') from (select id from customers order by email) s)",
    "select string_agg(id::text, ',') from (select id from (select id from customers"
    " order by email) a) b",
    "select string_agg(id::text, ',') from (select distinct on (email) id from customers"
    " order by email) s",
    "select string_agg(i::text, ',') from (select min(id) i from customers group by email) s",
    "select string_agg(i::text, ',') from"
    " (select id i, rank() over (order by email) from customers) s",
    "select row_number() over () from (select id from customers order by birth_date) s",
    "select id, row_number() over () from (select id from customers order by email) s",
    "select id, lag(id) over () from (select id from customers order by email) s",
    "select sum(id) from (select id from customers order by email) s",
    # made distinct, or merged, by sorting on PII; joined by sorting on it
    "select string_agg(i::text, ',') from (select distinct email, id i from customers) s",
    "select string_agg(i::text, ',') from (select email, id i from customers"
    " union select null, 0) s",
    "select string_agg(c.id::text, ',') from customers c join customers d on c.email = d.email",
    # kept by a correlated sub-select's or EXISTS' question of PII
    "select string_agg(c.id::text, ',') from customers c"
    " where (select ascii(substr(c.email, 3, 1)) & 4) <> 0",
    "select string_agg(c.id::text, ',') from customers c where exists"
    " (select 1 from customers d where d.id = c.id and d.email like 'a%')",
    # in a set operation's branch, a LATERAL one
    "select string_agg(id::text, ',') from ((select id from customers order by email)"
    " union all select 0) s",
    f"select x.s from (select 1) d, lateral (select string_agg(id::text, ',') s"
    f" from customers where {B}) x",
    # grouped by a value derived from PII named by its position or its alias, as by
    # the expression written out: ``ORDER BY 1`` put the group of 0s first, and each
    # list of ids was one bit of every customer's e-mail
    "select ascii(substr(email, 3, 1)) & 4 as b, string_agg(id::text, ',') from customers"
    " group by 1 order by 1",
    "select ascii(substr(email, 3, 1)) & 4 as b, string_agg(id::text, ',') from customers"
    " group by b order by b",
    "select ascii(substr(email, 3, 1)) & 4 as b, sum(id) from customers group by 1",
    "select ascii(substr(email, 3, 1)) & 4 as b, array_agg(id) from customers group by rollup (1)",
]


@pytest.mark.parametrize("sql", LEAKS, ids=[f"l{i}" for i in range(len(LEAKS))])
def test_an_aggregate_or_window_packing_rows_kept_or_ordered_by_pii_is_pii(sql: str) -> None:
    out = output_of(sql, COV)
    assert out.columns[-1].pii, (sql, [show(c) for c in out.columns])


CLEAN = [
    # bounded: one number whatever rows were kept
    f"select count(*) from customers where {B}",
    "select count(*) from customers where email like 'a%'",
    f"select count(id), count(distinct id) from customers where {B}",
    f"select min(id), max(id) from customers where {B}",
    f"select min(id::text) from customers where {B}",
    f"select count(*) from (select id from customers where {B}) s",
    "select count(*) from customers group by email",
    f"select id, row_number() over (order by id) from customers where {B}",
    f"select id, rank() over (partition by id order by id) from customers where {B}",
    f"select id, count(*) over () from customers where {B}",
    f"select id, count(*) over w from customers where {B} window w as (order by id)",
    # a named window's keys keep no row for the level's other aggregates
    "select array_agg(id) over w2 from customers"
    " window w as (partition by lower(email)), w2 as (order by id)",
    # rows returned one by one stay as they were
    f"select id from customers where {B}",
    # no PII kept or ordered the rows
    "select string_agg(id::text, ',') from customers",
    "select sum(total), array_agg(id) from orders where status = 'paid'",
    "select string_agg(id::text, ',') from (select id from customers order by id) s",
    "select array(select id from customers order by created_at)",
    # the level's own ORDER BY comes after its aggregates and windows
    "select id, sum(1) over () from customers order by email",
    "select status, sum(total) from orders group by status order by min(contact_email)",
    # a bounded aggregate over an order PII chose
    "select count(*) from (select id from customers order by email) s",
    # what an aggregate's own argument asks keeps no row for the others
    "select count(email), sum(id), array_agg(id) from customers",
    "select count(distinct email), avg(id) from customers",
    # a whole e-mail grouped, a group per returned row
    "select email, array_agg(id) from customers group by email",
    "select email, array_agg(id) from customers group by 1",
]


@pytest.mark.parametrize("sql", CLEAN, ids=[f"c{i}" for i in range(len(CLEAN))])
def test_a_bounded_aggregate_or_rows_neither_kept_nor_ordered_by_pii_stay_clean(
    sql: str,
) -> None:
    out = output_of(sql, COV)
    kept = [c for n, c in zip(out.names, out.columns, strict=True) if n != "email"]
    assert not any(c.pii for c in kept), (sql, [show(c) for c in out.columns])
