"""Signatures on notifications we send, and on Slack's requests we receive.

Both directions use HMAC-SHA256 over a timestamp *and* the body, so that a captured
message cannot be replayed later (the receiver refuses a timestamp outside its
window) nor altered (the MAC covers every byte of the body).

* **Our webhooks** carry ``X-Dbgate-Signature: t=<unix seconds>,v1=<hex>`` where the
  MAC is over ``"<t>." + body`` with the target's shared secret. A receiver checks it
  with :func:`verify_webhook` (or the few lines in docs/web.md).
* **Slack** signs its requests with ``X-Slack-Request-Timestamp`` and
  ``X-Slack-Signature: v0=<hex>`` over ``"v0:<timestamp>:" + body`` with the app's
  signing secret; :func:`verify_slack` checks both (Slack's documented scheme).

All functions are pure (the current time is an argument) and compare in constant time.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Dbgate-Signature"
DEFAULT_TOLERANCE = 300.0


class SignatureError(Exception):
    """A signature that is missing, malformed, wrong or too old; the text says which."""


def _mac(secret: str, data: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), data, hashlib.sha256).hexdigest()


def sign_webhook(secret: str, body: bytes, timestamp: int) -> str:
    """The ``X-Dbgate-Signature`` value for ``body`` sent at ``timestamp``."""
    return f"t={timestamp},v1={_mac(secret, str(timestamp).encode() + b'.' + body)}"


def verify_webhook(
    secret: str,
    header: str | None,
    body: bytes,
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> int:
    """Check an ``X-Dbgate-Signature``; returns its timestamp, raises SignatureError."""
    if not header:
        raise SignatureError(f"no {SIGNATURE_HEADER} header")
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise SignatureError(f"malformed {SIGNATURE_HEADER} header")
        parts.setdefault(key, []).append(value)
    stamps = parts.get("t", [])
    if len(stamps) != 1 or not stamps[0].isdigit():
        raise SignatureError(f"{SIGNATURE_HEADER} has no valid t=<timestamp>")
    timestamp = int(stamps[0])
    if abs(now - timestamp) > tolerance:
        raise SignatureError(
            f"the signature's timestamp is {abs(now - timestamp):.0f} s away from now "
            f"(more than {tolerance:g} s): refused as a possible replay"
        )
    expected = _mac(secret, stamps[0].encode() + b"." + body)
    if not any(hmac.compare_digest(expected, v) for v in parts.get("v1", [])):
        raise SignatureError("the signature does not match the body")
    return timestamp


def slack_signature(secret: str, timestamp: str, body: bytes) -> str:
    """Slack's ``X-Slack-Signature`` for ``body`` (tests sign requests with this)."""
    return "v0=" + _mac(secret, b"v0:" + timestamp.encode() + b":" + body)


def verify_slack(
    secret: str,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    *,
    now: float,
    max_age: float = DEFAULT_TOLERANCE,
) -> None:
    """Check a request from Slack; raises SignatureError saying what is wrong."""
    if not timestamp or not signature:
        raise SignatureError("not signed by Slack: X-Slack-Request-Timestamp or -Signature missing")
    if not timestamp.isdigit():
        raise SignatureError("X-Slack-Request-Timestamp is not a number")
    age = now - int(timestamp)
    if abs(age) > max_age:
        raise SignatureError(
            f"X-Slack-Request-Timestamp is {abs(age):.0f} s away from now (more than "
            f"{max_age:g} s): refused as a possible replay"
        )
    if not hmac.compare_digest(slack_signature(secret, timestamp, body), signature):
        raise SignatureError(
            "X-Slack-Signature does not match: wrong signing secret or altered body"
        )


__all__ = [
    "SIGNATURE_HEADER",
    "SignatureError",
    "sign_webhook",
    "slack_signature",
    "verify_slack",
    "verify_webhook",
]
