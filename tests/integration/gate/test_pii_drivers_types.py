"""PII of types other than text, through a whole dbgate and real drivers: binary and
text formats, server-side cursors, row-limited Execute, COPY, executemany."""

from __future__ import annotations

import datetime
from typing import Any

import asyncpg
import pytest

from tests.integration.holds.harness import HoldsEnv, admin_execute, admin_query

PEOPLE = """
CREATE TABLE people (
    id int PRIMARY KEY,
    email text NOT NULL,
    birth_date date,
    date_of_birth timestamptz,
    tax_id numeric,
    ip inet,
    passport uuid,
    address jsonb,
    emails text[],
    dob daterange,
    ssn bytea,
    note text
)
"""

ROWS = [
    (
        1,
        "wilhelmina.zorn@example.org",
        "1961-03-14",
        "1961-03-14 05:06:07+00",
        "123456789.25",
        "192.168.77.12",
        "6f1c3a34-6b53-4f4e-9d5c-2f0a8e4b1d77",
        '{"street": "12 Quarry Lane"}',
        "{wilhelmina.zorn@example.org,w.zorn@example.net}",
        "[1961-03-14,1961-03-15)",
        "\\x3132332d34352d36373839",
        "n1",
    ),
    (
        2,
        "bartholomew.quist@example.com",
        "1977-11-02",
        "1977-11-02 22:01:00+00",
        "987654321.5",
        "10.99.1.3",
        "0b5e2d8e-3a2c-4a9f-8a67-7d3f4d5e6f70",
        '{"street": "7 Larch Row"}',
        "{bartholomew.quist@example.com}",
        "[1977-11-02,1977-11-03)",
        "\\x3938372d36352d34333231",
        "n2",
    ),
]


@pytest.fixture(scope="module")
def people(env: HoldsEnv) -> list[dict[str, Any]]:
    admin_execute(env.admin_dsn, "DROP TABLE IF EXISTS people", PEOPLE)
    for r in ROWS:
        admin_execute(
            env.admin_dsn,
            "INSERT INTO people VALUES ("
            + ", ".join("'" + str(v).replace("'", "''") + "'" for v in r)
            + ")",
        )
    admin_execute(env.admin_dsn, "GRANT SELECT, INSERT, UPDATE ON people TO PUBLIC")
    return []


SECRETS = [
    "wilhelmina",
    "zorn@",
    "bartholomew",
    "quist@",
    "1961-03-14",
    "1977-11-02",
    "123456789",
    "987654321",
    "192.168.77.12",
    "10.99.1.3",
    "6f1c3a34",
    "0b5e2d8e",
    "Quarry",
    "Larch",
    "123-45-6789",
    "987-65-4321",
    "3132332d",
    "3938372d",
]


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s.lower() in text.lower()]


PII_AT = (1, 2, 3, 4, 5, 6, 7, 8, 9, 11)  # every column but id and note


def same_values(gate_rows: list[Any], direct_rows: list[Any]) -> list[str]:
    """Values the gate passed as the server sent them (a PII column must differ; id and
    note must not)."""
    bad = []
    assert len(gate_rows) == len(direct_rows)
    for g, d in zip(gate_rows, direct_rows, strict=True):
        g, d = list(g), list(d)
        assert g[0] == d[0] and g[10] == d[10], (g, d)
        for i in PII_AT:
            if g[i] == d[i] or (isinstance(d[i], list) and any(x in g[i] for x in d[i])):
                bad.append(f"column {i}: {g[i]!r}")
    return bad


Q = "SELECT id, email, birth_date, date_of_birth, tax_id, ip, passport, address, emails, ssn, note, dob::text AS dobt FROM people WHERE id <= 2 ORDER BY id"


async def test_asyncpg(env: HoldsEnv, people: Any) -> None:
    direct = await asyncpg.connect(env.admin_dsn)
    conn = await asyncpg.connect(env.dsn)
    try:
        raw = [tuple(r) for r in await direct.fetch(Q)]
        rows = [tuple(r) for r in await conn.fetch(Q)]
        assert not same_values(rows, raw)
        async with conn.transaction():
            got = [tuple(r) async for r in conn.cursor(Q, prefetch=1)]
        assert not same_values(got, raw)
        stmt = await conn.prepare(Q)
        assert not same_values([tuple(r) for r in await stmt.fetch()], raw)
        import io

        for fmt in ("binary", "csv", "text"):
            out = io.BytesIO()
            await conn.copy_from_query(Q, output=out, format=fmt)
            assert not leaks(out.getvalue().decode("latin-1")), fmt
            if fmt == "binary":
                assert not leaks(out.getvalue().hex()), fmt
    finally:
        await conn.close()
        await direct.close()


