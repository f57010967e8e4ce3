"""The protocol's field types, read and written: the building blocks of the codec.

Strings are UTF-8 with a terminating NUL, integers are big-endian int16/int32, lists
carry an int16 count, values an int32 length (-1 is SQL NULL). :mod:`.codec`,
:mod:`.frontend` and :mod:`.backend` share these; the rest of dbgate uses those
modules, not this one.

Reading is bounds-checked and every failure is a :class:`ProtocolError` of the class
the caller names (``fault``: whose bytes these are, see :mod:`.errors`), never an
``IndexError``, ``struct.error`` or ``UnicodeDecodeError``. Writing raises
``ValueError`` for what cannot be represented: a bug in the caller, not peer input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from struct import Struct
from struct import error as StructError
from typing import TypeVar

from dbgate.wire.errors import ProtocolError

try:
    from dbgate.wire._scan import values as _c_values
except ImportError:  # pragma: no cover - exercised when no compiler was available
    _c_values = None

I16 = Struct("!h")
U16 = Struct("!H")
I32 = Struct("!i")
U32 = Struct("!I")
unpack_i16 = I16.unpack_from
unpack_u16 = U16.unpack_from
unpack_i32 = I32.unpack_from
unpack_u32 = U32.unpack_from
pack_u16 = U16.pack
pack_i32 = I32.pack

Fault = type[ProtocolError]
_M = TypeVar("_M")
_E = TypeVar("_E", bound=ProtocolError)

# --------------------------------------------------------------------------- writing


def cstr(value: str) -> bytes:
    """Encode a protocol string: UTF-8 plus the terminating NUL."""
    data = value.encode()
    if b"\0" in data:
        raise ValueError(f"protocol strings cannot contain NUL: {value!r}")
    return data + b"\0"


def pack(st: Struct, *values: int) -> bytes:
    """``st.pack(*values)``, with a ValueError that names the field format."""
    try:
        return st.pack(*values)
    except StructError as exc:
        raise ValueError(f"value out of range for {st.format!r}: {values}") from exc


def count(n: int, what: str) -> bytes:
    """An int16 item count."""
    if n > 0xFFFF:
        raise ValueError(f"too many {what}: {n} (the protocol allows 65535)")
    return pack_u16(n)


def values(items: Iterable[bytes | None]) -> bytes:
    """Length-prefixed values, ``None`` as length -1 (SQL NULL)."""
    parts = []
    for v in items:
        if v is None:
            parts.append(b"\xff\xff\xff\xff")
        else:
            parts.append(pack_i32(len(v)))
            parts.append(v)
    return b"".join(parts)


# --------------------------------------------------------------------------- reading


def malformed(what: str, detail: str, fault: type[_E]) -> _E:
    """The error for a malformed ``what`` message."""
    return fault(f"malformed {what} message: {detail}")


def show(b: int) -> str:
    """A type byte or code as a reader of an error message wants to see it."""
    return repr(chr(b)) if 32 <= b < 127 else f"0x{b:02x}"


#: Strings longer than this are decoded from a view of the message, not a copy of
#: the slice: a 60 MB statement is then read once by the decoder and not copied first.
LONG_STRING = 64 * 1024


def decode_str(raw: bytes, what: str, fault: Fault, start: int = 0, end: int = -1) -> str:
    """Strict UTF-8 of ``raw[start:end]`` (``end`` -1: to the end): text dbgate analyses
    must be the text the server executes."""
    if end < 0:
        end = len(raw)
    try:
        if end - start > LONG_STRING:
            return str(memoryview(raw)[start:end], "utf-8")
        return raw[start:end].decode()
    except UnicodeDecodeError as exc:
        raise malformed(what, f"invalid UTF-8 at byte {exc.start} of a string", fault) from None


def cstr_at(body: bytes, pos: int, what: str, fault: Fault) -> tuple[str, int]:
    """The NUL-terminated UTF-8 string at ``pos`` and the offset after its NUL."""
    end = body.find(b"\0", pos)
    if end < 0:
        raise malformed(what, f"string at offset {pos} is not NUL-terminated", fault)
    if end - pos > LONG_STRING:
        return decode_str(body, what, fault, pos, end), end + 1
    try:
        return body[pos:end].decode(), end + 1
    except UnicodeDecodeError as exc:
        raise malformed(what, f"invalid UTF-8 at byte {exc.start} of a string", fault) from None


def i16s_at(
    body: bytes, pos: int, what: str, label: str, fault: Fault
) -> tuple[tuple[int, ...], int]:
    """An int16 count followed by that many int16 values (format codes)."""
    if pos + 2 > len(body):
        raise malformed(what, f"truncated: {label} count missing at offset {pos}", fault)
    n = unpack_u16(body, pos)[0]
    pos += 2
    end = pos + 2 * n
    if end > len(body):
        raise malformed(what, f"{label} count {n} exceeds the remaining body", fault)
    if n == 0:
        return (), pos
    if n == 1:
        return unpack_i16(body, pos), end
    return Struct(f"!{n}h").unpack_from(body, pos), end


def values_at(
    body: bytes, pos: int, what: str, label: str, fault: Fault
) -> tuple[tuple[bytes | None, ...], int]:
    """An int16 count followed by that many length-prefixed values (-1: NULL).

    Read by the compiled scanner when it is built (a Bind's values are read once per
    audited Execute, a DataRow's once per row a plan rewrites one by one); the flat
    loop below is the reference, and names the fault when the scanner finds one.
    """
    if _c_values is not None:
        try:
            return _c_values(body, pos)  # type: ignore[no-any-return]
        except ValueError:
            pass  # malformed: the loop below says how
    size = len(body)
    if pos + 2 > size:
        raise malformed(what, f"truncated: {label} count missing at offset {pos}", fault)
    n = unpack_u16(body, pos)[0]
    pos += 2
    if 4 * n > size - pos:
        raise malformed(what, f"{label} count {n} exceeds the remaining body", fault)
    out: list[bytes | None] = []
    append = out.append
    for _ in range(n):
        if pos + 4 > size:
            raise malformed(what, f"truncated: {label} length missing at offset {pos}", fault)
        length = unpack_i32(body, pos)[0]
        pos += 4
        if length < 0:
            if length != -1:
                raise malformed(what, f"negative value length {length}", fault)
            append(None)
            continue
        end = pos + length
        if end > size:
            raise malformed(
                what,
                f"truncated: {label} of {length} bytes at offset {pos}, body has {size}",
                fault,
            )
        append(body[pos:end])
        pos = end
    return tuple(out), pos


class BodyReader:
    """Bounds-checked cursor over one message body; every failure is a ``fault``."""

    __slots__ = ("buf", "fault", "pos", "what")

    def __init__(self, buf: bytes, what: str, fault: Fault) -> None:
        self.buf = buf
        self.pos = 0
        self.what = what
        self.fault = fault

    def bad(self, detail: str) -> ProtocolError:
        return malformed(self.what, detail, self.fault)

    def need(self, n: int) -> int:
        """Advance over ``n`` bytes; return where they start."""
        pos = self.pos
        if pos + n > len(self.buf):
            raise self.bad(
                f"truncated: needs {n} more byte(s) at offset {pos}, body has {len(self.buf)}"
            )
        self.pos = pos + n
        return pos

    def byte(self) -> int:
        return self.buf[self.need(1)]

    def i16(self) -> int:
        return unpack_i16(self.buf, self.need(2))[0]

    def u16(self) -> int:
        return unpack_u16(self.buf, self.need(2))[0]

    def i32(self) -> int:
        return unpack_i32(self.buf, self.need(4))[0]

    def u32(self) -> int:
        return unpack_u32(self.buf, self.need(4))[0]

    def raw(self, n: int) -> bytes:
        start = self.need(n)
        return self.buf[start : start + n]

    def rest(self) -> bytes:
        data = self.buf[self.pos :]
        self.pos = len(self.buf)
        return data

    def cstr(self) -> str:
        text, self.pos = cstr_at(self.buf, self.pos, self.what, self.fault)
        return text

    def count(self, item_size: int, label: str) -> int:
        """An int16 count whose items take at least ``item_size`` bytes each."""
        n = self.u16()
        if n * item_size > len(self.buf) - self.pos:
            raise self.bad(f"{label} count {n} exceeds the remaining body")
        return n

    def i16s(self, label: str) -> tuple[int, ...]:
        n = self.count(2, label)
        start = self.need(2 * n)
        return Struct(f"!{n}h").unpack_from(self.buf, start) if n else ()

    def u32s(self, label: str) -> tuple[int, ...]:
        n = self.count(4, label)
        start = self.need(4 * n)
        return Struct(f"!{n}I").unpack_from(self.buf, start) if n else ()

    def value(self) -> bytes | None:
        n = self.i32()
        if n == -1:
            return None
        if n < 0:
            raise self.bad(f"negative value length {n}")
        return self.raw(n)

    def values(self, label: str) -> tuple[bytes | None, ...]:
        n = self.count(4, label)
        return tuple([self.value() for _ in range(n)])

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise self.bad(f"{len(self.buf) - self.pos} unexpected trailing byte(s)")


def empty_body(cls: Callable[[], _M], what: str, fault: Fault) -> Callable[[bytes], _M]:
    """Decoder for a message with an empty body; one shared instance (they are frozen)."""
    instance = cls()

    def decode(body: bytes) -> _M:
        if body:
            raise malformed(what, f"expected an empty body, got {len(body)} byte(s)", fault)
        return instance

    return decode
