"""Tokens in COPY FROM STDIN data, through a running dbgate.

A token stands for its value only in statement texts and Bind values. In COPY data
it would be stored as its own text without a word, so dbgate ends such a COPY with a
CopyFail: the client gets SQLSTATE 22023 and why, the table gets none of its rows,
and the connection goes on serving (a pool keeps it).
"""

from __future__ import annotations

import io

import asyncpg
import pg8000.native
import psycopg
import pytest

from dbgate.wire import messages as m
from tests.integration.drivers_common import split_dsn
from tests.integration.holds.harness import HoldsEnv, admin_execute, admin_query
from tests.integration.rawclient import RawClient, errors, rows

SECRET = "copy.secret@example.org"
TABLE = "copy_contacts"


@pytest.fixture(scope="module")
def token(env: HoldsEnv) -> str:
    admin_execute(
        env.admin_dsn,
        f"DROP TABLE IF EXISTS {TABLE}",
        f"CREATE TABLE {TABLE} (id int PRIMARY KEY, email text, note text)",
        f"INSERT INTO {TABLE} VALUES (1, '{SECRET}', 'first')",
        f"GRANT SELECT, INSERT ON {TABLE} TO PUBLIC",
    )
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        (value,) = conn.execute(f"SELECT email FROM {TABLE} WHERE id = 1").fetchone()  # type: ignore[misc]
    assert value.startswith("tok_email_") and value != SECRET
    return str(value)


def _stored(env: HoldsEnv) -> list[tuple[str, ...]]:
    return [
        tuple(r)
        for r in admin_query(env.admin_dsn, f"SELECT id, email, note FROM {TABLE} ORDER BY id")
    ]


def _clear(env: HoldsEnv) -> None:
    admin_execute(env.admin_dsn, f"DELETE FROM {TABLE} WHERE id > 1")


async def test_asyncpg_binary_copy_with_a_token_is_refused_and_stores_nothing(
    env: HoldsEnv, token: str
) -> None:
    _clear(env)
    conn = await asyncpg.connect(env.dsn)
    try:
        with pytest.raises(asyncpg.PostgresError) as caught:
            await conn.copy_records_to_table(
                TABLE, records=[(2, "plain@example.com", "ok"), (3, token, "tok")]
            )
        assert caught.value.sqlstate == "22023"
        assert "COPY data holds a PII token" in str(caught.value)
        # the connection goes on, and a COPY without tokens is stored as sent
        assert await conn.fetchval("SELECT 41 + 1") == 42
        await conn.copy_records_to_table(TABLE, records=[(4, "plain@example.com", "tok_ is fine")])
    finally:
        await conn.close()
    stored = _stored(env)
    assert [r[0] for r in stored] == [1, 4]
    assert stored[1][1:] == ("plain@example.com", "tok_ is fine")
    assert all(token not in (r[1] or "") for r in stored)


@pytest.mark.parametrize("fmt", ["text", "csv"])
def test_psycopg_text_and_csv_copy_with_a_token_is_refused(
    env: HoldsEnv, token: str, fmt: str
) -> None:
    _clear(env)
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        copy = f"COPY {TABLE} (id, email, note) FROM STDIN WITH (FORMAT {fmt})"
        with (
            pytest.raises(psycopg.errors.InvalidParameterValue) as caught,
            conn.cursor() as cur,
            cur.copy(copy) as cp,
        ):
            cp.write_row((5, "plain@example.com", "x"))
            cp.write_row((6, "someone", token))  # in a clean column: refused too
        assert "COPY data holds a PII token" in str(caught.value)
        assert caught.value.diag.message_hint and "INSERT" in caught.value.diag.message_hint
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert [r[0] for r in _stored(env)] == [1]


