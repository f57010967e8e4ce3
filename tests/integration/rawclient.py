"""A tiny PostgreSQL client that sends exactly the bytes a test asks for.

Drivers hide the wire: they never pipeline the way a test needs, never send garbage,
never split a message across writes. This client speaks the protocol with the
``dbgate.wire`` encoders and decoders over a plain asyncio stream, so a test can

* authenticate with SCRAM-SHA-256 (optionally with a forged proof), any protocol
  version and any startup parameters;
* send any sequence of messages in one write, or dribble bytes one at a time;
* read decoded backend messages one by one, up to ReadyForQuery, or check that
  nothing arrives within a time window;
* send a CancelRequest with any key.

Every read has a timeout so a proxy bug fails a test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Iterable
from typing import Any

from dbgate.wire import messages as m
from dbgate.wire.scram import ScramClientExchange
from dbgate.wire.startup import CancelRequest, StartupMessage

DEFAULT_TIMEOUT = 10.0

Message = Any  # one of dbgate.wire.messages' backend dataclasses


class ServerError(Exception):
    """The server (or proxy) answered the startup with an ErrorResponse."""

    def __init__(self, error: m.ErrorResponse) -> None:
        super().__init__(f"{error.sqlstate}: {error.message}")
        self.error = error

    @property
    def sqlstate(self) -> str:
        return self.error.sqlstate


def encode(msg: bytes | Any) -> bytes:
    return msg if isinstance(msg, (bytes, bytearray)) else msg.encode()


def names(msgs: Iterable[Message]) -> list[str]:
    """Class names of messages, e.g. ``['ParseComplete', 'BindComplete', ...]``."""
    return [type(x).__name__ for x in msgs]


def rows(msgs: Iterable[Message]) -> list[tuple[bytes | None, ...]]:
    return [x.columns for x in msgs if isinstance(x, m.DataRow)]


def errors(msgs: Iterable[Message]) -> list[m.ErrorResponse]:
    return [x for x in msgs if isinstance(x, m.ErrorResponse)]


def status(msgs: Iterable[Message]) -> str:
    """Transaction status of the last ReadyForQuery in ``msgs``."""
    ready = [x for x in msgs if isinstance(x, m.ReadyForQuery)]
    assert ready, f"no ReadyForQuery in {names(msgs)}"
    return ready[-1].status


def extended(sql: str, params: tuple[bytes | None, ...] = (), max_rows: int = 0) -> bytes:
    """Parse/Bind/Describe(portal)/Execute of the unnamed statement, no Sync."""
    return b"".join(
        (
            m.Parse("", sql).encode(),
            m.Bind("", "", params=params).encode(),
            m.Describe("P", "").encode(),
            m.Execute("", max_rows).encode(),
        )
    )


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.key: m.BackendKeyData | None = None
        self.params: dict[str, str] = {}
        self.negotiation: m.NegotiateProtocolVersion | None = None
        self.startup_messages: list[Message] = []
        self.received = bytearray()  # every backend message, as received, for byte checks

    # -- connecting ------------------------------------------------------------------
    @classmethod
    async def open(cls, host: str, port: int) -> RawClient:
        """A bare TCP connection: nothing sent yet."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        return cls(reader, writer)

    @classmethod
    async def from_dsn(cls, dsn: str) -> RawClient:
        """Connected and authenticated as a libpq DSN names (host, port, user, password,
        database): a driver's DSN through dbgate, for the same session at the wire."""
        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(dsn)
        return await cls.connect(
            str(info["host"]),
            int(info["port"]),
            user=str(info["user"]),
            password=str(info["password"]),
            database=str(info["dbname"]),
        )

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        user: str,
        password: str,
        database: str,
        protocol: tuple[int, int] = (3, 0),
        params: dict[str, str] | None = None,
        protocol_options: dict[str, str] | None = None,
        bad_proof: bool = False,
    ) -> RawClient:
        """Open, send a StartupMessage, run SCRAM, read up to the first ReadyForQuery.

        Raises :class:`ServerError` if the startup ends with an ErrorResponse.
        """
        client = await cls.open(host, port)
        try:
            await client.startup(
                user=user,
                password=password,
                database=database,
                protocol=protocol,
                params=params,
                protocol_options=protocol_options,
                bad_proof=bad_proof,
            )
        except BaseException:
            client.abort()
            raise
        return client

    async def startup(
        self,
        *,
        user: str,
        password: str,
        database: str,
        protocol: tuple[int, int] = (3, 0),
        params: dict[str, str] | None = None,
        protocol_options: dict[str, str] | None = None,
        bad_proof: bool = False,
    ) -> None:
        all_params = {"user": user, "database": database, **(params or {})}
        self.send(StartupMessage(protocol, all_params, protocol_options or {}).encode())
        scram: ScramClientExchange | None = None
        while True:
            msg = await self.recv()
            self.startup_messages.append(msg)
            if isinstance(msg, m.ErrorResponse):
                raise ServerError(msg)
            if isinstance(msg, m.NegotiateProtocolVersion):
                self.negotiation = msg
            elif isinstance(msg, m.AuthenticationSASL):
                scram = ScramClientExchange(user, password)
                self.send(m.sasl_initial_response("SCRAM-SHA-256", scram.first()))
            elif isinstance(msg, m.AuthenticationSASLContinue):
                assert scram is not None
                final = scram.cont(msg.data)
                if bad_proof:
                    final = _forge_proof(final)
                self.send(m.sasl_response(final))
            elif isinstance(msg, m.AuthenticationSASLFinal):
                assert scram is not None
                scram.final(msg.data)
            elif isinstance(msg, m.BackendKeyData):
                self.key = msg
            elif isinstance(msg, m.ParameterStatus):
                self.params[msg.name] = msg.value
            elif isinstance(msg, m.ReadyForQuery):
                return

    # -- sending ---------------------------------------------------------------------
    def send(self, *msgs: bytes | Any) -> None:
        """Write all messages in one write."""
        self.writer.write(b"".join(encode(x) for x in msgs))

    async def send_split(self, data: bytes, size: int = 1, pause: float = 0.0005) -> None:
        """Write ``data`` in pieces of ``size`` bytes, each its own TCP send."""
        for i in range(0, len(data), size):
            self.writer.write(data[i : i + size])
            await self.writer.drain()
            await asyncio.sleep(pause)

    # -- receiving -------------------------------------------------------------------
    async def recv(self, timeout: float = DEFAULT_TIMEOUT) -> Message:
        """The next backend message, decoded. EOFError when the connection closed."""
        try:
            header = await asyncio.wait_for(self.reader.readexactly(5), timeout)
            length = int.from_bytes(header[1:5], "big")
            body = await asyncio.wait_for(self.reader.readexactly(length - 4), timeout)
        except asyncio.IncompleteReadError as e:
            raise EOFError(f"connection closed ({len(e.partial)} stray bytes)") from None
        except ConnectionResetError as e:
            raise EOFError(f"connection reset: {e}") from None
        self.received += header + body
        return m.decode_backend(header[0], body)

    async def until_ready(self, timeout: float = DEFAULT_TIMEOUT) -> list[Message]:
        """Messages up to and including the next ReadyForQuery."""
        out: list[Message] = []
        while True:
            msg = await self.recv(timeout)
            out.append(msg)
            if isinstance(msg, m.ReadyForQuery):
                return out

    async def until(self, cls: type, timeout: float = DEFAULT_TIMEOUT) -> list[Message]:
        """Messages up to and including the next one of type ``cls``."""
        out: list[Message] = []
        while True:
            msg = await self.recv(timeout)
            out.append(msg)
            if isinstance(msg, cls):
                return out

    async def query(self, sql: str, timeout: float = DEFAULT_TIMEOUT) -> list[Message]:
        self.send(m.query(sql))
        return await self.until_ready(timeout)

    async def nothing_for(self, seconds: float) -> list[Message]:
        """Whatever arrives within ``seconds`` (a test usually expects ``[]``)."""
        out: list[Message] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0:
            try:
                out.append(await self.recv(left))
            except TimeoutError:
                break
        return out

    async def until_closed(self, timeout: float = DEFAULT_TIMEOUT) -> list[Message]:
        """Read until the peer closes; return what arrived before. Fails on timeout."""
        out: list[Message] = []
        while True:
            try:
                out.append(await self.recv(timeout))
            except EOFError:
                return out

    async def read_raw(self, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        """Everything until EOF, undecoded."""
        return await asyncio.wait_for(self.reader.read(), timeout)

    # -- closing ---------------------------------------------------------------------
    def abort(self) -> None:
        """Drop the connection without a Terminate (a client that vanishes)."""
        transport = self.writer.transport
        transport.abort()  # type: ignore[attr-defined]

    async def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.write(m.TERMINATE)
            self.writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 5)


