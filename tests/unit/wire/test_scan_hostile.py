"""The compiled frame scanner (dbgate/wire/_scan.c) against the pure-Python framer on
bytes a hostile peer could send: noise, valid messages with corrupted length words
(below 4, near 2**32, past the buffer), any start offset and size limit, and a stream
cut at arbitrary offsets through every road of FrameReader (whole, kept, collected,
streamed, split runs). Both give the same frames and offsets, or the same error."""

from __future__ import annotations

import struct
import types
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbgate.wire import framing
from dbgate.wire.errors import LimitExceeded, ProtocolError

_scan = pytest.importorskip("dbgate.wire._scan", reason="the compiled scanner is optional")


def msg(t: int, body: bytes) -> bytes:
    return bytes([t]) + struct.pack("!I", len(body) + 4) + body


_framed = st.lists(
    st.tuples(st.sampled_from(b"DDDCZE\x00\xff"), st.binary(max_size=30)), max_size=8
).map(lambda ms: b"".join(msg(t, b) for t, b in ms))


@st.composite
def hostile(draw: st.DrawFn) -> bytes:
    """Noise, or framed messages with up to four bytes overwritten (a length word's
    bytes among them, often)."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=60))
    data = bytearray(draw(_framed))
    for _ in range(draw(st.integers(0, 4))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.sampled_from([0, 3, 4, 0xFF]))
    return bytes(data)


_masks = st.one_of(
    st.sampled_from([framing.ALL_TYPES, framing.ALL_TYPES_ROW_RUNS, bytes(256)]),
    st.lists(st.tuples(st.integers(0, 255), st.sampled_from([1, 2])), max_size=6).map(
        lambda picks: bytes(dict(picks).get(t, 0) for t in range(256))
    ),
)


def _python(fn: Callable[..., object], *compiled: str) -> Callable[..., object]:
    """``fn`` with the compiled helpers it would call replaced by None."""
    g = dict(fn.__globals__)
    g.update(dict.fromkeys(compiled))
    return types.FunctionType(fn.__code__, g, fn.__name__, fn.__defaults__)


_py_count = _python(framing.count_messages, "_c_count")
_py_skip = _python(framing.skip_messages, "_c_skip")


def _outcome(fn: Callable[..., object], *args: object) -> object:
    try:
        return fn(*args)
    except (ValueError, ProtocolError, LimitExceeded):
        return "malformed"


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile(), st.integers(0, 70), st.sampled_from([0, 4, 5, 30, 2**31, 2**32 - 1]), _masks)
def test_scanners_agree_on_hostile_bytes(
    buf: bytes, start: int, max_size: int, mask: bytes
) -> None:
    got = _outcome(_scan.scan, buf, start, max_size, mask)
    assert got == _outcome(framing._py_scan, buf, start, max_size, mask)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile(), st.integers(-2, 70), st.integers(-2, 70), st.booleans(), st.integers(-1, 9))
def test_counts_and_skips_agree_on_hostile_bytes(
    buf: bytes, start: int, end: int, split_last: bool, n: int
) -> None:
    got = _outcome(_scan.count, buf, start, end, split_last)
    assert got == _outcome(_py_count, buf, start, end, split_last)
    assert _outcome(_scan.skip, buf, start, n) == _outcome(_py_skip, buf, start, n)


def _python_reader() -> type:
    """FrameReader over the pure-Python scanner, counter and collector."""
    g = dict(vars(framing))
    g.update(_c_scan=None, _c_count=None, _c_skip=None, Collector=framing._PyCollector)

    def clone(fn: types.FunctionType) -> types.FunctionType:
        out = types.FunctionType(fn.__code__, g, fn.__name__, fn.__defaults__, fn.__closure__)
        out.__kwdefaults__ = fn.__kwdefaults__
        return out

    for name in ("count_messages", "_select"):
        g[name] = clone(getattr(framing, name))
    ns: dict[str, object] = {"__slots__": framing.FrameReader.__slots__}
    for name, value in vars(framing.FrameReader).items():
        if isinstance(value, types.FunctionType):
            ns[name] = clone(value)
        elif isinstance(value, property):
            ns[name] = property(clone(value.fget))  # type: ignore[arg-type]
    return type("PyFrameReader", (), ns)


PyFrameReader = _python_reader()


def _feed_all(
    cls: type, parts: list[bytes], mask: bytes, max_size: int, large: int, limited: bool, room: int
) -> list[object]:
    reader = cls(max_size, large=large, limit_streamed=limited)
    if room >= 0:
        reader.run_room = lambda: room
    out: list[object] = []
    for part in parts:
        try:
            chunk, frames = reader.feed_select(part, mask)
        except (ProtocolError, LimitExceeded) as e:
            out.append((type(e).__name__, str(e)))
            break
        out.append((bytes(chunk), list(frames), reader.pending, reader.streaming))
    return out


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.data(),
    st.sampled_from(
        [
            framing.ALL_TYPES,
            framing.ALL_TYPES_ROW_RUNS,
            framing.type_mask("ZE"),
            framing.type_mask("ZE", runs="D"),
            framing.type_mask(""),
        ]
    ),
    st.sampled_from([10, 30, 2**20]),
    st.sampled_from([6, 12, 64 * 1024]),
    st.booleans(),
    st.sampled_from([-1, 0, 1, 3, 100]),
)
def test_readers_agree_on_a_stream_cut_anywhere(
    data: st.DataObject, mask: bytes, max_size: int, large: int, limited: bool, room: int
) -> None:
    stream = data.draw(st.one_of(_framed, hostile()))
    cuts = sorted(data.draw(st.lists(st.integers(1, max(1, len(stream))), max_size=12)))
    parts = [
        p for p in (stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)) if p
    ]
    args = (parts, mask, max_size, large, limited, room)
    got = _feed_all(framing.FrameReader, *args)
    assert got == _feed_all(PyFrameReader, *args)
    relayed = b"".join(x[0] for x in got if isinstance(x[0], bytes))
    assert stream.startswith(relayed)  # in order, each byte once


def test_a_stream_cut_at_every_offset_gives_the_same_frames() -> None:
    stream = b"".join(
        msg(t, b) for t, b in [(0x44, b"\x00\x01\x00\x00\x00\x03abc"), (0x43, b"SELECT 1\0")] * 3
    ) + msg(0x5A, b"I")
    for mask in (framing.ALL_TYPES, framing.ALL_TYPES_ROW_RUNS):
        whole = _feed_all(framing.FrameReader, [stream], mask, 2**20, 64 * 1024, True, -1)
        for cut in range(1, len(stream)):
            for cls in (framing.FrameReader, PyFrameReader):
                got = _feed_all(cls, [stream[:cut], stream[cut:]], mask, 2**20, 64 * 1024, True, -1)
                assert b"".join(x[0] for x in got) == stream  # type: ignore[index]
                assert got == _feed_all(
                    PyFrameReader, [stream[:cut], stream[cut:]], mask, 2**20, 64 * 1024, True, -1
                )
        assert whole[0][0] == stream  # type: ignore[index]
