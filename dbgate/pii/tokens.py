"""Tokens: what an agent sees instead of a PII value.

``tok_<entity>_<kind><payload>``, e.g. ``tok_email_rk3v…``:

* **deterministic** under one key: the same value (and entity) always gives the same
  token, across queries, sessions and replicas, so joins, ``GROUP BY``, ``DISTINCT``
  and equality filters on tokens still work;
* **tagged** by entity, so an agent can tell an e-mail from a phone number, and a
  token can only be resolved as the kind of thing it was;
* **unlinkable** without the key (at least 128 bits from a keyed PRF or AES-SIV).

Two kinds, chosen by ``pii.mode``:

``h`` — *hashed* (the default): 128 bits of keyed BLAKE2b (a PRF; one call costs a
third of HMAC-SHA-256's, which matters at a million rows). Short, and a stolen key
decrypts nothing (it can only confirm guesses). A token the agent sends back
resolves from the token -> value map of what this process issued (bounded:
``pii.token_cache_entries``, oldest forgotten first); after a restart, or on another
replica, an old token is a clear 22023 and the agent reads it again. The map
(:mod:`dbgate.pii.issued`) is kept in ten generations of a tenth of the bound each,
and forgets a whole generation at a time; whoever caches tokens by value (the row
rewriters' :class:`~dbgate.pii.rows.ValueCache`) registers with
:meth:`Tokenizer.on_forget` and forgets with it, so it never shows a token the map
no longer holds.

``r`` — *reversible*: the payload is AES-SIV (RFC 5297, the ``cryptography``
package) of the value, padded to a multiple of 16 bytes so the token reveals its
length only to that granularity, with the entity as associated data. Deterministic
by construction (SIV is a deterministic AEAD); any replica holding the key resolves
it, after a restart too, and ``dbgate detokenize`` shows the value to an authorized
human. An AES-SIV call costs ~2 µs: on results with many distinct values this mode is
several times slower than ``h`` (repeated values hit the replacement cache either way).

Values longer than ``max_reversible_bytes`` get an ``h`` token even in reversible
mode (a 100 MB value must not become a 200 MB token). Payloads are lower-case hex: no
quoting needed in SQL, CSV, JSON or identifiers, and ``bytes.hex`` is C-fast where
base32 is a Python loop (3 µs a token).
"""

from __future__ import annotations

import hmac
import itertools
import json
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from hashlib import blake2b

from dbgate.pii.issued import IssuedTokens
from dbgate.wire.sqlstate import INVALID_PARAMETER_VALUE

__all__ = [
    "TOKEN_RE",
    "FreshTokens",
    "Key",
    "Keyring",
    "TokenError",
    "Tokenizer",
    "in_container_syntax",
    "parse_token",
]

#: A token anywhere in text. Group 1: entity, group 2: kind + payload.
TOKEN_RE = re.compile(
    r"(?<![A-Za-z0-9_])tok_([a-z][a-z0-9]*(?:_[a-z0-9]+)*?)_([rh][0-9a-f]{32,})(?![A-Za-z0-9_])"
)
TOKEN_RE_BYTES = re.compile(TOKEN_RE.pattern.encode())
_FULL = re.compile(TOKEN_RE.pattern + r"\Z")


def in_container_syntax(text: str) -> bool:
    """Whether a text holding a token puts it inside array or JSON syntax other than a
    JSON object (which no type but json and jsonb reads): a value of a type left to
    the server would be read as whatever it is compared with — a range reads
    ``["tok_…", 5e15]`` as its bounds, a ``line`` ``{tok_…,1,0}`` as its coefficients."""
    stripped = text.lstrip()
    if stripped[:1] not in ("{", "[", '"') or TOKEN_RE.fullmatch(text) is not None:
        return False
    if stripped[:1] == "{":
        try:
            return not isinstance(json.loads(text), dict)
        except ValueError:
            return True
    return True


