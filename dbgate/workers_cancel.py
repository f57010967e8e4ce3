"""CancelRequests between worker processes that share one port.

With ``dbgate serve --workers N`` the kernel spreads connections over the workers
(SO_REUSEPORT), and a CancelRequest is a connection of its own: it lands on any
worker, usually not the one holding the session it names. A worker that does not
know the key hands it to its siblings, each of which answers it if the session is
its own (:meth:`dbgate.proxy.server.ProxyServer.cancel_here`) and otherwise drops it.

Why forwarding rather than a key that names its worker: the client's key stays all
random (a 4-byte key of protocol 3.0 has no bits to spare), the pid clients see
stays the upstream backend's real pid, and a worker needs no shared map that could
go stale when another worker dies. A cancel costs one local connection per sibling,
and cancels are rare.

The transport is one Unix socket per worker, ``cancel-<index>.sock`` in a directory
that only dbgate's user may enter (the supervisor creates it 0700). A sibling gets
exactly the CancelRequest packet the client sent (length, code, pid, key) and answers
one byte once it is done with it: ``1`` when the session was its own (the wait in
dbgate ended, or the server confirmed the cancel, or nothing ran that could be
cancelled), ``0`` when the session is not its own.

Why wait for that answer: drivers (asyncpg, libpq's ``PQcancel``) take the close of
their cancel connection as "the cancel has been delivered" and send their next
statement. A PostgreSQL cancel interrupts whatever the backend runs when it arrives,
so a worker that closed the client's connection as soon as it had handed the
request on let the cancel land on that next statement (asyncpg's own
``test_copy_records_to_table_no_binary_codec``: the ``DROP TABLE`` after a failed
COPY was cancelled). The worker that received the request therefore closes the
client's connection only after every sibling has answered, or has stopped waiting.

And when it stops waiting (a sibling too slow to answer), the sibling must not act
later: the client has moved on by then. The forwarding end closes its socket before
it closes the client's connection, and the sibling, right before it acts, looks at
the kernel's view of that socket: closed means the forwarder gave up, and the
request is dropped. Once the sibling acts, the session holds the client's later
messages until the server confirms the cancel (:meth:`dbgate.proxy.session.Session.cancel`),
so nothing the client sends after that point can be hit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

from dbgate.proxy.upstream import CANCEL_TIMEOUT
from dbgate.wire.startup import CANCEL_REQUEST_CODE, CancelRequest

log = logging.getLogger("dbgate.workers")

__all__ = ["CancelRelay", "socket_path"]

#: Length, code and pid, then a key of 4..256 bytes: the largest packet accepted.
_MAX_PACKET = 12 + 256
_HEAD = struct.Struct("!iii")
#: How long handing a request to one sibling may take (a stuck sibling must not hold us).
FORWARD_TIMEOUT = 2.0
#: How long to wait for a sibling's answer: its own delivery upstream is bounded by
#: CANCEL_TIMEOUT (connect, then the server's confirmation), plus the local hop.
ANSWER_TIMEOUT = CANCEL_TIMEOUT * 2 + FORWARD_TIMEOUT
DELIVERED, NOT_HERE = b"1", b"0"


def socket_path(directory: Path, index: int) -> Path:
    """Where worker ``index`` listens for its siblings' cancels."""
    return directory / f"cancel-{index}.sock"


def forwarder_gone(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Whether the forwarding worker has closed its end, as the kernel sees it now
    (not as the event loop last read it): then it has stopped waiting, and may
    already have told the client the cancel is done."""
    if reader.at_eof():
        return True
    sock = writer.get_extra_info("socket")
    if sock is None:
        return True
    # A duplicate of the descriptor: the transport's own socket stays untouched.
    with socket.fromfd(sock.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as peek:
        peek.setblocking(False)
        try:
            return peek.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False  # open, nothing more sent: it waits for our answer
        except OSError:
            return True


def _decode(packet: bytes) -> CancelRequest | None:
    if len(packet) < _HEAD.size + 4 or len(packet) > _MAX_PACKET:
        return None
    length, code, pid = _HEAD.unpack_from(packet)
    if length != len(packet) or code != CANCEL_REQUEST_CODE:
        return None
    return CancelRequest(pid, packet[_HEAD.size :])


class CancelRelay:
    """One worker's end: listens for its siblings' cancels and forwards its own.

    ``cancel_here`` answers a forwarded request in this worker (True: the session is
    here). ``await start()`` before the proxy accepts clients, ``await stop()`` last.
    """

    def __init__(
        self,
        directory: Path,
        index: int,
        count: int,
        cancel_here: Callable[[CancelRequest], Awaitable[bool]],
    ) -> None:
        self.directory = directory
        self.index = index
        self.count = count
        self.cancel_here = cancel_here
        self._server: asyncio.base_events.Server | None = None

    @property
    def path(self) -> Path:
        return socket_path(self.directory, self.index)

    async def start(self) -> None:
        self.path.unlink(missing_ok=True)  # left by this worker's predecessor
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(FORWARD_TIMEOUT):
                head = await reader.readexactly(4)
                (length,) = struct.unpack("!i", head)
                if not _HEAD.size + 4 <= length <= _MAX_PACKET:
                    log.warning("worker %d: malformed cancel from a sibling ignored", self.index)
                    return
                packet = head + await reader.readexactly(length - 4)
            request = _decode(packet)
            if request is None:
                log.warning("worker %d: malformed cancel from a sibling ignored", self.index)
                return
            if forwarder_gone(reader, writer):
                # No await between this check and cancel_here's synchronous start
                # (the session's hold): the client cannot have moved on in between.
                log.warning(
                    "worker %d: cancel for session %d dropped: the worker that received "
                    "it stopped waiting for this one",
                    self.index,
                    request.pid,
                )
                return
            if await self.cancel_here(request):
                writer.write(DELIVERED)
                log.info(
                    "worker %d: cancel for session %d handled (it arrived at a sibling)",
                    self.index,
                    request.pid,
                )
            else:
                writer.write(NOT_HERE)
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as e:
            log.warning("worker %d: forwarded cancel not read: %s", self.index, e)
        finally:
            writer.close()

    async def forward(self, request: CancelRequest) -> None:
        """Hand ``request`` to every sibling (the session is in at most one of them)
        and return when each has answered: the owner's answer means the server has
        confirmed the cancel, so the client's cancel connection may close now."""
        packet = request.encode()
        siblings = [i for i in range(self.count) if i != self.index]
        await asyncio.gather(*(self._send(i, packet) for i in siblings))

    async def _send(self, index: int, packet: bytes) -> None:
        path = socket_path(self.directory, index)
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            try:
                async with asyncio.timeout(FORWARD_TIMEOUT):
                    await loop.sock_connect(sock, str(path))
                    await loop.sock_sendall(sock, packet)
            except (TimeoutError, OSError) as e:
                # A sibling being restarted has no socket for a moment: its sessions
                # are gone with it, so there is nothing of its own to cancel.
                log.info("worker %d: cancel not forwarded to worker %d: %s", self.index, index, e)
                return
            try:
                async with asyncio.timeout(ANSWER_TIMEOUT):
                    await loop.sock_recv(sock, 1)  # its answer, or its close
            except (TimeoutError, OSError) as e:
                log.warning(
                    "worker %d: worker %d did not answer a forwarded cancel: %s",
                    self.index,
                    index,
                    e or "timed out",
                )
        finally:
            # Closed here, before the client's cancel connection is: a sibling that
            # has not acted yet sees this and drops the request.
            sock.close()
