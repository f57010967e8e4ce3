"""The listener: accepts clients, authenticates them, pairs them with upstream sessions.

Also owns the cancel-key map (clients get dbgate's own BackendKeyData, which maps to
the upstream's key) and graceful shutdown (stop accepting, let sessions finish their
transaction, then close with FATAL 57P01).

Capacity, in the order a client meets it (docs/config.md, ``limits`` and ``upstream``):
``limits.max_logins`` logins at once (later connections are not read from until one
ends), each reading messages of at most ``limits.max_login_message_size``;
``limits.max_client_conn`` client sessions; ``upstream.max_server_conn`` server
connections, never more than the server accepts, with a queue for the clients beyond
it (:mod:`dbgate.proxy.capacity`; a server that is full all the same is tried again
until ``upstream.server_wait_timeout``, and the client gets dbgate's 53300, not the
server's);
``limits.memory_budget`` for the long messages all sessions hold
(:mod:`dbgate.proxy.budget`).

With several worker processes on one port (``reuse_port``, :mod:`dbgate.workers`) a
CancelRequest may land on a worker that does not hold its session: a key unknown
here goes to ``forward_cancel``, which hands it to the sibling workers, and each of
them answers it with :meth:`ProxyServer.cancel_here`.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from dbgate import metrics
from dbgate.config import Config
from dbgate.proxy.budget import MemoryBudget
from dbgate.proxy.capacity import SETTINGS, NoServerSlot, ServerCapacity, ServerSlots
from dbgate.proxy.channel import Channel, ConnectionLost
from dbgate.proxy.handshake import (
    ClientHello,
    HandshakeRefused,
    authenticate,
    build_verifiers,
    read_startup,
)
from dbgate.proxy.hold_ping import ping_interval
from dbgate.proxy.seams import AllowAll, Inspector, MessageFilter, Observer, SessionSetup
from dbgate.proxy.session import Session
from dbgate.proxy.session_info import SessionInfo
from dbgate.proxy.startup_params import startup_declarations
from dbgate.proxy.upstream import (
    UpstreamConnection,
    UpstreamError,
    connect_upstream,
    send_cancel,
)
from dbgate.proxy.upstream_settings import UpstreamSettings, merge_settings
from dbgate.wire import sqlstate
from dbgate.wire.codec import (
    auth_ok,
    backend_key_data,
    error_response,
    parse_error_fields,
    parse_parameter_status,
    ready_for_query,
)
from dbgate.wire.errors import LimitExceeded, ProtocolError, ServerProtocolError
from dbgate.wire.framing import MAX_STARTUP_PACKET, frame
from dbgate.wire.settings_query import SettingsRefused, read_settings
from dbgate.wire.startup import CancelRequest

log = logging.getLogger("dbgate.proxy")

#: First and longest pause between logins to a server that is full (53300).
_FULL_SERVER_PAUSE = (0.05, 1.0)


def _sqlstate(error_body: bytes | None) -> str | None:
    """The SQLSTATE of a server's ErrorResponse body, or None."""
    if error_body is None:
        return None
    try:
        return parse_error_fields(error_body).get("C")
    except ProtocolError:
        return None


@dataclass(slots=True)
class _CancelTarget:
    secret: bytes
    session: Session
    upstream_pid: int
    upstream_key: bytes


