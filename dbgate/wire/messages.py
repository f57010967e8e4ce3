"""Typed PostgreSQL protocol 3.0/3.2 messages, their encoders and decoders (sans-IO).

Two layers live here, because the proxy has two very different needs:

* **Fast helpers** (``parse_query``, ``parse_bind``, ``error_response``, ...). The
  proxy calls them once per statement on the hot path, so they take a message
  *body* (as framed by :class:`dbgate.wire.framing.FrameReader`) and return plain
  tuples/strings or ready-to-send ``bytes`` -- no dataclass, no dispatch.
* **Typed messages**: one frozen, slotted dataclass per protocol message with an
  ``encode()`` method, and :func:`decode_frontend` / :func:`decode_backend` that turn
  ``(type byte, body)`` into the right dataclass. They serve tests, logging,
  the upstream client and anything that is not per-row hot.

Guarantees shared by every decoder in this module:

* Any malformed body -- truncated, a string without its NUL, a count that does
  not match the data, a negative length other than -1 (SQL NULL), trailing bytes,
  an unknown type byte or sub-code -- raises :class:`ProtocolError` (SQLSTATE
  08P01). Never ``IndexError``, ``struct.error`` or ``UnicodeDecodeError``.
* Strings (SQL text, names, tags, error fields) must be valid UTF-8: dbgate
  analyses SQL as text, and silently mangling bytes (``surrogateescape``) would let
  a client hide statement text from the classifier. Invalid UTF-8 is refused.
* Values (Bind parameters, DataRow columns, COPY data) stay raw ``bytes``; their
  meaning depends on type and format, which is not the codec's business.

Encoders raise ``ValueError`` for values that cannot be represented (a NUL inside a
string, an integer out of range): those are bugs in the caller, not peer input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from struct import Struct
from struct import error as StructError
from typing import ClassVar, TypeAlias, TypeVar

from dbgate.wire.errors import ProtocolError

__all__ = [
    "AUTH_OK",
    "BIND_COMPLETE",
    "CLOSE_COMPLETE",
    "COPY_DONE",
    "EMPTY_QUERY_RESPONSE",
    "ERROR_FIELD_NAMES",
    "FLUSH",
    "MAX_SECRET_KEY_LENGTH",
    "MIN_SECRET_KEY_LENGTH",
    "NO_DATA",
    "PARSE_COMPLETE",
    "PORTAL_SUSPENDED",
    "SYNC",
    "TERMINATE",
    "AuthResponse",
    "AuthenticationCleartextPassword",
    "AuthenticationGSS",
    "AuthenticationGSSContinue",
    "AuthenticationKerberosV5",
    "AuthenticationMD5Password",
    "AuthenticationOk",
    "AuthenticationSASL",
    "AuthenticationSASLContinue",
    "AuthenticationSASLFinal",
    "AuthenticationSSPI",
    "BackendKeyData",
    "BackendMessage",
    "Bind",
    "BindComplete",
    "Close",
    "CloseComplete",
    "CommandComplete",
    "CopyBothResponse",
    "CopyData",
    "CopyDone",
    "CopyFail",
    "CopyInResponse",
    "CopyOutResponse",
    "DataRow",
    "Describe",
    "EmptyQueryResponse",
    "ErrorResponse",
    "Execute",
    "FieldDescription",
    "Flush",
    "FrontendMessage",
    "FunctionCall",
    "FunctionCallResponse",
    "GSSResponse",
    "NegotiateProtocolVersion",
    "NoData",
    "NoticeResponse",
    "NotificationResponse",
    "ParameterDescription",
    "ParameterStatus",
    "Parse",
    "ParseComplete",
    "PasswordMessage",
    "PortalSuspended",
    "Query",
    "ReadyForQuery",
    "RowDescription",
    "SASLInitialResponse",
    "SASLResponse",
    "Sync",
    "Terminate",
    "auth_cleartext_password",
    "auth_md5_password",
    "auth_ok",
    "auth_sasl",
    "auth_sasl_continue",
    "auth_sasl_final",
    "backend_key_data",
    "command_complete",
    "data_row",
    "decode_backend",
    "decode_frontend",
    "error_response",
    "notice_response",
    "parameter_status",
    "parse_bind",
    "parse_close",
    "parse_command_complete",
    "parse_data_row",
    "parse_describe",
    "parse_error_fields",
    "parse_execute",
    "parse_parse",
    "parse_password",
    "parse_query",
    "parse_ready_for_query",
    "parse_sasl_initial_response",
    "password_message",
    "query",
    "ready_for_query",
    "sasl_initial_response",
    "sasl_response",
]

_I16 = Struct("!h")
_U16 = Struct("!H")
_I32 = Struct("!i")
_U32 = Struct("!I")
_HDR = Struct("!cI")  # type byte + length, for encoders
_unpack_i16 = _I16.unpack_from
_unpack_u16 = _U16.unpack_from
_unpack_i32 = _I32.unpack_from
_unpack_u32 = _U32.unpack_from
_pack_i16 = _I16.pack
_pack_u16 = _U16.pack
_pack_i32 = _I32.pack
_pack_u32 = _U32.pack

_M = TypeVar("_M")

MIN_SECRET_KEY_LENGTH = 4
"""Protocol 3.0 cancel keys are exactly 4 bytes; 3.2 allows 4..256."""
MAX_SECRET_KEY_LENGTH = 256


# --------------------------------------------------------------------------- helpers


def _frame(type_byte: bytes, body: bytes) -> bytes:
    return type_byte + _pack_u32(len(body) + 4) + body


def frame(type_byte: int, body: bytes) -> bytes:
    """A complete message of type ``type_byte`` around an already encoded ``body``.

    For relays that forward or rewrite bodies they did not build themselves.
    """
    return bytes((type_byte,)) + _pack_u32(len(body) + 4) + body


def parse_parameter_status(body: bytes) -> tuple[str, str]:
    """ParameterStatus body -> (name, value); lenient about encoding, as it is
    informational (server-reported settings) and must never end a session."""
    name, _, value = bytes(body).rstrip(b"\0").partition(b"\0")
    return name.decode("utf-8", "replace"), value.decode("utf-8", "replace")


def _cstr(value: str) -> bytes:
    """Encode a protocol string: UTF-8 plus the terminating NUL."""
    data = value.encode()
    if b"\0" in data:
        raise ValueError(f"protocol strings cannot contain NUL: {value!r}")
    return data + b"\0"


def _pack(st: Struct, *values: int) -> bytes:
    try:
        return st.pack(*values)
    except StructError as exc:
        raise ValueError(f"value out of range for {st.format!r}: {values}") from exc


def _count(n: int, what: str) -> bytes:
    if n > 0xFFFF:
        raise ValueError(f"too many {what}: {n} (the protocol allows 65535)")
    return _pack_u16(n)


def _values(values: Iterable[bytes | None]) -> bytes:
    """Length-prefixed values, ``None`` as length -1 (SQL NULL)."""
    parts = []
    for v in values:
        if v is None:
            parts.append(b"\xff\xff\xff\xff")
        else:
            parts.append(_pack_i32(len(v)))
            parts.append(v)
    return b"".join(parts)


def _bad(what: str, detail: str) -> ProtocolError:
    return ProtocolError(f"malformed {what} message: {detail}")


def _decode_str(raw: bytes, what: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise _bad(what, f"invalid UTF-8 at byte {exc.start} of a string") from None


class _Reader:
    """Bounds-checked cursor over one message body; every failure is a ProtocolError."""

    __slots__ = ("buf", "pos", "what")

    def __init__(self, buf: bytes, what: str) -> None:
        self.buf = buf
        self.pos = 0
        self.what = what

    def _need(self, n: int) -> int:
        pos = self.pos
        if pos + n > len(self.buf):
            raise _bad(
                self.what,
                f"truncated: needs {n} more byte(s) at offset {pos}, body has {len(self.buf)}",
            )
        self.pos = pos + n
        return pos

    def byte(self) -> int:
        return self.buf[self._need(1)]

    def i16(self) -> int:
        return _unpack_i16(self.buf, self._need(2))[0]

    def u16(self) -> int:
        return _unpack_u16(self.buf, self._need(2))[0]

    def i32(self) -> int:
        return _unpack_i32(self.buf, self._need(4))[0]

    def u32(self) -> int:
        return _unpack_u32(self.buf, self._need(4))[0]

    def raw(self, n: int) -> bytes:
        start = self._need(n)
        return self.buf[start : start + n]

    def rest(self) -> bytes:
        data = self.buf[self.pos :]
        self.pos = len(self.buf)
        return data

    def cstr(self) -> str:
        buf = self.buf
        end = buf.find(b"\0", self.pos)
        if end < 0:
            raise _bad(self.what, f"string at offset {self.pos} is not NUL-terminated")
        raw = buf[self.pos : end]
        self.pos = end + 1
        return _decode_str(raw, self.what)

    def count(self, item_size: int, label: str) -> int:
        """An int16 count whose items take at least ``item_size`` bytes each."""
        n = self.u16()
        if n * item_size > len(self.buf) - self.pos:
            raise _bad(self.what, f"{label} count {n} exceeds the remaining body")
        return n

    def i16s(self, label: str) -> tuple[int, ...]:
        n = self.count(2, label)
        start = self._need(2 * n)
        return Struct(f"!{n}h").unpack_from(self.buf, start) if n else ()

    def u32s(self, label: str) -> tuple[int, ...]:
        n = self.count(4, label)
        start = self._need(4 * n)
        return Struct(f"!{n}I").unpack_from(self.buf, start) if n else ()

    def value(self) -> bytes | None:
        n = self.i32()
        if n == -1:
            return None
        if n < 0:
            raise _bad(self.what, f"negative value length {n}")
        return self.raw(n)

    def values(self, label: str) -> tuple[bytes | None, ...]:
        n = self.count(4, label)
        return tuple([self.value() for _ in range(n)])

    def kind(self) -> str:
        k = self.byte()
        if k not in (0x53, 0x50):  # 'S', 'P'
            raise _bad(self.what, f"kind must be 'S' or 'P', got {_show(k)}")
        return chr(k)

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise _bad(self.what, f"{len(self.buf) - self.pos} unexpected trailing byte(s)")


def _show(b: int) -> str:
    return repr(chr(b)) if 32 <= b < 127 else f"0x{b:02x}"


def _cstr_at(body: bytes, pos: int, what: str) -> tuple[str, int]:
    """The NUL-terminated UTF-8 string at ``pos`` and the offset after its NUL."""
    end = body.find(b"\0", pos)
    if end < 0:
        raise _bad(what, f"string at offset {pos} is not NUL-terminated")
    try:
        return body[pos:end].decode(), end + 1
    except UnicodeDecodeError as exc:
        raise _bad(what, f"invalid UTF-8 at byte {exc.start} of a string") from None


def _i16s_at(body: bytes, pos: int, what: str, label: str) -> tuple[tuple[int, ...], int]:
    """An int16 count followed by that many int16 values (format codes)."""
    if pos + 2 > len(body):
        raise _bad(what, f"truncated: {label} count missing at offset {pos}")
    n = _unpack_u16(body, pos)[0]
    pos += 2
    end = pos + 2 * n
    if end > len(body):
        raise _bad(what, f"{label} count {n} exceeds the remaining body")
    if n == 0:
        return (), pos
    if n == 1:
        return _unpack_i16(body, pos), end
    return Struct(f"!{n}h").unpack_from(body, pos), end


def _values_at(
    body: bytes, pos: int, what: str, label: str
) -> tuple[tuple[bytes | None, ...], int]:
    """An int16 count followed by that many length-prefixed values (-1: NULL).

    Written as one flat loop because DataRow goes through it once per result row.
    """
    size = len(body)
    if pos + 2 > size:
        raise _bad(what, f"truncated: {label} count missing at offset {pos}")
    n = _unpack_u16(body, pos)[0]
    pos += 2
    if 4 * n > size - pos:
        raise _bad(what, f"{label} count {n} exceeds the remaining body")
    out: list[bytes | None] = []
    append = out.append
    for _ in range(n):
        if pos + 4 > size:
            raise _bad(what, f"truncated: {label} length missing at offset {pos}")
        length = _unpack_i32(body, pos)[0]
        pos += 4
        if length < 0:
            if length != -1:
                raise _bad(what, f"negative value length {length}")
            append(None)
            continue
        end = pos + length
        if end > size:
            raise _bad(
                what, f"truncated: {label} of {length} bytes at offset {pos}, body has {size}"
            )
        append(body[pos:end])
        pos = end
    return tuple(out), pos


# ----------------------------------------------------------------- fast frontend parsers


def parse_query(body: bytes) -> str:
    """SQL text of a simple ``Query`` ('Q') body."""
    end = body.find(b"\0")
    if end < 0:
        raise _bad("Query", "query string is not NUL-terminated")
    if end != len(body) - 1:
        raise _bad("Query", f"{len(body) - end - 1} unexpected trailing byte(s)")
    return _decode_str(body[:end], "Query")


def parse_parse(body: bytes) -> tuple[str, str, tuple[int, ...]]:
    """``(statement name, sql, parameter type oids)`` of a ``Parse`` ('P') body."""
    name, pos = _cstr_at(body, 0, "Parse")
    sql, pos = _cstr_at(body, pos, "Parse")
    if pos + 2 > len(body):
        raise _bad("Parse", "truncated: parameter type count missing")
    n = _unpack_u16(body, pos)[0]
    pos += 2
    if pos + 4 * n != len(body):
        if pos + 4 * n > len(body):
            raise _bad("Parse", f"parameter type count {n} exceeds the remaining body")
        raise _bad("Parse", f"{len(body) - pos - 4 * n} unexpected trailing byte(s)")
    return name, sql, (Struct(f"!{n}I").unpack_from(body, pos) if n else ())


def parse_bind(
    body: bytes,
) -> tuple[str, str, tuple[int, ...], tuple[bytes | None, ...], tuple[int, ...]]:
    """``(portal, statement, param formats, params, result formats)`` of a ``Bind``.

    Parameter values are raw bytes (``None`` for SQL NULL). The number of format
    codes must be 0, 1 or the number of parameters, as the server requires.
    """
    portal, pos = _cstr_at(body, 0, "Bind")
    statement, pos = _cstr_at(body, pos, "Bind")
    formats, pos = _i16s_at(body, pos, "Bind", "parameter format")
    params, pos = _values_at(body, pos, "Bind", "parameter")
    if len(formats) > 1 and len(formats) != len(params):
        raise _bad("Bind", f"{len(formats)} parameter formats for {len(params)} parameters")
    result_formats, pos = _i16s_at(body, pos, "Bind", "result format")
    if pos != len(body):
        raise _bad("Bind", f"{len(body) - pos} unexpected trailing byte(s)")
    return portal, statement, formats, params, result_formats


def parse_execute(body: bytes) -> tuple[str, int]:
    """``(portal, max rows)`` of an ``Execute`` ('E') body; 0 rows means no limit."""
    end = body.find(b"\0")
    if end < 0:
        raise _bad("Execute", "portal name is not NUL-terminated")
    if len(body) != end + 5:
        raise _bad("Execute", f"expected 4 bytes after the portal name, got {len(body) - end - 1}")
    return _decode_str(body[:end], "Execute"), _unpack_i32(body, end + 1)[0]


def _parse_kind_name(body: bytes, what: str) -> tuple[str, str]:
    if len(body) < 2:
        raise _bad(what, "body too short")
    k = body[0]
    if k not in (0x53, 0x50):
        raise _bad(what, f"kind must be 'S' or 'P', got {_show(k)}")
    end = body.find(b"\0", 1)
    if end != len(body) - 1:
        if end < 0:
            raise _bad(what, "name is not NUL-terminated")
        raise _bad(what, f"{len(body) - end - 1} unexpected trailing byte(s)")
    return chr(k), _decode_str(body[1:end], what)


def parse_describe(body: bytes) -> tuple[str, str]:
    """``(kind, name)`` of a ``Describe`` ('D'); kind is 'S' (statement) or 'P' (portal)."""
    return _parse_kind_name(body, "Describe")


def parse_close(body: bytes) -> tuple[str, str]:
    """``(kind, name)`` of a ``Close`` ('C'); kind is 'S' (statement) or 'P' (portal)."""
    return _parse_kind_name(body, "Close")


def parse_password(body: bytes) -> str:
    """The password string of a PasswordMessage (also used for md5 responses).

    A 'p' message's meaning depends on which authentication request preceded it,
    so the framer cannot know; the session calls this when it asked for a password.
    """
    end = body.find(b"\0")
    if end < 0:
        raise _bad("PasswordMessage", "password is not NUL-terminated")
    if end != len(body) - 1:
        raise _bad("PasswordMessage", f"{len(body) - end - 1} unexpected trailing byte(s)")
    return _decode_str(body[:end], "PasswordMessage")


def parse_sasl_initial_response(body: bytes) -> tuple[str, bytes | None]:
    """``(mechanism, initial data or None)`` of a SASLInitialResponse 'p' body."""
    r = _Reader(body, "SASLInitialResponse")
    mechanism = r.cstr()
    data = r.value()
    r.end()
    return mechanism, data


# ----------------------------------------------------------------- fast backend parsers


def parse_ready_for_query(body: bytes) -> str:
    """Transaction status of ReadyForQuery: 'I' idle, 'T' in transaction, 'E' failed."""
    if len(body) != 1 or body[0] not in (0x49, 0x54, 0x45):
        raise _bad("ReadyForQuery", f"invalid transaction status {body!r}")
    return chr(body[0])


def parse_command_complete(body: bytes) -> str:
    """The command tag of CommandComplete, e.g. ``'SELECT 5'``."""
    end = body.find(b"\0")
    if end < 0 or end != len(body) - 1:
        raise _bad("CommandComplete", "tag must be one NUL-terminated string")
    return _decode_str(body[:end], "CommandComplete")


def parse_data_row(body: bytes) -> tuple[bytes | None, ...]:
    """Column values of a DataRow ('D') body; ``None`` is SQL NULL."""
    cols, pos = _values_at(body, 0, "DataRow", "column")
    if pos != len(body):
        raise _bad("DataRow", f"{len(body) - pos} unexpected trailing byte(s)")
    return cols


def parse_error_fields(body: bytes, what: str = "ErrorResponse") -> dict[str, str]:
    """Fields of an ErrorResponse/NoticeResponse keyed by their one-letter codes."""
    r = _Reader(body, what)
    fields: dict[str, str] = {}
    while True:
        code = r.byte()
        if code == 0:
            break
        fields[chr(code)] = r.cstr()
    r.end()
    return fields


# ----------------------------------------------------------------- fast builders

ERROR_FIELD_NAMES: Mapping[str, str] = {
    "severity": "S",
    "severity_nonlocalized": "V",
    "code": "C",
    "message": "M",
    "detail": "D",
    "hint": "H",
    "position": "P",
    "internal_position": "p",
    "internal_query": "q",
    "where": "W",
    "schema_name": "s",
    "table_name": "t",
    "column_name": "c",
    "data_type_name": "d",
    "constraint_name": "n",
    "file": "F",
    "line": "L",
    "routine": "R",
}
"""Keyword names accepted by :func:`error_response` for the one-letter field codes."""


def _fields_body(severity: str, code: str, message: str, extra: Mapping[str, object]) -> bytes:
    if len(code) != 5 or not code.isascii() or not code.isalnum():
        raise ValueError(f"SQLSTATE must be 5 ASCII letters/digits, got {code!r}")
    parts = [b"S", _cstr(severity), b"V", _cstr(severity), b"C", _cstr(code), b"M", _cstr(message)]
    for key, value in extra.items():
        if value is None:
            continue
        letter = ERROR_FIELD_NAMES.get(key, key)
        if len(letter) != 1 or letter not in ERROR_FIELD_NAMES.values():
            raise ValueError(f"unknown error field {key!r}")
        if letter in "SVCM":
            raise ValueError(f"field {key!r} is set by a positional argument")
        parts.append(letter.encode())
        parts.append(_cstr(str(value)))
    parts.append(b"\0")
    return b"".join(parts)


def error_response(
    code: str, message: str, severity: str = "ERROR", **extra_fields: object
) -> bytes:
    """A complete ErrorResponse message.

    ``extra_fields`` take the long names of :data:`ERROR_FIELD_NAMES` (``detail=``,
    ``hint=``, ``position=`` ...) or the one-letter codes; ``None`` values are
    skipped. Both 'S' and the non-localized 'V' severity are sent, as servers do.
    """
    return _frame(b"E", _fields_body(severity, code, message, extra_fields))


def notice_response(
    message: str, code: str = "00000", severity: str = "NOTICE", **extra_fields: object
) -> bytes:
    """A complete NoticeResponse message (see :func:`error_response` for fields)."""
    return _frame(b"N", _fields_body(severity, code, message, extra_fields))


_RFQ = {
    "I": b"Z\0\0\0\x05I",
    "T": b"Z\0\0\0\x05T",
    "E": b"Z\0\0\0\x05E",
}


def ready_for_query(status: str) -> bytes:
    """ReadyForQuery with transaction status 'I', 'T' or 'E'."""
    try:
        return _RFQ[status]
    except KeyError:
        raise ValueError(f"transaction status must be 'I', 'T' or 'E', got {status!r}") from None


def parameter_status(name: str, value: str) -> bytes:
    """ParameterStatus ('S'): the server reports a run-time parameter's value."""
    return _frame(b"S", _cstr(name) + _cstr(value))


