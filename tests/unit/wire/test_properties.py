"""Property tests: round-trips, framing under arbitrary splits, garbage never crashes."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from dbgate.wire import messages as m
from dbgate.wire.errors import (
    ClientProtocolError,
    LimitExceeded,
    ProtocolError,
    ServerProtocolError,
)
from dbgate.wire.framing import FrameReader, HandshakeReader, StartupReader
from dbgate.wire.startup import StartupMessage, parse_startup_packet

from .strategies import (
    auth_responses,
    backend_messages,
    frontend_messages,
    startup_packets,
)

fast = settings(max_examples=300, deadline=None)
# streams of up to 20 messages cost more per example; fewer keep these under ~3 s
streams = settings(max_examples=150, deadline=None)


def split(wire: bytes) -> tuple[int, bytes]:
    assert int.from_bytes(wire[1:5], "big") == len(wire) - 1
    return wire[0], wire[5:]


# ------------------------------------------------------------------ (a) round trips


@fast
@given(frontend_messages)
def test_frontend_round_trip(msg: m.FrontendMessage) -> None:
    wire = msg.encode()
    assert wire[0] == msg.type_byte
    assert m.decode_frontend(*split(wire)) == msg


@fast
@given(backend_messages)
def test_backend_round_trip(msg: m.BackendMessage) -> None:
    wire = msg.encode()
    assert wire[0] == msg.type_byte
    assert m.decode_backend(*split(wire)) == msg


@fast
@given(auth_responses)
def test_auth_responses_round_trip_through_context_parsers(msg) -> None:
    t, body = split(msg.encode())
    assert m.decode_frontend(t, body) == m.AuthResponse(body)
    if isinstance(msg, m.PasswordMessage):
        assert m.parse_password(body) == msg.password
    elif isinstance(msg, m.SASLInitialResponse):
        assert m.parse_sasl_initial_response(body) == (msg.mechanism, msg.data)
    else:
        assert body == msg.data


@fast
@given(frontend_messages)
def test_fast_parsers_agree_with_typed_decoding(msg: m.FrontendMessage) -> None:
    t, body = split(msg.encode())
    if isinstance(msg, m.Query):
        assert m.parse_query(body) == msg.sql
    elif isinstance(msg, m.Parse):
        assert m.parse_parse(body) == (msg.name, msg.sql, msg.param_types)
    elif isinstance(msg, m.Bind):
        assert m.parse_bind(body) == (
            msg.portal,
            msg.statement,
            msg.param_formats,
            msg.params,
            msg.result_formats,
        )
        assert m.bind_params(body) == msg.params
    elif isinstance(msg, m.Execute):
        assert m.parse_execute(body) == (msg.portal, msg.max_rows)
    elif isinstance(msg, m.Describe):
        assert m.parse_describe(body) == (msg.kind, msg.name)
    elif isinstance(msg, m.Close):
        assert m.parse_close(body) == (msg.kind, msg.name)
    else:
        assert m.decode_frontend(t, body) == msg


@fast
@given(startup_packets)
def test_startup_packet_round_trip(packet) -> None:
    wire = packet.encode()
    reader = StartupReader()
    body = reader.feed(wire)
    assert body is not None
    parsed = parse_startup_packet(body)
    assert parsed == packet
    if isinstance(parsed, StartupMessage):
        assert parsed.needs_negotiation == (parsed.protocol[1] > 2 or bool(parsed.protocol_options))


# ------------------------------------------------------------------ (b) framing


@st.composite
def stream_and_cuts(draw: st.DrawFn) -> tuple[list[bytes], list[int]]:
    msgs = draw(st.lists(frontend_messages | backend_messages, min_size=1, max_size=12))
    wires = [msg.encode() for msg in msgs]
    total = sum(map(len, wires))
    cuts = sorted(draw(st.lists(st.integers(0, total), max_size=12)))
    return wires, cuts


def _frames_of(reader: FrameReader, pieces: list[bytes]) -> tuple[bytes, list[tuple[int, bytes]]]:
    seen: list[tuple[int, bytes]] = []
    chunks = []
    for piece in pieces:
        chunk, frames = reader.feed(piece)
        chunks.append(chunk)
        seen.extend((t, chunk[s:e]) for t, s, e in frames)
    return b"".join(chunks), seen


@streams
@given(stream_and_cuts())
def test_frame_reader_yields_exactly_the_messages_for_any_split(case) -> None:
    wires, cuts = case
    stream = b"".join(wires)
    bounds = [0, *cuts, len(stream)]
    pieces = [stream[a:b] for a, b in pairwise(bounds)]
    reader = FrameReader()
    chunks, seen = _frames_of(reader, pieces)
    assert seen == [(w[0], w[5:]) for w in wires]
    assert chunks == stream  # chunks are forwardable as is, in order, nothing lost
    assert reader.pending == 0


@streams
@given(st.lists(frontend_messages | backend_messages, min_size=1, max_size=20))
def test_frame_reader_packed_read(msgs) -> None:
    wires = [msg.encode() for msg in msgs]
    stream = b"".join(wires)
    chunk, frames = FrameReader().feed(stream)
    assert chunk is stream  # the common case: no copy
    assert [(t, chunk[s:e]) for t, s, e in frames] == [(w[0], w[5:]) for w in wires]


@streams
@given(stream_and_cuts())
def test_frame_reader_byte_at_a_time_then_decodes(case) -> None:
    wires, _ = case
    stream = b"".join(wires)
    reader = FrameReader()
    _, seen = _frames_of(reader, [stream[i : i + 1] for i in range(len(stream))])
    assert seen == [(w[0], w[5:]) for w in wires]


def _handshake_messages(reader: HandshakeReader, pieces: list[bytes]) -> list[tuple[int, bytes]]:
    seen = []
    for piece in pieces:
        reader.feed(piece)
        while (message := reader.next_message()) is not None:
            seen.append(message)
    return seen


@streams
@given(stream_and_cuts())
def test_handshake_reader_takes_the_same_messages_one_at_a_time(case) -> None:
    wires, cuts = case
    stream = b"".join(wires)
    pieces = [stream[a:b] for a, b in pairwise([0, *cuts, len(stream)])]
    reader = HandshakeReader()
    assert _handshake_messages(reader, pieces) == [(w[0], w[5:]) for w in wires]
    assert len(reader) == 0


@fast
@given(st.lists(st.binary(max_size=40), max_size=8), st.integers(4, 200))
def test_both_framers_apply_the_same_length_rules(pieces: list[bytes], max_size: int) -> None:
    """Whatever the bytes, the relay's framer and the handshake's agree: the same
    messages, or the same error (one framer, whichever reader)."""

    def outcome(run: Callable[[], object]) -> object:
        try:
            return run()
        except (ProtocolError, LimitExceeded) as exc:
            return type(exc), str(exc), exc.sqlstate

    relay = outcome(lambda: _frames_of(FrameReader(max_size), pieces)[1])
    handshake = outcome(lambda: _handshake_messages(HandshakeReader(max_size), pieces))
    assert relay == handshake


# ------------------------------------------------------------------ (c) garbage

FRONTEND_TYPES = b"BCdcfDEHFpPQSX"
BACKEND_TYPES = b"RK23CdcGHWDIENVvnAtS1sZT"
# Each parser's errors name the sender: only clients send frontend messages.
BODY_PARSERS: list[tuple[Callable[[bytes], object], type[ProtocolError]]] = [
    (m.parse_query, ClientProtocolError),
    (m.parse_parse, ClientProtocolError),
    (m.parse_bind, ClientProtocolError),
    (m.bind_params, ClientProtocolError),
    (m.parse_execute, ClientProtocolError),
    (m.parse_describe, ClientProtocolError),
    (m.parse_close, ClientProtocolError),
    (m.parse_password, ClientProtocolError),
    (m.parse_sasl_initial_response, ClientProtocolError),
    (m.parse_ready_for_query, ServerProtocolError),
    (m.parse_command_complete, ServerProtocolError),
    (m.parse_data_row, ServerProtocolError),
    (m.parse_error_fields, ServerProtocolError),
    (m.parse_backend_key_data, ServerProtocolError),
]


def _only_protocol_errors(
    call: Callable[[], object], errors: tuple[type[Exception], ...] = (ProtocolError,)
) -> None:
    try:
        call()
    except errors as exc:
        assert str(exc)
        assert len(exc.sqlstate) == 5  # type: ignore[attr-defined]


@st.composite
def mutated_body(draw: st.DrawFn, messages: st.SearchStrategy) -> tuple[int, bytes]:
    """A valid message body with a random truncation, extension or byte flips."""
    t, body = split(draw(messages).encode())
    body = bytearray(body)
    op = draw(st.sampled_from(("truncate", "extend", "flip")))
    if op == "truncate" and body:
        del body[draw(st.integers(0, len(body) - 1)) :]
    elif op == "extend":
        body += draw(st.binary(min_size=1, max_size=8))
    elif body:
        for _ in range(draw(st.integers(1, 3))):
            body[draw(st.integers(0, len(body) - 1))] = draw(st.integers(0, 255))
    return t, bytes(body)


garbage_type = st.sampled_from(list(FRONTEND_TYPES + BACKEND_TYPES)) | st.integers(0, 255)


@fast
@given(garbage_type, st.binary(max_size=64))
def test_decoders_on_random_bytes(t: int, body: bytes) -> None:
    _only_protocol_errors(lambda: m.decode_frontend(t, body), (ClientProtocolError,))
    _only_protocol_errors(lambda: m.decode_backend(t, body), (ServerProtocolError,))


@fast
@given(mutated_body(frontend_messages) | mutated_body(backend_messages))
def test_decoders_on_mutated_messages(case: tuple[int, bytes]) -> None:
    t, body = case
    _only_protocol_errors(lambda: m.decode_frontend(t, body), (ClientProtocolError,))
    _only_protocol_errors(lambda: m.decode_backend(t, body), (ServerProtocolError,))


@fast
@given(st.binary(max_size=64) | mutated_body(frontend_messages).map(lambda c: c[1]))
def test_fast_parsers_on_garbage(body: bytes) -> None:
    for parser, sender in BODY_PARSERS:
        _only_protocol_errors(lambda p=parser: p(body), (sender,))


@fast
@given(st.lists(st.binary(max_size=40), max_size=8), st.integers(4, 200))
def test_frame_reader_on_garbage(pieces: list[bytes], max_size: int) -> None:
    reader = FrameReader(max_size=max_size)

    def run() -> None:
        for piece in pieces:
            chunk, frames = reader.feed(piece)
            for t, s, e in frames:
                assert chunk[s - 5] == t
                assert int.from_bytes(chunk[s - 4 : s], "big") == e - s + 4 <= max_size

    _only_protocol_errors(run, (ProtocolError, LimitExceeded))  # too long: a limit


@fast
@given(st.lists(st.binary(max_size=40), max_size=8))
def test_startup_reader_and_parser_on_garbage(pieces: list[bytes]) -> None:
    reader = StartupReader()

    def run() -> None:
        for piece in pieces:
            body = reader.feed(piece)
            while body is not None:
                _only_protocol_errors(
                    lambda b=body: parse_startup_packet(b), (ClientProtocolError,)
                )
                body = reader.feed(b"")

    _only_protocol_errors(run)


@fast
@given(
    st.binary(max_size=80)
    | startup_packets.map(lambda p: p.encode()[4:])
    | startup_packets.map(lambda p: p.encode()[4:]).flatmap(
        lambda b: st.integers(0, len(b)).map(lambda i: b[:i] + b[i + 1 :])
    )
)
def test_parse_startup_packet_on_garbage(body: bytes) -> None:
    _only_protocol_errors(lambda: parse_startup_packet(body), (ClientProtocolError,))
