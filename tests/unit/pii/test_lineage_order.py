"""Orders chosen by PII, read through clean columns.

A red-team run spelled every customer's e-mail in one statement that returned one row,
without writing anything, by ranking the customers' own rows by bits of their e-mails:
``select id, rank() over (order by ascii(substr(email, 1, 1)) & 1), ... from customers
order by id limit 1`` (a rank is 1 exactly where the bit is 0; the windows are computed
before the LIMIT), and the same with ``(array_agg(id order by ... desc, id <> 1))[1]``
(1 exactly where customer 1's bit is 1). A window function's value, and an ordered
aggregate's, is computed from the order and the partitions its keys make: it carries
their PII. End to end: tests/integration/pii/test_hunt_order.py.
"""

from __future__ import annotations

import pytest

from tests.unit.pii.test_lineage_hunt import COV, output_of, show

B = "ascii(substr(email, 1, 1)) & 4"

WINDOW_LEAKS = [
    f"select id, rank() over (order by {B}) from customers order by id limit 1",
    f"select id, dense_rank() over (order by {B} desc) from customers",
    f"select id, row_number() over (order by {B}, id) from customers",
    f"select id, percent_rank() over (order by {B}) from customers",
    f"select id, cume_dist() over (order by {B}) from customers",
    f"select id, ntile(2) over (order by {B}) from customers",
    f"select id, count(*) over (partition by {B}) from customers",
    f"select id, count(*) over (order by {B}) from customers",
    f"select id, sum(1) over (order by {B}) from customers",
    f"select id, first_value(id) over (order by {B}) from customers",
    f"select id, last_value(id) over (order by {B}) from customers",
    f"select id, nth_value(id, 2) over (order by {B}) from customers",
    f"select id, lag(id) over (order by {B}) from customers",
    f"select id, lead(id) over (partition by {B} order by id) from customers",
    f"select id, rank() over w from customers window w as (order by {B})",
    f"select id, rank() over (w order by id) from customers window w as (partition by {B})",
    f"select id, rank() over w2 from customers window w as (order by {B}), w2 as (w)",
    "select id, rank() over (order by birth_date) from customers",
    "select id, rank() over (order by (birth_date - date '1900-01-01') & 8) from customers",
    "select id, row_number() over (order by email) from customers",
    # a cast that keeps a part groups by that part: one of as many groupings as lengths
    "select id, count(*) over (partition by email::varchar(1)) from customers",
    'select id, count(*) over (partition by email::"char") from customers',
    f"select id, (select rank() over (order by {B}) from customers c2 where c2.id = c.id)"
    " from customers c",
]


@pytest.mark.parametrize("sql", WINDOW_LEAKS, ids=[f"w{i}" for i in range(len(WINDOW_LEAKS))])
def test_a_window_ordered_or_partitioned_by_pii_is_pii(sql: str) -> None:
    out = output_of(sql, COV)
    assert show(out.columns[0]) == "-", sql  # the rows' own ids stay clean
    assert out.columns[1].pii, (sql, [show(c) for c in out.columns])


WINDOW_CLEAN = [
    "select id, row_number() over (order by id) from customers",
    "select id, rank() over (partition by status order by total) from orders",
    # whole values grouped, as GROUP BY email does: a count, not a bit
    "select id, row_number() over (partition by email order by id) from customers",
    "select id, count(*) over (partition by email) from customers",
    "select id, count(*) over (partition by c.email::text) from customers c",
    "select id, sum(1) over () from customers order by email",
]


@pytest.mark.parametrize("sql", WINDOW_CLEAN, ids=[f"c{i}" for i in range(len(WINDOW_CLEAN))])
def test_a_window_over_clean_keys_or_whole_values_stays_clean(sql: str) -> None:
    out = output_of(sql, COV)
    assert all(c.clean for c in out.columns), (sql, [show(c) for c in out.columns])


AGGREGATE_LEAKS = [
    f"select (array_agg(id order by {B} desc, id <> 1))[1] from customers",
    f"select string_agg(id::text, ',' order by {B}, id) from customers",
    f"select json_agg(id order by {B}) -> 0 from customers",
    f"select jsonb_agg(id order by {B}) from customers",
    f"select array_agg(id order by id, {B}) from customers",
    "select string_agg(id::text, ',' order by birth_date) from customers",
    "select json_agg(id order by email) from customers where id < 3",
    f"select xmlagg(xmlelement(name i, id) order by {B}) from customers",
    f"select (array_agg(distinct id order by id))[1], (array_agg(id order by {B}))[1]"
    " from customers",
    # inside a window: both orders
    f"select (array_agg(id order by {B}) over ())[1] from customers",
    # percentile_disc's WITHIN GROUP key is its input: that flowed already
    f"select percentile_disc(0.5) within group (order by {B}) from customers",
    f"select (min(array[{B}, id]))[2] from customers",
]


