"""One side of a proxied connection: an asyncio Protocol with two modes.

*Handshake mode*: received bytes are buffered and the startup/auth code pulls whole
packets with ``await recv_startup()`` / ``await recv()``. Straight-line async code
keeps the authentication exchanges readable.

*Relay mode*: after :meth:`relay_to`, every read is handed synchronously to a sink
callback with no queue, task or copy in between — the proxy's hot path.

Backpressure: when this side's transport buffer fills, ``pause_writing`` tells the
session to stop reading from the peer, and ``resume_writing`` resumes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from struct import unpack_from

from dbgate.wire.errors import ProtocolError
from dbgate.wire.framing import MAX_STARTUP_PACKET


class ConnectionLost(Exception):
    """The peer closed the connection (or it broke) while we were waiting for it."""


class Channel(asyncio.Protocol):
    def __init__(self, max_message_size: int) -> None:
        self.transport: asyncio.Transport | None = None
        self.max_message_size = max_message_size
        self._buf = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._sink: Callable[[bytes], None] | None = None
        self._closed = False
        self.on_close: Callable[[Exception | None], None] | None = None
        self.on_pause_writing: Callable[[], None] | None = None
        self.on_resume_writing: Callable[[], None] | None = None
        self.write_paused = False
        self.on_made: Callable[[Channel], None] | None = None
        #: (user, database) of the client's StartupMessage, once read.
        self.startup: tuple[str, str] = ("", "")

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.on_made is not None:
            self.on_made(self)

    def data_received(self, data: bytes) -> None:
        sink = self._sink
        if sink is not None:
            sink(data)
            return
        self._buf += data
        self._wake()

    def eof_received(self) -> bool | None:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._wake()
        if self.on_close is not None:
            self.on_close(exc)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.on_pause_writing is not None:
            self.on_pause_writing()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.on_resume_writing is not None:
            self.on_resume_writing()

    # -- handshake mode ---------------------------------------------------------------
    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _need(self, n: int) -> None:
        while len(self._buf) < n:
            if self._closed:
                raise ConnectionLost("connection closed by peer")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def recv_startup(self) -> bytes:
        """Next untyped startup-phase packet body (after its length word)."""
        await self._need(4)
        length = unpack_from("!I", self._buf, 0)[0]
        if length < 8 or length > MAX_STARTUP_PACKET:
            raise ProtocolError(f"invalid startup packet length {length}")
        await self._need(length)
        body = bytes(self._buf[4:length])
        del self._buf[:length]
        return body

    async def recv(self) -> tuple[int, bytes]:
        """Next typed message as (type byte, body)."""
        await self._need(5)
        mtype = self._buf[0]
        length = unpack_from("!I", self._buf, 1)[0]
        if length < 4 or length > self.max_message_size:
            raise ProtocolError(f"invalid message length {length}")
        await self._need(1 + length)
        body = bytes(self._buf[5 : 1 + length])
        del self._buf[: 1 + length]
        return mtype, body

    async def recv_byte(self) -> bytes:
        """One raw byte (the server's 'S'/'N' answer to SSLRequest)."""
        await self._need(1)
        answer = bytes(self._buf[:1])
        del self._buf[:1]
        return answer

    def buffered(self) -> int:
        return len(self._buf)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self._closed:
            self.transport.write(data)

    def writelines(self, pieces: list[bytes]) -> None:
        if self.transport is not None and not self._closed:
            self.transport.writelines(pieces)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- relay mode -------------------------------------------------------------------
    def relay_to(self, sink: Callable[[bytes], None]) -> None:
        """Switch to relay mode; bytes already buffered are delivered first, in order.

        The sink also replaces ``data_received`` on this instance, so the event loop
        calls it directly: one Python frame less per read on the relay's hot path.
        """
        leftover = bytes(self._buf)
        self._buf.clear()
        self._sink = sink
        self.data_received = sink  # type: ignore[method-assign]
        if leftover:
            sink(leftover)
