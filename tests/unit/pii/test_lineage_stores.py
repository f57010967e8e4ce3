"""A value made from PII stored in a PII column is held; a copy is not.

Read back from a PII column, a value gets the stored column's deterministic token, so
a piece of a value stored there (``substr(email, 1, 1)``) could be matched with the
token of a text the agent stored itself. Constants, parameters and columns are copies;
a token among them is resolved only when it stands for a stored value (``stores``).
"""

from __future__ import annotations

import pytest

from dbgate.pii.lineage import analyze
from tests.unit.pii.test_lineage_hunt import COV

TOKEN = "tok_email_h0123456789abcdef0123456789abcdef"

HELD = [
    "update customers set email = substr(email, 1, 1) where id = 9",
    "update customers set full_name = upper(full_name) where id = 3",
    f"update customers set email = lower('{TOKEN}') where id = 9",
    "insert into customers (id, email) select 9, substr(email, 1, 1) from customers where id = 1",
    "insert into customers (id, email) select 9, email from customers where id = 1"
    " union select 10, lower(email) from customers where id = 2",
    "update customers set email = (select lower(email) from customers where id = 2) where id = 9",
]

COPIES = [
    "update customers set email = email where id = 9",
    "update customers set email = $1 where id = 9",
    f"update customers set email = '{TOKEN}' where id = 9",
    "insert into customers (id, email) values (9, 'a@b.c')",
    "insert into customers select * from customers where id = 1",
    "insert into customers (id, email) select id + 1000, email from customers where id = 1",
    "insert into customers (id, email) values (9, $1::text)",
]


@pytest.mark.parametrize("sql", HELD)
def test_a_value_made_from_pii_stored_in_a_pii_column_is_held(sql: str) -> None:
    writes = analyze(sql, COV).pii_writes
    assert any("made from PII" in w for w in writes), (sql, writes)


@pytest.mark.parametrize("sql", COPIES)
def test_a_copy_stored_in_a_pii_column_is_not(sql: str) -> None:
    assert analyze(sql, COV).pii_writes == [], sql


def test_tokens_and_parameters_stored_in_a_pii_column_are_marked() -> None:
    a = analyze(f"update customers set email = '{TOKEN}' where email = '{TOKEN}'", COV)
    assert sorted(s.stores for s in a.token_sites) == [False, True]  # the filter's is not
    b = analyze("update customers set email = $1 where email = $2", COV)
    assert b.param_stores == {1}


#: Writes whose rows are chosen by a value derived from PII related with another row
#: source: which rows changed spells the value, and a clean read of the table gets it
#: back (one order per character of the e-mail, in the first one).
CHOSEN_ROWS = [
    "update orders set total = 1000 + n from customers c, generate_series(1, 40) n"
    " where c.id = 1 and orders.id = n * 128 + ascii(substr(c.email, n, 1))",
    "update orders set total = 5 where id = (select ascii(email) from customers where id = 1)",
    "update orders set total = 5 where id in (select g from generate_series(1, 200) g,"
    " customers c where c.id = 1 and g = ascii(substr(c.email, 1, 1)))",
    "update orders set total = 5 from (select g from generate_series(1, 200) g, customers c"
    " where c.id = 1 and g = ascii(c.email)) s where orders.id = s.g",
    "with s as (select g from generate_series(1, 200) g, customers c where c.id = 1"
    " and g = ascii(c.email)) update orders set total = 5 where id in (select g from s)",
    "with u as (update orders set total = 5 where id = (select ascii(email) from customers"
    " where id = 1) returning 1) select 1",
    "delete from orders where id = (select ascii(email) from customers where id = 1)",
    "merge into orders o using customers c on o.id = ascii(c.email) and c.id = 1"
    " when matched then update set total = 5",
    "merge into orders o using (select 1 as k) s on o.id = 1 when matched and"
    " o.id = (select ascii(email) from customers where id = 1) then delete",
    "insert into orders (id, total) values (1, 0) on conflict (id) do update set total = 5"
    " where orders.customer_id = (select ascii(email) from customers where id = 1)",
    # a count of rows PII sized, compared in HAVING with the written row's key
    "update orders set total = 1 where exists (select from customers c,"
    " generate_series(1, ascii(c.email)) x where c.id = 42 having count(*) >= orders.id)",
    "delete from orders where exists (select 1 from customers c,"
    " generate_series(1, ascii(c.email)) x where c.id = 42 offset orders.id - 1)",
    "with s as (select 1 from customers c, generate_series(1, ascii(c.email)) x where"
    " c.id = 42) update orders set total = 1 where (select count(*) from s) >= orders.id",
    # copies into PII columns: their stored tokens tell which customer was copied
    "insert into customers (full_name, email, phone, ssn, birth_date, address)"
    " select c2.full_name, c2.email, c2.phone, c2.ssn, c2.birth_date, c2.address"
    " from customers c2, customers c where c.id = 1 and c2.id = ascii(substr(c.email, 1, 1))",
    "update customers set full_name = c2.full_name from customers c2, customers c"
    " where customers.id = 9 and c.id = 1 and c2.id = ascii(c.email)",
]