@pytest.mark.parametrize("sql", AGGREGATE_LEAKS, ids=[f"a{i}" for i in range(len(AGGREGATE_LEAKS))])
def test_an_aggregate_ordered_by_pii_is_pii(sql: str) -> None:
    out = output_of(sql, COV)
    assert out.columns[-1].pii, (sql, [show(c) for c in out.columns])


AGGREGATE_CLEAN = [
    "select array_agg(id order by id) from customers",
    "select string_agg(status, ',' order by total desc) from orders",
]


@pytest.mark.parametrize("sql", AGGREGATE_CLEAN, ids=[f"c{i}" for i in range(len(AGGREGATE_CLEAN))])
def test_an_aggregate_ordered_by_clean_keys_stays_clean(sql: str) -> None:
    out = output_of(sql, COV)
    assert all(c.clean for c in out.columns), (sql, [show(c) for c in out.columns])


NESTED_LEAKS = [
    # one row each, cross-joined: one bit of customer 1's e-mail per column
    f"select a.id, b.id from (select id from customers order by {B}, id <> 1 limit 1) a,"
    f" (select id from customers order by {B} desc, id <> 1 limit 1) b",
    f"with a as (select id from customers order by {B}, id <> 1 limit 1) select a.id from a",
    f"select a.id from (select id from customers order by {B}, id <> 1 offset 0 limit 1) a",
    f"select a.id from (select id from customers order by {B} fetch first 1 rows with ties) a",
    f"select a.id from (select distinct on ({B}) id from customers order by {B}, id <> 1) a",
    f"select a.id from (select distinct on ({B}) id from customers) a",
    f"select a.id from (select id, {B} k from customers order by 2, id <> 1 limit 1) a",
    f"select a.id from (select id, {B} k from customers order by k, id <> 1 limit 1) a",
    "select a.id from (select id from customers order by birth_date - date '1900-01-01' & 8,"
    " id <> 1 limit 1) a",
    'select a.id from (select id from customers order by email collate "C" limit 1) a',
    "select a.id from (select id from customers order by email::varchar(3), id <> 1 limit 1) a",
    "select a.id from (select distinct on (email::varchar(1)) id from customers) a",
    "select a.id from (select id, email::varchar(2) from customers order by 2, id <> 1 limit 1) a",
    # cut by the level above, or read in order by an aggregate or a window there
    f"select id from (select id from customers order by {B}, id <> 1) s limit 1",
    f"select string_agg(id::text, ',') from (select id from customers order by {B}, id) s",
    f"select id, row_number() over () from (select id from customers order by {B}, id) s",
    # a set operation's branches
    f"(select id from customers order by {B}, id <> 1 limit 1) union all"
    f" (select id from customers order by {B} desc, id <> 1 limit 1)",
]


@pytest.mark.parametrize("sql", NESTED_LEAKS, ids=[f"n{i}" for i in range(len(NESTED_LEAKS))])
def test_a_nested_order_by_pii_chooses_its_rows(sql: str) -> None:
    out = output_of(sql, COV)
    assert out.columns[0].pii, (sql, [show(c) for c in out.columns])


NESTED_CLEAN = [
    # the statement's own order only orders (a cursor's FETCH or a LIMIT cuts it once)
    f"select id from customers order by {B}, id <> 1 limit 1",
    f"select id from customers order by {B} fetch first 1 rows with ties",
    f"select distinct on ({B}) id from customers order by {B}, id <> 1",
    # a column as it is orders every level alike
    "select s.id from (select distinct on (email) id, email from customers"
    " order by email, id desc) s",
    "with s as (select id, full_name from customers order by full_name limit 20)"
    " select s.id from s",
    "select s.id from (select id, email from customers order by 2 limit 5) s",
    "select s.id from (select id from orders order by total limit 5) s",
]


@pytest.mark.parametrize("sql", NESTED_CLEAN, ids=[f"c{i}" for i in range(len(NESTED_CLEAN))])
def test_the_statements_own_order_and_whole_values_stay_clean(sql: str) -> None:
    out = output_of(sql, COV)
    assert out.columns[0].clean, (sql, [show(c) for c in out.columns])