def test_psycopg(env: HoldsEnv, people: Any) -> None:
    import psycopg

    with psycopg.connect(env.admin_dsn) as d:
        raw = d.execute(Q).fetchall()
    with psycopg.connect(env.dsn, autocommit=False) as conn:
        for binary in (True, False):
            cur = conn.cursor(binary=binary)
            assert not same_values(cur.execute(Q).fetchall(), raw), binary
            named = conn.cursor("c1" if binary else "c2", binary=binary)
            named.itersize = 1
            named.execute(Q)
            assert not same_values(list(named), raw), binary
            named.close()
        with conn.cursor().copy("COPY (" + Q + ") TO STDOUT (FORMAT binary)") as cp:
            data = b"".join(bytes(b) for b in cp)
        assert not leaks(data.decode("latin-1")) and not leaks(data.hex())
        conn.rollback()


def test_psycopg2_pg8000_sqlalchemy(env: HoldsEnv, people: Any) -> None:
    from urllib.parse import urlsplit

    import pg8000.native
    import psycopg2
    import sqlalchemy as sa

    with psycopg2.connect(env.admin_dsn) as d:
        cur = d.cursor()
        cur.execute(Q)
        raw = cur.fetchall()
    with psycopg2.connect(env.dsn) as c2:
        cur = c2.cursor("srv")
        cur.itersize = 1
        cur.execute(Q)
        assert not same_values(cur.fetchall(), raw)
    u = urlsplit(env.dsn)
    p8 = pg8000.native.Connection(
        u.username, host=u.hostname, port=u.port, password=u.password, database=u.path[1:]
    )
    try:
        assert not leaks(repr(p8.run(Q)))
    finally:
        p8.close()
    eng = sa.create_engine(env.dsn.replace("postgresql://", "postgresql+psycopg://"))
    with eng.connect() as c:
        res = c.execution_options(stream_results=True, yield_per=1).execute(sa.text(Q))
        assert not same_values(list(res), raw)
    eng.dispose()


#: A token bound in the binary format (asyncpg) stands for its value where it is
#: compared with PII as it is; anywhere else (an order, a pattern, a computation, a
#: plain column) it is refused, never resolved.
RESOLVED = [
    ("SELECT id FROM people WHERE email = $1", "t1", [1]),
    ("SELECT id FROM people WHERE email = ANY($1)", "both", [1, 2]),
    ("SELECT id FROM people WHERE email = ANY($1::text[])", "both", [1, 2]),
    ("SELECT id FROM people WHERE address = $1", "a1", [1]),
    ("SELECT id FROM people WHERE emails @> $1", "t1s", [1]),
    ("SELECT id FROM people WHERE $1 = ANY(emails)", "t1", [1]),
    ("SELECT id FROM people WHERE lower(email) = $1", "t1", [1]),
    ("SELECT id FROM people WHERE email = $1::varchar AND id > 0", "t1", [1]),
]
REFUSED = [
    "SELECT id FROM people WHERE email LIKE $1",
    "SELECT id FROM people WHERE position($1 in email) > 0",
    "SELECT id FROM people WHERE email > $1",
    "SELECT id FROM people WHERE email < $1",
    "SELECT id FROM people WHERE email BETWEEN $1 AND $1",
    "SELECT id FROM people WHERE email = $1 || ''",
    "SELECT id FROM people WHERE email ^@ $1",
    "SELECT id FROM people WHERE email = ($1::jsonb ->> 'e')",
    "SELECT id FROM people WHERE email = $1 ORDER BY email > $1",
    "SELECT id FROM people WHERE email > ANY(ARRAY[$1])",
    "SELECT id, $1::text AS echo FROM people WHERE email = $1",
    "INSERT INTO people(id, email, note) VALUES (9, 'x@y', $1) RETURNING id",
]


