"""The compiled DataRow loop (dbgate/pii/_rows.c) against its Python reference
(dbgate/pii/rows.py) on rows a hostile or broken server could send: column counts and
value lengths that disagree with the body (truncated length words, values past the
end, negative lengths other than -1, lengths near 2**31), split or corrupted framing.
Both give the same bytes or both raise ValueError; nothing reads past a body."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbgate.pii.pseudonyms import Pseudonymizer, TypeRegistry
from dbgate.pii.rows import ColumnAction, RowRewriter, ValueCache
from dbgate.pii.tokens import Key, Keyring, Tokenizer
from dbgate.wire.messages import data_row

rows_c = pytest.importorskip("dbgate.pii._rows", reason="the C row loop is optional (no compiler)")

KEY = Key("k", b"q" * 32)
#: length words that a well-formed row never holds, or holds only at the edges
LENGTHS = [-1, -2, -5, 0, 1, 3, 4, 0x7FFFFFFF, -0x80000000, 0x7FFFFFF0, 200, 65535]


@st.composite
def hostile_bodies(draw: st.DrawFn, width: int) -> bytes:
    """A DataRow body of about ``width`` columns, then up to three faults."""
    row = draw(st.lists(st.one_of(st.none(), st.binary(max_size=140)), max_size=width + 2))
    body = bytearray(data_row(row)[5:])
    for _ in range(draw(st.integers(0, 3))):
        fault = draw(st.integers(0, 4))
        if fault == 0 and len(body) >= 2:
            ncols = draw(st.sampled_from([0, 1, width, width + 1, 0xFFFF]))
            body[0:2] = struct.pack("!H", ncols)
        elif fault == 1 and len(body) > 6:
            at = draw(st.integers(2, len(body) - 4))
            body[at : at + 4] = struct.pack("!i", draw(st.sampled_from(LENGTHS)))
        elif fault == 2:
            body = body[: draw(st.integers(0, len(body)))]
        elif fault == 3:
            body += draw(st.binary(max_size=8))
        elif fault == 4 and body:
            body[draw(st.integers(0, len(body) - 1))] = draw(st.integers(0, 255))
    return bytes(body)


def _outcome(fn: Callable[..., object], *args: object) -> tuple[str, object]:
    try:
        return "ok", fn(*args)
    except ValueError:
        return "ValueError", None


def _pair(actions: list[ColumnAction], width: int, mode: str) -> tuple[RowRewriter, RowRewriter]:
    """The compiled rewriter and a reference with its own tokenizer and caches."""
    made = []
    for _ in range(2):
        p = Pseudonymizer(Tokenizer(Keyring([KEY]), mode), TypeRegistry())
        made.append(RowRewriter(actions, width, p, ValueCache()))
    return made[0], made[1]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(1, 6),
    st.data(),
    st.sampled_from(["hashed", "reversible"]),
    st.booleans(),
)
def test_compiled_loop_equals_python_on_hostile_rows(
    width: int, data: st.DataObject, mode: str, simd: bool
) -> None:
    pii = sorted(data.draw(st.sets(st.integers(0, width - 1))))
    oids = [data.draw(st.sampled_from([25, 1043, 17, 23])) for _ in pii]
    actions = [ColumnAction(i, "email", oid, 0) for i, oid in zip(pii, oids, strict=True)]
    compiled, reference = _pair(actions, width, mode)
    bodies = data.draw(st.lists(hostile_bodies(width), min_size=1, max_size=4))
    default = rows_c.use_simd(True)
    try:
        rows_c.use_simd(simd)
        for body in bodies:
            assert _outcome(compiled.data_row, body) == _outcome(reference.data_row_py, body)
        buf = bytearray(b"".join(b"D" + struct.pack("!I", len(b) + 4) + b for b in bodies))
        if buf and data.draw(st.booleans()):  # broken framing
            buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
        start = data.draw(st.integers(0, 3))
        end = data.draw(st.integers(max(0, len(buf) - 3), len(buf) + 1))
        got = _outcome(compiled.data_rows, bytes(buf), start, end)
        assert got == _outcome(reference.data_rows_py, bytes(buf), start, end)
    finally:
        rows_c.use_simd(default)


@pytest.mark.parametrize(
    ("body", "positions"),
    [
        # two columns; the second (not PII) says 1 byte where none is left
        (b"\x00\x02\x00\x00\x00\x01a\x00\x00\x00\x01", [2]),
        (b"\x00\x03\x00\x00\x00\x01a\x00\x00\x00\x05ab", [2]),
        # a length word cut short before the PII column
        (b"\x00\x03\x00\x00\x00\x01a\x00\x00", [2]),
        # a negative length other than -1 (NULL), on the PII column or before it
        (b"\x00\x02\xff\xff\xff\xfe\x00\x00\x00\x01a", [0]),
        (b"\x00\x02\xff\xff\xff\xfe\x00\x00\x00\x01a", [1]),
        (b"\x00\x02\x80\x00\x00\x00\x00\x00\x00\x01a", [1]),
        # a length near 2**31 on the PII column
        (b"\x00\x01\x7f\xff\xff\xff" + b"x" * 16, [0]),
    ],
)
@pytest.mark.parametrize("mode", ["hashed", "reversible"])
def test_a_row_that_does_not_parse_up_to_its_last_pii_column_is_refused(
    body: bytes, positions: list[int], mode: str
) -> None:
    """Compiled and Python alike: a ValueError (the relay then ends the session), never
    the row passed on as it came."""
    actions = [ColumnAction(i, "email", 25, 0) for i in positions]
    compiled, reference = _pair(actions, 3, mode)
    for rewrite in (compiled.data_row, reference.data_row_py):
        with pytest.raises(ValueError):
            rewrite(body)
    framed = b"D" + struct.pack("!I", len(body) + 4) + body
    for rewrite_run in (compiled.data_rows, reference.data_rows_py):
        with pytest.raises(ValueError):
            rewrite_run(framed, 0, len(framed))


@pytest.mark.parametrize("body", [b"", b"\x00", b"\x00\x00"])
def test_empty_and_short_bodies(body: bytes) -> None:
    compiled, reference = _pair([ColumnAction(0, "email", 25, 0)], 1, "hashed")
    assert compiled.data_row(body) == reference.data_row_py(body) == body


def test_a_run_with_no_pii_column_must_still_be_whole_messages() -> None:
    compiled, reference = _pair([], 1, "hashed")
    cut = b"D\x00\x00\x00\x06\x00\x00"[:-1]  # the message claims one byte more
    for rewrite_run in (compiled.data_rows, reference.data_rows_py):
        with pytest.raises(ValueError):
            rewrite_run(cut, 0, len(cut))
        whole = b"D\x00\x00\x00\x06\x00\x00"
        assert rewrite_run(whole, 0, len(whole)) is None
