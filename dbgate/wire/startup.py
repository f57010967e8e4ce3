"""Startup-phase packets: StartupMessage, SSLRequest, GSSENCRequest, CancelRequest.

These packets have no type byte -- just ``length:u32`` and a body whose first
``u32`` is a protocol version or a magic request code.
:class:`dbgate.wire.framing.StartupReader` frames them; :func:`parse_startup_packet`
tells them apart and decodes them. Every class has ``encode()`` (the whole packet,
length included) because the proxy also plays client towards the upstream server.

Version negotiation follows the server (PostgreSQL 18, protocol 3.2):

* major version other than 3: :class:`ClientProtocolError` with SQLSTATE 0A000;
* 3.0 .. 3.2: accepted as is;
* 3.x with x > 2, or any ``_pq_.*`` protocol option (we support none): still
  accepted, and :attr:`StartupMessage.needs_negotiation` is true. The caller then
  sends :func:`negotiate_protocol_version` before authentication and continues
  with :attr:`StartupMessage.negotiated_protocol`, exactly like PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from struct import Struct
from typing import ClassVar, TypeAlias

from dbgate.wire.backend import NegotiateProtocolVersion
from dbgate.wire.codec import MAX_SECRET_KEY_LENGTH, MIN_SECRET_KEY_LENGTH
from dbgate.wire.errors import ClientProtocolError
from dbgate.wire.sqlstate import FEATURE_NOT_SUPPORTED, INVALID_AUTHORIZATION

__all__ = [
    "CANCEL_REQUEST_CODE",
    "GSSENC_REQUEST_CODE",
    "NEWEST_MINOR",
    "SSL_REQUEST_CODE",
    "CancelRequest",
    "GSSENCRequest",
    "SSLRequest",
    "StartupMessage",
    "StartupPacket",
    "negotiate_protocol_version",
    "parse_startup_packet",
]

CANCEL_REQUEST_CODE = 80877102  # 1234 << 16 | 5678
SSL_REQUEST_CODE = 80877103  # 1234 << 16 | 5679
GSSENC_REQUEST_CODE = 80877104  # 1234 << 16 | 5680
NEWEST_MINOR = 2
"""Newest protocol 3 minor version this codec speaks (3.2, PostgreSQL 18)."""

PROTOCOL_OPTION_PREFIX = "_pq_."

_U32 = Struct("!I")
_II = Struct("!II")
_III = Struct("!III")


def _cstr(value: str) -> bytes:
    data = value.encode()
    if b"\0" in data:
        raise ValueError(f"startup strings cannot contain NUL: {value!r}")
    return data + b"\0"


@dataclass(frozen=True, slots=True)
class StartupMessage:
    """The client's StartupMessage.

    ``params`` holds the ordinary parameters (``user``, ``database``,
    ``application_name``, ``options``, GUCs ...) in the order sent.
    ``protocol_options`` holds the ``_pq_.*`` protocol extensions separately so
    that the proxy never forwards them blindly: none are supported, and each must
    be reported back in NegotiateProtocolVersion.
    """

    protocol: tuple[int, int]
    params: dict[str, str]
    protocol_options: dict[str, str] = field(default_factory=dict)

    @property
    def unsupported_options(self) -> tuple[str, ...]:
        """Names of the ``_pq_.*`` options the client asked for (we support none)."""
        return tuple(self.protocol_options)

    @property
    def needs_negotiation(self) -> bool:
        """True when the server must send NegotiateProtocolVersion before auth."""
        return self.protocol[1] > NEWEST_MINOR or bool(self.protocol_options)

    @property
    def negotiated_protocol(self) -> tuple[int, int]:
        """The version the session actually speaks: the client's, capped at 3.2."""
        return (3, min(self.protocol[1], NEWEST_MINOR))

    def negotiation(self) -> bytes:
        """The NegotiateProtocolVersion message to send if :attr:`needs_negotiation`.

        It offers the version the session will speak — the client's, capped at 3.2 —
        as PostgreSQL does: offering 3.2 to a 3.0 client that merely sent a ``_pq_``
        option reads to libpq as an upgrade it never asked for, and it aborts.
        """
        return negotiate_protocol_version(self.negotiated_protocol[1], list(self.protocol_options))

    @property
    def user(self) -> str:
        return self.params["user"]

    @property
    def database(self) -> str:
        """The database, defaulting to the user name as the server does."""
        return self.params.get("database") or self.params["user"]

    def encode(self) -> bytes:
        major, minor = self.protocol
        if not (0 <= major <= 0xFFFF and 0 <= minor <= 0xFFFF):
            raise ValueError(f"invalid protocol version {self.protocol}")
        parts = [_U32.pack(major << 16 | minor)]
        for mapping in (self.params, self.protocol_options):
            for name, value in mapping.items():
                if not name:
                    raise ValueError("startup parameter names cannot be empty")
                parts.append(_cstr(name))
                parts.append(_cstr(value))
        parts.append(b"\0")
        body = b"".join(parts)
        return _U32.pack(len(body) + 4) + body


