"""Long strings are decoded from a view of the message, not a copy: same answers.

A 60 MB statement is read by the UTF-8 decoder once instead of being copied first
(``primitives.LONG_STRING``); what comes out, and how a bad byte is reported, must
not differ from the short path.
"""

from __future__ import annotations

import pytest

from dbgate.wire import messages as m
from dbgate.wire.errors import ClientProtocolError
from dbgate.wire.primitives import LONG_STRING


@pytest.mark.parametrize("size", [10, LONG_STRING - 1, LONG_STRING + 1, 4 * LONG_STRING])
def test_a_query_of_any_length_decodes_to_its_text(size: int) -> None:
    sql = "select '" + "é" * (size // 2) + "'"
    assert m.parse_query(m.query(sql)[5:]) == sql
    name, text, types = m.parse_parse(m.Parse("s1", sql, (23,)).encode()[5:])
    assert (name, text, types) == ("s1", sql, (23,))


@pytest.mark.parametrize("size", [10, 4 * LONG_STRING])
def test_invalid_utf8_is_reported_at_its_byte_whatever_the_length(size: int) -> None:
    body = b"select '" + b"x" * size + b"\xff'\0"
    with pytest.raises(ClientProtocolError, match=f"invalid UTF-8 at byte {8 + size} "):
        m.parse_query(body)
    parse = b"s\0" + body + b"\0\0"
    with pytest.raises(ClientProtocolError, match=f"invalid UTF-8 at byte {8 + size} "):
        m.parse_parse(parse)
