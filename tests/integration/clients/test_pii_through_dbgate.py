"""PII tokenization through the real relay, with real drivers, on the demo dataset.

The PII room's own suite (tests/integration/pii/) checks 115 tricky queries against
its planner and rewriters; here the same machinery runs where it matters — in the
gate, on the relay's per-statement result plans, with the message filter and tokens
sent back — and every check compares with the raw values read straight from the
server: no raw PII value reaches the client, other columns are untouched.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.integration.clients.conftest import DemoRole, start_pii_proxy
from tests.integration.conftest import RunningProxy


@pytest.fixture(scope="module")
def hidden_code(admin_dsn: str) -> Iterator[None]:
    """Two tables whose writes run code lineage does not see, made before the proxy
    reads the schema: a rule that answers an INSERT with customer 42's e-mail, and a
    trigger that says the customer's name in a notice."""
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            """
            create table rule_echo (x int);
            create rule rule_echo_select as on insert to rule_echo do also
                select lower(email) || '' as label from customers where id = 42;
            create table trigger_echo (x int);
            create function trigger_echo_say() returns trigger language plpgsql as $$
            begin
                raise notice 'seen %', (select full_name from customers where id = 42);
                return new;
            end $$;
            create trigger trigger_echo_say before insert on trigger_echo
                for each row execute function trigger_echo_say();
            create table part_echo (x int) partition by range (x);
            create table part_echo_1 partition of part_echo for values from (0) to (100);
            create trigger part_echo_say before insert on part_echo_1
                for each row execute function trigger_echo_say();
            grant insert on rule_echo, trigger_echo, part_echo to public;
            """
        )
    yield
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            "drop table rule_echo, trigger_echo, part_echo; drop function trigger_echo_say()"
        )


@pytest.fixture(scope="module")
def notes_table(admin_dsn: str) -> Iterator[None]:
    """A table with a PII column (``email``, PII by its name) the agent may write, made
    before the proxy reads the schema."""
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            "create table codebook_notes (id int primary key, email text);"
            "grant select, insert, update on codebook_notes to public"
        )
    yield
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute("drop table codebook_notes")


@pytest.fixture(scope="module")
def guesses_table(admin_dsn: str) -> Iterator[None]:
    """A PII column (``email``) holding every printable character, one a row, id its
    code: the guesses an agent allowed to write a PII column can store itself."""
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            "create table prefix_guesses (id int primary key, email text);"
            "insert into prefix_guesses select g, chr(g) from generate_series(32, 126) g;"
            "grant select on prefix_guesses to public"
        )
    yield
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute("drop table prefix_guesses")


@pytest.fixture(scope="module")
def cut_guesses(admin_dsn: str) -> Iterator[None]:
    """PII columns (``email``) of types whose input keeps part of a text: ``"char"``
    holding every printable character (id its code), ``name`` — as an agent allowed to
    create tables could make them."""
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            'create table char_guesses (id int primary key, email "char");'
            'insert into char_guesses select g, chr(g)::"char" from generate_series(32, 126) g;'
            "create table name_guesses (id int primary key, email name);"
            "grant select, insert on char_guesses, name_guesses to public;"
            'create domain char_d as "char"; create domain char_dd as char_d;'
            "create collation agent_coll (locale = 'C')"
        )
    yield
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            "drop table char_guesses, name_guesses; drop domain char_dd, char_d;"
            "drop collation agent_coll"
        )


@pytest.fixture(scope="module")
def pii_gate(
    pg_server: Any,
    demo_role: DemoRole,
    hidden_code: None,
    notes_table: None,
    guesses_table: None,
    cut_guesses: None,
) -> Iterator[RunningProxy]:
    running = start_pii_proxy(pg_server, demo_role)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def dsn(pii_gate: RunningProxy, demo_db: str) -> str:
    return pii_gate.dsn(demo_db)


@pytest.fixture(scope="module")
def raw(admin_dsn: str) -> dict[str, Any]:
    """Customer 42 as it really is (straight to the server)."""
    with psycopg.connect(admin_dsn) as conn:
        row = conn.execute(
            "select email, full_name, ssn, phone, birth_date from customers where id = 42"
        ).fetchone()
    assert row is not None
    return dict(zip(("email", "full_name", "ssn", "phone", "birth_date"), row, strict=True))


def test_pii_columns_come_back_as_tokens(dsn: str, raw: dict[str, Any]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        email, name, ssn = conn.execute(
            "select email, full_name, ssn from customers where id = 42"
        ).fetchone()
        again = conn.execute("select email from customers where id = 42").fetchone()[0]
    assert email.startswith("tok_email_") and email != raw["email"]
    assert name != raw["full_name"] and ssn != raw["ssn"]
    assert again == email  # deterministic: the same value, the same token


def test_other_columns_are_untouched(dsn: str, admin_dsn: str) -> None:
    sql = "select id, customer_id, total, status from orders where id <= 20 order by id"
    with psycopg.connect(dsn) as conn, psycopg.connect(admin_dsn) as direct:
        assert conn.execute(sql).fetchall() == direct.execute(sql).fetchall()


def test_derived_values_are_tokenized_too(dsn: str, raw: dict[str, Any]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "select lower(email) || '', row_to_json(c)::text, c::text "
            "from customers c where id = 42"
        ).fetchone()
    for value in rows:
        assert raw["email"] not in value and raw["ssn"] not in value, value


def test_binary_results_of_every_driver_hold_no_raw_value(dsn: str, raw: dict[str, Any]) -> None:
    async def fetch() -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchrow(
                "select email, birth_date, phone from customers where id = $1", 42
            )
        finally:
            await conn.close()

    import asyncio

    row = asyncio.run(fetch())
    assert row["email"] != raw["email"]
    assert row["birth_date"] != raw["birth_date"]  # a date pseudonym, still a date
    assert row["phone"] != raw["phone"]
    with psycopg.connect(dsn) as conn:
        cur = conn.cursor(binary=True)
        email, birth = cur.execute(
            "select email, birth_date from customers where id = %s", [42]
        ).fetchone()
    assert (email, birth) == (row["email"], row["birth_date"])


def test_a_token_sent_back_finds_its_customer(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        token = conn.execute("select email from customers where id = 42").fetchone()[0]
        by_param = conn.execute("select id from customers where email = %s", [token]).fetchone()
        by_literal = conn.execute(f"select id from customers where email = '{token}'").fetchone()
    assert by_param == (42,) and by_literal == (42,)


def test_a_token_that_does_not_resolve_is_22023(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        token = conn.execute("select email from customers where id = 42").fetchone()[0]
        forged = token[:-4] + ("aaaa" if not token.endswith("aaaa") else "bbbb")
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute(f"select id from customers where email = '{forged}'")
        assert conn.execute("select 1").fetchone() == (1,)


def test_values_echoed_in_errors_are_not_raw(dsn: str, raw: dict[str, Any]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InvalidTextRepresentation) as info:
            conn.execute("select email::int from customers where id = 42")
        assert raw["email"] not in str(info.value)
        assert conn.execute("select 1").fetchone() == (1,)


def test_copy_to_stdout_holds_no_raw_value(dsn: str, admin_dsn: str) -> None:
    with psycopg.connect(admin_dsn) as direct:
        emails = [r[0] for r in direct.execute("select email from customers where id <= 5")]
    with psycopg.connect(dsn, autocommit=True) as conn:
        out = bytearray()
        with conn.cursor().copy(
            "copy (select id, email from customers where id <= 5 order by id) to stdout"
        ) as copy:
            for block in copy:
                out += block
    text = bytes(out).decode()
    assert text.count("\n") == 5
    assert not any(e in text for e in emails)


STREAM = (
    "select c.id, c.email, g from customers c, generate_series(1, {n}) g "
    "where c.id <= 300 order by g, c.id"
)


def test_a_long_result_is_tokenized_in_every_read(dsn: str, admin_dsn: str) -> None:
    """900 rows arrive in several reads, each a run of DataRows rewritten in one call:
    every e-mail is its token (the same one each of the three times it appears), every
    other column is as the server sent it."""
    sql = STREAM.format(n=3)
    with psycopg.connect(admin_dsn) as direct:
        expected = direct.execute(sql).fetchall()
    with psycopg.connect(dsn, autocommit=True) as conn:
        got = conn.execute(sql).fetchall()
    assert len(got) == len(expected) == 900
    tokens: dict[str, str] = {}
    for (cid, email, g), (cid_raw, email_raw, g_raw) in zip(got, expected, strict=True):
        assert (cid, g) == (cid_raw, g_raw)
        assert email.startswith("tok_email_") and email_raw not in email
        assert tokens.setdefault(email_raw, email) == email
    assert len(set(tokens.values())) == len(tokens) == 300


def test_a_long_result_past_its_row_limit_stops_inside_a_read(dsn: str) -> None:
    """The default rules let an unproven read return 1,000 rows: the run in which the
    1,001st row arrives is cut there, the rows before it are tokenized, then 54000."""
    rows: list[Any] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            for row in conn.cursor().stream(STREAM.format(n=5)):
                rows.append(row)
        assert conn.execute("select 1").fetchone() == (1,)
    assert len(rows) == 1000
    assert [(r[0], r[2]) for r in rows[:3]] == [(1, 1), (2, 1), (3, 1)]
    assert all(r[1].startswith("tok_email_") for r in rows)


@pytest.mark.parametrize("simple", [True, False], ids=["simple-query", "extended"])
def test_statements_with_fresh_literals_are_planned_as_new_ones(
    dsn: str, admin_dsn: str, simple: bool
) -> None:
    """A client that inlines its values sends a text dbgate has never seen with each
    statement; its PII plan comes from the text's shape (dbgate/pii/plan_cache.py) and
    must do what a fresh plan does: PII tokenized, other columns byte-identical, and a
    token sent back in a literal resolved — never served a shape's tokenless plan."""
    ids = range(30, 60)
    with psycopg.connect(dsn, autocommit=True) as conn, psycopg.connect(admin_dsn) as direct:
        cur = psycopg.ClientCursor(conn) if simple else conn.cursor()
        for i in ids:
            cur.execute(f"select id, email, full_name from customers where id = {i}")
            got = cur.fetchone()
            real = direct.execute(
                f"select id, email, full_name from customers where id = {i}"
            ).fetchone()
            assert got is not None and real is not None and got[0] == i
            assert got[1].startswith("tok_email_") and got[1] != real[1]
            assert got[2].startswith("tok_name_") and got[2] != real[2]
            sql = f"select id, customer_id, total, status from orders where id = {i}"
            assert cur.execute(sql).fetchall() == direct.execute(sql).fetchall()
        for i in list(ids)[:5]:
            token = cur.execute(f"select email from customers where id = {i}").fetchone()[0]
            # texts of the token's shape without a token, then the token itself
            for other in (f"nobody{i}@example.org", f"somebody{i}@example.org"):
                assert (
                    cur.execute(f"select id from customers where email = '{other}'").fetchall()
                    == []
                )
            assert cur.execute(f"select id from customers where email = '{token}'").fetchall() == [
                (i,)
            ]


def test_a_token_in_a_bind_resolves_among_repeated_parses(dsn: str) -> None:
    """Drivers re-send the same Parse for every transaction, and the gate remembers its
    verdict on that text; a Bind of it that carries a token must still reach the gate
    and have the token resolved, and one without must find nothing."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        token = conn.execute("select email from customers where id = 42").fetchone()[0]
        sql = "select id from customers where email = %s"
        for i in range(4):  # unnamed Parses of one text, under psycopg's prepare threshold
            assert conn.execute(sql, [f"nobody{i}@example.org"], prepare=False).fetchall() == []
        assert conn.execute(sql, [token], prepare=False).fetchall() == [(42,)]
        assert conn.execute(sql, ["x@example.org"], prepare=False).fetchall() == []
        assert conn.execute(sql, [token], prepare=False).fetchall() == [(42,)]


def test_tokens_in_the_text_and_in_the_values_of_one_statement_are_all_resolved(
    dsn: str,
) -> None:
    """A statement whose text holds a token is forwarded with it resolved; its Bind
    values may hold tokens too, and are resolved as well (never a silent miss)."""

    async def run() -> tuple[list[int], str]:
        conn = await asyncpg.connect(dsn)
        try:
            token = await conn.fetchval("select email from customers where id = 42")
            sql = f"select id from customers where email = '{token}' and email = $1"
            ids = [r["id"] for r in await conn.fetch(sql, token)]
            forged = token[:-4] + ("aaaa" if not token.endswith("aaaa") else "bbbb")
            try:
                await conn.fetch(sql, forged)
                outcome = "ran"
            except asyncpg.InvalidParameterValueError:  # 22023
                outcome = "22023"
            return ids, outcome
        finally:
            await conn.close()

    import asyncio

    assert asyncio.run(run()) == ([42], "22023")


def _result_sets(dsn: str, sql: str) -> list[list[tuple[Any, ...]]]:
    """Every result set of a simple Query of several statements (psycopg 3 sends a
    text without parameters as one Query and steps through its results)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql)
        sets = [cur.fetchall()]
        while cur.nextset():
            sets.append(cur.fetchall() if cur.description else [])
    return sets


@pytest.mark.parametrize("pii_first", [False, True], ids=["clean-first", "pii-first"])
def test_each_statement_of_a_query_string_gets_its_own_plan(
    dsn: str, raw: dict[str, Any], pii_first: bool
) -> None:
    """A clean computed column is not tokenized because another statement of the
    same string has a PII column in its position: the relay tells the plan which
    statement each result set is of."""
    clean = "select 1 as n, upper('plain') as label"
    pii = "select 2 as n, lower(email) as label from customers where id = 42"
    sets = _result_sets(dsn, f"{pii}; {clean}" if pii_first else f"{clean}; {pii}")
    clean_rows, pii_rows = (sets[1], sets[0]) if pii_first else (sets[0], sets[1])
    assert clean_rows == [(1, "PLAIN")]
    assert pii_rows[0][0] == 2
    assert pii_rows[0][1].startswith("tok_") and pii_rows[0][1] != raw["email"].lower()


@pytest.mark.parametrize(
    "sql",
    [
        "insert into rule_echo values (1)",
        "select 'plain' as label; insert into rule_echo values (1)",
    ],
    ids=["alone", "after-a-select"],
)
def test_rows_a_rule_returns_for_a_write_are_tokenized_whole(
    pg_server: Any, demo_role: DemoRole, demo_db: str, dsn: str, raw: dict[str, Any], sql: str
) -> None:
    """A write of a table with rewrite rules runs statements its command tag does not
    count: the default pack's change limit holds it. Approved, the rule's ``DO ALSO
    SELECT`` answers the INSERT with rows its own lineage does not explain (none):
    every column of them is tokenized, whatever else the string holds; the SELECT
    before it keeps its clean value."""
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="rewrite rules"):
        _result_sets(dsn, sql)
    running, _approvals = _approving_proxy(pg_server, demo_role)
    try:
        sets = _result_sets(running.dsn(demo_db), sql)
    finally:
        running.stop()
    if sql.startswith("select"):
        assert sets[0] == [("plain",)]
        sets = sets[1:]
    echoed = [row for s in sets for row in s]
    assert echoed, "the rule returned no rows: the test proves nothing"
    for (value,) in echoed:
        assert raw["email"].lower() not in value and value.startswith("tok_"), value


@pytest.mark.parametrize("table", ["trigger_echo", "part_echo"], ids=["own", "a-partitions"])
def test_a_notice_of_a_trigger_is_withheld(dsn: str, raw: dict[str, Any], table: str) -> None:
    """A trigger runs code no statement shows (on the table written, or on the
    partition a row lands in): what it says is withheld like the errors and notices
    of statements that involve PII."""
    notices: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append(f"{d.sqlstate} {d.message_primary}"))
        conn.execute(f"insert into {table} values (1)")
    assert len(notices) == 1, notices
    # a name: no content detector would catch it in the text
    assert raw["full_name"] not in notices[0] and notices[0].startswith("00000"), notices