def backend_key_data(pid: int, key: bytes) -> bytes:
    """BackendKeyData ('K'). ``key`` is 4 bytes for protocol 3.0, up to 256 for 3.2."""
    if not MIN_SECRET_KEY_LENGTH <= len(key) <= MAX_SECRET_KEY_LENGTH:
        raise ValueError(f"cancel key must be 4..256 bytes, got {len(key)}")
    return _frame(b"K", _pack(_U32, pid) + key)


def command_complete(tag: str) -> bytes:
    """CommandComplete ('C') with a command tag such as ``'SELECT 1'``."""
    return _frame(b"C", _cstr(tag))


def data_row(columns: Iterable[bytes | None]) -> bytes:
    """DataRow ('D') from raw column values (``None`` is SQL NULL)."""
    cols = tuple(columns)
    return _frame(b"D", _count(len(cols), "columns") + _values(cols))


AUTH_OK = b"R\0\0\0\x08\0\0\0\0"
PARSE_COMPLETE = b"1\0\0\0\x04"
BIND_COMPLETE = b"2\0\0\0\x04"
CLOSE_COMPLETE = b"3\0\0\0\x04"
NO_DATA = b"n\0\0\0\x04"
PORTAL_SUSPENDED = b"s\0\0\0\x04"
EMPTY_QUERY_RESPONSE = b"I\0\0\0\x04"
COPY_DONE = b"c\0\0\0\x04"
SYNC = b"S\0\0\0\x04"
FLUSH = b"H\0\0\0\x04"
TERMINATE = b"X\0\0\0\x04"


