"""The compiled frame scanner and the pure-Python one must agree byte for byte."""

from __future__ import annotations

import struct
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbgate.wire import framing
from dbgate.wire.errors import LimitExceeded, ProtocolError, ServerProtocolError
from dbgate.wire.framing import (
    ALL_TYPES,
    ALL_TYPES_ROW_RUNS,
    DATA_ROW_RUN,
    FrameReader,
    count_messages,
    skip_messages,
    split_frames,
    type_mask,
)


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


# ------------------------------------------------------------------ folded runs


def _folded(frames: list[tuple[int, int, int]], runs: bytes) -> list[tuple[int, int, int]]:
    """What folding does to a list of frames: consecutive frames of a type in ``runs``
    become one ``(RUN | type, first body start, last body end)``."""
    out: list[tuple[int, int, int]] = []
    for t, s, e in frames:
        if t in runs and out and out[-1][0] == framing.RUN | t and consecutive(out[-1], s):
            out[-1] = (out[-1][0], out[-1][1], e)
        elif t in runs:
            out.append((framing.RUN | t, s, e))
        else:
            out.append((t, s, e))
    return out


def consecutive(run: tuple[int, int, int], body_start: int) -> bool:
    return run[2] == body_start - 5


@st.composite
def fold_masks(draw: st.DrawFn) -> bytes:
    """A mask over the test's message types: each selected (1), folded (2) or not (0)."""
    mask = bytearray(256)
    for t in b"DZSTCE1":
        mask[t] = draw(st.sampled_from([0, 1, 2]))
    return bytes(mask)


@settings(max_examples=300, deadline=None)
@given(messages, fold_masks())
def test_c_and_python_scanners_agree_on_folded_runs(
    msgs: list[tuple[int, bytes]], mask: bytes
) -> None:
    stream = b"".join(msg(t, b) for t, b in msgs) + b"D\x00\x00"
    c = framing._select(stream, 0, 1 << 20, mask)
    assert framing._py_scan(stream, 0, 1 << 20, mask) == c
    # folding is selecting every message of the type, then joining neighbours
    end, every = framing._py_scan(stream, 0, 1 << 20, ALL_TYPES)
    selected = [f for f in every if mask[f[0]]]
    assert c == (end, _folded(selected, bytes(t for t in range(256) if mask[t] == 2)))