#: What a security tester sent to read customer 42 in the clear (each was allowed).
SPELLED = {
    "ts_rewrite": "select ts_rewrite('a'::tsquery, 'select ''a''::tsquery,"
    " quote_literal(full_name)::tsquery from customers where id = 42')::text",
    "rank-within-group": "select (select string_agg(chr(nullif((select rank(ascii(substr("
    "c.email, n, 1))) within group (order by g) - 1 from generate_series(0, 2000) g)::int, 0)),"
    " '' order by n) from generate_series(1, 60) n) from customers c where c.id = 42",
    "offset": "select (select string_agg(chr((select g from generate_series(0, 300) g offset"
    " ascii(substr(c.full_name, n, 1)) limit 1)), '' order by n) from generate_series(1, 30) n)"
    " from customers c where c.id = 42",
}


@pytest.mark.parametrize("sql", list(SPELLED.values()), ids=list(SPELLED))
def test_values_spelled_as_numbers_come_back_tokenized(
    dsn: str, raw: dict[str, Any], sql: str
) -> None:
    """Tokenized, or refused by a limit (the offset form reads past its proven row
    bound: 54000); never the raw value."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            (value,) = conn.execute(sql).fetchone()
        except psycopg.errors.ProgramLimitExceeded:
            return
    assert value is not None
    for column in ("email", "full_name"):
        assert raw[column] not in str(value), value


def test_a_failed_redeclaration_leaves_the_cursor_tokenized(dsn: str, raw: dict[str, Any]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "declare c cursor with hold for select full_name, email from customers where id = 42"
        )
        with pytest.raises(psycopg.errors.DuplicateCursor):
            conn.execute("declare c cursor with hold for select 'a'::text, 'b'::text")
        name, email = conn.execute("fetch all from c").fetchone()
        conn.execute("close c")
    assert name != raw["full_name"] and email != raw["email"]
    assert email.startswith("tok_")


def test_pii_kept_in_session_state_is_held(dsn: str, admin_dsn: str, raw: dict[str, Any]) -> None:
    """Values derived from PII given to a function that keeps them where a later,
    clean statement reads them back — a transaction's advisory lock keys (pg_locks),
    the random seed (random()), a sequence (currval) — are copies: held, never run."""
    keys = ", ".join(
        f"pg_advisory_xact_lock({k}, ascii(substr(c.email, {k}, 1)))" for k in range(1, 9)
    )
    attacks = [
        f"select {keys} from customers c where c.id = 42",
        "select pg_try_advisory_xact_lock_shared(('x' || encode(convert_to(substr(ssn, 1, 8),"
        " 'UTF8'), 'hex'))::bit(64)::bigint) from customers where id = 42",
        "select setseed(ascii(substr(email, 1, 1)) / 1000.0) from customers where id = 42",
    ]
    for sql in attacks:
        with psycopg.connect(dsn) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
                conn.execute(sql)
            assert "later statement reads it back" in str(info.value), info.value
            conn.rollback()
            locks = conn.execute(
                "select classid, objid from pg_locks"
                " where locktype = 'advisory' and pid = pg_backend_pid()"
            ).fetchall()
            assert locks == []
    with psycopg.connect(dsn, autocommit=True) as conn:  # the clean forms still run
        conn.execute("select pg_advisory_xact_lock(1, 2), setseed(0.5)")


def test_a_write_to_rows_chosen_by_pii_is_held(dsn: str, admin_dsn: str) -> None:
    """An UPDATE that marks one order per character of an e-mail (the order whose id
    is ``n * 128 + ascii(character n)``) stores the choice in a clean column, and a
    clean read of ``orders`` spells the e-mail back; an INSERT that copies the customer
    whose id is a character's code stores tokens that name that customer: held like a
    copy, never run."""
    with psycopg.connect(admin_dsn) as direct:
        before = direct.execute("select id, total from orders order by id").fetchall()
        customers = direct.execute("select count(*) from customers").fetchone()
    attacks = [
        "update orders set total = 1000 + n from customers c, generate_series(1, 40) n"
        " where c.id = 42 and orders.id = n * 128 + ascii(substr(c.email, n, 1))",
        "delete from orders where id = (select ascii(email) from customers where id = 42)",
        "merge into orders o using customers c on o.id = ascii(c.email) and c.id = 42"
        " when matched then update set total = 5",
        # a copy of the customer whose id is the code: its stored token names it
        "insert into customers (full_name, email, phone, ssn, birth_date, address)"
        " select c2.full_name, c2.email, c2.phone, c2.ssn, c2.birth_date, c2.address"
        " from customers c2, customers c where c.id = 42 and c2.id = ascii(c.email)",
    ]
    with psycopg.connect(dsn, autocommit=True) as conn:
        for sql in attacks:
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
                conn.execute(sql)
            assert "chosen by a value derived from PII" in str(info.value), info.value
        # rows chosen by a key, or a customer's by its token, are written as ever
        (token,) = conn.execute("select email from customers where id = 42").fetchone()
        cur = conn.execute(
            "update orders set total = total from customers c"
            " where c.id = orders.customer_id and c.email = %s",
            [token],
        )
        assert cur.rowcount > 0
    with psycopg.connect(admin_dsn) as direct:
        assert direct.execute("select id, total from orders order by id").fetchall() == before
        assert direct.execute("select count(*) from customers").fetchone() == customers


def test_an_output_named_by_its_position_is_planned_per_text(dsn: str, admin_dsn: str) -> None:
    """``ORDER BY 2 LIMIT 1`` returns in ``g`` the code of a character of the e-mail;
    ``ORDER BY 1`` (the same text but for that literal, planned first) returns 0. The
    second must not be answered from the first's plan."""
    sql = (
        "select g, abs(g - ascii(substr(c.email, {n}, 1))) as d"
        " from generate_series(0, 200) g, customers c where c.id = 42 order by {by} limit 1"
    )
    with psycopg.connect(admin_dsn) as direct:
        codes = [direct.execute(sql.format(n=n, by=2)).fetchone()[0] for n in (1, 2, 3)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        for simple in (True, False):
            cur = psycopg.ClientCursor(conn) if simple else conn.cursor()
            for n in (1, 2, 3):
                assert cur.execute(sql.format(n=n, by=1)).fetchone()[0] == 0
                (g, _d) = cur.execute(sql.format(n=n, by=2)).fetchone()
                assert g != codes[n - 1], (simple, n)


def test_a_token_bound_where_the_server_would_compute_on_it_is_refused(
    dsn: str, admin_dsn: str
) -> None:
    """A token sent as a Bind value is resolved like one in a literal: only where it is
    compared with PII or written into it. Where the server would compute on the value
    and choose rows by it (``g = ascii($1)``, ``ORDER BY abs(g - ascii($1)) LIMIT 1``,
    ``generate_series(1, ascii($1))``) the rows would spell it: refused (22023), reads
    and writes alike; a lookup by token (``WHERE email = $1``) and a clean parameter
    change nothing."""
    with psycopg.connect(admin_dsn) as direct:
        before = direct.execute("select id, total from orders order by id").fetchall()
    reads = [
        "select g from generate_series(0, 255) g where g = ascii(%s::text)",
        "select g from generate_series(0, 255) g order by abs(g - ascii(%s::text)) limit 1",
        "select count(*) from generate_series(1, ascii(%s::text))",
        "select g from generate_series(0, 255) g, (select %s::text as e) s where g = ascii(s.e)",
        "select id from orders where id = ascii(%s::text)",
    ]
    with psycopg.connect(dsn, autocommit=True) as conn:
        (token,) = conn.execute("select email from customers where id = 42").fetchone()
        for sql in reads:
            with pytest.raises(psycopg.errors.InvalidParameterValue):
                conn.execute(sql, [token])
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute("update orders set total = 5 where id = ascii(%s::text)", [token])
        # a lookup by token, and plain values, as ever
        assert conn.execute("select id from customers where email = %s", [token]).fetchone() == (
            42,
        )
        assert conn.execute(
            "select g from generate_series(0, 9) g where g = %s", [7]
        ).fetchone() == (7,)
    with psycopg.connect(admin_dsn) as direct:
        assert direct.execute("select id, total from orders order by id").fetchall() == before


def test_a_cursor_declared_over_a_bound_token_fetches_it_tokenized(
    dsn: str, admin_dsn: str
) -> None:
    """``DECLARE c CURSOR FOR SELECT email … WHERE email = $1`` bound with a token
    declares the cursor over the resolved value; the FETCH, planned without that Bind,
    returns the row it chose: it must come back as a token, the cursor's other columns
    as they are. Declared over the bare value (``SELECT $1::text``), it is refused."""
    with psycopg.connect(admin_dsn) as direct:
        (email,) = direct.execute("select email from customers where id = 42").fetchone()
    with psycopg.connect(dsn, autocommit=True) as conn:
        (token,) = conn.execute("select email from customers where id = 42").fetchone()
        for hold in ("with hold", ""):
            conn.execute("begin")
            conn.execute(
                f"declare c cursor {hold} for select email as x, 1 as one from customers"
                " where email = %s",
                [token],
            )
            if hold:
                conn.execute("commit")
            ((x, one),) = conn.execute("fetch all from c").fetchall()
            conn.execute("close c")
            if not hold:
                conn.execute("commit")
            assert x != email and x.startswith("tok_") and one == 1, hold
        conn.execute("begin")
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute("declare c cursor for select %s::text as x", [token])
        conn.execute("rollback")


def test_a_lock_on_rows_chosen_by_pii_is_held(dsn: str) -> None:
    """``FOR SHARE`` on the order whose id is ``n * 128 + ascii(character n)`` (a read
    bounded by its key list, so the rules let it lock) keeps that choice in the lock
    until the transaction ends: another session's ``FOR NO KEY UPDATE SKIP LOCKED``
    finds the locked order, and its id spells the character. Held, never run."""
    ids = ", ".join(str(i) for i in range(128, 256))
    lock = (
        f"select o.id from orders o where o.id in ({ids}) and o.id = 128"
        " + (select ascii(substr(email, 1, 1)) from customers where id = 42) for share"
    )
    probe = f"select id from orders where id in ({ids}) for no key update skip locked"
    with psycopg.connect(dsn) as a, psycopg.connect(dsn, autocommit=True) as b:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            a.execute(lock)
        assert "locks rows chosen by a value derived from PII" in str(info.value)
        a.rollback()
        a.execute(f"select o.id from orders o where o.id in ({ids}) and o.id = 200 for share")
        free = {r[0] for r in b.execute(probe).fetchall()}
        a.rollback()
    assert set(range(128, 256)) - free == {200}  # a lock by key is taken as ever


def test_an_execute_argument_is_traced_into_the_prepared_statement(
    dsn: str, admin_dsn: str
) -> None:
    """Another session's query text holds the values of the tokens dbgate resolved in
    it; ``pg_stat_get_backend_activity(n)`` reads it, and given as EXECUTE's argument
    to ``PREPARE p(text) AS SELECT $1`` it came back raw. A prepared statement's body
    may ask its argument a question (``SELECT 1 WHERE ascii($1) & 1 <> 0``): an
    EXECUTE given a statement text is held."""
    import threading

    with psycopg.connect(admin_dsn) as direct:
        (email,) = direct.execute("select email from customers where id = 42").fetchone()
    with (
        psycopg.connect(dsn, autocommit=True) as a,
        psycopg.connect(dsn, autocommit=True) as b,
        psycopg.connect(admin_dsn, autocommit=True) as direct,
    ):
        (token,) = b.execute("select email from customers where id = 42").fetchone()
        sleeper = threading.Thread(
            target=lambda: b.execute(f"select pg_sleep(2) from customers where email = '{token}'")
        )
        sleeper.start()
        try:
            a.execute("prepare p(text) as select $1 as x")
            got = []
            for n in range(0, 200):
                try:
                    got.append(
                        a.execute(f"execute p(pg_stat_get_backend_activity({n}))").fetchone()[0]
                    )
                except psycopg.Error as e:
                    got.append(f"{e.diag.sqlstate}: {e}")
            # the server really had the value there while the agent read
            running = direct.execute(
                "select count(*) from pg_stat_activity where query like %s", [f"%{email}%"]
            ).fetchone()
            a.execute("deallocate p")
        finally:
            sleeper.join()
    assert running == (1,)
    assert not [x for x in got if x and email in x]
    # the body of a prepared statement may ask its argument anything: held
    assert all(x.startswith("42501") and "statement texts" in x for x in got), got[:3]


def test_an_error_of_a_copy_where_clause_reading_query_text_is_withheld(
    dsn: str, admin_dsn: str
) -> None:
    """``COPY orders FROM STDIN WHERE current_setting(pg_stat_get_backend_activity(n))
    IS NULL`` fails with ``unrecognized configuration parameter "…"`` naming another
    session's query text, which holds the value of the name token it sent. The WHERE
    was walked for tokens only and the statement names no PII: its error is withheld."""
    import threading

    with psycopg.connect(admin_dsn) as direct:
        (name,) = direct.execute("select full_name from customers where id = 42").fetchone()
    messages: list[str] = []
    with (
        psycopg.connect(dsn, autocommit=True) as a,
        psycopg.connect(dsn, autocommit=True) as b,
        psycopg.connect(admin_dsn, autocommit=True) as direct,
    ):
        (token,) = b.execute("select full_name from customers where id = 42").fetchone()
        sleeper = threading.Thread(
            target=lambda: b.execute(
                f"select pg_sleep(2) from customers where full_name = '{token}'"
            )
        )
        sleeper.start()
        try:
            for n in range(0, 120):
                copy = (
                    "copy orders (customer_id, total, status) from stdin"
                    f" where current_setting(pg_stat_get_backend_activity({n})) is null"
                )
                try:
                    with a.cursor().copy(copy) as cp:
                        cp.write_row((1, 1, "new"))
                except psycopg.Error as e:
                    messages.append(f"{e} {e.diag.context}")
            running = direct.execute(
                "select count(*) from pg_stat_activity where query like %s", [f"%{name}%"]
            ).fetchone()
        finally:
            sleeper.join()
    assert running == (1,)
    assert messages and not [m for m in messages if name in m]


def test_a_stored_value_of_a_row_pii_chose_has_no_stored_token(dsn: str, admin_dsn: str) -> None:
    """``SELECT c2.email FROM customers c2, customers c WHERE c.id = 42 AND c2.id =
    ascii(substr(c.email, n, 1))`` returns the e-mail of the customer whose id is the
    code of character ``n``. With that stored column's deterministic token, a read of
    customers 32-127 by id was a codebook: the id of the matching token is the code.
    A value of a row chosen by PII gets a fresh token; a row read by id keeps its own."""
    with psycopg.connect(admin_dsn) as direct:
        (email,) = direct.execute("select email from customers where id = 42").fetchone()
    with psycopg.connect(dsn, autocommit=True) as conn:
        book = {}
        for lo in range(32, 128, 16):
            for cid, tok in conn.execute(
                f"select id, email from customers where id between {lo} and {lo + 15}"
            ):
                book[tok] = cid
        spelled = ""
        for n in range(1, 6):
            rows = conn.execute(
                "select c2.email, c2.full_name from customers c2, customers c where c.id = 42"
                f" and c2.id = ascii(substr(c.email, {n}, 1))"
            ).fetchall()
            assert len(rows) == 1
            spelled += chr(book.get(rows[0][0], ord("?")))
        again = conn.execute("select email from customers where id = 64").fetchone()[0]
    assert spelled == "?????" and spelled != email[:5]
    assert book[again] == 64  # a row read by its key: the stored value's own token


def test_a_write_where_current_of_a_cursor_pii_chose_is_held(dsn: str, admin_dsn: str) -> None:
    """``DECLARE c CURSOR FOR SELECT id FROM orders WHERE id IN (...) AND id = 128 +
    ascii(...)``, ``FETCH 1 FROM c``, then ``UPDATE orders SET total = 777 WHERE
    CURRENT OF c`` marked the order whose id is the code: a clean read spelled it back.
    Held; the same text over a cursor chosen by key runs, and its verdict is not
    remembered for the text (the relay would forward it again without asking)."""
    ids = ", ".join(str(i) for i in range(128, 256))
    x = "(select ascii(substr(email, 1, 1)) from customers where id = 42)"
    write = "update orders set total = total where current of c"
    with psycopg.connect(admin_dsn) as direct:
        before = direct.execute("select id, total from orders order by id").fetchall()
    with psycopg.connect(dsn) as conn:
        simple = psycopg.ClientCursor(conn)  # a simple Query, as psql sends it
        for _ in range(2):  # a clean cursor first, twice: the text is seen again
            simple.execute(f"declare c cursor for select id from orders where id in ({ids})")
            simple.execute("fetch 1 from c")
            assert simple.execute(write).rowcount == 1
            conn.rollback()
        simple.execute(
            f"declare c cursor for select id from orders where id in ({ids}) and id = 128 + {x}"
        )
        simple.execute("fetch 1 from c")
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            simple.execute(write)
        assert "chosen by a value derived from PII" in str(info.value)
        conn.rollback()
    with psycopg.connect(admin_dsn) as direct:
        assert direct.execute("select id, total from orders order by id").fetchall() == before


def test_an_execute_that_writes_query_text_of_another_session_is_held(
    dsn: str, admin_dsn: str
) -> None:
    """``EXECUTE pu(128 * k + ascii(substr(pg_stat_get_backend_activity(n), i, 1)))`` of
    ``PREPARE pu(int) AS UPDATE orders SET total = 777 WHERE id = $1`` marked one order
    per character of another session's query text, which holds the value of the name
    token it sent: a clean read of ``orders`` spelled the name. Held, never run."""
    import threading

    with psycopg.connect(admin_dsn) as direct:
        before = direct.execute("select id, total from orders order by id").fetchall()
    with (
        psycopg.connect(dsn, autocommit=True) as a,
        psycopg.connect(dsn, autocommit=True) as b,
        psycopg.connect(admin_dsn, autocommit=True) as direct,
    ):
        a.execute("prepare pu(int) as update orders set total = total where id = $1")
        (token,) = b.execute("select full_name from customers where id = 42").fetchone()
        (pid,) = b.execute("select pg_backend_pid()").fetchone()
        (n,) = direct.execute(
            "select n from generate_series(0, 1000) n where pg_stat_get_backend_pid(n) = %s",
            [pid],
        ).fetchone()
        sleeper = threading.Thread(
            target=lambda: b.execute(
                f"select pg_sleep(1) from customers where full_name = '{token}'"
            )
        )
        sleeper.start()
        try:
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
                # character 55 of the sleeper's text: the first of the resolved name
                a.execute(
                    f"execute pu(128 + ascii(substr(pg_stat_get_backend_activity({n}), 55, 1)))"
                )
            assert "argument derived from PII" in str(info.value)
            a.execute("execute pu(5)")  # a plain argument runs as ever
        finally:
            sleeper.join()
        a.execute("deallocate pu")
    with psycopg.connect(admin_dsn) as direct:
        assert direct.execute("select id, total from orders order by id").fetchall() == before


def test_explain_execute_shows_no_value_resolved_from_a_token(
    dsn: str, raw: dict[str, Any]
) -> None:
    """A token in a PREPARE's WHERE is resolved before the server sees it, and the
    plan EXPLAIN EXECUTE prints carries that literal: the plan comes back tokenized."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        (token,) = conn.execute("select email from customers where id = 42").fetchone()
        assert token.startswith("tok_email_")
        conn.execute(f"prepare by_email as select id from customers where email = '{token}'")
        assert conn.execute("execute by_email").fetchall() == [(42,)]
        plan = [r[0] for r in conn.execute("explain execute by_email").fetchall()]
        conn.execute("deallocate by_email")
    assert plan and all(raw["email"] not in line for line in plan), plan


def test_exists_of_rows_pii_sized_does_not_spell_a_value(dsn: str, raw: dict[str, Any]) -> None:
    """``EXISTS (SELECT 1 FROM customers c, generate_series(1, ascii(...)) WHERE c.id =
    42 OFFSET g - 1)`` is true for every g up to the character code: the largest such g,
    one per position, was the whole e-mail as plain numbers in one statement."""
    sql = (
        "select n, (select max(g) from generate_series(1, 300) g where exists (select 1"
        " from customers c, generate_series(1, ascii(substr(c.email, n, 1))) x"
        " where c.id = 42 offset g - 1)) from generate_series(1, {n}) n order by n"
    )
    email = raw["email"]
    having = (
        "select max(g) from generate_series(1, 300) g where exists (select from customers c,"
        " generate_series(1, ascii(substr(c.email, {n}, 1))) x where c.id = 42"
        " having count(*) >= g)"
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        counted = [conn.execute(having.format(n=n)).fetchone()[0] for n in (1, 2, 3)]
        assert counted != [ord(ch) for ch in email[:3]], counted
        # a count a sub-select brings, compared with a table row's own key
        (by_key,) = conn.execute(
            "with s as (select 1 from customers c, generate_series(1, ascii(substr(c.email,"
            " 1, 1))) x where c.id = 42) select max(o.id) from orders o"
            " where (select count(*) from s) >= o.id"
        ).fetchone()
        assert by_key != ord(email[0]), by_key
        rows = conn.execute(sql.format(n=len(email))).fetchall()
    codes = [m for _, m in rows]
    assert codes != [ord(ch) for ch in email], codes
    assert "".join(chr(m) if isinstance(m, int) and 0 < m < 0x110000 else "?" for m in codes) != (
        email
    )


def test_nulls_and_array_shapes_of_derived_values_do_not_spell_a_value(
    dsn: str, raw: dict[str, Any]
) -> None:
    """``CASE WHEN ascii(substr(email, n, 1)) & (1 << b) <> 0 THEN 1 END`` beside a clean
    ``b`` is a token or NULL: the NULLs were the bits of every character, in text and
    binary results alike; ``array_fill(0, ARRAY[ascii(...)])`` had as many (tokenized)
    elements as the code. A derived value's NULL gets a fresh stand-in, and its array
    one element."""
    email = raw["email"]
    sql = (
        "select n, b, case when ascii(substr(email, n, 1)) & (1 << b) <> 0 then 1 end,"
        " array[case when ascii(substr(email, n, 1)) & (1 << b) <> 0 then 1 end],"
        " array_fill(0, array[ascii(substr(email, n, 1))])"
        " from customers c, generate_series(1, 3) n, generate_series(0, 7) b"
        " where c.id = 42 order by n, b"
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        for binary in (False, True):
            rows = conn.cursor(binary=binary).execute(sql).fetchall()
            assert len(rows) == 24
            for _, _, bit, in_array, filled in rows:
                assert bit is not None
                assert in_array is not None and len(in_array) == 1 and in_array[0] is not None
                assert len(filled) == 1
    codes = [ord(ch) for ch in email[:3]]
    assert not any(len(f) == c for c in codes for f in [filled])


@pytest.mark.parametrize("options", ["", " (format csv)", " (format binary)"])
def test_copy_nulls_of_derived_values_do_not_spell_a_value(
    dsn: str, options: str, raw: dict[str, Any]
) -> None:
    """The same bits through COPY TO STDOUT: the NULL marker (``\\N``, an empty CSV
    field, a -1 length) where a derived value's token would be."""
    sql = (
        "copy (select b, case when ascii(substr(email, 1, 1)) & (1 << b) <> 0 then 1 end"
        " from customers c, generate_series(0, 7) b where c.id = 42 order by b) to stdout" + options
    )
    out = bytearray()
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor().copy(sql) as copy:
        for block in copy:
            out += block
    data = bytes(out)
    assert data.count(b"tok_") == 8, data
    assert b"\\N" not in data and b",\n" not in data and b"\xff\xff\xff\xff\x00" not in data


def test_explain_analyze_memory_figures_do_not_spell_a_value(
    dsn: str, admin_dsn: str, raw: dict[str, Any]
) -> None:
    """EXPLAIN ANALYZE prints how much memory each sort used: a thousand rows of
    ``repeat('x', ascii(...))``, sorted in a sub-select whose rows the query only counts,
    take as many kilobytes as the character code says. The plan is tokenized whole."""
    sql = (
        "explain (analyze, costs off, timing off, summary off, buffers off) select count(*)"
        " from (select g, repeat('x', ascii(substr(email, {n}, 1)) * 8) r from customers c,"
        " generate_series(1, 1000) g where c.id = 42 order by r, g) s"
    )
    with psycopg.connect(admin_dsn) as direct:
        plain = [r[0] for r in direct.execute(sql.format(n=1)).fetchall()]
    assert any("Memory:" in line for line in plain), plain  # the channel is there
    with psycopg.connect(dsn, autocommit=True) as conn:
        for n in (1, 2):
            plan = [r[0] for r in conn.execute(sql.format(n=n)).fetchall()]
            assert plan and all(line.startswith("tok_") for line in plan), plan
            assert not any("Memory" in line for line in plan)
        clean = conn.execute(
            "explain (analyze, costs off, timing off, summary off, buffers off)"
            " select id from customers where id < 10 order by id"
        ).fetchall()
    assert any("Sort" in r[0] or "Index" in r[0] for r in clean), clean


def test_a_withheld_error_has_no_position_inside_a_value(dsn: str, raw: dict[str, Any]) -> None:
    """A type name parsed at run time fails with a position inside the parsed value:
    ``repeat('a', code)`` puts that position at ``code``, two characters of the e-mail
    per statement. A withheld error keeps its SQLSTATE, never that position."""
    sql = (
        "select 1 from customers where id = 42 and (repeat('a', ascii(substr(email, 1, 1))"
        " * 128 + ascii(substr(email, 2, 1))) || ' @')::regtype is null"
    )
    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        pytest.raises(psycopg.errors.SyntaxError) as info,
    ):
        conn.execute(sql)
    diag = info.value.diag
    assert "withheld" in (diag.message_primary or "")
    assert diag.statement_position is None and diag.internal_position is None


