"""/healthz, /readyz and /metrics over real HTTP, with readiness checks against the
real PostgreSQL server and against a port where nothing listens."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from dbgate import metrics
from dbgate.web import WebServer
from dbgate.web.ops import (
    OPS_ROUTES,
    add_ops_routes,
    dsn_check,
    pool_check,
    request_id_middleware,
    tcp_check,
)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _serve(app: web.Application) -> tuple[WebServer, str]:
    server = WebServer(app, "127.0.0.1", 0)
    await server.start()
    return server, server.url


@pytest.fixture
async def ops_app() -> AsyncIterator[Callable[..., Any]]:
    servers: list[WebServer] = []

    async def make(**kwargs: Any) -> str:
        app = web.Application(middlewares=[request_id_middleware])
        add_ops_routes(app, **kwargs)
        server, url = await _serve(app)
        servers.append(server)
        return url

    yield make
    for s in servers:
        await s.stop()


async def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as r:
        body = await (r.json() if r.content_type == "application/json" else r.text())
        return r.status, body, r.headers


async def test_ready_when_upstream_and_state_answer(ops_app: Any, pg_server: Any) -> None:
    pool = await asyncpg.create_pool(pg_server.dsn(), min_size=1, max_size=1)
    try:
        url = await ops_app(
            ready_checks={
                "upstream": tcp_check(pg_server.host, pg_server.port),
                "state": pool_check(pool),
                "state_login": dsn_check(pg_server.dsn()),
            }
        )
        status, body, headers = await _get(f"{url}/readyz")
        assert status == 200, body
        assert body["status"] == "ready"
        assert set(body["checks"]) == {"upstream", "state", "state_login"}
        assert all(c["ok"] for c in body["checks"].values())
        assert len(headers["X-Request-Id"]) == 16
    finally:
        await pool.close()


async def test_not_ready_names_the_check_that_failed(ops_app: Any, pg_server: Any) -> None:
    port = _closed_port()
    url = await ops_app(
        ready_checks={
            "upstream": tcp_check(pg_server.host, pg_server.port),
            "state": dsn_check(f"postgresql://u:secret-pw@127.0.0.1:{port}/x"),
        },
        cache_seconds=0,
    )
    status, body, _ = await _get(f"{url}/readyz")
    assert status == 503
    assert body["status"] == "not ready"
    assert body["checks"]["upstream"]["ok"] is True
    state = body["checks"]["state"]
    assert state["ok"] is False and "refused" in state["error"].lower()
    assert "secret-pw" not in str(body)


async def test_a_hanging_check_times_out_and_healthz_stays_alive(ops_app: Any) -> None:
    never = asyncio.Event()

    async def hangs() -> None:
        await never.wait()

    url = await ops_app(ready_checks={"state": hangs}, check_timeout=0.05, cache_seconds=0)
    status, body, _ = await _get(f"{url}/readyz")
    assert status == 503 and body["checks"]["state"] == {"ok": False, "error": "timed out"}
    status, body, _ = await _get(f"{url}/healthz")
    assert status == 200 and body == {"status": "alive"}


async def test_draining_is_not_ready(ops_app: Any) -> None:
    state = {"draining": False}
    url = await ops_app(draining=lambda: state["draining"], cache_seconds=0)
    assert (await _get(f"{url}/readyz"))[0] == 200
    state["draining"] = True
    status, body, _ = await _get(f"{url}/readyz")
    assert status == 503 and body["status"] == "draining"


async def test_concurrent_probes_share_one_run(ops_app: Any) -> None:
    calls = 0
    release = asyncio.Event()

    async def slow() -> None:
        nonlocal calls
        calls += 1
        await release.wait()

    url = await ops_app(ready_checks={"state": slow}, cache_seconds=60)
    probes = [asyncio.ensure_future(_get(f"{url}/readyz")) for _ in range(5)]
    while calls == 0:
        await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*probes)
    assert [r[0] for r in results] == [200] * 5
    await _get(f"{url}/readyz")  # cached
    assert calls == 1


async def test_metrics_in_prometheus_format(ops_app: Any) -> None:
    metrics.init(version="test")
    metrics.statement("read", "allow")
    url = await ops_app()
    status, text, headers = await _get(f"{url}/metrics", {"X-Request-Id": "probe-1"})
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=")
    assert headers["X-Request-Id"] == "probe-1"
    assert 'dbgate_statements_total{category="read",decision="allow"} 1.0' in text


async def test_routes_are_the_documented_ones(ops_app: Any) -> None:
    url = await ops_app()
    for path in OPS_ROUTES:
        assert (await _get(f"{url}{path}"))[0] == 200
    url = await ops_app(expose_metrics=False)
    assert (await _get(f"{url}/metrics"))[0] == 404
