"""One side of a proxied connection: an asyncio Protocol with two modes.

*Handshake mode*: received bytes are buffered in a
:class:`~dbgate.wire.framing.HandshakeReader` and the startup code pulls whole packets
with ``await recv_startup()`` / ``await recv()``, or hands a sans-IO login flow
(:mod:`dbgate.wire.flow`) to :meth:`exchange`, which runs it over this connection.

*Relay mode*: after :meth:`relay_to`, every read is handed synchronously to a sink
callback with no queue, task or copy in between — the proxy's hot path.

Backpressure: when this side's transport buffer fills, ``pause_writing`` tells the
session to stop reading from the peer, and ``resume_writing`` resumes it. In
handshake mode a client channel holds at most ``buffer_limit`` unread bytes: beyond
that it stops reading until the login code has taken what it needs, so a client that
sends megabytes before logging in costs no more memory than one that does not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from dbgate.wire.flow import Flow, Message
from dbgate.wire.framing import HandshakeReader

T = TypeVar("T")


class ConnectionLost(Exception):
    """The peer closed the connection (or it broke) while we were waiting for it."""


class Channel(asyncio.Protocol):
    def __init__(self, max_message_size: int, buffer_limit: int | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.max_message_size = max_message_size
        self._incoming = HandshakeReader(max_message_size)
        self._buffer_limit = buffer_limit
        self._read_paused = False
        self._held = False
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
        self._incoming.feed(data)
        limit = self._buffer_limit
        if (
            self._held or (limit is not None and len(self._incoming) > limit)
        ) and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()
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

    async def _next(self, take: Callable[[], T | None]) -> T:
        """Wait until ``take`` (one of the reader's ``next_*``) has a whole packet."""
        while True:
            packet = take()
            if packet is not None:
                if self._read_paused and len(self._incoming) <= (self._buffer_limit or 0):
                    self._resume_reading()
                return packet
            if self._closed:
                raise ConnectionLost("connection closed by peer")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def recv_startup(self) -> bytes:
        """Next untyped startup-phase packet body (after its length word)."""
        return await self._next(self._incoming.next_startup_packet)

    async def recv(self) -> Message:
        """Next typed message as (type byte, body)."""
        return await self._next(self._incoming.next_message)

    async def recv_byte(self) -> bytes:
        """One raw byte (the server's 'S'/'N' answer to SSLRequest)."""
        return await self._next(self._incoming.next_byte)

    async def exchange(self, flow: Flow[T]) -> T:
        """Run a sans-IO flow over this connection: send what it yields, feed it the
        peer's answers, and return its result. Its exceptions pass through."""
        try:
            out = next(flow)
            while True:
                if out:
                    self.write(out)
                out = flow.send(await self.recv())
        except StopIteration as done:
            return done.value
        finally:
            flow.close()

    def buffered(self) -> int:
        return len(self._incoming)

    def hold(self) -> None:
        """Read nothing more for now (a connection waiting for its turn to log in). The
        event loop may already have started one read; that one is kept."""
        self._held = self._read_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def release(self) -> None:
        """Start (or go on) reading."""
        self._held = False
        if self._read_paused and len(self._incoming) <= (self._buffer_limit or 0):
            self._resume_reading()

    def _resume_reading(self) -> None:
        self._read_paused = False
        if self.transport is not None and not self._closed:
            self.transport.resume_reading()

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
        leftover = self._incoming.take_all()
        self._sink = sink
        self.data_received = sink  # type: ignore[method-assign]
        if self._read_paused:
            self._resume_reading()
        if leftover:
            sink(leftover)