def _forge_proof(client_final: bytes) -> bytes:
    """Replace the ClientProof of a SCRAM client-final-message with random bytes."""
    without, _, proof = client_final.rpartition(b",p=")
    forged = bytes(b ^ 0x5A for b in base64.b64decode(proof))
    return without + b",p=" + base64.b64encode(forged)


async def send_cancel(host: str, port: int, pid: int, secret: bytes) -> bytes:
    """Send a CancelRequest; return whatever the server sent before closing (b'')."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(CancelRequest(pid, secret).encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


async def agent(running_proxy: Any, database: str, **kwargs: Any) -> RawClient:
    """A RawClient authenticated through a proxy from the integration fixtures."""
    from tests.integration.conftest import AGENT, AGENT_PASSWORD

    kwargs.setdefault("user", AGENT)
    kwargs.setdefault("password", AGENT_PASSWORD)
    return await RawClient.connect(
        running_proxy.host, running_proxy.port, database=database, **kwargs
    )


async def direct(pg_server: Any, database: str, **kwargs: Any) -> RawClient:
    """A RawClient authenticated straight to the PostgreSQL server (for comparisons)."""
    return await RawClient.connect(
        pg_server.host,
        pg_server.port,
        user=pg_server.user,
        password=pg_server.password,
        database=database,
        **kwargs,
    )
