"""The row-selection side channel: rows chosen by comparing other columns with PII.

Lineage follows values, and a WHERE clause only chooses rows, but an agent can make
the choice spell a value: ``SELECT g FROM generate_series(1, 20000) g WHERE g IN
(SELECT n * 256 + ascii(substr(full_name, n, 1)) ...)`` returns numbers whose low
byte is the name. A predicate that relates a PII-derived value with columns of
another row source makes every output of the query level those columns belong to
derived from that PII; so does a row's own PII related with a clean column of that
row (each row asks another question of its own value, and rows can hold copies of one
value). A PII column compared with constants or parameters, two PII columns joined,
and joins on non-PII keys stay as they were.

Hand-made schema (no server), as in test_lineage_hunt.py.
"""

from __future__ import annotations

import pytest

from dbgate.pii.catalog_load import load_catalog
from dbgate.pii.coverage import Coverage
from dbgate.pii.lineage import Output, analyze
from dbgate.pii.schema import FunctionInfo, SchemaSnapshot
from tests.unit.pii.test_lineage_hunt import output_of, show

TOKEN = "tok_email_r" + "0123456789abcdef" * 2


def _fn(oid: int, name: str, ret: int) -> FunctionInfo:
    return FunctionInfo(oid, "pg_catalog", name, True, ret, None)


def _snapshot() -> SchemaSnapshot:
    base = SchemaSnapshot.build(
        {
            "public.customers": ["id", "full_name", "email", "ssn", ("birth_date", 1082)],
            "public.orders": ["id", "customer_id", "total", "status", "contact_email", "note"],
            "public.digits": ["n", "label"],
        }
    )
    functions = {"generate_series": [_fn(5, "generate_series", 23), _fn(6, "generate_series", 20)]}
    return SchemaSnapshot(
        relations=dict(base.relations), functions=functions, assume_builtin_functions=True
    )


COV = Coverage(_snapshot(), load_catalog())


def _out(sql: str) -> Output:
    return output_of(sql, COV)


def _cols(sql: str) -> list[str]:
    out = _out(sql)
    assert out.tail is None
    return [show(c) for c in out.columns]


GS = "generate_series(1, 20000) g"
NAME1 = "ascii(substr(full_name, 1, 1))"

# ----------------------------------------------------------- leaks: each output is PII