#: Rows chosen by constants, keys, tokens or parameters, or a row by its own values.
CHOSEN_FREELY = [
    "update orders set total = 5 where id = 3",
    "update orders set total = 5 where customer_id in"
    " (select id from customers where email like 'a%')",
    f"update orders set status = 'x' from customers c where c.id = orders.customer_id"
    f" and c.email = '{TOKEN}'",
    "delete from orders where customer_id = (select id from customers where email = $1)",
    "update customers set created_at = now() where email like 'a%'",
    "merge into orders o using customers c on o.customer_id = c.id"
    " when matched then update set total = 5",
    "insert into customers select * from customers where email like 'a%'",
]


@pytest.mark.parametrize("sql", CHOSEN_ROWS)
def test_a_write_to_rows_chosen_by_pii_is_held(sql: str) -> None:
    writes = analyze(sql, COV).pii_writes
    assert any("chosen by a value derived from PII" in w for w in writes), (sql, writes)


@pytest.mark.parametrize("sql", CHOSEN_FREELY)
def test_a_write_to_rows_chosen_otherwise_is_not(sql: str) -> None:
    assert analyze(sql, COV).pii_writes == [], sql


#: Reads that lock rows a value derived from PII chose: another session finds the
#: locked rows (``SKIP LOCKED``), one order per character of the e-mail.
LOCKS_CHOSEN = [
    "select o.id from orders o where o.id in (128, 129) and o.id = 128"
    " + (select ascii(substr(email, 1, 1)) from customers where id = 1) for share",
    "select 1 from orders o, customers c, generate_series(1, 30) n where c.id = 1"
    " and o.id = n * 128 + ascii(substr(c.email, n, 1)) for no key update of o",
    "select * from (select o.id from orders o where o.id = (select ascii(email)"
    " from customers where id = 1)) s for key share",
    "with x as (select o.id from orders o where o.id = (select ascii(email) from customers"
    " where id = 1) for update) select 1",
]


@pytest.mark.parametrize("sql", LOCKS_CHOSEN)
def test_a_lock_on_rows_chosen_by_pii_is_held(sql: str) -> None:
    writes = analyze(sql, COV).pii_writes
    assert any("locks rows chosen by a value derived from PII" in w for w in writes), sql


@pytest.mark.parametrize(
    "sql",
    [
        "select id from orders where id = 5 for key share",
        "select id from customers where id = 1 and email like 'a%' for share",
        f"select o.id from orders o join customers c on c.id = o.customer_id"
        f" where c.email = '{TOKEN}' for share of o",
    ],
)
def test_a_lock_on_rows_chosen_otherwise_is_not(sql: str) -> None:
    assert analyze(sql, COV).pii_writes == [], sql


