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
exactly the CancelRequest packet the client sent (length, code, pid, key); nothing
is answered, as with PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

from dbgate.wire.startup import CANCEL_REQUEST_CODE, CancelRequest

log = logging.getLogger("dbgate.workers")

__all__ = ["CancelRelay", "socket_path"]

#: Length, code and pid, then a key of 4..256 bytes: the largest packet accepted.
_MAX_PACKET = 12 + 256
_HEAD = struct.Struct("!iii")
#: How long forwarding to one sibling may take (a stuck sibling must not hold us).
FORWARD_TIMEOUT = 2.0


def socket_path(directory: Path, index: int) -> Path:
    """Where worker ``index`` listens for its siblings' cancels."""
    return directory / f"cancel-{index}.sock"


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
            if await self.cancel_here(request):
                log.info(
                    "worker %d: cancel for session %d delivered (it arrived at a sibling)",
                    self.index,
                    request.pid,
                )
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as e:
            log.warning("worker %d: forwarded cancel not read: %s", self.index, e)
        finally:
            writer.close()

    async def forward(self, request: CancelRequest) -> None:
        """Hand ``request`` to every sibling (the session is in at most one of them)."""
        packet = request.encode()
        siblings = [i for i in range(self.count) if i != self.index]
        await asyncio.gather(*(self._send(i, packet) for i in siblings))

    async def _send(self, index: int, packet: bytes) -> None:
        path = socket_path(self.directory, index)
        try:
            async with asyncio.timeout(FORWARD_TIMEOUT):
                _, writer = await asyncio.open_unix_connection(str(path))
                try:
                    writer.write(packet)
                    await writer.drain()
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except (TimeoutError, OSError) as e:
            # A sibling being restarted has no socket for a moment: its sessions are
            # gone with it, so there is nothing of its own to cancel.
            log.info("worker %d: cancel not forwarded to worker %d: %s", self.index, index, e)
