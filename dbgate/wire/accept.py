"""Authenticating a client that connects to dbgate: the backend's side of SCRAM, sans-IO.

Agents log in to dbgate as dbgate identities, never as database roles, and only with
SCRAM-SHA-256: the gateway keeps a verifier, never a password it could leak. This is
the exchange as a :mod:`~dbgate.wire.flow`: it yields AuthenticationSASL and
AuthenticationSASLContinue, is sent the client's two answers, and returns the
AuthenticationSASLFinal message. The caller sends that only once it admits the
client (it may still refuse, say, a database the identity may not use), followed by
AuthenticationOk.

An unknown user walks through the same steps against a mock verifier and fails with
the same words as a wrong password, so probing cannot tell which names exist.

Failures: :class:`~dbgate.wire.scram.AuthenticationFailed` (28P01 wrong password or
unknown user, 28000 no user or another mechanism, 0A000 channel binding asked for)
when the client may be told why; :class:`~dbgate.wire.errors.ClientProtocolError`
when it broke the protocol.
"""

from __future__ import annotations

from dbgate.wire.codec import (
    auth_sasl,
    auth_sasl_continue,
    auth_sasl_final,
    parse_sasl_initial_response,
)
from dbgate.wire.errors import ClientProtocolError
from dbgate.wire.flow import Flow
from dbgate.wire.primitives import show
from dbgate.wire.scram import (
    MECHANISMS,
    SCRAM_SHA_256,
    AuthenticationFailed,
    ScramServerExchange,
    ScramVerifier,
)
from dbgate.wire.sqlstate import INVALID_AUTHORIZATION, INVALID_PASSWORD

__all__ = ["authenticate_client", "password_failed"]

_AUTH_RESPONSE = ord("p")  # SASLInitialResponse and SASLResponse


def password_failed(user: str) -> AuthenticationFailed:
    """What every failed login hears, whatever failed: PostgreSQL's own words."""
    return AuthenticationFailed(f'password authentication failed for user "{user}"')


def authenticate_client(
    user: str, verifier: str | ScramVerifier | None, *, mock_secret: bytes
) -> Flow[bytes]:
    """SCRAM-SHA-256 with the client that named ``user`` in its startup packet.

    ``verifier`` is the user's (None for a name dbgate does not know); ``mock_secret``
    seeds the mock exchange's salt, stable per name for the process's lifetime.
    Returns the AuthenticationSASLFinal message to send once the client is admitted.
    """
    if not user:
        raise AuthenticationFailed(
            "no user name specified in the startup packet", INVALID_AUTHORIZATION
        )
    t, body = yield auth_sasl(MECHANISMS)
    if t != _AUTH_RESPONSE:
        raise ClientProtocolError(f"expected SASLInitialResponse, got message type {show(t)}")
    mechanism, first = parse_sasl_initial_response(body)
    if mechanism != SCRAM_SHA_256 or first is None:
        raise AuthenticationFailed(
            f"unsupported SASL mechanism {mechanism!r}", INVALID_AUTHORIZATION
        )
    exchange = (
        ScramServerExchange(verifier)
        if verifier is not None
        else ScramServerExchange.mock(user, mock_secret)
    )
    try:
        t, body = yield auth_sasl_continue(exchange.first(first))
        if t != _AUTH_RESPONSE:
            raise ClientProtocolError(f"expected SASLResponse, got message type {show(t)}")
        final = exchange.final(body)
    except AuthenticationFailed as e:
        if e.sqlstate != INVALID_PASSWORD:  # e.g. 0A000 channel binding asked for: say so
            raise
        raise password_failed(user) from None
    if verifier is None:  # the mock exchange always fails; this makes sure of it
        raise password_failed(user)
    return auth_sasl_final(final)
