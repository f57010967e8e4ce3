"""Numbers that spell PII: functions and clauses that were taken to carry no value.

A security tester read customers' names, e-mails and card numbers as plain numbers,
one character code at a time, through constructs the walk treated as value-free or
as "only choosing rows" — and, wrapped in ``string_agg(chr(...))``, as text again.
Each leaking shape must now come out PII (tokenized); the clean controls stay clean.

``S`` below is ``(select ascii(substr(full_name, 1, 1)) from customers where id = 42)``.
Hand-made schema (no server); tests/integration/clients/test_pii_through_dbgate.py runs
some of them through the relay against the demo database.
"""

from __future__ import annotations

import pytest

from dbgate.pii.lineage import analyze
from dbgate.pii.room import PiiRoom, PiiSettings
from dbgate.pii.tokens import Key, Keyring, Tokenizer
from dbgate.policy.functions import SQL_STRING_FUNCTIONS
from tests.unit.pii.test_lineage_hunt import CATALOG, COV, _snapshot, output_of, show

S = "(select ascii(substr(full_name, 1, 1)) from customers where id = 42)"

LEAKS = [
    # functions that ran SQL given as text (the classifier knew, lineage did not)
    "select ts_rewrite('a'::tsquery, 'select ''a''::tsquery, quote_literal(full_name)::tsquery"
    " from customers where id = 42')",
    "select query_to_xmlschema('select email from customers', true, false, '')",
    # arguments that were dropped
    f"select max(x) from (select ntile({S}) over () as x from generate_series(1, 300)) z",
    f"select rank({S}) within group (order by g) from generate_series(0, 300) g",
    f"select dense_rank({S}) within group (order by g) from generate_series(0, 300) g",
    f"select percent_rank({S}) within group (order by g) from generate_series(0, 300) g",
    f"select cume_dist({S}) within group (order by g) from generate_series(0, 300) g",
    # ... and the keys they rank by: over one row, rank(x) is 1 + (key < x)
    "select rank(1) within group (order by ascii(substr(email, 1, 1)) & 4),"
    " cume_dist(1) within group (order by ascii(substr(email, 1, 1)) & 8) from customers"
    " where id = 42",
    "select g, rank(g) within group (order by ascii(substr(email, 1, 1))) from customers c,"
    " generate_series(0, 255) g where c.id = 42 group by g",
    # count of a choice
    f"select count(nullif(g <= {S}, false)) from generate_series(1, 300) g",
    f"select count(case when g <= {S} then 1 end) from generate_series(1, 300) g",
    f"select count(distinct g % {S}) from generate_series(1, 300) g",
    # how many rows a function returns, how many groups
    f"select count(*) from generate_series(1, {S})",
    "select count(*) from customers c, unnest(string_to_array(c.email, '')) where c.id = 42",
    f"select count(*) from (select 1 from generate_series(1, 300) g group by g % {S}) z",
    f"select count(*) from (select distinct g % {S} from generate_series(1, 300) g) z",
    # which rows a limit keeps
    f"select g from generate_series(0, 300) g order by abs(g - {S}) limit 1",
    f"select g from generate_series(0, 300) g offset {S} limit 1",
    f"select g from generate_series(0, 300) g limit {S}",
    f"select distinct on (g < {S}) g from generate_series(0, 300) g order by g < {S}, g desc",
    # JOIN USING and NATURAL JOIN are equalities too
    f"select g.x from generate_series(1, 300) g(x) natural join (select {S} as x) s",
    f"select count(*) from generate_series(1, 300) g(x) join (select {S} as x) s using (x)",
    # windows
    f"select count(*) over (rows between current row and {S} following) from generate_series(1, 9)",
    f"select count(*) over w from generate_series(1, 9) window w as (rows between current row"
    f" and {S} following)",
    f"select count(*) over (partition by g % {S}) from generate_series(1, 300) g",
    f"select max(r) from (select rank() over (order by g % {S}, g) r from generate_series(1, 9) g) z",
    # set-returning functions in a select list multiply its rows
    f"select count(*) from (select generate_series(1, {S})) z",
    "select count(*) from (select unnest(string_to_array(email, '')) from customers"
    " where id = 42) z",
    "select count(*) from (select regexp_split_to_table(email, '') from customers where id = 42) z",
    f"select max(rn) from (select row_number() over () rn, generate_series(1, {S})) z",
    # a sample sized by PII (system_rows would keep exactly that many rows)
    f"select count(*) from customers tablesample bernoulli({S})",
    f"select count(*) from customers tablesample system (1) repeatable ({S})",
    # positions of a value's characters
    "select n from customers c, unnest(string_to_array(c.email, '')) with ordinality t(ch, n)"
    " where c.id = 42 and ch = 'a'",
    # JSON_TABLE's PASSING arguments
    "select jt.v from customers c, json_table('[[0,1,2,3]]'::jsonb, '$[0][$i]'"
    " passing ascii(substr(c.address, 1, 1)) as i columns (v int path '$')) jt where c.id = 42",
    "select count(*) from customers c, json_table(to_jsonb(array_fill(0,"
    " array[ascii(c.email)])), '$[*]' columns (x int path '$')) j where c.id = 1",
    # set-returning functions the tester used in a select list, grouped per position
    "select n, count(*) from (select n, generate_series(1, ascii(substr(email, n, 1)))"
    " from customers, generate_series(1, 60) n where id = 2) s group by n order by n",
    "select count(*) from (select unnest(array_fill(0, array[ascii(email)])) from customers"
    " where id = 1) s",
    "select count(*) from (select generate_series(1, 300) g except select"
    " generate_series(ascii(email) + 1, 300) from customers where id = 1) s",
    # whether a sub-select has rows, when PII sized them and an outer column cuts them
    "select max(g) from generate_series(1, 300) g where exists (select 1 from customers c,"
    " generate_series(1, ascii(c.email)) x where c.id = 42 offset g - 1)",
    "select max(g) from generate_series(1, 300) g where not exists (select 1 from customers c,"
    " generate_series(1, ascii(c.email)) x where c.id = 42 offset g - 1)",
    "select max(g) from generate_series(1, 300) g where exists (select 1 from customers c,"
    " generate_series(1, ascii(c.email)) x where c.id = 42 limit g - 100)",
    "select case when exists (select 1 from customers c, generate_series(1, ascii(c.email)) x"
    " where c.id = 42 offset g - 1) then g end from generate_series(1, 300) g",
    # HAVING compares a count of rows PII sized with an outer column
    "select g from generate_series(1, 300) g where exists (select from customers c,"
    " generate_series(1, ascii(c.email)) x where c.id = 42 having count(*) >= g)",
    "select g from generate_series(1, 300) g where exists (select 1 from customers c,"
    " generate_series(1, ascii(c.email)) x where c.id = 42 having max(x) >= g)",
    "select max(o.id) from orders o where exists (select from customers c,"
    " generate_series(1, ascii(c.email)) x where c.id = 42 having count(*) >= o.id)",
    # a count a sub-select brings, compared with one table row's key
    "with s as (select 1 from customers c, generate_series(1, ascii(c.email)) x where"
    " c.id = 42) select max(o.id) from orders o where (select count(*) from s) >= o.id",
    "with s as (select 1 from customers c, generate_series(1, ascii(c.email)) x where"
    " c.id = 42) select max(o.id) from orders o where exists (select 1 from s offset o.id - 1)",
    "with s as (select 1 from customers c, generate_series(1, ascii(c.email)) x where"
    " c.id = 42) select max(c.id) from customers c where length(c.email) * 0 + c.id"
    " <= (select count(*) from s)",
    # EXPLAIN ANALYZE counts the rows each node returns
    f"explain (analyze, costs off, timing off) select 1 from generate_series(1, {S})",
    f"explain analyze select 1 from generate_series(1, 300) g where g < {S}",
    # ... and the memory, disk and buffers each node used: sizes of values the query
    # computes, its outputs' or not (``Sort Method: quicksort  Memory: 150kB``)
    "explain analyze select count(*) from (select g, repeat('x', ascii(substr(email, 1, 1)))"
    " r from customers c, generate_series(1, 1000) g where c.id = 42 order by r, g) s",
    "explain (analyze, costs off) select 1 from (select repeat('x', ascii(full_name) * 10240)"
    " r from customers where id = 42 order by r) s",
    "explain analyze select count(*) from (select * from customers c, generate_series(1, 1000)"
    " g where c.id = 42 order by g) s",
    "explain analyze select count(*) from (select c from customers c order by 1) s",
    "explain analyze select count(*) from orders natural join (select id, email from customers) c",
]


