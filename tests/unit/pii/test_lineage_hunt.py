"""Leaks a security tester found in column lineage, one test per way out.

1. Ordered-set aggregates: ``mode() WITHIN GROUP (ORDER BY email)`` returns a value
   of the ORDER BY input, which must flow into the output like an argument.
2. ``WITH ORDINALITY`` / ``ROWS FROM``: after a function of unknown width (unnest of an
   array that may hold composites, a polymorphic function), no later column position
   is known: the ordinality column and later functions must not be called clean.
3. Query text (``current_query()``, ``pg_cursors.statement``,
   ``pg_prepared_statements.statement`` ...) holds the raw values of resolved tokens.

Hand-made schema (no server); tests/integration/pii/test_hunt_lineage.py runs the same
queries against the demo database.
"""

from __future__ import annotations

import pytest

from dbgate.pii.catalog import Catalog, ColumnRule
from dbgate.pii.catalog_load import load_catalog
from dbgate.pii.coverage import Coverage
from dbgate.pii.lin import Lin
from dbgate.pii.lineage import Output, analyze
from dbgate.pii.schema import Column, FunctionInfo, Relation, SchemaSnapshot

TOKEN = "tok_email_r" + "0123456789abcdef" * 2


def _fn(oid: int, name: str, ret: int, out: tuple[str, ...] | None = None) -> FunctionInfo:
    return FunctionInfo(oid, "pg_catalog", name, True, ret, out)


def _snapshot() -> SchemaSnapshot:
    base = SchemaSnapshot.build(
        {
            "public.customers": [
                "id",
                "full_name",
                "email",
                "phone",
                "ssn",
                ("birth_date", 1082),
                "address",
            ],
            "public.orders": ["id", "customer_id", "total", "status"],
            "public.pg_stat_statements": ["userid", "queryid", "query", "calls"],
        }
    )
    rels = dict(base.relations)

    def view(oid: int, schema: str, name: str, cols: list[str], definition: str) -> None:
        columns = tuple(Column(c, i, 25) for i, c in enumerate(cols, start=1))
        rels[oid] = Relation(oid, schema, name, "v", oid + 1, columns, definition)

    view(900, "pg_catalog", "pg_cursors", ["name", "statement", "is_holdable"], "SELECT ...")
    view(902, "pg_catalog", "pg_prepared_statements", ["name", "statement"], "SELECT ...")
    view(904, "pg_catalog", "pg_stat_activity", ["pid", "query"], "SELECT ...")
    view(906, "pg_catalog", "pg_backend_memory_contexts", ["name", "ident"], "SELECT ...")
    view(908, "public", "v_cursors", ["s"], "SELECT statement AS s FROM pg_cursors")
    # As a real server lists them: unnest(anyarray) returns anyelement (as wide as a
    # composite element type), unnest(tsvector) three columns; jsonb_populate_record
    # returns its first argument's (composite) type.
    functions = {
        "unnest": [
            _fn(1, "unnest", 2283),
            _fn(2, "unnest", 2249, ("lexeme", "positions", "weights")),
            _fn(3, "unnest", 3831),
        ],
        "jsonb_populate_record": [_fn(4, "jsonb_populate_record", 2283)],
        "generate_series": [_fn(5, "generate_series", 23), _fn(6, "generate_series", 20)],
    }
    return SchemaSnapshot(relations=rels, functions=functions, assume_builtin_functions=True)


# The shipped catalog without its pg_stat_activity line: query text is PII built in.
CATALOG = Catalog(
    columns=tuple(r for r in load_catalog().columns if "pg_stat_activity" not in r.pattern)
)
COV = Coverage(_snapshot(), CATALOG)


def show(lin: Lin) -> str:
    """A lineage as the tables below write it: its entities joined by +, ? for
    unknown, - for clean."""
    parts = sorted(lin.entities)
    if lin.unknown:
        parts.append("?")
    return "+".join(parts) or "-"


