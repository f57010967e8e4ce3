"""TLS towards the upstream with a fake server: what needs no real one (no skips)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.test_upstream_tls import _refused


def test_bytes_sent_before_encryption_are_refused(
    make_proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A server (or a machine in the middle) that answers SSLRequest with 'S' plus
    more bytes: those were never encrypted and must not be read as the server's."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def fake_server() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(8)  # the SSLRequest
            conn.sendall(b"S" + b"R\x00\x00\x00\x08\x00\x00\x00\x00")  # 'S' + AuthenticationOk
            conn.recv(1)

    thread = threading.Thread(target=fake_server, daemon=True)
    thread.start()
    try:
        proxy = make_proxy(
            upstream={"host": "127.0.0.1", "port": port, "user": "x", "sslmode": "require"}
        )
        assert "unencrypted data after accepting TLS" in _refused(proxy, caplog)
    finally:
        listener.close()
        thread.join(5)