@pytest.mark.parametrize("sql", LEAKS, ids=[f"leak{i}" for i in range(len(LEAKS))])
def test_numbers_derived_from_pii_are_pii(sql: str) -> None:
    out = output_of(sql, COV)
    lin = out.union()
    assert lin.pii or lin.unknown, (sql, show(lin))


CLEAN = [
    "select count(*) from customers",
    "select count(email), count(distinct email) from customers",
    "select count(*) from (select distinct email from customers) z",
    "select count(*) from customers where email like 'a%'",  # a one-bit oracle, by design
    # whole values grouped (an order by PII is a value: tests/unit/pii/test_lineage_order.py)
    "select row_number() over (partition by email order by id) from customers",
    "select ntile(4) over (order by id) from customers",
    "select g from generate_series(1, 10) g order by g limit 3",
    "select id from customers order by email limit 1",  # which customer is first: order
    "select * from unnest(array[1, 2]) with ordinality",
    "select count(*) from (select unnest(array[email, phone]) from customers) z",
    "select id, generate_series(1, 3) from customers",
    "select count(*) over (partition by id % 3) from customers",
    "select o.id from orders o join customers c using (id)",
    # a scalar function in FROM returns one row, whatever its argument
    "select c.id from customers c, lower(c.email) l",
    "explain select email from customers",
    "explain analyze select id, status from orders",
    "explain analyze select id from customers where id < 10 order by id",
    "select id from customers c where exists (select 1 from orders o where o.customer_id = c.id)",
    "select id from customers c where c.email = (select email from customers where id = 42)",
    "select g from generate_series(1, 10) g where exists (select 1 from orders o where"
    " o.customer_id = g having count(*) > 2)",
    "select g from generate_series(1, 10) g where exists (select 1 from customers c where"
    " c.id = g and c.email like 'a%')",
    "explain analyze select g as x from generate_series(1, 10) g order by x",
]