def output_of(sql: str, cov: Coverage) -> Output:
    """The one result ``sql`` returns, as the lineage planner sees it under ``cov``."""
    outs = [s.output for s in analyze(sql, cov).statements if s.output is not None]
    assert len(outs) == 1
    return outs[0]


def _out(sql: str) -> Output:
    return output_of(sql, COV)


def _cols(sql: str, n: int) -> list[str]:
    out = _out(sql)
    return [show(out.at(i)) for i in range(n)]


# ----------------------------------------------------------- 1. ordered-set aggregates

ORDERED_SET = [
    ("select mode() within group (order by email) from customers where id=1", ["email"]),
    (
        "select percentile_disc(0.5) within group (order by full_name) from customers where id=1",
        ["name"],
    ),
    (
        "select percentile_disc(array(select g/4999.0 from generate_series(0,4999) g))"
        " within group (order by concat_ws('|', id::text, full_name, email, ssn))"
        " from customers where id > 0",
        ["email+name+ssn"],
    ),
    (
        "select percentile_cont(0.5) within group (order by extract(epoch from birth_date))"
        " from customers where id=1",
        ["birth_date"],
    ),
    (
        "select pg_catalog.mode() within group (order by phone desc nulls last), id"
        " from customers group by id",
        ["phone", "-"],
    ),
    (
        "select percentile_disc(0.5) within group (order by email)"
        " filter (where ssn like '1%') from customers",
        # the FILTER picks which rows the value is of: its PII is the value's too
        ["email+ssn"],
    ),
    # hypothetical-set aggregates return a rank or a fraction, not the input: a count
    # of the rows whose key sorts before the argument, as a FILTER's count is
    ("select rank('a') within group (order by email) from customers", ["email"]),
    ("select percent_rank('a') within group (order by full_name) from customers", ["name"]),
    ("select cume_dist('a') within group (order by ssn) from customers", ["ssn"]),
    ("select rank(3) within group (order by id) from customers", ["-"]),
    # an ordinary aggregate's ORDER BY keeps its order in the value: its PII too
    # (tests/unit/pii/test_lineage_order.py)
    ("select string_agg(id::text, ',' order by email) from customers", ["email"]),
    ("select string_agg(email, ',' order by id) from customers", ["email"]),
    ("select string_agg(id::text, ',' order by id) from customers", ["-"]),
]


@pytest.mark.parametrize(("sql", "expected"), ORDERED_SET, ids=[c[0][:60] for c in ORDERED_SET])
def test_ordered_set_aggregate_input_flows_to_the_output(sql: str, expected: list[str]) -> None:
    assert _cols(sql, len(expected)) == expected


def test_token_in_within_group_is_refused_and_its_output_is_pii() -> None:
    """The aggregate computes on the value: the token is refused (resolved only where
    it is compared with PII), and the output would be tokenized again anyway."""
    a = analyze(f"select mode() within group (order by '{TOKEN}'::text)", COV)
    (lin,) = a.statements[0].output.columns  # type: ignore[union-attr]
    assert lin.token and lin.entities == {"email"}
    assert [s.allowed for s in a.token_sites] == [False]
    assert "compared with a PII column" in a.token_sites[0].why


def test_user_ordered_set_aggregate_input_is_refused_for_tokens() -> None:
    snap = _snapshot()
    snap.functions["myagg"] = [FunctionInfo(7, "public", "myagg", False, 25, None)]
    cov = Coverage(snap, CATALOG)
    a = analyze(f"select myagg() within group (order by '{TOKEN}'::text)", cov)
    assert [s.allowed for s in a.token_sites] == [False]
    assert a.statements[0].output.columns[0].unknown  # type: ignore[union-attr]


# ----------------------------------------------------------- 2. ordinality, ROWS FROM

ARRAY_OF_EMAILS = "(select array_agg(email) from customers where id = 1)"


