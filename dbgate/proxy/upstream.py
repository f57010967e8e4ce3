"""Connecting and authenticating to the real PostgreSQL server.

The agent never sees these credentials: dbgate authenticates upstream on the agent's
behalf with SCRAM-SHA-256, md5, a cleartext password or trust — whatever the server
asks for — optionally over TLS. The login itself is the sans-IO flow of
:mod:`dbgate.wire.connect`; this module opens the connection, runs the flow over it
and says whose fault a failure was.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

from dbgate.config import UpstreamConfig
from dbgate.proxy.channel import Channel
from dbgate.wire.connect import LoginRefused, log_in
from dbgate.wire.errors import LimitExceeded, ProtocolError, ServerProtocolError
from dbgate.wire.startup import CancelRequest, SSLRequest


class UpstreamError(Exception):
    """Connecting or authenticating upstream failed.

    ``error_body`` holds the server's own ErrorResponse body when it sent one (for
    example an unknown database), so the client can get the server's words.
    """

    def __init__(self, message: str, error_body: bytes | None = None) -> None:
        super().__init__(message)
        self.error_body = error_body


@dataclass(slots=True)
class UpstreamConnection:
    channel: Channel
    backend_pid: int = 0
    backend_key: bytes = b""
    parameter_status: list[bytes] = field(default_factory=list)  # raw 'S' bodies, in order
    notices: list[bytes] = field(default_factory=list)  # raw 'N' bodies sent during startup
    transaction_status: str = "I"


def tls_context(cfg: UpstreamConfig) -> ssl.SSLContext:
    """The client-side TLS context for ``cfg.sslmode``, with libpq's meanings."""
    if cfg.sslmode in ("verify-ca", "verify-full"):
        ctx = ssl.create_default_context(cafile=str(cfg.sslrootcert))
        ctx.check_hostname = cfg.sslmode == "verify-full"
        return ctx
    ctx = ssl.create_default_context()
    # prefer/require: encrypt, do not verify the certificate (libpq does the same).
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def asyncpg_ssl(cfg: UpstreamConfig) -> ssl.SSLContext | str | bool:
    """asyncpg's ``ssl`` argument for dbgate's own connections to the upstream (its
    catalog reads, row estimates, preflight), with the same meaning as the relay's:
    ``verify-ca``/``verify-full`` verify the server's certificate (and name) against
    ``sslrootcert``. asyncpg's own ``"require"`` verifies nothing, so a server an
    attacker on the path impersonated could answer dbgate's reads of the PII schema
    (and be sent the password) while the relay's connection refused it."""
    if cfg.sslmode == "disable" or cfg.host.startswith("/"):
        return False
    if cfg.sslmode in ("prefer", "require"):
        return cfg.sslmode
    return tls_context(cfg)


async def open_channel(cfg: UpstreamConfig, max_message_size: int) -> Channel:
    """Open the transport (TCP or Unix socket), negotiating TLS when configured."""
    loop = asyncio.get_running_loop()
    if cfg.host.startswith("/"):
        path = f"{cfg.host.rstrip('/')}/.s.PGSQL.{cfg.port}"
        _, channel = await loop.create_unix_connection(lambda: Channel(max_message_size), path)
        return channel
    _, channel = await loop.create_connection(lambda: Channel(max_message_size), cfg.host, cfg.port)
    if cfg.sslmode == "disable":
        return channel
    channel.write(SSLRequest().encode())
    answer = await channel.recv_byte()
    if answer == b"S":
        assert channel.transport is not None
        if channel.buffered():
            # Bytes that came with the 'S' were not encrypted yet would be read as if
            # the verified server sent them (libpq's CVE-2021-23222): refuse.
            channel.abort()
            raise UpstreamError("upstream server sent unencrypted data after accepting TLS")
        try:
            new_transport = await loop.start_tls(
                channel.transport, channel, tls_context(cfg), server_hostname=cfg.host
            )
        except ssl.SSLError as e:
            channel.abort()
            raise UpstreamError(f"TLS with the upstream server failed: {e}") from None
        channel.transport = new_transport  # type: ignore[assignment]
        return channel
    if answer == b"N" and cfg.sslmode == "prefer":
        return channel
    channel.close()
    raise UpstreamError(f"upstream server refused TLS (sslmode={cfg.sslmode})")


