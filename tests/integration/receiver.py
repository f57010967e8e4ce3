"""A local HTTP receiver for notification tests: records what arrives, and can be
made to fail, to hang, or to be absent.

Tests wait on what the receiver got (:meth:`Receiver.wait_for`), never on sleeps.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Arrival:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    url: str = ""
    arrivals: list[Arrival] = field(default_factory=list)
    #: path -> HTTP statuses to answer in turn (then 200)
    script: dict[str, list[int]] = field(default_factory=dict)
    #: paths whose requests hang until ``release`` is set
    hang: set[str] = field(default_factory=set)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        async with self.changed:
            self.arrivals.append(Arrival(request.path, dict(request.headers), body))
            self.changed.notify_all()
        if request.path in self.hang:
            await self.release.wait()
        statuses = self.script.get(request.path)
        status = statuses.pop(0) if statuses else 200
        return web.Response(status=status, text="ok" if status == 200 else "no")

    def at(self, path: str, match: Callable[[Arrival], bool] | None = None) -> list[Arrival]:
        return [a for a in self.arrivals if a.path == path and (match is None or match(a))]

    async def wait_for(
        self,
        path: str,
        count: int = 1,
        timeout: float = 30,
        match: Callable[[Arrival], bool] | None = None,
    ) -> list[Arrival]:
        """The arrivals at ``path`` (that ``match``), once there are ``count``."""
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(lambda: len(self.at(path, match)) >= count)
        return self.at(path, match)


@asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", rec.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rec.url = f"http://127.0.0.1:{port}"
    try:
        yield rec
    finally:
        rec.release.set()
        await runner.cleanup()


def closed_port_url() -> str:
    """A URL on loopback where nothing listens (connection refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/down"
