"""Operations endpoints on the web port: ``/metrics``, ``/healthz``, ``/readyz``.

:func:`add_ops_routes` adds them to any aiohttp application (the approvers' app,
or a bare one when the web page is off). They need no login: a probe or a
Prometheus scraper has no account. Keep the web port off the public internet (see
docs/operations.md): ``/metrics`` names identities in labels.

* ``/healthz`` — *alive*: answered by the event loop that also runs the proxy, so an
  answer proves the loop is not stuck. Never touches the network: a database outage
  must not get healthy pods restarted (that is what readiness is for).
* ``/readyz`` — *ready for traffic*: every check the composition root passes
  (typically ``upstream`` and ``state``) answered within ``check_timeout``, and the
  process is not draining. 200 or 503, with a JSON body naming each check's result.
  Concurrent probes share one run of the checks, and a result is reused for
  ``cache_seconds``, so a probe storm cannot become a connection storm.
* ``/metrics`` — Prometheus text format from :mod:`dbgate.metrics` (all workers'
  sum in multiprocess mode).

The check helpers (:func:`tcp_check`, :func:`pool_check`, :func:`dsn_check`) build the
callables ``/readyz`` runs; a check fails by raising (or by taking too long).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from dbgate import logs, metrics

__all__ = [
    "OPS_ROUTES",
    "ReadyCheck",
    "add_ops_routes",
    "dsn_check",
    "pool_check",
    "request_id_middleware",
    "tcp_check",
]

ReadyCheck = Callable[[], Awaitable[object]]

#: The paths this module serves (deploy/ manifests probe them; a test checks that).
OPS_ROUTES = ("/healthz", "/readyz", "/metrics")

_READY = web.AppKey("dbgate_readiness", object)


def _describe(exc: BaseException) -> str:
    """Short, credential-free reason: the type and the first line of the message."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


class _Readiness:
    def __init__(
        self,
        checks: Mapping[str, ReadyCheck],
        timeout: float,
        cache_seconds: float,
        draining: Callable[[], bool] | None,
    ) -> None:
        self.checks = dict(checks)
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self.draining = draining
        self._result: tuple[float, bool, dict[str, Any]] | None = None
        self._running: asyncio.Future[tuple[bool, dict[str, Any]]] | None = None

    async def _run_one(self, check: ReadyCheck) -> dict[str, Any]:
        started = time.monotonic()
        try:
            await asyncio.wait_for(check(), self.timeout)
        except Exception as e:
            return {"ok": False, "error": _describe(e)}
        return {"ok": True, "ms": round((time.monotonic() - started) * 1000, 1)}

    async def _run_all(self) -> tuple[bool, dict[str, Any]]:
        names = list(self.checks)
        results = await asyncio.gather(*(self._run_one(self.checks[n]) for n in names))
        detail = dict(zip(names, results, strict=True))
        return all(r["ok"] for r in results), detail

    async def evaluate(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        if self._result is not None and now - self._result[0] < self.cache_seconds:
            return self._result[1], self._result[2]
        if self._running is None:
            self._running = asyncio.ensure_future(self._run_all())
            running = self._running
            try:
                ok, detail = await asyncio.shield(running)
            finally:
                self._running = None
            self._result = (time.monotonic(), ok, detail)
            return ok, detail
        return await asyncio.shield(self._running)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def _readyz(request: web.Request) -> web.Response:
    readiness: _Readiness = request.app[_READY]  # type: ignore[assignment]
    if readiness.draining is not None and readiness.draining():
        return web.json_response({"status": "draining", "checks": {}}, status=503)
    ok, detail = await readiness.evaluate()
    return web.json_response(
        {"status": "ready" if ok else "not ready", "checks": detail}, status=200 if ok else 503
    )


async def _metrics(request: web.Request) -> web.Response:
    body, content_type = metrics.exposition()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


def add_ops_routes(
    app: web.Application,
    *,
    ready_checks: Mapping[str, ReadyCheck] | None = None,
    check_timeout: float = 2.0,
    cache_seconds: float = 1.0,
    draining: Callable[[], bool] | None = None,
    expose_metrics: bool = True,
) -> None:
    """Add ``/healthz``, ``/readyz`` and (unless disabled) ``/metrics`` to ``app``.

    ``ready_checks``: name -> async callable that raises when the dependency is not
    usable. ``draining``: returns True once shutdown began, so load balancers stop
    sending new clients before the listener closes.
    """
    app[_READY] = _Readiness(ready_checks or {}, check_timeout, cache_seconds, draining)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    if expose_metrics:
        app.router.add_get("/metrics", _metrics)


@web.middleware
async def request_id_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Tag the request's log records with ``request_id`` and echo it as ``X-Request-Id``.

    A client's own ``X-Request-Id`` (up to 64 printable characters) is kept so that
    its logs and ours can be joined; otherwise a random one is made.
    """
    given = request.headers.get("X-Request-Id", "")
    rid = given if 0 < len(given) <= 64 and given.isprintable() else uuid.uuid4().hex[:16]
    token = logs.set_request_id(rid)
    try:
        response = await handler(request)
    except web.HTTPException as e:
        e.headers["X-Request-Id"] = rid
        raise
    finally:
        logs._request_id.reset(token)
    response.headers["X-Request-Id"] = rid
    return response


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------


def tcp_check(host: str, port: int) -> ReadyCheck:
    """The server accepts connections (TCP, or a Unix-socket directory like libpq's).

    Opens and closes a connection without sending a byte: PostgreSQL logs nothing
    for that, and no backend is started.
    """

    async def check() -> None:
        if host.startswith("/"):
            _, writer = await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
        else:
            _, writer = await asyncio.open_connection(host, port)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    return check


def pool_check(pool: Any) -> ReadyCheck:
    """A pool (asyncpg's, or anything with ``fetchval``) answers ``SELECT 1``."""

    async def check() -> None:
        if await pool.fetchval("SELECT 1") != 1:
            raise RuntimeError("SELECT 1 did not answer 1")

    return check


def dsn_check(dsn: str, timeout: float = 2.0) -> ReadyCheck:
    """A fresh connection to ``dsn`` logs in and answers ``SELECT 1``."""

    async def check() -> None:
        import asyncpg

        conn = await asyncpg.connect(dsn, timeout=timeout)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    return check