@dataclass(frozen=True, slots=True)
class SSLRequest:
    """SSLRequest: the client asks to switch to TLS; answer a single byte 'S' or 'N'."""

    code: ClassVar[int] = SSL_REQUEST_CODE

    def encode(self) -> bytes:
        return _II.pack(8, SSL_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    """GSSENCRequest: the client asks for GSSAPI encryption; answer 'G' or 'N'."""

    code: ClassVar[int] = GSSENC_REQUEST_CODE

    def encode(self) -> bytes:
        return _II.pack(8, GSSENC_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """CancelRequest: cancel the query running in backend ``pid``.

    The secret is 4 bytes in protocol 3.0 and up to 256 bytes in 3.2; the server
    sends no answer, it just closes the connection.
    """

    code: ClassVar[int] = CANCEL_REQUEST_CODE
    pid: int
    secret: bytes

    def encode(self) -> bytes:
        if not MIN_SECRET_KEY_LENGTH <= len(self.secret) <= MAX_SECRET_KEY_LENGTH:
            raise ValueError(f"cancel key must be 4..256 bytes, got {len(self.secret)}")
        return _III.pack(12 + len(self.secret), CANCEL_REQUEST_CODE, self.pid) + self.secret


StartupPacket: TypeAlias = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest

_SSL = SSLRequest()
_GSSENC = GSSENCRequest()


def parse_startup_packet(body: bytes) -> StartupPacket:
    """Decode a startup-phase packet body (after the 4-byte length).

    Raises :class:`ClientProtocolError` (only clients send these): SQLSTATE 0A000
    for an unsupported major version, 28000 when no user name is given, 08P01 for
    anything malformed.
    """
    body = bytes(body)
    if len(body) < 4:
        raise ClientProtocolError(f"startup packet too short ({len(body)} bytes after the length)")
    code = _U32.unpack_from(body, 0)[0]
    if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
        if len(body) != 4:
            name = "SSLRequest" if code == SSL_REQUEST_CODE else "GSSENCRequest"
            raise ClientProtocolError(f"{name} must be 8 bytes long, got {len(body) + 4}")
        return _SSL if code == SSL_REQUEST_CODE else _GSSENC
    if code == CANCEL_REQUEST_CODE:
        key_len = len(body) - 8
        if not MIN_SECRET_KEY_LENGTH <= key_len <= MAX_SECRET_KEY_LENGTH:
            raise ClientProtocolError(
                f"CancelRequest secret key must be 4..256 bytes, got {max(key_len, 0)}"
            )
        return CancelRequest(_U32.unpack_from(body, 4)[0], body[8:])
    major, minor = code >> 16, code & 0xFFFF
    if major != 3:
        raise ClientProtocolError(
            f"unsupported frontend protocol {major}.{minor}: "
            f"server supports 3.0 to 3.{NEWEST_MINOR}",
            sqlstate=FEATURE_NOT_SUPPORTED,
        )
    return _parse_params((major, minor), body)


def _parse_params(protocol: tuple[int, int], body: bytes) -> StartupMessage:
    if body[-1] != 0:
        raise ClientProtocolError("invalid startup packet layout: expected terminator as last byte")
    params: dict[str, str] = {}
    options: dict[str, str] = {}
    pos = 4
    last = len(body) - 1  # the terminating NUL
    while pos < last:
        name_end = body.find(b"\0", pos)
        if name_end == pos:
            raise ClientProtocolError(
                "invalid startup packet layout: expected terminator as last byte"
            )
        value_end = body.find(b"\0", name_end + 1)
        if value_end < 0 or value_end >= last:
            raise ClientProtocolError("invalid startup packet layout: parameter without a value")
        name = _text(body[pos:name_end], "parameter name")
        value = _text(body[name_end + 1 : value_end], f"value of parameter {name!r}")
        target = options if name.startswith(PROTOCOL_OPTION_PREFIX) else params
        if name in target:
            raise ClientProtocolError(f"duplicate startup parameter {name!r}")
        target[name] = value
        pos = value_end + 1
    if not params.get("user"):
        raise ClientProtocolError(
            "no PostgreSQL user name specified in startup packet", INVALID_AUTHORIZATION
        )
    return StartupMessage(protocol, params, options)


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise ClientProtocolError(f"invalid UTF-8 in startup packet {what}") from None


def negotiate_protocol_version(newest_minor: int, unrecognized_options: list[str]) -> bytes:
    """NegotiateProtocolVersion: the newest 3.x minor we speak and the options we ignore."""
    return NegotiateProtocolVersion(newest_minor, tuple(unrecognized_options)).encode()