def _decode(codebook: dict[Any, str], pieces: list[Any]) -> str:
    return "".join(codebook.get(p, "?") for p in pieces)


def test_no_codebook_of_derived_tokens_spells_a_value_back(dsn: str, raw: dict[str, Any]) -> None:
    """The tokens of values made from PII are new in every cell. Were they
    deterministic, ``left(email, 0) || 'm'`` (PII by lineage, a value the agent
    chooses) would give the token of ``'m'``, and the tokens of ``substr(email, i, 1)``
    looked up among them would spell the e-mail back, character by character."""
    email = raw["email"]
    chars = sorted(set(email))
    with psycopg.connect(dsn, autocommit=True) as conn:
        book_sql = ", ".join(f"left(email, 0) || '{c}'" for c in chars)
        book = conn.execute(f"select {book_sql} from customers where id = 42").fetchone()
        codebook = dict(zip(book, chars, strict=True))
        value_sql = ", ".join(f"substr(email, {i + 1}, 1)" for i in range(len(email)))
        pieces = list(conn.execute(f"select {value_sql} from customers where id = 42").fetchone())
        # in one statement and one column too (a union), and as numbers
        union = conn.execute(
            "select substr(email, 1, 1) from customers where id = 42 union all "
            f"select left(email, 0) || '{email[0]}' from customers where id = 42"
        ).fetchall()
        numbers = conn.execute(
            "select ascii(substr(email, 1, 1)), "
            f"ascii(substr(email, 1, 1)) * 0 + {ord(email[0])} from customers where id = 42"
        ).fetchone()
        again = conn.execute("select substr(email, 1, 1) from customers where id = 42").fetchone()
        stored = [
            conn.execute("select email from customers where id = 42").fetchone()[0]
            for _ in range(2)
        ]
    assert all(t.startswith("tok_email_") for t in book + tuple(pieces))
    assert len(set(book)) == len(book) and not set(book) & set(pieces)
    assert _decode(codebook, pieces).count("?") == len(email)
    assert len(set(pieces)) == len(pieces)  # repeated characters: new tokens each time
    assert union[0][0] != union[1][0]
    assert numbers[0] != numbers[1]
    assert again[0] != pieces[0]
    # a stored column keeps its token: joins and follow-one-customer still work
    assert stored[0] == stored[1] and stored[0] != email


