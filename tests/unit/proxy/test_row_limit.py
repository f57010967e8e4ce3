"""Runs of rows through a rewriter: in one call (``data_rows``) or row by row, the
client gets the same bytes, and a row limit counts, cuts and reports the same way."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbgate.proxy.row_limit import RowLimiter, rewrite_run
from dbgate.wire import messages as m
from dbgate.wire.framing import split_frames


class Tag:
    """Row by row only (no ``data_rows``): prefixes the first column, drops rows whose
    first column is ``b"drop"``."""

    def data_row(self, body: bytes) -> bytes | None:
        cols = m.parse_data_row(body)
        if cols and cols[0] == b"drop":
            return None
        if not cols or cols[0] is None or cols[0] == b"keep":
            return body  # unchanged: the same object
        return m.data_row([b"T:" + cols[0], *cols[1:]])[5:]

    def copy_data(self, body: bytes) -> bytes:  # pragma: no cover - no COPY here
        return body


class TagRuns(Tag):
    """The same rewriter with ``data_rows``, as the PII rewriter has."""

    def __init__(self) -> None:
        self.calls = 0

    def data_rows(self, chunk: bytes, start: int, end: int) -> bytes | None:
        self.calls += 1
        return rewrite_run(Tag(), chunk, start, end)


def one_by_one(rewriter: object, rows: list[bytes]) -> bytes:
    """What the client gets when each row is handed over on its own."""
    out = b""
    for row in rows:
        new = rewriter.data_row(row[5:])  # type: ignore[attr-defined]
        if new is not None:
            out += b"D" + (len(new) + 4).to_bytes(4, "big") + new
    return out


def in_runs(rewriter: object, rows: list[bytes], cuts: list[int], pad: bytes) -> bytes:
    """The same rows handed over as runs (between ``cuts``), each inside a larger read."""
    out = b""
    bounds = sorted({0, len(rows), *(c % (len(rows) + 1) for c in cuts)})
    for a, b in itertools.pairwise(bounds):
        run = b"".join(rows[a:b])
        chunk = pad + run + pad
        new = rewrite_run(rewriter, chunk, len(pad), len(pad) + len(run))
        out += run if new is None else new
    return out


firsts = st.one_of(st.none(), st.sampled_from([b"drop", b"keep", b"a", b""]), st.binary(max_size=8))
row_lists = st.lists(
    st.tuples(firsts, st.one_of(st.none(), st.binary(max_size=8))), min_size=1, max_size=40
).map(lambda rows: [m.data_row(list(r)) for r in rows])
PAD = b"Z\x00\x00\x00\x05I"  # a ReadyForQuery around each run: runs sit inside reads


@settings(max_examples=300, deadline=None)
@given(row_lists, st.lists(st.integers(0, 40), max_size=6))
def test_runs_equal_row_by_row(rows: list[bytes], cuts: list[int]) -> None:
    assert in_runs(Tag(), rows, cuts, PAD) == one_by_one(Tag(), rows)
    assert in_runs(TagRuns(), rows, cuts, PAD) == one_by_one(Tag(), rows)


def test_an_unchanged_run_is_none_and_rows_with_data_rows_take_one_call() -> None:
    rows = b"".join(m.data_row([b"keep", b"x"]) for _ in range(5))
    assert rewrite_run(Tag(), rows, 0, len(rows)) is None
    rw = TagRuns()
    assert rewrite_run(rw, rows, 0, len(rows)) is None
    assert rw.calls == 1


@settings(max_examples=300, deadline=None)
@given(
    row_lists,
    st.lists(st.integers(0, 40), max_size=6),
    st.integers(0, 45),
    st.sampled_from(["none", "rows", "runs"]),
)
def test_a_limit_over_runs_counts_cuts_and_reports_as_row_by_row(
    rows: list[bytes], cuts: list[int], limit: int, inner: str
) -> None:
    def make(hits: list[int]) -> RowLimiter:
        wrapped = {"none": None, "rows": Tag(), "runs": TagRuns()}[inner]
        return RowLimiter(wrapped, limit, lambda lim: hits.append(lim.rows))  # type: ignore[arg-type]

    hits_a: list[int] = []
    hits_b: list[int] = []
    a, b = make(hits_a), make(hits_b)
    assert in_runs(a, rows, cuts, PAD) == one_by_one(b, rows)
    assert a.rows == b.rows == len(rows)
    assert a.hit == b.hit == (len(rows) > limit)
    assert len(hits_a) == len(hits_b) == (1 if len(rows) > limit else 0)
    # the rows within the limit are sent (less those the rewriter drops), none after
    sent = in_runs(make([]), rows, cuts, PAD)
    within = rows[:limit]
    if inner != "none":
        within = [r for r in within if m.parse_data_row(r[5:])[0] != b"drop"]
    assert len(split_frames(sent)) == len(within)


def test_a_split_run_counts_its_last_row_where_it_starts() -> None:
    """The relay's reader may end a run inside its last row when the limiter has
    room for all of it (FrameReader.run_room): that row is counted in this run, and
    the run passes unchanged."""
    rows = b"".join(m.data_row([b"x" * 10]) for _ in range(4))
    cut = len(rows) - 3  # inside the fourth row, past its header
    limiter = RowLimiter(None, 4, lambda lim: None)
    assert limiter.data_rows(rows, 0, cut) is None
    assert limiter.rows == 4 and not limiter.hit


def test_a_split_run_past_the_limit_fails_closed() -> None:
    """Were a split run over the limit, the rest of its last row would reach the
    client in the next read whatever the limiter dropped: it refuses instead."""
    rows = b"".join(m.data_row([b"x" * 10]) for _ in range(4))
    hits: list[int] = []
    limiter = RowLimiter(None, 3, lambda lim: hits.append(lim.rows))
    with pytest.raises(RuntimeError, match="split run"):
        limiter.data_rows(rows, 0, len(rows) - 3)
    # a whole run past the limit is cut as always
    limiter = RowLimiter(None, 3, lambda lim: hits.append(lim.rows))
    kept = limiter.data_rows(rows, 0, len(rows))
    assert kept == rows[: 3 * len(m.data_row([b"x" * 10]))] and hits == [4]