def test_unnest_of_unknown_width_with_ordinality_fails_closed() -> None:
    sql = f"select * from unnest({ARRAY_OF_EMAILS}) with ordinality"
    # the value column, and (unknown position) the ordinality column, are PII
    assert _cols(sql, 3) == ["email", "email", "email"]


def test_alias_colnames_after_an_unknown_width_resolve_to_its_lineage() -> None:
    sql = f"select u, o from unnest({ARRAY_OF_EMAILS}) with ordinality as t(u, o)"
    assert _cols(sql, 2) == ["email", "email"]
    sql = f"select t.u from unnest({ARRAY_OF_EMAILS}) with ordinality as t(u, o)"
    assert _cols(sql, 1) == ["email"]


def test_rows_from_with_token_array() -> None:
    sql = f"select * from rows from (unnest(array['{TOKEN}']), generate_series(1,1))"
    out = _out(sql)
    assert out.tail is None and [show(c) for c in out.columns] == ["email", "-"]
    assert out.columns[0].token


def test_unnest_of_scalar_array_with_ordinality_is_exact() -> None:
    out = _out(f"select * from unnest(array['{TOKEN}']) with ordinality")
    assert out.tail is None and [show(c) for c in out.columns] == ["email", "-"]
    out = _out(f"select * from unnest('{{{TOKEN}}}'::text[]) with ordinality as t(v, n)")
    assert out.tail is None and out.names == ["v", "n"]
    assert [show(c) for c in out.columns] == ["email", "-"]


def test_rows_from_after_an_unknown_width_function_fails_closed() -> None:
    sql = (
        f"select * from rows from (generate_series(1,2), unnest({ARRAY_OF_EMAILS}),"
        " generate_series(3,4)) with ordinality"
    )
    out = _out(sql)
    # the first position is known, and how many rows there are is the e-mails' count:
    # every column carries it (a function sized by PII sizes its level)
    assert len(out.columns) == 1
    assert all(out.at(i).pii for i in range(6))


def test_multi_argument_unnest_of_unknown_width() -> None:
    sql = f"select * from unnest(array[1, 2], {ARRAY_OF_EMAILS}) with ordinality"
    out = _out(sql)
    # array[1, 2] lists its two rows; the e-mails' array sizes the rest: every column
    assert len(out.columns) == 1
    assert all(out.at(i).pii for i in range(4))


def test_polymorphic_function_with_ordinality_fails_closed() -> None:
    # jsonb_populate_record(null::customers, ...) is as wide as customers: position 1
    # is full_name from the token, not the ordinality column
    sql = (
        "select * from jsonb_populate_record(null::customers,"
        f' \'{{"full_name": "{TOKEN}"}}\') with ordinality'
    )
    out = _out(sql)
    assert all(out.at(i).pii for i in range(9))


def test_unnest_of_whole_rows_fails_closed() -> None:
    sql = "select u.* from customers c, unnest(array[c]) with ordinality u"
    out = _out(sql)
    assert all(out.at(i).pii for i in range(8))


def test_polymorphic_functions_without_function_info_fail_closed() -> None:
    snap = SchemaSnapshot(relations=_snapshot().relations, assume_builtin_functions=True)
    cov = Coverage(snap, CATALOG)
    sql = (
        "select * from rows from (jsonb_populate_record(null::customers,"
        f' \'{{"ssn": "{TOKEN}"}}\'), generate_series(1, 1))'
    )
    out = analyze(sql, cov).statements[0].output
    assert out is not None and all(out.at(i).pii for i in range(8))


# ----------------------------------------------------------- 3. query text

QUERY_TEXT = [
    "select current_query()",
    f"select current_query() where 'x' <> '{TOKEN}'",
    "select pg_catalog.current_query()",
    "select name, statement from pg_cursors",
    "select statement from pg_catalog.pg_cursors",
    "select * from pg_prepared_statements",
    "select statement from pg_catalog.pg_prepared_statements",
    "select query from pg_stat_activity",
    "select query from pg_stat_statements",
    "select ident from pg_backend_memory_contexts",
    "select * from pg_cursor()",
    "select p.statement from pg_catalog.pg_prepared_statement() p",
    "select s from v_cursors",
    "select upper(statement) from pg_cursors",
]


