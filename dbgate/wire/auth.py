"""Password helpers for authenticating to the upstream server (md5, cleartext).

dbgate never hands the real database password to agents; the proxy answers the
upstream's authentication request itself. SCRAM lives in :mod:`dbgate.wire.scram`;
this module covers the older methods a deployment may still use upstream.
"""

from __future__ import annotations

from hashlib import md5

__all__ = ["md5_password"]


def md5_password(user: str, password: str, salt: bytes) -> bytes:
    """The answer to AuthenticationMD5Password: ``b"md5" + hex(md5(hex(md5(password+user)) + salt))``.

    The inner digest is what PostgreSQL stores in ``pg_authid`` for md5 roles, so
    the same function with the stored hash is how the server checks it.
    """
    if len(salt) != 4:
        raise ValueError(f"md5 salt must be 4 bytes, got {len(salt)}")
    inner = md5(password.encode() + user.encode()).hexdigest().encode()
    return b"md5" + md5(inner + salt).hexdigest().encode()