def test_a_write_where_current_of_a_cursor_pii_chose_is_held() -> None:
    """``WHERE CURRENT OF c`` writes the row cursor ``c`` stands on: one its query
    chose. Over rows PII chose, the write spells the value; a cursor dbgate did not
    see declared is unknown. What it means depends on the session: never cached."""
    from dbgate.pii.room import PiiRoom, PiiSettings
    from dbgate.pii.tokens import Key, Keyring, Tokenizer
    from tests.unit.pii.test_lineage_hunt import CATALOG, _snapshot

    room = PiiRoom(CATALOG, Tokenizer(Keyring([Key("k", b"k" * 32)])), PiiSettings(), _snapshot())
    session = room.session("agent")
    write = "update orders set total = 777 where current of c"
    session.plan("declare c cursor for select id from orders where id in (128, 129)")
    assert session.plan(write).hold_reasons == []
    session.plan(
        "declare c cursor for select id from orders where id in (128, 129) and id = 128"
        " + (select ascii(substr(email, 1, 1)) from customers where id = 1)"
    )
    assert any("chosen by a value derived from PII" in r for r in session.plan(write).hold_reasons)
    assert session.plan("delete from orders where current of c").hold
    assert room.session("other").plan(write).hold  # declared where dbgate did not see it
    assert not room.seen_exactly(write)


def test_a_write_where_current_of_is_never_classified_once_for_its_text() -> None:
    from dbgate.policy.classify import classify

    assert classify("update orders set total = 1 where current of c").session_dependent
    assert classify("delete from orders where current of c").session_dependent
    assert not classify("update orders set total = 1 where id = 3").session_dependent


def test_an_execute_that_writes_an_argument_derived_from_pii_is_held() -> None:
    """``PREPARE pu(int) AS UPDATE orders SET total = 777 WHERE id = $1`` then ``EXECUTE
    pu(128 + ascii(substr(pg_stat_get_backend_activity(n), k, 1)))`` marks the order
    whose id is the code of a character of another session's query text (with the
    values of the tokens it sent): the argument is written, like a copy."""
    from dbgate.pii.room import PiiRoom, PiiSettings
    from dbgate.pii.tokens import Key, Keyring, Tokenizer
    from tests.unit.pii.test_lineage_hunt import CATALOG, _snapshot

    room = PiiRoom(CATALOG, Tokenizer(Keyring([Key("k", b"k" * 32)])), PiiSettings(), _snapshot())
    session = room.session("agent")
    session.plan("prepare pu(int) as update orders set total = 777 where id = $1")
    session.plan("prepare pi(text) as insert into orders (customer_id, status) values (1, $1)")
    session.plan("prepare ps(text) as select $1 as x")
    read = "pg_stat_get_backend_activity(7)"
    for sql in (f"execute pu(128 + ascii(substr({read}, 40, 1)))", f"execute pi({read})"):
        assert session.plan(sql).hold, sql
    assert not session.plan("execute pu(5)").hold
    assert not session.plan("execute pi('x')").hold
    # a statement text given to a prepared statement is asked whatever its body asks
    # (``SELECT 1 WHERE ascii(substr($1, 40, 1)) & 1 <> 0`` answers a bit of it), and
    # the body is not known here: held, a plain ``SELECT $1`` too
    session.plan("prepare pb(text) as select 1 where ascii(substr($1, 40, 1)) & 1 <> 0")
    assert session.plan(f"execute pb({read})").hold
    assert session.plan(f"execute ps({read})").hold
    assert not session.plan("execute ps('x')").hold
    assert room.session("other").plan(f"execute pu({read})").hold  # prepared unseen


@pytest.mark.parametrize(
    "sql",
    [
        "update customers set email = email::varchar(1) where id = 1",
        "insert into customers (id, email) select 2, email::char(2) from customers where id = 1",
        'update customers set email = full_name::"char" where id = 1',
    ],
)
def test_a_column_cut_by_a_cast_is_made_from_pii(sql: str) -> None:
    """``email::varchar(1)`` is the first character, not a copy: stored in a PII column
    it would read back with a stored value's deterministic token, matched to the token
    of a character the agent stored itself."""
    a = analyze(sql, COV)
    assert any("made from PII" in w for w in a.pii_writes), sql
