"""Arrays of anonymous records (and records holding arrays) in the binary format: the
replacement keeps the declared type's layout, so asyncpg and psycopg 3 binary cursors
decode it, and no raw value reaches them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.integration.pii.conftest import DBNAME, Demo
from tests.integration.pii.relay import PiiTestRelay, running_relay

QUERIES = [
    "select array[row(email, birth_date)] as v from customers order by id limit 5",
    "select array[row(email, birth_date), row(phone, birth_date)] as v from customers"
    " order by id limit 5",
    "select row(array[email, phone], birth_date) as v from customers order by id limit 5",
    "select array[row(array[row(email, id)], birth_date)] as v from customers order by id limit 5",
    "select row(id, row(email, array[phone])) as v from customers order by id limit 5",
    "select array(select row(email, birth_date) from customers c2 where c2.id <= c.id)"
    " as v from customers c order by id limit 5",
    "select array(select row(email) from customers where false) as v",
    "select array[null::record, row(email, 1)] as v from customers order by id limit 3",
]


@pytest.fixture(scope="module")
def relay(pg_server: Any, pii_demo: Demo) -> Iterator[PiiTestRelay]:
    with running_relay(pii_demo.room, (pg_server.host, pg_server.port)) as r:
        yield r


def _no_raw(data: bytes, demo: Demo) -> None:
    hits = [v for v in demo.values | demo.dates if v in data]
    assert not hits, hits[:3]


@pytest.mark.parametrize("query", QUERIES)
async def test_asyncpg_decodes_records_in_arrays(
    relay: PiiTestRelay, pg_server: Any, pii_demo: Demo, query: str
) -> None:
    conn = await asyncpg.connect(relay.dsn(pg_server.user, pg_server.password, DBNAME), ssl=False)
    try:
        rows = await conn.fetch(query)
    finally:
        await conn.close()
    direct = await asyncpg.connect(pii_demo.dsn)
    try:
        raw = await direct.fetch(query)  # the same query decodes without dbgate
    finally:
        await direct.close()
    assert rows and len(rows) == len(raw)
    if query == QUERIES[0]:  # one record whose one text field is the whole value's token
        for row in rows:
            ((token,),) = row["v"]
            assert token.startswith("tok_")
    _no_raw(repr([tuple(r) for r in rows]).encode(), pii_demo)


@pytest.mark.parametrize("query", QUERIES)
def test_psycopg_binary_decodes_records_in_arrays(
    relay: PiiTestRelay, pg_server: Any, pii_demo: Demo, query: str
) -> None:
    with psycopg.connect(relay.dsn(pg_server.user, pg_server.password, DBNAME)) as conn:
        for binary in (True, False):
            with conn.cursor(binary=binary) as cur:
                cur.execute(query)  # type: ignore[arg-type]
                rows = cur.fetchall()
                assert cur.pgresult is not None
                data = b"".join(
                    cur.pgresult.get_value(i, j) or b""
                    for i in range(cur.pgresult.ntuples)
                    for j in range(cur.pgresult.nfields)
                )
            assert rows
            _no_raw(data + repr(rows).encode(), pii_demo)


#: Records whose width the value chooses: the first character of the e-mail.
WIDTH_BY_VALUE = (
    "select case ascii(substr(email, 1, 1)) % 3 when 0 then row(1) when 1 then row(1, 1)"
    " else row(1, 1, 1) end as v from customers order by id limit 30"
)


async def test_a_records_width_does_not_spell_the_value(
    relay: PiiTestRelay, pg_server: Any, pii_demo: Demo
) -> None:
    """``CASE … THEN row(1) … THEN row(1, 1)`` gives records as wide as a character
    code says; each reaches the client as one text field, the whole value's token, in
    binary (asyncpg) and in text (psycopg)."""
    direct = await asyncpg.connect(pii_demo.dsn)
    try:
        widths = {len(r["v"]) for r in await direct.fetch(WIDTH_BY_VALUE)}
    finally:
        await direct.close()
    assert widths == {1, 2, 3}  # the query does spell it without dbgate
    conn = await asyncpg.connect(relay.dsn(pg_server.user, pg_server.password, DBNAME), ssl=False)
    try:
        rows = await conn.fetch(WIDTH_BY_VALUE)
    finally:
        await conn.close()
    assert [len(r["v"]) for r in rows] == [1] * 30
    assert all(r["v"][0].startswith("tok_") for r in rows)
    with psycopg.connect(relay.dsn(pg_server.user, pg_server.password, DBNAME)) as text_conn:
        texts = [v for (v,) in text_conn.execute(WIDTH_BY_VALUE).fetchall()]
    assert len(texts) == 30
    assert all(len(v) == 1 and v[0].startswith("tok_") for v in texts)