def test_a_derived_token_still_resolves_when_sent_back(dsn: str, raw: dict[str, Any]) -> None:
    """A fresh token is issued like a hashed one: sent back in a literal, it stands for
    its value (the agent can act on what it was shown)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        (token,) = conn.execute("select lower(email) from customers where id = 42").fetchone()
        found = conn.execute(
            "select id from customers where lower(email) = %s", (token,)
        ).fetchall()
    assert token.startswith("tok_email_") and token != raw["email"].lower()
    assert found == [(42,)]


def test_a_value_made_from_pii_is_not_stored_where_it_would_read_back_deterministic(
    dsn: str, raw: dict[str, Any]
) -> None:
    """Stored in a PII column, a piece of a value would read back with a stored
    column's deterministic token, comparable with the token of a text the agent stored
    itself: a codebook one write at a time. Such writes are held; a fresh token (of a
    value made from PII) is not resolved into one; a copy of a stored value is."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("insert into codebook_notes values (1, 'a')")  # the agent's own text
        for sql in (
            "insert into codebook_notes select 2, substr(email, 1, 1) from customers where id = 42",
            "update codebook_notes set email = (select lower(email) from customers where id = 42)"
            " where id = 1",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="made from PII"):
                conn.execute(sql)
        (fresh,) = conn.execute(
            "select substr(email, 1, 1) from customers where id = 42"
        ).fetchone()
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="fresh token"):
            conn.execute(f"insert into codebook_notes values (3, '{fresh}')")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="fresh token"):
            conn.execute("insert into codebook_notes values (3, %s)", (fresh,))
        # a stored value's token is a copy: stored, it reads back with the same token
        (stored,) = conn.execute("select email from customers where id = 42").fetchone()
        conn.execute(f"insert into codebook_notes values (4, '{stored}')")
        conn.execute("insert into codebook_notes values (5, %s)", (stored,))
        back = conn.execute("select email from codebook_notes where id in (4, 5)").fetchall()
        assert back == [(stored,), (stored,)]
        assert conn.execute("select count(*) from codebook_notes").fetchone() == (3,)


class _ApproveAll:
    """An approval service whose approver says yes to every hold at once."""

    replica = "test"

    async def hold(self, request: Any, notify: Any) -> Any:
        from dbgate.approvals.model import HoldOutcome, HoldStatus

        return HoldOutcome(HoldStatus.APPROVED, request_id="1")

    async def approved_before(self, request: Any) -> Any:
        return None

    async def executed(self, request_id: str) -> None:
        return None


def test_a_read_approved_after_a_hold_is_still_tokenized(
    pg_server: Any, demo_role: DemoRole, demo_db: str, admin_dsn: str
) -> None:
    """A simple Query the rules hold (a whole table, a dump; the planner's samples in
    pg_stats) and a human approves runs under the same PII plan as an allowed one:
    an approval is no exemption. Before, the approved Query's verdict skipped the PII
    gate and psql got every e-mail address raw."""
    from dbgate.app import build_gate
    from dbgate.gate.pii import PiiGate
    from tests.integration.clients.conftest import pii_config

    config = pii_config(pg_server, demo_role)
    pii = PiiGate(config)
    pii.check()
    running = RunningProxy(
        config,
        inspector=build_gate(config, _ApproveAll(), pii),  # type: ignore[arg-type]
        message_filter=pii.filter,
    ).start()
    try:
        with psycopg.connect(admin_dsn) as admin:
            emails = {r[0] for r in admin.execute("select email from customers")}
            admin.execute("analyze customers")
            admin.commit()
        with psycopg.connect(running.dsn(demo_db), autocommit=True) as conn:
            cur = psycopg.ClientCursor(conn)  # a simple Query, as psql sends it
            got = cur.execute("select id, email from customers").fetchall()
            assert len(got) == len(emails)
            assert not emails & {r[1] for r in got}
            assert all(r[1].startswith("tok_email_") for r in got)
            samples = cur.execute(
                "select most_common_vals::text, histogram_bounds::text from pg_stats"
                " where tablename = 'customers' and attname = 'email'"
            ).fetchall()
            text = repr(samples)
            assert not any(e in text for e in emails), text
    finally:
        running.stop()


class _CountingApproveAll(_ApproveAll):
    """:class:`_ApproveAll` that remembers which rules held what."""

    def __init__(self) -> None:
        self.rules: list[str] = []

    async def hold(self, request: Any, notify: Any) -> Any:
        self.rules.append(request.rule)
        return await super().hold(request, notify)


