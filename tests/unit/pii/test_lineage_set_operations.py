"""Set operations and writes' RETURNING lists that spelled PII through clean numbers.

1. A set operation other than UNION ALL compares rows: UNION, INTERSECT and EXCEPT
   merge equal rows, as DISTINCT does, and INTERSECT and EXCEPT keep one branch's rows
   by the other's. ``SELECT count(*) FROM (SELECT g % ascii(...) FROM
   generate_series(1, 300) g UNION SELECT 0) s`` returned the code as a plain number,
   and so did a recursive CTE whose UNION stopped when ``(n + 1) % ascii(...)`` came
   round again.
2. An ``INSERT ... SELECT ... RETURNING`` returns a row per row inserted: several
   inserts of copies (allowed) in one statement, each kept by a bit of its own row,
   counted side by side, spelled the bits in one clean row.

Hand-made schema (no server); tests/integration/clients/test_pii_through_dbgate.py runs
some of them through the relay.
"""

from __future__ import annotations

import pytest

from tests.unit.pii.test_lineage_hunt import COV, output_of, show

S = "(select ascii(substr(email, 1, 1)) from customers where id = 42)"
BIT = "c.id = 42 and ascii(substr(c.email, 1, 1)) & {} <> 0"

LEAKS = [
    # merged duplicates: as many rows as the code
    f"select count(*) from (select g % {S} from generate_series(1, 300) g union select 0) s",
    f"select count(*) from (select g % {S} from generate_series(1, 300) g"
    " intersect select g from generate_series(0, 300) g) s",
    f"select count(*) from (select g % {S} from generate_series(1, 300) g except select -1) s",
    # a clean branch's rows kept by another branch's PII values
    "select g from generate_series(0, 255) g except select ascii(substr(email, 1, 1))"
    " from customers where id = 42",
    "select count(*) from (select g from generate_series(0, 255) g except select"
    " ascii(substr(email, 1, 1)) from customers where id = 42) s",
    # multiplicities matched: floor(300 / code) zeros kept
    f"select count(*) from (select g % {S} from generate_series(1, 300) g intersect all"
    " select 0 from generate_series(1, 300)) s",
    f"select count(*) from (select 0 from generate_series(1, 300) except all"
    f" select g % {S} from generate_series(1, 300) g) s",
    # nested set operations compare through
    f"select count(*) from (select 0 union (select g % {S} from generate_series(1, 300) g"
    " union all select 1)) s",
    # deep in a chain of set operations
    "select count(*) from (select g from generate_series(0, 255) g except select -1 except"
    " select -2 except select -3 except select -4 except select -5 except"
    " select ascii(substr(email, 1, 1)) from customers where id = 42) s",
    # a recursive UNION stops when a step finds no new row
    f"with recursive t(n) as (select 0 union select (n + 1) % {S} from t) select count(*) from t",
    "with recursive t(n) as (select 0 union select (n + 1) % ascii(c.email) from t, customers c"
    " where c.id = 42) select count(*) from t",
    # a table row kept by a bit of its own value, one sub-select standing as a value each
    "select exists (select 1 intersect select ascii(substr(email, 1, 1)) & 1 from customers"
    " where id = 42), exists (select 2 intersect select ascii(substr(email, 1, 1)) & 2"
    " from customers where id = 42)",
    "select (select count(*) from (select 1 except select 1 - (ascii(substr(email, 1, 1)) & 1)"
    " from customers where id = 42) s), 0",
    # RETURNING counts of inserts kept by a bit of their own row each
    "with a as (insert into customers(email) select c.email from customers c where "
    + BIT.format(1)
    + " returning 1), b as (insert into customers(email) select c.email from customers c"
    " where " + BIT.format(2) + " returning 1) select (select count(*) from a),"
    " (select count(*) from b)",
    "with a as (insert into customers(email) select c.email from customers c,"
    " generate_series(1, ascii(c.email)) where c.id = 42 returning id) select count(*) from a",
    # a row compared whole: the bit asked in one output keeps or drops ``g`` in another
    "select string_agg(g::text, ',') from (select g, 0 from generate_series(0, 2) g except"
    " (select 0, ascii(substr(email, 1, 1)) & 1 from customers where id = 42 union all"
    " select 1, ascii(substr(email, 1, 1)) & 2 from customers where id = 42)) s",
    "select string_agg(g::text, ',') from (select g, 0 from generate_series(0, 2) g except"
    " select 0, ascii(substr(email, 1, 1)) & 1 from customers where id = 42 except"
    " select 1, ascii(substr(email, 1, 1)) & 2 from customers where id = 42) s",
    # the same shapes in a sub-select of a WHERE
    f"select count(*) from generate_series(1, 300) x where x in (select g % {S}"
    " from generate_series(1, 300) g union select -1)",
]

CLEAN = [
    "select id from customers union select customer_id from orders",
    "select id from customers intersect select customer_id from orders",
    "select count(*) from (select id from customers except select customer_id from orders) s",
    # two PII columns compared (as ``c.email = o.contact_email`` in a WHERE)
    "select count(*) from (select email from customers union select phone from customers) s",
    "select id, email from customers where id < 10 union select id, email from customers"
    " where id > 20",
    # a whole value with a constant: a guess, as ``full_name = 'n/a'`` is
    "select id, full_name from customers union select id, 'n/a' from customers"
    " where full_name is null",
    "select count(*) from (select email from customers union select email from customers) s",
    "select count(*) from (select id, email from customers"
    " except select id, email from customers where id > 10) s",
    "select count(*) from (select lower(email) from customers"
    " intersect select upper(email) from customers) s",
    "select status, count(*) from orders group by status union select 'all', count(*) from orders",
    "with recursive t(n) as (select 1 union select n + 1 from t where n < 10) select count(*)"
    " from t",
    "with recursive sub(id) as (select id from orders where id = 1 union select o.id from orders"
    " o join sub s on o.customer_id = s.id) select count(*) from sub",
    # an insert of copies kept by one bit, returned once
    "insert into customers(email) select c.email from customers c where "
    + BIT.format(1)
    + " returning id",
    "with a as (insert into orders(total) select total from orders where id < 10 returning id)"
    " select count(*) from a",
    # UNION ALL merges nothing
    f"select count(*) from (select {S} union all select 1) s",
    # one table row's own value merged: one bit per row, as a DISTINCT of it
    "select count(*) from (select ascii(email) & 1 from customers union select 0) s",
]


@pytest.mark.parametrize("sql", LEAKS, ids=[f"leak{i}" for i in range(len(LEAKS))])
def test_rows_a_set_operation_or_a_write_keeps_by_pii_carry_it(sql: str) -> None:
    lin = output_of(sql, COV).union()
    assert lin.pii or lin.unknown, (sql, show(lin))


@pytest.mark.parametrize("sql", CLEAN, ids=[f"clean{i}" for i in range(len(CLEAN))])
def test_ordinary_set_operations_stay_clean(sql: str) -> None:
    lin = output_of(sql, COV).at(0)
    assert not (lin.pii or lin.unknown), (sql, show(lin))
