"""Orders chosen by PII, read through clean columns, on the real server (demo dataset).

An agent that may not write reads which clean value comes first (or where it ranks)
when rows are ordered by a bit of each row's own e-mail: ``rank() OVER (ORDER BY
ascii(substr(email, i, 1)) & b)`` is 1 exactly when the bit is 0 (and some row has
it), and ``(array_agg(id ORDER BY ... DESC, id <> 1))[1]`` is 1 exactly when customer
1's bit is 1. Hundreds of them side by side in one select list spell a whole e-mail in
one statement that returns one row. Unit-level: tests/unit/pii/test_lineage_order.py.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from tests.integration.pii.conftest import Demo
from tests.integration.pii.test_hunt_lineage import _agent

BITS = range(7)


async def _email(pii_demo: Demo) -> str:
    conn = await asyncpg.connect(pii_demo.dsn)
    try:
        return str(await conn.fetchval("select email from customers where id = 1"))
    finally:
        await conn.close()


def _key(i: int, b: int) -> str:
    return f"ascii(substr(email, {i}, 1)) & {1 << b}"


def _decode(pairs: list[tuple[bool, bool]], length: int) -> str:
    """Each bit from two answers: (says 1, says 0). When neither answers, every row has
    the same bit (the agent cannot tell which): e-mail characters are mostly lower-case
    letters and digits, whose bits 5 and 6 are what an agent would guess."""
    chars = []
    for i in range(length):
        code = 0
        for b in BITS:
            one, zero = pairs[i * len(BITS) + b]
            if one or (not zero and b in (5, 6)):
                code |= 1 << b
        chars.append(chr(code))
    return "".join(chars)


def _answers(row: tuple[bytes | None, ...], one: Any, zero: Any) -> list[tuple[bool, bool]]:
    return [(one(row[k]), zero(row[k + 1])) for k in range(0, len(row), 2)]


def _first_spells(row: tuple[bytes | None, ...], n: int) -> str:
    """The ``n`` characters a row of (descending, ascending) pairs spells, each answer
    "customer 1 came first"; both first means every row has the same bit, and the pair
    then says nothing."""
    pairs = _answers(row, lambda v: v == b"1", lambda v: v == b"1")
    return _decode([(o and not z, z and not o) for o, z in pairs], n)


async def test_ranks_by_a_bit_of_the_rows_own_email_spell_it(
    pg_server: Any, pii_demo: Demo
) -> None:
    """Windows ordered by a PII-derived key: each rank says one bit of every row's
    e-mail (rank > 1 under ASC: the bit is 1; under DESC: it is 0)."""
    email = await _email(pii_demo)
    cols = ", ".join(
        f"rank() over (order by {_key(i, b)}), rank() over (order by {_key(i, b)} desc)"
        for i in range(1, len(email) + 1)
        for b in BITS
    )
    # windows are computed before the LIMIT: every row is ranked, one is returned
    sql = f"select id, {cols} from customers order by id limit 1"
    res = await _agent(pg_server, pii_demo, sql)
    (sent,) = res.rows_before
    (got,) = res.rows_after
    ranked = _answers(sent[1:], lambda v: v != b"1", lambda v: v != b"1")
    assert _decode(ranked, len(email)) == email  # what the server sent spells it
    assert res.replaced == [set(range(1, len(sent)))]
    assert got[0] == b"1"  # the id, chosen by nothing but itself, stays clean
    after = _answers(got[1:], lambda v: v != b"1", lambda v: v != b"1")
    assert _decode(after, len(email)) != email


async def test_ordered_aggregates_by_a_bit_of_the_rows_own_email_spell_it(
    pg_server: Any, pii_demo: Demo
) -> None:
    """An aggregate's own ORDER BY by a PII-derived key: which id comes first says one
    bit of customer 1's e-mail, hundreds of them in one returned row."""
    email = await _email(pii_demo)
    cols = ", ".join(
        f"(array_agg(id order by {_key(i, b)} desc, id <> 1))[1],"
        f" (array_agg(id order by {_key(i, b)}, id <> 1))[1]"
        for i in range(1, len(email) + 1)
        for b in BITS
    )
    res = await _agent(pg_server, pii_demo, f"select {cols} from customers")
    (sent,) = res.rows_before
    (got,) = res.rows_after
    assert _first_spells(sent, len(email)) == email  # what the server sent spells it
    assert res.replaced == [set(range(len(sent)))]
    assert _first_spells(got, len(email)) != email


async def test_derived_tables_cut_in_an_order_by_a_bit_of_the_rows_own_email_spell_it(
    pg_server: Any, pii_demo: Demo
) -> None:
    """A sub-select's ORDER BY ... LIMIT 1 by a PII-derived key returns one row whose
    id says one bit of customer 1's e-mail; cross-joined, many such sub-selects return
    one row holding them all (the first six characters here)."""
    email = (await _email(pii_demo))[:6]
    tables = ", ".join(
        f"(select id from customers order by {_key(i, b)}{d}, id <> 1 limit 1) t{i}_{b}{k}"
        for i in range(1, len(email) + 1)
        for b in BITS
        for k, d in enumerate((" desc", ""))
    )
    res = await _agent(pg_server, pii_demo, f"select * from {tables}")
    (sent,) = res.rows_before
    (got,) = res.rows_after
    assert _first_spells(sent, len(email)) == email  # what the server sent spells it
    assert res.replaced == [set(range(len(sent)))]
    assert _first_spells(got, len(email)) != email


async def test_ranks_by_bits_of_a_birth_date_spell_it(pg_server: Any, pii_demo: Demo) -> None:
    """The same windows over the days since 1900 of each birth date: sixteen pairs of
    ranks pin customer 1's birth date (up to bits no customer differs in)."""
    conn = await asyncpg.connect(pii_demo.dsn)
    try:
        days = [
            int(r[0])
            for r in await conn.fetch(
                "select birth_date - date '1900-01-01' from customers order by id"
            )
        ]
    finally:
        await conn.close()
    key = "(birth_date - date '1900-01-01') & {}"
    cols = ", ".join(
        f"rank() over (order by {key.format(1 << b)}), rank() over (order by {key.format(1 << b)} desc)"
        for b in range(16)
    )
    res = await _agent(pg_server, pii_demo, f"select id, {cols} from customers order by id limit 1")
    (sent,) = res.rows_before
    (got,) = res.rows_after
    mixed = [b for b in range(16) if len({d >> b & 1 for d in days}) == 2]
    assert len(mixed) >= 12

    def spelled(row: tuple[bytes | None, ...]) -> int:
        pairs = _answers(row[1:], lambda v: v != b"1", lambda v: v != b"1")
        return sum(1 << b for b in mixed if pairs[b][0])

    truth = sum(days[0] & (1 << b) for b in mixed)
    assert spelled(sent) == truth  # what the server sent spells it
    assert res.replaced == [set(range(1, len(sent)))]
    assert spelled(got) != truth
