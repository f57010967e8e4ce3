"""Logging in to a PostgreSQL server: the frontend's side of startup, sans-IO.

dbgate logs in upstream on the agent's behalf, so the agent never holds the database
password. This is that login as a :mod:`~dbgate.wire.flow`: it yields the
StartupMessage, answers whatever authentication the server asks for
(SCRAM-SHA-256, md5, a cleartext password, or nothing at all: trust), and collects
what the server says before its first ReadyForQuery, which the proxy replays to
the client as if it were the server.

Failures, by whose they are:

* :class:`LoginRefused`: the server said no (its ErrorResponse is kept for the
  client, in the server's own words), or asked for something dbgate cannot give
  (a password none is configured for, an unsupported method), or could not prove
  it knows the password (a SCRAM server signature that does not match);
* :class:`~dbgate.wire.errors.ServerProtocolError`: the server broke the protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dbgate.wire.auth import md5_password
from dbgate.wire.backend import (
    AuthenticationCleartextPassword,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    BackendMessage,
    decode_backend,
)
from dbgate.wire.codec import (
    parse_backend_key_data,
    parse_ready_for_query,
    password_message,
    sasl_initial_response,
    sasl_response,
)
from dbgate.wire.errors import ServerProtocolError
from dbgate.wire.flow import Flow
from dbgate.wire.primitives import show
from dbgate.wire.scram import SCRAM_SHA_256, AuthenticationFailed, ScramClientExchange
from dbgate.wire.startup import StartupMessage

__all__ = ["LoginRefused", "ServerHello", "log_in"]

_AUTH, _KEY_DATA, _PARAMETER_STATUS = ord("R"), ord("K"), ord("S")
_ERROR, _NOTICE, _NEGOTIATE, _READY = ord("E"), ord("N"), ord("v"), ord("Z")


class LoginRefused(Exception):
    """The server would not let us in, or we could not answer what it asked.

    ``error_body`` holds the server's own ErrorResponse body when it sent one (for
    example an unknown database), so the client can get the server's words.
    """

    def __init__(self, message: str, error_body: bytes | None = None) -> None:
        super().__init__(message)
        self.error_body = error_body


@dataclass(slots=True)
class ServerHello:
    """What the server said between our StartupMessage and its first ReadyForQuery."""

    backend_pid: int = 0
    backend_key: bytes = b""
    parameter_status: list[bytes] = field(default_factory=list)  # raw 'S' bodies, in order
    notices: list[bytes] = field(default_factory=list)  # raw 'N' bodies
    transaction_status: str = "I"


def log_in(
    *, user: str, password: str | None, database: str, params: dict[str, str]
) -> Flow[ServerHello]:
    """Start up as ``user`` on ``database`` and authenticate as the server asks."""
    hello = ServerHello()
    auth = _Authentication(user, password)
    startup = StartupMessage(protocol=(3, 0), params={"user": user, "database": database, **params})
    t, body = yield startup.encode()
    while True:
        out = b""
        if t == _AUTH:
            out = auth.answer(body)
        elif t == _PARAMETER_STATUS:
            hello.parameter_status.append(body)
        elif t == _KEY_DATA:
            hello.backend_pid, hello.backend_key = parse_backend_key_data(body)
        elif t == _NOTICE:
            hello.notices.append(body)
        elif t == _NEGOTIATE:
            pass  # NegotiateProtocolVersion: we asked for 3.0, nothing to adjust
        elif t == _READY:
            hello.transaction_status = parse_ready_for_query(body)
            return hello
        elif t == _ERROR:
            raise LoginRefused("upstream refused the connection", error_body=body)
        else:
            raise ServerProtocolError(f"unexpected message {show(t)} from upstream during startup")
        t, body = yield out


class _Authentication:
    """Our answers to the server's authentication requests ('R' messages), in order."""

    __slots__ = ("continued", "password", "scram", "user", "verified")

    def __init__(self, user: str, password: str | None) -> None:
        self.user = user
        self.password = password
        self.scram: ScramClientExchange | None = None
        self.continued = False  # SASLContinue answered
        self.verified = False  # SASLFinal's server signature checked out

    def answer(self, body: bytes) -> bytes:
        """What to send for one authentication request (``b""``: nothing)."""
        request = decode_backend(_AUTH, body)
        if isinstance(request, AuthenticationOk):
            if self.scram is not None and not self.verified:
                raise LoginRefused("upstream ended SCRAM without proving it knows the password")
            return b""
        password = self.password
        if password is None:
            raise LoginRefused("upstream asks for a password and none is configured")
        try:
            return self._answer(request, password)
        except AuthenticationFailed as e:  # the server failed to prove itself
            raise LoginRefused(str(e)) from None

    def _answer(self, request: BackendMessage, password: str) -> bytes:
        if isinstance(request, AuthenticationCleartextPassword):
            return password_message(password)
        if isinstance(request, AuthenticationMD5Password):
            return password_message(md5_password(self.user, password, request.salt).decode())
        if isinstance(request, AuthenticationSASL):
            if self.scram is not None:
                raise ServerProtocolError("upstream started SASL authentication twice")
            if SCRAM_SHA_256 not in request.mechanisms:
                raise LoginRefused(f"upstream offers unsupported SASL {list(request.mechanisms)}")
            self.scram = ScramClientExchange(self.user, password)
            return sasl_initial_response(SCRAM_SHA_256, self.scram.first())
        if isinstance(request, AuthenticationSASLContinue | AuthenticationSASLFinal):
            return self._sasl_step(request)
        code = getattr(request, "code", None)
        raise LoginRefused(f"upstream asks for unsupported authentication {code}")

    def _sasl_step(self, request: AuthenticationSASLContinue | AuthenticationSASLFinal) -> bytes:
        scram = self.scram
        expected = AuthenticationSASLFinal if self.continued else AuthenticationSASLContinue
        if scram is None or self.verified or not isinstance(request, expected):
            raise ServerProtocolError(f"upstream sent {type(request).__name__} out of order")
        if isinstance(request, AuthenticationSASLContinue):
            self.continued = True
            return sasl_response(scram.cont(request.data))
        scram.final(request.data)
        self.verified = True
        return b""
