"""A call that keeps state, run or not as a value derived from PII says.

``set_config``, ``pg_notify``, ``nextval`` … keep something a later, clean statement
reads back (``pg_settings``, a ParameterStatus, a notification's channel, a sequence).
Given constants they carry nothing, but a ``CASE``, a ``WHERE``, a ``FILTER`` or a
scalar sub-select's rows decide whether each runs: a select list of them kept a bit
each. tests/integration/pii/test_hunt_session_state.py runs them through the gate.
"""

from __future__ import annotations

import pytest

from dbgate.pii.lineage import analyze
from tests.unit.pii.test_lineage_hunt import COV

BIT = "ascii(substr(email, 1, 1)) & 4 <> 0"

HELD = [
    f"select case when {BIT} then set_config('enable_seqscan', 'off', false) end"
    " from customers where id = 1",
    f"select (select set_config('enable_seqscan', 'off', false) from customers"
    f" where id = 1 and {BIT})",
    f"select 1 from customers where id = 1 and {BIT} and pg_notify('c', 'x') is null",
    f"select count(*) filter (where {BIT} and pg_notify('c', 'x') is null)"
    " from customers where id = 1",
    f"select case when {BIT} then nextval('s') end from customers where id = 1",
    f"select set_config('application_name', 'b2', false) from customers where id = 1 and {BIT}",
    f"select coalesce(nullif({BIT}, true)::text, set_config('a', 'b', true))"
    " from customers where id = 1",
    f"with c as (select id from customers where {BIT}) select setval('s', 5) from c",
    "select case when public.get_email(1) like 'a%' then pg_notify('c', 'x') end",
    # draws from the random generator setseed seeded: the next random() reads the count
    "select count(random()) from customers c, generate_series(1, ascii(c.email)) g where c.id = 1",
    f"select case when {BIT} then random_normal() end from customers where id = 1",
    "select array_shuffle(string_to_array(email, null)) from customers where id = 1",
    "select (select count(*) from orders tablesample bernoulli (50) where orders.id > c.id)"
    " from customers c, generate_series(1, ascii(c.email)) g where c.id = 1",
    "select id from customers c, generate_series(1, ascii(c.email)) g where c.id = 1"
    " order by random() limit 1",
    "select distinct email from customers order by random()",
    f"select id, email, case when {BIT} then random() end from customers where id = 1",
    "select id, random() + ascii(email) from customers where id = 1",
    # a conjunct that reads a column decides with it
    f"select id from customers where id = 1 and ({BIT} or random() < 2)",
    "select id from customers c, generate_series(1, ascii(c.email)) g"
    " where c.id = 1 and random() < 2 limit 1",
    # rows kept at several levels, each bit repeated 2^k times: as many rows as the code,
    # drawn for before a LIMIT keeps one
    "select 1 from (select 1 from customers c, generate_series(1, 1) g where c.id = 1"
    " and ascii(c.email) & 1 <> 0 union all select 1 from customers c,"
    " generate_series(1, 2) g where c.id = 1 and ascii(c.email) & 2 <> 0) s"
    " order by random() limit 1",
]


@pytest.mark.parametrize("sql", HELD)
def test_a_state_write_in_a_statement_reading_pii_is_held(sql: str) -> None:
    assert any("which may decide" in w for w in analyze(sql, COV).pii_writes), sql


CLEAN = [
    "select set_config('application_name', 'agent', false)",
    "select nextval('orders_id_seq')",
    "insert into customers (id, email) values (nextval('s'), $1) returning id",
    "select set_config('enable_seqscan', 'off', false), id from orders where id = 3",
    # statement by statement: the second reads PII, the first's call runs whatever it says
    "select setseed(0.5); select email from customers order by random() limit 3",
    f"select id, email from customers where {BIT}",
    # once per row of a level no PII chose: as many draws as rows, a count
    "select id, email from customers order by random() limit 5",
    "select id, email from customers where email like 'a%' order by pg_catalog.random() limit 5",
    "select id, email from customers tablesample system (10)",
    "select id, email from customers tablesample bernoulli (10) repeatable (3) order by email",
    "select id, random() from customers where id < 5",
    "declare c cursor for select id, email from customers order by random()",
    "explain analyze select id, email from customers order by random()",
    "select id, email from customers where random() < 0.01",
    "select id, email, random() from customers where id < 5",
    "select id, email from customers where id < 500 and pg_catalog.random() < 0.1 limit 5",
]


@pytest.mark.parametrize("sql", CLEAN)
def test_a_state_write_of_constants_beside_no_pii_is_not_held(sql: str) -> None:
    assert analyze(sql, COV).pii_writes == [], sql


def _kept(b: int) -> str:
    return f"select {1 << b} from customers where id = 1 and ascii(email) & {1 << b} <> 0"


STORED_BITS = [
    f"with a as (insert into notes (id) {_kept(0)} returning 1),"
    f" b as (insert into notes (id) {_kept(1)} returning 1) select 1",
    f"insert into notes (id) {_kept(0)} union all {_kept(1)}",
    f"create table x as {_kept(0)} union all {_kept(1)}",
    f"select * into x from ({_kept(0)} union all {_kept(1)}) s",
    f"update orders set total = 1 where id in ({_kept(0)} union all {_kept(1)})",
    f"delete from orders where id in ({_kept(0)} union all {_kept(1)})",
    f"merge into orders o using ({_kept(0)} union all {_kept(1)}) x (k) on o.id = x.k"
    " when matched then update set total = 2",
    f"with a as (update orders set total = 1 where id = 4 and exists ({_kept(0)})),"
    f" b as (update orders set total = 1 where id = 5 and exists ({_kept(1)})) select 1",
]


@pytest.mark.parametrize("sql", STORED_BITS)
def test_rows_stored_as_questions_at_several_levels_say_are_held(sql: str) -> None:
    assert any("at several levels" in w for w in analyze(sql, COV).pii_writes), sql


def test_rows_stored_as_one_question_says_are_not_held() -> None:
    """A bit per row, as reading them would say (docs/security.md, "Not yet covered")."""
    for sql in (
        "insert into notes (id) select id from customers where email like '%@gmail.com'",
        f"insert into notes (id) {_kept(0)}; insert into notes (id) {_kept(1)}",
        f"update orders set total = 1 where id = 3 and exists ({_kept(0)})",
        "delete from orders where customer_id in"
        " (select id from customers where email like '%@test.com')",
    ):
        assert analyze(sql, COV).pii_writes == [], sql
