"""Values of the types real drivers read in the binary format, and protocol sequences
they (or an agent at the wire) send, through the real gate over the demo dataset:
every byte the client receives is compared with the raw values read straight from
the server.

SQL cursors and protocol portals share one namespace, and so do SQL prepared
statements and protocol ones: ``FETCH c`` runs whatever portal is called ``c`` now,
``EXECUTE p`` whatever statement is called ``p``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import asyncpg
import psycopg
import pytest

from dbgate.wire import messages as m
from tests.integration.pii.conftest import Demo
from tests.integration.rawclient import RawClient

PII = "select id, email, birth_date, full_name from customers where id < 6 order by id"
CLEAN = "select id, status, total, created_at from orders where id < 6 order by id"

#: PII-derived values of many types, read in binary (asyncpg, psycopg binary cursors)
#: and text: none may reach the client raw (ranges, geometry and ``bit`` decode with
#: errors in some drivers: docs/pii.md, "Every path out").
TYPED = [
    "select row(c.email, c.id) from customers c order by id limit 5",
    "select c from customers c order by id limit 5",
    "select (c).* from (select c from customers c order by id limit 5) s",
    "select array[c] from customers c order by id limit 3",
    "select daterange(birth_date, birth_date + 1) from customers order by id limit 5",
    "select tstzrange(birth_date::timestamptz, birth_date::timestamptz + interval '1 day')"
    " from customers order by id limit 5",
    "select datemultirange(daterange(birth_date, birth_date + 1)) from customers"
    " order by id limit 5",
    "select to_tsvector('simple', email), email::tsvector, plainto_tsquery('simple', full_name)"
    " from customers order by id limit 5",
    "select convert_to(email, 'UTF8'), decode(encode(convert_to(email, 'UTF8'), 'hex'), 'hex')"
    " from customers order by id limit 5",
    'select length(ssn)::money, email::"char", email::name, email::bpchar(40), age(birth_date)'
    " from customers order by id limit 5",
    "select point(length(email), ascii(email)), ('x' || md5(email))::bit(128)"
    " from customers order by id limit 5",
    "select to_char(birth_date, 'Day DD Month YYYY'), format('%I', email), quote_literal(email),"
    " quote_ident(full_name), quote_nullable(phone) from customers order by id limit 5",
    "select regexp_match(email, '(.*)@(.*)'), regexp_split_to_array(email, '@')"
    " from customers order by id limit 5",
    "select string_to_table(email, '@') from customers where id < 4",
    "select unnest(string_to_array(email, '@')) from customers where id < 4",
    "select jsonb_path_query(to_jsonb(c), '$.email') from customers c order by id limit 5",
    "select encode(convert_to(email, 'UTF8'), 'base64'), md5(email),"
    " sha256(convert_to(email, 'UTF8')), to_hex(hashtext(email)) from customers order by id limit 5",
    "select array[array[email, phone], array[ssn, address]], array[[birth_date]]"
    " from customers order by id limit 5",
    "select row(daterange(birth_date, birth_date + 1), convert_to(email, 'UTF8'))"
    " from customers order by id limit 5",
    "select int4range(ascii(email), ascii(email) + 1) from customers order by id limit 5",
    "select (birth_date::timestamp, email)::record, array[email::name],"
    " extract(year from birth_date), birth_date - date '1900-01-01'"
    " from customers order by id limit 5",
]


def _leaves(v: Any) -> list[str]:
    """Every scalar a driver decoded, as text (a date as ISO, bytes as Latin-1)."""
    if isinstance(v, (asyncpg.Record, tuple, list)):
        return [x for e in v for x in _leaves(e)]
    if isinstance(v, asyncpg.Range):
        return _leaves(v.lower) + _leaves(v.upper)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return [bytes(v).decode("latin1")]
    return [str(v)]


def _raw_in(data: bytes, demo: Demo) -> list[bytes]:
    return sorted(v for v in demo.values if v in data)[:3]


async def _asyncpg_bytes(dsn: str, sql: str) -> bytes:
    conn = await asyncpg.connect(dsn, ssl=False)
    try:
        rows = await conn.fetch(sql)
    except (asyncpg.PostgresError, AssertionError, BufferError, ValueError) as e:
        return str(e).encode()  # a replacement a driver cannot decode: no value either
    finally:
        await conn.close()
    return "\n".join(_leaves(rows)).encode()


def _psycopg_bytes(dsn: str, sql: str, binary: bool) -> bytes:
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor(binary=binary) as cur:
        try:
            cur.execute(sql)  # type: ignore[arg-type]
        except psycopg.Error as e:
            return str(e).encode()
        res = cur.pgresult
        assert res is not None
        data = b"".join(
            res.get_value(i, j) or b"" for i in range(res.ntuples) for j in range(res.nfields)
        )
        with contextlib.suppress(psycopg.DataError):  # the bytes above are what it got
            data += "\n".join(_leaves(cur.fetchall())).encode()
        return data


@pytest.mark.parametrize("sql", TYPED)
async def test_typed_values_reach_no_driver_raw(dsn: str, pii_demo: Demo, sql: str) -> None:
    got = await _asyncpg_bytes(dsn, sql)
    for binary in (True, False):
        got += _psycopg_bytes(dsn, sql, binary)
    assert got
    assert not _raw_in(got, pii_demo), (sql, _raw_in(got, pii_demo))


async def _wire(dsn: str, *messages: bytes) -> tuple[bytes, list[Any]]:
    """Send ``messages`` as they are; every byte received until the last ReadyForQuery."""
    ends = sum(
        1 for msg in messages if msg[:1] in (b"S", b"Q")
    )  # each Sync and Query is answered with one ReadyForQuery
    client = await RawClient.from_dsn(dsn)
    try:
        client.send(*messages)
        got: list[Any] = []
        for _ in range(ends):
            got += await client.until_ready()
        return bytes(client.received), got
    finally:
        client.writer.close()


def _q(sql: str) -> bytes:
    return m.Query(sql).encode()


def _rows(got: list[Any]) -> list[Any]:
    return [msg for msg in got if type(msg).__name__ == "DataRow"]


SHARED_NAMES = {
    # a clean SQL cursor closed, a protocol portal of a PII query bound under its name
    "cursor_then_portal": [
        _q("begin"),
        _q(f"declare c1 cursor for {CLEAN}"),
        _q("fetch all from c1"),
        _q("close c1"),
        m.Parse("", PII).encode(),
        m.Bind("c1", "").encode(),
        m.SYNC,
        _q("fetch all from c1"),
        _q("commit"),
    ],
    # the SQL cursor closed by the protocol's Close of the portal
    "cursor_closed_by_close_message": [
        _q("begin"),
        _q(f"declare c2 cursor for {CLEAN}"),
        m.Close("P", "c2").encode(),
        m.Parse("", PII).encode(),
        m.Bind("c2", "").encode(),
        m.SYNC,
        _q("fetch all from c2"),
        _q("commit"),
    ],
    # a portal bound, read, closed; the name declared clean and closed; bound again
    "portal_cursor_portal": [
        _q("begin"),
        m.Parse("", PII).encode(),
        m.Bind("c3", "").encode(),
        m.Execute("c3", 1).encode(),
        m.SYNC,
        _q("close c3"),
        _q(f"declare c3 cursor for {CLEAN}"),
        _q("close c3"),
        m.Parse("", PII).encode(),
        m.Bind("c3", "").encode(),
        m.SYNC,
        _q("fetch all from c3"),
        _q("commit"),
    ],
    # a clean SQL PREPARE dropped by the protocol's Close, parsed again over PII
    "prepare_then_parse": [
        _q(f"prepare p1 as {CLEAN}"),
        _q("execute p1"),
        m.Close("S", "p1").encode(),
        m.Parse("p1", PII).encode(),
        m.SYNC,
        _q("execute p1"),
    ],
}


@pytest.mark.parametrize("name", list(SHARED_NAMES))
async def test_a_name_the_protocol_reused_is_not_read_as_the_sql_one(
    dsn: str, pii_demo: Demo, name: str
) -> None:
    """A FETCH or EXECUTE runs whatever the server holds under its name now: a portal
    or statement the client made through the extended protocol after an SQL cursor or
    prepared statement of that name was closed. Read as the clean SQL one, its rows
    (the customers' e-mails, names) came back raw."""
    data, got = await _wire(dsn, *SHARED_NAMES[name])
    assert len(_rows(got)) >= 5, got  # the PII rows were returned ...
    assert not _raw_in(data, pii_demo), _raw_in(data, pii_demo)  # ... tokenized


async def test_an_sql_cursor_of_a_name_never_bound_keeps_its_clean_columns(
    dsn: str, pii_demo: Demo
) -> None:
    """An SQL cursor whose name no Bind used is read as declared: its clean columns
    come back as they are."""
    _, got = await _wire(
        dsn,
        _q("begin"),
        _q(f"declare c9 cursor for {CLEAN}"),
        _q("fetch all from c9"),
        _q("commit"),
    )
    rows = _rows(got)
    assert rows and all(not r.columns[1].startswith(b"tok_") for r in rows), rows


RANGES = (
    "select daterange(birth_date, birth_date + 1) as d, int4range(ascii(email), null) as i,"
    " datemultirange(daterange(birth_date, birth_date + 1)) as m,"
    " case when ascii(email) > 100 then 'empty'::int4range else int4range(1, 2) end as e"
    " from customers order by id limit 5"
)


async def test_ranges_of_pii_decode_in_the_drivers(dsn: str, pii_demo: Demo) -> None:
    """A range built from PII reached the drivers as a token's bytes, which asyncpg
    and psycopg failed to decode (binary and text); now a range of the same type, of
    one shape: an empty one (a bit of the e-mail here) looks like any other."""
    conn = await asyncpg.connect(dsn, ssl=False)
    try:
        rows = await conn.fetch(RANGES)
    finally:
        await conn.close()
    assert len(rows) == 5
    assert all(not r[k].isempty and r[k].lower is not None for r in rows for k in ("d", "i", "e"))
    assert all(len(r["m"]) == 1 for r in rows)
    for binary in (True, False):
        with psycopg.connect(dsn) as pconn, pconn.cursor(binary=binary) as cur:
            cur.execute(RANGES)  # type: ignore[arg-type]
            got = cur.fetchall()
        assert len(got) == 5 and all(not r[3].isempty for r in got)
    assert not _raw_in("\n".join(_leaves(rows)).encode(), pii_demo)


CHOSEN = (
    "select c2.id from customers c join customers c2"
    " on c2.id = ascii(substr(c.email, 1, 1)) where c.id = 1"
)


@pytest.mark.parametrize(
    "messages",
    [
        [
            _q("begin"),
            m.Parse("", CHOSEN).encode(),
            m.Bind("chosen", "").encode(),
            m.SYNC,
            _q("fetch all from chosen"),
            _q("commit"),
        ],
        [m.Parse("chosen", CHOSEN).encode(), m.SYNC, _q("execute chosen")],
    ],
    ids=["fetch", "execute"],
)
async def test_rows_a_query_dbgate_did_not_see_chose_are_not_stored_values(
    dsn: str, pii_demo: Demo, messages: list[bytes]
) -> None:
    """A FETCH or EXECUTE dbgate cannot follow is unknown, but a column its
    RowDescription names as stored (``customers.id``) was taken as the stored value:
    ``c2.id`` of the customer whose id is the code of customer 1's first character
    came back as that code (109 for an ``m``), a character per statement."""
    direct = await asyncpg.connect(pii_demo.dsn)
    try:
        code = await direct.fetchval(CHOSEN)
    finally:
        await direct.close()
    _, got = await _wire(dsn, *messages)
    (row,) = _rows(got)
    assert row.columns[0] != str(code).encode(), row
