"""Approver passwords and API tokens: how they are stored so a stolen table is useless.

Passwords use scrypt from the standard library (``hashlib.scrypt``, OpenSSL's
implementation) with OWASP's recommended cost (N=2^17, r=8, p=1: 128 MiB and about
half a second per guess), a random 16-byte salt, and the parameters stored with the
hash so that they can be raised later without invalidating old hashes.

API tokens are 256 random bits. Guessing one is hopeless, so a fast hash (SHA-256)
is enough to keep the stored form from being usable as a token; it also lets the
database look a token up by its hash.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

#: log2 of scrypt's N, r, p: OWASP Password Storage Cheat Sheet's scrypt minimum.
SCRYPT_LOG_N = 17
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_BYTES = 16
_KEY_BYTES = 32
TOKEN_PREFIX = "dbg_"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, log_n: int, r: int, p: int) -> bytes:
    n = 1 << log_n
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=256 * n * r * p,  # 2x what scrypt needs (128 * N * r * p)
        dklen=_KEY_BYTES,
    )


def hash_password(password: str, *, log_n: int = SCRYPT_LOG_N) -> str:
    """``scrypt$ln=17,r=8,p=1$<salt>$<key>`` (base64url, no padding)."""
    if not password:
        raise ValueError("an empty password cannot be used")
    salt = secrets.token_bytes(_SALT_BYTES)
    key = _scrypt(password, salt, log_n, SCRYPT_R, SCRYPT_P)
    return f"scrypt$ln={log_n},r={SCRYPT_R},p={SCRYPT_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str | None) -> bool:
    """True when ``password`` matches ``stored``; False for any malformed hash."""
    if not stored or not password:
        return False
    try:
        scheme, params, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        values = dict(part.split("=", 1) for part in params.split(","))
        log_n, r, p = int(values["ln"]), int(values["r"]), int(values["p"])
        if not (10 <= log_n <= 22 and 1 <= r <= 32 and 1 <= p <= 16):
            return False
        expected = _unb64(key)
        actual = _scrypt(password, _unb64(salt), log_n, r, p)
    except (ValueError, KeyError):
        return False
    return hmac.compare_digest(actual, expected)


def new_token() -> str:
    """A fresh API token: ``dbg_`` and 43 URL-safe characters (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    """The stored form of a token (SHA-256 of its text)."""
    return hashlib.sha256(token.encode("utf-8")).digest()
