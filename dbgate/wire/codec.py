"""The codec's hot half: parsers and builders the relay calls per message (sans-IO).

The relay calls these once per statement, and some once per row, so they take a
message *body* (as framed by :class:`dbgate.wire.framing.FrameReader`) and return
plain tuples, strings or ready-to-send ``bytes``: no dataclass, no dispatch. The
typed messages of :mod:`.frontend` and :mod:`.backend` are built on them.

Guarantees shared by every parser here (and by the typed decoders):

* Any malformed body -- truncated, a string without its NUL, a count that does
  not match the data, a negative length other than -1 (SQL NULL), trailing bytes,
  an unknown sub-code -- raises a :class:`ProtocolError` (SQLSTATE 08P01): a
  :class:`ClientProtocolError` from a frontend message's parser, a
  :class:`ServerProtocolError` from a backend message's. Never ``IndexError``,
  ``struct.error`` or ``UnicodeDecodeError``.
* Strings (SQL text, names, tags, error fields) must be valid UTF-8: dbgate
  analyses SQL as text, and silently mangling bytes (``surrogateescape``) would let
  a client hide statement text from the classifier. Invalid UTF-8 is refused.
* Values (Bind parameters, DataRow columns, COPY data) stay raw ``bytes``; their
  meaning depends on type and format, which is not the codec's business.

Builders raise ``ValueError`` for values that cannot be represented (a NUL inside a
string, an integer out of range): those are bugs in the caller, not peer input.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from struct import Struct

from dbgate.wire.errors import ClientProtocolError, ServerProtocolError
from dbgate.wire.framing import frame
from dbgate.wire.primitives import (
    U32,
    BodyReader,
    count,
    cstr,
    cstr_at,
    decode_str,
    i16s_at,
    malformed,
    pack,
    show,
    unpack_i32,
    unpack_u16,
    unpack_u32,
    values,
    values_at,
)
from dbgate.wire.sqlstate import SUCCESSFUL_COMPLETION

try:
    from dbgate.wire._scan import bind_values as _c_bind_values
except ImportError:  # pragma: no cover - exercised when no compiler was available
    _c_bind_values = None

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
    "auth_cleartext_password",
    "auth_md5_password",
    "auth_ok",
    "auth_sasl",
    "auth_sasl_continue",
    "auth_sasl_final",
    "backend_key_data",
    "bind_params",
    "command_complete",
    "data_row",
    "error_response",
    "notice_response",
    "parameter_status",
    "parse_backend_key_data",
    "parse_bind",
    "parse_close",
    "parse_command_complete",
    "parse_data_row",
    "parse_describe",
    "parse_error_fields",
    "parse_execute",
    "parse_parameter_status",
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

_CLIENT = ClientProtocolError  # whose fault a malformed frontend message is
_SERVER = ServerProtocolError  # and a malformed backend message


def _bad_frontend(what: str, detail: str) -> ClientProtocolError:
    return malformed(what, detail, _CLIENT)


def _bad_backend(what: str, detail: str) -> ServerProtocolError:
    return malformed(what, detail, _SERVER)


MIN_SECRET_KEY_LENGTH = 4
"""Protocol 3.0 cancel keys are exactly 4 bytes; 3.2 allows 4..256."""
MAX_SECRET_KEY_LENGTH = 256


# ----------------------------------------------------------------- fast frontend parsers


def parse_query(body: bytes, start: int = 0, end: int = -1) -> str:
    """SQL text of a simple ``Query`` ('Q') body: ``body[start:end]`` (``end`` -1: to
    the end). The relay passes the read that holds the message and its offsets, so a
    50 MB statement is decoded where it lies, not sliced into a copy first."""
    if end < 0:
        end = len(body)
    nul = body.find(b"\0", start, end)
    if nul < 0:
        raise _bad_frontend("Query", "query string is not NUL-terminated")
    if nul != end - 1:
        raise _bad_frontend("Query", f"{end - nul - 1} unexpected trailing byte(s)")
    return decode_str(body, "Query", _CLIENT, start, nul)


def parse_parse(body: bytes) -> tuple[str, str, tuple[int, ...]]:
    """``(statement name, sql, parameter type oids)`` of a ``Parse`` ('P') body."""
    name, pos = cstr_at(body, 0, "Parse", _CLIENT)
    sql, pos = cstr_at(body, pos, "Parse", _CLIENT)
    if pos + 2 > len(body):
        raise _bad_frontend("Parse", "truncated: parameter type count missing")
    n = unpack_u16(body, pos)[0]
    pos += 2
    if pos + 4 * n != len(body):
        if pos + 4 * n > len(body):
            raise _bad_frontend("Parse", f"parameter type count {n} exceeds the remaining body")
        raise _bad_frontend("Parse", f"{len(body) - pos - 4 * n} unexpected trailing byte(s)")
    return name, sql, (Struct(f"!{n}I").unpack_from(body, pos) if n else ())


def parse_bind(
    body: bytes,
) -> tuple[str, str, tuple[int, ...], tuple[bytes | None, ...], tuple[int, ...]]:
    """``(portal, statement, param formats, params, result formats)`` of a ``Bind``.

    Parameter values are raw bytes (``None`` for SQL NULL). The number of format
    codes must be 0, 1 or the number of parameters, as the server requires.
    """
    portal, pos = cstr_at(body, 0, "Bind", _CLIENT)
    statement, pos = cstr_at(body, pos, "Bind", _CLIENT)
    formats, pos = i16s_at(body, pos, "Bind", "parameter format", _CLIENT)
    params, pos = values_at(body, pos, "Bind", "parameter", _CLIENT)
    if len(formats) > 1 and len(formats) != len(params):
        raise _bad_frontend(
            "Bind", f"{len(formats)} parameter formats for {len(params)} parameters"
        )
    result_formats, pos = i16s_at(body, pos, "Bind", "result format", _CLIENT)
    if pos != len(body):
        raise _bad_frontend("Bind", f"{len(body) - pos} unexpected trailing byte(s)")
    return portal, statement, formats, params, result_formats


def bind_params(body: bytes) -> tuple[bytes | None, ...]:
    """The parameter values of a ``Bind`` body alone, as :func:`parse_bind` reads them:
    what an observer records of the Bind an Execute ran, without decoding the names
    and format codes around them."""
    if _c_bind_values is not None:
        try:
            return _c_bind_values(body)  # type: ignore[no-any-return]
        except ValueError:
            pass  # malformed: the reader below says how
    portal_end = body.find(b"\0")
    end = body.find(b"\0", portal_end + 1) if portal_end >= 0 else -1
    if end < 0:
        raise _bad_frontend("Bind", "portal or statement name is not NUL-terminated")
    pos = end + 1
    if pos + 2 > len(body):
        raise _bad_frontend("Bind", f"truncated: parameter format count missing at offset {pos}")
    params, _ = values_at(
        body, pos + 2 + 2 * unpack_u16(body, pos)[0], "Bind", "parameter", _CLIENT
    )
    return params


def parse_execute(body: bytes) -> tuple[str, int]:
    """``(portal, max rows)`` of an ``Execute`` ('E') body; 0 rows means no limit."""
    end = body.find(b"\0")
    if end < 0:
        raise _bad_frontend("Execute", "portal name is not NUL-terminated")
    if len(body) != end + 5:
        raise _bad_frontend(
            "Execute", f"expected 4 bytes after the portal name, got {len(body) - end - 1}"
        )
    return decode_str(body[:end], "Execute", _CLIENT), unpack_i32(body, end + 1)[0]


def _parse_kind_name(body: bytes, what: str) -> tuple[str, str]:
    if len(body) < 2:
        raise _bad_frontend(what, "body too short")
    k = body[0]
    if k not in (0x53, 0x50):
        raise _bad_frontend(what, f"kind must be 'S' or 'P', got {show(k)}")
    end = body.find(b"\0", 1)
    if end != len(body) - 1:
        if end < 0:
            raise _bad_frontend(what, "name is not NUL-terminated")
        raise _bad_frontend(what, f"{len(body) - end - 1} unexpected trailing byte(s)")
    return chr(k), decode_str(body[1:end], what, _CLIENT)


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
        raise _bad_frontend("PasswordMessage", "password is not NUL-terminated")
    if end != len(body) - 1:
        raise _bad_frontend("PasswordMessage", f"{len(body) - end - 1} unexpected trailing byte(s)")
    return decode_str(body[:end], "PasswordMessage", _CLIENT)


def parse_sasl_initial_response(body: bytes) -> tuple[str, bytes | None]:
    """``(mechanism, initial data or None)`` of a SASLInitialResponse 'p' body."""
    r = BodyReader(body, "SASLInitialResponse", _CLIENT)
    mechanism = r.cstr()
    data = r.value()
    r.end()
    return mechanism, data


# ----------------------------------------------------------------- fast backend parsers


def parse_parameter_status(body: bytes) -> tuple[str, str]:
    """ParameterStatus body -> (name, value); lenient about encoding, as it is
    informational (server-reported settings) and must never end a session."""
    name, _, value = bytes(body).rstrip(b"\0").partition(b"\0")
    return name.decode("utf-8", "replace"), value.decode("utf-8", "replace")


def parse_ready_for_query(body: bytes) -> str:
    """Transaction status of ReadyForQuery: 'I' idle, 'T' in transaction, 'E' failed."""
    if len(body) != 1 or body[0] not in (0x49, 0x54, 0x45):
        raise _bad_backend("ReadyForQuery", f"invalid transaction status {body!r}")
    return chr(body[0])


def parse_backend_key_data(body: bytes) -> tuple[int, bytes]:
    """``(pid, secret key)`` of BackendKeyData ('K'); the key is 4..256 bytes."""
    if not 4 + MIN_SECRET_KEY_LENGTH <= len(body) <= 4 + MAX_SECRET_KEY_LENGTH:
        raise _bad_backend(
            "BackendKeyData", f"secret key must be 4..256 bytes, got {len(body) - 4}"
        )
    return unpack_u32(body, 0)[0], bytes(body[4:])


def parse_command_complete(body: bytes) -> str:
    """The command tag of CommandComplete, e.g. ``'SELECT 5'``."""
    end = body.find(b"\0")
    if end < 0 or end != len(body) - 1:
        raise _bad_backend("CommandComplete", "tag must be one NUL-terminated string")
    return decode_str(body[:end], "CommandComplete", _SERVER)


def parse_data_row(body: bytes) -> tuple[bytes | None, ...]:
    """Column values of a DataRow ('D') body; ``None`` is SQL NULL."""
    cols, pos = values_at(body, 0, "DataRow", "column", _SERVER)
    if pos != len(body):
        raise _bad_backend("DataRow", f"{len(body) - pos} unexpected trailing byte(s)")
    return cols


def parse_error_fields(body: bytes, what: str = "ErrorResponse") -> dict[str, str]:
    """Fields of an ErrorResponse/NoticeResponse keyed by their one-letter codes."""
    r = BodyReader(body, what, _SERVER)
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
    parts = [b"S", cstr(severity), b"V", cstr(severity), b"C", cstr(code), b"M", cstr(message)]
    for key, value in extra.items():
        if value is None:
            continue
        letter = ERROR_FIELD_NAMES.get(key, key)
        if len(letter) != 1 or letter not in ERROR_FIELD_NAMES.values():
            raise ValueError(f"unknown error field {key!r}")
        if letter in "SVCM":
            raise ValueError(f"field {key!r} is set by a positional argument")
        parts.append(letter.encode())
        parts.append(cstr(str(value)))
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
    return frame(ord("E"), _fields_body(severity, code, message, extra_fields))


def notice_response(
    message: str,
    code: str = SUCCESSFUL_COMPLETION,
    severity: str = "NOTICE",
    **extra_fields: object,
) -> bytes:
    """A complete NoticeResponse message (see :func:`error_response` for fields)."""
    return frame(ord("N"), _fields_body(severity, code, message, extra_fields))


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
    return frame(ord("S"), cstr(name) + cstr(value))


def backend_key_data(pid: int, key: bytes) -> bytes:
    """BackendKeyData ('K'). ``key`` is 4 bytes for protocol 3.0, up to 256 for 3.2."""
    if not MIN_SECRET_KEY_LENGTH <= len(key) <= MAX_SECRET_KEY_LENGTH:
        raise ValueError(f"cancel key must be 4..256 bytes, got {len(key)}")
    return frame(ord("K"), pack(U32, pid) + key)


def command_complete(tag: str) -> bytes:
    """CommandComplete ('C') with a command tag such as ``'SELECT 1'``."""
    return frame(ord("C"), cstr(tag))


def data_row(columns: Iterable[bytes | None]) -> bytes:
    """DataRow ('D') from raw column values (``None`` is SQL NULL)."""
    cols = tuple(columns)
    return frame(ord("D"), count(len(cols), "columns") + values(cols))


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
    names = []
    for name in mechanisms:
        if not name:
            raise ValueError("SASL mechanism names cannot be empty")
        names.append(cstr(name))
    return frame(ord("R"), b"\0\0\0\x0a" + b"".join(names) + b"\0")


def auth_sasl_continue(data: bytes) -> bytes:
    """AuthenticationSASLContinue carrying e.g. the SCRAM server-first message."""
    return frame(ord("R"), b"\0\0\0\x0b" + data)


def auth_sasl_final(data: bytes) -> bytes:
    """AuthenticationSASLFinal carrying e.g. the SCRAM server-final message."""
    return frame(ord("R"), b"\0\0\0\x0c" + data)


def query(sql: str) -> bytes:
    """A simple Query ('Q') message."""
    return frame(ord("Q"), cstr(sql))


def password_message(password: str) -> bytes:
    """PasswordMessage ('p') with a cleartext or ``md5...`` password."""
    return frame(ord("p"), cstr(password))


def sasl_initial_response(mechanism: str, data: bytes | None) -> bytes:
    """SASLInitialResponse ('p') choosing ``mechanism`` with its first data."""
    return frame(ord("p"), cstr(mechanism) + values((data,)))


def sasl_response(data: bytes) -> bytes:
    """SASLResponse ('p') carrying e.g. the SCRAM client-final message."""
    return frame(ord("p"), data)
