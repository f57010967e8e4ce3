"""The aiohttp application (the approvers' pages, the API, Slack's endpoint) and a runner.

:func:`build_web_app` returns an :class:`aiohttp.web.Application` that the
composition root serves with :class:`WebServer`. Build and start it *after*
``service.start()``: on start-up the app opens its stores on the service's state
database and subscribes its live feed to the service's wake-up feed.

Errors leave in the caller's language: JSON under ``/api/`` and ``/slack/``
(see :mod:`dbgate.web.api`), an HTML page elsewhere. A bug is a 500 with a generic
message; the details go to the log, never to the client.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp_jinja2
import jinja2
from aiohttp import web

from dbgate.approvals.errors import ApprovalError
from dbgate.approvals.notify.deliveries import DeliveryStore
from dbgate.approvals.notify.sender import RetryPolicy, Sender
from dbgate.approvals.notify.slack_actions import SlackActions
from dbgate.approvals.service import PgApprovalService
from dbgate.pii.sql_mask import mask_text
from dbgate.web.api import ROUTES
from dbgate.web.keys import (
    DELIVERIES,
    LIVE,
    MAX_BODY,
    PASSWORD_SLOTS,
    SERVICE,
    SESSIONS,
    SETTINGS,
    SLACK,
    THROTTLE,
)
from dbgate.web.live import LiveFeed
from dbgate.web.pages import PAGE_ROUTES, PageRefusal
from dbgate.web.render import FILTERS
from dbgate.web.sessions import LoginThrottle, SessionStore, WebSettings
from dbgate.web.slack import SLACK_ROUTES

if TYPE_CHECKING:
    from dbgate.approvals.notify.notifier import Notifier
    from dbgate.config import Config, SlackConfig, TLSConfig

log = logging.getLogger("dbgate.web")

DEFAULT_MAX_BODY = 64 * 1024
#: Password checks (scrypt: 128 MiB, ~0.5 s each) running at once; more wait.
PASSWORD_CONCURRENCY = 2
HERE = Path(__file__).parent
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    503: "unavailable",
}
_TITLES = {
    400: "Bad request",
    401: "Sign in again",
    403: "Not allowed",
    404: "Not found",
    405: "Method not allowed",
    409: "Already decided",
    413: "Too large",
    503: "State database unavailable",
}
#: Content-Security-Policy of every page: our own script and style only, no inline code.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


def json_error(status: int, code: str, message: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="dbgate"'} if status == 401 else None
    return web.json_response(
        {"error": code, "message": message, "status": status}, status=status, headers=headers
    )


def _wants_json(request: web.Request) -> bool:
    return request.path.startswith(("/api/", "/slack/"))


def _error(request: web.Request, status: int, code: str, message: str) -> web.StreamResponse:
    if _wants_json(request):
        return json_error(status, code, message)
    return aiohttp_jinja2.render_template(
        "error.html",
        request,
        {
            "status": status,
            "title": _TITLES.get(status, "Error"),
            "message": message,
            "session": None,
            "me": None,
            "csrf": "",
            "path": request.path,
        },
        status=status,
    )


@web.middleware
async def server_timing(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``Server-Timing: app;dur=<ms>``: the time spent in the handler (bench/bench_web.py
    reads it; a browser's developer tools show it)."""
    started = time.perf_counter()
    response = await handler(request)
    if not response.prepared:
        ms = (time.perf_counter() - started) * 1000
        response.headers["Server-Timing"] = f"app;dur={ms:.1f}"
    return response


def _log_refusal(request: web.Request, status: int, code: str, message: str) -> None:
    """Every refused call is in the operator log (masked by look: a path or a message
    may echo what the caller sent)."""
    log.log(
        logging.WARNING if status >= 500 else logging.INFO,
        "web: %s %s from %s refused: %d %s: %s",
        request.method,
        mask_text(request.path),
        request.remote or "?",
        status,
        code,
        mask_text(message),
    )


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except PageRefusal as e:
        return e.response
    except ApprovalError as e:
        _log_refusal(request, e.status, e.code, e.message)
        return _error(request, e.status, e.code, e.message)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        message = e.text if e.text and not e.text.startswith(f"{e.status}:") else e.reason
        if e.status == 404:
            message = f"no route {request.method} {request.path}"
        elif e.status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        elif e.status == 413:
            message = "the body is too large"
        code = _CODES.get(e.status, "error")
        if _wants_json(request):
            _log_refusal(request, e.status, code, message)
        return _error(request, e.status, code, message)
    except Exception:
        log.exception("web: %s %s failed", request.method, request.path)
        return _error(request, 500, "internal", "internal error; the server log has the details")


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    h = response.headers
    h.setdefault("Cache-Control", "no-store")
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("X-Frame-Options", "DENY")
    h.setdefault("Referrer-Policy", "same-origin")
    if response.content_type == "text/html":
        h.setdefault("Content-Security-Policy", CSP)
    if request.app[SETTINGS].secure_cookies:
        h.setdefault("Strict-Transport-Security", "max-age=31536000")


