"""Sans-IO PostgreSQL protocol 3.0/3.2 codec: bytes in, messages out.

No sockets, no asyncio: the proxy feeds received bytes to the readers of
:mod:`~dbgate.wire.framing`, decodes what it needs with :mod:`~dbgate.wire.codec`
and :mod:`~dbgate.wire.startup`, runs the login exchanges of
:mod:`~dbgate.wire.accept` and :mod:`~dbgate.wire.connect`, and writes the bytes they
return. See ``docs/wire.md``.
"""

from dbgate.wire.auth import md5_password
from dbgate.wire.errors import (
    ClientProtocolError,
    LimitExceeded,
    ProtocolError,
    ServerProtocolError,
)
from dbgate.wire.framing import FrameReader, HandshakeReader, StartupReader
from dbgate.wire.messages import *  # noqa: F403 - the module's __all__ is the public API
from dbgate.wire.messages import __all__ as _messages_all
from dbgate.wire.scram import (
    MECHANISMS,
    SCRAM_SHA_256,
    AuthenticationFailed,
    ScramClientExchange,
    ScramServerExchange,
    ScramVerifier,
    make_verifier,
    parse_verifier,
)
from dbgate.wire.startup import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    StartupPacket,
    negotiate_protocol_version,
    parse_startup_packet,
)

__all__ = [
    *_messages_all,
    "MECHANISMS",
    "SCRAM_SHA_256",
    "AuthenticationFailed",
    "CancelRequest",
    "ClientProtocolError",
    "FrameReader",
    "GSSENCRequest",
    "HandshakeReader",
    "LimitExceeded",
    "ProtocolError",
    "SSLRequest",
    "ScramClientExchange",
    "ScramServerExchange",
    "ScramVerifier",
    "ServerProtocolError",
    "StartupMessage",
    "StartupPacket",
    "StartupReader",
    "make_verifier",
    "md5_password",
    "negotiate_protocol_version",
    "parse_startup_packet",
    "parse_verifier",
]