LEAKS = [
    # the headline query of docs/security.md
    (
        f"select g from {GS} where g in (select n * 256 + ascii(substr(full_name, n, 1))"
        " from customers, generate_series(1, 60) n where customers.id = 1)",
        ["name"],
    ),
    # PII in FROM at the same level
    (f"select g from {GS}, customers where customers.id = 1 and g = {NAME1}", ["name"]),
    (f"select g from customers, {GS} where {NAME1} = g", ["name"]),
    # = ANY / <> ALL of an array of a sub-select
    (
        f"select g from {GS} where g = any(array(select {NAME1} from customers where id = 1))",
        ["name"],
    ),
    (
        f"select g from {GS} where not (g <> all(array(select {NAME1} from customers)))",
        ["name"],
    ),
    # correlated EXISTS
    (
        f"select g from {GS} where exists (select 1 from customers c"
        " where c.id = 1 and ascii(substr(c.full_name, 1, 1)) = g)",
        ["name"],
    ),
    # ranges
    (
        f"select g from {GS}, customers c where c.id = 1"
        " and g between length(c.email) and length(c.email)",
        ["email"],
    ),
    (
        f"select g from {GS}, customers c where c.id = 1"
        " and g < length(c.ssn) + 1 and g >= length(c.ssn)",
        ["ssn"],
    ),
    (f"select g from {GS}, customers c where g is not distinct from length(c.email)", ["email"]),
    # IN of a list
    (f"select g from {GS}, customers where g in ({NAME1}, 0)", ["name"]),
    # JOIN ... ON
    (f"select g from {GS} join customers c on g = ascii(c.full_name)", ["name"]),
    (f"select g from customers c join {GS} on ascii(c.full_name) = g where c.id = 1", ["name"]),
    # HAVING
    (
        f"select g from {GS}, customers c where c.id = 1 group by g, c.full_name"
        " having g = ascii(c.full_name)",
        ["name"],
    ),
    # an aggregate's FILTER chooses the rows it adds up
    (f"select sum(g) filter (where g = {NAME1}) from {GS}, customers where id = 1", ["name"]),
    # count of the rows below a PII value is that value
    (f"select count(*) from {GS}, customers where id = 1 and g < {NAME1}", ["name"]),
    # other columns of the chosen rows: ordinality, a lateral copy, a lookup table
    (
        "select n from generate_series(1, 255) with ordinality as s(g, n), customers c"
        " where c.id = 1 and g = ascii(c.full_name)",
        ["name"],
    ),
    (
        f"select x.g2 from {GS}, lateral (select g) x(g2), customers c"
        " where c.id = 1 and g = ascii(c.full_name)",
        ["name"],
    ),
    ("select d.label from digits d, customers c where d.n = ascii(c.full_name)", ["name"]),
    # a non-PII column of another table compared with PII
    ("select o.id from orders o join customers c on o.note = c.email", ["email"]),
    # through a sub-select in FROM, a CTE, a scalar sub-select
    (
        f"select t.g from (select g from {GS}, customers c where g = ascii(c.full_name)) t",
        ["name"],
    ),
    (
        f"with s as (select g from {GS}, customers c where g = ascii(c.full_name))"
        " select g + 1 from s",
        ["name"],
    ),
    (
        f"select (select c.id from customers c where ascii(c.full_name) = g) from {GS}",
        ["name"],
    ),
    # a token sent back is PII too: its length is the real value's
    (f"select g from {GS} where g = length('{TOKEN}')", ["email"]),
    # several PII sources: mixed
    (
        f"select g from {GS}, customers c where g = ascii(c.full_name) + length(c.email)",
        ["email+name"],
    ),
    # the same row source, but a made-up one: not a single table row
    (
        "select t.x from (select g as x, c.full_name from generate_series(1, 255) g,"
        " customers c where c.id = 1) t where t.x = ascii(t.full_name)",
        ["name"],
    ),
    # UPDATE ... RETURNING
    (
        "update orders o set status = status from customers c"
        " where o.total = ascii(c.full_name) returning o.id",
        ["name"],
    ),
]


@pytest.mark.parametrize(("sql", "expected"), LEAKS, ids=[c[0][:70] for c in LEAKS])
def test_rows_chosen_by_pii_carry_it(sql: str, expected: list[str]) -> None:
    assert _cols(sql) == expected


def test_a_user_function_compared_with_a_column_is_unknown() -> None:
    snap = _snapshot()
    snap.functions["secret_of"] = [FunctionInfo(7, "public", "secret_of", False, 23, None)]
    cov = Coverage(snap, load_catalog())
    sql = f"select g from {GS} where g = secret_of(1)"
    (lin,) = analyze(sql, cov).statements[0].output.columns  # type: ignore[union-attr]
    assert lin.unknown


def test_direct_columns_carry_the_choice_too() -> None:
    # a plain column reference is described by its table and attribute in the
    # RowDescription, and the room takes its lineage from there: the choice must be
    # kept beside the columns for it to add
    out = _out("select d.n from digits d, customers c where d.n = ascii(c.full_name)")
    assert out.chosen.entities == {"name"}
    assert _out("select d.n from digits d where d.n = 3").chosen.clean


# ----------------------------------------------------------- stays as it was

