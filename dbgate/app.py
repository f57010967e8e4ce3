"""The composition root: builds, starts and stops everything, in order.

``dbgate serve`` and ``dbgate demo`` both run an :class:`App`. Start order:

1. the upstream check (no agent reaches PostgreSQL as a privileged role, unless the
   config says ``allow_privileged_upstream``);
2. the state database (one asyncpg pool, migrations) when ``state`` is configured,
   and on it the audit writer (``audit.enabled``), the approval service and the
   notifier;
3. the policy (rules) and the gate that joins policy, approvals and the relay, with
   the observers of every statement (metrics, the audit trail, the PII rooms' schema
   reload after DDL), the key catalogs the classifier proves narrowness from and the
   workers that classify costly statements off the event loop (``classify``);
4. the proxy listener;
5. the web server when ``web`` is configured: the approvers' page and API (with a
   state database), ``/healthz``, ``/readyz`` and ``/metrics``;
6. the metrics flusher and the log's interval summary.

Stop: mark the process draining (``/readyz`` turns 503); stop the approval
service first, so that statements still held end ``abandoned`` (recorded, and their
clients get 42501 at once rather than waiting out the drain or being recorded as if
they had left) and holds asked for from then on are refused; then stop accepting and
drain sessions, then the web server, the classification workers, the notifier, the audit writer (it writes the
sessions' last records), the pool. Nothing held runs by
itself later. Each step that can fail names the problem and the fix in one line
(:mod:`dbgate.startup_errors`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from dbgate import logs, metrics
from dbgate.config import Config, split_hostport
from dbgate.heap import tune_heap
from dbgate.proxy.seams import AllowAll, Inspector, Observer
from dbgate.proxy.server import ProxyServer
from dbgate.startup_errors import StartupError, startup_step

if TYPE_CHECKING:
    import asyncpg

    from dbgate.approvals.model import Requester
    from dbgate.approvals.notify import Notifier
    from dbgate.approvals.service import PgApprovalService
    from dbgate.audit import AuditWriter
    from dbgate.gate.audit import AuditTrail
    from dbgate.gate.classify_pool import ClassifyPool
    from dbgate.gate.keys import KeyCatalogs
    from dbgate.gate.pii import PiiGate
    from dbgate.gate.row_window import RowWindows
    from dbgate.gate.schema_peers import PeerTransport, SchemaPeers
    from dbgate.web.app import WebServer
    from dbgate.wire.startup import CancelRequest

log = logging.getLogger("dbgate.app")

__all__ = ["App", "StartupError", "build_gate", "run_serve", "serve_until_signal"]


def build_gate(
    config: Config,
    approvals: PgApprovalService | None = None,
    pii: PiiGate | None = None,
    audit: AuditTrail | None = None,
    keys: KeyCatalogs | None = None,
    offload: ClassifyPool | None = None,
    windows: RowWindows | None = None,
) -> Inspector:
    """The relay's inspector for ``config``: the gate, or allow-all when policy is off."""
    if config.policy == "off":
        log.warning("policy is OFF: every statement is relayed without inspection")
        return AllowAll()
    from dbgate.gate import Gate
    from dbgate.gate.holds import HoldDesk
    from dbgate.policy.rules import load_rules

    if keys is None:  # the proof of narrowness reads the upstream's unique keys
        from dbgate.gate.keys import KeyCatalogs

        keys = KeyCatalogs(config)
    holds = None
    if approvals is not None:
        holds = HoldDesk(
            approvals,
            default_wait_seconds=config.approvals.default_wait_seconds,
            replica=approvals.replica,
            audit=audit,
        )
    return Gate(
        load_rules(config.rules_dir),
        holds=holds,
        pii=pii,
        audit=audit,
        keys=keys,
        offload=offload,
        windows=windows,
    )


def _estimate_connection(config: Config, requester: Requester) -> Mapping[str, Any] | None:
    """How the planner's row estimate reaches the upstream: as the agent's own role."""
    from dbgate.preflight import upstream_login
    from dbgate.proxy.upstream import asyncpg_ssl

    identity = config.identity(requester.identity)
    if identity is None or not requester.database:
        return None
    login = upstream_login(config, identity)
    up = config.upstream
    return {
        "host": up.host,
        "port": up.port,
        "user": login.user,
        "password": login.password,
        "database": up.database or requester.database,
        "ssl": asyncpg_ssl(up),
    }


