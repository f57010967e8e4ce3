"""Helpers for the audit tests: a state database per module, a TCP link to it that
can be cut, and events to record.

``StateLink`` sits between an audit writer and the real PostgreSQL server. Cutting
it closes every connection and refuses new ones (the state database "disappears");
restoring it lets connections through again. ``lose_next_commit_answer`` lets the
server commit the next transaction but never delivers its answer — the case where
a writer cannot know whether its batch is in the database. ``cut_when_copy_starts``
cuts the link the moment the server accepts the next COPY: the database disappears
in the middle of a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from dbgate.audit.events import (
    ApprovalEvent,
    DetokenizeEvent,
    ReloadEvent,
    SessionEvent,
    StatementEvent,
)
from dbgate.config import AuditConfig
from dbgate.state import apply_migrations


async def create_state_database(pg_server, name: str) -> str:
    """A fresh, migrated state database; returns its superuser DSN."""
    admin = await asyncpg.connect(pg_server.dsn("postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = pg_server.dsn(name)
    conn = await asyncpg.connect(dsn)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    return dsn


async def drop_state_database(pg_server, name: str) -> None:
    admin = await asyncpg.connect(pg_server.dsn("postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def fast_config(**overrides) -> AuditConfig:
    """Test settings: quick retries and timeouts (never used as synchronisation)."""
    base = {
        "retry_max_seconds": 0.2,
        "connect_timeout": 2.0,
        "write_timeout": 5.0,
        "stop_timeout": 10.0,
        "param_key": "test-key",
    }
    base.update(overrides)
    return AuditConfig(**base)


def with_host_port(dsn: str, host: str, port: int) -> str:
    """``dsn`` pointed elsewhere, without TLS (the link relays plain protocol)."""
    parts = urlsplit(dsn)
    auth = parts.netloc.rsplit("@", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{auth}@{host}:{port}", query="sslmode=disable"))


def statement(i: int, identity: str = "agent", **kw) -> StatementEvent:
    return StatementEvent(
        "completed",
        kw.pop("sql", f"SELECT * FROM orders WHERE id = $1 /* {i} */"),
        identity=identity,
        session_id=kw.pop("session_id", 7),
        params=kw.pop("params", (str(i).encode(),)),
        categories=kw.pop("categories", ("read",)),
        tables=kw.pop("tables", ("public.orders",)),
        outcome=kw.pop("outcome", "SELECT 1"),
        rows=kw.pop("rows", 1),
        duration_us=kw.pop("duration_us", 120 + i),
        **kw,
    )


def one_of_each() -> list[object]:
    """Every kind of event the room records."""
    return [
        SessionEvent("connect", identity="agent", client_addr="10.0.0.7:51000", database="demo"),
        SessionEvent("auth_failed", identity="mallory", outcome="28P01", reason="bad password"),
        SessionEvent("auth_ok", identity="agent", session_id=7, application_name="psql"),
        StatementEvent(
            "decided",
            "COPY customers TO STDOUT",
            decision="hold",
            identity="agent",
            session_id=7,
            categories=("export",),
            tables=("public.customers",),
            rule="exports-need-approval",
            approval_id="42",
            purpose="monthly churn report",
            model="gpt-x",
        ),
        ApprovalEvent("approved", "42", identity="agent", actor="alice", reason="ok for Q3"),
        StatementEvent(
            "completed",
            "COPY customers TO STDOUT",
            decision="approved",
            identity="agent",
            session_id=7,
            approval_id="42",
            outcome="COPY 1000",
            rows=1000,
            tokenized=True,
        ),
        DetokenizeEvent("agent", "alice", 3, columns=("customers.email",), approval_id="42"),
        ReloadEvent("rules", True, source="/etc/dbgate/rules", version="sha256:abc"),
        SessionEvent("disconnect", identity="agent", session_id=7, statements=2),
    ]


class StateLink:
    """A TCP relay to PostgreSQL that a test can cut and restore."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.AbstractServer | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.up = True
        self._lose_commit = False
        self.lost_commits = 0
        self._cut_at_copy = False
        self._copy_began = False
        self.cut_copies = 0
        self.port = 0

    async def start(self) -> StateLink:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in list(self._tasks):
            t.cancel()

    def cut(self) -> None:
        """The database disappears: every connection closes, new ones are refused."""
        self.up = False
        for client, upstream in list(self._pairs):
            client.transport.abort()
            upstream.transport.abort()
        self._pairs.clear()

    def restore(self) -> None:
        self.up = True

    def lose_next_commit_answer(self) -> None:
        self._lose_commit = True

    def cut_when_copy_starts(self) -> None:
        """At the server's next CopyInResponse, cut the link (and refuse new
        connections until :meth:`restore`)."""
        self._cut_at_copy = True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.transport.abort()
            return
        host, port = self._target
        try:
            if host.startswith("/"):
                ur, uw = await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
            else:
                ur, uw = await asyncio.open_connection(host, port)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, uw)
        self._pairs.add(pair)
        a = asyncio.ensure_future(self._pump(reader, uw, pair, server_side=False))
        b = asyncio.ensure_future(self._pump(ur, writer, pair, server_side=True))
        self._tasks.update((a, b))
        a.add_done_callback(self._tasks.discard)
        b.add_done_callback(self._tasks.discard)

    async def _pump(self, reader, writer, pair, server_side: bool) -> None:
        buf = b""
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if not server_side:
                    writer.write(data)
                    continue
                buf += data
                out, buf = self._frames(buf)
                if out is None:  # a COMMIT answer swallowed: the link dies here
                    self._abort(pair)
                    return
                if self._copy_began:  # the database disappears mid-batch
                    self._copy_began = False
                    self.cut_copies += 1
                    self.cut()
                    return
                writer.write(out)
        except (ConnectionError, OSError):
            pass
        finally:
            self._abort(pair)

    def _frames(self, buf: bytes) -> tuple[bytes | None, bytes]:
        """Whole server messages to pass on (None: drop the rest and cut)."""
        out = bytearray()
        i = 0
        while len(buf) - i >= 5:
            kind = buf[i : i + 1]
            (length,) = struct.unpack_from("!I", buf, i + 1)
            if len(buf) - i < 1 + length:
                break
            if self._lose_commit and kind == b"C" and buf[i + 5 : i + 1 + length] == b"COMMIT\x00":
                self._lose_commit = False
                self.lost_commits += 1
                return None, b""
            if self._cut_at_copy and kind == b"G":  # CopyInResponse: never delivered
                self._cut_at_copy = False
                self._copy_began = True
                return bytes(out), b""
            out += buf[i : i + 1 + length]
            i += 1 + length
        return bytes(out), buf[i:]

    def _abort(self, pair) -> None:
        if pair in self._pairs:
            self._pairs.discard(pair)
        for w in pair:
            with contextlib.suppress(Exception):
                w.transport.abort()


@contextlib.asynccontextmanager
async def state_link(pg_server) -> AsyncIterator[StateLink]:
    link = await StateLink(pg_server.host, pg_server.port).start()
    try:
        yield link
    finally:
        await link.close()
