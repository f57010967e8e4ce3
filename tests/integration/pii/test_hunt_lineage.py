"""The lineage leaks a security tester found, on the real server (demo dataset).

Ordered-set aggregates (their WITHIN GROUP input is the value returned), WITH
ORDINALITY / ROWS FROM after a function of unknown width, and query text
(``current_query()``, ``pg_cursors``, ``pg_prepared_statements``) that holds the raw
values of resolved tokens. Unit-level: tests/unit/pii/test_lineage_hunt.py.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from dbgate.pii.tokens import TokenError
from dbgate.wire import messages as m
from tests.integration.pii.conftest import DBNAME, Demo
from tests.integration.pii.harness import apply_plan, connect, leaked, run_simple


async def _customer(pii_demo: Demo) -> asyncpg.Record:
    conn = await asyncpg.connect(pii_demo.dsn)
    try:
        return await conn.fetchrow(
            "select id, email, full_name, extract(epoch from birth_date)::text as epoch"
            " from customers where id = 1"
        )
    finally:
        await conn.close()


async def _agent(pg_server: Any, pii_demo: Demo, sql: str, client: Any = None) -> Any:
    """Plan ``sql`` as the agent's session, forward it with tokens resolved, filter."""
    session = pii_demo.room.session("agent")
    plan = session.plan(sql)
    forwarded = session.detokenize_sql(plan)
    own = client is None
    client = client or await connect(pg_server, DBNAME)
    try:
        res = apply_plan(plan, await run_simple(client, forwarded))
    finally:
        if own:
            await client.close()
    assert not res.errors, res.errors
    assert not leaked(res.output_bytes, pii_demo.values), sql
    return res


ORDERED_SET = [
    "select mode() within group (order by email) from customers where id=1",
    "select percentile_disc(0.5) within group (order by full_name) from customers where id=1",
    "select percentile_disc(array(select g/4999.0 from generate_series(0,4999) g))"
    " within group (order by concat_ws('|', id::text, full_name, email, ssn))"
    " from customers where id > 0",
]


@pytest.mark.parametrize("sql", ORDERED_SET, ids=[f"osa{i}" for i in range(len(ORDERED_SET))])
async def test_ordered_set_aggregates(pg_server: Any, pii_demo: Demo, sql: str) -> None:
    res = await _agent(pg_server, pii_demo, sql)
    (row,) = res.rows_after
    assert row[0].lstrip(b"{").startswith(b"tok_")  # an array's elements are tokens


async def test_percentile_cont_of_a_birth_date(pg_server: Any, pii_demo: Demo) -> None:
    c = await _customer(pii_demo)
    sql = (
        "select percentile_cont(0.5) within group (order by extract(epoch from birth_date))"
        " from customers where id=1"
    )
    res = await _agent(pg_server, pii_demo, sql)
    ((before,),) = res.rows_before
    ((after,),) = res.rows_after
    assert float(before) == float(c["epoch"]) and after != before


def _token_refused(pii_demo: Demo, sql: str) -> None:
    """The agent's token is not resolved where the server would compute on its value."""
    session = pii_demo.room.session("agent")
    with pytest.raises(TokenError, match="compared with a PII column"):
        session.detokenize_sql(session.plan(sql))


async def test_a_token_an_aggregate_computes_on_is_refused(pii_demo: Demo) -> None:
    c = await _customer(pii_demo)
    token = pii_demo.room.tokenizer.token("email", c["email"].encode())
    _token_refused(pii_demo, f"select mode() within group (order by '{token}'::text)")


async def test_unnest_with_ordinality(pg_server: Any, pii_demo: Demo) -> None:
    c = await _customer(pii_demo)
    token = pii_demo.room.tokenizer.token("email", c["email"].encode())
    arr = "(select array_agg(email) from customers where id = 1)"
    for sql in (
        f"select * from unnest({arr}) with ordinality",
        f"select u from unnest({arr}) with ordinality as t(u, o)",
    ):
        res = await _agent(pg_server, pii_demo, sql)
        (row,) = res.rows_after
        assert row[0].startswith(b"tok_email_"), sql
    _token_refused(
        pii_demo, f"select * from rows from (unnest(array['{token}']), generate_series(1,1))"
    )
    _token_refused(pii_demo, f"select * from unnest(array['{token}']) with ordinality")


