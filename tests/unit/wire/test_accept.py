"""The client authentication flow (dbgate.wire.accept) with clients in memory, no sockets.

scramp plays an independent SCRAM client; dbgate's own upstream login flow plays a
PostgreSQL client (the two flows talk to each other, as h11 tests a connection
against a connection). The integration tests (test_proxy_bad_input.py and the
driver tests) run the same flow behind a real socket.
"""

from __future__ import annotations

from collections import deque

import pytest
import scramp

from dbgate.wire import messages as m
from dbgate.wire.accept import authenticate_client
from dbgate.wire.connect import ServerHello, log_in
from dbgate.wire.errors import ClientProtocolError
from dbgate.wire.flow import Flow
from dbgate.wire.scram import AuthenticationFailed, make_verifier
from dbgate.wire.startup import StartupMessage, parse_startup_packet

from .login_peers import BACKEND_PID, after_login, messages_of

USER, PASSWORD = "agent", "correct horse"
VERIFIER = make_verifier(PASSWORD)
MOCK_SECRET = b"m" * 32


def accept(user: str = USER, verifier: str | None = VERIFIER) -> Flow[bytes]:
    return authenticate_client(user, verifier, mock_secret=MOCK_SECRET)


def with_scramp(
    flow: Flow[bytes], password: str, sent: list[bytes] | None = None
) -> tuple[bytes, scramp.ScramClient]:
    """Run ``flow`` against scramp's client; return its result and the client.

    What the flow sends is appended to ``sent``, also when it fails.
    """
    sent = [] if sent is None else sent
    client = scramp.ScramClient(["SCRAM-SHA-256"], USER, password)
    sent.append(next(flow))
    assert m.decode_backend(*messages_of(sent[0])[0]) == m.AuthenticationSASL(("SCRAM-SHA-256",))
    first = m.sasl_initial_response("SCRAM-SHA-256", client.get_client_first().encode())
    sent.append(flow.send(messages_of(first)[0]))
    continue_message = m.decode_backend(*messages_of(sent[1])[0])
    assert isinstance(continue_message, m.AuthenticationSASLContinue)
    client.set_server_first(continue_message.data.decode())
    try:
        flow.send(messages_of(m.sasl_response(client.get_client_final().encode()))[0])
    except StopIteration as done:
        return done.value, client
    raise AssertionError("the flow asked for more than SCRAM's two client messages")


def test_a_scramp_client_logs_in_and_verifies_our_signature() -> None:
    final, client = with_scramp(accept(), PASSWORD)
    message = m.decode_backend(*messages_of(final)[0])
    assert isinstance(message, m.AuthenticationSASLFinal)
    client.set_server_final(message.data.decode())  # raises unless we know the verifier


def test_dbgates_upstream_login_and_client_login_agree() -> None:
    client: Flow[ServerHello] = log_in(user=USER, password=PASSWORD, database="db", params={})
    startup = parse_startup_packet(next(client)[4:])
    assert isinstance(startup, StartupMessage)
    server = accept(startup.params["user"])
    to_client = deque(messages_of(next(server)))
    while True:
        try:
            out = client.send(to_client.popleft())
        except StopIteration as done:
            hello = done.value
            break
        for message in messages_of(out):
            try:
                reply = server.send(message)
            except StopIteration as done:  # admitted: the proxy adds what the server says
                reply = done.value + after_login()
            to_client.extend(messages_of(reply))
    assert not to_client
    assert hello.backend_pid == BACKEND_PID


@pytest.mark.parametrize(("user", "verifier"), [(USER, VERIFIER), ("nobody", None)])
def test_wrong_password_and_unknown_user_fail_alike(user: str, verifier: str | None) -> None:
    with pytest.raises(AuthenticationFailed) as info:
        with_scramp(accept(user, verifier), "wrong")
    assert info.value.sqlstate == "28P01"
    assert str(info.value) == f'password authentication failed for user "{user}"'


