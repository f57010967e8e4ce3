"""Every replacement decodes in the real drivers: asyncpg (binary), psycopg 3 (binary
and text cursors), psycopg2, pg8000 and psql, through a relay that applies the room.

The query returns PII-derived values of many types; each driver must decode every
row without an error, and no raw value may reach it. Direct (without the relay) the
same query shows the raw values, which proves the check can fail.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import asyncpg
import pg8000.native
import psycopg
import psycopg2
import pytest

from dbgate.embedded import pg_bin_dir
from tests.integration.pii.conftest import DBNAME, Demo
from tests.integration.pii.relay import PiiTestRelay, running_relay

QUERY = """
select id, email, birth_date, birth_date::timestamp as ts, birth_date::timestamptz as tstz,
       length(email)::numeric as num, md5(email)::uuid as u, ('10.0.0.' || length(email))::inet as ip,
       to_json(email) as j, to_jsonb(c) as jb, array[email, phone] as arr, array[birth_date] as darr,
       array[md5(email)::uuid] as uarr, length(phone)::int as i4, length(ssn)::float8 as f8,
       length(ssn)::int2 as i2, (birth_date - date '1900-01-01') * interval '1 day' as iv,
       birth_date = birth_date as b, ssn::bytea as by, c as rec, array[c] as recs,
       ('10.0.' || length(email) || '.0/24')::cidr as net, created_at,
       array[row(email, birth_date)] as arecs, row(array[phone], id) as rarr,
       daterange(birth_date, birth_date + 1) as dr, int4range(ascii(email), null) as ir,
       datemultirange(daterange(birth_date, birth_date + 1)) as dmr,
       array[tstzrange(birth_date::timestamptz, null)] as tsrs,
       ('x' || encode(convert_to(email, 'UTF8'), 'hex'))::bit varying as bits, ('x' || md5(email))::bit(128) as b128,
       point(ascii(email), length(email)) as pt, box(point(ascii(email), 1), point(2, 2)) as bx,
       circle(point(ascii(email), 1), 2) as ci, lseg(point(ascii(email), 1), point(2, 2)) as ls,
       polygon(box(point(ascii(email), 1), point(2, 2))) as pg, path(polygon(box(point(ascii(email), 1), point(2, 2)))) as pa,
       line(point(ascii(email), 1), point(2, 2)) as li, array[point(ascii(email), 1)] as pts,
       array[box(point(ascii(email), 1), point(2, 2))] as bxs
from customers c order by id limit 5
"""


def _no_raw(text: str, demo: Demo) -> None:
    raw = text.encode()
    hits = [v for v in demo.values if v in raw]
    assert not hits, hits[:3]


@pytest.fixture(scope="module")
def relay(pg_server: Any, pii_demo: Demo) -> Iterator[PiiTestRelay]:
    with running_relay(pii_demo.room, (pg_server.host, pg_server.port)) as r:
        yield r


def _dsn(relay: PiiTestRelay, pg_server: Any) -> str:
    return relay.dsn(pg_server.user, pg_server.password, DBNAME)


async def test_asyncpg_decodes_everything(
    relay: PiiTestRelay, pg_server: Any, pii_demo: Demo
) -> None:
    conn = await asyncpg.connect(_dsn(relay, pg_server), ssl=False)
    try:
        rows = await conn.fetch(QUERY)
        direct = await asyncpg.connect(pii_demo.dsn)
        try:
            raw = await direct.fetch(QUERY)
        finally:
            await direct.close()
    finally:
        await conn.close()
    assert len(rows) == 5
    for row, orig in zip(rows, raw, strict=True):
        assert row["id"] == orig["id"] and row["created_at"] == orig["created_at"]
        assert row["email"].startswith("tok_email_") and row["birth_date"] != orig["birth_date"]
        assert row["rec"]["email"].startswith("tok_") and row["rec"]["id"] != orig["rec"]["id"]
        for name in ("ts", "tstz", "num", "u", "ip", "i4", "f8", "i2", "iv", "net"):
            assert row[name] != orig[name], name
    _no_raw(repr([dict(r) for r in rows]), pii_demo)
    assert any(v in repr([dict(r) for r in raw]).encode() for v in pii_demo.values)


def test_psycopg3_binary_and_text(relay: PiiTestRelay, pg_server: Any, pii_demo: Demo) -> None:
    with psycopg.connect(_dsn(relay, pg_server)) as conn:
        for binary in (True, False):
            with conn.cursor(binary=binary) as cur:
                cur.execute(QUERY)  # type: ignore[arg-type]
                rows = cur.fetchall()
            assert len(rows) == 5
            assert all(str(r[1]).startswith("tok_email_") for r in rows)
            _no_raw(repr(rows), pii_demo)


def test_psycopg2(relay: PiiTestRelay, pg_server: Any, pii_demo: Demo) -> None:
    conn = psycopg2.connect(_dsn(relay, pg_server))
    try:
        with conn.cursor() as cur:
            cur.execute(QUERY)
            rows = cur.fetchall()
            cur.execute("select email, phone from customers where id = %s", (3,))
            ((email, phone),) = cur.fetchall()
    finally:
        conn.close()
    assert len(rows) == 5 and email.startswith("tok_email_") and phone.startswith("tok_phone_")
    _no_raw(repr(rows), pii_demo)


def test_pg8000(relay: PiiTestRelay, pg_server: Any, pii_demo: Demo) -> None:
    conn = pg8000.native.Connection(
        pg_server.user,
        host="127.0.0.1",
        port=relay.port,
        database=DBNAME,
        password=pg_server.password,
    )
    try:
        rows = conn.run(QUERY)
        one = conn.run("select email, birth_date from customers where id = :id", id=2)
    finally:
        conn.close()
    assert len(rows) == 5 and one[0][0].startswith("tok_email_")
    _no_raw(repr(rows) + repr(one), pii_demo)


def test_psql(relay: PiiTestRelay, pg_server: Any, pii_demo: Demo) -> None:
    env = {"PGPASSWORD": pg_server.password, "PGSSLMODE": "disable", "PATH": "/usr/bin:/bin"}
    args = [
        str(pg_bin_dir() / "psql"),
        "-X",
        "-h",
        "127.0.0.1",
        "-p",
        str(relay.port),
        "-U",
        pg_server.user,
        "-d",
        DBNAME,
        "-v",
        "ON_ERROR_STOP=1",
    ]
    out = subprocess.run(
        [*args, "-c", QUERY], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "tok_email_" in out.stdout and "(5 rows)" in out.stdout
    _no_raw(out.stdout, pii_demo)
    copy = subprocess.run(
        [*args, "-c", r"\copy customers to stdout with csv"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert copy.returncode == 0, copy.stderr
    assert copy.stdout.count("\n") >= 400
    _no_raw(copy.stdout, pii_demo)
