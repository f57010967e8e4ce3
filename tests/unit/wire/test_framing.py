"""The framer, as the codec and the proxy rely on it: limits, errors, zero-copy behaviour."""

from __future__ import annotations

import pytest

from dbgate.wire import messages as m
from dbgate.wire.errors import LimitExceeded, ProtocolError
from dbgate.wire.framing import (
    MAX_STARTUP_PACKET,
    FrameReader,
    HandshakeReader,
    StartupReader,
    frame,
)
from dbgate.wire.startup import SSLRequest, StartupMessage


def test_complete_read_is_returned_without_copy() -> None:
    data = m.query("SELECT 1") + m.SYNC
    chunk, frames = FrameReader().feed(data)
    assert chunk is data
    assert frames == [(ord("Q"), 5, 14), (ord("S"), 19, 19)]


def test_partial_message_is_held_until_complete() -> None:
    data = m.query("SELECT 1")
    reader = FrameReader()
    assert reader.feed(data[:7]) == (b"", [])
    assert reader.pending == 7
    chunk, frames = reader.feed(data[7:])
    assert (chunk, frames) == (data, [(ord("Q"), 5, len(data))])
    assert reader.pending == 0


def test_short_header_is_held() -> None:
    reader = FrameReader()
    assert reader.feed(b"Q\0\0") == (b"", [])
    assert reader.pending == 3


@pytest.mark.parametrize("length", [0, 1, 3])
def test_length_below_four_is_a_protocol_violation(length: int) -> None:
    with pytest.raises(ProtocolError, match=f"invalid message length {length}") as info:
        FrameReader().feed(b"Q" + length.to_bytes(4, "big"))
    assert info.value.sqlstate == "08P01"


def test_oversized_message_is_refused_before_buffering() -> None:
    reader = FrameReader(max_size=100)
    with pytest.raises(LimitExceeded, match="over the limit of 100") as info:
        reader.feed(b"d" + (101).to_bytes(4, "big"))
    assert info.value.sqlstate == "54000"
    _, frames = FrameReader(max_size=100).feed(m.CopyData(bytes(96)).encode())
    assert frames == [(ord("d"), 5, 101)]


def test_startup_reader_lengths() -> None:
    with pytest.raises(ProtocolError, match="invalid startup packet length 7"):
        StartupReader().feed((7).to_bytes(4, "big") + b"\0\0\0")
    with pytest.raises(ProtocolError, match="invalid startup packet length"):
        StartupReader().feed((MAX_STARTUP_PACKET + 1).to_bytes(4, "big"))
    reader = StartupReader()
    assert reader.feed(b"\0\0") is None
    assert reader.feed(b"\0\x08\x04\xd2") is None
    assert reader.feed(b"\x16\x2f") == b"\x04\xd2\x16\x2f"


def test_handshake_reader_takes_one_packet_of_each_kind_in_turn() -> None:
    startup = StartupMessage((3, 0), {"user": "agent"}).encode()
    stream = SSLRequest().encode() + b"S" + startup + m.query("select 1") + b"rest"
    reader = HandshakeReader()
    reader.feed(stream[:3])
    assert reader.next_startup_packet() is None  # not even the length yet
    reader.feed(stream[3:])
    assert reader.next_startup_packet() == SSLRequest().encode()[4:]
    assert reader.next_byte() == b"S"
    assert reader.next_startup_packet() == startup[4:]
    assert reader.next_message() == (ord("Q"), b"select 1\0")
    assert reader.next_message() is None  # "rest": a partial message, kept
    assert len(reader) == 4
    assert reader.take_all() == b"rest"
    assert len(reader) == 0 and reader.next_byte() is None


def test_handshake_reader_checks_lengths_before_the_body_arrives() -> None:
    reader = HandshakeReader(max_size=100)
    reader.feed((7).to_bytes(4, "big"))
    with pytest.raises(ProtocolError, match="invalid startup packet length 7"):
        reader.next_startup_packet()
    reader = HandshakeReader(max_size=100)
    reader.feed(b"p" + (3).to_bytes(4, "big"))
    with pytest.raises(ProtocolError, match="invalid message length 3 for message type 'p'"):
        reader.next_message()
    reader = HandshakeReader(max_size=100)
    reader.feed(b"p" + (101).to_bytes(4, "big"))
    with pytest.raises(LimitExceeded, match="'p' is 101 bytes, over the limit of 100") as info:
        reader.next_message()
    assert info.value.sqlstate == "54000"


def test_frame_writes_the_length_word_the_readers_check() -> None:
    message = frame(ord("Q"), b"select 1\0")
    assert message == m.query("select 1")
    assert FrameReader().feed(message)[1] == [(ord("Q"), 5, len(message))]
    assert frame(0, b"") == b"\0\0\0\0\x04"
