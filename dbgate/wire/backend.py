"""Typed backend messages: one frozen dataclass per message a server sends (sans-IO).

Each has a ``type_byte`` and an ``encode()`` method, and :func:`decode_backend`
turns ``(type byte, body)`` into the right one. They serve tests, tools and the
upstream login (:mod:`.connect`); the relay uses :mod:`.codec` directly. Decoding
errors are :class:`ServerProtocolError`: only servers send these.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from struct import Struct
from typing import ClassVar, TypeAlias, TypeVar

from dbgate.wire.codec import (
    AUTH_OK,
    BIND_COMPLETE,
    CLOSE_COMPLETE,
    EMPTY_QUERY_RESPONSE,
    NO_DATA,
    PARSE_COMPLETE,
    PORTAL_SUSPENDED,
    auth_cleartext_password,
    auth_md5_password,
    auth_sasl,
    auth_sasl_continue,
    auth_sasl_final,
    backend_key_data,
    command_complete,
    data_row,
    parameter_status,
    parse_backend_key_data,
    parse_command_complete,
    parse_data_row,
    parse_error_fields,
    parse_ready_for_query,
    ready_for_query,
)
from dbgate.wire.errors import ServerProtocolError
from dbgate.wire.framing import frame
from dbgate.wire.frontend import CopyData, CopyDone
from dbgate.wire.primitives import (
    U32,
    BodyReader,
    count,
    cstr,
    empty_body,
    malformed,
    pack,
    show,
    values,
)

__all__ = [
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
    "BindComplete",
    "CloseComplete",
    "CommandComplete",
    "CopyBothResponse",
    "CopyInResponse",
    "CopyOutResponse",
    "DataRow",
    "EmptyQueryResponse",
    "ErrorResponse",
    "FieldDescription",
    "FunctionCallResponse",
    "NegotiateProtocolVersion",
    "NoData",
    "NoticeResponse",
    "NotificationResponse",
    "ParameterDescription",
    "ParameterStatus",
    "ParseComplete",
    "PortalSuspended",
    "ReadyForQuery",
    "RowDescription",
    "decode_backend",
]

_SERVER = ServerProtocolError
_M = TypeVar("_M")


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
        return frame(self.type_byte, b"\0\0\0\x08" + self.data)


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
        return auth_sasl(self.mechanisms)


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


def _copy_response(t: int, fmt: int, formats: tuple[int, ...]) -> bytes:
    if fmt not in (0, 1):
        raise ValueError(f"COPY format must be 0 or 1, got {fmt}")
    return frame(
        t,
        bytes((fmt,))
        + count(len(formats), "column formats")
        + pack(Struct(f"!{len(formats)}h"), *formats),
    )


@dataclass(frozen=True, slots=True)
class CopyInResponse:
    """CopyInResponse ('G'): the server is ready to receive COPY data."""

    type_byte: ClassVar[int] = ord("G")
    format: int
    column_formats: tuple[int, ...] = ()

    def encode(self) -> bytes:
        return _copy_response(self.type_byte, self.format, self.column_formats)


@dataclass(frozen=True, slots=True)
class CopyOutResponse:
    """CopyOutResponse ('H'): COPY data from the server follows."""

    type_byte: ClassVar[int] = ord("H")
    format: int
    column_formats: tuple[int, ...] = ()

    def encode(self) -> bytes:
        return _copy_response(self.type_byte, self.format, self.column_formats)


@dataclass(frozen=True, slots=True)
class CopyBothResponse:
    """CopyBothResponse ('W'): bidirectional COPY (streaming replication)."""

    type_byte: ClassVar[int] = ord("W")
    format: int
    column_formats: tuple[int, ...] = ()

    def encode(self) -> bytes:
        return _copy_response(self.type_byte, self.format, self.column_formats)


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


def _encode_fields(t: int, fields: Mapping[str, str]) -> bytes:
    parts = []
    for code, value in fields.items():
        if len(code) != 1 or code == "\0" or not code.isascii():
            raise ValueError(f"error field codes are single non-NUL ASCII characters: {code!r}")
        parts.append(code.encode())
        parts.append(cstr(value))
    parts.append(b"\0")
    return frame(t, b"".join(parts))


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
        return _encode_fields(self.type_byte, self.fields)


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
        return _encode_fields(self.type_byte, self.fields)


@dataclass(frozen=True, slots=True)
class FunctionCallResponse:
    """FunctionCallResponse ('V'): the result of a FunctionCall, ``None`` for NULL."""

    type_byte: ClassVar[int] = ord("V")
    result: bytes | None

    def encode(self) -> bytes:
        return frame(self.type_byte, values((self.result,)))


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
        return frame(
            self.type_byte,
            pack(U32, 3 << 16 | self.newest_minor)
            + pack(U32, len(opts))
            + b"".join(cstr(o) for o in opts),
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
        return frame(self.type_byte, pack(U32, self.pid) + cstr(self.channel) + cstr(self.payload))


@dataclass(frozen=True, slots=True)
class ParameterDescription:
    """ParameterDescription ('t'): the type oids of a statement's parameters."""

    type_byte: ClassVar[int] = ord("t")
    type_oids: tuple[int, ...]

    def encode(self) -> bytes:
        oids = self.type_oids
        return frame(
            self.type_byte, count(len(oids), "parameters") + pack(Struct(f"!{len(oids)}I"), *oids)
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
        return cstr(self.name) + pack(
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
        return frame(
            self.type_byte,
            count(len(self.fields), "fields") + b"".join(f.encode() for f in self.fields),
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
    r = BodyReader(body, "Authentication", _SERVER)
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
    raise malformed("Authentication", f"unknown authentication request code {code}", _SERVER)


def _dec_key_data(body: bytes) -> BackendKeyData:
    return BackendKeyData(*parse_backend_key_data(body))


def _dec_command_complete(body: bytes) -> CommandComplete:
    return CommandComplete(parse_command_complete(body))


def _dec_copy_response(
    cls: Callable[[int, tuple[int, ...]], _M], what: str
) -> Callable[[bytes], _M]:
    def decode(body: bytes) -> _M:
        r = BodyReader(body, what, _SERVER)
        fmt = r.byte()
        if fmt not in (0, 1):
            raise malformed(what, f"overall COPY format must be 0 or 1, got {fmt}", _SERVER)
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
    r = BodyReader(body, "FunctionCallResponse", _SERVER)
    value = r.value()
    r.end()
    return FunctionCallResponse(value)


def _dec_negotiate(body: bytes) -> NegotiateProtocolVersion:
    r = BodyReader(body, "NegotiateProtocolVersion", _SERVER)
    version = r.u32()
    if version >> 16 != 3:
        raise malformed(
            "NegotiateProtocolVersion",
            f"server offers protocol {version >> 16}.{version & 0xFFFF}, expected 3.x",
            _SERVER,
        )
    minor = version & 0xFFFF
    n = r.u32()
    if n > len(body) - 8:
        raise malformed(
            "NegotiateProtocolVersion", f"option count {n} exceeds the remaining body", _SERVER
        )
    options = tuple([r.cstr() for _ in range(n)])
    r.end()
    return NegotiateProtocolVersion(minor, options)


def _dec_notification(body: bytes) -> NotificationResponse:
    r = BodyReader(body, "NotificationResponse", _SERVER)
    pid = r.u32()
    channel = r.cstr()
    payload = r.cstr()
    r.end()
    return NotificationResponse(pid, channel, payload)


def _dec_parameter_description(body: bytes) -> ParameterDescription:
    r = BodyReader(body, "ParameterDescription", _SERVER)
    oids = r.u32s("parameter")
    r.end()
    return ParameterDescription(oids)


def _dec_parameter_status(body: bytes) -> ParameterStatus:
    r = BodyReader(body, "ParameterStatus", _SERVER)
    name = r.cstr()
    value = r.cstr()
    r.end()
    return ParameterStatus(name, value)


_RFQ_MESSAGES = {s: ReadyForQuery(s) for s in "ITE"}


def _dec_ready(body: bytes) -> ReadyForQuery:
    return _RFQ_MESSAGES[parse_ready_for_query(body)]


def _dec_row_description(body: bytes) -> RowDescription:
    r = BodyReader(body, "RowDescription", _SERVER)
    n = r.count(19, "field")  # name NUL + 18 bytes of fixed attributes
    fields = []
    for _ in range(n):
        name = r.cstr()
        start = r.need(18)
        fields.append(FieldDescription(name, *_FIELD.unpack_from(body, start)))
    r.end()
    return RowDescription(tuple(fields))


_BACKEND = {
    ord("R"): _dec_auth,
    ord("K"): _dec_key_data,
    ord("2"): empty_body(BindComplete, "BindComplete", _SERVER),
    ord("3"): empty_body(CloseComplete, "CloseComplete", _SERVER),
    ord("C"): _dec_command_complete,
    ord("d"): CopyData,
    ord("c"): empty_body(CopyDone, "CopyDone", _SERVER),
    ord("G"): _dec_copy_response(CopyInResponse, "CopyInResponse"),
    ord("H"): _dec_copy_response(CopyOutResponse, "CopyOutResponse"),
    ord("W"): _dec_copy_response(CopyBothResponse, "CopyBothResponse"),
    ord("D"): _dec_data_row,
    ord("I"): empty_body(EmptyQueryResponse, "EmptyQueryResponse", _SERVER),
    ord("E"): _dec_error,
    ord("N"): _dec_notice,
    ord("V"): _dec_function_result,
    ord("v"): _dec_negotiate,
    ord("n"): empty_body(NoData, "NoData", _SERVER),
    ord("A"): _dec_notification,
    ord("t"): _dec_parameter_description,
    ord("S"): _dec_parameter_status,
    ord("1"): empty_body(ParseComplete, "ParseComplete", _SERVER),
    ord("s"): empty_body(PortalSuspended, "PortalSuspended", _SERVER),
    ord("Z"): _dec_ready,
    ord("T"): _dec_row_description,
}


def decode_backend(type_byte: int, body: bytes) -> BackendMessage:
    """Decode one backend (server to client) message body into its dataclass."""
    try:
        decoder = _BACKEND[type_byte]
    except KeyError:
        raise ServerProtocolError(f"invalid backend message type {show(type_byte)}") from None
    return decoder(bytes(body))