class TokenError(Exception):
    """A token could not be resolved; SQLSTATE 22023 (invalid_parameter_value)."""

    sqlstate = INVALID_PARAMETER_VALUE

    def __init__(self, message: str, token: str = "") -> None:
        super().__init__(message)
        self.token = token


@dataclass(frozen=True)
class Key:
    """One tokenization key. ``retire_at`` (epoch seconds): resolve-only until then."""

    id: str
    secret: bytes  # the master secret, >= 32 bytes
    retire_at: float | None = None

    def subkey(self, label: bytes, size: int = 32) -> bytes:
        """Independent keys for each use (SIV, HMAC, pseudonyms), from one secret."""
        out = b""
        counter = 0
        while len(out) < size:
            counter += 1
            out += hmac.digest(self.secret, b"dbgate-pii/" + label + bytes((counter,)), "sha512")
        return out[:size]

    @property
    def fingerprint(self) -> str:
        """Names a key without revealing it: the value operators compare after a mix-up."""
        return hmac.digest(self.secret, b"dbgate-pii/fingerprint", "sha256")[:8].hex()


class Keyring:
    """The current key (tokenizes) and earlier ones still in their grace period (resolve)."""

    def __init__(self, keys: list[Key], clock: object = time.time) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one key")
        ids = [k.id for k in keys]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate key ids: {ids}")
        self.keys = list(keys)
        self.clock = clock

    @property
    def current(self) -> Key:
        return self.keys[0]

    def resolving(self) -> list[Key]:
        """Keys that may still resolve tokens: the current one and those in grace."""
        now = self.clock()  # type: ignore[operator]
        return [
            k for i, k in enumerate(self.keys) if i == 0 or k.retire_at is None or now < k.retire_at
        ]


@lru_cache(maxsize=1024)
def _person(label: str | bytes) -> bytes:
    """BLAKE2b's 16-byte personalization for a label of any length (entity, type)."""
    raw = label.encode() if isinstance(label, str) else label
    return blake2b(raw, digest_size=16).digest()


def _pad(value: bytes) -> bytes:
    n = 16 - (len(value) + 1) % 16
    return value + b"\x80" + b"\0" * (n % 16)


def _unpad(data: bytes) -> bytes:
    end = data.rstrip(b"\0")
    if not end.endswith(b"\x80"):
        raise ValueError("bad padding")
    return end[:-1]


def parse_token(token: str) -> tuple[str, str]:
    """``(entity, kind + payload)`` of a whole token, or TokenError if it is not one."""
    m = _FULL.match(token)
    if m is None:
        raise TokenError(f"not a dbgate token: {token[:80]!r}", token)
    return m.group(1), m.group(2)


