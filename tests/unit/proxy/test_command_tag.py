"""The command tags the server side reads for every answered statement."""

from __future__ import annotations

import pytest

from dbgate.proxy import entries
from dbgate.proxy.entries import command_tag
from dbgate.wire import messages as m
from dbgate.wire.errors import ServerProtocolError


@pytest.mark.parametrize(
    ("tag", "rows"),
    [
        ("SELECT 5", 5),
        ("INSERT 0 3", 3),
        ("UPDATE 12", 12),
        ("CREATE TABLE", 0),
        ("SELECT", 0),
        ("", 0),
    ],
)
def test_the_tag_and_the_rows_it_counts(tag: str, rows: int) -> None:
    body = tag.encode() + b"\0"
    assert command_tag(body) == (tag, rows)
    assert command_tag(body) == (tag, rows)  # the remembered answer is the same


@pytest.mark.parametrize(
    "body",
    [b"SELECT 1", b"SELECT 1\0x", b"SELECT\0 1\0", b"SELECT \xff\0", b""],
    ids=["no-nul", "trailing", "two-strings", "invalid-utf8", "empty"],
)
def test_a_malformed_tag_fails_as_the_parser_does_and_is_not_remembered(body: bytes) -> None:
    with pytest.raises(ServerProtocolError) as direct:
        m.parse_command_complete(body)
    with pytest.raises(ServerProtocolError) as cached:
        command_tag(body)
    assert str(cached.value) == str(direct.value)
    assert body not in entries._TAGS


def test_the_remembered_tags_are_bounded() -> None:
    for n in range(3 * entries._TAGS_SIZE):
        assert command_tag(b"SELECT %d\0" % n) == (f"SELECT {n}", n)
    assert len(entries._TAGS) <= entries._TAGS_SIZE