@settings(max_examples=200, deadline=None)
@given(messages, st.lists(st.integers(1, 200), max_size=30))
def test_a_run_frame_covers_its_messages_whole(
    msgs: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    """Read in arbitrary pieces with DataRows folded: each run frame is exactly the
    DataRows of that read, framed, and counts them."""
    stream = b"".join(msg(t, b) for t, b in msgs)
    reader = FrameReader()
    pos = 0
    rows_seen: list[bytes] = []
    for cut in [*cuts, len(stream)]:
        part, pos = stream[pos : pos + cut], pos + cut
        chunk, frames = reader.feed_select(part, ALL_TYPES_ROW_RUNS)
        for t, s, e in frames:
            assert t != ord("D")
            if t == DATA_ROW_RUN:
                run = chunk[s - 5 : e]
                inner = split_frames(run)
                assert {f[0] for f in inner} == {ord("D")}
                assert count_messages(chunk, s - 5, e) == len(inner)
                rows_seen += [run[a:b] for _, a, b in inner]
        if pos >= len(stream):
            break
    assert rows_seen == [b for t, b in msgs if t == ord("D")]


@pytest.mark.parametrize("compiled", [True, False])
def test_count_and_skip_messages(compiled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not compiled:
        monkeypatch.setattr(framing, "_c_count", None)
        monkeypatch.setattr(framing, "_c_skip", None)
    rows = [msg(ord("D"), bytes(i)) for i in range(4)]
    buf = msg(ord("T"), b"x") + b"".join(rows) + msg(ord("C"), b"x")
    start = 6
    end = start + sum(len(r) for r in rows)
    assert count_messages(buf, start, end) == 4
    assert count_messages(buf, start, start) == 0
    assert skip_messages(buf, start, 0) == start
    assert skip_messages(buf, start, 2) == start + len(rows[0]) + len(rows[1])
    assert skip_messages(buf, start, 4) == end
    with pytest.raises(ValueError):
        count_messages(buf, start, end - 1)  # the last message is cut
    with pytest.raises(ValueError):
        count_messages(buf, start, len(buf) + 1)
    with pytest.raises(ValueError):
        skip_messages(buf, end, 2)  # only one message (the 'C') follows
    with pytest.raises(ValueError):
        skip_messages(buf, start, -1)


@pytest.mark.parametrize("compiled", [True, False])
def test_count_messages_with_a_split_last_message(
    compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not compiled:
        monkeypatch.setattr(framing, "_c_count", None)
    rows = [msg(ord("D"), bytes(i + 3)) for i in range(3)]
    buf = b"".join(rows)
    whole = len(rows[0]) + len(rows[1])
    for cut in range(whole + 5, len(buf)):  # the third row's header is there
        assert count_messages(buf, 0, cut, True) == 3
        with pytest.raises(ValueError):
            count_messages(buf, 0, cut)
    assert count_messages(buf, 0, len(buf), True) == 3  # whole: the flag changes nothing
    assert count_messages(buf, 0, whole, True) == 2
    for cut in range(whole + 1, whole + 5):  # not even its header: not a message
        with pytest.raises(ValueError):
            count_messages(buf, 0, cut, True)


class _Room:
    """A caller's run_room: what it would still pass, less what it was shown."""

    def __init__(self, left: int) -> None:
        self.left = left
        self.asked = 0

    def __call__(self) -> int:
        self.asked += 1
        return self.left


def _feed_counting(
    reader: FrameReader, stream: bytes, cuts: list[int], room: _Room | None
) -> tuple[bytes, int, int]:
    """Feed ``stream`` in pieces as the relay does with a row limit: returns what was
    relayed, how many DataRows the run frames counted, and how many reads ended in
    a split run."""
    reader.run_room = room
    relayed, counted, splits = [], 0, 0
    pos = 0
    for cut in [*cuts, len(stream)]:
        part, pos = stream[pos : pos + cut], pos + cut
        chunk, frames = reader.feed_select(part, ALL_TYPES_ROW_RUNS)
        relayed.append(chunk)
        for t, s, e in frames:
            if t == DATA_ROW_RUN:
                n = count_messages(chunk, s - 5, e, True)
                counted += n
                if room is not None:
                    room.left -= n
                try:
                    count_messages(chunk, s - 5, e)
                except ValueError:
                    splits += 1
                    # split only within the room: no row started past it
                    assert room is not None and room.left >= 0
        if pos >= len(stream):
            break
    return b"".join(relayed), counted, splits


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(max_size=20), min_size=1, max_size=60),
    st.lists(st.integers(1, 60), max_size=40),
    st.integers(0, 20),
)
def test_a_split_run_relays_every_byte_and_counts_every_row_once(
    bodies: list[bytes], cuts: list[int], left: int
) -> None:
    """A result read in arbitrary pieces under a row limit of ``left`` more rows: the
    reader may split a run only when every row it started fits in the room; the bytes
    relayed are the stream, each row is counted once (where it starts), and the rows
    counted never pass the room the caller gave while a run was split."""
    stream = (
        msg(ord("T"), b"t")
        + b"".join(msg(ord("D"), b) for b in bodies)
        + msg(ord("C"), b"SELECT")
        + msg(ord("Z"), b"I")
    )
    room = _Room(left)
    relayed, counted, splits = _feed_counting(FrameReader(), stream, cuts, room)
    assert relayed == stream
    assert counted == len(bodies)
    if splits:
        assert left >= 1  # no split without room
    # the same reads without a room: never split, the same count
    plain, counted_plain, no_splits = _feed_counting(FrameReader(), stream, cuts, None)
    assert (plain, counted_plain, no_splits) == (stream, len(bodies), 0)


def test_a_split_run_never_reaches_past_the_room() -> None:
    """Rows of 20 bytes read 105 bytes at a time (every read ends 5, 10 or 15 bytes
    into a row): with room for 1000 rows every read is relayed as it came, no byte
    copied; with room for 5 rows the first read, which starts 6 rows, is not split
    and the start of its sixth row is held back."""
    stream = b"".join(msg(ord("D"), bytes(15)) for _ in range(42))
    reads = [stream[i : i + 105] for i in range(0, len(stream), 105)]
    reader = FrameReader()
    reader.run_room = _Room(1000)
    for part in reads:
        chunk, frames = reader.feed_select(part, ALL_TYPES_ROW_RUNS)
        assert chunk is part
    assert reader.pending == 0 and reader.streaming == 0  # 840 bytes: the reads end on a row
    reader = FrameReader()
    reader.run_room = _Room(5)
    chunk, frames = reader.feed_select(reads[0], ALL_TYPES_ROW_RUNS)
    assert len(chunk) == 100 and frames == [(DATA_ROW_RUN, 5, 100)]
    assert reader.pending == 5 and reader.streaming == 0


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 300), st.lists(st.binary(max_size=120), max_size=8))
def test_c_and_python_collectors_agree(size: int, pieces: list[bytes]) -> None:
    compiled, python = framing.Collector(size), framing._PyCollector(size)
    for piece in pieces:  # pieces past ``size`` grow it, as the last read's tail does
        assert compiled.add(piece) == python.add(memoryview(piece)) == len(compiled)
    assert compiled.take() == python.take() == b"".join(pieces)
    for spent in (compiled, python):
        with pytest.raises(ValueError, match="taken"):
            spent.add(b"x")
        with pytest.raises(ValueError, match="taken"):
            spent.take()


