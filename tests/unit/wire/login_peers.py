"""Peers for the login flows, with no sockets: a scripted PostgreSQL server and drivers.

The flows of :mod:`dbgate.wire.accept` and :mod:`dbgate.wire.connect` are generators
(see :mod:`dbgate.wire.flow`); these drivers play the other side. The fake server
checks passwords with code independent of dbgate's (hashlib for md5, scramp for
SCRAM), so a flow that passes here speaks the protocol, not merely dbgate's dialect.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import deque
from typing import Any

import scramp

from dbgate.wire import messages as m
from dbgate.wire.flow import Flow, Message
from dbgate.wire.framing import FrameReader
from dbgate.wire.startup import StartupMessage, parse_startup_packet

AFTER_LOGIN_PARAMETERS = (("server_version", "18.0"), ("client_encoding", "UTF8"))
BACKEND_PID, BACKEND_KEY = 4242, b"k3y!"


def messages_of(data: bytes) -> list[Message]:
    """The typed messages in ``data``, which must hold whole messages only."""
    reader = FrameReader()
    chunk, frames = reader.feed(data)
    assert reader.pending == 0, "a flow yielded a partial message"
    return [(t, chunk[s:e]) for t, s, e in frames]


def after_login(status: str = "I") -> bytes:
    """What a server sends once the client is in: settings, cancel key, a notice, ready."""
    return b"".join(
        [
            m.AUTH_OK,
            *(m.parameter_status(name, value) for name, value in AFTER_LOGIN_PARAMETERS),
            m.backend_key_data(BACKEND_PID, BACKEND_KEY),
            m.notice_response("welcome"),
            m.ready_for_query(status),
        ]
    )


class FakeServer:
    """The backend's side of login for one ``method``: trust, password, md5 or scram."""

    def __init__(self, method: str, user: str, password: str) -> None:
        self.method = method
        self.user = user
        self.password = password
        self.startup: StartupMessage | None = None
        self.received: list[Message] = []
        self._salt = secrets.token_bytes(4)
        self._scram: Any = None

    def start(self, packet: bytes) -> bytes:
        startup = parse_startup_packet(packet[4:])
        assert isinstance(startup, StartupMessage)
        self.startup = startup
        if startup.params["user"] != self.user:
            return m.error_response("28000", f'role "{startup.params["user"]}" does not exist')
        if self.method == "trust":
            return after_login()
        if self.method == "password":
            return m.auth_cleartext_password()
        if self.method == "md5":
            return m.auth_md5_password(self._salt)
        mechanism = scramp.ScramMechanism()
        auth_info = mechanism.make_auth_info(self.password, iteration_count=4096)
        self._scram = mechanism.make_server(lambda _user: auth_info)
        return m.auth_sasl(["SCRAM-SHA-256"])

    def receive(self, t: int, body: bytes) -> bytes:
        self.received.append((t, body))
        assert t == ord("p"), f"the server expects an authentication response, got {chr(t)}"
        if self.method == "password":
            ok = m.parse_password(body) == self.password
            return after_login() if ok else self._wrong_password()
        if self.method == "md5":
            inner = hashlib.md5((self.password + self.user).encode()).hexdigest()
            expected = "md5" + hashlib.md5(inner.encode() + self._salt).hexdigest()
            ok = m.parse_password(body) == expected
            return after_login() if ok else self._wrong_password()
        if len(self.received) == 1:
            mechanism, first = m.parse_sasl_initial_response(body)
            assert mechanism == "SCRAM-SHA-256" and first is not None
            self._scram.set_client_first(first.decode())
            return m.auth_sasl_continue(self._scram.get_server_first().encode())
        try:
            self._scram.set_client_final(body.decode())
        except scramp.ScramException:
            return self._wrong_password()
        return m.auth_sasl_final(self._scram.get_server_final().encode()) + after_login()

    def _wrong_password(self) -> bytes:
        return m.error_response(
            "28P01", f'password authentication failed for user "{self.user}"', severity="FATAL"
        )


def log_in_against(server: FakeServer, flow: Flow[Any]) -> Any:
    """Run a client-side login flow against ``server``; return the flow's result."""
    inbox = deque(messages_of(server.start(next(flow))))
    while True:
        assert inbox, "the flow waits for a message the server will not send"
        try:
            out = flow.send(inbox.popleft())
        except StopIteration as done:
            assert not inbox, f"the flow stopped with messages unread: {inbox}"
            return done.value
        for t, body in messages_of(out):
            inbox.extend(messages_of(server.receive(t, body)))


def scripted(flow: Flow[Any], answers: list[bytes]) -> tuple[list[bytes], Any]:
    """Run ``flow`` against fixed answers (each one or more whole messages).

    Returns what the flow sent, in order, and its result; an exception it raises
    propagates. Answers left over when the flow returns fail the test.
    """
    sent = [next(flow)]
    inbox = deque(msg for answer in answers for msg in messages_of(answer))
    while inbox:
        try:
            sent.append(flow.send(inbox.popleft()))
        except StopIteration as done:
            assert not inbox, f"the flow stopped with messages unread: {inbox}"
            return sent, done.value
    raise AssertionError("the script ran out before the flow finished")