@pytest.mark.parametrize("sql", CLEAN, ids=[f"clean{i}" for i in range(len(CLEAN))])
def test_clean_controls_stay_clean(sql: str) -> None:
    out = output_of(sql, COV)
    assert all(not (c.pii or c.unknown) for c in out.columns), (sql, [show(c) for c in out.columns])


def test_counting_by_a_pii_group_keeps_counts_clean() -> None:
    """Orders per customer: the customer is tokenized, the count is not."""
    out = output_of("select email, count(*) from customers group by email", COV)
    assert [show(c) for c in out.columns] == ["email", "-"]


def test_every_function_that_runs_sql_text_is_a_data_reader() -> None:
    from dbgate.pii.lineage.builtin_names import DATA_READERS

    assert set(SQL_STRING_FUNCTIONS) <= DATA_READERS


def _room() -> PiiRoom:
    key = Key("k", b"k" * 32)
    return PiiRoom(CATALOG, Tokenizer(Keyring([key])), PiiSettings(), _snapshot())


def test_a_cursor_declared_again_keeps_what_it_returned() -> None:
    """The second DECLARE of a name is planned before it runs, and fails on the server
    (``cursor "c" already exists``): a FETCH still returns the first one's rows."""
    session = _room().session("agent")
    session.plan("declare c cursor with hold for select full_name, email from customers")
    session.plan("declare c cursor with hold for select 'a'::text, 'b'::text")
    fetch = analyze("fetch all from c", COV, session).statements[0].output
    assert fetch is not None and all(c.pii for c in fetch.columns)
    session.plan("prepare p as select email from customers")
    session.plan("prepare p as select 'a'::text")
    run = analyze("execute p", COV, session).statements[0].output
    assert run is not None and run.columns[0].pii