class App:
    """Everything one dbgate process runs. ``await start()``, ``await stop()``."""

    def __init__(
        self,
        config: Config,
        *,
        check_upstream: bool = True,
        reuse_port: bool = False,
        forward_cancel: Callable[[CancelRequest], Awaitable[None]] | None = None,
        schema_siblings: PeerTransport | None = None,
    ) -> None:
        self.config = config
        self.check_upstream = check_upstream
        #: One of several worker processes on the same ports (dbgate.workers).
        self.reuse_port = reuse_port
        self.forward_cancel = forward_cancel
        #: How workers without a state database tell each other of DDL
        #: (dbgate.workers_schema); with one, the state database carries it.
        self.schema_siblings = schema_siblings
        self.pool: asyncpg.Pool | None = None
        self.approvals: PgApprovalService | None = None
        self.notifier: Notifier | None = None
        self.gate: Inspector | None = None
        self.pii: PiiGate | None = None
        self.keys: KeyCatalogs | None = None
        self.classify_pool: ClassifyPool | None = None
        self.windows: RowWindows | None = None
        self.peers: SchemaPeers | None = None
        self.audit: AuditWriter | None = None
        self.trail: AuditTrail | None = None
        self.observer: Observer | None = None
        self.proxy: ProxyServer | None = None
        self.web: WebServer | None = None
        self.draining = False
        self._flusher: metrics.Flusher | None = None
        self._summary: logs.LogSummary | None = None

    @property
    def web_url(self) -> str | None:
        return None if self.web is None else self.web.url

    async def start(self) -> None:
        """Start everything, or raise :class:`StartupError` having started nothing."""
        try:
            await self._start()
        except BaseException:
            await self.stop(grace=0)
            raise

    async def _start(self) -> None:
        config = self.config
        if self.check_upstream:
            from dbgate.preflight import check_upstream_privileges

            up = config.upstream
            with startup_step("upstream", host=up.host, port=up.port, user=up.user):
                ok = await check_upstream_privileges(config)
            if not ok:
                raise StartupError(
                    "an identity reaches PostgreSQL as a privileged role (see above); give "
                    "it a least-privilege role (identities[].upstream_user), or set "
                    "allow_privileged_upstream: true"
                )
        if config.state is not None:
            await self._start_state()
        from dbgate.gate.observers import MetricsObserver, combine

        if config.pii.enabled and config.policy == "enforce":
            from dbgate.gate.pii import PiiGate

            self.pii = PiiGate(config)
            with startup_step("pii"):
                self.pii.check()
        if config.policy == "enforce":
            from dbgate.gate.keys import KeyCatalogs

            self.keys = KeyCatalogs(config)
            from dbgate.gate.classify_pool import ClassifyPool

            self.classify_pool = ClassifyPool.from_config(config)
            if self.classify_pool is not None:
                with startup_step("classify"):
                    await self.classify_pool.start()
        if config.policy == "enforce" and self.pool is not None:
            from dbgate.approvals.db import StateDB

            # rows per identity and table over a window, shared by every replica
            from dbgate.approvals.service import default_replica_id
            from dbgate.gate.row_window import RowWindows

            self.windows = RowWindows(
                StateDB(self.pool, timeout=config.approvals.state_timeout_seconds),
                self.approvals.replica
                if self.approvals is not None
                else (config.approvals.replica_id or default_replica_id()),
            )
        with startup_step("rules"):
            self.gate = build_gate(
                config,
                self.approvals,
                self.pii,
                self.trail,
                self.keys,
                self.classify_pool,
                self.windows,
            )
        observers: list[Observer] = [MetricsObserver()] if config.metrics.enabled else []
        if self.windows is None and config.policy == "enforce":
            from dbgate.gate.windows import window_lengths

            if window_lengths(self.gate.ruleset):  # type: ignore[attr-defined]
                log.warning(
                    "rules set max_rows_per_window, which is not enforced without a state "
                    "database (state.dsn): the counts are shared through it"
                )
        if self.windows is not None:
            from dbgate.gate.windows import WindowCharges, window_lengths

            self.windows.watch(window_lengths(self.gate.ruleset))  # type: ignore[attr-defined]
            with startup_step("state", what="the shared rows-per-window counts"):
                await self.windows.start()
            observers.append(WindowCharges(self.windows))
        if self.trail is not None:
            observers.append(self.trail)
        watched = [x.loads for x in (self.pii, self.keys) if x is not None]
        if watched:
            from dbgate.gate.schema_loads import SchemaWatch

            transport = self._schema_transport()
            if transport is not None:
                # other replicas and workers: told of DDL let through here, and heard
                from dbgate.gate.schema_peers import SchemaPeers

                self.peers = SchemaPeers(
                    transport, watched, timeout=config.approvals.state_timeout_seconds
                )
                await self.peers.start()  # waits briefly for its listening end
                self.gate.peers = self.peers  # type: ignore[attr-defined]
            elif self.reuse_port:
                # workers with no way to tell each other: nothing carries word of DDL
                self.gate.siblings_unheard = True  # type: ignore[attr-defined]
                log.warning(
                    "several workers and no state database: DDL the rules allow is "
                    "refused, since the other workers could not be told of it "
                    "(configure state.dsn, or run with --workers 1)"
                )
            observers.append(SchemaWatch(watched, self.peers))
        if self.pii is not None:
            observers.append(self.pii.held_cursors)
            if self.trail is not None:  # an exempt session is recorded as such
                self.pii.on_exemption = self.trail.session_exempt
        self.observer = combine(observers)
        from dbgate.policy.startup import StartupGuards

        rules = getattr(self.gate, "ruleset", None)  # the session guards: none with policy off
        tls = config.tls
        with startup_step(
            "tls",
            cert_file=tls.cert_file if tls else None,
            key_file=tls.key_file if tls else None,
        ):
            self.proxy = ProxyServer(
                config,
                inspector=self.gate,
                observer=self.observer,
                message_filter=self.pii.filter if self.pii is not None else None,
                session_setup=None if rules is None else StartupGuards(rules),
                reuse_port=self.reuse_port,
                forward_cancel=self.forward_cancel,
            )
        with startup_step("listen", address=config.listen):
            await self.proxy.start()
        if config.web is not None:
            await self._start_web()
        self._flusher = metrics.Flusher(config.metrics.flush_interval_seconds)
        self._flusher.start()
        if config.logging.summary_interval_seconds > 0:
            self._summary = logs.LogSummary(config.logging.summary_interval_seconds)
            self._summary.start()

    async def _start_state(self) -> None:
        from dbgate.approvals.db import create_pool
        from dbgate.approvals.estimate import make_estimator
        from dbgate.approvals.service import PgApprovalService
        from dbgate.state.migrate import apply_migrations

        state = self.config.state
        assert state is not None
        with startup_step("state", dsn=state.dsn):
            self.pool = await create_pool(
                state.dsn,
                max_size=state.pool_max,
                timeout=self.config.approvals.state_timeout_seconds,
            )
            async with self.pool.acquire() as conn:
                await apply_migrations(conn)
        config = self.config
        if config.audit.enabled:
            from dbgate.audit import AuditWriter
            from dbgate.gate.audit import AuditTrail

            self.audit = AuditWriter(
                state.dsn,
                config.audit,
                replica=config.audit.replica or config.approvals.replica_id,
            )
            with startup_step("state", dsn=state.dsn, what="the audit trail's state database"):
                await self.audit.start()
            self.trail = AuditTrail(self.audit)
        self.approvals = PgApprovalService.from_config(
            config,
            pool=self.pool,
            estimator=make_estimator(lambda r: _estimate_connection(config, r)),
            migrate=False,  # done above, once for every room
        )
        if self.audit is not None:
            from dbgate.audit.approval_steps import recorder

            self.approvals.on_step = recorder(self.audit)
        await self.approvals.start()
        if config.notifications.enabled:
            from dbgate.approvals.notify import Notifier

            self.notifier = Notifier.from_config(config.notifications, self.approvals)
            await self.notifier.start()

    def _schema_transport(self) -> PeerTransport | None:
        """How this process tells the others of DDL it lets through: the state
        database, which replicas and workers share; else, as one of several workers,
        its siblings' local sockets; else (alone) nobody needs telling."""
        config = self.config
        if self.pool is not None and config.state is not None:
            from dbgate.gate.schema_notify import NotifyTransport

            return NotifyTransport(
                config.state.dsn, self.pool, timeout=config.approvals.state_timeout_seconds
            )
        return self.schema_siblings

    async def _start_web(self) -> None:
        from aiohttp import web as aioweb

        from dbgate.web.app import WebServer, server_ssl_context, web_app_from_config
        from dbgate.web.ops import add_ops_routes, pool_check, request_id_middleware, tcp_check

        config = self.config
        assert config.web is not None
        if self.approvals is not None:
            app = web_app_from_config(config, self.approvals, self.notifier)
        else:
            app = aioweb.Application()  # no state database: only the operations routes
        app.middlewares.append(request_id_middleware)
        checks = {"upstream": tcp_check(config.upstream.host, config.upstream.port)}
        if self.pool is not None:
            checks["state"] = pool_check(self.pool)
        add_ops_routes(
            app,
            ready_checks=checks,
            draining=lambda: self.draining,
            expose_metrics=config.metrics.enabled,
        )
        host, port = split_hostport(config.web.listen, 8080)
        with startup_step("web", address=config.web.listen):
            ssl_context = server_ssl_context(config.web.tls)
            self.web = WebServer(
                app, host, port, ssl_context=ssl_context, reuse_port=self.reuse_port
            )
            await self.web.start()
        if self.approvals is not None and self.config.web.public_url is None:
            # Notices name where a request is decided: the port really listened on
            # (``--web 127.0.0.1:0`` picks a free one), not the configured 0.
            self.approvals.public_url = self.web.url

    async def stop(self, grace: float | None = None) -> None:
        """Stop (see the module docstring); safe to call twice or after a failed start."""
        self.draining = True
        if self.approvals is not None:
            try:
                await self.approvals.stop()
            except Exception:
                log.exception("approval service did not stop cleanly")
        if self.proxy is not None:
            try:
                await self.proxy.stop(grace=grace)
            except Exception:
                log.exception("proxy did not stop cleanly")
            self.proxy = None
        if self.web is not None:
            with contextlib.suppress(Exception):
                await self.web.stop()
            self.web = None
        if self.classify_pool is not None:  # after the drain: no statement waits for it
            await self.classify_pool.close()
            self.classify_pool = None
        if self.notifier is not None:
            with contextlib.suppress(Exception):
                await self.notifier.stop()
            self.notifier = None
        self.approvals = None
        if self.peers is not None:  # after the drain: no DDL is let through any more
            try:
                await self.peers.stop()
            except Exception:
                log.exception("schema peers did not stop cleanly")
            self.peers = None
        if self.windows is not None:  # after the drain: the sessions' last rows
            try:
                await self.windows.stop()
            except Exception:
                log.exception("row windows did not stop cleanly")
            self.windows = None
        if self.audit is not None:  # after the drain: the sessions' last records
            try:
                await self.audit.stop()
            except Exception:
                log.exception("audit writer did not stop cleanly")
            self.audit = None
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pool.close(), 10)
            self.pool = None
        if self._summary is not None:
            await self._summary.stop()
            self._summary = None
        if self._flusher is not None:
            await self._flusher.stop()
            self._flusher = None