async def test_current_query_with_a_resolved_token(pg_server: Any, pii_demo: Demo) -> None:
    c = await _customer(pii_demo)
    token = pii_demo.room.tokenizer.token("name", c["full_name"].encode())
    sql = f"select current_query() from customers where full_name = '{token}'"
    session = pii_demo.room.session("agent")
    plan = session.plan(sql)
    # a text that reads statement texts back has no token resolved into it
    with pytest.raises(TokenError, match="statement texts"):
        session.detokenize_sql(plan)
    # and were the value in it, what current_query() returns is tokenized
    name = c["full_name"].replace("'", "''")
    client = await connect(pg_server, DBNAME)
    try:
        res = apply_plan(plan, await run_simple(client, sql.replace(token, name)))
    finally:
        await client.close()
    (row,) = res.rows_before
    assert c["full_name"].encode() in row[0]  # what the server returned
    assert c["full_name"].encode() not in res.output_bytes


async def test_pg_cursors_statement(pg_server: Any, pii_demo: Demo) -> None:
    c = await _customer(pii_demo)
    token = pii_demo.room.tokenizer.token("name", c["full_name"].encode())
    declare = f"begin; declare cc cursor for select id from customers where full_name = '{token}'"
    read = "select name, statement from pg_cursors"
    # in one text with the read of the statement texts, the token is not resolved
    with pytest.raises(TokenError, match="statement texts"):
        session = pii_demo.room.session("agent")
        session.detokenize_sql(session.plan(f"{declare}; {read}; commit"))
    client = await connect(pg_server, DBNAME)
    try:
        await _agent(pg_server, pii_demo, declare, client)
        res = await _agent(pg_server, pii_demo, read, client)
        await _agent(pg_server, pii_demo, "commit", client)
    finally:
        await client.close()
    assert any(c["full_name"].encode() in b"".join(r) for r in res.rows_before)
    assert c["full_name"].encode() not in res.output_bytes
    (row,) = res.rows_after
    assert row[0] == b"cc"  # the cursor's name stays readable


async def test_pg_prepared_statements_statement(pg_server: Any, pii_demo: Demo) -> None:
    c = await _customer(pii_demo)
    token = pii_demo.room.tokenizer.token("name", c["full_name"].encode())
    session = pii_demo.room.session("agent")
    plan = session.plan(f"select id from customers where full_name = '{token}'")
    forwarded = session.detokenize_sql(plan)
    client = await connect(pg_server, DBNAME)
    try:
        # a driver's named prepare (asyncpg does this), through the extended protocol
        client.send(m.Parse("s1", forwarded).encode(), m.SYNC)
        await client.until_ready()
        for sql in (
            "select name, statement from pg_prepared_statements",
            "select statement from pg_catalog.pg_prepared_statements",
            "select p.statement from pg_catalog.pg_prepared_statement() p",
        ):
            res = await _agent(pg_server, pii_demo, sql, client)
            assert any(c["full_name"].encode() in b"".join(r) for r in res.rows_before), sql
            assert c["full_name"].encode() not in res.output_bytes, sql
    finally:
        await client.close()


async def test_planner_statistics_of_pii_columns(pg_server: Any, pii_demo: Demo) -> None:
    """``pg_stats`` shows values sampled from every column its reader may select. The
    default rules hold such a read (a dump); once approved, the samples of PII
    columns come back as tokens."""
    admin = await asyncpg.connect(pii_demo.dsn)
    try:
        await admin.execute("analyze customers")
        direct = await admin.fetchval(
            "select histogram_bounds::text from pg_stats"
            " where tablename = 'customers' and attname = 'email'"
        )
    finally:
        await admin.close()
    assert direct is not None and leaked(direct.encode(), pii_demo.values)  # raw, directly
    res = await _agent(
        pg_server,
        pii_demo,
        "select attname, most_common_vals::text, histogram_bounds::text,"
        " most_common_elems::text from pg_stats where tablename = 'customers'",
    )
    # the server sent raw samples; the agent got none of them (``_agent`` checks)
    assert any(leaked(b"".join(v or b"" for v in row), pii_demo.values) for row in res.rows_before)


