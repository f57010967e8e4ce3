"""Counting a result's rows toward a limit, as a row rewriter.

A statement allowed with ``Allow(max_rows=N)`` gets a :class:`RowLimiter` for its
result (wrapping the result plan's own rewriter, if any). Rows up to the limit pass
(rewritten by the plan when there is one); from the first row past it, every row is
dropped and the tracker is told once, so it can cancel the statement upstream and
fail it for the client (see :mod:`dbgate.proxy.tracker`). A portal executed in
row-limited steps keeps one limiter, so the limit counts across its Executes.
"""

from __future__ import annotations

from collections.abc import Callable

from dbgate.proxy.seams import RowRewriter


class RowLimiter:
    """A :class:`~dbgate.proxy.seams.RowRewriter` that returns None for rows to drop."""

    __slots__ = ("hit", "inner", "limit", "on_hit", "rows", "taken")

    def __init__(
        self, inner: RowRewriter | None, limit: int, on_hit: Callable[[RowLimiter], None]
    ) -> None:
        self.inner = inner
        self.limit = limit
        self.rows = 0
        self.taken = 0  # rows already attributed to a statement record (take_forwarded)
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

    def copy_data(self, body: bytes) -> bytes | None:  # type: ignore[override]
        if not self._count():
            return None
        return body if self.inner is None else self.inner.copy_data(body)