CLEAN_QUERIES = [
    ("select count(*) from customers where email like 'a%'", ["-"]),
    ("select id from customers where email = $1", ["-"]),
    (f"select id from customers where email = '{TOKEN}'", ["-"]),
    (
        "select o.id from orders o join customers c on o.customer_id = c.id where c.email = 'x'",
        ["-"],
    ),
    (
        "select id from orders where customer_id in (select id from customers where email = $1)",
        ["-"],
    ),
    (
        "select o.id from orders o where exists (select 1 from customers c"
        " where c.id = o.customer_id and c.email like 'a%')",
        ["-"],
    ),
    # a correlated sub-select that reads the outer row's key and its own row's PII
    # against constants, or two PII columns: one question of every outer row
    (
        "select c.id from customers c where exists (select 1 from orders o"
        " where o.customer_id = c.id and o.contact_email like '%@example.com')",
        ["-"],
    ),
    (
        "select c.id from customers c where exists (select 1 from orders o"
        " where o.customer_id = c.id and o.contact_email = c.email)",
        ["-"],
    ),
    (
        "select o.id from orders o where o.total > (select avg(p.total) from orders p"
        " where p.customer_id = o.customer_id)",
        ["-"],
    ),
    # two PII columns joined: nothing new
    ("select o.id, c.id from orders o join customers c on c.email = o.contact_email", ["-", "-"]),
    (
        "select o.total from orders o, customers c where lower(c.email) = lower(o.contact_email)",
        ["-"],
    ),
    # a table row's own PII compared with constants: the same question of every row
    ("select id from customers where birth_date < now() - interval '18 years'", ["-"]),
    ("select id from customers where full_name || ' ' || email like 'j%'", ["-"]),
    # a whole-value equality of two columns of the row: one guess per row
    ("select id from orders where contact_email = note", ["-"]),
    ("select id from orders where contact_email is distinct from status", ["-"]),
    # PII compared with constants, sub-selects of clean values, other clauses
    (f"select g from {GS} where g < 10", ["-"]),
    (f"select g from {GS}, customers c where length(c.email) > 3 and g < 10", ["-"]),
    ("select id from customers order by full_name limit 3", ["-"]),
    (f"select g from {GS} where g in (select id from customers where email like 'a%')", ["-"]),
    ("select status, count(*) from orders group by status having count(*) > 1", ["-", "-"]),
]


@pytest.mark.parametrize(("sql", "expected"), CLEAN_QUERIES, ids=[c[0][:70] for c in CLEAN_QUERIES])
def test_other_row_choices_stay_clean(sql: str, expected: list[str]) -> None:
    assert _cols(sql) == expected


def test_pii_outputs_keep_their_entity() -> None:
    # the choice adds to what a column already carries
    sql = f"select c.email, g from customers c, {GS} where g = ascii(c.full_name)"
    assert _cols(sql) == ["email+name", "name"]


def test_the_choice_does_not_depend_on_filters_being_walked_for_tokens() -> None:
    # no token, no parameter: WHERE used to be skipped altogether
    sql = f"select g from {GS}, customers where g = {NAME1}"
    assert _cols(sql) == ["name"]
    assert _cols(sql + " and id = $1") == ["name"]


def test_the_room_adds_the_choice_to_a_column_described_by_its_table() -> None:
    """A plain column's lineage comes from its RowDescription origin (table OID,
    attribute), not from the walk: the choice must still reach it."""
    from dbgate.pii.room import PiiRoom, PiiSettings
    from dbgate.pii.tokens import Key, Keyring, Tokenizer
    from dbgate.wire.messages import FieldDescription, RowDescription

    snap = _snapshot()
    room = PiiRoom(load_catalog(), Tokenizer(Keyring([Key("k", b"k" * 32)])), PiiSettings(), snap)
    (digits,) = snap.lookup("digits")
    desc = RowDescription((FieldDescription("n", digits.oid, 1, 23),)).encode()[5:]
    leak = room.plan("select d.n from digits d, customers c where d.n = ascii(c.full_name)")
    rewriter = leak.rows(desc, (0,))
    assert rewriter is not None and [a.entity for a in rewriter.actions] == ["name"]
    assert room.plan("select d.n from digits d where d.n < 3").rows(desc, (0,)) is None


