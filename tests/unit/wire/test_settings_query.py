"""Reading server settings (dbgate.wire.settings_query) against scripted answers.

The flow must read everything up to the server's ReadyForQuery whatever happens, so
the connection it used is left ready for its client. The integration test
(tests/integration/test_server_limits.py) reads a real server's settings.
"""

from __future__ import annotations

import pytest

from dbgate.wire import messages as m
from dbgate.wire.errors import ServerProtocolError
from dbgate.wire.settings_query import SettingsRefused, read_settings, settings_sql

from .login_peers import messages_of, scripted

NAMES = ("max_connections", "superuser_reserved_connections", "reserved_connections")


def answer(*values: bytes | None, extra: bytes = b"") -> bytes:
    return b"".join(
        [
            m.RowDescription(()).encode(),  # its fields do not matter to the flow
            extra,
            m.data_row(values),
            m.command_complete("SELECT 1"),
            m.ready_for_query("I"),
        ]
    )


def test_reads_each_setting_with_one_query() -> None:
    sent, values = scripted(read_settings(NAMES), [answer(b"100", b"3", b"0")])
    assert values == {
        "max_connections": "100",
        "superuser_reserved_connections": "3",
        "reserved_connections": "0",
    }
    ((t, body),) = messages_of(sent[0])
    assert t == ord("Q")
    assert m.parse_query(body) == settings_sql(NAMES)
    assert all(out == b"" for out in sent[1:])


def test_a_setting_the_server_lacks_reads_as_none() -> None:
    _, values = scripted(read_settings(NAMES), [answer(b"100", b"3", None)])
    assert values["reserved_connections"] is None


def test_parameter_status_reported_meanwhile_is_kept_for_the_client() -> None:
    kept: list[bytes] = []
    status = m.parameter_status("application_name", "x")
    notice = m.notice_response("hello")
    _, values = scripted(
        read_settings(NAMES, kept), [answer(b"10", b"3", b"2", extra=status + notice)]
    )
    assert values["max_connections"] == "10"
    assert kept == [status[5:]]


def test_a_refusal_is_raised_after_the_server_is_ready_again() -> None:
    flow = read_settings(NAMES)
    next(flow)
    flow.send(messages_of(m.error_response("42501", "permission denied"))[0])  # not yet
    with pytest.raises(SettingsRefused, match="42501: permission denied") as info:
        flow.send(messages_of(m.ready_for_query("I"))[0])
    assert info.value.fields["C"] == "42501"


@pytest.mark.parametrize(
    ("script", "match"),
    [
        (m.command_complete("SELECT 0") + m.ready_for_query("I"), "without its one row"),
        (answer(b"1", b"2"), "without its one row"),
        (m.data_row((b"1", b"2", b"3")) * 2, "two rows"),
        (m.BIND_COMPLETE, "unexpected message"),
    ],
)
def test_a_server_that_answers_something_else_broke_the_protocol(script: bytes, match: str) -> None:
    flow = read_settings(NAMES)
    next(flow)
    with pytest.raises(ServerProtocolError, match=match):
        for message in messages_of(script):
            flow.send(message)


@pytest.mark.parametrize("name", ["", "max_connections; drop table x", "Max", "a'b"])
def test_only_plain_setting_names_are_spelled_into_the_sql(name: str) -> None:
    with pytest.raises(ValueError):
        settings_sql([name] if name else [])
