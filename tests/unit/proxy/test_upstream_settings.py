"""Which of the settings dbgate adds to an upstream StartupMessage go out.

The session guards are sent as startup parameters; a server that does not know one
(``transaction_timeout`` before PostgreSQL 17) refuses the whole connection with
42704, so the relay learns the server's version and leaves out what it lacks.
"""

from __future__ import annotations

import pytest

from dbgate.proxy.upstream_settings import UpstreamSettings, merge_settings, server_major
from dbgate.wire.codec import error_response

GUARDS = {
    "statement_timeout": "120000",
    "lock_timeout": "10000",
    "idle_in_transaction_session_timeout": "60000",
    "transaction_timeout": "600000",
}


def status(name: str, value: str) -> bytes:
    return name.encode() + b"\0" + value.encode() + b"\0"


def body(code: str, message: str = "unrecognized configuration parameter") -> bytes:
    return error_response(code, message, severity="FATAL")[5:]  # the frame's body


def test_the_client_names_a_setting_it_is_the_clients() -> None:
    client = {"application_name": "app", "Statement_Timeout": "5000"}
    assert merge_settings(client, GUARDS) == {
        "application_name": "app",
        "Statement_Timeout": "5000",
        "lock_timeout": "10000",
        "idle_in_transaction_session_timeout": "60000",
        "transaction_timeout": "600000",
    }
    assert merge_settings({}, {}) == {}


@pytest.mark.parametrize(
    ("version", "major"),
    [("18.1", 18), ("16.4 (Debian 16.4-1.pgdg120+1)", 16), ("9.6.24", 9), ("17beta2", 17)],
)
def test_the_major_version_is_read_from_server_version(version: str, major: int) -> None:
    bodies = [status("server_encoding", "UTF8"), status("server_version", version)]
    assert server_major(bodies) == major


def test_no_server_version_no_major() -> None:
    assert server_major([status("server_encoding", "UTF8")]) is None
    assert server_major([status("server_version", "devel")]) is None


def test_everything_goes_until_the_version_is_known() -> None:
    settings = UpstreamSettings()
    assert settings.known(GUARDS) == GUARDS
    settings.learn([status("server_version", "16.4")])
    assert settings.known(GUARDS) == {k: v for k, v in GUARDS.items() if k != "transaction_timeout"}
    settings.learn([status("server_version", "17.0")])  # upgraded under us
    assert settings.known(GUARDS) == GUARDS
    settings.learn([status("application_name", "")])  # says nothing: keeps what it knew
    assert settings.major == 17


@pytest.mark.parametrize(
    "message",
    [
        'unrecognized configuration parameter "transaction_timeout"',
        "unbekannter Konfigurationsparameter »transaction_timeout«",  # lc_messages=de
        "unrecognized configuration parameter",  # names none: every candidate goes
    ],
)
def test_an_unknown_setting_refusal_retries_without_it(message: str) -> None:
    settings = UpstreamSettings({"transaction_timeout": 17, "future_timeout": 99})
    sent = {**GUARDS, "future_timeout": "1"}
    if "transaction_timeout" in message:
        assert settings.retry_without(sent, body("42704", message)) == {"transaction_timeout"}
    else:
        assert settings.retry_without(sent, body("42704", message)) == {
            "transaction_timeout",
            "future_timeout",
        }


def test_a_name_inside_another_name_is_not_that_name() -> None:
    settings = UpstreamSettings({"transaction_timeout": 17, "idle_in_transaction_timeout": 99})
    sent = {"transaction_timeout": "1", "idle_in_transaction_timeout": "1"}
    message = 'unrecognized configuration parameter "idle_in_transaction_timeout"'
    assert settings.retry_without(sent, body("42704", message)) == {"idle_in_transaction_timeout"}


@pytest.mark.parametrize(
    "error",
    [None, body("28P01", "password authentication failed"), body("3D000"), b"\xff garbage"],
)
def test_other_refusals_are_not_retried(error: bytes | None) -> None:
    assert UpstreamSettings().retry_without(GUARDS, error) == set()


def test_nothing_version_dependent_sent_nothing_to_retry() -> None:
    sent = {k: v for k, v in GUARDS.items() if k != "transaction_timeout"}
    assert UpstreamSettings().retry_without(sent, body("42704")) == set()