async def test_a_token_cut_across_copydata_messages_is_still_found(
    env: HoldsEnv, token: str
) -> None:
    """Drivers cut CopyData wherever their buffer ends; the first half of the token
    ends one message and the rest begins the next."""
    _clear(env)
    client = await RawClient.from_dsn(env.dsn)
    try:
        client.send(m.Query(f"COPY {TABLE} (id, email, note) FROM STDIN").encode())
        await client.until(m.CopyInResponse)
        line = f"7\t{token}\tsplit\n".encode()
        cut = line.index(b"tok_") + 9
        client.send(m.CopyData(b"6\tfine@example.com\tfirst\n"), m.CopyData(line[:cut]))
        client.send(m.CopyData(line[cut:]), m.CopyDone())
        answers = await client.until_ready()
        (error,) = errors(answers)
        assert error.sqlstate == "22023"
        assert "COPY data holds a PII token" in error.message
        assert rows(await client.query("SELECT 6 * 7")) == [(b"42",)]
    finally:
        await client.close()
    assert [r[0] for r in _stored(env)] == [1]


async def test_copy_data_that_only_looks_like_a_token_is_stored(env: HoldsEnv) -> None:
    _clear(env)
    near = ["tok_email_", "tok_email_h" + "0" * 31, "TOK_EMAIL_H" + "0" * 32, "tok_email"]
    conn = await asyncpg.connect(env.dsn)
    try:
        await conn.copy_records_to_table(
            TABLE, records=[(10 + i, None, text) for i, text in enumerate(near)]
        )
    finally:
        await conn.close()
    assert [r[2] for r in _stored(env)[1:]] == near


async def test_long_copydata_messages_are_looked_at_whole(env: HoldsEnv, token: str) -> None:
    """A CopyData over 64 KiB is held whole to be looked at (within the memory budget):
    a clean one is stored as sent, one whose last line holds a token is refused."""
    _clear(env)
    clean = b"".join(b"%d\tbulk\t%s\n" % (1000 + i, b"x" * 10_000) for i in range(90))
    assert len(clean) > 512 * 1024
    client = await RawClient.from_dsn(env.dsn)
    try:
        for data, refused in (
            (clean, False),
            (clean + f"5\t{token}\tx\n".encode(), True),
        ):
            _clear(env)
            client.send(m.Query(f"COPY {TABLE} (id, email, note) FROM STDIN").encode())
            await client.until(m.CopyInResponse)
            client.send(m.CopyData(data), m.CopyDone())
            answers = await client.until_ready()
            if refused:
                assert [e.sqlstate for e in errors(answers)] == ["22023"]
                assert [r[0] for r in _stored(env)] == [1]
            else:
                assert not errors(answers)
                assert len(_stored(env)) == 91
    finally:
        await client.close()


def test_pg8000_extended_protocol_copy_with_a_token_is_refused(env: HoldsEnv, token: str) -> None:
    """pg8000 sends COPY through Parse/Bind/Execute and its data before the Sync (a
    measured batch here): refused the same way, inside a transaction block too."""
    _clear(env)
    conn = pg8000.native.Connection(**split_dsn(env.dsn).kwargs(), timeout=30)  # type: ignore[arg-type]
    try:
        with pytest.raises(pg8000.native.DatabaseError) as caught:
            conn.run(f"COPY {TABLE} (id, email) FROM STDIN", stream=io.StringIO(f"2\t{token}\n"))
        assert caught.value.args[0]["C"] == "22023"
        assert conn.run("SELECT 42") == [[42]]
        conn.run("START TRANSACTION")
        with pytest.raises(pg8000.native.DatabaseError):
            conn.run(f"COPY {TABLE} (id, email) FROM STDIN", stream=io.StringIO(f"3\t{token}\n"))
        conn.run("ROLLBACK")
        conn.run(
            f"COPY {TABLE} (id, email) FROM STDIN", stream=io.StringIO("4\tplain@example.com\n")
        )
    finally:
        conn.close()
    assert [r[0] for r in _stored(env)] == [1, 4]