def freeze_startup_objects() -> None:
    """After a serving process started: what it made to start (rules, the classifier's
    tables, configuration, imported libraries: hundreds of thousands of objects) lives
    as long as the process, so it is moved out of the garbage collector's reach
    (``gc.freeze``). The collector's passes over the old generation, which the relay's
    steady allocation keeps triggering, then walk only what sessions made since,
    not all of it every time. Garbage is collected first, not frozen with the rest."""
    gc.collect()
    gc.freeze()


async def serve_until_signal(app: App) -> int:
    """Start ``app``, run until SIGINT/SIGTERM, stop it. Returns the exit status."""
    try:
        await app.start()
    except StartupError as e:
        print(f"dbgate: {e}", file=sys.stderr, flush=True)
        return 1
    freeze_startup_objects()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        sessions = app.proxy.session_count if app.proxy is not None else 0
        log.info("shutting down: draining %d sessions", sessions)
        await app.stop()
    return 0


def setup_process(config: Config) -> None:
    """What every dbgate process does once: the C heap (:mod:`dbgate.heap`), logging
    and metrics."""
    tune_heap()
    logs.setup_logging(
        config.log_level,
        format=config.logging.format,
        file=config.logging.file,
        queue_size=config.logging.queue_size,
    )
    metrics.init()


def run_serve(config: Config) -> int:
    """Blocking entry point of ``dbgate serve``."""
    import uvloop

    setup_process(config)
    try:
        return uvloop.run(serve_until_signal(App(config)))
    finally:
        logs.stop_logging()