async def connect_upstream(
    cfg: UpstreamConfig,
    *,
    user: str,
    password: str | None,
    database: str,
    params: dict[str, str],
    max_message_size: int,
) -> UpstreamConnection:
    """Connect, authenticate and read until the first ReadyForQuery.

    Raises :class:`UpstreamError` when the server cannot be reached or refuses us,
    :class:`ServerProtocolError` when it breaks the protocol (whatever went wrong
    reading it: the client is not at fault).
    """
    try:
        channel = await asyncio.wait_for(
            open_channel(cfg, max_message_size), timeout=cfg.connect_timeout
        )
    except (TimeoutError, OSError) as e:
        raise UpstreamError(f"cannot connect to upstream {cfg.host}:{cfg.port}: {e}") from e
    flow = log_in(user=user, password=password, database=database, params=params)
    try:
        try:
            hello = await asyncio.wait_for(channel.exchange(flow), timeout=cfg.connect_timeout)
        except TimeoutError as e:
            raise UpstreamError("upstream did not complete the startup in time") from e
        except LoginRefused as e:
            raise UpstreamError(str(e), error_body=e.error_body) from None
        except ServerProtocolError:
            raise
        except (ProtocolError, LimitExceeded) as e:  # the framer's: it cannot tell whose
            raise ServerProtocolError(str(e)) from e
    except BaseException:
        channel.abort()
        raise
    return UpstreamConnection(
        channel=channel,
        backend_pid=hello.backend_pid,
        backend_key=hello.backend_key,
        parameter_status=hello.parameter_status,
        notices=hello.notices,
        transaction_status=hello.transaction_status,
    )


#: How long delivering one CancelRequest upstream may take: connecting, then the
#: server's confirmation (its close of the cancel connection).
CANCEL_TIMEOUT = 5.0


class CancelNotConfirmed(TimeoutError):
    """A CancelRequest was sent upstream but the server did not confirm it in time.

    Unlike a cancel that could not be sent (``OSError``, or a ``TimeoutError`` while
    connecting), this one may still reach the backend later, and a PostgreSQL cancel
    interrupts whatever the backend runs when it arrives: a later statement, a
    ``COMMIT`` included. Callers must not let the session go on as if nothing were
    pending (:meth:`dbgate.proxy.session.Session.cancel` ends it).
    """


class _UntilClosed(asyncio.Protocol):
    def __init__(self) -> None:
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def send_cancel(
    cfg: UpstreamConfig, pid: int, key: bytes, timeout: float = CANCEL_TIMEOUT
) -> None:
    """Forward a cancel request upstream and wait until the server has processed it.

    The server closes the connection once it has signalled the backend. Drivers take
    the close of *their* cancel connection as "delivered" and go on with the next
    statement, so closing ours before the server is done could let the cancel land
    on that next statement (a COMMIT, say). Hence: wait for the server's close.

    Raises ``OSError`` or ``TimeoutError`` when the request could not be sent (nothing
    will reach the backend), :class:`CancelNotConfirmed` when it was sent but the
    server did not close within ``timeout`` (it may still arrive).
    """
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        if cfg.host.startswith("/"):
            path = f"{cfg.host.rstrip('/')}/.s.PGSQL.{cfg.port}"
            transport, proto = await loop.create_unix_connection(_UntilClosed, path)
        else:
            transport, proto = await loop.create_connection(_UntilClosed, cfg.host, cfg.port)
    try:
        transport.write(CancelRequest(pid=pid, secret=key).encode())
        try:
            await asyncio.wait_for(asyncio.shield(proto.closed), timeout)
        except TimeoutError:
            raise CancelNotConfirmed(
                f"the server did not confirm a cancel request within {timeout:g} s"
            ) from None
    finally:
        transport.close()