def test_an_insert_copying_rows_in_an_order_of_pii_is_not_held() -> None:
    from dbgate.pii.lineage import analyze

    a = analyze(f"insert into orders (id) select id from customers order by {B} limit 1", COV)
    assert not a.pii_writes
    a = analyze(
        "insert into orders (id) select s.id from (select id from customers"
        f" order by {B}, id <> 1 limit 1) s",
        COV,
    )
    assert a.pii_writes
    a = analyze(
        f"with x as (insert into orders (id) select id from customers order by {B}, id <> 1"
        " limit 1 returning id) select x.id from x",
        COV,
    )
    (st,) = a.statements
    assert st.output is not None and st.output.columns[0].pii


# PII related with another row source's clean columns in an order, or with guesses
# the agent supplies: these chose their level's rows before (``Queries.choose``)
RELATED = [
    "select g, first_value(g) over (order by ascii(substr(c.email, g, 1)) # g)"
    " from customers c, generate_series(1, 20) g where c.id = 42",
    "select string_agg(g::text, ',' order by ascii(substr(c.email, g, 1)) # g)"
    " from customers c, generate_series(1, 20) g where c.id = 42",
    "select g, rank() over (partition by g order by ascii(substr(c.email, g / 8 + 1, 1))"
    " & (1 << g % 8)) from customers c, generate_series(0, 167) g where c.id = 42",
    "select k, rank() over (order by e) from (select 1 k, email e from customers where id = 42"
    " union all select 2, 'm') s",
    "select (array_agg(k order by e))[1] from (select 1 k, email e from customers where id = 42"
    " union all select 2, 'm') s",
    "select k from (select 1 k, email e from customers where id = 42 union all"
    " select 2, 'm') s order by e fetch first 1 rows with ties",
    "select distinct on (true) v from customers c, (values (1), (2)) t(v) where c.id = 42"
    " order by true, ascii(substr(c.email, v, 1)) & 4",
]


@pytest.mark.parametrize("sql", RELATED, ids=[f"r{i}" for i in range(len(RELATED))])
def test_an_order_relating_pii_with_other_rows_is_pii(sql: str) -> None:
    out = output_of(sql, COV)
    assert out.columns[0].pii, (sql, [show(c) for c in out.columns])


def test_a_deduplication_by_a_whole_value_keeps_its_rows_clean() -> None:
    """``PARTITION BY email`` groups whole values: in a sub-select, ``rn = 1`` keeps
    one row per e-mail, and asks no row a question of its own value."""
    for sql in (
        "select id from (select id, row_number() over (partition by email order by id desc) rn"
        " from customers) s where rn = 1",
        "select count(*) from (select id, count(*) over (partition by email) n"
        " from customers) s where n > 1",
    ):
        out = output_of(sql, COV)
        assert out.columns[0].clean, (sql, [show(c) for c in out.columns])
    # a whole column of a row a query made (guesses beside PII) is not one stored value
    out = output_of(
        "select k from (select k, row_number() over (partition by e order by k) rn from"
        " (select 1 k, email e from customers where id = 42 union all select 2, 'm') g) s"
        " where rn = 1",
        COV,
    )
    assert out.columns[0].pii


# A sub-select's or CTE's column that passes a table row's stored column on as it is
# holds what that row holds: ordering, grouping or filtering by it at the level above
# asks what the same clause over the table asks (SQLAlchemy's ``joinedload`` with
# ``.order_by(Customer.full_name).limit(3)`` orders by ``anon_1.full_name``).
STORED_THROUGH_CLEAN = [
    "select a.id, o.id from (select id, full_name from customers order by full_name limit 3)"
    " a left join orders o on o.customer_id = a.id order by a.full_name, o.id",
    "select s.id from (select id, email from customers where id < 5) s order by s.email",
    "with s as (select id, email from customers) select s.id from s order by s.email limit 5",
    "select s.id from (select * from customers) s order by s.email limit 5",
    "select s.id from (select c.* from customers c) s order by s.email limit 5",
    "select t.id from (select * from (select id, email from customers) a) t order by t.email",
    "select s.id from (select id, email from customers) s where s.email like '%@gmail.com'",
    "select s.id from (select id, email from customers) s where s.email = 'x@y.z'",
    # schema-qualified, as Metabase writes every column
    'select "source"."n" from (select "public"."customers"."email" as "email", count(*) as "n"'
    ' from "public"."customers" group by "public"."customers"."email") as "source"'
    ' order by "source"."n" desc, "source"."email" asc limit 10',
]