def auth_ok() -> bytes:
    """AuthenticationOk: the client is in; parameter status and key data follow."""
    return AUTH_OK


def auth_cleartext_password() -> bytes:
    """AuthenticationCleartextPassword: ask for the password as a PasswordMessage."""
    return b"R\0\0\0\x08\0\0\0\x03"


def auth_md5_password(salt: bytes) -> bytes:
    """AuthenticationMD5Password with a 4-byte salt."""
    if len(salt) != 4:
        raise ValueError(f"md5 salt must be 4 bytes, got {len(salt)}")
    return b"R\0\0\0\x0c\0\0\0\x05" + salt


def auth_sasl(mechanisms: Iterable[str] = ("SCRAM-SHA-256",)) -> bytes:
    """AuthenticationSASL listing the mechanisms the server offers."""
    return AuthenticationSASL(tuple(mechanisms)).encode()


def auth_sasl_continue(data: bytes) -> bytes:
    """AuthenticationSASLContinue carrying e.g. the SCRAM server-first message."""
    return _frame(b"R", b"\0\0\0\x0b" + data)


def auth_sasl_final(data: bytes) -> bytes:
    """AuthenticationSASLFinal carrying e.g. the SCRAM server-final message."""
    return _frame(b"R", b"\0\0\0\x0c" + data)