@pytest.mark.parametrize("sql", QUERY_TEXT)
def test_query_text_is_never_clean(sql: str) -> None:
    out = _out(sql)
    lins = [*out.columns, *([out.tail] if out.tail is not None else [])]
    assert any(lin.pii or lin.unknown for lin in lins), sql
    # the text column itself, wherever it is
    names = out.names
    for col in ("statement", "query", "ident", "s", "current_query", "upper"):
        if col in names:
            assert not out.columns[names.index(col)].clean, (sql, col)


def test_other_columns_of_those_views_stay_readable() -> None:
    out = _out("select name, is_holdable from pg_cursors")
    assert all(c.clean for c in out.columns)


def test_query_text_columns_are_built_in_and_can_be_switched_off() -> None:
    cat = Catalog()
    for schema, table, column in (
        ("pg_catalog", "pg_stat_activity", "query"),
        ("pg_catalog", "pg_cursors", "statement"),
        ("pg_catalog", "pg_prepared_statements", "statement"),
        ("public", "pg_stat_statements", "query"),
    ):
        entity, why = cat.classify(schema, table, column)
        assert entity == "pii" and "query text" in why
    assert cat.classify("pg_catalog", "pg_cursors", "name")[0] is None
    off = Catalog(columns=(ColumnRule("pg_catalog.pg_cursors.statement", "none"),))
    assert off.classify("pg_catalog", "pg_cursors", "statement")[0] is None


# ------------------------------------------------- 4. tokens stored in a view's text

VIEW_DEFINITIONS = [
    f"create view v as select id from customers where email = '{TOKEN}'",
    f"create or replace view v as select c.id from customers c join orders o"
    f" on o.customer_id = c.id and c.email = '{TOKEN}'",
    f"create view v as select id from customers where id in"
    f" (select id from customers where email = '{TOKEN}')",
    f"create materialized view v as select id from customers where email = '{TOKEN}'",
    f"create temp view v as select '{TOKEN}'::text as e",
]


@pytest.mark.parametrize("sql", VIEW_DEFINITIONS)
def test_a_token_anywhere_in_a_view_definition_is_refused(sql: str) -> None:
    """The server keeps a view's text (``pg_views.definition``, ``pg_get_viewdef``)
    with its literals: a token resolved in its WHERE would be stored as the raw value,
    for any later plain read of the catalog."""
    a = analyze(sql, COV)
    assert a.token_sites and not any(s.allowed for s in a.token_sites), sql


def test_a_token_in_the_filter_of_create_table_as_is_still_resolved() -> None:
    """CREATE TABLE AS stores rows, not its query's text: its filter may use a token."""
    a = analyze(f"create table t as select id from customers where email = '{TOKEN}'", COV)
    assert [s.allowed for s in a.token_sites] == [True]


# ----------------------------- 5. statements over the rows of a relation, by name only

OVER_A_RELATION = [
    "refresh materialized view concurrently {}",
    "create unique index on {} (id)",
    "alter table {} alter column id type int using id::int",
]


@pytest.mark.parametrize("sql", OVER_A_RELATION)
def test_a_relation_the_snapshot_lacks_is_unknown_in_statements_over_its_rows(sql: str) -> None:
    """Their errors quote rows (``DETAIL: Row: (…)``, ``Key (…)=(…) is duplicated``):
    a relation created since the snapshot must be reported, to be read again."""
    assert analyze(sql.format("made_later"), COV).unknown_relations == {"made_later"}
    assert analyze(sql.format("public.customers"), COV).unknown_relations == set()


def test_an_index_altered_by_name_is_not_an_unknown_relation() -> None:
    assert (
        analyze("alter index customers_pkey set (fillfactor = 90)", COV).unknown_relations == set()
    )


# ------------------------------------------ 6. large-object state a later read gives back

