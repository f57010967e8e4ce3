"""Aggregates over rows kept by a question of their own PII, on the real server.

``WHERE ascii(substr(email, i, 1)) & b <> 0`` keeps the rows whose bit is 1: one bit
per row, each returned row counted against the rows-per-window budget. An aggregate
at that level packs every kept row into one returned row: ``string_agg(id::text,
',')`` lists the ids whose bit is 1, so one statement per bit position reads that bit
of every customer's e-mail. The same route goes around the order rules: a sub-select
ordered by the e-mail, aggregated or numbered above it, lists the customers in the
e-mails' order in one row. Unit-level: tests/unit/pii/test_lineage_packing.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from tests.integration.pii.conftest import Demo
from tests.integration.pii.test_hunt_lineage import _agent

BITS = range(7)
CHARS = 2  # the first two characters of every e-mail


def _ids(value: bytes | None) -> set[int]:
    """Every integer a packed value lists (a list, an array, JSON, XML, ranges)."""
    return {int(n) for n in re.findall(rb"\d+", value or b"")}


def _from_json_keys(value: bytes | None) -> set[int]:
    try:
        return {int(k) for k in json.loads(value or b"{}")}
    except (ValueError, TypeError):
        return set()


def _ranges(value: bytes | None) -> set[int]:
    """``{[1,2),[5,8)}``: the integers the ranges hold."""
    out: set[int] = set()
    for lo, hi in re.findall(rb"\[(\d+),(\d+)\)", value or b""):
        out.update(range(int(lo), int(hi)))
    return out


def _powers(value: bytes | None) -> set[int]:
    """A sum of distinct powers of two: the exponents."""
    try:
        n = int((value or b"").split(b".")[0])
    except ValueError:
        return set()
    return {k for k in range(n.bit_length()) if n >> k & 1}


def _powers_from_1(value: bytes | None) -> set[int]:
    return {k + 1 for k in _powers(value)}


#: (a statement whose every row packs the ids whose bit ``{bit}`` is set, which rows of
#: its result to read, how to read the ids out of a value, ids it can say)
PACKED: list[tuple[str, Callable[[bytes | None], set[int]], int]] = [
    ("select string_agg(id::text, ',') from customers where {bit} <> 0", _ids, 400),
    ("select array_agg(id) from customers where {bit} <> 0", _ids, 400),
    ("select json_agg(id) from customers where {bit} <> 0", _ids, 400),
    ("select jsonb_agg(id) from customers where {bit} <> 0", _ids, 400),
    ("select json_object_agg(id, 0) from customers where {bit} <> 0", _from_json_keys, 400),
    ("select range_agg(int8range(id, id + 1)) from customers where {bit} <> 0", _ranges, 400),
    ("select sum(power(2::numeric, id)) from customers where {bit} <> 0", _powers, 400),
    (
        "select bit_or(1::bigint << (id - 1)::int) from customers where id <= 62 and {bit} <> 0",
        _powers_from_1,
        62,
    ),
    (
        "select sum(1::bigint << (id - 1)::int) from customers where id <= 62 and {bit} <> 0",
        _powers_from_1,
        62,
    ),
    # a sub-select or CTE kept so, aggregated above it
    (
        "select string_agg(id::text, ',') from (select id from customers where {bit} <> 0) s",
        _ids,
        400,
    ),
    (
        "with k as (select id from customers where {bit} <> 0)"
        " select string_agg(k.id::text, ',') from k",
        _ids,
        400,
    ),
    # joined to another row source on the question
    (
        "select string_agg(c.id::text, ',') from customers c join tags t"
        " on t.id = 1 and ascii(substr(c.email, {i}, 1)) & {b} <> 0",
        _ids,
        400,
    ),
    # a window over the kept rows, one row returned
    (
        "select string_agg(id::text, ',') over () from customers where {bit} <> 0 limit 1",
        _ids,
        400,
    ),
    # groups kept by HAVING's own FILTER, listed by a window over them
    (
        "select string_agg(id::text, ',') over () from customers group by id"
        " having count(*) filter (where {bit} <> 0) > 0 limit 1",
        _ids,
        400,
    ),
    # an aggregate of the outer level written inside a sub-select
    (
        "select (select string_agg(c.id::text, ',')) from customers c where {bit} <> 0",
        _ids,
        400,
    ),
    # the same question in HAVING-free GROUP BY: the group whose bit is 1 comes last
    (
        "select array_agg(id) from customers group by {bit} <> 0 order by {bit} <> 0",
        _ids,
        400,
    ),
    # the same groups named by their output's position or alias
    (
        "select {bit} <> 0 as k, array_agg(id) from customers group by 1 order by 1",
        _ids,
        400,
    ),
    (
        "select {bit} <> 0 as k, array_agg(id) from customers group by k order by k",
        _ids,
        400,
    ),
    # one bool_or per id, side by side, of a sub-select's computed columns
    (
        "select "
        + ", ".join(f"bool_or(k{k})" for k in range(1, 401))
        + " from (select "
        + ", ".join(f"id = {k} k{k}" for k in range(1, 401))
        + " from customers where {bit} <> 0) s",
        _ids,  # read below, column by column
        400,
    ),
    # one count per id, side by side, of the kept rows: a FILTER of clean columns
    (
        "select "
        + ", ".join(f"count(*) filter (where id = {k})" for k in range(1, 401))
        + " from customers where {bit} <> 0",
        _ids,  # read below, column by column
        400,
    ),
]


async def _emails(pii_demo: Demo) -> dict[int, str]:
    conn = await asyncpg.connect(pii_demo.dsn)
    try:
        return {int(r[0]): str(r[1]) for r in await conn.fetch("select id, email from customers")}
    finally:
        await conn.close()


def _spelled(bits: dict[tuple[int, int], set[int]], ids: list[int]) -> dict[int, str]:
    out = {}
    for k in ids:
        out[k] = "".join(
            chr(sum(1 << b for b in BITS if k in bits[(i, b)])) for i in range(1, CHARS + 1)
        )
    return out


def _read(sql: str, row_set: list[tuple[bytes | None, ...]], parse: Any, b: int) -> set[int]:
    if "filter (where id =" in sql or "bool_or(k" in sql:
        (row,) = row_set
        return {k + 1 for k, v in enumerate(row) if v in (b"1", b"t")}
    if "group by ascii" in sql or " as k, array_agg" in sql:
        row_set = [row[-1:] for row in row_set]  # the lists, not the group keys
        # two groups in the bit's order; one when every row has the same bit, which
        # the agent guesses as ``_decode`` does (e-mails are mostly lower-case)
        if len(row_set) == 2:
            return parse(row_set[-1][0])
        return parse(row_set[0][0]) if b in (5, 6) else set()
    return set().union(*(parse(row[0]) for row in row_set[:1]))


@pytest.mark.parametrize("form", range(len(PACKED)), ids=[f"pack{i}" for i in range(len(PACKED))])
async def test_an_aggregate_over_rows_kept_by_a_bit_of_their_email_spells_every_email(
    pg_server: Any, pii_demo: Demo, form: int
) -> None:
    """One statement per bit position reads that bit of every customer's e-mail from one
    returned row (the first two characters of every e-mail here, in fourteen)."""
    template, parse, n = PACKED[form]
    emails = await _emails(pii_demo)
    ids = [k for k in sorted(emails) if k <= n]
    sent: dict[tuple[int, int], set[int]] = {}
    got: dict[tuple[int, int], set[int]] = {}
    for i in range(1, CHARS + 1):
        for b in BITS:
            bit = f"ascii(substr(email, {i}, 1)) & {1 << b}"
            sql = template.format(bit=bit, i=i, b=1 << b)
            res = await _agent(pg_server, pii_demo, sql)
            assert len(res.rows_before) <= 2, sql  # one returned row (two groups)
            sent[(i, b)] = _read(sql, res.rows_before, parse, b)
            got[(i, b)] = _read(sql, res.rows_after, parse, b)
    truth = {k: emails[k][:CHARS] for k in ids}
    assert _spelled(sent, ids) == truth  # what the server sent spells them all
    after = _spelled(got, ids)
    assert sum(after[k] == truth[k] for k in ids) < len(ids) // 4


async def test_an_aggregate_over_a_sub_select_ordered_by_email_lists_its_order(
    pg_server: Any, pii_demo: Demo
) -> None:
    """``string_agg`` over ``(SELECT id ... ORDER BY email)``: the customers in the
    e-mails' order, in one row — what ``string_agg(... ORDER BY email)`` would say."""
    conn = await asyncpg.connect(pii_demo.dsn)
    try:
        order = [int(r[0]) for r in await conn.fetch("select id from customers order by email")]
    finally:
        await conn.close()
    for sql in (
        "select string_agg(id::text, ',') from (select id from customers order by email) s",
        "select array_agg(id) from (select id from customers order by email) s",
        "with s as (select id from customers order by email) select json_agg(id) from s",
        "select array(select id from customers order by email)",
        "select (select string_agg(id::text, ',') from (select id from customers"
        " order by email) s)",
    ):
        res = await _agent(pg_server, pii_demo, sql)
        ((sent,),) = res.rows_before
        ((got,),) = res.rows_after
        assert [int(n) for n in re.findall(rb"\d+", sent or b"")] == order, sql
        assert res.replaced == [{0}] and got != sent, sql
        assert [int(n) for n in re.findall(rb"\d+", got or b"")] != order, sql