def _cov_with_user_functions() -> Coverage:
    snap = _snapshot()
    snap.functions["get_email"] = [FunctionInfo(8, "public", "get_email", False, 25, None)]
    snap.functions["secret_len"] = [FunctionInfo(9, "public", "secret_len", False, 23, None)]
    return Coverage(snap, load_catalog())


@pytest.mark.parametrize(
    ("sql", "unknown"),
    [
        # an opaque function of the row's own columns: the row chooses itself
        ("select id from customers where get_email(id) is null", False),
        ("select o.id from orders o where get_email(o.customer_id) like 'a%'", False),
        # one given no column reads data of its own: the chosen row spells it
        ("select id from customers where id = secret_len()", True),
        ("select d.label from digits d where d.n = length(get_email(1))", True),
        (
            "select id from orders where id = length(query_to_xml("
            "'select full_name from customers', true, false, '')::text)",
            True,
        ),
        # a row source that is not one table row
        (f"select g from {GS} where get_email(g) is null", True),
    ],
)
def test_opaque_functions_in_predicates(sql: str, unknown: bool) -> None:
    out = analyze(sql, _cov_with_user_functions()).statements[0].output
    assert out is not None and out.columns[0].unknown is unknown


#: A table row's own PII related with a clean column of the row, the whole row or a
#: built-in whose value changes per row: over rows holding copies of one value (an
#: agent allowed to write makes them: ``INSERT INTO orders (id, contact_email) SELECT
#: g, c.email FROM customers c, generate_series(0, 95) g WHERE c.id = 42``), each row
#: answers for another bit, and the ids kept spell the value in one statement.
EACH_ROW_ASKED = [
    "select id from orders where ascii(substr(contact_email, id / 8 + 1, 1)) & (1 << id % 8) <> 0",
    "select id from customers c where c.id + length(c.email) > 20",
    "select id from customers where birth_date < now() - (id || ' days')::interval",
    "select id from orders where left(contact_email, 1) = status",
    "select id from orders where contact_email like status || '%'",
    "select id from orders o where o::text like '%@%'",
    "select id from orders where ascii(substr(contact_email, (random() * 20)::int, 1)) & 4 <> 0",
    # where the row is stored, or which transaction wrote it, differs per row too
    "select id from orders where ascii(substr(contact_email, ((ctid::text::point)[1])::int,"
    " 1)) & 4 <> 0",
    "select o.id from orders o where length(o.contact_email) > o.xmin::text::int % 40",
    # the same question, asked by the order or the grouping of the rows
    "select id from orders order by ascii(substr(contact_email, id / 8 + 1, 1))"
    " & (1 << id % 8), id",
    "select array_agg(id) from orders group by ascii(substr(contact_email, id / 8 + 1, 1))"
    " & (1 << id % 8) <> 0",
    "select id from orders o join digits d on d.n = 1"
    " and ascii(substr(o.contact_email, o.id, 1)) & 4 <> 0",
]


@pytest.mark.parametrize("sql", EACH_ROW_ASKED)
def test_a_row_asked_its_own_question_carries_its_pii(sql: str) -> None:
    assert _cols(sql)[0] != "-", sql