# A value kept in session or transaction state, read back by a later clean statement.
STATE_KEPT = [
    f"select pg_advisory_xact_lock(1, {S})",
    f"select pg_advisory_xact_lock_shared({S})",
    f"select pg_try_advisory_xact_lock(2, {S})",
    "select pg_try_advisory_xact_lock_shared(('x' || encode(convert_to(substr(ssn, 1, 8),"
    " 'UTF8'), 'hex'))::bit(64)::bigint) from customers where id = 42",
    f"select pg_advisory_lock({S})",
    f"select setseed({S} / 1000.0)",
    "select setseed(ascii(substr(email, 1, 1)) / 1000.0) from customers where id = 42",
    f"select setval('s', {S})",
    f"select set_config('a.b', ({S})::text, false)",
    # the rows given to it chosen by PII against another row source
    f"select pg_advisory_xact_lock(g) from generate_series(1, 300) g where g = {S}",
    # as many calls as a character code: currval() reads the count back
    f"select nextval('s') from generate_series(1, {S})",
    f"select count(nextval('s')) from generate_series(1, 300) g where g <= {S}",
]
STATE_CLEAN = [
    "select pg_advisory_xact_lock(1, 2)",
    "select setseed(0.5)",
    "select pg_advisory_xact_lock(id) from customers where id < 10",
    "select setval('s', 10)",
    "select nextval('s')",
    "select nextval('s') from generate_series(1, 5)",
]


@pytest.mark.parametrize("sql", STATE_KEPT)
def test_pii_kept_in_session_state_is_a_copy_that_is_held(sql: str) -> None:
    analysis = analyze(sql, COV)
    assert analysis.pii_writes and "reads it back" in analysis.pii_writes[0], show(sql)


@pytest.mark.parametrize("sql", STATE_CLEAN)
def test_clean_values_kept_in_session_state_are_not_held(sql: str) -> None:
    assert analyze(sql, COV).pii_writes == []


def test_explain_execute_is_tokenized_whole() -> None:
    """The plan of a prepared statement shows its literals, which may be values dbgate
    resolved from tokens."""
    for sql in ("explain execute p", "explain (analyze, verbose) execute p(1)"):
        out = output_of(sql, COV)
        assert (out.tail is not None and out.tail.unknown) or any(c.unknown for c in out.columns), (
            show(sql)
        )


@pytest.mark.parametrize(
    "sql",
    [
        "explain select * from orders limit ascii(pg_stat_get_backend_activity(3))",
        "explain select * from orders where id < ascii(pg_stat_get_backend_activity(3))",
        "explain (costs) select * from generate_series(1, pg_stat_get_numscans(16384))",
        "explain select 1 from orders where id < length(table_to_xml('customers', true,"
        " false, '')::text)",
    ],
)
def test_a_plain_explain_of_what_dbgate_cannot_follow_is_unknown(sql: str) -> None:
    """The planner evaluates the stable expressions that read no column, for its row
    estimates and for partition pruning, and prints what they gave (``rows=109``)."""
    out = output_of(sql, COV)
    assert [show(c) for c in out.columns] == ["?"], show(out.columns[0])


@pytest.mark.parametrize(
    "sql",
    [
        "explain select email from customers where id < 10 limit 5",
        "explain select * from orders where id < ascii('m')",
        # qualified names, as every join is written: columns too, not computed values
        "explain select o.id, c.email from orders o join customers c on c.id = o.customer_id"
        " where o.id < 10",
        "explain select o.* from orders o where o.status = 'paid'",
    ],
)
def test_a_plain_explain_of_columns_and_literals_stays_clean(sql: str) -> None:
    assert [show(c) for c in output_of(sql, COV).columns] == ["-"]


