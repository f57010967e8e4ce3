"""The aiohttp application (API now, the approvers' page later) and a small runner.

:func:`build_web_app` returns an :class:`aiohttp.web.Application` that the
composition root can serve with :class:`WebServer` or mount into a larger app.
Errors of every kind leave as JSON (see :mod:`dbgate.web.api`); a bug is a 500 with
a generic message, and the details go to the log, never to the client.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from dbgate.approvals.errors import ApprovalError
from dbgate.approvals.service import PgApprovalService
from dbgate.web.api import MAX_BODY, ROUTES, SERVICE

log = logging.getLogger("dbgate.web")

DEFAULT_MAX_BODY = 64 * 1024
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


def json_error(status: int, code: str, message: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="dbgate"'} if status == 401 else None
    return web.json_response(
        {"error": code, "message": message, "status": status}, status=status, headers=headers
    )


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApprovalError as e:
        return json_error(e.status, e.code, e.message)
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
        return json_error(e.status, _CODES.get(e.status, "error"), message)
    except Exception:
        log.exception("web: %s %s failed", request.method, request.path)
        return json_error(500, "internal", "internal error; the server log has the details")


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    return response


def build_web_app(
    service: PgApprovalService, *, max_body_bytes: int = DEFAULT_MAX_BODY
) -> web.Application:
    """The API for ``service`` (started separately; the app does not own it)."""
    app = web.Application(
        middlewares=[security_headers, json_errors], client_max_size=max_body_bytes
    )
    app[SERVICE] = service
    app[MAX_BODY] = max_body_bytes
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    return app


class WebServer:
    """Serve an aiohttp app on HOST:PORT (port 0: any free port) until stopped."""

    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 8080) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        for addr in runner.addresses:
            if isinstance(addr, tuple):
                self.port = int(addr[1])
                break
        log.info("web: approvals API on %s", self.url)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
