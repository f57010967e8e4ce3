"""Rewriting DataRow bodies: only the PII columns are touched, everything else is copied.

This is the hot path of a result with PII: one call per row. What keeps it cheap:

* the plan lists the PII column positions once; columns before, between and after
  them are copied as whole slices of the body, never decoded;
* each replacement is cached per (entity, type, format) under its raw bytes, so a
  value repeated across rows (a customer on each of their orders) costs a dict lookup;
* :meth:`RowRewriter.data_rows` rewrites a whole buffer of framed messages in one
  call, for relays that hand over runs of DataRows instead of one message at a time.

``dbgate.pii._rows`` (C, optional) does the same walk when it is built; the Python
version here is the reference, and a property test checks both agree byte for byte.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from dbgate.pii.pseudonyms import TEXT, Pseudonymizer

__all__ = ["ColumnAction", "RowRewriter", "ValueCache"]

try:  # the compiled loop (dbgate/pii/_rows.c); optional, same results
    from dbgate.pii._rows import keyed_state as _c_keyed_state
    from dbgate.pii._rows import rewrite as _c_rewrite
except ImportError:  # pragma: no cover - depends on the build
    _c_rewrite = _c_keyed_state = None

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
    mode: str = "token"  # "token" | "detect"


class ValueCache:
    """Replacement bytes, *with* their 4-byte length prefix, keyed by raw value.

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
        self.tables.clear()


class RowRewriter:
    """Rewrites the DataRows of one result set (a ``RowRewriter`` of proxy/seams.py)."""

    __slots__ = ("_args", "_fns", "_last", "_positions", "_tables", "actions", "data_row", "ncols")

    def __init__(
        self,
        actions: list[ColumnAction],
        ncols: int,
        pseudonymizer: Pseudonymizer,
        cache: ValueCache,
        detect: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.actions = sorted(actions, key=lambda a: a.index)
        self.ncols = ncols
        self._positions = [a.index for a in self.actions]
        self._last = self._positions[-1] if self._positions else -1
        self._tables = [cache.table(a) for a in self.actions]
        fns: list[Callable[[bytes], bytes]] = []
        for a in self.actions:
            if a.mode == "detect" and detect is not None:
                fns.append(detect)
            else:
                fns.append(_replacer(pseudonymizer, a))
        self._fns = fns
        specs: list[object] = list(fns)
        for i, a in enumerate(self.actions):
            if (
                _c_keyed_state is not None
                and a.mode != "detect"
                and pseudonymizer.types.kind(a.type_oid) == TEXT
                and (pseudonymizer.tokenizer.mode == "hashed")
            ):
                prefix, key, person, *rest = pseudonymizer.tokenizer.hasher_spec(a.entity)
                specs[i] = (prefix, _c_keyed_state(key, person), person, *rest, key)
        self._args = (tuple(self._positions), tuple(self._tables), tuple(specs))
        # the compiled loop when built (and fewer than 1600 PII columns), else Python
        self.data_row = (
            self._data_row_c if (_c_rewrite is not None and len(fns) <= 1600) else self.data_row_py
        )

    def _data_row_c(self, body: bytes) -> bytes:
        positions, tables, fns = self._args
        return _c_rewrite(body, positions, tables, fns, CACHE_VALUE_BYTES, CACHE_ENTRIES)  # type: ignore[misc]

    def replace(self, slot: int, raw: bytes) -> bytes:
        """Length-prefixed replacement for ``raw`` in PII slot ``slot`` (cached)."""
        table = self._tables[slot]
        out = table.get(raw)
        if out is None:
            new = self._fns[slot](raw)
            out = _pack_i32(len(new)) + new
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
            length = _unpack_i32(body, pos)[0]
            if col == target:
                if length >= 0:
                    end = pos + 4 + length
                    if end > size:
                        raise ValueError("DataRow value runs past the body")
                    parts.append(body[copied:pos])
                    parts.append(self.replace(slot, body[pos + 4 : end]))
                    copied = pos = end
                else:
                    pos += 4
                slot += 1
                if slot < nslots:
                    target = positions[slot]
            else:
                pos += 4 + (length if length > 0 else 0)
            col += 1
        if not parts:
            return body
        parts.append(body[copied:])
        return b"".join(parts)

    def data_rows(self, buf: bytes) -> bytes:
        """Rewrite every DataRow in a buffer of complete framed backend messages."""
        out: list[bytes] = []
        pos = 0
        size = len(buf)
        copied = 0
        data_row = self.data_row
        while pos + 5 <= size:
            length = _U32.unpack_from(buf, pos + 1)[0]
            end = pos + 1 + length
            if end > size:
                raise ValueError("incomplete message in DataRow buffer")
            if buf[pos] == 0x44:  # 'D'
                body = buf[pos + 5 : end]
                new = data_row(body)
                if new is not body:
                    out.append(buf[copied:pos])
                    out.append(b"D" + _U32.pack(len(new) + 4) + new)
                    copied = end
            pos = end
        if pos != size:
            raise ValueError("incomplete message in DataRow buffer")
        if not out:
            return buf
        out.append(buf[copied:])
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