def _approving_proxy(pg_server: Any, demo_role: DemoRole) -> tuple[RunningProxy, Any]:
    from dbgate.app import build_gate
    from dbgate.gate.pii import PiiGate
    from tests.integration.clients.conftest import pii_config

    config = pii_config(pg_server, demo_role)
    pii = PiiGate(config)
    pii.check()
    approvals = _CountingApproveAll()
    running = RunningProxy(
        config,
        inspector=build_gate(config, approvals, pii),  # type: ignore[arg-type]
        message_filter=pii.filter,
    ).start()
    return running, approvals


def test_a_copy_the_pii_gate_held_runs_tokenized_once_approved(
    pg_server: Any, demo_role: DemoRole, demo_db: str, admin_dsn: str
) -> None:
    """A statement the PII gate itself holds (it copies an e-mail address into a
    setting) and a human approves still runs under its PII plan: the approval lets the
    copy through, not the rows raw. Before, the approved verdict carried no result plan
    and psql, psycopg, a COPY TO STDOUT, a cursor and the other statements of the same
    query string all got the addresses raw."""
    with psycopg.connect(admin_dsn) as admin:
        emails = {r[0] for r in admin.execute("select email from customers")}
    running, approvals = _approving_proxy(pg_server, demo_role)
    copy = "select id, email, set_config('app.rt3', email, false) from customers where id <= 3"
    try:
        with psycopg.connect(running.dsn(demo_db), autocommit=True) as conn:
            simple = psycopg.ClientCursor(conn)  # a simple Query, as psql sends it
            got: list[Any] = []
            got += simple.execute(copy).fetchall()
            got += conn.execute(copy).fetchall()  # Parse/Bind/Execute
            got += simple.execute(f"select email from customers where id = 4; {copy}").fetchall()
            with simple.copy(f"copy ({copy}) to stdout") as out:
                got += list(out.rows())
            assert "pii" in approvals.rules, approvals.rules
            values = {str(v) for row in got for v in row[1:]}
            assert len(got) >= 9 and not emails & values, got
            assert all(v.startswith("tok_email_") for v in values), got
    finally:
        running.stop()


def test_a_prepared_statement_the_pii_gate_holds_is_held_at_every_execution(
    pg_server: Any, demo_role: DemoRole, demo_db: str, admin_dsn: str
) -> None:
    """A prepared statement that copies PII where the catalog cannot follow it is held
    at each execution, with its values: one approval runs it once. Before, the PII gate
    held it once, at Parse, and that approval covered every later Execute of it (and a
    simple Query of the same text took the Parse's remembered verdict)."""
    with psycopg.connect(admin_dsn) as admin:
        emails = {r[0] for r in admin.execute("select email from customers")}
    running, approvals = _approving_proxy(pg_server, demo_role)
    copy = "select id, email, set_config('app.held', email, false) from customers where id <= $1"

    def held() -> int:
        return approvals.rules.count("pii")

    async def prepared() -> list[Any]:
        c = await asyncpg.connect(running.dsn(demo_db))
        try:
            st = await c.prepare(copy)
            got = []
            for limit in (1, 2, 3):
                before = held()
                got += [tuple(r) for r in await st.fetch(limit)]
                assert held() == before + 1, (limit, approvals.rules)
            return got
        finally:
            await c.close()

    from tests.integration.clients.conftest import run_async

    try:
        got = run_async(prepared())
        with psycopg.connect(running.dsn(demo_db), autocommit=True) as conn:
            fixed = copy.replace("$1", "2")
            for text, args in ((copy.replace("$1", "%s"), (2,)), (fixed, None)):
                for _ in range(2):  # psycopg prepares it server-side, then reuses it
                    before = held()
                    got += conn.execute(text, args, prepare=True).fetchall()
                    assert held() == before + 1, approvals.rules
            before = held()
            simple = psycopg.ClientCursor(conn)  # the text a Parse had, as a simple Query
            got += simple.execute(fixed).fetchall()
            assert held() == before + 1, approvals.rules
        values = {str(v) for row in got for v in row[1:]}
        assert len(got) == 1 + 2 + 3 + 2 * 2 + 2 * 2 + 2 and not emails & values, got
        assert all(v.startswith("tok_email_") for v in values), got
    finally:
        running.stop()


def test_a_bind_approved_after_a_hold_has_its_tokens_resolved(
    pg_server: Any, demo_role: DemoRole, demo_db: str
) -> None:
    """A Bind the rules hold and a human approves runs like an allowed one: the tokens
    among its values are resolved, its results tokenized. Before, the approved Bind
    skipped the PII gate: the token reached the server as it was and matched nothing
    (or would be written as it was)."""
    running, approvals = _approving_proxy(pg_server, demo_role)
    held = (
        "select id, email from customers"
        " where email = %s and set_config('app.rt3', 'x', false) = 'x'"
    )
    try:
        with psycopg.connect(running.dsn(demo_db), autocommit=True) as conn:
            row = conn.execute("select email from customers where id = 42").fetchone()
            assert row is not None and row[0].startswith("tok_email_")
            token = row[0]
            for prepare in (False, True):
                got = conn.execute(held, (token,), prepare=prepare).fetchall()
                assert got == [(42, token)], got

        async def prepared() -> list[Any]:
            c = await asyncpg.connect(running.dsn(demo_db))
            try:
                st = await c.prepare(held.replace("%s", "$1"))
                return [tuple(r) for r in await st.fetch(token)]
            finally:
                await c.close()

        from tests.integration.clients.conftest import run_async

        assert run_async(prepared()) == [(42, token)]
        assert len(approvals.rules) >= 3, approvals.rules
    finally:
        running.stop()


def test_returning_of_a_rolled_back_write_is_no_codebook(dsn: str, raw: dict[str, Any]) -> None:
    """PostgreSQL names the written column as the origin of a RETURNING value, which
    the statement made: ``SET email = substr(email, 1, 1) RETURNING email`` gave the
    stored column's deterministic token of one character, equal to the token of
    ``SET email = 'm' RETURNING email``, both rolled back (nothing written): a codebook
    again. Storing a value made from PII is now held, and values an INSERT/UPDATE/MERGE
    returns get fresh tokens: the same text returned twice gets two."""
    first = raw["email"][:1]
    with psycopg.connect(dsn) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="made from PII"):
            conn.execute(
                "update customers set email = substr(email, 1, 1) where id = 42 returning email"
            )
        conn.rollback()
        chosen = []
        for _ in range(2):
            row = conn.execute(
                f"update customers set email = '{first}' where id = 42 returning email"
            ).fetchone()
            conn.rollback()
            assert row is not None and row[0].startswith("tok_email_")
            chosen.append(row[0])
        assert chosen[0] != chosen[1]
        stored = conn.execute("select email from customers where id = 42").fetchone()
        conn.rollback()
        assert stored is not None
        # the token of a value as read is the same in every statement
        again = conn.execute("select email from customers where id = 42").fetchone()
        assert again == stored


class _CannotClassify:
    """A classification pool that cannot classify statements naming ``unclassifiable``
    (out of time, say): it holds them as opaque, as ClassifyPool does."""

    def ahead(self, sql: str, prepared: Any, keys: Any) -> Any:
        if "unclassifiable" not in sql:
            return None
        from dbgate.gate.classify_pool import TIMED_OUT, _unclassified
        from dbgate.policy.model import Action

        async def held() -> Any:
            return _unclassified(Action.HOLD, TIMED_OUT[0], TIMED_OUT[1])

        return held()

    def trace_ahead(self, sql: str, coverage: Any) -> Any:
        return None

    def wrap(self, classify: Any) -> Any:
        return classify

    def bind_verdict(self, sql: str, params: Any) -> Any:
        return None


def test_an_approved_statement_dbgate_could_not_classify_has_every_column_tokenized(
    pg_server: Any, demo_role: DemoRole, demo_db: str, admin_dsn: str
) -> None:
    """Held because its classification ran out of time, then approved: nothing is
    known of its results but what the RowDescription says, so a clean column of a table
    comes back as it is stored, a PII one tokenized, and every column without an origin
    tokenized (a simple Query and the Bind of a prepared statement alike)."""
    from dbgate.app import build_gate
    from dbgate.gate.pii import PiiGate
    from tests.integration.clients.conftest import pii_config

    config = pii_config(pg_server, demo_role)
    pii = PiiGate(config)
    pii.check()
    gate = build_gate(config, _ApproveAll(), pii, offload=_CannotClassify())  # type: ignore[arg-type]
    running = RunningProxy(config, inspector=gate, message_filter=pii.filter).start()
    sql = "select id, email, 'unclassifiable' as note from customers where id = 42"
    try:
        with psycopg.connect(admin_dsn) as admin:
            (email,) = admin.execute("select email from customers where id = 42").fetchone()
        with psycopg.connect(running.dsn(demo_db), autocommit=True) as conn:
            simple = psycopg.ClientCursor(conn).execute(sql).fetchone()
            prepared = conn.execute(sql, prepare=True).fetchone()
        for row in (simple, prepared):
            assert row is not None and email not in repr(row)
            assert row[0] == 42  # customers.id, clean in the catalog
            assert row[1].startswith("tok_email_") and row[2].startswith("tok_unknown_"), row
    finally:
        running.stop()


def test_a_bind_that_may_bind_another_statement_gets_no_tokens_resolved(
    dsn: str, raw: dict[str, Any]
) -> None:
    """A plain unnamed Parse (it echoes its parameter), an error, then an unnamed Parse
    whose parameter may be a PII token, all in one batch: the server skips the second.
    A Bind in the next batch, sent before the answers, with customer 42's token: the
    server binds the first statement. Before, dbgate judged the Bind as the second
    statement alone, resolved the token and the first echoed the raw e-mail address."""

    from dbgate.wire import messages as m
    from tests.integration.clients.conftest import run_async
    from tests.integration.rawclient import RawClient, errors, rows

    with psycopg.connect(dsn) as conn:
        row = conn.execute("select email from customers where id = 42").fetchone()
    assert row is not None and row[0].startswith("tok_email_")
    token = row[0]

    async def attack() -> list[Any]:
        client = await RawClient.from_dsn(dsn)
        try:
            client.send(
                m.Parse("", "select $1::text"),
                m.Describe("S", "no_such_statement"),  # fails: the next Parse is skipped
                m.Parse("", "select id from customers where email = $1"),
                m.SYNC,
                m.Bind("", "", params=(token.encode(),)),
                m.Execute("", 0),
                m.SYNC,
            )
            return await client.until_ready() + await client.until_ready()
        finally:
            await client.close()

    got = run_async(attack())
    echoed = [v for r in rows(got) for v in r]
    assert raw["email"].encode() not in echoed, got
    assert [e.sqlstate for e in errors(got)] == ["26000", "42501"], got
    assert "may bind either of two statements" in errors(got)[1].message


#: A query whose outputs are clean and whose WHERE clause echoes a name in its error:
#: ``current_setting`` of an unknown setting names it.
_ECHOES_IN_WHERE = "select 1 from customers where id = 42 and current_setting(full_name) is null"

#: Statements that run a query a session declared earlier (its text names no PII).
DECLARED_RUNS = {
    "fetch": (f"declare c cursor for {_ECHOES_IN_WHERE}", "fetch 1 from c"),
    "move": (f"declare c cursor for {_ECHOES_IN_WHERE}", "move all in c"),
    "move-clean-output": (
        "declare c scroll cursor for select current_setting(full_name) from customers"
        " where id = 42",
        "move last in c",
    ),
    "execute": (f"prepare echo_p as {_ECHOES_IN_WHERE}", "execute echo_p"),
}


@pytest.mark.parametrize("declare, run", list(DECLARED_RUNS.values()), ids=list(DECLARED_RUNS))
def test_errors_of_a_cursor_or_prepared_statement_declared_over_pii_are_withheld(
    dsn: str, raw: dict[str, Any], declare: str, run: str
) -> None:
    """FETCH, MOVE and EXECUTE run the query declared earlier, WHERE clause and all: an
    error it raises is about that query, so it is withheld when the declaration read
    PII, even though the text that runs it names none."""
    with psycopg.connect(dsn) as conn:
        conn.execute(declare)
        with pytest.raises(psycopg.errors.UndefinedObject) as info:
            conn.execute(run)
        conn.rollback()
        if declare.startswith("prepare"):
            conn.execute("deallocate all")
    message = info.value.diag.message_primary or ""
    assert raw["full_name"] not in message and "withheld" in message, message