def test_work_counters_are_read_like_data_dbgate_cannot_follow() -> None:
    """A statement can do as much work as a character code says; a counter of that
    work read afterwards spells it (pg_stat_get_* functions, pg_stat_* views)."""
    from dbgate.pii.catalog import Catalog

    for sql in (
        "select pg_stat_get_xact_tuples_returned('payments_pkey'::regclass)",
        "select pg_stat_get_numscans(16384)",
    ):
        out = output_of(sql, COV)
        assert (out.tail is not None and out.tail.unknown) or any(c.unknown for c in out.columns), (
            show(sql)
        )
    catalog = Catalog()
    for table, column in (
        ("pg_stat_user_indexes", "idx_tup_read"),
        ("pg_stat_xact_user_tables", "seq_tup_read"),
        ("pg_statio_user_tables", "heap_blks_read"),
        ("pg_stat_user_functions", "calls"),
        ("pg_stat_database", "tup_returned"),
    ):
        assert catalog.classify("pg_catalog", table, column)[0] is not None, (table, column)
    # connection facts are not work counts
    assert catalog.classify("pg_catalog", "pg_stat_activity", "state")[0] is None
    # nor the names of the objects counted, which pg_class and pg_proc return clean
    for table, column in (
        ("pg_stat_user_tables", "relname"),
        ("pg_stat_user_tables", "schemaname"),
        ("pg_stat_all_indexes", "indexrelname"),
        ("pg_statio_user_tables", "relid"),
        ("pg_stat_user_functions", "funcname"),
        ("pg_stat_database", "datname"),
    ):
        assert catalog.classify("pg_catalog", table, column)[0] is None, (table, column)
    assert catalog.classify("pg_catalog", "pg_stat_user_tables", "n_live_tup")[0] is not None
    assert catalog.classify("pg_catalog", "pg_stat_statements", "dbid")[0] is not None


def test_a_plain_explain_that_calls_what_dbgate_cannot_follow_stays_unknown() -> None:
    for sql in (
        "explain select o.id from orders o where o.id < ascii(pg_stat_get_backend_activity(1))",
        "explain select o.id from orders o where o.id in (select c.id from customers c"
        " where c.id < (select ascii(query_to_xml('select 1', true, true, '')::text)))",
    ):
        assert [show(c) for c in output_of(sql, COV).columns] == ["?"], sql


#: A bind parameter may carry a token, resolved to the value before the server sees
#: it: where it chooses rows, the rows carry the parameter, and results are tokenized
#: when a Bind's value there was a token (``StatementPlan.with_token_params``).
PARAM_CHOICES = [
    "select g from generate_series(0, 255) g where g = ascii($1::text)",
    "select g from generate_series(0, 255) g order by abs(g - ascii($1::text)) limit 1",
    "select count(*) from generate_series(1, ascii($1::text))",
    "select generate_series(1, ascii($1::text))",
    "select g from generate_series(0, 255) g limit ascii($1::text)",
    "select g from generate_series(0, 255) g, (select $1::text as e) s where g = ascii(s.e)",
    "select id from customers where id = ascii($1)",
    "select id from orders tablesample system_rows (ascii($1))",
]


@pytest.mark.parametrize("sql", PARAM_CHOICES)
def test_a_parameter_that_chooses_rows_is_in_their_outputs(sql: str) -> None:
    room = PiiRoom(CATALOG, Tokenizer(Keyring([Key("k", b"k" * 32)])), PiiSettings(), _snapshot())
    plan = room.plan(sql)
    assert plan.params_may_hold_tokens
    assert not plan.pii_outputs  # a plain value: nothing to rewrite
    bound = plan.with_token_params([1])
    assert bound.pii_outputs, sql


def test_a_lookup_by_a_parameter_chooses_nothing() -> None:
    a = analyze("select id, email from customers where email = $1", COV)
    (st,) = a.statements
    assert st.output is not None and not st.output.columns[0].params