async def test_statistics_of_expressions_are_sampled_values(pg_server: Any, pii_demo: Demo) -> None:
    """Extended statistics on expressions keep, per expression, a whole pg_statistic
    row (``pg_statistic_ext_data.stxdexpr``) with its most common values and
    histogram: values of the expression, as ``stxdmcv`` holds those of columns."""
    admin = await asyncpg.connect(pii_demo.dsn)
    try:
        await admin.execute(
            "create statistics hunt_expr_stats on lower(email), (ssn || '') from customers;"
            " analyze customers"
        )
        res = await _agent(
            pg_server, pii_demo, "select stxdexpr::text, stxdexpr from pg_statistic_ext_data"
        )
    finally:
        await admin.execute("drop statistics if exists hunt_expr_stats")
        await admin.close()
    # the server sent raw samples; the agent got none of them (``_agent`` checks)
    assert any(leaked(b"".join(v or b"" for v in row), pii_demo.values) for row in res.rows_before)


async def test_generated_columns_carry_what_they_are_generated_from(
    pg_server: Any, pii_demo: Demo
) -> None:
    """A column GENERATED ALWAYS AS an expression of PII columns (a lower-cased name,
    a full-text vector of an address, a virtual prefix) stores values derived from
    PII under a name no catalog rule or default marks."""
    admin = await asyncpg.connect(pii_demo.dsn)
    try:
        await admin.execute(
            "create table hunt_generated (id int primary key, full_name text,"
            " name_lc text generated always as (lower(full_name)) stored,"
            " words tsvector generated always as (to_tsvector('simple', full_name)) stored,"
            " prefix text generated always as (left(full_name, 3)) virtual,"
            " id_text text generated always as (id::text) stored);"
            " insert into hunt_generated (id, full_name)"
            " select id, full_name from customers where id <= 3"
        )
        names = await admin.fetch("select lower(full_name) n from customers where id <= 3")
        await pii_demo.room.refresh_dsn(pii_demo.dsn)
        res = await _agent(
            pg_server,
            pii_demo,
            "select id, name_lc, words, prefix, id_text from hunt_generated order by id",
        )
    finally:
        await admin.execute("drop table if exists hunt_generated")
        await admin.close()
        await pii_demo.room.refresh_dsn(pii_demo.dsn)
    out = res.output_bytes
    for r in names:
        assert r["n"].encode() not in out
        for word in r["n"].split():
            assert f"'{word}'".encode() not in out  # a tsvector lexeme
    assert res.replaced == [{1, 2, 3}]  # id and the text made from it stay readable
    assert [row[4] for row in res.rows_after] == [b"1", b"2", b"3"]


async def test_a_column_of_a_composite_type_with_pii_fields_is_pii(
    pg_server: Any, pii_demo: Demo
) -> None:
    """``contact contact_t`` where the type has fields ``full_name`` and ``email``
    (and an array of them): the column holds both, whatever it is called."""
    admin = await asyncpg.connect(pii_demo.dsn)
    try:
        await admin.execute(
            "create type hunt_contact as (full_name text, email text);"
            " create table hunt_crm (id int, contact hunt_contact, history hunt_contact[]);"
            " insert into hunt_crm select id, row(full_name, email)::hunt_contact,"
            " array[row(full_name, email)::hunt_contact] from customers where id <= 3"
        )
        await pii_demo.room.refresh_dsn(pii_demo.dsn)
        for sql in (
            "select id, contact, history from hunt_crm order by id",
            "select (contact).email, (history[1]).full_name from hunt_crm",
        ):
            res = await _agent(pg_server, pii_demo, sql)  # no raw value: ``_agent`` checks
            assert leaked(
                b"".join(b"".join(v or b"" for v in r) for r in res.rows_before), pii_demo.values
            ), sql  # the server sent them raw
        assert [
            r[0]
            for r in (
                await _agent(pg_server, pii_demo, "select id from hunt_crm order by id")
            ).rows_after
        ] == [b"1", b"2", b"3"]
    finally:
        await admin.execute("drop table if exists hunt_crm; drop type if exists hunt_contact")
        await admin.close()
        await pii_demo.room.refresh_dsn(pii_demo.dsn)