def query(sql: str) -> bytes:
    """A simple Query ('Q') message."""
    return _frame(b"Q", _cstr(sql))


def password_message(password: str) -> bytes:
    """PasswordMessage ('p') with a cleartext or ``md5...`` password."""
    return _frame(b"p", _cstr(password))


def sasl_initial_response(mechanism: str, data: bytes | None) -> bytes:
    """SASLInitialResponse ('p') choosing ``mechanism`` with its first data."""
    return SASLInitialResponse(mechanism, data).encode()


def sasl_response(data: bytes) -> bytes:
    """SASLResponse ('p') carrying e.g. the SCRAM client-final message."""
    return _frame(b"p", data)


# =============================================================== typed frontend messages


@dataclass(frozen=True, slots=True)
class Bind:
    """Bind ('B'): create a portal from a prepared statement and parameter values."""

    type_byte: ClassVar[int] = ord("B")
    portal: str
    statement: str
    param_formats: tuple[int, ...] = ()
    params: tuple[bytes | None, ...] = ()
    result_formats: tuple[int, ...] = ()

    def encode(self) -> bytes:
        pf, rf = self.param_formats, self.result_formats
        return _frame(
            b"B",
            b"".join(
                (
                    _cstr(self.portal),
                    _cstr(self.statement),
                    _count(len(pf), "parameter formats"),
                    _pack(Struct(f"!{len(pf)}h"), *pf),
                    _count(len(self.params), "parameters"),
                    _values(self.params),
                    _count(len(rf), "result formats"),
                    _pack(Struct(f"!{len(rf)}h"), *rf),
                )
            ),
        )


@dataclass(frozen=True, slots=True)
class Close:
    """Close ('C'): drop a prepared statement ('S') or portal ('P')."""

    type_byte: ClassVar[int] = ord("C")
    kind: str
    name: str = ""

    def encode(self) -> bytes:
        if self.kind not in ("S", "P"):
            raise ValueError(f"kind must be 'S' or 'P', got {self.kind!r}")
        return _frame(b"C", self.kind.encode() + _cstr(self.name))


@dataclass(frozen=True, slots=True)
class CopyData:
    """CopyData ('d'), sent by either side during COPY."""

    type_byte: ClassVar[int] = ord("d")
    data: bytes

    def encode(self) -> bytes:
        return _frame(b"d", self.data)


@dataclass(frozen=True, slots=True)
class CopyDone:
    """CopyDone ('c'), sent by either side at the end of COPY data."""

    type_byte: ClassVar[int] = ord("c")

    def encode(self) -> bytes:
        return COPY_DONE


@dataclass(frozen=True, slots=True)
class CopyFail:
    """CopyFail ('f'): the client aborts COPY FROM STDIN with a reason."""

    type_byte: ClassVar[int] = ord("f")
    message: str

    def encode(self) -> bytes:
        return _frame(b"f", _cstr(self.message))