def test_a_cursor_kept_past_commit_is_run_there_and_its_errors_withheld(
    dsn: str, raw: dict[str, Any]
) -> None:
    """A cursor WITH HOLD runs its query when the transaction that declared it commits:
    an error it raises then is the COMMIT's, and withheld like the cursor's own."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for end in ("commit", "end", "commit and chain"):
            conn.execute("begin")
            conn.execute(f"declare held cursor with hold for {_ECHOES_IN_WHERE}")
            with pytest.raises(psycopg.errors.UndefinedObject) as info:
                conn.execute(end)
            conn.execute("rollback")
            message = info.value.diag.message_primary or ""
            assert raw["full_name"] not in message and "withheld" in message, (end, message)
        # and once the transaction is over, the next statements' errors are the server's
        with pytest.raises(psycopg.errors.DivisionByZero) as info:
            conn.execute("select 1 / 0")
        assert "division by zero" in (info.value.diag.message_primary or "")


#: Names of PII written with Unicode escapes: the server reads ``customers`` and
#: ``full_name``, the text spells neither.
UNICODE_NAMES = {
    "backslash": 'select 1 from U&"cust\\006Fmers" where id = 42'
    ' and current_setting(U&"full\\005Fname") is null',
    "uescape": "select 1 from u&\"cust!006Fmers\" UESCAPE '!' where id = 42"
    " and current_setting(U&\"full!005Fname\" uescape '!') is null",
}


@pytest.mark.parametrize("sql", list(UNICODE_NAMES.values()), ids=list(UNICODE_NAMES))
def test_errors_are_withheld_when_pii_is_named_with_unicode_escapes(
    dsn: str, raw: dict[str, Any], sql: str
) -> None:
    """Whether a statement reads PII outside its outputs is told by the names its text
    spells; a name written ``U&"cust\\006Fmers"`` spells none of them, and its error
    (``current_setting(full_name)`` says the value) is withheld all the same."""
    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        pytest.raises(psycopg.errors.UndefinedObject) as info,
    ):
        conn.execute(sql)
    message = info.value.diag.message_primary or ""
    assert raw["full_name"] not in message and "withheld" in message, message


#: COPY in an encoding whose characters may end in an ASCII byte the server does not
#: escape: 'ソ' is 0x83 0x5C in SJIS (a backslash), 'ポ' is 0x83 0x7C (a '|').
COPY_ENCODINGS = {
    "text-backslash": "copy (select 'ソ', full_name, email from customers where id = 42)"
    " to stdout with (encoding 'SJIS')",
    "text-alias": "copy (select 'ソ', full_name, email from customers where id = 42)"
    " to stdout with (encoding 'Windows932')",
    "csv-delimiter": "copy (select 'ポ', full_name, email from customers where id = 42)"
    " to stdout with (format csv, delimiter '|', encoding 'SJIS')",
}


@pytest.mark.parametrize("sql", list(COPY_ENCODINGS.values()), ids=list(COPY_ENCODINGS))
def test_copy_in_an_encoding_that_hides_ascii_in_characters_leaks_nothing(
    dsn: str, raw: dict[str, Any], sql: str
) -> None:
    """In SJIS (and BIG5, GBK, UHC, GB18030, JOHAB) the second byte of a character may
    be a backslash or a delimiter, which COPY writes as it is: split by its bytes, the
    row's fields shift and a PII value lands in a column that is not PII. Such output
    is tokenized line by line."""
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor().copy(sql) as copy:
        data = b"".join(bytes(block) for block in copy)
    assert data.count(b"\n") == 1, data
    for value in (raw["full_name"], raw["email"]):
        assert value.encode() not in data, data


def _copy_out_all(dsn: str, sql: str) -> bytes:
    """Every CopyData of a simple Query that may hold several COPY TO STDOUT (psql
    sends the text as one Query and writes each COPY's data out)."""
    import subprocess

    done = subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-c", sql],
        capture_output=True,
        timeout=60,
        check=True,
    )
    return done.stdout


#: Several COPY TO STDOUT in one Query: each output is of its own statement.
COPIES_IN_ONE_QUERY = {
    "clean-first": "copy (select 1, 'x') to stdout;"
    " copy (select full_name, email from customers where id = 42) to stdout",
    "csv-second": "copy (select 1, 2 from orders where id = 1) to stdout;"
    " copy (select full_name, 'x' from customers where id = 42) to stdout with (format csv)",
}


@pytest.mark.parametrize("sql", list(COPIES_IN_ONE_QUERY.values()), ids=list(COPIES_IN_ONE_QUERY))
def test_every_copy_of_a_query_with_several_is_tokenized(
    dsn: str, raw: dict[str, Any], sql: str
) -> None:
    """The relay does not tell which COPY of a Query an output is of: the second must
    never be rewritten by the first's columns (clean: passed raw) or options."""
    data = _copy_out_all(dsn, sql)
    assert data.count(b"\n") == 2, data
    for value in (raw["full_name"], raw["email"]):
        assert value.encode() not in data, data


def test_an_aggregate_ordered_by_pii_is_tokenized_once_approved(
    pg_server: Any, demo_role: DemoRole, demo_db: str, admin_dsn: str
) -> None:
    """The rules hold ``json_agg`` and friends (bulk data); approved, the statement runs
    under its PII plan. ``(json_agg(g ORDER BY abs(g - ascii(...))))->0`` is the code of
    the character (the aggregate keeps its input's order, the subscript cuts it like a
    LIMIT): it must come back tokenized, not as the code."""
    with psycopg.connect(admin_dsn) as admin:
        (email,) = admin.execute("select email from customers where id = 42").fetchone()
    code = ord(email[0])
    x = "(select ascii(substr(email, 1, 1)) from customers where id = 42)"
    running, _approvals = _approving_proxy(pg_server, demo_role)
    try:
        with psycopg.connect(running.dsn(demo_db), autocommit=True) as conn:
            for sql in (
                f"select (json_agg(g order by abs(g - {x})) ->> 0)::int"
                " from generate_series(0, 255) g",
                f"select (array_agg(g order by g = {x} desc))[1] from generate_series(0, 255) g",
                f"select split_part(string_agg(g::text, ',' order by abs(g - {x})), ',', 1)::int"
                " from generate_series(0, 255) g",
            ):
                (got,) = conn.execute(sql).fetchone()
                assert got != code, sql
            # an order by the rows' own values stays a plain result
            assert conn.execute(
                "select (array_agg(g order by g desc))[1] from generate_series(0, 9) g"
            ).fetchone() == (9,)
    finally:
        running.stop()


def test_a_token_cut_by_a_cast_is_refused(dsn: str) -> None:
    """``email = 'tok_…'::varchar(1)`` compares the value's first character with stored
    guesses (its id is the code), then ``varchar(2)`` the next: the value a character a
    statement. A cast that cuts, a Bind typed ``"char"`` (its first byte) and a column
    cut and stored in a PII column (its token matched with a guess's) are refused."""
    from psycopg.types.string import StrDumper

    class CharDumper(StrDumper):
        oid = 18  # "char"

    with psycopg.connect(dsn, autocommit=True) as conn:
        (token,) = conn.execute("select email from customers where id = 42").fetchone()
        assert (
            conn.execute(  # compared as it is: resolved, no guess is the whole value
                f"select id from prefix_guesses where email = '{token}'"
            ).fetchall()
            == []
        )
        for cut in ("varchar(1)", "char(1)", '"char"', "name", "text::varchar(1)"):
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="compared with"):
                conn.execute(f"select id from prefix_guesses where email = '{token}'::{cut}")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="compared with"):
            conn.execute(
                f"select id from prefix_guesses where email = any(array['{token}']::varchar(1)[])"
            )
        # the literal takes the type it is compared with: "char" is the first byte
        for cut in ('email::"char"', '"char"(email)'):
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="compared with"):
                conn.execute(f"select id from prefix_guesses where {cut} = '{token}'")
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="compared with"):
                conn.execute(
                    f"select s.id from (select id, {cut} e from prefix_guesses) s"
                    f" where s.e = '{token}'"
                )
        cur = conn.cursor()
        cur.adapters.register_dumper(str, CharDumper)
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="part of a value"):
            cur.execute("select id from prefix_guesses where email = %s", (token,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="made from PII"):
            conn.execute(
                "insert into codebook_notes select 7, email::varchar(1) from customers where id = 42"
            )


def test_a_token_compared_with_a_float_is_refused(dsn: str) -> None:
    """A literal compared with a float is read as one: ``power(0 * length(card_number) +
    g, 1) = 'tok_…'`` compares the card number rounded to about 15 digits with the
    guess ``g``, whose near misses match. A built-in returning a float in what the
    token is compared with, or a float anywhere in a text whose compared column is not
    a stored table's, leaves the token unresolved; a stored column beside a float
    resolves it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        (pid, token) = conn.execute("select id, card_number from payments where id = 1").fetchone()
        assert token.startswith("tok_")
        for sql in (
            "select id from payments where power(0 * length(card_number) + 4111111111111111,"
            " 1) = '{t}'",
            "select id from payments where '{t}' = date_part('year', now())"
            " + 0 * length(card_number)",
            "select s.id from (select id, power(0 * length(card_number) + 1, 1) p from payments)"
            " s where s.p = '{t}'",
            "select s.id from (select id, (0 * length(card_number) + 1)::float8 p"
            " from payments) s where s.p = '{t}'",
        ):
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="compared with"):
                conn.execute(sql.format(t=token))
        rows = conn.execute(
            f"select id, power(amount, 2) from payments where card_number = '{token}'"
        ).fetchall()
        assert pid in [r[0] for r in rows]


def _bits_of(email: str) -> tuple[int, set[int]]:
    """How many bits an e-mail has in UTF-8, and which of them are set."""
    data = email.encode()
    bits = len(data) * 8
    return bits, {i for i in range(bits) if data[i // 8] & (1 << (i % 8))}


def _store_copies(conn: psycopg.Connection[Any], bits: int) -> None:
    """One copy of customer 42's e-mail per bit in ``codebook_notes`` (ids 1000 + the
    bit), stored as an agent allowed to write would: a copy is allowed, 96 rows a
    statement stays under the rule's 100 rows changed."""
    for start in range(0, bits, 96):
        conn.execute(
            "insert into codebook_notes select 1000 + g, c.email from customers c,"
            f" generate_series({start}, {min(start + 95, bits - 1)}) g where c.id = 42"
        )


def test_copies_of_one_value_do_not_spell_it_row_by_row(
    dsn: str, admin_dsn: str, raw: dict[str, Any]
) -> None:
    """An agent allowed to write a PII column stores copies of one e-mail in many rows
    (a copy is allowed), then asks each row for another bit of its own copy, the bit
    picked by the row's id: the ids kept would spell the e-mail in one statement. A
    row's PII related with a clean column of the row marks the rows' level, so the ids
    come back as pseudonyms; the same choice in a write is held."""
    bits, truth = _bits_of(raw["email"])
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            _store_copies(conn, bits)
            oracle = "ascii(substr(email, (id - 1000) / 8 + 1, 1)) & (1 << (id - 1000) % 8) <> 0"
            got = conn.execute(
                f"select id - 1000 from codebook_notes where id >= 1000 and {oracle}"
            ).fetchall()
            assert len(got) == len(truth)  # the count is a number, as count(*) is
            assert {g for (g,) in got} != truth
            assert all(isinstance(g, int) for (g,) in got)  # a pseudonym of the type
            # a clean question asked of every row alike still reads them plainly
            assert conn.execute(
                "select count(*) from codebook_notes where id >= 1000 and email like '%@%'"
            ).fetchone() == (bits,)
            assert conn.execute(
                "select min(id), max(id) from codebook_notes where id >= 1000"
            ).fetchone() == (1000, 1000 + bits - 1)
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="chosen by"):
                conn.execute(
                    f"update codebook_notes set id = id + 5000 where id >= 1000 and {oracle}"
                )
        finally:
            with psycopg.connect(admin_dsn, autocommit=True) as admin:
                admin.execute("delete from codebook_notes where id >= 1000")


