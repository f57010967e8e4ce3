"""Signatures on our webhooks and on Slack's requests: tables of good and bad input."""

from __future__ import annotations

import pytest

from dbgate.approvals.notify.signing import (
    SignatureError,
    sign_webhook,
    slack_signature,
    verify_slack,
    verify_webhook,
)

SECRET = "0123456789abcdef-secret"
BODY = b'{"event":"approval.created"}'
NOW = 1_800_000_000


def test_a_webhook_signature_verifies_and_returns_its_timestamp() -> None:
    header = sign_webhook(SECRET, BODY, NOW)
    assert header.startswith(f"t={NOW},v1=") and len(header.split("v1=")[1]) == 64
    assert verify_webhook(SECRET, header, BODY, now=NOW + 10) == NOW


@pytest.mark.parametrize(
    ("header", "body", "now", "message"),
    [
        (None, BODY, NOW, "no X-Dbgate-Signature"),
        ("", BODY, NOW, "no X-Dbgate-Signature"),
        ("garbage", BODY, NOW, "malformed"),
        ("v1=abc", BODY, NOW, "no valid t="),
        (f"t=x,v1={'0' * 64}", BODY, NOW, "no valid t="),
        (sign_webhook(SECRET, BODY, NOW), BODY + b" ", NOW, "does not match"),
        (sign_webhook("another-secret-000", BODY, NOW), BODY, NOW, "does not match"),
        (sign_webhook(SECRET, BODY, NOW), BODY, NOW + 301, "possible replay"),
        (sign_webhook(SECRET, BODY, NOW), BODY, NOW - 301, "possible replay"),
        # A changed timestamp breaks the MAC even inside the window.
        (
            sign_webhook(SECRET, BODY, NOW).replace(f"t={NOW}", f"t={NOW + 1}"),
            BODY,
            NOW,
            "does not match",
        ),
    ],
)
def test_bad_webhook_signatures_say_why(header, body, now, message) -> None:
    with pytest.raises(SignatureError, match=message):
        verify_webhook(SECRET, header, body, now=now)


def test_a_slack_signature_follows_slacks_scheme() -> None:
    # The example from Slack's "Verifying requests from Slack" documentation.
    secret = "8f742231b10e8888abcd99yyyzzz85a5"
    ts = "1531420618"
    body = (
        b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&"
        b"channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&"
        b"command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2F"
        b"commands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&"
        b"trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
    )
    expected = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
    assert slack_signature(secret, ts, body) == expected
    verify_slack(secret, ts, expected, body, now=int(ts) + 5)


@pytest.mark.parametrize(
    ("ts", "sig", "now", "message"),
    [
        (None, "v0=x", NOW, "not signed by Slack"),
        (str(NOW), None, NOW, "not signed by Slack"),
        ("soon", "v0=x", NOW, "not a number"),
        (str(NOW - 301), slack_signature(SECRET, str(NOW - 301), BODY), NOW, "possible replay"),
        (str(NOW), slack_signature("wrong-secret", str(NOW), BODY), NOW, "does not match"),
        (str(NOW), slack_signature(SECRET, str(NOW), BODY + b"x"), NOW, "does not match"),
    ],
)
def test_bad_slack_requests_say_why(ts, sig, now, message) -> None:
    with pytest.raises(SignatureError, match=message):
        verify_slack(SECRET, ts, sig, BODY, now=now)
