"""Announcements of schema changes between worker processes without a state database.

Each worker keeps its own catalog snapshots, so DDL let through one worker must put
the others' snapshots in flux before it runs (:mod:`dbgate.gate.schema_peers`).
Replicas and workers that share a state database tell each other through it; workers
of one ``dbgate serve --workers N`` without one use this: a Unix socket per worker,
``schema-<index>.sock``, in the supervisor's runtime directory (0700, the cancel
sockets' too).

An announcement is one local connection per sibling: a 4-byte length, the payload
(UTF-8 JSON), and one byte back once the sibling has taken it in (its snapshots are
in flux from then on). :meth:`SiblingTransport.send` returns when every running
sibling has answered: a sibling with no socket, or whose socket nobody accepts on, is
not running (a worker being restarted), and the worker that replaces it reads its
snapshots afresh. A sibling that is running and does not answer in time makes the
send fail, and the DDL is refused (fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Callable
from pathlib import Path

from dbgate.gate.schema_peers import PeersUnreachable

log = logging.getLogger("dbgate.workers")

__all__ = ["SiblingTransport", "socket_path"]

#: A payload names a sender and a database: far below this.
MAX_PAYLOAD = 16 * 1024
#: How long one sibling may take to take an announcement in.
ANSWER_TIMEOUT = 2.0
TAKEN = b"1"
_LENGTH = struct.Struct("!I")


def socket_path(directory: Path, index: int) -> Path:
    """Where worker ``index`` hears its siblings' schema changes."""
    return directory / f"schema-{index}.sock"


class SiblingTransport:
    """One worker's end (a :class:`~dbgate.gate.schema_peers.PeerTransport`)."""

    def __init__(
        self, directory: Path, index: int, count: int, *, timeout: float = ANSWER_TIMEOUT
    ) -> None:
        self.directory = directory
        self.index = index
        self.count = count
        self.timeout = timeout
        self.listening = asyncio.Event()
        self._server: asyncio.base_events.Server | None = None
        self._heard: Callable[[str], None] = lambda payload: None

    @property
    def path(self) -> Path:
        return socket_path(self.directory, self.index)

    async def start(self, heard: Callable[[str], None], lost_word: Callable[[], None]) -> None:
        self._heard = heard
        self.path.unlink(missing_ok=True)  # left by this worker's predecessor
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        self.listening.set()

    async def stop(self) -> None:
        self.listening.clear()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
                if length > MAX_PAYLOAD:
                    log.warning("worker %d: oversized schema announcement ignored", self.index)
                    return
                payload = await reader.readexactly(length)
            try:
                text = payload.decode()
            except UnicodeDecodeError:
                log.warning("worker %d: malformed schema announcement ignored", self.index)
                return
            self._heard(text)
            writer.write(TAKEN)
            await writer.drain()
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as e:
            log.warning("worker %d: a sibling's schema announcement not read: %r", self.index, e)
        finally:
            writer.close()

    async def send(self, payload: str) -> None:
        data = payload.encode()
        packet = _LENGTH.pack(len(data)) + data
        siblings = [i for i in range(self.count) if i != self.index]
        failed = [
            e
            for e in await asyncio.gather(
                *(self._send(i, packet) for i in siblings), return_exceptions=True
            )
            if e is not None
        ]
        if failed:
            raise PeersUnreachable("; ".join(str(e) for e in failed))

    async def _send(self, index: int, packet: bytes) -> None:
        path = socket_path(self.directory, index)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(path)), self.timeout
            )
        except (FileNotFoundError, ConnectionRefusedError):
            return  # not running: its successor reads its snapshots afresh
        except (TimeoutError, OSError) as e:
            raise PeersUnreachable(f"worker {index}: {e!r}") from e
        try:
            async with asyncio.timeout(self.timeout):
                writer.write(packet)
                await writer.drain()
                answer = await reader.read(1)
        except (TimeoutError, OSError) as e:
            raise PeersUnreachable(f"worker {index} did not answer: {e!r}") from e
        finally:
            writer.close()
        if answer != TAKEN:
            raise PeersUnreachable(f"worker {index} did not take the announcement in")