@pytest.mark.parametrize(
    "sql", STORED_THROUGH_CLEAN, ids=[f"s{i}" for i in range(len(STORED_THROUGH_CLEAN))]
)
def test_a_stored_column_passed_through_a_sub_select_orders_as_its_table(sql: str) -> None:
    out = output_of(sql, COV)
    assert out.columns[0].clean, (sql, [show(c) for c in out.columns])


def test_a_group_of_a_stored_column_passed_through_counts_as_its_table() -> None:
    out = output_of(
        "select s.email, count(*) from (select c.email from customers c join orders o"
        " on o.customer_id = c.id) s group by s.email",
        COV,
    )
    assert [show(c) for c in out.columns] == ["email", "-"]


STORED_THROUGH_PII = [
    # computed, cast to a part, or mixed with other values: not the stored column
    "select s.id from (select id, lower(email) email from customers) s order by s.email limit 5",
    "select s.id from (select id, email::varchar(1) email from customers) s"
    " order by s.email, s.id <> 1 limit 1",
    "select s.id from (select id, email from customers union all select 1, 'x') s"
    " order by s.email limit 5",
    "select s.id from (select id, coalesce(email, 'm') email from customers) s"
    " order by s.email limit 5",
    # related with a clean column of the row, or with a value from another source
    "select s.id from (select id, email from customers) s"
    " where ascii(substr(s.email, s.id % 8 + 1, 1)) & 4 <> 0",
    "select s.g from (select g, c.email from generate_series(0, 255) g, customers c"
    " where c.id = 1) s where ascii(s.email) = s.g",
    "select g from generate_series(0, 255) g, lateral (select email from customers"
    " where id = 1) s where ascii(s.email) = g",
    # packed by an aggregate, or a value of a sub-select standing as one
    "select string_agg(s.id::text, ',') from (select id, email from customers) s"
    " where s.email like 'a%'",
    "select (select count(*) from (select id, email from customers where id = 42) s"
    " where ascii(s.email) & 4 <> 0)",
    "select string_agg(s.id::text, ',') from (select id, email from customers) s"
    " group by ascii(s.email) & 4",
]


@pytest.mark.parametrize(
    "sql", STORED_THROUGH_PII, ids=[f"p{i}" for i in range(len(STORED_THROUGH_PII))]
)
def test_a_sub_select_column_that_is_not_a_stored_one_still_chooses(sql: str) -> None:
    out = output_of(sql, COV)
    assert out.columns[0].pii, (sql, [show(c) for c in out.columns])


# A bare name an ORDER BY, DISTINCT ON or GROUP BY of a nested level gives is an output
# name when no FROM entry holds it (PostgreSQL's reading): the output's value chooses,
# not an unknown column (``WITH top AS (SELECT customer_id, sum(total) AS spent ...
# ORDER BY spent DESC LIMIT 10)``, a monthly report ``GROUP BY month``).
OUTPUT_NAMES_CLEAN = [
    "select s.customer_id from (select customer_id, sum(total) spent from orders"
    " group by customer_id order by spent desc limit 5) s",
    "with top as (select customer_id, sum(total) as spent from orders group by 1"
    " order by spent desc limit 10) select top.customer_id, top.spent from top",
    "select s.n from (select lower(status) as st, count(*) n from orders group by st) s",
    "select s.n from (select distinct on (st) lower(status) st, id n from orders"
    " order by st, id) s",
    "select s.id from (select id, email as e from customers order by e limit 5) s",
]


@pytest.mark.parametrize(
    "sql", OUTPUT_NAMES_CLEAN, ids=[f"o{i}" for i in range(len(OUTPUT_NAMES_CLEAN))]
)
def test_a_nested_order_or_group_by_an_output_name_reads_that_output(sql: str) -> None:
    out = output_of(sql, COV)
    assert all(c.clean for c in out.columns), (sql, [show(c) for c in out.columns])


OUTPUT_NAMES_PII = [
    # the output the name gives is computed from PII: chosen by it, as written out
    "select s.id from (select id, lower(email) x from customers order by x, id <> 1 limit 1) s",
    "select s.n from (select distinct on (b) ascii(email) & 4 b, id n from customers"
    " order by b, id <> 1) s",
    "select s.n from (select ascii(email) & 4 as b, string_agg(id::text, ',') n"
    " from customers group by b) s",
]


@pytest.mark.parametrize(
    "sql", OUTPUT_NAMES_PII, ids=[f"q{i}" for i in range(len(OUTPUT_NAMES_PII))]
)
def test_a_nested_order_or_group_by_an_output_name_of_pii_chooses(sql: str) -> None:
    out = output_of(sql, COV)
    assert out.columns[0].pii, (sql, [show(c) for c in out.columns])


