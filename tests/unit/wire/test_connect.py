"""The upstream login flow (dbgate.wire.connect) against servers in memory, no sockets.

Every method a server may ask for (trust, cleartext, md5, SCRAM-SHA-256), the
server's refusals, and every way a server can break the protocol during startup.
The integration tests (tests/integration/test_upstream_auth.py) run the same flow
against a real PostgreSQL.
"""

from __future__ import annotations

import pytest

from dbgate.wire import messages as m
from dbgate.wire.connect import LoginRefused, ServerHello, log_in
from dbgate.wire.errors import ServerProtocolError
from dbgate.wire.flow import Flow
from dbgate.wire.startup import StartupMessage, parse_startup_packet

from .login_peers import (
    AFTER_LOGIN_PARAMETERS,
    BACKEND_KEY,
    BACKEND_PID,
    FakeServer,
    after_login,
    log_in_against,
    scripted,
)

USER, PASSWORD = "app_owner", "s3cret pässword"


def flow(password: str | None = PASSWORD, **params: str) -> Flow[ServerHello]:
    return log_in(user=USER, password=password, database="appdb", params=params)


@pytest.mark.parametrize("method", ["trust", "password", "md5", "scram"])
def test_logs_in_with_every_method_the_server_asks_for(method: str) -> None:
    server = FakeServer(method, USER, PASSWORD)
    hello = log_in_against(server, flow(application_name="agent-7"))
    assert hello == ServerHello(
        backend_pid=BACKEND_PID,
        backend_key=BACKEND_KEY,
        parameter_status=[m.parameter_status(n, v)[5:] for n, v in AFTER_LOGIN_PARAMETERS],
        notices=[m.notice_response("welcome")[5:]],
        transaction_status="I",
    )
    assert server.startup is not None
    assert server.startup.protocol == (3, 0)
    assert server.startup.params == {
        "user": USER,
        "database": "appdb",
        "application_name": "agent-7",
    }
    answers = {"trust": 0, "password": 1, "md5": 1, "scram": 2}[method]
    assert len(server.received) == answers


def test_trust_needs_no_password() -> None:
    hello = log_in_against(FakeServer("trust", USER, ""), flow(password=None))
    assert hello.backend_pid == BACKEND_PID


@pytest.mark.parametrize("method", ["password", "md5", "scram"])
def test_a_wrong_password_gives_the_servers_error(method: str) -> None:
    server = FakeServer(method, USER, "the real one")
    with pytest.raises(LoginRefused) as info:
        log_in_against(server, flow())
    body = info.value.error_body
    assert body is not None
    error = m.decode_backend(ord("E"), body)
    assert isinstance(error, m.ErrorResponse)
    assert (error.sqlstate, error.severity) == ("28P01", "FATAL")


@pytest.mark.parametrize("method", ["password", "md5", "scram"])
def test_a_password_request_without_a_configured_password(method: str) -> None:
    with pytest.raises(LoginRefused, match="asks for a password and none is configured"):
        log_in_against(FakeServer(method, USER, PASSWORD), flow(password=None))


def test_an_unknown_database_or_role_keeps_the_servers_words() -> None:
    refusal = m.error_response("3D000", 'database "appdb" does not exist', severity="FATAL")
    with pytest.raises(LoginRefused) as info:
        scripted(flow(), [refusal])
    assert info.value.error_body == refusal[5:]


def test_the_startup_packet_is_protocol_3_0_with_our_parameters() -> None:
    sent, _ = scripted(flow(), [after_login("T")])
    startup = parse_startup_packet(sent[0][4:])
    assert startup == StartupMessage((3, 0), {"user": USER, "database": "appdb"})
    assert sent[1:] == [b""] * 5  # nothing to say while the server reports its settings


def test_negotiate_protocol_version_is_ignored_and_status_kept() -> None:
    _, hello = scripted(
        flow(),
        [m.NegotiateProtocolVersion(0, ("_pq_.x",)).encode(), after_login("T")],
    )
    assert hello.transaction_status == "T"


