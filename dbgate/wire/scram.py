"""SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it, both sides, sans-IO.

* :class:`ScramServerExchange` authenticates agents connecting to dbgate, from a
  verifier in PostgreSQL's ``pg_authid`` format (:func:`make_verifier`) so that
  dbgate never needs to store agents' clear passwords.
* :class:`ScramClientExchange` authenticates dbgate to the upstream server.

The cryptographic primitives and SASLprep come from ``scramp``. The message flow is
our own, rather than ``scramp.ScramServer``/``ScramClient``, because PostgreSQL
differs from plain RFC 5802 in ways scramp (rightly, for generic SCRAM) rejects:

* libpq sends an **empty user name** (``n=,``): the server uses the startup
  packet's user and ignores this attribute. scramp refuses empty names.
* A password that SASLprep rejects is **used as raw UTF-8** instead of failing
  (``pg_saslprep`` fallback), or the same password would work directly against
  PostgreSQL but not through dbgate.
* ``scram_iterations`` may be set below 4096 on the server; verifiers and
  upstream servers with lower counts must still work.

We do not offer SCRAM-SHA-256-PLUS (channel binding): the agent's TLS session ends
at dbgate, so binding to it proves nothing about the upstream. A client that
insists on binding (gs2 flag ``p``) gets a clear error rather than a silent
downgrade; the ``y`` flag ("I could bind, you did not offer it") is accepted.

Failures: malformed SCRAM messages raise a :class:`ProtocolError` (08P01) naming
whose they are: :class:`ClientProtocolError` in the server exchange (the client
sent them), :class:`ServerProtocolError` in the client exchange. A wrong password or
unsupported feature raises :class:`AuthenticationFailed`. All carry ``.sqlstate``
so the proxy can answer with an ErrorResponse directly.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from scramp.utils import ScramException, saslprep

from dbgate.wire.auth import md5_password
from dbgate.wire.errors import ClientProtocolError, ProtocolError, ServerProtocolError
from dbgate.wire.sqlstate import FEATURE_NOT_SUPPORTED, INVALID_PASSWORD

__all__ = [
    "DEFAULT_ITERATIONS",
    "MECHANISMS",
    "SCRAM_SHA_256",
    "AuthenticationFailed",
    "ScramClientExchange",
    "ScramServerExchange",
    "ScramVerifier",
    "make_verifier",
    "md5_password",
    "normalize_password",
    "parse_verifier",
]

SCRAM_SHA_256 = "SCRAM-SHA-256"
MECHANISMS: tuple[str, ...] = (SCRAM_SHA_256,)
"""What dbgate offers in AuthenticationSASL: no -PLUS variant (see module docstring)."""
DEFAULT_ITERATIONS = 4096  # PostgreSQL's scram_iterations default
SALT_LENGTH = 16  # PostgreSQL's SCRAM_DEFAULT_SALT_LEN
NONCE_LENGTH = 18  # raw bytes, as PostgreSQL and libpq (SCRAM_RAW_NONCE_LEN)
MAX_ITERATIONS = 10_000_000  # refuse to burn minutes of CPU for a hostile upstream
_KEY_LENGTH = 32  # SHA-256 digest size


class AuthenticationFailed(Exception):
    """The peer failed to prove it knows the password (or asked for something we refuse).

    ``sqlstate`` is 28P01 (invalid_password) for a bad proof or server signature,
    0A000 for features dbgate does not offer (channel binding, authzid).
    """

    def __init__(self, message: str, sqlstate: str = INVALID_PASSWORD) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


# --------------------------------------------------------------------- primitives


def normalize_password(password: str) -> bytes:
    """PostgreSQL's password preparation: SASLprep, or the raw UTF-8 if SASLprep fails."""
    if password.isascii():
        # pg_saslprep returns pure ASCII unchanged (even control characters).
        return password.encode()
    try:
        return saslprep(password).encode()
    except ScramException:
        return password.encode()


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def _keys(salted_password: bytes) -> tuple[bytes, bytes, bytes]:
    """(ClientKey, StoredKey, ServerKey) from SaltedPassword."""
    client_key = _hmac(salted_password, b"Client Key")
    return (
        client_key,
        hashlib.sha256(client_key).digest(),
        _hmac(salted_password, b"Server Key"),
    )


def _salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", normalize_password(password), salt, iterations)


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str, fault: type[ProtocolError]) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise fault(f"malformed SCRAM message: {what} is not valid base64") from None