@dataclass(frozen=True, slots=True)
class Describe:
    """Describe ('D') a prepared statement ('S') or portal ('P')."""

    type_byte: ClassVar[int] = ord("D")
    kind: str
    name: str = ""

    def encode(self) -> bytes:
        if self.kind not in ("S", "P"):
            raise ValueError(f"kind must be 'S' or 'P', got {self.kind!r}")
        return _frame(b"D", self.kind.encode() + _cstr(self.name))


@dataclass(frozen=True, slots=True)
class Execute:
    """Execute ('E') a portal, returning at most ``max_rows`` rows (0: all)."""

    type_byte: ClassVar[int] = ord("E")
    portal: str = ""
    max_rows: int = 0

    def encode(self) -> bytes:
        return _frame(b"E", _cstr(self.portal) + _pack(_I32, self.max_rows))


@dataclass(frozen=True, slots=True)
class Flush:
    """Flush ('H'): ask the server to send what it has buffered."""

    type_byte: ClassVar[int] = ord("H")

    def encode(self) -> bytes:
        return FLUSH


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """FunctionCall ('F'): the legacy fast-path function call interface."""

    type_byte: ClassVar[int] = ord("F")
    function_oid: int
    arg_formats: tuple[int, ...] = ()
    args: tuple[bytes | None, ...] = ()
    result_format: int = 0

    def encode(self) -> bytes:
        af = self.arg_formats
        return _frame(
            b"F",
            b"".join(
                (
                    _pack(_U32, self.function_oid),
                    _count(len(af), "argument formats"),
                    _pack(Struct(f"!{len(af)}h"), *af),
                    _count(len(self.args), "arguments"),
                    _values(self.args),
                    _pack(_I16, self.result_format),
                )
            ),
        )


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """Any 'p' message, undecoded.

    PasswordMessage, SASLInitialResponse, SASLResponse and GSSResponse share the
    type byte 'p'; which one it is depends on the authentication request the server
    sent, so :func:`decode_frontend` returns this and the session interprets
    ``data`` with :func:`parse_password` or :func:`parse_sasl_initial_response`.
    """

    type_byte: ClassVar[int] = ord("p")
    data: bytes = field(repr=False)  # may be a cleartext password: keep it out of logs

    def encode(self) -> bytes:
        return _frame(b"p", self.data)


@dataclass(frozen=True, slots=True)
class PasswordMessage:
    """PasswordMessage ('p'): cleartext password or ``md5`` + hex digest."""

    type_byte: ClassVar[int] = ord("p")
    password: str = field(repr=False)  # keep it out of logs and tracebacks

    def encode(self) -> bytes:
        return _frame(b"p", _cstr(self.password))


@dataclass(frozen=True, slots=True)
class SASLInitialResponse:
    """SASLInitialResponse ('p'): the chosen mechanism and its first message."""

    type_byte: ClassVar[int] = ord("p")
    mechanism: str
    data: bytes | None = None

    def encode(self) -> bytes:
        return _frame(b"p", _cstr(self.mechanism) + _values((self.data,)))


@dataclass(frozen=True, slots=True)
class SASLResponse:
    """SASLResponse ('p'): a later SASL message, e.g. SCRAM client-final."""

    type_byte: ClassVar[int] = ord("p")
    data: bytes

    def encode(self) -> bytes:
        return _frame(b"p", self.data)


@dataclass(frozen=True, slots=True)
class GSSResponse:
    """GSSResponse ('p'): a GSSAPI/SSPI token."""

    type_byte: ClassVar[int] = ord("p")
    data: bytes

    def encode(self) -> bytes:
        return _frame(b"p", self.data)


@dataclass(frozen=True, slots=True)
class Parse:
    """Parse ('P'): prepare ``sql`` as statement ``name`` ('' is the unnamed one)."""

    type_byte: ClassVar[int] = ord("P")
    name: str
    sql: str
    param_types: tuple[int, ...] = ()

    def encode(self) -> bytes:
        pt = self.param_types
        return _frame(
            b"P",
            _cstr(self.name)
            + _cstr(self.sql)
            + _count(len(pt), "parameter types")
            + _pack(Struct(f"!{len(pt)}I"), *pt),
        )


@dataclass(frozen=True, slots=True)
class Query:
    """Query ('Q'): simple query protocol, possibly several statements."""

    type_byte: ClassVar[int] = ord("Q")
    sql: str

    def encode(self) -> bytes:
        return _frame(b"Q", _cstr(self.sql))


@dataclass(frozen=True, slots=True)
class Sync:
    """Sync ('S'): end of an extended-query batch; the server answers ReadyForQuery."""

    type_byte: ClassVar[int] = ord("S")

    def encode(self) -> bytes:
        return SYNC


@dataclass(frozen=True, slots=True)
class Terminate:
    """Terminate ('X'): the client is closing the connection."""

    type_byte: ClassVar[int] = ord("X")

    def encode(self) -> bytes:
        return TERMINATE


FrontendMessage: TypeAlias = (
    Bind
    | Close
    | CopyData
    | CopyDone
    | CopyFail
    | Describe
    | Execute
    | Flush
    | FunctionCall
    | AuthResponse
    | PasswordMessage
    | SASLInitialResponse
    | SASLResponse
    | GSSResponse
    | Parse
    | Query
    | Sync
    | Terminate
)


def _empty(cls: Callable[[], _M], what: str) -> Callable[[bytes], _M]:
    """Decoder for a message with an empty body; one shared instance (they are frozen)."""
    instance = cls()

    def decode(body: bytes) -> _M:
        if body:
            raise _bad(what, f"expected an empty body, got {len(body)} byte(s)")
        return instance

    return decode


def _dec_bind(body: bytes) -> Bind:
    return Bind(*parse_bind(body))


def _dec_close(body: bytes) -> Close:
    return Close(*parse_close(body))


def _dec_describe(body: bytes) -> Describe:
    return Describe(*parse_describe(body))


def _dec_execute(body: bytes) -> Execute:
    return Execute(*parse_execute(body))


def _dec_copy_fail(body: bytes) -> CopyFail:
    r = _Reader(body, "CopyFail")
    msg = r.cstr()
    r.end()
    return CopyFail(msg)


def _dec_function_call(body: bytes) -> FunctionCall:
    r = _Reader(body, "FunctionCall")
    oid = r.u32()
    formats = r.i16s("argument format")
    args = r.values("argument")
    if len(formats) > 1 and len(formats) != len(args):
        raise _bad("FunctionCall", f"{len(formats)} argument formats for {len(args)} arguments")
    result_format = r.i16()
    r.end()
    return FunctionCall(oid, formats, args, result_format)


def _dec_parse(body: bytes) -> Parse:
    return Parse(*parse_parse(body))


def _dec_query(body: bytes) -> Query:
    return Query(parse_query(body))