def test_a_write_to_rows_a_parameter_chooses_refuses_a_token_there() -> None:
    a = analyze("update orders set total = 5 where id = ascii($1)", COV)
    assert a.param_writes == {1}


def test_an_execute_argument_flows_where_its_parameter_does() -> None:
    """``EXECUTE p(pg_stat_get_backend_activity(n))`` reads another session's query
    text (with the values of the tokens it sent) into ``$1`` of ``p``: every output
    ``$1`` flows into, or chooses, carries what the argument does."""
    room = PiiRoom(CATALOG, Tokenizer(Keyring([Key("k", b"k" * 32)])), PiiSettings(), _snapshot())
    session = room.session("agent")
    session.plan("prepare p(text) as select $1::text as x, 1 as one")
    session.plan("prepare q(text) as select g from generate_series(0, 255) g where g = ascii($1)")
    read = "pg_stat_get_backend_activity(7)"
    for sql, pii in (
        (f"execute p({read})", [True, False]),
        (f"execute q({read})", [True]),
        ("execute p('abc')", [False, False]),
    ):
        (st,) = session.plan(sql).analysis.statements
        assert st.output is not None
        got = [lin.pii or lin.unknown for lin in st.output.columns]
        assert got == pii, sql


@pytest.mark.parametrize(
    "sql",
    [
        "copy orders (customer_id, total, status) from stdin"
        " where current_setting(pg_stat_get_backend_activity(7)) is null",
        "explain select current_setting(pg_stat_get_backend_activity(7))",
    ],
)
def test_what_a_side_part_reads_unfollowed_withholds_its_errors(sql: str) -> None:
    """A part walked for tokens only (COPY FROM's WHERE, a plain EXPLAIN's query) may
    still run a data reader: another session's query text, with the values of the
    tokens it sent, comes back in the error of ``current_setting(...)``."""
    room = PiiRoom(CATALOG, Tokenizer(Keyring([Key("k", b"k" * 32)])), PiiSettings(), _snapshot())
    assert room.plan(sql).involves_pii
    assert not room.plan(sql.replace("pg_stat_get_backend_activity(7)", "'x'")).involves_pii


@pytest.mark.parametrize(
    "sql",
    [
        f"select json_agg(g order by abs(g - {S}))->0 from generate_series(0, 255) g",
        f"select (array_agg(g order by g = {S} desc))[1] from generate_series(0, 255) g",
        f"select string_agg(g::text, ',' order by abs(g - {S})) from generate_series(0, 255) g",
    ],
)
def test_an_aggregate_ordered_by_pii_is_pii(sql: str) -> None:
    (st,) = analyze(sql, COV).statements
    assert st.output is not None and st.output.columns[0].pii, sql


def test_an_aggregate_ordered_by_clean_keys_is_not() -> None:
    # ordered by its rows' own PII it is (tests/unit/pii/test_lineage_order.py)
    for sql in (
        "select json_agg(email order by id) from customers where id < 3",
        "select string_agg(g::text, ',' order by g) from generate_series(0, 9) g",
    ):
        (st,) = analyze(sql, COV).statements
        assert st.output is not None and not st.output.columns[0].unknown, sql
        assert st.output.columns[0].pii == sql.startswith("select json_agg(email"), sql


def test_the_errors_and_notices_of_a_do_block_are_withheld() -> None:
    """Approved, a DO block may read PII through names it builds at run time and
    RAISE it: nothing in its text names PII, as a user function's call does not."""
    room = PiiRoom(CATALOG, Tokenizer(Keyring([Key("k", b"k" * 32)])), PiiSettings(), _snapshot())
    sql = (
        "DO $$DECLARE r text; BEGIN EXECUTE 'SELECT full' || '_name FROM cust' || 'omers"
        " WHERE id = 1' INTO r; RAISE NOTICE '%', r; END$$"
    )
    plan = room.plan(sql)
    assert plan.involves_pii
    assert not plan.hold_reasons  # held by the rules as opaque code, not by PII