class Tokenizer:
    """Makes and resolves tokens under a keyring. Thread-safe."""

    def __init__(
        self,
        keyring: Keyring,
        mode: str = "hashed",
        *,
        max_reversible_bytes: int = 4096,
        cache_entries: int = 200_000,
        cache_value_bytes: int = 4096,
    ) -> None:
        if mode not in ("reversible", "hashed"):
            raise ValueError(f"token mode must be 'reversible' or 'hashed', got {mode!r}")
        from cryptography.hazmat.primitives.ciphers.aead import AESSIV

        self.keyring = keyring
        self.mode = mode
        self.max_reversible_bytes = max_reversible_bytes
        self._siv = {k.id: AESSIV(k.subkey(b"aes-siv", 64)) for k in keyring.keys}
        self._mac = {k.id: k.subkey(b"blake2b-token") for k in keyring.keys}
        self._pseudo = keyring.current.subkey(b"pseudonym")
        self._current = keyring.current.id
        # hashed token -> value: ten generations of a tenth of the bound
        generation = max(1, cache_entries // 10)
        self._issued = IssuedTokens(generation, cache_entries // generation)
        self._issued.on_forget = self._forgot
        # FreshTokens' tokens -> values, kept apart: one may not be stored (resolve_stored)
        self._fresh_issued = IssuedTokens(generation, cache_entries // generation)
        # values longer than this are not remembered (none when nothing may be)
        self._cache_value_bytes = cache_value_bytes if cache_entries > 0 else -1
        self._forget_callbacks: list[weakref.WeakMethod[Callable[[], None]]] = []
        self._lock = threading.Lock()
        # FreshTokens: a secret of this process and a count no two cells share
        self._fresh_key = _fresh_seed()
        self._fresh_count = itertools.count()

    # ---------------------------------------------------------------- making tokens
    def token(self, entity: str, value: bytes) -> str:
        """The token of ``value`` (raw bytes as the server sent them) for ``entity``."""
        return self.token_bytes(entity, value).decode("ascii")

    def token_bytes(self, entity: str, value: bytes) -> bytes:
        """The token as ASCII bytes (what the rewriters splice into rows)."""
        if self.mode == "reversible" and len(value) <= self.max_reversible_bytes:
            sealed = self._siv[self._current].encrypt(_pad(value), [entity.encode()])
            return b"tok_" + entity.encode() + b"_r" + sealed.hex().encode()
        return self.hasher(entity)(value)

    def hasher(self, entity: str) -> Callable[[bytes], bytes]:
        """A function value -> hashed token for one entity: the rewriters' hot path.

        Everything that does not depend on the value is bound once; each call is one
        keyed BLAKE2b, one hex encoding and one dict store (so the token resolves).
        """
        key = self._mac[self._current]
        person = _person(entity)
        prefix = b"tok_" + entity.encode() + b"_h"
        add = self._issued.add
        limit = self._cache_value_bytes

        def hashed(value: bytes) -> bytes:
            token = (
                prefix + blake2b(value, key=key, digest_size=16, person=person).hexdigest().encode()
            )
            if len(value) <= limit:
                add(token, value)
            return token

        return hashed

    def hasher_spec(self, entity: str) -> tuple[bytes, bytes, bytes, IssuedTokens, int]:
        """What the compiled row loop (dbgate/pii/_rows.c) needs to compute the same
        tokens as :meth:`hasher`, and remember them as it does, without calling back
        into Python: prefix, BLAKE2b key, personalization, the issued-token store (the
        compiled one whenever the loop is), and the longest value remembered."""
        return (
            b"tok_" + entity.encode() + b"_h",
            self._mac[self._current],
            _person(entity),
            self._issued,
            self._cache_value_bytes,
        )

    def resolve_stored(self, token: str) -> tuple[str, bytes]:
        """:meth:`resolve` for a value to be stored in a PII column: a fresh token (of a
        value made from PII) is refused, since read back from there its value would get
        a stored value's deterministic token (see :class:`FreshTokens`)."""
        if self._fresh_issued.get(token.encode()) is not None:
            raise TokenError(
                f"token {token[:40]}… stands for a value made from PII (a fresh token): it "
                "cannot be stored in a PII column",
                token,
            )
        return self.resolve(token)

    def fresh(self) -> FreshTokens:
        """Tokens that are new at every use: see :class:`FreshTokens`."""
        return FreshTokens(self)

    def on_forget(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (a bound method, held weakly) whenever issued tokens are
        forgotten: a cache of tokens by value must then forget them too."""
        with self._lock:
            self._forget_callbacks = [w for w in self._forget_callbacks if w() is not None]
            self._forget_callbacks.append(weakref.WeakMethod(callback))  # type: ignore[arg-type]

    def _forgot(self) -> None:
        """The issued-token store dropped its oldest generation."""
        with self._lock:
            callbacks = list(self._forget_callbacks)
        for ref in callbacks:
            callback = ref()
            if callback is not None:
                callback()

    def digest(self, domain: bytes, value: bytes) -> bytes:
        """32 keyed pseudo-random bytes for a type-preserving pseudonym of ``value``."""
        return blake2b(value, key=self._pseudo, digest_size=32, person=_person(domain)).digest()

    # ---------------------------------------------------------------- resolving
    def resolve(self, token: str) -> tuple[str, bytes]:
        """``(entity, value)`` of a token this dbgate issued; TokenError otherwise."""
        entity, body = parse_token(token)
        kind, payload = body[0], body[1:]
        if kind == "r":
            try:
                sealed = bytes.fromhex(payload)
            except Exception:
                raise TokenError(f"malformed token {token[:80]!r}", token) from None
            for key in self.keyring.resolving():
                try:
                    return entity, _unpad(self._siv[key.id].decrypt(sealed, [entity.encode()]))
                except Exception:
                    continue
            raise TokenError(
                f"token {token[:40]}… does not resolve under any current key "
                "(issued under another or a retired key, or altered)",
                token,
            )
        value = self._issued.get(token.encode())
        if value is None:
            value = self._fresh_issued.get(token.encode())
        if value is None:
            raise TokenError(
                f"hashed token {token[:40]}… is not in this dbgate's token cache "
                "(hashed tokens resolve only while recently issued; see docs/pii.md)",
                token,
            )
        return entity, value


#: Tests pin the secret behind fresh tokens (hex, 32 bytes) so that the pseudonyms a
#: run draws are the same every run; a deployment never sets it.
FRESH_SEED_ENV = "DBGATE_TEST_FRESH_SEED"


def _fresh_seed() -> bytes:
    pinned = os.environ.get(FRESH_SEED_ENV)
    if pinned:
        logging.getLogger("dbgate.pii").warning(
            "%s is set: the tokens of values derived from PII are the same in every run "
            "(for tests only; unset it in a deployment)",
            FRESH_SEED_ENV,
        )
        return bytes.fromhex(pinned)[:32].ljust(32, b"\0")
    return os.urandom(32)


class FreshTokens:
    """A :class:`Tokenizer` whose every token is new: for values *derived* from PII.

    A deterministic token is the same for the same value, which is what lets an agent
    join and follow one customer by the tokens of a stored column. For a value an
    expression made from PII (``substr(email, 1, 1)``, ``lower(email)``, ``c::text``)
    it is also an oracle: the agent can make the token of any text it chooses by
    folding a constant into a PII expression (``left(email, 0) || 'm'``, which is PII
    by lineage) and compare it with the tokens of a value's pieces, a codebook that
    spells the value back. So a derived value gets a new token each time it is sent
    (128 bits from a keyed hash of a count no two cells share, under a secret of the
    process; resolvable like a hashed token while recently issued) and a pseudonym of
    its type drawn the same way: the tokens of two cells say nothing about whether
    their values are equal.
    """

    mode = "fresh"

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._issued = tokenizer._fresh_issued
        self._limit = tokenizer._cache_value_bytes
        self._key = tokenizer._fresh_key
        self._count = tokenizer._fresh_count

    def _draw(self, size: int) -> bytes:
        n = next(self._count).to_bytes(8, "big")
        return blake2b(n, key=self._key, digest_size=size).digest()

    def token(self, entity: str, value: bytes) -> str:
        return self.token_bytes(entity, value).decode("ascii")

    def token_bytes(self, entity: str, value: bytes) -> bytes:
        token = b"tok_" + entity.encode() + b"_h" + self._draw(16).hex().encode()
        if len(value) <= self._limit:
            self._issued.add(token, value)
        return token

    def hasher(self, entity: str) -> Callable[[bytes], bytes]:
        def fresh(value: bytes) -> bytes:
            return self.token_bytes(entity, value)

        return fresh

    def digest(self, domain: bytes, value: bytes) -> bytes:
        """Bytes for a type-preserving pseudonym, unrelated to the value."""
        return self._draw(32)