def test_copies_of_one_value_asked_through_a_correlated_sub_select(
    dsn: str, admin_dsn: str, raw: dict[str, Any]
) -> None:
    """The same per-row question, asked inside a correlated sub-select of the row
    (``EXISTS (SELECT 1 WHERE …)`` reading the outer row's e-mail and id): the outer
    columns it reads there belong to the predicate around it, so the ids come back as
    pseudonyms and the write is held."""
    bits, truth = _bits_of(raw["email"])
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            _store_copies(conn, bits)
            oracle = (
                "exists (select 1 where ascii(substr(n.email, (n.id - 1000) / 8 + 1, 1))"
                " & (1 << (n.id - 1000) % 8) <> 0)"
            )
            got = conn.execute(
                f"select id - 1000 from codebook_notes n where id >= 1000 and {oracle}"
            ).fetchall()
            assert len(got) == len(truth)
            assert {g for (g,) in got} != truth
            assert all(isinstance(g, int) for (g,) in got)
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="chosen by"):
                conn.execute(
                    f"update codebook_notes n set id = id + 5000 where id >= 1000 and {oracle}"
                )
        finally:
            with psycopg.connect(admin_dsn, autocommit=True) as admin:
                admin.execute("delete from codebook_notes where id >= 1000")


def test_one_row_counted_under_many_filters_does_not_spell_its_value(
    dsn: str, raw: dict[str, Any]
) -> None:
    """Each aggregate's FILTER asks the one row read another bit of its e-mail, and a
    select list holds a count per bit: one statement, one row read, the whole value.
    An aggregate whose FILTER (or computed count argument) reads PII carries it, so
    the counts come back as pseudonyms; a stored column's count stays a number."""
    email = raw["email"].encode()
    bits = len(email) * 8
    truth = [bool(email[i // 8] & (1 << (i % 8))) for i in range(bits)]
    counts = ", ".join(
        f"count(*) filter (where ascii(substr(email, {i // 8 + 1}, 1)) & {1 << (i % 8)} <> 0)"
        for i in range(bits)
    )
    nullifs = ", ".join(
        f"count(nullif(ascii(substr(email, {i // 8 + 1}, 1)) & {1 << (i % 8)}, 0))"
        for i in range(bits)
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        for select_list in (counts, nullifs):
            row = conn.execute(f"select {select_list} from customers where id = 42").fetchone()
            assert row is not None and len(row) == bits
            assert [v == 1 for v in row] != truth
        assert conn.execute(
            "select count(email), count(distinct email) from customers where id = 42"
        ).fetchone() == (1, 1)


def test_one_row_asked_in_many_sub_selects_does_not_spell_its_value(
    dsn: str, raw: dict[str, Any]
) -> None:
    """A select list of sub-selects, each keeping customer 42's row by one bit of its
    e-mail (``EXISTS (…)``, a scalar ``count(*)``): one statement, one row returned,
    the whole value. A sub-select whose rows were kept by their own PII, standing as a
    value, carries that PII; the same sub-select as a whole predicate, or a lookup by
    the whole value, still reads plainly."""
    email = raw["email"].encode()
    bits = len(email) * 8
    truth = [bool(email[i // 8] & (1 << (i % 8))) for i in range(bits)]
    one_row = "from customers where id = 42 and ascii(substr(email, {p}, 1)) & {b} <> 0"
    forms = (
        "exists (select 1 " + one_row + ")",
        "(select count(*) " + one_row + ")",
        # the sub-select as a whole predicate, of a nested level or of a FILTER
        "(select 1 where exists (select 1 " + one_row + "))",
        "count(*) filter (where exists (select 1 " + one_row + "))",
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        for form in forms:
            select_list = ", ".join(form.format(p=i // 8 + 1, b=1 << (i % 8)) for i in range(bits))
            row = conn.execute(f"select {select_list}").fetchone()
            assert row is not None and len(row) == bits
            assert [v is True or v == 1 for v in row] != truth
        # outer joins fill the sub-selects without rows with NULLs: a bit per join
        joins = " ".join(
            f"left join (select 1 x {one_row.format(p=i // 8 + 1, b=1 << (i % 8))}) j{i} on true"
            for i in range(16)
        )
        row = conn.execute(
            f"select {', '.join(f'j{i}.x' for i in range(16))} from (select 1) base {joins}"
        ).fetchone()
        assert row is not None and [v is not None and v == 1 for v in row] != truth[:16]
        token = conn.execute("select email from customers where id = 42").fetchone()[0]
        assert conn.execute(
            "select (select id from customers where email = %s)", (token,)
        ).fetchone() == (42,)
        assert conn.execute(
            "select 1 where exists (select 1 from customers where id = 42 and email like '%%@%%')"
        ).fetchone() == (1,)


def test_copies_of_one_value_asked_under_or_do_not_spell_it(
    dsn: str, admin_dsn: str, raw: dict[str, Any]
) -> None:
    """Over rows holding copies of one e-mail, ``(id = 1000 AND <bit 0>) OR (id = 1001
    AND <bit 1>) …``: every leaf reads one column, but the OR makes the row's id pick
    its question, and the rows kept (or their ids summed into one row) spell it."""
    bits, truth = _bits_of(raw["email"])
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            _store_copies(conn, bits)
            oracle = " or ".join(
                f"(id = {1000 + i} and ascii(substr(email, {i // 8 + 1}, 1)) & {1 << (i % 8)} <> 0)"
                for i in range(bits)
            )
            got = conn.execute(f"select id - 1000 from codebook_notes where {oracle}").fetchall()
            assert len(got) == len(truth)
            assert {g for (g,) in got} != truth
            packed = conn.execute(
                f"select sum(2::numeric ^ (id - 1000)) from codebook_notes where {oracle}"
            ).fetchone()[0]
            assert packed != sum(2**i for i in truth)
            # PII alone under OR still reads plainly
            assert conn.execute(
                "select count(*) from codebook_notes where id >= 1000"
                " and (email like '%@%' or email is null)"
            ).fetchone() == (bits,)
        finally:
            with psycopg.connect(admin_dsn, autocommit=True) as admin:
                admin.execute("delete from codebook_notes where id >= 1000")


def test_a_token_in_a_binary_json_parameter_is_resolved_or_refused(dsn: str) -> None:
    """asyncpg sends json and jsonb in the binary format (jsonb: a version byte, then
    the text): a token inside one is resolved where the text format's would be, and
    refused where the value would come back — never forwarded as it is, a silent miss."""
    import asyncio

    async def run() -> list[object]:
        conn = await asyncpg.connect(dsn)
        out: list[object] = []
        try:
            token = await conn.fetchval("select email from customers where id = 42")
            for sql, arg in [
                ("select id from customers where to_jsonb(email) = $1::jsonb", json.dumps(token)),
                (
                    "select id from customers where to_jsonb(email) = any($1::jsonb[])",
                    [json.dumps(token)],
                ),
                ("select $1::jsonb ->> 'e' as e", json.dumps({"e": token})),
                ("select $1::json as j", json.dumps([token])),
            ]:
                try:
                    out.append([r[0] for r in await conn.fetch(sql, arg)])
                except asyncpg.InvalidParameterValueError:  # 22023
                    out.append("22023")
            return out
        finally:
            await conn.close()

    assert asyncio.run(run()) == [[42], [42], "22023", "22023"]


def test_a_token_in_a_text_jsonb_array_parameter_is_resolved_as_json(
    dsn: str, admin_dsn: str
) -> None:
    """A jsonb[] parameter in the text format: each element is a JSON text, so the value
    goes in JSON-escaped — a value with a quote or a backslash is found, not cut."""
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute("insert into codebook_notes values (77, %s)", ['a"b\\c@example.com'])
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            token = conn.execute("select email from codebook_notes where id = 77").fetchone()[0]
            assert token.startswith("tok_email_")
            ids = conn.execute(
                "select id from codebook_notes where to_jsonb(email) = any(%s)",
                [[Jsonb(token)]],  # a jsonb[] in the text format, its type declared
            ).fetchall()
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute("delete from codebook_notes where id = 77")
    assert ids == [(77,)]


@pytest.mark.parametrize(
    "sql",
    [
        "select id from char_guesses where email = %s",
        "select id from char_guesses where email = any(%s)",
        "select id from (select id, email from char_guesses) s where s.email = %s",
        "with s as (select * from char_guesses) select id from s where email in (%s)",
        "select id from name_guesses where email = %s",
        "insert into char_guesses values (1000, %s)",
        "insert into name_guesses values (1000, %s)",
    ],
)
def test_a_token_compared_with_or_stored_in_a_column_that_cuts_is_refused(
    dsn: str, raw: dict[str, Any], sql: str
) -> None:
    """A PII column of type ``"char"`` or ``name`` makes a literal or parameter compared
    with it (or written into it) of its type: the server would read the token's value
    cut — its first byte matched against the stored guesses names the e-mail's first
    character. Such a token is refused (22023); with a text column it resolves."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        token = conn.execute("select email from customers where id = 42").fetchone()[0]
        assert conn.execute("select id from customers where email = %s", [token]).fetchall() == [
            (42,)
        ]
        arg: object = [token] if "any" in sql else token
        # a write into such a column is held before its token is looked at (it stores
        # a value made from PII); held with no approval service, it is refused as well
        refused: tuple[type[Exception], ...] = (psycopg.errors.InvalidParameterValue,)
        if sql.startswith("insert"):
            refused += (psycopg.errors.InsufficientPrivilege,)
        with pytest.raises(refused):
            cur = conn.execute(sql, [arg])
            # what the server answered: the first character's code, or nothing
            got = cur.fetchall() if cur.description else cur.statusmessage
            pytest.fail(f"resolved: {got} (the e-mail starts with {ord(raw['email'][0])})")
        if "any" not in sql:
            with pytest.raises(refused):
                conn.execute(sql.replace("%s", f"'{token}'"))  # type: ignore[arg-type]


@pytest.mark.parametrize("type_name", ["char_d", "char_dd", "_char_d", "float4", "float8", "name"])
def test_a_token_in_a_parameter_declared_of_a_type_that_cuts_is_refused(
    dsn: str, raw: dict[str, Any], type_name: str
) -> None:
    """A Parse may declare its parameter's type by OID: a domain over ``"char"`` (or an
    array of one, or a float type) makes the server read the token's value cut — its
    first byte compared with the stored single characters names the e-mail's first
    character. Such a Bind's token is refused (22023), like ``"char"``'s own OID."""

    from dbgate.wire import messages as m
    from tests.integration.clients.conftest import run_async
    from tests.integration.rawclient import RawClient, errors, rows

    with psycopg.connect(dsn) as conn:
        token = conn.execute("select email from customers where id = 42").fetchone()[0]
        oid = conn.execute("select %s::regtype::oid::int", [type_name]).fetchone()[0]
    array = type_name.startswith("_")
    sql = "select id from prefix_guesses where email = " + (
        "any($1::text[])" if array else "$1::text"
    )
    value = ("{" + token + "}") if array else token

    async def run() -> list[Any]:
        client = await RawClient.from_dsn(dsn)
        try:
            client.send(
                m.Parse("", sql, (oid,)),
                m.Bind("", "", params=(value.encode(),)),
                m.Execute("", 0),
                m.SYNC,
            )
            return await client.until_ready()
        finally:
            await client.close()

    got = run_async(run())
    assert str(ord(raw["email"][0])).encode() not in [v for r in rows(got) for v in r], got
    assert [e.sqlstate for e in errors(got)] == ["22023"], got


def test_a_token_compared_under_a_collation_the_database_defines_is_refused(dsn: str) -> None:
    """A collation a database defines may be nondeterministic (ICU, ``deterministic =
    false``): equal under it is what its tailoring says, a part of the value or its
    shape. A token compared under a ``COLLATE`` clause naming one is refused (22023);
    under ``"C"`` it is compared byte for byte, and resolved."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        token = conn.execute("select email from customers where id = 42").fetchone()[0]
        sql = "select id from customers where email collate {} = %s"
        assert conn.execute(sql.format('"C"'), [token]).fetchall() == [(42,)]
        for how in ([token], None):
            with pytest.raises(psycopg.errors.InvalidParameterValue):
                if how is None:
                    conn.execute(sql.format("agent_coll").replace("%s", f"'{token}'"))  # type: ignore[arg-type]
                else:
                    conn.execute(sql.format("agent_coll"), how)  # type: ignore[arg-type]


def test_a_token_in_a_binary_bytea_parameter_is_refused_as_in_text(dsn: str) -> None:
    """A bytea parameter holds the value's bytes themselves: a token there is not
    resolved, and is refused (22023) in the binary format (asyncpg's) as in the text
    format — never forwarded as it is, to match nothing silently."""
    import asyncio

    async def run() -> list[object]:
        conn = await asyncpg.connect(dsn)
        out: list[object] = []
        try:
            token = await conn.fetchval("select email from customers where id = 42")
            for arg in (token.encode(), b"\x00tok_ and no token"):
                try:
                    out.append(
                        await conn.fetch(
                            "select id from customers where convert_to(email, 'UTF8') = $1", arg
                        )
                    )
                except asyncpg.InvalidParameterValueError:  # 22023
                    out.append("22023")
            return out
        finally:
            await conn.close()

    assert asyncio.run(run()) == ["22023", []]


def test_set_operations_do_not_spell_a_value_in_clean_numbers(
    dsn: str, raw: dict[str, Any]
) -> None:
    """A set operation other than UNION ALL compares its branches' rows: ``EXCEPT`` of
    the characters' codes from every number leaves all but the codes, a ``UNION`` that
    merges ``g % code`` has as many rows as the code, and so does a recursive UNION
    that stops when ``(n + 1) % code`` comes round again. Such rows come back as
    pseudonyms (their counts too); set operations of clean keys still read plainly."""
    email = raw["email"].encode()
    codes = sorted(set(email))
    code = "(select ascii(substr(email, 1, 1)) from customers where id = 42)"
    with psycopg.connect(dsn, autocommit=True) as conn:
        left = conn.execute(
            "select g from generate_series(0, 255) g except select ascii(substr((select email"
            " from customers where id = 42), n, 1)) from generate_series(1, 64) n order by 1"
        ).fetchall()
        assert sorted(set(range(256)) - {g for (g,) in left if isinstance(g, int)}) != codes
        for sql in (
            f"select count(*) from (select g % {code} from generate_series(1, 300) g"
            " union select 0) s",
            f"with recursive t(n) as (select 0 union select (n + 1) % {code} from t)"
            " select count(*) from t",
        ):
            assert conn.execute(sql).fetchone() != (email[0],), sql
        assert conn.execute(
            "select count(*) from (select g from generate_series(1, 10) g"
            " except select g from generate_series(1, 3) g) s"
        ).fetchone() == (7,)


def test_counts_of_inserted_copies_do_not_spell_a_value(
    dsn: str, admin_dsn: str, raw: dict[str, Any]
) -> None:
    """Copies of an e-mail may be stored (a copy is allowed), and a statement may
    hold many inserts, each a CTE that copies customer 42's row only when one bit of
    its e-mail is set and returns a row per row inserted: counted side by side, the
    RETURNING rows spelled the bits in one row, and which rows were stored spelled
    them to a clean read of the table: rows stored as questions of PII at several
    levels say are held."""
    email = raw["email"].encode()
    bits = 16
    truth = [bool(email[i // 8] & (1 << (i % 8))) for i in range(bits)]
    ctes = ", ".join(
        f"i{i} as (insert into codebook_notes select {2000 + i}, email from customers"
        f" where id = 42 and ascii(substr(email, {i // 8 + 1}, 1)) & {1 << (i % 8)} <> 0"
        " returning 1)"
        for i in range(bits)
    )
    counts = ", ".join(f"(select count(*) from i{i})" for i in range(bits))
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="several levels"):
                conn.execute(f"with {ctes} select {counts}")
            stored = {
                r[0]
                for r in conn.execute(
                    "select id from codebook_notes where id >= 2000 and id < 3000"
                ).fetchall()
            }
            assert [2000 + i in stored for i in range(bits)] != truth
            # one insert's own rows still read plainly
            assert conn.execute(
                "insert into codebook_notes select 3000, email from customers where id = 42"
                " returning id"
            ).fetchone() == (3000,)
        finally:
            with psycopg.connect(admin_dsn, autocommit=True) as admin:
                admin.execute("delete from codebook_notes where id >= 2000")


def test_one_row_asked_in_many_set_operations_does_not_spell_its_value(
    dsn: str, raw: dict[str, Any]
) -> None:
    """``EXISTS (SELECT 1 INTERSECT SELECT ascii(substr(email, p, 1)) & b FROM customers
    WHERE id = 42)``, one per bit in a select list: the INTERSECT keeps customer 42's
    row by a bit of its own e-mail, as a WHERE would, and a sub-select standing as a
    value carries what kept its rows."""
    email = raw["email"].encode()
    bits = 16
    truth = [bool(email[i // 8] & (1 << (i % 8))) for i in range(bits)]
    select_list = ", ".join(
        f"exists (select {1 << (i % 8)} intersect select ascii(substr(email, {i // 8 + 1}, 1))"
        f" & {1 << (i % 8)} from customers where id = 42)"
        for i in range(bits)
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(f"select {select_list}").fetchone()
        assert row is not None and len(row) == bits
        assert [v is True for v in row] != truth


def test_one_row_ranked_by_many_keys_does_not_spell_its_value(
    dsn: str, raw: dict[str, Any]
) -> None:
    """``rank(1) WITHIN GROUP (ORDER BY ascii(substr(email, p, 1)) & b)`` over customer
    42's one row is 1 + (bit < 1): a select list of them spelled the e-mail from one row
    read. A hypothetical-set aggregate counts the rows its keys sort before its
    argument, as a FILTER's count does, and carries what the keys read."""
    email = raw["email"].encode()
    bits = 16
    truth = [bool(email[i // 8] & (1 << (i % 8))) for i in range(bits)]
    select_list = ", ".join(
        f"rank(1) within group (order by ascii(substr(email, {i // 8 + 1}, 1)) & {1 << (i % 8)})"
        for i in range(bits)
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(f"select {select_list} from customers where id = 42").fetchone()
        assert row is not None and len(row) == bits
        assert [v == 1 for v in row] != truth
        assert conn.execute(
            "select rank(3) within group (order by id) from customers where id < 10"
        ).fetchone() == (3,)


def test_a_set_operation_compares_whole_rows(dsn: str, raw: dict[str, Any]) -> None:
    """``SELECT g, 0 … EXCEPT (SELECT 0, <bit 0> … UNION ALL SELECT 1, <bit 1> …)``
    drops ``(g, 0)`` where bit ``g`` is clear: the bit asked in one output chooses the
    rows by ``g`` in another, as ``(g, 0) NOT IN (…)`` would, and the numbers kept,
    aggregated into one value, spelled the bits."""
    email = raw["email"].encode()
    bits = 16
    truth = sum(1 << i for i in range(bits) if email[i // 8] & (1 << (i % 8)))
    branches = " union all ".join(
        f"select {i}, ascii(substr(email, {i // 8 + 1}, 1)) & {1 << (i % 8)} from customers"
        " where id = 42"
        for i in range(bits)
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        (got,) = conn.execute(
            f"select sum(1 << g) from (select g, 0 from"
            f" generate_series(0, {bits - 1}) g except ({branches})) s"
        ).fetchone()
        assert got != truth


def test_ranks_in_an_order_of_pii_come_back_tokenized(
    dsn: str, admin_dsn: str, raw: dict[str, Any]
) -> None:
    """Windows ranked by bits of every customer's e-mail, cut to customer 42's row by a
    LIMIT the server applies after them: straight from the server the ranks spell the
    e-mail's first characters (rank > 1 in the ascending order: the bit is 1; in the
    descending one: 0), through the gate they are pseudonyms."""
    chars = raw["email"][:4]
    key = "ascii(substr(email, {i}, 1)) & {bit}"
    cols = ", ".join(
        f"rank() over (order by {key.format(i=i, bit=1 << b)}),"
        f" rank() over (order by {key.format(i=i, bit=1 << b)} desc)"
        for i in range(1, len(chars) + 1)
        for b in range(7)
    )
    sql = f"select id, {cols} from customers order by id <> 42, id limit 1"

    def spelled(row: tuple[Any, ...]) -> str:
        def bit(i: int, b: int) -> bool:
            up, down = row[1 + 2 * (7 * i + b)], row[2 + 2 * (7 * i + b)]
            # neither: every customer has the same bit; letters have bits 5 and 6
            return up != 1 or (down == 1 and b in (5, 6))

        return _spell(len(chars), bit)

    with psycopg.connect(admin_dsn) as admin:
        assert spelled(admin.execute(sql).fetchone()) == chars
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
    assert row[0] == 42
    assert spelled(row) != chars
    assert all(v != 1 for v in row[1:])


def test_sub_selects_cut_in_an_order_of_pii_come_back_tokenized(
    dsn: str, admin_dsn: str, raw: dict[str, Any]
) -> None:
    """Derived tables ``(SELECT id ... ORDER BY <bit of the e-mail>, id <> 42 LIMIT 1)``
    cross-joined: each is 42 exactly where customer 42's bit is the first in its
    order, one row holds them all. Through the gate they are pseudonyms."""
    chars = raw["email"][:2]
    key = "ascii(substr(email, {i}, 1)) & {bit}"
    tables = ", ".join(
        f"(select id from customers order by {key.format(i=i, bit=1 << b)}{d}, id <> 42"
        f" limit 1) t{i}_{b}{k}"
        for i in range(1, len(chars) + 1)
        for b in range(7)
        for k, d in enumerate((" desc", ""))
    )
    sql = f"select * from {tables}"

    def spelled(row: tuple[Any, ...]) -> str:
        def bit(i: int, b: int) -> bool:
            up, down = row[2 * (7 * i + b)] == 42, row[2 * (7 * i + b) + 1] == 42
            # both: every customer has the same bit; letters have bits 5 and 6
            return (up and not down) or (up and down and b in (5, 6))

        return _spell(len(chars), bit)

    with psycopg.connect(admin_dsn) as admin:
        assert spelled(admin.execute(sql).fetchone()) == chars
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
    assert spelled(row) != chars
    assert all(v != 42 for v in row)


def test_aggregates_over_rows_kept_by_bits_of_pii_come_back_tokenized(
    dsn: str, admin_dsn: str
) -> None:
    """``sum(power(2::numeric, id)) ... WHERE ascii(substr(email, i, 1)) & b <> 0``:
    one number whose bits are the customers whose bit is 1, so fourteen statements
    read the first two characters of every e-mail straight from the server (the rules
    let it through: no list of rows is collected); through the gate the sums are
    pseudonyms. The same for the e-mails' order, listed by ``string_agg`` over a
    sub-select ordered by them (its LIMIT bounds the rows the rules see)."""
    with psycopg.connect(admin_dsn) as admin:
        emails = dict(admin.execute("select id, email from customers").fetchall())
        order = [r[0] for r in admin.execute("select id from customers order by email")]

    def spelled(conn: psycopg.Connection[Any]) -> dict[int, str]:
        bits: dict[tuple[int, int], int] = {}
        for i in (1, 2):
            for b in range(7):
                (got,) = conn.execute(
                    f"select sum(power(2::numeric, id)) from customers"
                    f" where ascii(substr(email, {i}, 1)) & {1 << b} <> 0"
                ).fetchone()
                bits[(i, b)] = int(got or 0)
        return {
            k: "".join(chr(sum(1 << b for b in range(7) if bits[(i, b)] >> k & 1)) for i in (1, 2))
            for k in emails
        }

    ordered = (
        "select string_agg(id::text, ',') from"
        " (select id from customers order by email limit 1000) s"
    )
    with psycopg.connect(admin_dsn) as admin:
        assert spelled(admin) == {k: e[:2] for k, e in emails.items()}
        (listed,) = admin.execute(ordered).fetchone()
        assert [int(n) for n in listed.split(",")] == order
    with psycopg.connect(dsn, autocommit=True) as conn:
        got = spelled(conn)
        (listed,) = conn.execute(ordered).fetchone()
    assert sum(got[k] == e[:2] for k, e in emails.items()) < len(emails) // 4
    assert listed.startswith("tok_")


def _spell(n: int, bit: Callable[[int, int], bool]) -> str:
    """``n`` seven-bit characters, bit ``b`` of character ``i`` as ``bit(i, b)`` says."""
    return "".join(chr(sum(1 << b for b in range(7) if bit(i, b))) for i in range(n))
