"""Live updates for open pages: server-sent events fed by the state database.

One subscription per process to the approvals wake-up feed (LISTEN/NOTIFY on
``dbgate_approvals``, :mod:`dbgate.approvals.wake`) fans out to every open page.
The events carry only the announcement (``request:12:approved``, ``decision:12``,
``estimate:12``): ids and statuses, never request content. The page then fetches
what it shows through its ordinary, signed-in routes.

A slow browser cannot hold memory: each stream keeps at most ``MAX_QUEUED``
announcements and, past that, is told to refresh once (``refresh``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiohttp import web
from aiohttp_sse import sse_response

log = logging.getLogger("dbgate.web")

MAX_QUEUED = 64
PING_SECONDS = 15.0
_CLOSE = ""


class LiveFeed:
    def __init__(self) -> None:
        self._streams: set[asyncio.Queue[str]] = set()
        self._unsubscribe: Callable[[], None] | None = None
        self.closing = False

    def attach(self, subscribe: Callable[[Callable[[str], None]], Callable[[], None]]) -> None:
        if self._unsubscribe is None:
            self._unsubscribe = subscribe(self.publish)

    def detach(self) -> None:
        self.closing = True
        if self._unsubscribe is not None:
            with contextlib.suppress(ValueError):
                self._unsubscribe()
            self._unsubscribe = None
        for q in list(self._streams):
            self._put(q, _CLOSE)

    @property
    def listeners(self) -> int:
        return len(self._streams)

    def publish(self, payload: str) -> None:
        for q in list(self._streams):
            self._put(q, payload)

    @staticmethod
    def _put(q: asyncio.Queue[str], item: str) -> None:
        try:
            q.put_nowait(item)
        except asyncio.QueueFull:
            while not q.empty():  # drop the backlog; one refresh covers all of it
                q.get_nowait()
            q.put_nowait("refresh" if item != _CLOSE else _CLOSE)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """Serve one EventSource until the browser leaves or the server stops."""
        q: asyncio.Queue[str] = asyncio.Queue(MAX_QUEUED)
        self._streams.add(q)
        try:
            async with sse_response(request, ping_interval=PING_SECONDS) as resp:
                await resp.send("ready")
                gone = asyncio.ensure_future(resp.wait())  # ends when a ping fails
                try:
                    while not self.closing:
                        getter = asyncio.ensure_future(q.get())
                        await asyncio.wait({getter, gone}, return_when=asyncio.FIRST_COMPLETED)
                        if not getter.done():
                            getter.cancel()
                            break
                        item = getter.result()
                        if item == _CLOSE:
                            break
                        try:
                            await resp.send(item)
                        except (ConnectionResetError, RuntimeError):
                            break  # the browser left
                finally:
                    gone.cancel()
            return resp
        finally:
            self._streams.discard(q)
