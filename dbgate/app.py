"""The composition root: builds, starts and stops everything, in order.

``dbgate serve`` and ``dbgate demo`` both run an :class:`App`. Start order:

1. the upstream check (no agent reaches PostgreSQL as a privileged role, unless the
   config says ``allow_privileged_upstream``);
2. the state database (one asyncpg pool, migrations) when ``state`` is configured,
   and on it the approval service;
3. the policy (rules) and the gate that joins policy, approvals and the relay;
4. the proxy listener;
5. the web server (approvals API) when ``web`` is configured.

Stop: first the approval service, so that statements still held end ``abandoned``
(recorded, and their clients get 42501 at once rather than waiting out the drain or
being recorded as if they had left), and holds asked for from then on are refused;
then stop accepting and drain sessions, then the web server, then the pool. Nothing
held runs by itself later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dbgate.config import Config
from dbgate.proxy.seams import AllowAll, Inspector
from dbgate.proxy.server import ProxyServer

if TYPE_CHECKING:
    import asyncpg

    from dbgate.approvals.model import Requester
    from dbgate.approvals.service import PgApprovalService
    from dbgate.web.app import WebServer

log = logging.getLogger("dbgate.app")


class StartupError(Exception):
    """dbgate cannot start; the message names the problem and the fix."""


def configure_logging(level: str) -> None:
    """Set up the operator log once per process."""
    root = logging.getLogger()
    if root.handlers:
        root.setLevel(getattr(logging, level.upper(), logging.INFO))
        return
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def build_gate(config: Config, approvals: PgApprovalService | None = None) -> Inspector:
    """The relay's inspector for ``config``: the gate, or allow-all when policy is off."""
    if config.policy == "off":
        log.warning("policy is OFF: every statement is relayed without inspection")
        return AllowAll()
    from dbgate.gate import Gate
    from dbgate.gate.holds import HoldDesk
    from dbgate.policy.rules import load_rules

    holds = None
    if approvals is not None:
        holds = HoldDesk(
            approvals,
            default_wait_seconds=config.approvals.default_wait_seconds,
            replica=approvals.replica,
        )
    return Gate(load_rules(config.rules_dir), holds=holds)


def _estimate_connection(config: Config, requester: Requester) -> Mapping[str, Any] | None:
    """How the planner's row estimate reaches the upstream: as the agent's own role."""
    from dbgate.preflight import upstream_login

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
        "ssl": False if up.sslmode in ("disable", "prefer") else "require",
    }


class App:
    """Everything one dbgate process runs. ``await start()``, ``await stop()``."""

    def __init__(self, config: Config, *, check_upstream: bool = True) -> None:
        self.config = config
        self.check_upstream = check_upstream
        self.pool: asyncpg.Pool | None = None
        self.approvals: PgApprovalService | None = None
        self.gate: Inspector | None = None
        self.proxy: ProxyServer | None = None
        self.web: WebServer | None = None

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

            if not await check_upstream_privileges(config):
                raise StartupError(
                    "an identity reaches PostgreSQL as a privileged role (see above); give "
                    "it a least-privilege role, or set allow_privileged_upstream: true"
                )
        if config.state is not None:
            await self._start_state()
        from dbgate.policy.rules import RulesError

        try:
            self.gate = build_gate(config, self.approvals)
        except RulesError as e:
            from dbgate.policy.rules_load import iter_problems

            raise StartupError("\n".join(iter_problems(e))) from None
        self.proxy = ProxyServer(config, inspector=self.gate)
        try:
            await self.proxy.start()
        except OSError as e:
            raise StartupError(
                f"cannot listen on {config.listen}: {e.strerror or e} "
                "(is another dbgate or a PostgreSQL on that port? choose another with --listen)"
            ) from None
        if config.web is not None and self.approvals is not None:
            await self._start_web()

    async def _start_state(self) -> None:
        from dbgate.approvals.db import create_pool
        from dbgate.approvals.estimate import make_estimator
        from dbgate.approvals.service import PgApprovalService
        from dbgate.state.migrate import MigrationError, apply_migrations

        state = self.config.state
        assert state is not None
        try:
            self.pool = await create_pool(
                state.dsn,
                max_size=state.pool_max,
                timeout=self.config.approvals.state_timeout_seconds,
            )
            async with self.pool.acquire() as conn:
                await apply_migrations(conn)
        except MigrationError as e:
            raise StartupError(f"state database: {e}") from None
        except (OSError, TimeoutError) as e:
            raise StartupError(
                f"cannot reach the state database ({e}); check state.dsn and that the server is up"
            ) from None
        except Exception as e:  # asyncpg's errors: authentication, missing database ...
            raise StartupError(f"state database: {type(e).__name__}: {e}") from None
        config = self.config
        self.approvals = PgApprovalService.from_config(
            config,
            pool=self.pool,
            estimator=make_estimator(lambda r: _estimate_connection(config, r)),
            migrate=False,  # done above, once for every room
        )
        await self.approvals.start()

    async def _start_web(self) -> None:
        from dbgate.config import _split_hostport
        from dbgate.web import WebServer, build_web_app

        assert self.config.web is not None and self.approvals is not None
        host, port = _split_hostport(self.config.web.listen, 8080)
        self.web = WebServer(build_web_app(self.approvals), host, port)
        try:
            await self.web.start()
        except OSError as e:
            self.web = None
            raise StartupError(
                f"cannot listen for the web page on {self.config.web.listen}: "
                f"{e.strerror or e} (choose another with --web)"
            ) from None
        if self.config.web.public_url is None:
            # Notices name where a request is decided: the port really listened on
            # (``--web 127.0.0.1:0`` picks a free one), not the configured 0.
            self.approvals.public_url = self.web.url

    async def stop(self, grace: float | None = None) -> None:
        """Stop (see the module docstring); safe to call twice or after a failed start."""
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
        self.approvals = None
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pool.close(), 10)
            self.pool = None


async def serve_until_signal(app: App) -> int:
    """Start ``app``, run until SIGINT/SIGTERM, stop it. Returns the exit status."""
    try:
        await app.start()
    except StartupError as e:
        for line in str(e).splitlines():
            log.error("%s", line)
        return 1
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


def run_serve(config: Config) -> int:
    """Blocking entry point of ``dbgate serve``."""
    import uvloop

    configure_logging(config.log_level)
    return uvloop.run(serve_until_signal(App(config)))