@pytest.mark.parametrize(
    ("request_message", "why"),
    [
        (m.AuthenticationGSS().encode(), "unsupported authentication 7"),
        (m.AuthenticationSSPI().encode(), "unsupported authentication 9"),
        (m.AuthenticationKerberosV5().encode(), "unsupported authentication 2"),
        (m.auth_sasl(["SCRAM-SHA-256-PLUS"]), "unsupported SASL"),
    ],
)
def test_methods_dbgate_cannot_answer_are_refused(request_message: bytes, why: str) -> None:
    with pytest.raises(LoginRefused, match=why):
        scripted(flow(), [request_message])


def _scram_until_final() -> tuple[Flow[ServerHello], bytes]:
    """A flow that has answered AuthenticationSASL and SASLContinue; and its last answer."""
    f = flow()
    next(f)
    first = f.send((ord("R"), m.auth_sasl(["SCRAM-SHA-256"])[5:]))
    _, client_first = m.parse_sasl_initial_response(first[5:])
    assert client_first is not None
    nonce = client_first.decode().split("r=")[1] + "server-part"
    server_first = f"r={nonce},s=c2FsdHNhbHQ=,i=4096".encode()
    final = f.send((ord("R"), m.auth_sasl_continue(server_first)[5:]))
    assert final[:1] == b"p" and b",p=" in final
    return f, final


def test_a_server_that_cannot_prove_it_knows_the_password_is_refused() -> None:
    f, _ = _scram_until_final()
    forged = b"v=" + b"QUJD" * 11
    with pytest.raises(LoginRefused, match="signature does not match"):
        f.send((ord("R"), m.auth_sasl_final(forged)[5:]))


def test_authentication_ok_before_scram_ends_is_refused() -> None:
    f, _ = _scram_until_final()
    with pytest.raises(LoginRefused, match="without proving it knows the password"):
        f.send((ord("R"), m.AUTH_OK[5:]))


@pytest.mark.parametrize(
    ("script", "why"),
    [
        ([m.auth_sasl_final(b"v=x")], "AuthenticationSASLFinal out of order"),
        ([m.auth_sasl_continue(b"r=x")], "AuthenticationSASLContinue out of order"),
        ([m.auth_sasl(["SCRAM-SHA-256"])] * 2, "started SASL authentication twice"),
    ],
    ids=["final-first", "continue-first", "sasl-twice"],
)
def test_sasl_messages_out_of_order_are_the_servers_fault(script: list[bytes], why: str) -> None:
    with pytest.raises(ServerProtocolError, match=why):
        scripted(flow(), script)


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (m.data_row([b"1"]), "unexpected message 'D' from upstream during startup"),
        (m.frame(ord("R"), b"\0\0"), "malformed Authentication message"),
        (m.frame(ord("R"), b"\0\0\0\x06"), "unknown authentication request code 6"),
        (m.frame(ord("R"), b"\0\0\0\x05ab"), "malformed Authentication message"),
        (m.frame(ord("K"), b"\0\0\0\x01"), "malformed BackendKeyData"),
        (m.frame(ord("Z"), b"X"), "invalid transaction status"),
        (m.frame(ord("Z"), b""), "invalid transaction status"),
    ],
    ids=[
        "data-row",
        "short-auth",
        "unknown-code",
        "short-salt",
        "short-key",
        "bad-status",
        "empty",
    ],
)
def test_a_server_breaking_the_protocol_is_blamed(answer: bytes, why: str) -> None:
    with pytest.raises(ServerProtocolError, match=why) as info:
        scripted(flow(), [answer])
    assert info.value.sqlstate == "08P01"


def test_malformed_scram_from_the_server_is_the_servers_fault() -> None:
    f = flow()
    next(f)
    f.send((ord("R"), m.auth_sasl(["SCRAM-SHA-256"])[5:]))
    with pytest.raises(ServerProtocolError, match="server nonce does not extend ours"):
        f.send((ord("R"), m.auth_sasl_continue(b"r=someone-else,s=c2FsdA==,i=4096")[5:]))