def test_a_collected_message_is_held_once_while_it_arrives() -> None:
    """A long message is copied into one allocation of its size as its reads come:
    the reads are not kept, and it is not held twice while it is put together."""
    size, read = 8 << 20, 256 << 10
    message = msg(ord("Q"), b"x" * (size - 6) + b"\0")
    last = len(message) - read
    reader = FrameReader(16 << 20, on_collect=lambda n: None)
    mask = type_mask("Q")
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(0, last, read):  # each read a new object, as the socket's are
            assert reader.feed_select(message[i : i + read], mask) == (b"", [])
        chunk, frames = reader.feed_select(message[last:], mask)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert chunk == message and frames == [(ord("Q"), 5, len(message))]
    assert peak < len(message) + 2 * read


def _encoded_values(values: list[bytes | None]) -> bytes:
    out = struct.pack("!H", len(values))
    for v in values:
        out += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return out


@st.composite
def value_bodies(draw: st.DrawFn) -> bytes:
    """Counted values as a Bind or DataRow carries them, sometimes damaged: cut short,
    a length word overwritten, or noise."""
    body = _encoded_values(draw(st.lists(st.one_of(st.none(), st.binary(max_size=12)), max_size=6)))
    damage = draw(st.sampled_from(["none", "cut", "length", "noise"]))
    if damage == "cut":
        body = body[: draw(st.integers(0, len(body)))]
    elif damage == "length" and len(body) >= 6:
        at = draw(st.integers(2, len(body) - 4))
        body = (
            body[:at] + struct.pack("!i", draw(st.integers(-(2**31), 2**31 - 1))) + body[at + 4 :]
        )
    elif damage == "noise":
        body = draw(st.binary(max_size=40))
    return body


def _outcome(fn: object, *args: object) -> object:
    try:
        return fn(*args)  # type: ignore[operator]
    except (ValueError, ProtocolError):
        return "malformed"


@settings(max_examples=400, deadline=None)
@given(value_bodies(), st.binary(max_size=6))
def test_c_and_python_value_readers_agree(body: bytes, prefix: bytes) -> None:
    """The compiled reader of counted values gives exactly what the Python loop does,
    and finds a body malformed exactly when the loop does."""
    from dbgate.wire import _scan, primitives

    data = prefix + body
    saved = primitives._c_values
    primitives._c_values = None
    try:
        expected = _outcome(
            primitives.values_at, data, len(prefix), "DataRow", "column", ServerProtocolError
        )
    finally:
        primitives._c_values = saved
    assert _outcome(_scan.values, data, len(prefix)) == expected


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=8),
    st.binary(max_size=8),
    st.lists(st.integers(0, 1), max_size=3),
    value_bodies(),
)
def test_c_and_python_bind_readers_agree(
    portal: bytes, name: bytes, formats: list[int], values: bytes
) -> None:
    from dbgate.wire import codec

    body = (
        portal.replace(b"\0", b"")
        + b"\0"
        + name.replace(b"\0", b"")
        + b"\0"
        + struct.pack(f"!H{len(formats)}H", len(formats), *formats)
        + values
        + b"\x00\x00"
    )
    saved = codec._c_bind_values
    codec._c_bind_values = None
    try:
        expected = _outcome(codec.bind_params, body)
    finally:
        codec._c_bind_values = saved
    from dbgate.wire import _scan

    assert _outcome(_scan.bind_values, body) == expected
    # bytes are read in place, other buffers through the buffer protocol: the same
    assert _outcome(_scan.bind_values, bytearray(body)) == expected
    assert _outcome(_scan.bind_values, memoryview(body)) == expected