LO_STATE = [
    "select lo_lseek64(0, ascii(email), 0) from customers where id = 1",
    "select lo_lseek(0, ascii(email), 0) from customers where id = 1",
    "select lo_truncate64(0, ascii(email)) from customers where id = 1",
    "select lo_create(ascii(email)) from customers where id = 1",
    "select lo_unlink(ascii(email)) from customers where id = 1",
    "select lo_open(1234, 262144) from generate_series(1, 200) g, customers c"
    " where c.id = 1 and g <= ascii(c.email)",
]


@pytest.mark.parametrize("sql", LO_STATE)
def test_large_object_state_set_from_pii_is_held(sql: str) -> None:
    """A descriptor's position (``lo_tell64``), an object's size or number, how many
    descriptors are open: kept for a later statement, like a setting."""
    assert any("keeps a value derived from PII" in w for w in analyze(sql, COV).pii_writes), sql


def test_large_object_calls_of_constants_are_not_held() -> None:
    assert analyze("select lo_lseek64(0, 5, 0), lo_open(1234, 262144)", COV).pii_writes == []


# -------------------------------------------------- 7. generated columns of PII columns


def _with_generated(expr: str, name: str = "made") -> Coverage:
    from dataclasses import replace

    from dbgate.pii.schema import Column

    snap = SchemaSnapshot.build({"public.people": ["id", "full_name", "note"]})
    (rel,) = snap.relations.values()
    col = Column(name, len(rel.columns) + 1, 25, None, expr)
    rel = replace(rel, columns=(*rel.columns, col))
    return Coverage(SchemaSnapshot({rel.oid: rel}, assume_builtin_functions=True), CATALOG)


@pytest.mark.parametrize(
    "expr",
    ["lower(full_name)", "to_tsvector('simple'::regconfig, full_name)", '"left"(full_name, 3)'],
)
def test_a_column_generated_from_pii_is_pii(expr: str) -> None:
    cov = _with_generated(expr)
    (rel,) = cov.snapshot.relations.values()
    assert cov.relation_lins(rel)[-1].entities == {"name"}
    assert [d.why for d in cov.decisions if d.column == "made"] == ["generated from name"]


def test_a_column_generated_from_plain_columns_stays_clean() -> None:
    cov = _with_generated("upper(note) || (id)::text")
    (rel,) = cov.snapshot.relations.values()
    assert cov.relation_lins(rel)[-1].clean


# ------------------------------- 8. values that a row's own PII makes present or NULL

OWN_ROW_VALUES = [
    "select (select 1 where ascii(c.email) & 4 <> 0) from customers c",
    "select (select count(*) filter (where ascii(c.email) & 4 <> 0)) from customers c",
    "select x.v from customers c left join (select 1 as v) x on ascii(c.email) & 4 <> 0",
    "select x.v from customers c left join lateral (select 1 as v where ascii(c.email) & 4 <> 0)"
    " x on true",
    "select x.v from (select 1 as v) x right join customers c on ascii(c.email) & 4 <> 0",
    "select (select 1 where exists (select 1 where ascii(c.email) & 4 <> 0)) from customers c",
]


@pytest.mark.parametrize("sql", OWN_ROW_VALUES)
def test_a_value_made_present_by_the_rows_own_pii_is_pii(sql: str) -> None:
    assert _cols(sql, 1) == ["email"], sql


def test_a_row_kept_by_its_own_pii_is_still_one_bit() -> None:
    """WHERE and an inner join keep or drop the row itself: one bit, as documented."""
    assert _cols("select id from customers where ascii(email) & 4 <> 0", 1) == ["-"]
    assert _cols(
        "select c.id from customers c join (select 1 as v) x on ascii(c.email) & 4 <> 0", 1
    ) == ["-"]
    # a constant row a sub-select's rows keep: one bit per statement (docs/security.md)
    assert _cols("select 1 where exists (select 1 from customers where ascii(email) > 9)", 1) == [
        "-"
    ]