#: The same question asked in a correlated sub-select of the row (its WHERE, an EXISTS,
#: a scalar sub-select, a rank counted by one): the outer columns it reads there are
#: the predicate's as much as a column named beside it.
ASKED_THROUGH_A_SUB_SELECT = [
    "select id from orders o where exists (select 1"
    " where ascii(substr(o.contact_email, o.id / 8 + 1, 1)) & (1 << o.id % 8) <> 0)",
    "select id from orders o where not exists (select 1"
    " where ascii(substr(o.contact_email, o.id / 8 + 1, 1)) & (1 << o.id % 8) = 0)",
    "select id from orders o where (select true"
    " where ascii(substr(o.contact_email, o.id / 8 + 1, 1)) & (1 << o.id % 8) <> 0)",
    "select id from orders o where exists (select 1 from digits d where d.n = o.id"
    " and ascii(substr(o.contact_email, d.n / 8 + 1, 1)) & (1 << d.n % 8) <> 0)",
    "select id from orders o where 1 = (select 1 from digits d where d.n = o.id"
    " and ascii(substr(o.contact_email, d.n / 8 + 1, 1)) & (1 << d.n % 8) <> 0)",
    "select id from orders o where exists (select 1 from orders p where p.id = o.id"
    " and ascii(substr(p.contact_email, p.id / 8 + 1, 1)) & (1 << p.id % 8) <> 0)",
    "select id from orders o where exists (select 1 where exists (select 1"
    " where ascii(substr(o.contact_email, o.id / 8 + 1, 1)) & (1 << o.id % 8) <> 0))",
    "select id from orders o where ascii(substr(o.contact_email, 1, 1))"
    " & (1 << (select count(*) from orders p where p.id < o.id)::int % 8) <> 0",
    "select id from orders o order by exists (select 1"
    " where ascii(substr(o.contact_email, o.id / 8 + 1, 1)) & (1 << o.id % 8) <> 0) limit 3",
    "select count(*) filter (where exists (select 1"
    " where ascii(substr(o.contact_email, o.id / 8 + 1, 1)) & (1 << o.id % 8) <> 0))"
    " from orders o group by id",
]


@pytest.mark.parametrize("sql", ASKED_THROUGH_A_SUB_SELECT)
def test_a_row_asked_its_own_question_in_a_sub_select_carries_its_pii(sql: str) -> None:
    assert _cols(sql)[0] != "-", sql


@pytest.mark.parametrize(
    "sql",
    [
        "update orders set total = 1 where ascii(substr(contact_email, id / 8 + 1, 1))"
        " & (1 << id % 8) <> 0",
        "delete from orders where length(contact_email) > id",
        "update orders o set note = 'x' where exists (select 1"
        " where ascii(substr(o.contact_email, o.id / 8 + 1, 1)) & (1 << o.id % 8) <> 0)",
        "delete from orders o where (select true"
        " where ascii(substr(o.contact_email, o.id / 8 + 1, 1)) & (1 << o.id % 8) <> 0)",
        # the first WHEN whose condition holds acts: the conditions decide together
        "merge into orders o using (select 1) s on true"
        " when matched and o.id = 1 and ascii(substr(o.contact_email, 1, 1)) & 1 <> 0"
        " then update set note = 'x'"
        " when matched and o.id = 2 and ascii(substr(o.contact_email, 1, 1)) & 2 <> 0"
        " then update set note = 'x'",
    ],
)
def test_a_write_to_rows_each_asked_its_own_question_is_held(sql: str) -> None:
    writes = analyze(sql, COV).pii_writes
    assert any("chosen by a value derived from PII" in w for w in writes), (sql, writes)


#: One aggregate's FILTER, or the computed argument of count(x), asks the rows it adds
#: up a question of their PII: over one row the count is the answer, a bit, and a
#: select list holds as many as it likes while reading that one row. Which rows an
#: aggregate adds up is a value of it, as a CASE's condition is
#: (``sum(CASE WHEN ... THEN 1 END)``).
STACKED_IN_AGGREGATES = [
    (
        "select count(*) filter (where ascii(substr(email, 1, 1)) & 1 <> 0),"
        " count(*) filter (where ascii(substr(email, 1, 1)) & 2 <> 0)"
        " from customers where id = 42",
        ["email", "email"],
    ),
    (
        "select count(nullif(ascii(substr(email, 1, 1)) & 1, 0)),"
        " count(nullif(ascii(substr(email, 1, 1)) & 2, 0)) from customers where id = 42",
        ["email", "email"],
    ),
    (
        "select count(distinct nullif(ascii(substr(ssn, 1, 1)) & 1, 0))"
        " from customers where id = 42",
        ["ssn"],
    ),
    (
        "select count(*) filter (where ascii(substr(email, 1, 1)) & 1 <> 0) over ()"
        " from customers where id = 42",
        ["email"],
    ),
    (
        "select array_agg(id) filter (where birth_date < '1970-01-01')"
        " from customers where id = 42",
        ["birth_date"],
    ),
    # a NULL a computed value makes, and a NULL test beside another question
    (
        "select count(*) filter (where nullif(ascii(substr(email, 1, 1)) & 1, 0) is null)"
        " from customers where id = 42",
        ["email"],
    ),
    (
        "select count(*) filter (where s.e is null) from"
        " (select nullif(ascii(substr(email, 1, 1)) & 1, 0) e from customers where id = 42) s",
        ["email"],
    ),
    (
        "select count(*) filter (where ssn is null and email like 'a%')"
        " from customers where id = 42",
        ["email"],
    ),
]


