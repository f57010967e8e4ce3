"""Records as ``COPY dbgate.audit_events FROM STDIN (FORMAT binary)`` carries them.

The writer encodes each record once, when it is chained, into PostgreSQL's binary
COPY format (a row is a field count, then each field as a length and its bytes), and
sends a batch as one buffer: no per-value encoding in the driver, and the server
parses no text. The columns and their order are :data:`COLUMNS`; the bytes of each
type are what the server's binary receive functions read:

* text, json, and the text[] literals of the array columns (see
  ``0020_audit_tables.sql``): UTF-8 (records are escaped first, see
  :mod:`dbgate.audit.text`, so every text encodes);
* smallint / integer / bigint: big-endian two's complement of 2, 4, 8 bytes;
* timestamptz: microseconds since 2000-01-01 UTC as a bigint;
* boolean: one byte; bytea: the bytes.

A statement's records share most fields with those of the same shape
(:class:`Blocks`): their bytes are encoded once, and only the varying fields per
record.
"""

from __future__ import annotations

from struct import Struct
from typing import Any

from dbgate.audit.canonical import FIELDS, NAMES, FieldType

#: The columns a record fills, in the order its fields are sent.
COLUMNS: tuple[str, ...] = (*NAMES, "prev_hash", "hash")
HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, no header extension
TRAILER = b"\xff\xff"
_ROW_START = Struct("!h").pack(len(COLUMNS))
_NULL = b"\xff\xff\xff\xff"
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 - 1970-01-01, in microseconds
#: Integer columns narrower than bigint (0020_audit_tables.sql).
_NARROW = {"format": "h", "scrubbed": "i"}

_int2 = Struct("!ih").pack
_int4 = Struct("!ii").pack
_int8 = Struct("!iq").pack
_len = Struct("!i").pack
_ARRAY_ESCAPE = str.maketrans({"\\": "\\\\", '"': '\\"'})


def array_literal(items: list[str | None]) -> str:
    """A text[] literal: the audit table stores arrays as text (see 0020_audit_tables.sql).

    Nearly every array (categories, tables, hashed parameters) has no NULL, quote or
    backslash: one join, checked by counting, instead of a pass per element.
    """
    try:
        joined = '","'.join(items)  # type: ignore[arg-type]
    except TypeError:  # a NULL element
        joined = None
    if joined is not None and "\\" not in joined and joined.count('"') == 2 * len(items) - 2:
        return '{"' + joined + '"}'
    return (
        "{"
        + ",".join(["NULL" if x is None else '"' + x.translate(_ARRAY_ESCAPE) + '"' for x in items])
        + "}"
    )


def _text(value: str) -> bytes:
    data = value.encode()
    return _len(len(data)) + data


def _array(items: list[str | None]) -> bytes:
    return _text(array_literal(items))


def _expr(i: int) -> str:
    """The expression that encodes field ``i`` of ``v`` (None as NULL)."""
    name, kind = FIELDS[i]
    v = f"v[{i}]"
    if kind is FieldType.INT:
        pack = {"h": "_int2(2, {v})", "i": "_int4(4, {v})"}.get(
            _NARROW.get(name, ""), "_int8(8, {v})"
        )
        encoded = pack.format(v=v)
    elif kind is FieldType.TIME:
        encoded = f"_int8(8, {v} - {_PG_EPOCH_US})"
    elif kind is FieldType.BOOL:
        encoded = f"(_TRUE if {v} else _FALSE)"
    elif kind is FieldType.ARRAY:
        encoded = f"_array({v})"
    else:  # text, json
        encoded = f"_text({v})"
    return f"(_NULL if {v} is None else {encoded})"


_namespace: dict[str, Any] = {
    "_NULL": _NULL,
    "_TRUE": b"\x00\x00\x00\x01\x01",
    "_FALSE": b"\x00\x00\x00\x01\x00",
    "_int2": _int2,
    "_int4": _int4,
    "_int8": _int8,
    "_text": _text,
    "_array": _array,
    "_START": _ROW_START,
    "_HASH": _len(32),
}


def _compile(name: str, source: str) -> Any:
    space = dict(_namespace)
    exec(compile(source, f"<dbgate.audit.binary {name}>", "exec"), space)
    return space[name]


def _field_source() -> str:
    parts = [_expr(i) for i in range(len(FIELDS))]
    return "def fields(v):\n    return " + " + ".join(parts) + "\n"


