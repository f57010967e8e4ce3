"""Rewriting DataRow bodies: only the PII columns are touched, everything else is copied.

This is the hot path of a result with PII. What keeps it cheap:

* the relay hands over *runs* of DataRows (every row of one read, framed) and
  :meth:`RowRewriter.data_rows` rewrites a run in one call: with the compiled loop
  no Python object is made per row, only per distinct value;
* the plan lists the PII column positions once; columns before, between and after
  them are copied as whole slices of the body, never decoded;
* each replacement is cached per (entity, type, format, mode) under its raw bytes
  (values up to :data:`CACHE_VALUE_BYTES`), so a value repeated across rows (a
  customer on each of their orders) costs a dict lookup; the cache forgets when the
  tokenizer forgets, so it never shows a token that no longer resolves (see
  ``Tokenizer.on_forget``).

``dbgate.pii._rows`` (C, optional) does the same walk when it is built, and computes
hashed tokens of string columns itself (BLAKE2b, the same bytes as hashlib); the
Python version here is the reference, and property tests check both agree byte for
byte.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from dbgate.pii.pseudonyms import TEXT, Pseudonymizer

__all__ = ["ColumnAction", "RowRewriter", "ValueCache"]

try:  # the compiled loop (dbgate/pii/_rows.c); optional, same results
    from dbgate.pii._rows import IssuedTokens as _c_issued
    from dbgate.pii._rows import keyed_state as _c_keyed_state
    from dbgate.pii._rows import rewrite as _c_rewrite
    from dbgate.pii._rows import rewrite_rows as _c_rewrite_rows
except ImportError:  # pragma: no cover - depends on the build
    _c_rewrite = _c_keyed_state = _c_rewrite_rows = _c_issued = None

_I32 = struct.Struct("!i")
_unpack_i32 = _I32.unpack_from
_pack_i32 = _I32.pack
_U32 = struct.Struct("!I")
_U16 = struct.Struct("!H")

#: Replacements of values up to this size are cached.
CACHE_VALUE_BYTES = 256
#: Entries per (entity, type, format) cache before it is emptied and refilled.
CACHE_ENTRIES = 65_536


@dataclass(frozen=True, slots=True)
class ColumnAction:
    """What to do with one column of a result: replace it whole, or detect inside it."""

    index: int
    entity: str
    type_oid: int
    format: int
    #: "token": the column's stored value, the same token for the same value (joins
    #: and filters on tokens work); "fresh": a value derived from PII, a new token or
    #: pseudonym each time (see ``dbgate.pii.tokens.FreshTokens``); "detect": only
    #: what the content detectors find inside it is replaced
    mode: str = "token"


class ValueCache:
    """Replacement bytes keyed by raw value, one table per kind of column.

    Shared by every result of a room: the same e-mail in the next query is a hit.
    """

    def __init__(self) -> None:
        self.tables: dict[tuple[str, int, int, str], dict[bytes, bytes]] = {}

    def table(self, action: ColumnAction) -> dict[bytes, bytes]:
        key = (action.entity, action.type_oid, action.format, action.mode)
        table = self.tables.get(key)
        if table is None:
            table = self.tables[key] = {}
        return table

    def clear(self) -> None:
        """Start afresh (a new schema): rewriters made from now on get new tables."""
        self.tables.clear()

    def forget(self) -> None:
        """Empty every table in place, those of running rewriters too: the tokenizer
        forgot tokens (``Tokenizer.on_forget``) that some of them may hold."""
        for table in list(self.tables.values()):
            table.clear()


class RowRewriter:
    """Rewrites the DataRows of one result set (a ``RowRewriter`` of proxy/seams.py)."""

    __slots__ = (
        "_args",
        "_fns",
        "_last",
        "_nulls",
        "_positions",
        "_tables",
        "actions",
        "data_row",
        "data_rows",
        "ncols",
    )

    def __init__(
        self,
        actions: list[ColumnAction],
        ncols: int,
        pseudonymizer: Pseudonymizer,
        cache: ValueCache,
        detect: Callable[[bytes], bytes] | None = None,
        fresh: Pseudonymizer | None = None,
    ) -> None:
        self.actions = sorted(actions, key=lambda a: a.index)
        self.ncols = ncols
        self._positions = [a.index for a in self.actions]
        self._last = self._positions[-1] if self._positions else -1
        # a fresh value is never cached: the same value must not give the same token
        # (nor what the detectors find, which get fresh tokens)
        self._tables: list[dict[bytes, bytes] | None] = [
            None if a.mode in ("fresh", "detect") else cache.table(a) for a in self.actions
        ]
        fns: list[Callable[[bytes], bytes]] = []
        for a in self.actions:
            if a.mode == "detect" and detect is not None:
                fns.append(detect)
            elif a.mode == "fresh":
                if fresh is None:
                    raise ValueError("a column of derived values needs the fresh pseudonymizer")
                fns.append(_replacer(fresh, a))
            else:
                fns.append(_replacer(pseudonymizer, a))
        self._fns = fns
        # a NULL where a derived value would be is made by the same expression: it
        # gets a fresh stand-in, or it would say what the value's token does not
        # (``CASE WHEN ascii(...) & (1 << b) <> 0 THEN 1 END`` beside ``b``)
        self._nulls: list[Callable[[], bytes] | None] = [
            (lambda a=a: fresh.null(a.entity, a.type_oid, a.format))  # type: ignore[misc]
            if a.mode == "fresh" and fresh is not None
            else None
            for a in self.actions
        ]
        specs: list[object] = list(fns)
        for i, a in enumerate(self.actions):
            if (
                _c_keyed_state is not None
                and a.mode == "token"
                and pseudonymizer.types.kind(a.type_oid) == TEXT
                and (pseudonymizer.tokenizer.mode == "hashed")
            ):
                prefix, key, person, issued, limit = pseudonymizer.tokenizer.hasher_spec(a.entity)
                if not isinstance(issued, _c_issued):  # pragma: no cover - mixed builds
                    continue
                # the last item: the column's cache hit counters (see _rows.c)
                stats = bytearray(24)
                state = _c_keyed_state(key, person)
                specs[i] = (prefix, state, person, issued, limit, key, stats)
        self._args = (tuple(self._positions), tuple(self._tables), tuple(specs))
        # the compiled loop when built (it caches every value), else the Python reference
        compiled = (
            _c_rewrite is not None
            and _c_rewrite_rows is not None
            and all(a.mode == "token" for a in self.actions)
        )
        self.data_row = self._data_row_c if compiled else self.data_row_py
        self.data_rows = self._data_rows_c if compiled else self.data_rows_py

    def _data_row_c(self, body: bytes) -> bytes:
        positions, tables, fns = self._args
        return _c_rewrite(body, positions, tables, fns, CACHE_VALUE_BYTES, CACHE_ENTRIES)  # type: ignore[misc]

    def _data_rows_c(self, buf: bytes, start: int, end: int) -> bytes | None:
        positions, tables, fns = self._args
        return _c_rewrite_rows(  # type: ignore[misc]
            buf, start, end, positions, tables, fns, CACHE_VALUE_BYTES, CACHE_ENTRIES
        )

    def replace(self, slot: int, raw: bytes) -> bytes:
        """The replacement for ``raw`` in PII slot ``slot`` (cached)."""
        table = self._tables[slot]
        if table is None:
            return self._fns[slot](raw)
        out = table.get(raw)
        if out is None:
            out = self._fns[slot](raw)
            if len(raw) <= CACHE_VALUE_BYTES:
                if len(table) >= CACHE_ENTRIES:
                    table.clear()
                table[raw] = out
        return out

    def data_row_py(self, body: bytes) -> bytes:
        """The rewritten DataRow body (same column count); the reference version."""
        positions = self._positions
        if not positions:
            return body
        size = len(body)
        if size < 2:
            return body
        ncols = (body[0] << 8) | body[1]
        pos = 2
        col = 0
        parts: list[bytes] = []
        copied = 0  # start of the not-yet-copied stretch of ``body``
        slot = 0
        target = positions[0]
        nslots = len(positions)
        while slot < nslots and col < ncols:
            # every fault is a ValueError, where the compiled loop raises one too
            if pos + 4 > size:
                raise ValueError("DataRow value length runs past the body")
            length = _unpack_i32(body, pos)[0]
            if length < -1:
                raise ValueError(f"DataRow value length {length}")
            if col == target:
                if length >= 0:
                    end = pos + 4 + length
                    if end > size:
                        raise ValueError("DataRow value runs past the body")
                    new = self.replace(slot, body[pos + 4 : end])
                    parts.append(body[copied:pos])
                    parts.append(_pack_i32(len(new)))
                    parts.append(new)
                    copied = pos = end
                else:
                    null = self._nulls[slot]
                    if null is not None:
                        new = null()
                        parts.append(body[copied:pos])
                        parts.append(_pack_i32(len(new)))
                        parts.append(new)
                        copied = pos + 4
                    pos += 4
                slot += 1
                if slot < nslots:
                    target = positions[slot]
            else:
                pos += 4 + (length if length > 0 else 0)
                if pos > size:
                    raise ValueError("DataRow value runs past the body")
            col += 1
        if not parts:
            return body
        parts.append(body[copied:])
        return b"".join(parts)

    def data_rows_py(self, buf: bytes, start: int, end: int) -> bytes | None:
        """``buf[start:end]`` (complete framed messages) with every DataRow rewritten,
        or None when nothing changed; the reference version of :attr:`data_rows`
        (the relay's contract: ``dbgate.proxy.row_limit.rewrite_run``)."""
        if start < 0 or end > len(buf) or start > end:
            raise ValueError("start and end must lie within the buffer")
        out: list[bytes] = []
        pos = start
        copied = start
        data_row = self.data_row_py
        while pos < end:
            if end - pos < 5:
                raise ValueError("incomplete message in DataRow buffer")
            length = _U32.unpack_from(buf, pos + 1)[0]
            if length < 4 or length > end - pos - 1:
                raise ValueError("incomplete message in DataRow buffer")
            nxt = pos + 1 + length
            if buf[pos] == 0x44:  # 'D'
                body = buf[pos + 5 : nxt]
                new = data_row(body)
                if new is not body:
                    out.append(buf[copied:pos])
                    out.append(b"D" + _U32.pack(len(new) + 4) + new)
                    copied = nxt
            pos = nxt
        if not out:
            return None
        out.append(buf[copied:end])
        return b"".join(out)

    def copy_data(self, body: bytes) -> bytes:
        """Rows of a result set never arrive as CopyData; kept for the seam's shape."""
        return body


def _replacer(p: Pseudonymizer, a: ColumnAction) -> Callable[[bytes], bytes]:
    entity, oid, fmt = a.entity, a.type_oid, a.format
    if p.types.kind(oid) == TEXT and p.tokenizer.mode == "hashed":
        return p.tokenizer.hasher(entity)  # string types: the token itself, no dispatch
    value = p.value

    def replace(raw: bytes) -> bytes:
        return value(entity, oid, fmt, raw)

    return replace
