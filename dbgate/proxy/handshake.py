"""The client side of connection startup: TLS/GSS negotiation, identity, SCRAM.

Agents authenticate to dbgate as dbgate identities (never as database roles) with
SCRAM-SHA-256. The exchange itself is the sans-IO flow of :mod:`dbgate.wire.accept`
(unknown identities go through the same steps against a mock verifier and fail the
same way, so the gateway does not reveal which names exist); this module runs it
over the client's channel and decides, from the configuration, whom to admit.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import secrets
import ssl
from dataclasses import dataclass

from dbgate.config import Config, IdentityConfig
from dbgate.proxy.channel import Channel
from dbgate.proxy.seams import Arrival, SessionSetup
from dbgate.proxy.startup_params import StartupParamError, filter_startup_params
from dbgate.wire.accept import authenticate_client, password_failed
from dbgate.wire.codec import error_response
from dbgate.wire.errors import ClientProtocolError
from dbgate.wire.scram import AuthenticationFailed, make_verifier
from dbgate.wire.sqlstate import INSUFFICIENT_PRIVILEGE
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
        self.response = error_response(sqlstate, message, severity="FATAL")


@dataclass(slots=True)
class ClientHello:
    """What we know about a client once it has authenticated."""

    identity: IdentityConfig
    startup: StartupMessage
    database: str
    params: dict[str, str]  # settings to forward upstream
    tls: bool
    arrival: Arrival  # what the SessionSetup seam decides by


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
                raise ClientProtocolError("received unencrypted data after SSL request")
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
    channel: Channel,
    config: Config,
    verifiers: dict[str, str],
    startup: StartupMessage,
    *,
    setup: SessionSetup | None = None,
    client_addr: str = "",
) -> ClientHello:
    """Run SCRAM-SHA-256 for the identity named in the StartupMessage, then admit it
    (or not) to the database it asked for, with the startup parameters ``setup``
    lets it forward."""
    if startup.needs_negotiation:
        channel.write(startup.negotiation())
    user = startup.params.get("user", "")
    identity = config.identity(user)
    # No identity, no verifier: the flow then fails exactly like a wrong password.
    verifier = verifiers.get(user) if identity is not None else None
    try:
        final = await channel.exchange(
            authenticate_client(user, verifier, mock_secret=_MOCK_SECRET)
        )
    except AuthenticationFailed as e:
        raise HandshakeRefused(e.sqlstate, str(e)) from None
    if identity is None:  # unreachable (no verifier, no success); fail closed all the same
        failed = password_failed(user)
        raise HandshakeRefused(failed.sqlstate, str(failed))
    database = startup.params.get("database") or user
    if not any(fnmatch.fnmatchcase(database, pat) for pat in identity.databases) or (
        config.state is not None and config.state.is_database(config.upstream.port, database)
    ):  # dbgate's own state database: never an identity's, whatever its patterns say
        raise HandshakeRefused(
            INSUFFICIENT_PRIVILEGE, f'identity "{user}" may not connect to database "{database}"'
        )
    arrival = Arrival(
        identity.name,
        frozenset(identity.groups),
        # as the server will report it (libpq sends a fallback alongside)
        startup.params.get("application_name")
        or startup.params.get("fallback_application_name", ""),
        client_addr,
    )
    check = None if setup is None else functools.partial(setup.startup_setting, arrival)
    try:
        params = filter_startup_params(startup.params, check)
    except StartupParamError as e:
        raise HandshakeRefused(INSUFFICIENT_PRIVILEGE, str(e)) from None
    channel.write(final)
    return ClientHello(
        identity=identity,
        startup=startup,
        database=database,
        params=params,
        tls=channel.transport is not None
        and channel.transport.get_extra_info("sslcontext") is not None,
        arrival=arrival,
    )