@pytest.mark.parametrize(("sql", "expected"), STACKED_IN_AGGREGATES)
def test_an_aggregate_chosen_by_pii_carries_it(sql: str, expected: list[str]) -> None:
    assert _cols(sql) == expected


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        # a stored column's count, and a FILTER of clean columns: numbers
        ("select count(email), count(distinct email) from customers", ["-", "-"]),
        ("select count(email::text) from customers", ["-"]),
        ("select count(*) filter (where status = 'paid') from orders", ["-"]),
        # whether a table's column is NULL: its NULL reaches the agent as NULL
        (
            "select count(*) filter (where ssn is null),"
            " count(*) filter (where email is not null or not ssn is null) from customers",
            ["-", "-"],
        ),
        # a stored column's NULL is the agent's to see: so is a test of it
        (
            "select id, ssn is null, case when email is not null then 'ok' end from customers",
            ["-", "-", "-"],
        ),
        ("select sum(case when ssn is null then 1 else 0 end) from customers", ["-"]),
        # the same one question asked of the level's rows in WHERE: a number
        ("select count(*) from customers where email like '%@example.com'", ["-"]),
    ],
)
def test_counts_of_stored_columns_stay_numbers(sql: str, expected: list[str]) -> None:
    assert _cols(sql) == expected


