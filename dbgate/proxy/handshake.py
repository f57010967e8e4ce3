"""The client side of connection startup: TLS/GSS negotiation, identity, SCRAM.

Agents authenticate to dbgate as dbgate identities (never as database roles) with
SCRAM-SHA-256. Unknown identities go through the same exchange against a random
verifier and fail the same way, so the gateway does not reveal which names exist.
"""

from __future__ import annotations

import asyncio
import fnmatch
import secrets
import ssl
from dataclasses import dataclass

from dbgate.config import Config, IdentityConfig
from dbgate.proxy.channel import Channel
from dbgate.proxy.startup_params import StartupParamError, filter_startup_params
from dbgate.wire import messages as m
from dbgate.wire.errors import ProtocolError
from dbgate.wire.scram import AuthenticationFailed, ScramServerExchange, make_verifier
from dbgate.wire.startup import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    parse_startup_packet,
)

# Unknown identities get a mock exchange whose salt is stable per name (derived from
# this per-process secret), so probing cannot tell them from real identities.
_MOCK_SECRET = secrets.token_bytes(32)


class HandshakeRefused(Exception):
    """Startup failed; ``response`` is the complete FATAL ErrorResponse for the client."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.response = m.error_response(sqlstate, message, severity="FATAL")


@dataclass(slots=True)
class ClientHello:
    """What we know about a client once it has authenticated."""

    identity: IdentityConfig
    startup: StartupMessage
    database: str
    params: dict[str, str]  # settings to forward upstream
    tls: bool


def build_verifiers(config: Config) -> dict[str, str]:
    """SCRAM verifiers for every identity, computed once at startup (PBKDF2 is slow)."""
    out = {}
    for ident in config.identities:
        out[ident.name] = ident.scram_verifier or make_verifier(ident.password or "")
    return out


async def read_startup(
    channel: Channel, tls_context: ssl.SSLContext | None
) -> StartupMessage | CancelRequest:
    """Negotiate encryption, return the StartupMessage (or a CancelRequest)."""
    loop = asyncio.get_running_loop()
    tls = False
    while True:
        packet = parse_startup_packet(await channel.recv_startup())
        if isinstance(packet, SSLRequest):
            if tls_context is None or tls:
                channel.write(b"N")
                continue
            if channel.buffered():
                # Bytes sent before our answer could be injected by a man in the middle.
                raise ProtocolError("received unencrypted data after SSL request")
            channel.write(b"S")
            assert channel.transport is not None
            channel.transport = await loop.start_tls(  # type: ignore[assignment]
                channel.transport, channel, tls_context, server_side=True
            )
            tls = True
            continue
        if isinstance(packet, GSSENCRequest):
            channel.write(b"N")
            continue
        return packet


async def authenticate(
    channel: Channel, config: Config, verifiers: dict[str, str], startup: StartupMessage
) -> ClientHello:
    """Run SCRAM-SHA-256 for the identity named in the StartupMessage."""
    if startup.needs_negotiation:
        channel.write(startup.negotiation())
    user = startup.params.get("user", "")
    if not user:
        raise HandshakeRefused("28000", "no user name specified in the startup packet")
    identity = config.identity(user)
    channel.write(m.auth_sasl(["SCRAM-SHA-256"]))
    mtype, body = await channel.recv()
    if mtype != ord("p"):
        raise ProtocolError(f"expected SASLInitialResponse, got message type {chr(mtype)!r}")
    mechanism, first = m.parse_sasl_initial_response(body)
    if mechanism != "SCRAM-SHA-256" or first is None:
        raise HandshakeRefused("28000", f"unsupported SASL mechanism {mechanism!r}")
    verifier = verifiers.get(user)
    exchange = (
        ScramServerExchange(verifier)
        if verifier is not None
        else ScramServerExchange.mock(user, _MOCK_SECRET)
    )
    failed = HandshakeRefused("28P01", f'password authentication failed for user "{user}"')
    try:
        channel.write(m.auth_sasl_continue(exchange.first(first)))
        mtype, body = await channel.recv()
        if mtype != ord("p"):
            raise ProtocolError(f"expected SASLResponse, got message type {chr(mtype)!r}")
        final = exchange.final(body)
    except AuthenticationFailed as e:
        if e.sqlstate != "28P01":  # e.g. 0A000 channel binding requested: say so
            raise HandshakeRefused(e.sqlstate, str(e)) from None
        raise failed from None
    if identity is None:
        raise failed
    database = startup.params.get("database") or user
    if not any(fnmatch.fnmatchcase(database, pat) for pat in identity.databases):
        raise HandshakeRefused(
            "42501", f'identity "{user}" may not connect to database "{database}"'
        )
    try:
        params = filter_startup_params(startup.params)
    except StartupParamError as e:
        raise HandshakeRefused("42501", str(e)) from None
    channel.write(m.auth_sasl_final(final))
    return ClientHello(
        identity=identity,
        startup=startup,
        database=database,
        params=params,
        tls=channel.transport is not None
        and channel.transport.get_extra_info("sslcontext") is not None,
    )
