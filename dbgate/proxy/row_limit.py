"""Counting a result's rows toward a limit, as a row rewriter; runs of rows.

A statement allowed with ``Allow(max_rows=N)`` gets a :class:`RowLimiter` for its
result (wrapping the result plan's own rewriter, if any). Rows up to the limit pass
(rewritten by the plan when there is one); from the first row past it, every row is
dropped and the tracker is told once, so it can cancel the statement upstream and
fail it for the client (see :mod:`dbgate.proxy.tracker`). A portal executed in
row-limited steps keeps one limiter, so the limit counts across its Executes; it
starts from the rows of the portal's earlier Executes that could not reach the limit
and were only counted (the tracker's "counted" Executes need no limiter at all).

While a rewriter is active the relay reads the server's DataRows folded into runs
(:data:`dbgate.wire.framing.DATA_ROW_RUN`): one frame per run of consecutive rows in
a read. :func:`rewrite_run` hands a run to a rewriter in one call when it has a
``data_rows`` method (the limiter counts a run with the compiled scanner, the PII
rewriter rewrites it in C), and row by row otherwise, so a million rows under a
limit cost a few hundred Python calls, not a million.
"""

from __future__ import annotations

from collections.abc import Callable

from dbgate.proxy.seams import RowRewriter
from dbgate.wire.framing import count_messages, skip_messages, split_frames


def rewrite_run(rewriter: object, chunk: bytes, start: int, end: int) -> bytes | None:
    """The bytes to send instead of the DataRow messages ``chunk[start:end]``
    (complete, framed), or None to send them unchanged.

    A rewriter may offer ``data_rows(chunk, start, end)`` with this contract;
    otherwise its ``data_row`` is called for each row (None from it drops the row).
    """
    data_rows = getattr(rewriter, "data_rows", None)
    if data_rows is not None:
        return data_rows(chunk, start, end)  # type: ignore[no-any-return]
    data_row = rewriter.data_row  # type: ignore[attr-defined]
    run = chunk[start:end]
    out: list[bytes] = []
    copied = 0
    for _t, s, e in split_frames(run):
        body = run[s:e]
        new = data_row(body)
        if new is body:
            continue
        out.append(run[copied : s - 5])
        if new is not None:
            out.append(b"D" + (len(new) + 4).to_bytes(4, "big") + new)
        copied = e
    if not out:
        return None
    out.append(run[copied:])
    return b"".join(out)


class RowLimiter:
    """A :class:`~dbgate.proxy.seams.RowRewriter` that returns None for rows to drop."""

    __slots__ = ("hit", "inner", "limit", "on_hit", "rows", "taken")

    def __init__(
        self,
        inner: RowRewriter | None,
        limit: int,
        on_hit: Callable[[RowLimiter], None],
        rows: int = 0,
    ) -> None:
        self.inner = inner
        self.limit = limit
        self.rows = rows  # counted before this limiter took over (earlier Executes)
        self.taken = rows  # rows already attributed to a statement record (take_forwarded)
        self.hit = False
        self.on_hit = on_hit

    def take_forwarded(self) -> int:
        """Rows forwarded to the client since the last call: what an Execute that
        ended without a row count (suspended, failed, stopped) returned."""
        n = min(self.rows, self.limit) - self.taken
        self.taken += n
        return n

    def _count(self) -> bool:
        self.rows += 1
        if self.rows <= self.limit:
            return True
        if not self.hit:
            self.hit = True
            self.on_hit(self)
        return False

    def data_row(self, body: bytes) -> bytes | None:  # type: ignore[override]
        if not self._count():
            return None
        return body if self.inner is None else self.inner.data_row(body)

    def data_rows(self, chunk: bytes, start: int, end: int) -> bytes | None:
        """A run of DataRows (see :func:`rewrite_run`): counted in one call, the rows
        within the limit rewritten by the inner rewriter, the rest dropped."""
        # A run the relay's reader split ends inside its last row (the row's rest
        # comes first in the next read): it is counted here, where it starts.
        n = count_messages(chunk, start, end, True)
        room = self.limit - self.rows
        self.rows += n
        if n <= room:
            return None if self.inner is None else rewrite_run(self.inner, chunk, start, end)
        try:
            count_messages(chunk, start, end)  # complete rows only: not a split run
        except ValueError:
            # The reader splits a run only when its limiter said that all of it
            # passes (run_room): a split run over the limit is a bug, and the rest of
            # its last row would reach the client. Fail closed.
            raise RuntimeError("a split run of rows passed its row limit") from None
        kept = b""
        if room > 0:  # the rows before the first one past the limit still pass
            cut = skip_messages(chunk, start, room)
            new = None if self.inner is None else rewrite_run(self.inner, chunk, start, cut)
            kept = chunk[start:cut] if new is None else new
        if not self.hit:
            self.hit = True
            self.on_hit(self)
        return kept

    def copy_data(self, body: bytes) -> bytes | None:  # type: ignore[override]
        if not self._count():
            return None
        return body if self.inner is None else self.inner.copy_data(body)