async def test_row_numbers_over_a_sub_select_ordered_by_birth_date_rank_it(
    pg_server: Any, pii_demo: Demo
) -> None:
    """``row_number() OVER ()`` over ``(SELECT id ... ORDER BY birth_date)``: each
    customer's birth-date rank, what ``rank() OVER (ORDER BY birth_date)`` says."""
    conn = await asyncpg.connect(pii_demo.dsn)
    try:
        order = [
            int(r[0]) for r in await conn.fetch("select id from customers order by birth_date, id")
        ]
    finally:
        await conn.close()
    sql = (
        "select id, row_number() over () from (select id from customers order by birth_date, id) s"
    )
    res = await _agent(pg_server, pii_demo, sql)
    ranks = {int(i): int(r) for i, r in res.rows_before}
    assert sorted(ranks, key=ranks.__getitem__) == order  # what the server sent ranks them
    assert res.replaced == [{1}]  # the ranks, not the ids
    after = {int(row[0]): row[1] for row in res.rows_after}
    assert sum(after[k] == str(r).encode() for k, r in ranks.items()) < len(ranks) // 4


async def test_a_count_over_rows_the_text_multiplied_spells_a_bit_of_each_customer(
    pg_server: Any, pii_demo: Demo
) -> None:
    """Each kept customer repeated ``2^(id - 1)`` times: the count is the sum of those
    powers, the bit ``b`` of character ``i`` of twenty customers' e-mails in one number
    (``generate_series`` lateral, or a series met by ``g <= …``)."""
    emails = await _emails(pii_demo)
    bit = "ascii(substr(c.email, 1, 1)) & 2 <> 0"
    truth = {k for k in range(1, 21) if ord(emails[k][0]) & 2}
    for sql in (
        "select count(*) from customers c, generate_series(1, 1 << (c.id - 1)::int)"
        f" where c.id <= 20 and {bit}",
        "select count(*) from customers c join generate_series(1, 1048576) g"
        f" on g <= 1 << (c.id - 1)::int where c.id <= 20 and {bit}",
    ):
        res = await _agent(pg_server, pii_demo, sql)
        ((sent,),) = res.rows_before
        assert _powers_from_1(sent) == truth, sql  # what the server sent spells the bits
        ((got,),) = res.rows_after
        assert res.replaced == [{0}] and got != sent, sql


@pytest.mark.parametrize(
    "sql",
    [
        "select count(*), count(id), min(id), max(id) from customers"
        " where ascii(substr(email, 3, 1)) & 4 <> 0",
        "select max(id), count(id) from v_contacts where email_lc like 'a%'",
        "select status, count(*) from orders o join customers c on c.id = o.customer_id"
        " where c.email like '%@gmail.com' group by status order by status",
        "select count(email), sum(id), array_agg(id order by id) from customers where id < 5",
        "select count(*) from orders o, customers c where o.customer_id = c.id"
        " and ascii(substr(c.email, 3, 1)) & 4 <> 0",
    ],
    ids=["bounded", "view", "per-group", "own-argument", "fan-out"],
)
async def test_bounded_aggregates_stay_numbers(pg_server: Any, pii_demo: Demo, sql: str) -> None:
    """One bounded number per aggregate, or a row per group, comes back as it is."""
    res = await _agent(pg_server, pii_demo, sql)
    assert res.rows_after == res.rows_before
