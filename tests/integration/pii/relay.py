"""A tiny relay for tests: the real server's bytes, rewritten by a PII room, to a real driver.

It is not dbgate's proxy (the relay there is the lead's), only enough of one to hand
each driver exactly the bytes the room produces, so the test can show that asyncpg,
psycopg 3 (binary cursors), psycopg2, pg8000 and psql decode every replacement:
startup and authentication pass through untouched (SSL and GSS requests are declined),
then messages are framed both ways and results go through the statement's plan.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any

from dbgate.pii.plans import StatementPlan
from dbgate.pii.room import PiiRoom
from dbgate.wire import messages as m

_U32 = struct.Struct("!I")


async def _read_message(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    header = await reader.readexactly(5)
    length = _U32.unpack_from(header, 1)[0]
    return header[0], await reader.readexactly(length - 4)


def _frame(t: int, body: bytes) -> bytes:
    return bytes((t,)) + _U32.pack(len(body) + 4) + body


class _Conn:
    def __init__(self, room: PiiRoom) -> None:
        self.session = room.session("agent")
        self.statements: dict[str, StatementPlan] = {}
        self.statement_desc: dict[str, bytes] = {}
        self.portals: dict[str, tuple[StatementPlan, tuple[int, ...], str]] = {}
        self.portal_desc: dict[str, bytes] = {}
        self.queue: deque[tuple[str, Any]] = deque()
        self.rewriter: Any = None
        self.copier: Any = None
        self.exec_started = False

    # client -> server
    def client(self, t: int, body: bytes) -> bytes:
        c = chr(t)
        if c == "Q":
            self.queue.append(("Q", self.session.plan(m.parse_query(body))))
        elif c == "P":
            name, sql, _types = m.parse_parse(body)
            self.statements[name] = self.session.plan(sql)
        elif c == "B":
            portal, stmt, _pf, _params, rf = m.parse_bind(body)
            self.portals[portal] = (self.statements[stmt], rf, stmt)
        elif c == "D":
            kind, name = m.parse_describe(body)
            self.queue.append(("D", (kind, name)))
        elif c == "E":
            portal, _rows = m.parse_execute(body)
            self.queue.append(("E", portal))
        elif c == "S":
            self.queue.append(("S", None))
        return _frame(t, body)

    # server -> client
    def server(self, t: int, body: bytes) -> bytes:
        c = chr(t)
        head = self.queue[0] if self.queue else ("", None)
        if c == "T":
            if head[0] == "D":
                kind, name = self.queue.popleft()[1]
                (self.statement_desc if kind == "S" else self.portal_desc)[name] = body
            elif head[0] == "Q":
                fields = m.decode_backend(t, body).fields  # type: ignore[union-attr]
                self.rewriter = head[1].rows(body, tuple(f.format for f in fields))
        elif c == "n" and head[0] == "D":
            self.queue.popleft()
        elif c == "D":
            if head[0] == "E" and not self.exec_started:
                self.exec_started = True
                plan, formats, stmt = self.portals[head[1]]
                desc = self.portal_desc.get(head[1]) or self.statement_desc.get(stmt)
                self.rewriter = plan.rows(desc, formats)
            if self.rewriter is not None:
                body = self.rewriter.data_row(body)
        elif c in "CsI":
            if head[0] == "E":
                self.queue.popleft()
                self.exec_started = False
            self.rewriter = None
        elif c == "H":
            plan = head[1] if head[0] == "Q" else self.portals[head[1]][0]
            self.copier = plan.copy_out(body)
        elif c == "d" and self.copier is not None:
            body = self.copier.copy_data(body)
        elif c == "c":
            self.copier = None
        elif c == "E":
            body = self.session.filter.error(body)
            if head[0] != "Q":
                while self.queue and self.queue[0][0] != "S":
                    self.queue.popleft()
            self.exec_started = False
            self.rewriter = None
        elif c == "N":
            body = self.session.filter.notice(body)
        elif c == "A":
            body = self.session.filter.notification(body)
        elif c == "Z" and head[0] in ("Q", "S"):
            self.queue.popleft()
        return _frame(t, body)


class PiiTestRelay:
    def __init__(self, room: PiiRoom, upstream: tuple[str, int]) -> None:
        self.room = room
        self.upstream = upstream
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self._handlers: set[asyncio.Task[Any]] = set()

    async def start(self) -> PiiTestRelay:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening and end the connections still open: a handler left
        pending when its loop stops is collected later, mid-await, in another test."""
        if self.server is not None:
            self.server.close()
            for task in self._handlers:
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self.server.wait_closed()

    def dsn(self, user: str, password: str, dbname: str) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{dbname}?sslmode=disable"

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._relay(cr, cw)
        finally:
            self._handlers.discard(task)

    async def _relay(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection(*self.upstream)
        try:
            while True:  # SSLRequest / GSSENCRequest: decline; then the StartupMessage
                head = await cr.readexactly(8)
                length, code = struct.unpack("!II", head)
                if code in (80877103, 80877104):
                    cw.write(b"N")
                    continue
                uw.write(head + await cr.readexactly(length - 8))
                break
            conn = _Conn(self.room)
            await asyncio.gather(self._up(cr, uw, conn), self._down(ur, cw, conn))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            for w in (uw, cw):
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()

    async def _up(self, cr: asyncio.StreamReader, uw: asyncio.StreamWriter, conn: _Conn) -> None:
        while True:
            t, body = await _read_message(cr)
            uw.write(conn.client(t, body) if t != ord("p") else _frame(t, body))
            await uw.drain()
            if t == ord("X"):
                return

    async def _down(self, ur: asyncio.StreamReader, cw: asyncio.StreamWriter, conn: _Conn) -> None:
        while True:
            t, body = await _read_message(ur)
            cw.write(conn.server(t, body))
            await cw.drain()


@contextlib.contextmanager
def running_relay(room: PiiRoom, upstream: tuple[str, int]) -> Iterator[PiiTestRelay]:
    """A relay on a loop of its own thread, for synchronous and asynchronous clients
    alike; stopped, its connections ended and the loop closed on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    relay = PiiTestRelay(room, upstream)
    try:
        asyncio.run_coroutine_threadsafe(relay.start(), loop).result(10)
        yield relay
        asyncio.run_coroutine_threadsafe(relay.stop(), loop).result(10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        if not thread.is_alive():
            loop.close()