def test_an_unknown_user_fails_even_knowing_the_mock_exchange() -> None:
    # Whatever the client sends, a name without a verifier never gets in.
    with pytest.raises(AuthenticationFailed, match='failed for user "nobody"'):
        with_scramp(accept("nobody", None), PASSWORD)


def test_an_unknown_user_sees_the_same_steps_as_a_known_one() -> None:
    seen = []
    for user, verifier in ((USER, VERIFIER), ("nobody", None)):
        sent: list[bytes] = []
        with pytest.raises(AuthenticationFailed):
            with_scramp(accept(user, verifier), "wrong", sent)
        messages = [m.decode_backend(*messages_of(out)[0]) for out in sent]
        server_first = messages[1].data.decode()  # type: ignore[union-attr]
        shape = [part[:2] for part in server_first.split(",")]
        seen.append(([type(msg).__name__ for msg in messages], shape, server_first[-6:]))
    assert seen[0] == seen[1]
    assert seen[0][0] == ["AuthenticationSASL", "AuthenticationSASLContinue"]
    assert seen[0][1:] == (["r=", "s=", "i="], "i=4096")


def test_the_mock_salt_is_stable_per_name() -> None:
    def salt_of(user: str) -> str:
        flow = accept(user, None)
        next(flow)
        first = m.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=clientnonce")
        server_first = m.decode_backend(*messages_of(flow.send(messages_of(first)[0]))[0])
        assert isinstance(server_first, m.AuthenticationSASLContinue)
        return server_first.data.decode().split(",")[1]

    assert salt_of("nobody") == salt_of("nobody") != salt_of("someone")


def test_no_user_name() -> None:
    with pytest.raises(AuthenticationFailed, match="no user name specified") as info:
        next(accept(""))
    assert info.value.sqlstate == "28000"


@pytest.mark.parametrize(
    ("mechanism", "data"),
    [
        ("SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=,r=x"),
        ("PLAIN", b"x"),
        ("SCRAM-SHA-256", None),
    ],
)
def test_other_mechanisms_are_refused(mechanism: str, data: bytes | None) -> None:
    flow = accept()
    next(flow)
    with pytest.raises(AuthenticationFailed, match="unsupported SASL mechanism") as info:
        flow.send(messages_of(m.sasl_initial_response(mechanism, data))[0])
    assert info.value.sqlstate == "28000"


def test_channel_binding_asked_for_is_refused_with_its_own_reason() -> None:
    flow = accept()
    next(flow)
    first = m.sasl_initial_response("SCRAM-SHA-256", b"p=tls-server-end-point,,n=,r=abc")
    with pytest.raises(AuthenticationFailed, match="channel binding is not supported") as info:
        flow.send(messages_of(first)[0])
    assert info.value.sqlstate == "0A000"


def _after_first() -> Flow[bytes]:
    flow = accept()
    next(flow)
    flow.send(messages_of(m.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc"))[0])
    return flow


@pytest.mark.parametrize(
    ("step", "message", "why"),
    [
        (0, m.query("select 1"), "expected SASLInitialResponse, got message type 'Q'"),
        (0, m.frame(ord("p"), b"SCRAM-SHA-256\0\0\0"), "malformed SASLInitialResponse"),
        (0, m.sasl_initial_response("SCRAM-SHA-256", b"x,,n=,r=a"), "gs2 channel binding"),
        (1, m.SYNC, "expected SASLResponse, got message type 'S'"),
        (1, m.sasl_response(b"c=biws,r=abc"), "proof missing"),
        (1, m.sasl_response(b"c=biws,r=forged,p=AAAA"), "nonce mismatch"),
    ],
    ids=["query", "truncated", "bad-gs2", "sync", "no-proof", "nonce"],
)
def test_a_client_breaking_the_protocol_is_blamed(step: int, message: bytes, why: str) -> None:
    flow = _after_first() if step else accept()
    if not step:
        next(flow)
    with pytest.raises(ClientProtocolError, match=why) as info:
        flow.send(messages_of(message)[0])
    assert info.value.sqlstate == "08P01"
