"""Typed frontend messages: one frozen dataclass per message a client sends (sans-IO).

Each has a ``type_byte`` and an ``encode()`` method, and :func:`decode_frontend`
turns ``(type byte, body)`` into the right one. They serve tests, tools and
anything that is not per-message hot; the relay uses :mod:`.codec` directly.
Decoding errors are :class:`ClientProtocolError`: only clients send these.

:class:`CopyData` and :class:`CopyDone` are sent by either side; they live here and
:mod:`.backend` decodes to the same classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from struct import Struct
from typing import ClassVar, TypeAlias

from dbgate.wire.codec import (
    COPY_DONE,
    FLUSH,
    SYNC,
    TERMINATE,
    parse_bind,
    parse_close,
    parse_describe,
    parse_execute,
    parse_parse,
    parse_query,
    sasl_initial_response,
)
from dbgate.wire.errors import ClientProtocolError
from dbgate.wire.framing import frame
from dbgate.wire.primitives import (
    I16,
    I32,
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
    "AuthResponse",
    "Bind",
    "Close",
    "CopyData",
    "CopyDone",
    "CopyFail",
    "Describe",
    "Execute",
    "Flush",
    "FrontendMessage",
    "FunctionCall",
    "GSSResponse",
    "Parse",
    "PasswordMessage",
    "Query",
    "SASLInitialResponse",
    "SASLResponse",
    "Sync",
    "Terminate",
    "decode_frontend",
]

_CLIENT = ClientProtocolError


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
        return frame(
            self.type_byte,
            b"".join(
                (
                    cstr(self.portal),
                    cstr(self.statement),
                    count(len(pf), "parameter formats"),
                    pack(Struct(f"!{len(pf)}h"), *pf),
                    count(len(self.params), "parameters"),
                    values(self.params),
                    count(len(rf), "result formats"),
                    pack(Struct(f"!{len(rf)}h"), *rf),
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
        return frame(self.type_byte, self.kind.encode() + cstr(self.name))


@dataclass(frozen=True, slots=True)
class CopyData:
    """CopyData ('d'), sent by either side during COPY."""

    type_byte: ClassVar[int] = ord("d")
    data: bytes

    def encode(self) -> bytes:
        return frame(self.type_byte, self.data)


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
        return frame(self.type_byte, cstr(self.message))


@dataclass(frozen=True, slots=True)
class Describe:
    """Describe ('D') a prepared statement ('S') or portal ('P')."""

    type_byte: ClassVar[int] = ord("D")
    kind: str
    name: str = ""

    def encode(self) -> bytes:
        if self.kind not in ("S", "P"):
            raise ValueError(f"kind must be 'S' or 'P', got {self.kind!r}")
        return frame(self.type_byte, self.kind.encode() + cstr(self.name))


@dataclass(frozen=True, slots=True)
class Execute:
    """Execute ('E') a portal, returning at most ``max_rows`` rows (0: all)."""

    type_byte: ClassVar[int] = ord("E")
    portal: str = ""
    max_rows: int = 0

    def encode(self) -> bytes:
        return frame(self.type_byte, cstr(self.portal) + pack(I32, self.max_rows))


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
        return frame(
            self.type_byte,
            b"".join(
                (
                    pack(U32, self.function_oid),
                    count(len(af), "argument formats"),
                    pack(Struct(f"!{len(af)}h"), *af),
                    count(len(self.args), "arguments"),
                    values(self.args),
                    pack(I16, self.result_format),
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
        return frame(self.type_byte, self.data)


@dataclass(frozen=True, slots=True)
class PasswordMessage:
    """PasswordMessage ('p'): cleartext password or ``md5`` + hex digest."""

    type_byte: ClassVar[int] = ord("p")
    password: str = field(repr=False)  # keep it out of logs and tracebacks

    def encode(self) -> bytes:
        return frame(self.type_byte, cstr(self.password))


@dataclass(frozen=True, slots=True)
class SASLInitialResponse:
    """SASLInitialResponse ('p'): the chosen mechanism and its first message."""

    type_byte: ClassVar[int] = ord("p")
    mechanism: str
    data: bytes | None = None

    def encode(self) -> bytes:
        return sasl_initial_response(self.mechanism, self.data)


@dataclass(frozen=True, slots=True)
class SASLResponse:
    """SASLResponse ('p'): a later SASL message, e.g. SCRAM client-final."""

    type_byte: ClassVar[int] = ord("p")
    data: bytes

    def encode(self) -> bytes:
        return frame(self.type_byte, self.data)


@dataclass(frozen=True, slots=True)
class GSSResponse:
    """GSSResponse ('p'): a GSSAPI/SSPI token."""

    type_byte: ClassVar[int] = ord("p")
    data: bytes

    def encode(self) -> bytes:
        return frame(self.type_byte, self.data)


@dataclass(frozen=True, slots=True)
class Parse:
    """Parse ('P'): prepare ``sql`` as statement ``name`` ('' is the unnamed one)."""

    type_byte: ClassVar[int] = ord("P")
    name: str
    sql: str
    param_types: tuple[int, ...] = ()

    def encode(self) -> bytes:
        pt = self.param_types
        return frame(
            self.type_byte,
            cstr(self.name)
            + cstr(self.sql)
            + count(len(pt), "parameter types")
            + pack(Struct(f"!{len(pt)}I"), *pt),
        )


@dataclass(frozen=True, slots=True)
class Query:
    """Query ('Q'): simple query protocol, possibly several statements."""

    type_byte: ClassVar[int] = ord("Q")
    sql: str

    def encode(self) -> bytes:
        return frame(self.type_byte, cstr(self.sql))


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


def _dec_bind(body: bytes) -> Bind:
    return Bind(*parse_bind(body))


def _dec_close(body: bytes) -> Close:
    return Close(*parse_close(body))


def _dec_describe(body: bytes) -> Describe:
    return Describe(*parse_describe(body))


def _dec_execute(body: bytes) -> Execute:
    return Execute(*parse_execute(body))


def _dec_copy_fail(body: bytes) -> CopyFail:
    r = BodyReader(body, "CopyFail", _CLIENT)
    msg = r.cstr()
    r.end()
    return CopyFail(msg)


def _dec_function_call(body: bytes) -> FunctionCall:
    r = BodyReader(body, "FunctionCall", _CLIENT)
    oid = r.u32()
    formats = r.i16s("argument format")
    args = r.values("argument")
    if len(formats) > 1 and len(formats) != len(args):
        raise malformed(
            "FunctionCall", f"{len(formats)} argument formats for {len(args)} arguments", _CLIENT
        )
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
    ord("c"): empty_body(CopyDone, "CopyDone", _CLIENT),
    ord("f"): _dec_copy_fail,
    ord("D"): _dec_describe,
    ord("E"): _dec_execute,
    ord("H"): empty_body(Flush, "Flush", _CLIENT),
    ord("F"): _dec_function_call,
    ord("p"): AuthResponse,
    ord("P"): _dec_parse,
    ord("Q"): _dec_query,
    ord("S"): empty_body(Sync, "Sync", _CLIENT),
    ord("X"): empty_body(Terminate, "Terminate", _CLIENT),
}


def decode_frontend(type_byte: int, body: bytes) -> FrontendMessage:
    """Decode one frontend (client to server) message body into its dataclass.

    'p' messages decode to :class:`AuthResponse` (see there for why).
    """
    try:
        decoder = _FRONTEND[type_byte]
    except KeyError:
        raise ClientProtocolError(f"invalid frontend message type {show(type_byte)}") from None
    return decoder(bytes(body))