_fields = _compile("fields", _field_source())
_encode_field = [
    _compile("one", f"def one(v):\n    return {_expr(i)}\n") for i in range(len(FIELDS))
]


def encode(values: list[Any], prev_hash: bytes, hash_: bytes) -> bytes:
    """One record (values in :data:`FIELDS` order, escaped) as a binary COPY row."""
    if len(prev_hash) != 32 or len(hash_) != 32:
        raise ValueError("prev_hash and hash must be 32 bytes")
    return _ROW_START + _fields(values) + _len(32) + prev_hash + _len(32) + hash_


class Blocks:
    """The binary row of records that agree in every field but some (``varying``):
    the fields between those are encoded once, as blocks of bytes; ``encode`` equals
    :func:`encode` whenever the values agree with those the blocks were made from
    outside ``varying``. The field at ``given`` (one of ``varying``) is encoded by the
    caller (:func:`field` of its text, or :data:`NULL`): ``encode(values, prev, hash,
    encoded)``."""

    __slots__ = ("_blocks", "_encode")

    def __init__(self, values: list[Any], varying: tuple[int, ...], given: int = -1) -> None:
        blocks: list[bytes] = []
        run = [_ROW_START]
        order: list[int] = []
        for i in range(len(FIELDS)):
            if i in varying:
                blocks.append(b"".join(run))
                run = []
                order.append(i)
            else:
                run.append(_encode_field[i](values))
        run.append(_len(32))
        blocks.append(b"".join(run))
        self._blocks = tuple(blocks)
        self._encode = _row_encoder(tuple(order), given)

    def encode(
        self, values: list[Any], prev_hash: bytes, hash_: bytes, given: bytes = b""
    ) -> bytes:
        return self._encode(self._blocks, values, prev_hash, hash_, given)  # type: ignore[no-any-return]

    @property
    def blocks(self) -> tuple[bytes, ...]:
        """The bytes around the varying fields, in order (one more than the fields);
        the last ends with the length of the previous hash."""
        return self._blocks


_ENCODERS: dict[tuple[tuple[int, ...], int], Any] = {}


def _row_encoder(order: tuple[int, ...], given: int) -> Any:
    """``f(blocks, values, prev_hash, hash, given)``: the blocks with the fields at
    ``order`` between them, ``given`` in the place of the field at that position
    (generated once per set of varying fields)."""
    found = _ENCODERS.get((order, given))
    if found is None:
        parts = ["b[0]"]
        for n, i in enumerate(order, start=1):
            parts += ["g" if i == given else _expr(i), f"b[{n}]"]
        parts += ["p", "_HASH", "h"]
        # one join: a chain of + would allocate every longer prefix on the way
        source = "def row(b, v, p, h, g):\n    return b''.join((" + ", ".join(parts) + "))\n"
        found = _ENCODERS[(order, given)] = _compile("row", source)
    return found


#: A NULL field.
NULL = _NULL


def field(text: str) -> bytes:
    """A text field (its length, its UTF-8 bytes)."""
    return _text(text)


def batch(rows: list[bytes]) -> memoryview:
    """The COPY data of ``rows`` (a memoryview: asyncpg would take bytes for a path)."""
    return memoryview(b"".join((HEADER, *rows, TRAILER)))


#: Bytes of COPY data per CopyData message the writer sends (see :class:`Chunks`).
CHUNK_BYTES = 128 * 1024


class Chunks:
    """The COPY data of ``rows`` (what :func:`batch` holds) as an asynchronous iterable
    of pieces of about ``size`` bytes, each sent as one CopyData message once the
    connection may write again. One message of a whole batch (about 0.8 MB for 2,000
    statements) cost the writer's process 1.2-1.3 us of CPU per record, most of it in
    the kernel (a send far larger than the socket's buffer); pieces of 64-256 KB
    0.7-0.8 us."""

    __slots__ = ("rows", "size")

    def __init__(self, rows: list[bytes], size: int = CHUNK_BYTES) -> None:
        self.rows = rows
        self.size = size

    def __aiter__(self) -> Any:
        return self._pieces()

    async def _pieces(self) -> Any:
        piece = [HEADER]
        held = len(HEADER)
        size = self.size
        for row in self.rows:
            piece.append(row)
            held += len(row)
            if held >= size:
                yield b"".join(piece)
                piece = []
                held = 0
        piece.append(TRAILER)
        yield b"".join(piece)