def build_web_app(
    service: PgApprovalService,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    settings: WebSettings | None = None,
    notifier: Notifier | None = None,
    slack: SlackConfig | None = None,
) -> web.Application:
    """Pages, API and (with ``slack`` carrying a signing secret) Slack's endpoint
    for ``service``, which must be started before the app starts; the app does not
    own it. ``notifier`` lends its HTTP client to Slack replies."""
    app = web.Application(middlewares=[server_timing, errors], client_max_size=max_body_bytes)
    app[SERVICE] = service
    app[MAX_BODY] = max_body_bytes
    app[SETTINGS] = settings or WebSettings()
    app[PASSWORD_SLOTS] = asyncio.Semaphore(PASSWORD_CONCURRENCY)
    app[LIVE] = LiveFeed()
    app[SLACK] = None
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(str(HERE / "templates")),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    app.on_response_prepare.append(_security_headers)
    own_sender: list[Sender] = []

    async def on_startup(app: web.Application) -> None:
        db = service.store.db
        app[SESSIONS] = SessionStore(db, app[SETTINGS])
        app[THROTTLE] = LoginThrottle(db, app[SETTINGS])
        app[DELIVERIES] = DeliveryStore(db)
        app[LIVE].attach(service.waker.subscribe)
        if slack is not None and slack.signing_secret:
            sender = notifier.sender if notifier is not None else None
            if sender is None:
                sender = Sender(RetryPolicy(timeout=5.0, max_attempts=3))
                await sender.start()
                own_sender.append(sender)
            app[SLACK] = SlackActions(
                signing_secret=slack.signing_secret,
                users=slack.users,
                store=service.store,
                accounts=service.accounts,
                url_for=service.url_for,
                sender=sender,
                response_url_prefix=slack.response_url_prefix,
                max_age=slack.max_age_seconds,
            )

    async def on_shutdown(app: web.Application) -> None:
        app[LIVE].detach()  # ends every open event stream, so the server can stop
        actions = app[SLACK]
        if actions is not None:
            await actions.drain(5.0)

    async def on_cleanup(app: web.Application) -> None:
        for sender in own_sender:
            await sender.close()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    for method, path, handler in (*ROUTES, *PAGE_ROUTES, *SLACK_ROUTES):
        app.router.add_route(method, path, handler)
    app.router.add_static("/static", HERE / "static", name="static")
    return app


def web_app_from_config(
    config: Config, service: PgApprovalService, notifier: Notifier | None = None
) -> web.Application:
    """:func:`build_web_app` as ``config`` (``web``, ``notifications``) describes it."""
    return build_web_app(
        service,
        settings=WebSettings.from_config(config.web),
        notifier=notifier,
        slack=config.notifications.slack,
    )


def server_ssl_context(tls: TLSConfig | None) -> ssl.SSLContext | None:
    """An HTTPS context for ``web.tls`` (None: plain HTTP)."""
    if tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return context


class WebServer:
    """Serve an aiohttp app on HOST:PORT (port 0: any free port) until stopped."""

    def __init__(
        self,
        app: web.Application,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        ssl_context: ssl.SSLContext | None = None,
        shutdown_timeout: float = 5.0,
        reuse_port: bool = False,
    ) -> None:
        self.app = app
        self.reuse_port = reuse_port  # several worker processes on one port
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=self.shutdown_timeout)
        await runner.setup()
        site = web.TCPSite(
            runner,
            self.host,
            self.port,
            ssl_context=self.ssl_context,
            reuse_port=self.reuse_port or None,
        )
        await site.start()
        self._runner = runner
        for addr in runner.addresses:
            if isinstance(addr, tuple):
                self.port = int(addr[1])
                break
        log.info("web: approvals page and API on %s", self.url)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