#: A sub-select whose table rows were kept by their own PII, standing as a value
#: (scalar, EXISTS, ARRAY, in a select list or inside an expression) rather than as a
#: whole predicate: over one row it is a bit, and a select list holds as many as it
#: likes in one returned row (so the rows-per-window budget does not bound them), as
#: does an aggregate over several such sub-selects or a nested one.
BIT = "ascii(substr(email, 1, 1)) & {b} <> 0"
ONE_ROW = "from customers where id = 42 and " + BIT
STACKED_IN_SUB_SELECTS = [
    (
        f"select exists (select 1 {ONE_ROW.format(b=1)}), exists (select 1 {ONE_ROW.format(b=2)})",
        ["email", "email"],
    ),
    (f"select (select count(*) {ONE_ROW.format(b=1)})", ["email"]),
    (f"select (select 1 {ONE_ROW.format(b=1)})", ["email"]),
    (f"select array(select 1 {ONE_ROW.format(b=1)})", ["email"]),
    (f"select case when exists (select 1 {ONE_ROW.format(b=1)}) then 1 end", ["email"]),
    (
        f"select a.n, b.n from (select count(*) n {ONE_ROW.format(b=1)}) a,"
        f" (select count(*) n {ONE_ROW.format(b=2)}) b",
        ["email", "email"],
    ),
    (
        f"select sum(v) from (select 1 v {ONE_ROW.format(b=1)}"
        f" union all select 2 {ONE_ROW.format(b=2)}) s",
        ["email"],
    ),
    # a window adds up its partition's rows as an aggregate does
    (
        f"select sum(v) over () from (select 1 v {ONE_ROW.format(b=1)}"
        f" union all select 2 {ONE_ROW.format(b=2)}) s limit 1",
        ["email"],
    ),
    # a sub-select as the whole predicate of a nested level, or of a FILTER, a count's
    # argument or an outer join's ON, where what it keeps is a value
    (f"select (select 1 where exists (select 1 {ONE_ROW.format(b=1)}))", ["email"]),
    (f"select (select 1 having exists (select 1 {ONE_ROW.format(b=1)}))", ["email"]),
    (f"select (select 1 where 1 in (select 1 {ONE_ROW.format(b=1)}))", ["email"]),
    (f"select count(*) filter (where exists (select 1 {ONE_ROW.format(b=1)}))", ["email"]),
    (f"select count((select 1 {ONE_ROW.format(b=1)}))", ["email"]),
    (
        "select a.x from (select 1) base left join (select 1 x) a"
        f" on exists (select 1 {ONE_ROW.format(b=1)})",
        ["email"],
    ),
    # an aggregate over rows kept by a sub-select whose branches ask different bits
    (
        "select string_agg(v::text, ',') from (values (1), (2)) t(v) where v in"
        f" (select 1 {ONE_ROW.format(b=1)} union all select 2 {ONE_ROW.format(b=2)})",
        ["email"],
    ),
    (
        "select sum(v) from (values (1), (2)) t(v) where exists"
        f" (select 1 {ONE_ROW.format(b=1)} and v = 1 union all select 1 {ONE_ROW.format(b=2)}"
        " and v = 2)",
        ["email"],
    ),
    # an outer join fills the side with no rows with NULLs: one join per bit
    (
        f"select a.x, b.x from (select 1 x {ONE_ROW.format(b=1)}) a"
        f" full join (select 1 x {ONE_ROW.format(b=2)}) b on true",
        ["email", "email"],
    ),
    (
        f"select a.x, b.x from (select 1) base left join (select 1 x {ONE_ROW.format(b=1)}) a"
        f" on true left join lateral (select 1 x {ONE_ROW.format(b=2)}) b on true",
        ["email", "email"],
    ),
    (
        "select g from generate_series(0, 3) g where g ="
        f" (select count(*) {ONE_ROW.format(b=1)}) + 2 * (select count(*) {ONE_ROW.format(b=2)})",
        ["email"],
    ),
]


@pytest.mark.parametrize(("sql", "expected"), STACKED_IN_SUB_SELECTS)
def test_a_sub_select_kept_by_its_own_pii_is_a_value(sql: str, expected: list[str]) -> None:
    assert _cols(sql) == expected


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        # one question, counted at the top level: a number
        ("select count(*) from (select id from customers where email like '%@x.com') s", ["-"]),
        (
            "with g as (select id from customers where email like '%@x.com') select count(*) from g",
            ["-"],
        ),
        # a sub-select standing as the whole predicate only keeps or drops rows
        (
            "select c.id from customers c where c.id in"
            " (select customer_id from orders where contact_email like '%@x.com')",
            ["-"],
        ),
        (f"select 1 where exists (select 1 {ONE_ROW.format(b=1)})", ["-"]),
        # negated too: an anti-join on a PII filter
        (
            "select c.id from customers c where not exists (select 1 from orders o"
            " where o.customer_id = c.id and o.contact_email like '%@x.com')",
            ["-"],
        ),
        (
            "select c.id from customers c where c.id not in"
            " (select customer_id from orders where contact_email like '%@x.com')",
            ["-"],
        ),
        # a lookup by the whole value: a guess, not a bit of it
        ("select (select id from customers where email = 'a@example.com')", ["-"]),
        ("select (select id from customers where email in ('a@example.com', 'b@x.org'))", ["-"]),
        ("select (select id from customers where email = $1)", ["-"]),
    ],
)
def test_one_question_or_a_lookup_stays_clean(sql: str, expected: list[str]) -> None:
    assert _cols(sql) == expected


