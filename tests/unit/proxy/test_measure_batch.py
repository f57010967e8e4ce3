"""The bookkeeping of a measured extended-protocol batch (dbgate.proxy.measure):
what is sent again when it is approved, what is closed when it is undone, and when
its answers can no longer be held back."""

from __future__ import annotations

import pytest

from dbgate.proxy import measure
from dbgate.proxy.seams import Allow
from dbgate.wire import messages as m

PARSE_S1 = m.Parse("s1", "UPDATE t SET a = $1 WHERE b = $2").encode()
PARSE_UNNAMED = m.Parse("", "UPDATE t SET a = 1").encode()
DESCRIBE = m.Describe("S", "s1").encode()
FLUSH = m.Flush().encode()
BIND = m.Bind("", "s1", params=(b"1", b"2")).encode()
EXECUTE = m.Execute("", 0).encode()
SYNC = m.Sync().encode()


def fed(*frames: bytes, in_flight: int = 0) -> measure.Measurement:
    m_ = measure.Measurement(None, b"", batch=True)
    for frame in frames:
        m_.client_message(frame[0], frame, in_flight)
    return m_


def test_without_a_flush_the_whole_batch_is_sent_again_and_its_statements_closed() -> None:
    m_ = fed(PARSE_S1, BIND, EXECUTE, SYNC)
    assert m_.resent == PARSE_S1 + BIND + EXECUTE + SYNC
    assert not m_.delivering and not m_.passing
    m_.named = ["s1"]  # the server confirmed the Parse
    assert m_.to_close == ["s1"]


def test_a_flush_before_anything_ran_is_a_flush_point() -> None:
    """asyncpg: Parse/Describe/Flush, then (after the answers) Bind/Execute/Sync."""
    m_ = fed(PARSE_S1, DESCRIBE, FLUSH)
    assert m_.passing and not m_.delivering
    m_.client_message(BIND[0], BIND, 0)  # every answer before it is in
    assert not m_.passing and not m_.delivering  # held back again from here
    for frame in (EXECUTE, SYNC):
        m_.client_message(frame[0], frame, 1)
    assert m_.resent == BIND + EXECUTE + SYNC  # the client saw the Parse's answers
    m_.named = ["s1"]
    assert m_.to_close == []  # and believes s1 exists: it is kept


def test_sending_on_before_the_answers_to_a_flush_arrived_gives_up_holding_back() -> None:
    m_ = fed(PARSE_S1, DESCRIBE, FLUSH)
    m_.client_message(BIND[0], BIND, 2)  # two answers of the prefix still in flight
    assert m_.delivering and not m_.passing


def test_a_flush_after_a_bind_cannot_be_held() -> None:
    m_ = fed(PARSE_UNNAMED, m.Bind("", "").encode(), EXECUTE, FLUSH)
    assert m_.delivering


def test_a_flush_after_a_measured_bind_cannot_be_held() -> None:
    m_ = fed(BIND)
    m_.covers(Allow(max_changes=5), "UPDATE t SET a = $1 WHERE b = $2")
    m_.client_message(FLUSH[0], FLUSH, 0)
    assert m_.delivering


def test_a_batch_too_long_to_keep_is_not_held_back() -> None:
    """A long pipeline is not kept in memory to be sent again: its answers pass, and
    what it prepared is not closed (the client saw it prepared)."""
    m_ = fed(PARSE_S1, BIND, EXECUTE)
    m_.named = ["s1"]
    for _ in range(measure.BATCH_BYTES_KEPT // len(BIND + EXECUTE) + 1):
        m_.client_message(BIND[0], BIND, 1)
        m_.client_message(EXECUTE[0], EXECUTE, 1)
    assert m_.delivering
    assert m_.messages == [] and m_.kept_bytes > measure.BATCH_BYTES_KEPT
    assert m_.to_close == []


def test_the_smallest_limit_of_the_batch_decides() -> None:
    m_ = measure.Measurement(None, b"", batch=True)
    assert not m_.over and m_.cap == measure.BATCH_ROWS_HELD
    m_.covers(Allow(max_changes=50), "a")
    m_.covers(Allow(max_changes=10), "b")
    m_.covers(Allow(max_changes=30), "c")
    assert (m_.limit, m_.sql) == (10, "b")
    m_.count = 11
    assert m_.over and m_.measured == 11


def test_dbgates_statements_around_a_batch_keep_to_names_of_their_own() -> None:
    """No unnamed statement or portal of the client's is touched: every Parse, Bind,
    Execute and Close names dbgate's statement or portal; the statement is closed
    right after its Bind, the portal after its Execute."""
    data = measure.as_batch(["BEGIN", "SAVEPOINT sp"], "dbgate_x")
    frames = list(_frames(data))
    assert [t for t, _ in frames] == ["P", "B", "C", "E", "C"] * 2 + ["S"]
    for t, body in frames:
        if t in "PE":
            assert body.split(b"\0")[0] == b"dbgate_x"
        elif t == "B":
            assert body.split(b"\0")[:2] == [b"dbgate_x", b"dbgate_x"]
        elif t == "C":
            assert body[1:] == b"dbgate_x\0"
    assert [body[:1] for t, body in frames if t == "C"] == [b"S", b"P"] * 2


def _frames(data: bytes) -> list[tuple[str, bytes]]:
    out, i = [], 0
    while i < len(data):
        n = int.from_bytes(data[i + 1 : i + 5], "big")
        out.append((chr(data[i]), data[i + 5 : i + 1 + n]))
        i += 1 + n
    return out


@pytest.mark.parametrize(
    ("sql", "acts"),
    [
        ("COMMIT", True),
        ("end", True),
        ("  /* a /* nested */ comment */ ;; Commit and chain", True),
        ("-- a comment\rROLLBACK", True),
        ("prepare transaction 'x'", True),
        ("release savepoint s", True),
        ("savepoint s", True),
        ("abort", True),
        ("start transaction", True),
        ("/* unterminated", True),  # unreadable: taken to
        ('"COMMIT"', True),  # not a word it knows: taken to
        ("UPDATE t SET a = 1", False),
        ("with x as (select 1) select * from x", False),
        ("(select 1)", False),
        ("", False),
        ("select 'commit'", False),
    ],
)
def test_what_acts_on_a_measured_block(sql: str, acts: bool) -> None:
    assert measure.acts_on_block(sql) is acts
