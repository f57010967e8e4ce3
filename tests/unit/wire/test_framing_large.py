"""Messages longer than one read: streamed when the caller does not need them, collected
(and joined once) when it does; the reader's memory follows what it must hold.

``large`` is lowered to a few bytes here so that short generated messages exercise the
same paths a 60 MB DataRow takes in the relay.
"""

from __future__ import annotations

import struct
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbgate.wire.errors import LimitExceeded
from dbgate.wire.framing import FrameReader, type_mask

LARGE = 16
TYPES = b"DZCTdE"

props = settings(max_examples=300, deadline=None)


def msg(t: int, body: bytes) -> bytes:
    return bytes([t]) + struct.pack("!I", len(body) + 4) + body


@st.composite
def split_stream(draw: st.DrawFn) -> tuple[list[bytes], list[bytes]]:
    """(messages, the stream cut into reads)."""
    bodies = st.binary(max_size=3 * LARGE)
    msgs = [msg(t, b) for t, b in draw(st.lists(st.tuples(st.sampled_from(TYPES), bodies)))]
    stream = b"".join(msgs)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    pieces = [stream[a:b] for a, b in pairwise([0, *cuts, len(stream)])]
    return msgs, pieces


class Collects:
    """Records ``on_collect`` calls and checks they come in start/stop pairs."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, n: int) -> None:
        if n:
            assert not self.calls or self.calls[-1] == 0, "a second collection started"
        else:
            assert self.calls and self.calls[-1] != 0, "a collection ended twice"
        self.calls.append(n)


@props
@given(split_stream(), st.sampled_from(["", "D", "ZCE", "DZCTdE"]), st.booleans())
def test_any_split_any_mask_forwards_everything_and_frames_the_selected(
    case, types, server
) -> None:
    """``server``: the server's reader, which also streams short unselected messages."""
    msgs, pieces = case
    mask = type_mask(types)
    collects = Collects()
    reader = FrameReader(large=LARGE, on_collect=collects, limit_streamed=not server)
    chunks, seen = [], []
    for piece in pieces:
        chunk, frames = reader.feed_select(piece, mask)
        chunks.append(chunk)
        for t, s, e in frames:
            assert chunk[s - 5] == t and int.from_bytes(chunk[s - 4 : s], "big") == e - s + 4
            seen.append(chunk[s - 5 : e])
        if not mask[0] and not any(mask):  # nothing selected: nothing large is held
            assert reader.pending <= LARGE
    assert b"".join(chunks) == b"".join(msgs)  # in order, nothing lost or repeated
    assert seen == [w for w in msgs if mask[w[0]]]
    assert reader.pending == 0 and reader.streaming == 0
    # Only selected large messages are collected (those a read did not bring whole),
    # in order, each at most once, every start paired with a stop.
    candidates = iter([len(w) for w in msgs if mask[w[0]] and len(w) > LARGE])
    assert all(n in candidates for n in collects.calls[::2])
    assert collects.calls[1::2] == [0] * (len(collects.calls) // 2)
    assert not collects.calls or collects.calls[-1] == 0


@props
@given(
    split_stream(),
    st.lists(st.sampled_from(["", "D", "ZCE", "DZCTdE"]), min_size=1),
    st.booleans(),
)
def test_a_mask_that_changes_between_reads_never_splits_a_selected_frame(
    case, masks, server
) -> None:
    """The relay changes its mask after reading frames (a result starts to need
    rewriting, or stops). Whatever the order, every chunk is forwardable as is and
    every message selected by all masks is framed whole (``server``: the server's
    reader, which streams short unselected messages too)."""
    msgs, pieces = case
    reader = FrameReader(large=LARGE, limit_streamed=not server)
    chunks, seen = [], []
    for i, piece in enumerate(pieces):
        chunk, frames = reader.feed_select(piece, type_mask(masks[i % len(masks)]))
        chunks.append(chunk)
        for t, s, e in frames:
            assert chunk[s - 5] == t and int.from_bytes(chunk[s - 4 : s], "big") == e - s + 4
            seen.append(chunk[s - 5 : e])
    assert b"".join(chunks) == b"".join(msgs)
    always = type_mask(bytes(t for t in TYPES if all(t in m.encode() for m in masks)))
    wanted = [w for w in msgs if always[w[0]]]
    assert [w for w in seen if always[w[0]]] == wanted


def test_a_large_unselected_message_is_passed_on_as_it_arrives() -> None:
    row = msg(ord("D"), bytes(1000))
    reader = FrameReader(large=100)
    mask = type_mask("Z")
    pieces = [row[:300], row[300:700], row[700:] + msg(ord("Z"), b"I")]
    assert reader.feed_select(pieces[0], mask) == (pieces[0], [])
    assert reader.pending == 0 and reader.streaming == len(row) - 300
    out = reader.feed_select(pieces[1], mask)
    assert out[0] is pieces[1] and out[1] == []  # the read itself: no copy
    chunk, frames = reader.feed_select(pieces[2], mask)
    z = len(row) - 700  # where ReadyForQuery starts in the last read
    assert chunk is pieces[2] and frames == [(ord("Z"), z + 5, z + 6)]
    assert reader.streaming == 0


def test_a_large_message_after_a_selected_frame_waits_for_the_callers_next_mask() -> None:
    """RowDescription then the start of a long row in one read: the relay may decide,
    on seeing the RowDescription, that rows must now be rewritten (selected)."""
    head = msg(ord("T"), b"desc")
    row = msg(ord("D"), bytes(500))
    reader = FrameReader(large=100)
    chunk, frames = reader.feed_select(head + row[:200], type_mask("T"))
    assert chunk == head and frames == [(ord("T"), 5, len(head))]
    assert reader.pending == 200  # held, not passed on
    chunk, frames = reader.feed_select(row[200:], type_mask("TD"))  # rows now selected
    assert chunk == row and frames == [(ord("D"), 5, len(row))]


def test_a_collected_message_is_joined_once_and_released() -> None:
    query = msg(ord("Q"), b"x" * 10_000 + b"\0")
    sync = msg(ord("S"), b"")
    collects = Collects()
    reader = FrameReader(large=100, on_collect=collects)
    mask = type_mask("QS")
    fed = 0
    for i in range(0, len(query) - 1000, 1000):
        assert reader.feed_select(query[i : i + 1000], mask) == (b"", [])
        fed += 1000
        assert reader.pending == fed  # what arrived, not what was announced
    chunk, frames = reader.feed_select(query[fed:] + sync + sync[:2], mask)
    assert chunk == query + sync
    assert frames == [(ord("Q"), 5, len(query)), (ord("S"), len(query) + 5, len(query) + 5)]
    assert collects.calls == [len(query), 0]
    assert reader.pending == 2


def test_taking_a_collected_message_ends_its_collection() -> None:
    collects = Collects()
    reader = FrameReader(large=100, on_collect=collects)
    query = msg(ord("Q"), b"y" * 300 + b"\0")
    reader.feed_select(query[:150], type_mask("Q"))
    assert reader.take_pending() == query[:150]
    assert collects.calls == [len(query), 0] and reader.pending == 0
    chunk, frames = reader.feed_select(query, type_mask("Q"))
    assert chunk == query and frames == [(ord("Q"), 5, len(query))]


def test_the_limit_applies_to_streamed_messages_only_when_asked() -> None:
    huge = b"D" + struct.pack("!I", 10_000) + bytes(200)
    with pytest.raises(LimitExceeded, match="over the limit of 1000"):
        FrameReader(1000, large=100).feed_select(huge, type_mask("Z"))
    server = FrameReader(1000, limit_streamed=False, large=100)
    assert server.feed_select(huge, type_mask("Z")) == (huge, [])  # streamed, never held
    assert server.streaming == 10_001 - len(huge)
    collected = FrameReader(1000, limit_streamed=False, large=100)
    with pytest.raises(LimitExceeded, match="'D' is 10000 bytes, over the limit of 1000"):
        collected.feed_select(huge, type_mask("D"))  # would have to be held whole


def test_the_servers_reader_streams_a_short_unselected_message_a_read_ends_in() -> None:
    """Rows nobody counts, read 54 bytes at a time: each read is relayed as it came
    (no join with the next, no cut), also when the rows are short; a client's reader
    keeps a short partial message back as before."""
    rows = b"".join(msg(ord("D"), bytes(7)) for _ in range(20))  # 12 bytes each
    reads = [rows[i : i + 54] for i in range(0, len(rows), 54)]
    mask = type_mask("ZC")
    server = FrameReader(large=LARGE, limit_streamed=False)
    for part in reads:
        chunk, frames = server.feed_select(part, mask)
        assert chunk is part and frames == []
    assert server.pending == 0 and server.streaming == 0
    client = FrameReader(large=LARGE)
    chunk, frames = client.feed_select(reads[0], mask)
    assert len(chunk) == 48 and client.pending == 6