class ProxyServer:
    """One listening socket's worth of proxy. ``await start()``, ``await stop()``."""

    def __init__(
        self,
        config: Config,
        *,
        inspector: Inspector | None = None,
        observer: Observer | None = None,
        message_filter: MessageFilter | None = None,
        session_setup: SessionSetup | None = None,
        reuse_port: bool = False,
        forward_cancel: Callable[[CancelRequest], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.reuse_port = reuse_port
        #: Where a CancelRequest with a key unknown here goes (the sibling workers).
        self.forward_cancel = forward_cancel
        self.inspector: Inspector = inspector or AllowAll()
        self.observer = observer
        self.message_filter = message_filter
        self.session_setup = session_setup
        self.upstream_settings = UpstreamSettings()
        self._verifiers = build_verifiers(config)
        self._tls_context = self._make_tls_context()
        self._server: asyncio.base_events.Server | None = None
        self._handshakes: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._sessions: dict[int, Session] = {}
        self._cancel: dict[int, _CancelTarget] = {}
        self._next_pid = secrets.randbelow(1 << 20) + 1000
        self._stopping = False
        self._connections = 0
        limits = config.limits
        self._logins = asyncio.Semaphore(limits.max_logins)
        self._logging_in = 0
        self._unadmitted: set[Channel] = set()  # accepted, no session yet
        #: Clients past login: waiting for a server connection, connecting, or in a session.
        self._clients = 0
        upstream = config.upstream
        self.server_slots = ServerSlots(1)
        #: The server's connection limits and the effective max_server_conn.
        self.capacity = ServerCapacity(
            self.server_slots,
            upstream.max_server_conn,
            upstream.seat,
            read=upstream.read_server_limits,
        )
        self.budget = MemoryBudget(limits.memory_budget)
        self.port: int = 0

    def _make_tls_context(self) -> ssl.SSLContext | None:
        tls = self.config.tls
        if tls is None:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        return ctx

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    def session_infos(self) -> list[SessionInfo]:
        """The open sessions' shared state (a reload makes them forget cached verdicts)."""
        return [s.info for s in self._sessions.values()]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._new_channel,
            self.config.listen_host,
            self.config.listen_port,
            backlog=1024,
            reuse_address=True,
            reuse_port=self.reuse_port or None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("dbgate listening on %s:%s", self.config.listen_host, self.port)

    @property
    def logins_in_progress(self) -> int:
        return self._logging_in

    @property
    def clients(self) -> int:
        """Clients past login: waiting for a server connection or in a session."""
        return self._clients

    def unadmitted_bytes(self) -> int:
        """Bytes read from clients that have no session yet (logging in or queued)."""
        return sum(channel.buffered() for channel in self._unadmitted)

    def _new_channel(self) -> Channel:
        limits = self.config.limits
        # Before login a client may only send small messages, and only so many bytes
        # are read ahead of what the login has taken.
        channel = Channel(
            limits.max_login_message_size,
            buffer_limit=MAX_STARTUP_PACKET + limits.max_login_message_size + 5,
        )
        channel.on_made = self._accepted
        return channel

    def _accepted(self, channel: Channel) -> None:
        if self._stopping:
            channel.write(
                error_response(
                    sqlstate.CANNOT_CONNECT_NOW, "dbgate is shutting down", severity="FATAL"
                )
            )
            channel.close()
            return
        if len(self._unadmitted) >= self.config.limits.max_client_conn:
            # Connections without a session are bounded too: each may hold a read.
            metrics.connection_refused("too_many_clients")
            channel.write(
                error_response(
                    sqlstate.TOO_MANY_CONNECTIONS,
                    "sorry, too many clients already (dbgate: too many connections "
                    "logging in or waiting for a server connection)",
                    severity="FATAL",
                )
            )
            channel.close()
            return
        channel.hold()  # read once it has a login slot
        self._unadmitted.add(channel)
        task = asyncio.ensure_future(self._serve(channel))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _serve(self, channel: Channel) -> None:
        peer = channel.transport.get_extra_info("peername") if channel.transport else None
        client_addr = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "local")
        self._connections += 1
        try:
            async with asyncio.timeout(self.config.limits.startup_timeout):
                hello = await self._login(channel, client_addr)
            if hello is not None:
                await self._open_session(channel, hello, client_addr)
        except HandshakeRefused as e:
            log.debug("refused %s: %s", client_addr, e)
            self._report_refusal(channel, client_addr, e)  # before the client hears of it
            channel.write(e.response)
            channel.close()
        except ServerProtocolError as e:  # not the client's fault: do not quote it
            log.error("upstream protocol error during the startup of %s: %s", client_addr, e)
            channel.write(
                error_response(
                    sqlstate.PROTOCOL_VIOLATION,
                    "dbgate: the upstream server sent an invalid message",
                    severity="FATAL",
                )
            )
            channel.close()
        except (ProtocolError, LimitExceeded) as e:  # the client's own bytes
            log.debug("protocol error from %s: %s", client_addr, e)
            if isinstance(e, LimitExceeded):
                e = LimitExceeded(f"{e} (limits.max_login_message_size) before login")
            channel.write(error_response(e.sqlstate, f"dbgate: {e}", severity="FATAL"))
            channel.close()
        except ConnectionLost:
            channel.close()
        except TimeoutError:
            log.debug("startup timeout for %s", client_addr)
            channel.write(
                error_response(
                    sqlstate.PROTOCOL_VIOLATION, "dbgate: startup timed out", severity="FATAL"
                )
            )
            channel.close()
        except asyncio.CancelledError:
            channel.abort()
            raise
        except Exception:
            log.exception("unexpected error during startup of %s", client_addr)
            channel.write(
                error_response(sqlstate.INTERNAL_ERROR, "dbgate: internal error", severity="FATAL")
            )
            channel.close()
        finally:
            self._connections -= 1
            self._unadmitted.discard(channel)

    async def _login(self, channel: Channel, client_addr: str) -> ClientHello | None:
        """TLS, startup and authentication, holding one of ``limits.max_logins`` slots.

        Returns None when the connection was a CancelRequest (handled here)."""
        async with self._logins:
            self._logging_in += 1
            try:
                channel.release()
                packet = await read_startup(channel, self._tls_context)
                if isinstance(packet, CancelRequest):
                    await self._handle_cancel(packet)
                    channel.close()
                    return None
                user, database = packet.params.get("user", ""), packet.params.get("database", "")
                channel.startup = (user, database)
                self._check_client_limit()
                return await authenticate(
                    channel,
                    self.config,
                    self._verifiers,
                    packet,
                    setup=self.session_setup,
                    client_addr=client_addr,
                )
            finally:
                self._logging_in -= 1

    def _check_client_limit(self) -> None:
        if self._clients >= self.config.limits.max_client_conn:
            raise HandshakeRefused(
                sqlstate.TOO_MANY_CONNECTIONS,
                "sorry, too many clients already "
                f"(dbgate's limits.max_client_conn = {self.config.limits.max_client_conn})",
            )

    async def _open_session(self, channel: Channel, hello: ClientHello, client_addr: str) -> None:
        """Wait for a server slot, connect upstream, start the session."""
        self._check_client_limit()  # again: other logins may have finished meanwhile
        self._clients += 1
        try:
            await self._take_server_slot(channel)
        except BaseException:
            self._clients -= 1
            raise
        try:
            started = await self._connect_session(channel, hello, client_addr)
        except BaseException:
            self._clients -= 1
            self.server_slots.release()
            raise
        if not started:
            self._clients -= 1
            self.server_slots.release()

    async def _take_server_slot(self, channel: Channel) -> None:
        slots = self.server_slots
        if slots.used < slots.limit and not slots.waiting:
            await slots.acquire(0.0)  # free: taken without waiting
            return
        upstream = self.config.upstream
        metrics.client_wait_started()
        began = time.monotonic()
        previous = channel.on_close
        task = asyncio.current_task()
        channel.on_close = lambda exc: task.cancel() if task is not None else None
        try:
            await slots.acquire(upstream.server_wait_timeout)
        except NoServerSlot:
            raise HandshakeRefused(
                sqlstate.TOO_MANY_CONNECTIONS,
                f"dbgate: no server connection became free within "
                f"{upstream.server_wait_timeout:g} s (upstream.max_server_conn = "
                f"{slots.limit}: {self.capacity.limit.reason}); try again later",
            ) from None
        except asyncio.CancelledError:
            if channel.closed:  # the client gave up waiting
                raise ConnectionLost("client left while waiting for a server connection") from None
            raise
        finally:
            channel.on_close = previous
            metrics.client_wait_finished(time.monotonic() - began)

    async def _connect_session(
        self, channel: Channel, hello: ClientHello, client_addr: str
    ) -> bool:
        """Log in upstream and start the relay; False when no session was started."""
        ident = hello.identity
        try:
            up, settings = await self._open_upstream(hello, channel)
        except UpstreamError as e:
            log.warning("upstream refused session for %s: %s", ident.name, e)
            if e.error_body is not None:
                channel.write(frame(ord("E"), e.error_body))
                channel.close()
                return False
            raise HandshakeRefused(
                sqlstate.CONNECTION_FAILURE, "dbgate: cannot connect to the database"
            ) from e
        if channel.closed:
            up.channel.abort()
            return False
        # Clients see the upstream backend's real pid (so pg_stat_activity, NOTIFY pids
        # and pg_backend_pid() agree with the driver) but dbgate's own secret key.
        pid = up.backend_pid
        if pid <= 0 or pid in self._sessions:  # several upstreams could reuse a pid
            pid = self._allocate_pid()
        key_len = 32 if hello.startup.negotiated_protocol >= (3, 2) else 4
        secret = secrets.token_bytes(key_len)
        info = SessionInfo(
            session_id=pid,
            identity=ident.name,
            # the database the session reaches: with upstream.database every name a
            # client asks for is that one database, whose schema snapshot (PII, keys,
            # DDL in flux) must be one too
            database=self.config.upstream.database or hello.database,
            application_name=hello.params.get("application_name", ""),
            client_addr=client_addr,
            groups=frozenset(ident.groups),
            transaction_status=up.transaction_status,
            declared=startup_declarations(hello.params),
        )
        out = [
            auth_ok(),
            *(frame(ord("S"), b) for b in up.parameter_status),
        ]
        info.server_params.update(parse_parameter_status(b) for b in up.parameter_status)
        out.append(backend_key_data(pid, secret))
        out.extend(frame(ord("N"), b) for b in up.notices)
        out.append(ready_for_query(up.transaction_status))
        session = Session(
            info=info,
            client=channel,
            upstream=up.channel,
            inspector=self.inspector,
            observer=self.observer,
            message_filter=self.message_filter,
            max_message_size=self.config.limits.max_message_size,
            budget=self.budget,
            on_closed=self._session_closed,
            cancel_upstream=functools.partial(
                send_cancel, self.config.upstream, up.backend_pid, up.backend_key
            ),
            ping_interval=ping_interval(settings),
        )
        self._sessions[pid] = session
        self._cancel[pid] = _CancelTarget(secret, session, up.backend_pid, up.backend_key)
        channel.write(b"".join(out))
        session.start()
        log.debug(
            "session %s: identity=%s db=%s app=%r from %s",
            pid,
            ident.name,
            hello.database,
            info.application_name,
            client_addr,
        )
        return True

    async def _open_upstream(
        self, hello: ClientHello, client: Channel
    ) -> tuple[UpstreamConnection, dict[str, str]]:
        """The client's upstream session, started with the settings the session setup
        adds (see :mod:`dbgate.proxy.upstream_settings`), and the parameters of the
        StartupMessage that started it."""
        ident = hello.identity
        cfg = self.config.upstream
        added = {}
        if self.session_setup is not None:
            added = self.upstream_settings.known(
                self.session_setup.upstream_settings(hello.arrival)
            )
        params = merge_settings(hello.params, added)
        connect = functools.partial(
            connect_upstream,
            cfg,
            user=ident.upstream_user or cfg.user,
            password=ident.upstream_password or cfg.password,
            database=cfg.database or hello.database,
            max_message_size=self.config.limits.max_message_size,
        )
        try:
            up = await self._connect_when_room(connect, params, hello, client)
        except UpstreamError as e:
            unknown = self.upstream_settings.retry_without(
                {k: v for k, v in added.items() if k in params and k not in hello.params},
                e.error_body,
            )
            if not unknown:
                raise
            log.info("upstream does not know %s; connecting without", ", ".join(sorted(unknown)))
            params = {k: v for k, v in params.items() if k not in unknown}
            up = await self._connect_when_room(connect, params, hello, client)
        self.upstream_settings.learn(up.parameter_status)
        if self.capacity.due():
            await self._read_limits(up)
        return up, params

    async def _connect_when_room(
        self,
        connect: Callable[..., Awaitable[UpstreamConnection]],
        params: dict[str, str],
        hello: ClientHello,
        client: Channel,
    ) -> UpstreamConnection:
        """Log in upstream; while the server refuses with "too many clients" (others'
        connections fill it), try again with a growing pause, up to
        ``upstream.server_wait_timeout``, then refuse the client with dbgate's own 53300.
        Any failure makes the next login read the server's limits again."""
        cfg = self.config.upstream
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.server_wait_timeout
        pause = _FULL_SERVER_PAUSE[0]
        while True:
            try:
                return await connect(params=params)
            except UpstreamError as e:
                self.capacity.forget()
                if _sqlstate(e.error_body) != sqlstate.TOO_MANY_CONNECTIONS or client.closed:
                    raise
                if loop.time() + pause > deadline:
                    log.warning(
                        "the upstream server stayed full for %g s: refused %s",
                        cfg.server_wait_timeout,
                        hello.identity.name,
                    )
                    raise HandshakeRefused(
                        sqlstate.TOO_MANY_CONNECTIONS,
                        "dbgate: the database server has no connection free (others fill its "
                        f"max_connections) and none became free within "
                        f"{cfg.server_wait_timeout:g} s; try again later",
                    ) from None
            await asyncio.sleep(pause)
            pause = min(pause * 2, _FULL_SERVER_PAUSE[1])

    async def _read_limits(self, up: UpstreamConnection) -> None:
        """Read the server's connection limits on ``up``, a fresh session (left idle as
        it was), and resize the pool (:class:`~dbgate.proxy.capacity.ServerCapacity`)."""
        timeout = self.config.upstream.connect_timeout
        try:
            flow = read_settings(SETTINGS, up.parameter_status)
            values = await asyncio.wait_for(up.channel.exchange(flow), timeout)
        except SettingsRefused as e:
            self.capacity.unreadable(str(e))
            return
        except BaseException as e:
            self.capacity.abandoned()
            up.channel.abort()
            if isinstance(e, TimeoutError | ConnectionLost):
                raise UpstreamError(f"upstream did not answer a query after login: {e}") from e
            if isinstance(e, ProtocolError | LimitExceeded) and not isinstance(
                e, ServerProtocolError
            ):
                raise ServerProtocolError(str(e)) from e
            raise
        self.capacity.learned(values)

    def _report_refusal(self, channel: Channel, client_addr: str, e: HandshakeRefused) -> None:
        """Tell the observer of a client turned away before any session existed."""
        if self.observer is None:
            return
        user, database = channel.startup
        try:
            self.observer.session_refused(user, database, client_addr, e.sqlstate, str(e))
        except Exception:
            log.exception("observer failed on a refused connection")

    def _allocate_pid(self) -> int:
        while True:
            self._next_pid = (self._next_pid % 0x7FFFFFF0) + 1
            if self._next_pid not in self._sessions:
                return self._next_pid

    def _session_closed(self, session: Session) -> None:
        pid = session.info.session_id
        if self._sessions.pop(pid, None) is not None:
            self._clients -= 1
            self.server_slots.release()
        target = self._cancel.pop(pid, None)
        if target is not None and session.running_upstream and not session.upstream.closed:
            # Closed while a statement runs upstream (the client vanished, or shutdown
            # ran out of grace). The backend reads our Terminate only once the statement
            # ends, so a long query would run on, holding its connection and locks.
            task = asyncio.ensure_future(self._cancel_orphan(target))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        log.debug("session %s closed", pid)

    async def _cancel_orphan(self, target: _CancelTarget) -> None:
        try:
            await send_cancel(self.config.upstream, target.upstream_pid, target.upstream_key)
        except (TimeoutError, OSError) as e:
            log.warning("could not cancel the statement of a closed session: %s", e)

    async def _handle_cancel(self, request: CancelRequest) -> None:
        if await self.cancel_here(request):
            return
        if self.forward_cancel is not None:
            await self.forward_cancel(request)  # another worker's session, perhaps
        else:
            log.info("cancel request with unknown key ignored")

    async def cancel_here(self, request: CancelRequest) -> bool:
        """Cancel the statement of this process's session that ``request`` names, and
        return once the server has confirmed it (:meth:`Session.cancel`).

        False when no session here has that key (the caller may ask elsewhere). Up to
        the session's first suspension this runs synchronously when awaited (the
        worker relay relies on it)."""
        target = self._cancel.get(request.pid)
        if target is None or not hmac.compare_digest(target.secret, request.secret):
            log.debug("cancel request with unknown key ignored")
            return False
        await target.session.cancel()
        return True

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, drain sessions for up to ``grace`` seconds, then close the rest."""
        self._stopping = True
        grace = self.config.shutdown_grace_seconds if grace is None else grace
        if self._server is not None:
            self._server.close()
        for task in list(self._handshakes):
            task.cancel()
        for session in list(self._sessions.values()):
            session.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self._sessions and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self._sessions.values()):
            session.terminate(
                sqlstate.ADMIN_SHUTDOWN, "terminating connection due to administrator command"
            )
        if self._server is not None:
            await self._server.wait_closed()
