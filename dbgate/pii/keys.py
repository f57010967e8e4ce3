"""Tokenization keys: where they come from, how they rotate, and refusing bad ones.

A key is at least 32 random bytes, written as ``base64:…`` or ``hex:…`` (or bare
base64), from one of: the config (``pii.keys[].secret``, which may be ``${ENV}``), an
environment variable (``secret_env``), a file (``secret_file``, e.g. a mounted Kubernetes
secret), or — when ``pii.keys`` is empty — the environment variable ``DBGATE_PII_KEY``.

Rotation: put the new key first and keep the old one after it with ``retire_after``
(a timestamp): tokens are issued under the first key only, and tokens issued under
the old one still resolve until ``retire_after`` (the grace period). An agent that
kept old tokens gets a clear 22023 after that. Joins between old and new tokens do
not match (a token is a function of the key): rotate between agent sessions.

``fingerprint`` (optional, printed by ``dbgate pii keygen``) guards against the
wrong key: a key whose fingerprint differs makes dbgate refuse to start, instead of
silently issuing tokens no earlier token will ever equal.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from dbgate.pii.tokens import Key, Keyring

__all__ = ["ENV_KEY", "PiiKeyError", "generate_key", "keyring_from_config", "parse_secret"]

ENV_KEY = "DBGATE_PII_KEY"
MIN_KEY_BYTES = 32


class PiiKeyError(Exception):
    """No usable tokenization key: dbgate must not start."""


def generate_key() -> tuple[str, str]:
    """A new random key as ``(secret text, fingerprint)``."""
    raw = secrets.token_bytes(32)
    return "base64:" + base64.b64encode(raw).decode(), Key("new", raw).fingerprint


def parse_secret(text: str, where: str) -> bytes:
    """Decode ``base64:…``, ``hex:…`` or bare base64; at least 32 bytes."""
    value = text.strip()
    try:
        if value.startswith("hex:"):
            raw = bytes.fromhex(value[4:])
        else:
            body = value[7:] if value.startswith("base64:") else value
            body += "=" * (-len(body) % 4)
            raw = base64.b64decode(body.replace("-", "+").replace("_", "/"), validate=True)
    except (ValueError, binascii.Error):
        raise PiiKeyError(
            f"{where}: the key is not valid base64 or hex (generate one with: dbgate pii keygen)"
        ) from None
    if len(raw) < MIN_KEY_BYTES:
        raise PiiKeyError(
            f"{where}: the key has {len(raw)} bytes, at least {MIN_KEY_BYTES} are needed "
            "(generate one with: dbgate pii keygen)"
        )
    return raw


def _field(entry: Any, name: str) -> Any:
    return entry.get(name) if isinstance(entry, Mapping) else getattr(entry, name, None)


def keyring_from_config(
    entries: Sequence[Any], environ: Mapping[str, str] | None = None
) -> Keyring:
    """Build the keyring from ``pii.keys`` entries (dicts or config models).

    Raises :class:`PiiKeyError` with a message naming the entry when a key is
    missing, unreadable, too short, or does not match its fingerprint.
    """
    env = os.environ if environ is None else environ
    keys: list[Key] = []
    if not entries:
        text = env.get(ENV_KEY)
        if not text:
            raise PiiKeyError(
                "PII tokenization needs a key: set pii.keys in the config or the environment "
                f"variable {ENV_KEY} (generate one with: dbgate pii keygen)"
            )
        return Keyring([Key("env", parse_secret(text, ENV_KEY))])
    for i, entry in enumerate(entries):
        kid = _field(entry, "id") or f"key{i + 1}"
        where = f"pii.keys[{i}] ({kid})"
        sources = [s for s in ("secret", "secret_env", "secret_file") if _field(entry, s)]
        if len(sources) != 1:
            raise PiiKeyError(f"{where}: set exactly one of secret, secret_env or secret_file")
        if sources[0] == "secret":
            text = str(_field(entry, "secret"))
        elif sources[0] == "secret_env":
            name = str(_field(entry, "secret_env"))
            if not env.get(name):
                raise PiiKeyError(f"{where}: environment variable {name} is not set")
            text = env[name]
        else:
            path = Path(str(_field(entry, "secret_file")))
            try:
                text = path.read_text()
            except OSError as e:
                raise PiiKeyError(f"{where}: cannot read {path}: {e.strerror}") from None
        raw = parse_secret(text, where)
        key = Key(str(kid), raw, _retire_at(_field(entry, "retire_after"), where))
        expected = _field(entry, "fingerprint")
        if expected and expected != key.fingerprint:
            raise PiiKeyError(
                f"{where}: wrong key: its fingerprint is {key.fingerprint}, the config expects "
                f"{expected}; tokens issued before would not match or resolve"
            )
        keys.append(key)
    if keys[0].retire_at is not None:
        raise PiiKeyError(f"pii.keys[0] ({keys[0].id}): the current key cannot have retire_after")
    try:
        return Keyring(keys)
    except ValueError as e:
        raise PiiKeyError(f"pii.keys: {e}") from None


def _retire_at(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        raise PiiKeyError(
            f"{where}: retire_after must be an ISO timestamp, got {value!r}"
        ) from None