# A statement that only passes one sub-select's rows on (Metabase's "source", Superset's
# virtual_table) is read as that sub-select at the top level.
WRAPPED_CLEAN = [
    'select "source"."status" as "status", "source"."n" as "n" from (select o.status,'
    " count(*) as n from orders o join customers c on c.id = o.customer_id"
    " where c.email like '%@gmail.com' group by o.status) as \"source\""
    ' order by "source"."n" desc limit 1048575',
    "select * from (select o.status, count(*) as n from orders o where o.customer_id in"
    " (select id from customers where email like 'a%') group by o.status) as inner_qry"
    " limit 1001",
    "select s.id from (select id, lower(email) e from customers) s order by 1 limit 1",
    # the same written as one CTE
    "with agg as (select o.status, count(*) n from orders o join customers c"
    " on c.id = o.customer_id where c.email like '%gmail%' group by o.status)"
    " select * from agg order by n desc",
]


@pytest.mark.parametrize("sql", WRAPPED_CLEAN, ids=[f"w{i}" for i in range(len(WRAPPED_CLEAN))])
def test_a_wrapper_of_one_sub_select_is_read_as_its_top_level(sql: str) -> None:
    out = output_of(sql, COV)
    assert all(c.clean for c in out.columns), (sql, [show(c) for c in out.columns])


WRAPPED_PII = [
    # its ORDER BY of a computed column: by an output's alias too, as the server reads it
    "select s.id from (select id, lower(email) e from customers) s order by s.e limit 1",
    "select s.e as x, s.id as e from (select id, lower(email) e from customers) s"
    " order by x limit 1",
    # what the sub-select packs, and an order of its own it is cut by
    f"select s.a, s.b from (select (select count(*) from customers where id = 42 and {B} <> 0)"
    f" a, (select count(*) from customers where id = 42 and {B} = 0) b) s",
    f"select s.id from (select id from customers order by {B}, id <> 1 limit 1) s",
    "with agg as (select id, lower(email) e from customers) select a.id from agg a"
    " order by a.e limit 1",
    f"with agg as (select id from customers order by {B}, id <> 1 limit 1) select agg.id from agg",
    # not a wrapper: a WHERE of its own
    "select s.id from (select id, lower(email) e from customers) s where s.e like 'a%'",
]


@pytest.mark.parametrize("sql", WRAPPED_PII, ids=[f"v{i}" for i in range(len(WRAPPED_PII))])
def test_a_wrapper_still_carries_what_its_order_and_its_sub_select_do(sql: str) -> None:
    out = output_of(sql, COV)
    assert out.columns[0].pii or out.columns[0].unknown, (sql, [show(c) for c in out.columns])


def test_a_wrapper_ordered_by_position_is_planned_on_its_own() -> None:
    """``ORDER BY 1`` and ``ORDER BY 2`` mask alike: the literal picks the output."""
    from dbgate.pii.lineage import analyze

    sql = "select s.id, s.e from (select id, lower(email) e from customers) s order by {} limit 1"
    assert analyze(sql.format(1), COV).reads_literals
    (st,) = analyze(sql.format(2), COV).statements
    assert st.output is not None and st.output.columns[0].pii


GROUPED_BY_EMAIL = (
    "(select c.email, sum(o.total) spent from customers c join orders o"
    " on o.customer_id = c.id group by c.email) s"
)


@pytest.mark.parametrize("fn", ["rank()", "dense_rank()", "percent_rank()", "cume_dist()"])
def test_a_rank_over_rows_in_an_order_pii_chose_counts_its_own_keys(fn: str) -> None:
    """Peers rank alike, whatever order the rows arrive in (a GROUP BY email's)."""
    sql = f"select s.spent, {fn} over (order by s.spent desc) from {GROUPED_BY_EMAIL}"
    assert [show(c) for c in output_of(sql, COV).columns] == ["-", "-"]


@pytest.mark.parametrize("fn", ["row_number()", "ntile(4)", "lag(s.spent)"])
def test_a_numbering_over_rows_in_an_order_pii_chose_carries_it(fn: str) -> None:
    """Which of two peers comes first is the order the rows arrived in."""
    sql = f"select {fn} over (order by s.spent desc) from {GROUPED_BY_EMAIL}"
    out = output_of(sql, COV)
    assert out.columns[0].pii, (sql, [show(c) for c in out.columns])