def _new_nonce() -> str:
    return _b64(secrets.token_bytes(NONCE_LENGTH))


def _check_nonce(nonce: str, what: str, fault: type[ProtocolError]) -> None:
    if not nonce or not all(0x21 <= ord(c) <= 0x7E and c != "," for c in nonce):
        raise fault(f"malformed SCRAM message: invalid {what} nonce")


def _text(message: bytes, what: str, fault: type[ProtocolError]) -> str:
    try:
        return bytes(message).decode()
    except UnicodeDecodeError:
        raise fault(f"malformed SCRAM message: {what} is not valid UTF-8") from None


def _attr(part: str, name: str, what: str, fault: type[ProtocolError]) -> str:
    if not part.startswith(name + "="):
        raise fault(f"malformed SCRAM message: expected attribute {name!r} in {what}")
    return part[2:]


# --------------------------------------------------------------------- verifiers


@dataclass(frozen=True, slots=True)
class ScramVerifier:
    """A SCRAM-SHA-256 secret as PostgreSQL stores it in ``pg_authid.rolpassword``."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    def __str__(self) -> str:
        return (
            f"SCRAM-SHA-256${self.iterations}:{_b64(self.salt)}"
            f"${_b64(self.stored_key)}:{_b64(self.server_key)}"
        )


def make_verifier(
    password: str, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None
) -> str:
    """``SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>``, the pg_authid format.

    A verifier lets dbgate check agents' passwords without being able to recover
    them, and is interchangeable with PostgreSQL's own (``CREATE ROLE ... PASSWORD``).
    """
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be 1..{MAX_ITERATIONS}, got {iterations}")
    if salt is None:
        salt = secrets.token_bytes(SALT_LENGTH)
    elif not salt:
        raise ValueError("salt cannot be empty")
    _, stored_key, server_key = _keys(_salted_password(password, salt, iterations))
    return str(ScramVerifier(iterations, salt, stored_key, server_key))


def parse_verifier(verifier: str) -> ScramVerifier:
    """Parse a pg_authid SCRAM-SHA-256 verifier; ``ValueError`` says what is wrong."""
    try:
        method, iter_salt, keys = verifier.split("$")
        iter_text, salt_b64 = iter_salt.split(":")
        stored_b64, server_b64 = keys.split(":")
    except ValueError:
        raise ValueError(
            "not a SCRAM verifier: expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>"
        ) from None
    if method != "SCRAM-SHA-256":
        raise ValueError(f"unsupported verifier method {method!r}")
    if not iter_text.isascii() or not iter_text.isdigit():
        raise ValueError(f"invalid iteration count {iter_text!r}")
    iterations = int(iter_text)
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iteration count {iterations} out of range")
    try:
        salt = base64.b64decode(salt_b64, validate=True)
        stored_key = base64.b64decode(stored_b64, validate=True)
        server_key = base64.b64decode(server_b64, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("invalid base64 in SCRAM verifier") from None
    if not salt:
        raise ValueError("empty salt in SCRAM verifier")
    if len(stored_key) != _KEY_LENGTH or len(server_key) != _KEY_LENGTH:
        raise ValueError("SCRAM-SHA-256 keys must be 32 bytes")
    return ScramVerifier(iterations, salt, stored_key, server_key)


# --------------------------------------------------------------------- server side


class ScramServerExchange:
    """Server side of one SCRAM-SHA-256 exchange, driven by the proxy's session.

    Sequence: send ``AuthenticationSASL(MECHANISMS)``; on SASLInitialResponse check
    the mechanism is :data:`SCRAM_SHA_256` and send
    ``AuthenticationSASLContinue(first(data))``; on SASLResponse send
    ``AuthenticationSASLFinal(final(data))`` then AuthenticationOk. If anything
    raises, send an ErrorResponse with the exception's ``sqlstate`` and close.
    """

    __slots__ = (
        "_auth_message_prefix",
        "_done",
        "_gs2_header",
        "_nonce",
        "_server_nonce",
        "_verifier",
        "_will_fail",
    )

    def __init__(self, verifier: str | ScramVerifier, *, nonce: str | None = None) -> None:
        self._verifier = parse_verifier(verifier) if isinstance(verifier, str) else verifier
        self._server_nonce = _new_nonce() if nonce is None else nonce
        _check_nonce(self._server_nonce, "server", ProtocolError)  # ours, from the caller
        self._will_fail = False
        self._nonce: str | None = None
        self._gs2_header = ""
        self._auth_message_prefix = ""
        self._done = False

    @classmethod
    def from_password(
        cls, password: str, *, iterations: int = DEFAULT_ITERATIONS, nonce: str | None = None
    ) -> ScramServerExchange:
        """An exchange against a clear password (e.g. a dev config); prefer verifiers."""
        return cls(make_verifier(password, iterations), nonce=nonce)

    @classmethod
    def mock(cls, username: str, secret: bytes, *, nonce: str | None = None) -> ScramServerExchange:
        """An exchange for an unknown user that looks real and always fails at the end.

        Like PostgreSQL's mock authentication, the salt is derived from ``secret``
        and the user name, so repeated attempts see a stable salt and cannot tell
        whether the user exists.
        """
        salt = hashlib.sha256(secret + b"\0" + username.encode()).digest()[:SALT_LENGTH]
        filler = bytes(_KEY_LENGTH)
        exchange = cls(ScramVerifier(DEFAULT_ITERATIONS, salt, filler, filler), nonce=nonce)
        exchange._will_fail = True
        return exchange

    @property
    def done(self) -> bool:
        """True once :meth:`final` succeeded: the client proved it knows the password."""
        return self._done

    def first(self, client_first: bytes) -> bytes:
        """Consume client-first-message; return server-first-message."""
        if self._nonce is not None:
            raise ClientProtocolError("unexpected SASL initial response: exchange already started")
        text = _text(client_first, "client-first-message", ClientProtocolError)
        flag, _, rest = text.partition(",")
        if flag.startswith("p="):
            raise AuthenticationFailed(
                "channel binding is not supported: dbgate offers SCRAM-SHA-256 only, "
                "not SCRAM-SHA-256-PLUS (connect with channel_binding=prefer or disable)",
                sqlstate=FEATURE_NOT_SUPPORTED,
            )
        if flag not in ("n", "y"):
            raise ClientProtocolError("malformed SCRAM message: invalid gs2 channel binding flag")
        authzid, sep, bare = rest.partition(",")
        if not sep:
            raise ClientProtocolError("malformed SCRAM message: incomplete gs2 header")
        if authzid:
            raise AuthenticationFailed(
                "client uses authorization identity, but it is not supported",
                sqlstate=FEATURE_NOT_SUPPORTED,
            )
        parts = bare.split(",")
        if parts[0].startswith("m="):
            raise AuthenticationFailed(
                "client requires an unsupported SCRAM extension", sqlstate=FEATURE_NOT_SUPPORTED
            )
        # The name is ignored (the startup packet's user counts) but must be there.
        _attr(parts[0], "n", "client-first-message", ClientProtocolError)
        if len(parts) < 2:
            raise ClientProtocolError("malformed SCRAM message: client nonce missing")
        client_nonce = _attr(parts[1], "r", "client-first-message", ClientProtocolError)
        _check_nonce(client_nonce, "client", ClientProtocolError)
        self._nonce = client_nonce + self._server_nonce
        self._gs2_header = f"{flag},,"
        v = self._verifier
        server_first = f"r={self._nonce},s={_b64(v.salt)},i={v.iterations}"
        self._auth_message_prefix = f"{bare},{server_first},"
        return server_first.encode()

    def final(self, client_final: bytes) -> bytes:
        """Verify client-final-message; return server-final-message.

        Raises :class:`AuthenticationFailed` if the proof is wrong.
        """
        if self._nonce is None or self._done or not self._auth_message_prefix:
            raise ClientProtocolError("unexpected SASL response at this point of the exchange")
        self._auth_message_prefix, prefix = "", self._auth_message_prefix  # single use
        text = _text(client_final, "client-final-message", ClientProtocolError)
        without_proof, sep, proof_b64 = text.rpartition(",p=")
        if not sep:
            raise ClientProtocolError("malformed SCRAM message: proof missing")
        parts = without_proof.split(",")
        if len(parts) < 2:
            raise ClientProtocolError("malformed SCRAM message: client-final-message incomplete")
        cbind = _unb64(
            _attr(parts[0], "c", "client-final-message", ClientProtocolError),
            "channel binding",
            ClientProtocolError,
        )
        if cbind != self._gs2_header.encode():
            raise ClientProtocolError("SCRAM channel binding check failed")
        if _attr(parts[1], "r", "client-final-message", ClientProtocolError) != self._nonce:
            raise ClientProtocolError("SCRAM nonce mismatch")
        proof = _unb64(proof_b64, "proof", ClientProtocolError)
        if len(proof) != _KEY_LENGTH:
            raise ClientProtocolError("malformed SCRAM message: proof has the wrong length")
        v = self._verifier
        auth_message = (prefix + without_proof).encode()
        client_key = _xor(proof, _hmac(v.stored_key, auth_message))
        ok = hmac.compare_digest(hashlib.sha256(client_key).digest(), v.stored_key)
        if not ok or self._will_fail:
            raise AuthenticationFailed("password authentication failed")
        self._done = True
        return f"v={_b64(_hmac(v.server_key, auth_message))}".encode()


# --------------------------------------------------------------------- client side


class ScramClientExchange:
    """Client side of SCRAM-SHA-256, for dbgate authenticating to the upstream.

    Sequence: on AuthenticationSASL check :data:`SCRAM_SHA_256` is offered and send
    ``SASLInitialResponse(SCRAM_SHA_256, first())``; on SASLContinue send
    ``SASLResponse(cont(data))``; on SASLFinal call ``final(data)``, which raises
    :class:`AuthenticationFailed` unless the server proved it knows the password.
    """

    __slots__ = ("_auth_message", "_bare", "_nonce", "_password", "_server_signature", "user")

    def __init__(self, user: str, password: str, *, nonce: str | None = None) -> None:
        self.user = user
        self._password = password
        self._nonce = _new_nonce() if nonce is None else nonce
        _check_nonce(self._nonce, "client", ProtocolError)  # ours, from the caller
        self._bare = ""
        self._server_signature: bytes | None = None
        self._auth_message = b""

    def first(self) -> bytes:
        """client-first-message (``n,,n=<user>,r=<nonce>``); PostgreSQL ignores the name."""
        if self._bare:
            raise RuntimeError("first() already called")
        name = self.user.replace("=", "=3D").replace(",", "=2C")
        self._bare = f"n={name},r={self._nonce}"
        return f"n,,{self._bare}".encode()

    def cont(self, server_first: bytes) -> bytes:
        """Consume server-first-message; return client-final-message with our proof."""
        if not self._bare or self._server_signature is not None:
            raise RuntimeError("cont() must follow first(), once")
        text = _text(server_first, "server-first-message", ServerProtocolError)
        parts = text.split(",")
        if parts[0].startswith("e="):
            raise AuthenticationFailed(f"upstream SCRAM error: {parts[0][2:]}")
        if len(parts) < 3:
            raise ServerProtocolError("malformed SCRAM message: server-first-message incomplete")
        nonce = _attr(parts[0], "r", "server-first-message", ServerProtocolError)
        _check_nonce(nonce, "server", ServerProtocolError)
        if not nonce.startswith(self._nonce) or len(nonce) == len(self._nonce):
            raise ServerProtocolError("SCRAM nonce mismatch: server nonce does not extend ours")
        salt = _unb64(
            _attr(parts[1], "s", "server-first-message", ServerProtocolError),
            "salt",
            ServerProtocolError,
        )
        iter_text = _attr(parts[2], "i", "server-first-message", ServerProtocolError)
        if not salt or not iter_text.isascii() or not iter_text.isdigit():
            raise ServerProtocolError("malformed SCRAM message: invalid salt or iteration count")
        iterations = int(iter_text)
        if not 1 <= iterations <= MAX_ITERATIONS:
            raise ServerProtocolError(f"SCRAM iteration count {iterations} out of range")
        client_key, stored_key, server_key = _keys(
            _salted_password(self._password, salt, iterations)
        )
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self._bare},{text},{without_proof}".encode()
        proof = _xor(client_key, _hmac(stored_key, auth_message))
        self._server_signature = _hmac(server_key, auth_message)
        return f"{without_proof},p={_b64(proof)}".encode()

    def final(self, server_final: bytes) -> None:
        """Verify server-final-message; raise :class:`AuthenticationFailed` on mismatch."""
        expected = self._server_signature
        if expected is None:
            raise RuntimeError("final() must follow cont()")
        self._server_signature = None
        text = _text(server_final, "server-final-message", ServerProtocolError)
        first = text.split(",")[0]
        if first.startswith("e="):
            raise AuthenticationFailed(f"upstream SCRAM error: {first[2:]}")
        signature = _unb64(
            _attr(first, "v", "server-final-message", ServerProtocolError),
            "server signature",
            ServerProtocolError,
        )
        if not hmac.compare_digest(signature, expected):
            raise AuthenticationFailed(
                "upstream server signature does not match: it does not know the password"
            )
