"""Where a security tester had a recursive CTE count a value out, and a built-in keep
state for rows PII chose or kept, on the real server (demo dataset).

* ``CYCLE s SET c USING p`` stops the recursion where ``s`` repeats: over ``s = n %
  ascii(substr(email, i, 1))`` the CTE has as many rows as the code, and a select list
  of one such count per character spelled customer 1's e-mail in one returned row. A
  recursive ``UNION`` does the same when its seed is PII-derived too, and so does a
  ``UNION ALL`` whose step cuts a value shorter until it is empty (``WHERE e <> ''``).
  ``SEARCH``'s sequence column carries the PII of the columns it is made of.
* ``nextval`` in a lateral sub-select beside ``generate_series(1, ascii(email))``
  advanced a sequence by the code, and ``set_config`` called once per customer kept by a
  bit of their e-mail left the list of those customers in a setting: read back by a
  later, clean statement of the session. Both are held now.

Unit-level: tests/unit/pii/test_lineage_recursion.py.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from tests.integration.pii.conftest import DBNAME, Demo
from tests.integration.pii.harness import apply_plan, connect, leaked, run_simple
from tests.integration.pii.test_hunt_shapes import _agent, _sent


async def _email(pii_demo: Demo) -> str:
    conn = await asyncpg.connect(pii_demo.dsn)
    try:
        return str(await conn.fetchval("select email from customers where id = 1"))
    finally:
        await conn.close()


def _spelled(rows: list[tuple[bytes | None, ...]]) -> str:
    """The characters a row of codes spells (what a client would decode)."""
    (row,) = rows
    return "".join(chr(int(v)) if v and v.isdigit() and int(v) < 0x110000 else "?" for v in row)


def _counts(email_len: int, cte: str) -> str:
    return "select " + ", ".join(f"({cte.format(i=i)})" for i in range(1, email_len + 1))


CYCLE = (
    "with recursive r(n, s) as (select 1, 0 union all select n + 1,"
    " (n + 1) % (select ascii(substr(email, {i}, 1)) from customers where id = 1)"
    " from r where n < 300) cycle s set c using p select count(*) from r"
)
UNION = (
    "with recursive t(s) as (select 0 * ascii(email) from customers where id = 1"
    " union select (s + 1) % ascii(substr(email, {i}, 1)) from t, customers where id = 1)"
    " select count(*) from t"
)

# a value cut shorter at each step, until it is empty: the step's WHERE asks the
# value, not a column beside it, and the CTE's lineage did not change
CHAIN = (
    "with recursive t(e) as (select repeat('x', ascii(substr(email, {i}, 1)))"
    " from customers where id = 1 union all select substr(e, 2) from t where e <> '')"
    " select count(*) - 1 from t"
)


@pytest.mark.parametrize("cte", [CYCLE, UNION, CHAIN], ids=["cycle", "union", "chain"])
async def test_a_recursion_cut_by_pii_does_not_count_the_email_out(
    pg_server: Any, pii_demo: Demo, cte: str
) -> None:
    email = await _email(pii_demo)
    res = await _agent(pg_server, pii_demo, _counts(len(email), cte))
    assert _spelled(res.rows_before) == email  # what the server sent
    assert _spelled(res.rows_after) != email
    assert res.replaced == [set(range(len(email)))]


async def test_a_nested_order_by_a_search_sequence_of_pii_is_tokenized(
    pg_server: Any, pii_demo: Demo
) -> None:
    """``SEARCH BREADTH FIRST BY s SET o``: ``o`` is ``(depth, s)``; the third row in
    its order is 11 exactly where the bit is 0."""
    sql = (
        "with recursive r(k, s) as (select g, g from generate_series(1, 2) g union all"
        " select k + 10, case when k = 1 then 2 * (ascii(substr((select email from customers"
        " where id = 1), 1, 1)) & 1) else 1 end from r where k < 3)"
        " search breadth first by s set o select (select k from r order by o limit 1 offset 2)"
    )
    res = await _agent(pg_server, pii_demo, sql)
    assert res.replaced == [{0}]


async def test_recursive_ctes_over_clean_values_stay_readable(
    pg_server: Any, pii_demo: Demo
) -> None:
    for sql in (
        "with recursive r(n) as (select 1 union all select n + 1 from r where n < 5)"
        " search depth first by n set o cycle n set c using p select n, o, c, p from r",
        "with recursive r(n) as (select 1 union select n % 3 + 1 from r) select count(*) from r",
        # a chain of stored e-mails: the depth stays a number, the e-mails are tokenized
        "with recursive t(email, d) as (select email, 0 from customers where id = 1"
        " union select c.email, t.d + 1 from t join customers c on c.id = t.d + 2"
        " where t.d < 3) select d, email from t",
    ):
        res = await _agent(pg_server, pii_demo, sql)
        for before, after in zip(res.rows_before, res.rows_after, strict=True):
            assert before[0] == after[0], sql
        assert not leaked(res.output_bytes, pii_demo.values), sql
    assert res.replaced == [{1}]
    assert leaked(_sent(res), pii_demo.values)


async def _session(pg_server: Any, pii_demo: Demo, statements: list[str]) -> list[bytes]:
    """Run ``statements`` as the agent on one connection: per statement, what the
    agent received (the reasons, for one held for approval, which is not sent)."""
    session = pii_demo.room.session("agent")
    client = await connect(pg_server, DBNAME)
    out: list[bytes] = []
    try:
        for sql in statements:
            plan = session.plan(sql)
            if plan.hold_reasons:
                out.append("; ".join(plan.hold_reasons).encode())
                continue
            res = apply_plan(plan, await run_simple(client, session.detokenize_sql(plan)))
            out.append(b"|".join(b",".join(v or b"" for v in row) for row in res.rows_after))
    finally:
        await client.close()
    return out


async def test_a_sequence_advanced_by_a_lateral_sub_select_sized_by_pii_is_held(
    pg_server: Any, pii_demo: Demo
) -> None:
    email = await _email(pii_demo)
    admin = await asyncpg.connect(pii_demo.dsn)
    try:
        await admin.execute("create sequence if not exists hunt_seq")
        got = await _session(
            pg_server,
            pii_demo,
            [
                "select setval('hunt_seq', 1)",
                "select max(g) from customers c, generate_series(1, ascii(c.email)) g,"
                " lateral (select nextval('hunt_seq') where g > 0) x where c.id = 1",
                "select nextval('hunt_seq') - 2",
            ],
        )
    finally:
        await admin.execute("drop sequence if exists hunt_seq")
        await admin.close()
    assert b"nextval() keeps a value derived from PII" in got[1]
    assert got[2] != str(ord(email[0])).encode()


async def test_a_setting_appended_to_per_row_kept_by_pii_is_held(
    pg_server: Any, pii_demo: Demo
) -> None:
    admin = await asyncpg.connect(pii_demo.dsn)
    try:
        kept = await admin.fetchval(
            "select string_agg(id::text || ',', '' order by id) from customers"
            " where ascii(substr(email, 3, 1)) & 4 <> 0"
        )
    finally:
        await admin.close()
    got = await _session(
        pg_server,
        pii_demo,
        [
            "select count(set_config('hunt.ids', coalesce(current_setting('hunt.ids', true), '')"
            " || id::text || ',', false)) from (select id from customers order by id) s"
            " where id in (select id from customers where ascii(substr(email, 3, 1)) & 4 <> 0)",
            "select count(set_config('hunt.ids', coalesce(current_setting('hunt.ids', true), '')"
            " || id::text || ',', false)) from customers"
            " where ascii(substr(email, 3, 1)) & 4 <> 0",
            "select current_setting('hunt.ids', true)",
        ],
    )
    assert kept and kept.encode() not in got[2]
    assert b"set_config() keeps a value derived from PII" in got[0]
    assert b"set_config() keeps a value derived from PII" in got[1]


FORWARD = [
    # under WITH RECURSIVE a CTE reads one listed after it, not the table ``tags``
    "with recursive a(x) as (select lower(label) from tags),"
    " tags(id, label) as (select id, email from customers) select x from a",
    "with recursive a(x) as (select label || '' from notes n join tags using (id)),"
    " tags(id, label) as (select id, full_name from customers) select x from a",
]


@pytest.mark.parametrize("sql", FORWARD)
async def test_a_cte_read_before_it_is_listed_is_not_the_table_of_its_name(
    pg_server: Any, pii_demo: Demo, sql: str
) -> None:
    res = await _agent(pg_server, pii_demo, sql)
    assert leaked(_sent(res), pii_demo.values)  # the server sent them raw
    assert res.replaced == [{0}]