_FRONTEND = {
    ord("B"): _dec_bind,
    ord("C"): _dec_close,
    ord("d"): CopyData,
    ord("c"): _empty(CopyDone, "CopyDone"),
    ord("f"): _dec_copy_fail,
    ord("D"): _dec_describe,
    ord("E"): _dec_execute,
    ord("H"): _empty(Flush, "Flush"),
    ord("F"): _dec_function_call,
    ord("p"): AuthResponse,
    ord("P"): _dec_parse,
    ord("Q"): _dec_query,
    ord("S"): _empty(Sync, "Sync"),
    ord("X"): _empty(Terminate, "Terminate"),
}


def decode_frontend(type_byte: int, body: bytes) -> FrontendMessage:
    """Decode one frontend (client to server) message body into its dataclass.

    'p' messages decode to :class:`AuthResponse` (see there for why).
    """
    try:
        decoder = _FRONTEND[type_byte]
    except KeyError:
        raise ProtocolError(f"invalid frontend message type {_show(type_byte)}") from None
    return decoder(bytes(body))


# =============================================================== typed backend messages


@dataclass(frozen=True, slots=True)
class AuthenticationOk:
    """AuthenticationOk (R/0)."""

    type_byte: ClassVar[int] = ord("R")
    code: ClassVar[int] = 0

    def encode(self) -> bytes:
        return AUTH_OK


@dataclass(frozen=True, slots=True)
class AuthenticationKerberosV5:
    """AuthenticationKerberosV5 (R/2); no server has sent it since 9.x, kept for completeness."""

    type_byte: ClassVar[int] = ord("R")
    code: ClassVar[int] = 2

    def encode(self) -> bytes:
        return b"R\0\0\0\x08\0\0\0\x02"


@dataclass(frozen=True, slots=True)
class AuthenticationCleartextPassword:
    """AuthenticationCleartextPassword (R/3)."""

    type_byte: ClassVar[int] = ord("R")
    code: ClassVar[int] = 3

    def encode(self) -> bytes:
        return auth_cleartext_password()


@dataclass(frozen=True, slots=True)
class AuthenticationMD5Password:
    """AuthenticationMD5Password (R/5) with its 4-byte salt."""

    type_byte: ClassVar[int] = ord("R")
    code: ClassVar[int] = 5
    salt: bytes

    def encode(self) -> bytes:
        return auth_md5_password(self.salt)


@dataclass(frozen=True, slots=True)
class AuthenticationGSS:
    """AuthenticationGSS (R/7)."""

    type_byte: ClassVar[int] = ord("R")
    code: ClassVar[int] = 7

    def encode(self) -> bytes:
        return b"R\0\0\0\x08\0\0\0\x07"


@dataclass(frozen=True, slots=True)
class AuthenticationGSSContinue:
    """AuthenticationGSSContinue (R/8) with GSSAPI or SSPI data."""

    type_byte: ClassVar[int] = ord("R")
    code: ClassVar[int] = 8
    data: bytes

    def encode(self) -> bytes:
        return _frame(b"R", b"\0\0\0\x08" + self.data)


@dataclass(frozen=True, slots=True)
class AuthenticationSSPI:
    """AuthenticationSSPI (R/9)."""

    type_byte: ClassVar[int] = ord("R")
    code: ClassVar[int] = 9

    def encode(self) -> bytes:
        return b"R\0\0\0\x08\0\0\0\x09"


@dataclass(frozen=True, slots=True)
class AuthenticationSASL:
    """AuthenticationSASL (R/10) listing SASL mechanisms in the server's preference order."""

    type_byte: ClassVar[int] = ord("R")
    code: ClassVar[int] = 10
    mechanisms: tuple[str, ...]

    def encode(self) -> bytes:
        for m in self.mechanisms:
            if not m:
                raise ValueError("SASL mechanism names cannot be empty")
        names = b"".join(_cstr(m) for m in self.mechanisms)
        return _frame(b"R", b"\0\0\0\x0a" + names + b"\0")


@dataclass(frozen=True, slots=True)
class AuthenticationSASLContinue:
    """AuthenticationSASLContinue (R/11) with mechanism data (SCRAM server-first)."""

    type_byte: ClassVar[int] = ord("R")
    code: ClassVar[int] = 11
    data: bytes

    def encode(self) -> bytes:
        return auth_sasl_continue(self.data)


@dataclass(frozen=True, slots=True)
class AuthenticationSASLFinal:
    """AuthenticationSASLFinal (R/12) with mechanism outcome data (SCRAM server-final)."""

    type_byte: ClassVar[int] = ord("R")
    code: ClassVar[int] = 12
    data: bytes

    def encode(self) -> bytes:
        return auth_sasl_final(self.data)


@dataclass(frozen=True, slots=True)
class BackendKeyData:
    """BackendKeyData ('K'): the pid and secret a client needs to send a CancelRequest.

    Protocol 3.2 made the secret variable length (4..256 bytes); 3.0 uses 4.
    """

    type_byte: ClassVar[int] = ord("K")
    pid: int
    secret: bytes

    def encode(self) -> bytes:
        return backend_key_data(self.pid, self.secret)


@dataclass(frozen=True, slots=True)
class BindComplete:
    """BindComplete ('2')."""

    type_byte: ClassVar[int] = ord("2")

    def encode(self) -> bytes:
        return BIND_COMPLETE


@dataclass(frozen=True, slots=True)
class CloseComplete:
    """CloseComplete ('3')."""

    type_byte: ClassVar[int] = ord("3")

    def encode(self) -> bytes:
        return CLOSE_COMPLETE


@dataclass(frozen=True, slots=True)
class CommandComplete:
    """CommandComplete ('C') with the command tag, e.g. ``'INSERT 0 1'``."""

    type_byte: ClassVar[int] = ord("C")
    tag: str

    def encode(self) -> bytes:
        return command_complete(self.tag)


def _copy_response(t: bytes, fmt: int, formats: tuple[int, ...]) -> bytes:
    if fmt not in (0, 1):
        raise ValueError(f"COPY format must be 0 or 1, got {fmt}")
    return _frame(
        t,
        bytes((fmt,))
        + _count(len(formats), "column formats")
        + _pack(Struct(f"!{len(formats)}h"), *formats),
    )


@dataclass(frozen=True, slots=True)
class CopyInResponse:
    """CopyInResponse ('G'): the server is ready to receive COPY data."""

    type_byte: ClassVar[int] = ord("G")
    format: int
    column_formats: tuple[int, ...] = ()

    def encode(self) -> bytes:
        return _copy_response(b"G", self.format, self.column_formats)


@dataclass(frozen=True, slots=True)
class CopyOutResponse:
    """CopyOutResponse ('H'): COPY data from the server follows."""

    type_byte: ClassVar[int] = ord("H")
    format: int
    column_formats: tuple[int, ...] = ()

    def encode(self) -> bytes:
        return _copy_response(b"H", self.format, self.column_formats)


@dataclass(frozen=True, slots=True)
class CopyBothResponse:
    """CopyBothResponse ('W'): bidirectional COPY (streaming replication)."""

    type_byte: ClassVar[int] = ord("W")
    format: int
    column_formats: tuple[int, ...] = ()

    def encode(self) -> bytes:
        return _copy_response(b"W", self.format, self.column_formats)


