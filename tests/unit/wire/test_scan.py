"""The compiled frame scanner and the pure-Python one must agree byte for byte."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbgate.wire import framing
from dbgate.wire.errors import LimitExceeded, ProtocolError
from dbgate.wire.framing import FrameReader, split_frames, type_mask


def msg(t: int, body: bytes) -> bytes:
    return bytes([t]) + struct.pack("!I", len(body) + 4) + body


messages = st.lists(
    st.tuples(st.sampled_from(b"DZSTCE1"), st.binary(max_size=40)), min_size=1, max_size=40
)


def test_compiled_scanner_is_built() -> None:
    # make install builds it (setup.py); if this fails the relay silently runs ~100x
    # slower per message, which the benchmarks would show but no functional test would.
    assert framing._c_scan is not None


@settings(max_examples=200, deadline=None)
@given(messages, st.lists(st.integers(1, 200), max_size=30), st.sampled_from(["ZSE", "D", ""]))
def test_feed_select_matches_feed_filtered(
    msgs: list[tuple[int, bytes]], cuts: list[int], types: str
) -> None:
    stream = b"".join(msg(t, b) for t, b in msgs)
    mask = type_mask(types)
    full, selected = FrameReader(), FrameReader()
    pos = 0
    for cut in [*cuts, len(stream)]:
        part, pos = stream[pos : pos + cut], pos + cut
        chunk_a, frames_a = full.feed(part)
        chunk_b, frames_b = selected.feed_select(part, mask)
        assert chunk_a == chunk_b
        assert [f for f in frames_a if mask[f[0]]] == frames_b
        if pos >= len(stream):
            break


@settings(max_examples=200, deadline=None)
@given(messages)
def test_c_and_python_scanners_agree(msgs: list[tuple[int, bytes]]) -> None:
    stream = b"".join(msg(t, b) for t, b in msgs) + b"D\x00\x00"
    mask = type_mask("ZD")
    assert framing._py_scan(stream, 0, 1 << 20, mask) == framing._select(stream, 0, 1 << 20, mask)


@pytest.mark.parametrize("scanner", ["c", "py"])
@pytest.mark.parametrize("length", [0, 3, 1 << 30])
def test_bad_lengths_raise_protocol_error_or_limit(
    scanner: str, length: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    if scanner == "py":
        monkeypatch.setattr(framing, "_c_scan", None)
    bad = msg(ord("Z"), b"I") + b"D" + struct.pack("!I", length) + b"xx"
    with pytest.raises(LimitExceeded if length > 4 else ProtocolError) as info:
        FrameReader(max_size=1 << 20).feed_select(bad, type_mask("Z"))
    assert ("54000" if length > 4 else "08P01") == info.value.sqlstate


def test_split_frames_requires_complete_messages() -> None:
    data = msg(ord("Q"), b"select 1\0") + msg(ord("S"), b"")
    assert split_frames(data) == [(ord("Q"), 5, 14), (ord("S"), 19, 19)]
    with pytest.raises(ProtocolError):
        split_frames(data[:-1])