async def test_tokens_bound_in_binary_are_resolved_only_where_compared(
    env: HoldsEnv, people: Any
) -> None:
    conn = await asyncpg.connect(env.dsn)
    try:
        t1, a1 = await conn.fetchrow("SELECT email, address::text FROM people WHERE id = 1")
        t2 = await conn.fetchval("SELECT email FROM people WHERE id = 2")
        args = {"t1": (t1,), "both": ([t1, t2],), "a1": (a1,), "t1s": ([t1],)}
        for sql, which, ids in RESOLVED:
            assert [r[0] for r in await conn.fetch(sql, *args[which])] == ids, sql
        for sql in REFUSED:
            with pytest.raises(asyncpg.InvalidParameterValueError):  # 22023
                await conn.fetch(sql, t1, timeout=10)
        # executemany of tokens into a PII column: stored as the values, read back as tokens
        await conn.executemany(
            "INSERT INTO people(id, email, note) VALUES ($1, $2, $3)",
            [(20, t1, "a"), (21, t2, "b")],
        )
        back = [
            tuple(r)
            for r in await conn.fetch(
                "SELECT id, email, note FROM people WHERE id >= 20 ORDER BY id"
            )
        ]
        assert back == [(20, t1, "a"), (21, t2, "b")]
    finally:
        await conn.close()
    stored = admin_query(env.admin_dsn, "SELECT email FROM people WHERE id >= 20 ORDER BY id")
    assert [r[0] for r in stored] == [ROWS[0][1], ROWS[1][1]]
    admin_execute(env.admin_dsn, "DELETE FROM people WHERE id >= 9")


async def test_a_token_in_a_sub_select_of_an_explain_is_refused(env: HoldsEnv, people: Any) -> None:
    """A plain EXPLAIN is a read the default rules let through; its plan prints the
    literals, so a token resolved in its sub-select came back as the raw value."""
    conn = await asyncpg.connect(env.dsn)
    try:
        t1 = await conn.fetchval("SELECT email FROM people WHERE id = 1")
        sql = (
            f"EXPLAIN SELECT 1 FROM people WHERE id IN (SELECT id FROM people WHERE email = '{t1}')"
        )
        with pytest.raises(asyncpg.InvalidParameterValueError):  # 22023
            print(await conn.fetch(sql, timeout=10))
        plan = "\n".join(
            r[0] for r in await conn.fetch("EXPLAIN SELECT id FROM people WHERE id = 1")
        )
        assert "people_pkey" in plan  # a plan without a token reads as it is
    finally:
        await conn.close()


def test_executemany_returning_in_a_pipeline_is_tokenized(env: HoldsEnv, people: Any) -> None:
    """psycopg's executemany(returning=True) sends every row's Parse/Bind/Execute in
    one pipeline; SQLAlchemy's insertmanyvalues one multi-row INSERT … RETURNING."""
    import psycopg
    import sqlalchemy as sa

    with psycopg.connect(env.dsn, autocommit=True) as conn:
        cur = conn.cursor(binary=True)
        cur.executemany(
            "INSERT INTO people (id, email, birth_date, note) VALUES (%s, %s, %s, %s)"
            " RETURNING id, email, birth_date, note",
            [
                (30 + i, f"pipe{i}.secret@example.org", "1950-01-0" + str(i + 1), "p")
                for i in range(3)
            ],
            returning=True,
        )
        got = []
        while True:
            got.extend(cur.fetchall())
            if not cur.nextset():
                break
    assert [r[0] for r in got] == [30, 31, 32] and all(r[3] == "p" for r in got)
    assert not any(
        "secret@" in str(r) or r[2] == datetime.date(1950, 1, i + 1) for i, r in enumerate(got)
    )
    eng = sa.create_engine(env.dsn.replace("postgresql://", "postgresql+psycopg://"))
    meta = sa.MetaData()
    people_t = sa.Table("people", meta, autoload_with=eng)
    with eng.begin() as c:
        rows = c.execute(
            people_t.insert().returning(people_t.c.id, people_t.c.email, people_t.c.note),
            [{"id": 40 + i, "email": f"sa{i}.secret@example.org", "note": "s"} for i in range(3)],
        ).all()
    eng.dispose()
    assert sorted(r[0] for r in rows) == [40, 41, 42] and all(r[2] == "s" for r in rows)
    assert not any("secret@" in str(r) for r in rows)
    admin_execute(env.admin_dsn, "DELETE FROM people WHERE id >= 30")