@dataclass(frozen=True, slots=True)
class DataRow:
    """DataRow ('D'): one result row; columns are raw bytes or ``None`` for NULL."""

    type_byte: ClassVar[int] = ord("D")
    columns: tuple[bytes | None, ...]

    def encode(self) -> bytes:
        return data_row(self.columns)


@dataclass(frozen=True, slots=True)
class EmptyQueryResponse:
    """EmptyQueryResponse ('I'): the query string was empty."""

    type_byte: ClassVar[int] = ord("I")

    def encode(self) -> bytes:
        return EMPTY_QUERY_RESPONSE


def _encode_fields(t: bytes, fields: Mapping[str, str]) -> bytes:
    parts = []
    for code, value in fields.items():
        if len(code) != 1 or code == "\0" or not code.isascii():
            raise ValueError(f"error field codes are single non-NUL ASCII characters: {code!r}")
        parts.append(code.encode())
        parts.append(_cstr(value))
    parts.append(b"\0")
    return _frame(t, b"".join(parts))


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """ErrorResponse ('E'); ``fields`` is keyed by one-letter codes ('S', 'C', 'M' ...)."""

    type_byte: ClassVar[int] = ord("E")
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "")

    @property
    def message(self) -> str:
        return self.fields.get("M", "")

    @property
    def severity(self) -> str:
        """Non-localized severity when present (it is stable across lc_messages)."""
        return self.fields.get("V") or self.fields.get("S", "")

    def encode(self) -> bytes:
        return _encode_fields(b"E", self.fields)


@dataclass(frozen=True, slots=True)
class NoticeResponse:
    """NoticeResponse ('N'); same fields as :class:`ErrorResponse`."""

    type_byte: ClassVar[int] = ord("N")
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "")

    @property
    def message(self) -> str:
        return self.fields.get("M", "")

    @property
    def severity(self) -> str:
        """Non-localized severity when present (it is stable across lc_messages)."""
        return self.fields.get("V") or self.fields.get("S", "")

    def encode(self) -> bytes:
        return _encode_fields(b"N", self.fields)


@dataclass(frozen=True, slots=True)
class FunctionCallResponse:
    """FunctionCallResponse ('V'): the result of a FunctionCall, ``None`` for NULL."""

    type_byte: ClassVar[int] = ord("V")
    result: bytes | None

    def encode(self) -> bytes:
        return _frame(b"V", _values((self.result,)))


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion:
    """NegotiateProtocolVersion ('v'): newest minor version and options the server lacks.

    The protocol documentation calls the first field the "newest minor protocol
    version", but PostgreSQL (and libpq, reading it) puts the *whole* version
    number there: ``3 << 16 | minor``. We follow the implementations; a message
    carrying a bare minor would read as protocol 0.x and make libpq give up.
    """

    type_byte: ClassVar[int] = ord("v")
    newest_minor: int
    unrecognized_options: tuple[str, ...] = ()

    def encode(self) -> bytes:
        opts = self.unrecognized_options
        if not 0 <= self.newest_minor <= 0xFFFF:
            raise ValueError(f"minor version must be 0..65535, got {self.newest_minor}")
        return _frame(
            b"v",
            _pack(_U32, 3 << 16 | self.newest_minor)
            + _pack(_U32, len(opts))
            + b"".join(_cstr(o) for o in opts),
        )


@dataclass(frozen=True, slots=True)
class NoData:
    """NoData ('n'): the described statement or portal returns no rows."""

    type_byte: ClassVar[int] = ord("n")

    def encode(self) -> bytes:
        return NO_DATA


@dataclass(frozen=True, slots=True)
class NotificationResponse:
    """NotificationResponse ('A'): a NOTIFY delivered to a listening session."""

    type_byte: ClassVar[int] = ord("A")
    pid: int
    channel: str
    payload: str = ""

    def encode(self) -> bytes:
        return _frame(b"A", _pack(_U32, self.pid) + _cstr(self.channel) + _cstr(self.payload))


@dataclass(frozen=True, slots=True)
class ParameterDescription:
    """ParameterDescription ('t'): the type oids of a statement's parameters."""

    type_byte: ClassVar[int] = ord("t")
    type_oids: tuple[int, ...]

    def encode(self) -> bytes:
        oids = self.type_oids
        return _frame(
            b"t", _count(len(oids), "parameters") + _pack(Struct(f"!{len(oids)}I"), *oids)
        )


@dataclass(frozen=True, slots=True)
class ParameterStatus:
    """ParameterStatus ('S'): a run-time parameter's current value."""

    type_byte: ClassVar[int] = ord("S")
    name: str
    value: str

    def encode(self) -> bytes:
        return parameter_status(self.name, self.value)


@dataclass(frozen=True, slots=True)
class ParseComplete:
    """ParseComplete ('1')."""

    type_byte: ClassVar[int] = ord("1")

    def encode(self) -> bytes:
        return PARSE_COMPLETE


@dataclass(frozen=True, slots=True)
class PortalSuspended:
    """PortalSuspended ('s'): Execute hit its row limit; the portal can be resumed."""

    type_byte: ClassVar[int] = ord("s")

    def encode(self) -> bytes:
        return PORTAL_SUSPENDED


@dataclass(frozen=True, slots=True)
class ReadyForQuery:
    """ReadyForQuery ('Z') with transaction status 'I', 'T' or 'E'."""

    type_byte: ClassVar[int] = ord("Z")
    status: str

    def encode(self) -> bytes:
        return ready_for_query(self.status)


_FIELD = Struct("!IhIhih")


@dataclass(frozen=True, slots=True)
class FieldDescription:
    """One column of a RowDescription."""

    name: str
    table_oid: int = 0
    column_attr: int = 0
    type_oid: int = 25  # text
    type_size: int = -1
    type_modifier: int = -1
    format: int = 0

    def encode(self) -> bytes:
        return _cstr(self.name) + _pack(
            _FIELD,
            self.table_oid,
            self.column_attr,
            self.type_oid,
            self.type_size,
            self.type_modifier,
            self.format,
        )


@dataclass(frozen=True, slots=True)
class RowDescription:
    """RowDescription ('T'): the columns of the rows that follow."""

    type_byte: ClassVar[int] = ord("T")
    fields: tuple[FieldDescription, ...]

    def encode(self) -> bytes:
        return _frame(
            b"T",
            _count(len(self.fields), "fields") + b"".join(f.encode() for f in self.fields),
        )