@pytest.mark.parametrize(
    "sql",
    [
        f"update digits set label = (select count(*) {ONE_ROW.format(b=1)})::text",
        f"insert into digits (n) select (select count(*) {ONE_ROW.format(b=1)})",
    ],
)
def test_a_sub_select_kept_by_its_own_pii_written_is_a_copy(sql: str) -> None:
    writes = analyze(sql, COV).pii_writes
    assert any("PII" in w for w in writes), (sql, writes)


#: Under OR or NOT the leaves decide together which rows are kept: a clean column of
#: the row there picks which question of its PII each row answers, as ``... & (1 <<
#: id % 8)`` does; over rows holding copies of one value the rows kept spell it.
ASKED_UNDER_OR = [
    "select id from orders where (id = 1 and ascii(substr(contact_email, 1, 1)) & 1 <> 0)"
    " or (id = 2 and ascii(substr(contact_email, 1, 1)) & 2 <> 0)",
    "select sum(id) from orders where (id = 1 and ascii(substr(contact_email, 1, 1)) & 1 <> 0)"
    " or (id = 2 and ascii(substr(contact_email, 1, 1)) & 2 <> 0)",
    "select id from orders where (id <> 1 or ascii(substr(contact_email, 1, 1)) & 1 = 0)"
    " and (id <> 2 or ascii(substr(contact_email, 1, 1)) & 2 = 0)",
    "select id from orders where not (id = 1 and ascii(substr(contact_email, 1, 1)) & 1 <> 0)",
]


@pytest.mark.parametrize("sql", ASKED_UNDER_OR)
def test_a_row_asked_its_own_question_under_or_carries_its_pii(sql: str) -> None:
    assert _cols(sql)[0] != "-", sql


@pytest.mark.parametrize(
    "sql",
    [
        # conjuncts keep rows on their own; PII leaves alone under OR ask every row alike
        "select id from orders where id = 5 and contact_email like 'a%'",
        "select id from orders o where (o.status = 'paid' or o.status = 'open')"
        " and o.contact_email like '%@example.com'",
        "select id from orders where status = 'paid'"
        " and (contact_email like '%@x.com' or contact_email like '%@y.com')",
        "select id from customers where (full_name like 'J%' and email like '%@x') or ssn is null",
        "select id from customers where not (email like 'a%')",
        # whole-value guesses and clean keys under OR: a lookup, a guess per row
        "select id from customers where email = 'a@example.com' or id = 7",
        "select id from orders where (id = 1 and contact_email = 'a@x.org')"
        " or (id = 2 and contact_email = 'b@x.org')",
    ],
)
def test_pii_alone_under_or_stays_clean(sql: str) -> None:
    assert _cols(sql)[0] == "-", sql


def test_a_sub_select_of_a_view_kept_by_its_pii_is_a_value() -> None:
    """A view's row is not one table's own, so its PII choosing it was neither marked
    nor noted: ``(SELECT count(*) FROM v WHERE id = 42 AND <bit>)`` read as a number."""
    from dbgate.pii.schema import Column, Relation

    base = _snapshot()
    rels = dict(base.relations)
    columns = tuple(Column(c, i, 25) for i, c in enumerate(["id", "email"], start=1))
    rels[900] = Relation(900, "public", "cv", "v", 901, columns, "SELECT id, email FROM customers")
    snap = SchemaSnapshot(
        relations=rels, functions=dict(base.functions), assume_builtin_functions=True
    )
    cov = Coverage(snap, load_catalog())

    def cols(sql: str) -> list[str]:
        return [show(c) for c in output_of(sql, cov).columns]

    assert cols("select (select count(*) from cv where id = 42 and ascii(email) & 1 <> 0)") == [
        "email"
    ]
    assert cols("select id from cv where email like 'a%'") == ["-"]
    assert cols("select (select id from cv where email = 'a@example.com')") == ["-"]


def test_one_merge_condition_still_asks_every_row_alike() -> None:
    sql = (
        "merge into orders o using (select 1) s on true"
        " when matched and o.id = 5 and o.contact_email like 'a%' then update set note = 'x'"
    )
    assert not analyze(sql, COV).pii_writes
