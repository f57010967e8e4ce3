"""An upstream that breaks the protocol during startup, played by a fake server.

Whose fault it is decides what the client hears: the agent did nothing wrong, so it
gets a FATAL that blames the server without quoting it, and the operator's log says
what the server actually sent. A server that asks for something dbgate cannot answer
is a refusal ("cannot connect"), not a protocol error.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from dbgate.wire import messages as m
from tests.integration.rawclient import ServerError, agent


class FakeUpstream:
    """Accepts one connection, reads the startup packet, sends ``script``, waits."""

    def __init__(self, script: bytes) -> None:
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.startup = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.settimeout(10)
            header = conn.recv(4, socket.MSG_WAITALL)
            self.startup = header + conn.recv(int.from_bytes(header, "big") - 4, socket.MSG_WAITALL)
            conn.sendall(self.script)
            while conn.recv(1024):  # until dbgate closes its side
                pass

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)


@pytest.fixture
def fake_upstream() -> Iterator[Any]:
    started: list[FakeUpstream] = []

    def start(script: bytes) -> FakeUpstream:
        started.append(FakeUpstream(script))
        return started[-1]

    yield start
    for server in started:
        server.close()


async def _startup_error(make_proxy: Any, server: FakeUpstream) -> m.ErrorResponse:
    upstream = {"host": "127.0.0.1", "port": server.port, "user": "app", "password": "pw"}
    proxy = make_proxy(upstream=upstream)
    with pytest.raises(ServerError) as info:
        await agent(proxy, "postgres")
    return info.value.error


@pytest.mark.parametrize(
    ("script", "logged"),
    [
        (m.data_row([b"1"]), "unexpected message 'D' from upstream during startup"),
        (b"R\x00\x00\x00\x02", "invalid message length 2 for message type 'R'"),
        (m.frame(ord("R"), b"\x00\x00\x00\x05ab"), "malformed Authentication message"),
        (m.AUTH_OK + m.frame(ord("Z"), b"?"), "invalid transaction status"),
    ],
    ids=["unexpected-type", "bad-length", "short-md5-salt", "bad-ready-status"],
)
async def test_an_upstream_breaking_the_protocol_is_blamed(
    make_proxy: Any,
    fake_upstream: Any,
    caplog: pytest.LogCaptureFixture,
    script: bytes,
    logged: str,
) -> None:
    server = fake_upstream(script)
    error = await _startup_error(make_proxy, server)
    assert (error.severity, error.sqlstate) == ("FATAL", "08P01")
    assert error.message == "dbgate: the upstream server sent an invalid message"
    assert logged in caplog.text and "upstream protocol error" in caplog.text
    assert server.startup[4:8] == b"\x00\x03\x00\x00"  # dbgate did start up: protocol 3.0


async def test_an_upstream_asking_for_what_dbgate_cannot_answer_is_a_refusal(
    make_proxy: Any, fake_upstream: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = fake_upstream(m.AuthenticationGSS().encode())
    error = await _startup_error(make_proxy, server)
    assert (error.severity, error.sqlstate) == ("FATAL", "08006")
    assert error.message == "dbgate: cannot connect to the database"
    assert "unsupported authentication 7" in caplog.text