BackendMessage: TypeAlias = (
    AuthenticationOk
    | AuthenticationKerberosV5
    | AuthenticationCleartextPassword
    | AuthenticationMD5Password
    | AuthenticationGSS
    | AuthenticationGSSContinue
    | AuthenticationSSPI
    | AuthenticationSASL
    | AuthenticationSASLContinue
    | AuthenticationSASLFinal
    | BackendKeyData
    | BindComplete
    | CloseComplete
    | CommandComplete
    | CopyData
    | CopyDone
    | CopyInResponse
    | CopyOutResponse
    | CopyBothResponse
    | DataRow
    | EmptyQueryResponse
    | ErrorResponse
    | NoticeResponse
    | FunctionCallResponse
    | NegotiateProtocolVersion
    | NoData
    | NotificationResponse
    | ParameterDescription
    | ParameterStatus
    | ParseComplete
    | PortalSuspended
    | ReadyForQuery
    | RowDescription
)

_AUTH_SIMPLE = {
    0: AuthenticationOk(),
    2: AuthenticationKerberosV5(),
    3: AuthenticationCleartextPassword(),
    7: AuthenticationGSS(),
    9: AuthenticationSSPI(),
}
_AUTH_DATA = {
    8: AuthenticationGSSContinue,
    11: AuthenticationSASLContinue,
    12: AuthenticationSASLFinal,
}


def _dec_auth(body: bytes) -> BackendMessage:
    r = _Reader(body, "Authentication")
    code = r.i32()
    simple = _AUTH_SIMPLE.get(code)
    if simple is not None:
        r.end()
        return simple
    data_cls = _AUTH_DATA.get(code)
    if data_cls is not None:
        return data_cls(r.rest())
    if code == 5:
        salt = r.raw(4)
        r.end()
        return AuthenticationMD5Password(salt)
    if code == 10:
        mechanisms = []
        while True:
            name = r.cstr()
            if not name:
                break
            mechanisms.append(name)
        r.end()
        return AuthenticationSASL(tuple(mechanisms))
    raise _bad("Authentication", f"unknown authentication request code {code}")


def _dec_key_data(body: bytes) -> BackendKeyData:
    if not 4 + MIN_SECRET_KEY_LENGTH <= len(body) <= 4 + MAX_SECRET_KEY_LENGTH:
        raise _bad("BackendKeyData", f"secret key must be 4..256 bytes, got {len(body) - 4}")
    return BackendKeyData(_unpack_u32(body, 0)[0], body[4:])


def _dec_command_complete(body: bytes) -> CommandComplete:
    return CommandComplete(parse_command_complete(body))


def _dec_copy_response(
    cls: Callable[[int, tuple[int, ...]], _M], what: str
) -> Callable[[bytes], _M]:
    def decode(body: bytes) -> _M:
        r = _Reader(body, what)
        fmt = r.byte()
        if fmt not in (0, 1):
            raise _bad(what, f"overall COPY format must be 0 or 1, got {fmt}")
        formats = r.i16s("column format")
        r.end()
        return cls(fmt, formats)

    return decode


def _dec_data_row(body: bytes) -> DataRow:
    return DataRow(parse_data_row(body))


def _dec_error(body: bytes) -> ErrorResponse:
    return ErrorResponse(parse_error_fields(body, "ErrorResponse"))


def _dec_notice(body: bytes) -> NoticeResponse:
    return NoticeResponse(parse_error_fields(body, "NoticeResponse"))


def _dec_function_result(body: bytes) -> FunctionCallResponse:
    r = _Reader(body, "FunctionCallResponse")
    value = r.value()
    r.end()
    return FunctionCallResponse(value)


def _dec_negotiate(body: bytes) -> NegotiateProtocolVersion:
    r = _Reader(body, "NegotiateProtocolVersion")
    version = r.u32()
    if version >> 16 != 3:
        raise _bad(
            "NegotiateProtocolVersion",
            f"server offers protocol {version >> 16}.{version & 0xFFFF}, expected 3.x",
        )
    minor = version & 0xFFFF
    n = r.u32()
    if n > len(body) - 8:
        raise _bad("NegotiateProtocolVersion", f"option count {n} exceeds the remaining body")
    options = tuple([r.cstr() for _ in range(n)])
    r.end()
    return NegotiateProtocolVersion(minor, options)


def _dec_notification(body: bytes) -> NotificationResponse:
    r = _Reader(body, "NotificationResponse")
    pid = r.u32()
    channel = r.cstr()
    payload = r.cstr()
    r.end()
    return NotificationResponse(pid, channel, payload)


def _dec_parameter_description(body: bytes) -> ParameterDescription:
    r = _Reader(body, "ParameterDescription")
    oids = r.u32s("parameter")
    r.end()
    return ParameterDescription(oids)


def _dec_parameter_status(body: bytes) -> ParameterStatus:
    r = _Reader(body, "ParameterStatus")
    name = r.cstr()
    value = r.cstr()
    r.end()
    return ParameterStatus(name, value)


_RFQ_MESSAGES = {s: ReadyForQuery(s) for s in "ITE"}


def _dec_ready(body: bytes) -> ReadyForQuery:
    return _RFQ_MESSAGES[parse_ready_for_query(body)]


def _dec_row_description(body: bytes) -> RowDescription:
    r = _Reader(body, "RowDescription")
    n = r.count(19, "field")  # name NUL + 18 bytes of fixed attributes
    fields = []
    for _ in range(n):
        name = r.cstr()
        start = r._need(18)
        fields.append(FieldDescription(name, *_FIELD.unpack_from(body, start)))
    r.end()
    return RowDescription(tuple(fields))


_BACKEND = {
    ord("R"): _dec_auth,
    ord("K"): _dec_key_data,
    ord("2"): _empty(BindComplete, "BindComplete"),
    ord("3"): _empty(CloseComplete, "CloseComplete"),
    ord("C"): _dec_command_complete,
    ord("d"): CopyData,
    ord("c"): _empty(CopyDone, "CopyDone"),
    ord("G"): _dec_copy_response(CopyInResponse, "CopyInResponse"),
    ord("H"): _dec_copy_response(CopyOutResponse, "CopyOutResponse"),
    ord("W"): _dec_copy_response(CopyBothResponse, "CopyBothResponse"),
    ord("D"): _dec_data_row,
    ord("I"): _empty(EmptyQueryResponse, "EmptyQueryResponse"),
    ord("E"): _dec_error,
    ord("N"): _dec_notice,
    ord("V"): _dec_function_result,
    ord("v"): _dec_negotiate,
    ord("n"): _empty(NoData, "NoData"),
    ord("A"): _dec_notification,
    ord("t"): _dec_parameter_description,
    ord("S"): _dec_parameter_status,
    ord("1"): _empty(ParseComplete, "ParseComplete"),
    ord("s"): _empty(PortalSuspended, "PortalSuspended"),
    ord("Z"): _dec_ready,
    ord("T"): _dec_row_description,
}


def decode_backend(type_byte: int, body: bytes) -> BackendMessage:
    """Decode one backend (server to client) message body into its dataclass."""
    try:
        decoder = _BACKEND[type_byte]
    except KeyError:
        raise ProtocolError(f"invalid backend message type {_show(type_byte)}") from None
    return decoder(bytes(body))
