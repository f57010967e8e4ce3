"""Tokens the agent sends back, against the real server (demo dataset): where dbgate
puts a token's value must be where the server reads it, whatever the value."""

from __future__ import annotations

import struct
from typing import Any

import asyncpg
import pytest

from dbgate.pii.tokens import TokenError
from dbgate.wire import messages as m
from tests.integration.pii.conftest import DBNAME, Demo
from tests.integration.pii.harness import apply_plan, connect

SQL = "select id from customers where email = any($1)"


async def _bind(pg_server: Any, value: bytes) -> list[Any]:
    """Parse ``SQL`` (its parameter's type left to the server), Bind ``value`` in binary
    format, Execute: the server's messages."""
    client = await connect(pg_server, DBNAME)
    try:
        client.send(
            m.Parse("", SQL).encode(),
            m.Bind("", "", param_formats=(1,), params=(value,), result_formats=(0,)).encode(),
            m.Describe("P", "").encode(),
            m.Execute("", 0).encode(),
            m.SYNC,
        )
        return await client.until_ready()
    finally:
        await client.close()


def _text_array(*elements: bytes) -> bytes:
    """A binary ``text[]`` value, as a driver sends it."""
    out = struct.pack("!iiI", 1, 0, 25) + struct.pack("!ii", len(elements), 1)
    return out + b"".join(struct.pack("!i", len(e)) + e for e in elements)


async def test_a_token_inside_a_binary_value_of_an_undeclared_type(
    pg_server: Any, pii_demo: Demo
) -> None:
    """A binary Bind value whose type the Parse leaves to the server was searched for
    tokens as if it were text: inside a binary ``text[]`` (what ``= ANY($1)`` infers)
    the value replaced the token with the element's length left as the token's, so the
    server read the value and some following bytes as one element and failed, with
    22P03 or 22021, by the value's length: bits of it per statement, reading no row
    (and of a fresh token's derived value, bits the agent chose). A whole value bound so
    is read in the layout the server infers too (four bytes of it as a date). Refused:
    binary values carry their type's layout, which a driver declares."""
    conn = await asyncpg.connect(pii_demo.dsn)
    try:
        email = await conn.fetchval("select email from customers where id = 1")
    finally:
        await conn.close()
    room = pii_demo.hashed  # 45-byte tokens: the length byte before one is not a letter
    session = room.session("agent")
    token = room.tokenizer.token("email", email.encode()).encode()
    plan = session.plan(SQL)
    for value in (_text_array(token, b""), _text_array(token, b"x" * 16), token):
        with pytest.raises(TokenError, match="does not declare"):
            session.detokenize_params(plan, (value,), (1,), (0,))
    # declared, the array is read element by element and the value put in its place
    values, bound = session.detokenize_params(plan, (_text_array(token, b"x"),), (1,), (1009,))
    assert values[0] == _text_array(email.encode(), b"x")
    res = apply_plan(bound, await _bind(pg_server, values[0]))
    assert not res.errors and [r[0] for r in res.rows_before] == [b"1"]
    # in text format, undeclared: read as text (or a text array), as before
    values, bound = session.detokenize_params(plan, (b"{" + token + b"}",), (0,), (0,))
    assert values == (b"{" + email.encode() + b"}",)