async def test_a_column_of_a_domain_named_as_pii_is_pii(pg_server: Any, pii_demo: Demo) -> None:
    """``CREATE DOMAIN email_address AS text``: a column ``contact email_address``
    (or an array of them) holds e-mail addresses, whatever the column is called."""
    admin = await asyncpg.connect(pii_demo.dsn)
    try:
        await admin.execute(
            "create domain hunt_email_address as text; create domain hunt_state as text;"
            " create table hunt_leads (id int, contact hunt_email_address,"
            " previous hunt_email_address[], state hunt_state);"
            " insert into hunt_leads select id, email, array[email], 'new' from customers"
            " where id <= 3"
        )
        await pii_demo.room.refresh_dsn(pii_demo.dsn)
        res = await _agent(pg_server, pii_demo, "select * from hunt_leads order by id")
    finally:
        await admin.execute(
            "drop table if exists hunt_leads; drop domain if exists hunt_email_address, hunt_state"
        )
        await admin.close()
        await pii_demo.room.refresh_dsn(pii_demo.dsn)
    assert leaked(b"".join(b"".join(v or b"" for v in r) for r in res.rows_before), pii_demo.values)
    assert res.replaced == [{1, 2}]
    assert [r[3] for r in res.rows_after] == [b"new"] * 3


async def test_copy_in_text_format_with_a_header(pg_server: Any, pii_demo: Demo) -> None:
    """COPY ... (FORMAT text, HEADER): the first line names the columns, the rows
    follow with their PII tokenized."""
    res = await _agent(
        pg_server,
        pii_demo,
        "copy (select id, full_name from customers where id < 3 order by id)"
        " to stdout (format text, header true)",
    )
    after = [new for _old, new in res.copies]
    assert after[0] == b"id\tfull_name\n"
    assert [line.split(b"\t")[0] for line in after[1:]] == [b"1", b"2"]
    assert all(line.split(b"\t")[1].startswith(b"tok_name_") for line in after[1:])


def _bits(row: tuple[bytes | None, ...]) -> int | None:
    """The character the columns spell, one bit each (``1`` or NULL), or None."""
    if any(v not in (b"1", None) for v in row):
        return None
    return sum(1 << i for i, v in enumerate(row) if v == b"1")


@pytest.mark.parametrize(
    "shape",
    [
        # a correlated sub-select with no rows of its own: its row is there or not
        "(select 1 where ascii(c.email) & {bit} <> 0)",
        # the other side of an outer join: NULLs where ON is false
        "x{i}.v",
    ],
    ids=["scalar-subselect", "left-join"],
)
async def test_values_chosen_by_the_rows_own_pii_spell_it(
    pg_server: Any, pii_demo: Demo, shape: str
) -> None:
    """Eight columns, each NULL or not by one bit of the row's own e-mail: a whole
    character per row, of every row, in one statement — not a one-bit oracle."""
    cols = ", ".join(shape.format(bit=1 << i, i=i) for i in range(8))
    joins = ""
    if shape.startswith("x"):
        joins = " ".join(
            f"left join (select 1 as v) x{i} on ascii(c.email) & {1 << i} <> 0" for i in range(8)
        )
    sql = f"select {cols} from customers c {joins} where c.id <= 3 order by c.id"
    conn = await asyncpg.connect(pii_demo.dsn)
    try:
        codes = [
            r[0]
            for r in await conn.fetch(
                "select ascii(email) from customers where id <= 3 order by id"
            )
        ]
    finally:
        await conn.close()
    res = await _agent(pg_server, pii_demo, sql)
    assert [_bits(r) for r in res.rows_before] == codes  # what the server sent spells it
    assert res.replaced == [set(range(8))]
    assert [_bits(r) for r in res.rows_after] != codes
