"""Helpers shared by the driver-matrix tests (``test_driver_*.py``).

Every driver test runs the same scenario twice — straight to PostgreSQL and through
the proxy — and asserts the two runs behave identically: :func:`same_on_both` (and
:func:`same_on_both_async` for asyncio drivers) is the one place that does it. The
other helpers keep the rest small: unique object names so concurrent tests never
collide, DSN conversions for drivers that do not take URLs, and the pair of targets.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

import pytest

from tests.integration.conftest import AGENT, AGENT_PASSWORD, proxy_config

#: The two sides of every comparison, in a fixed order.
SIDES = ("direct", "proxy")


def unique(prefix: str) -> str:
    """A lower-case identifier unique to this call (safe to use unquoted in SQL)."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def counted_table(pg_dsn: str, prefix: str) -> Iterator[str]:
    """A fresh table ``(id int primary key, v int)`` of 20 rows (v = 0) every role may
    write, dropped afterwards: what the measured-writes tests count changes in."""
    import psycopg

    name = unique(prefix)
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(f"create table {name} (id int primary key, v int not null default 0)")
        admin.execute(f"insert into {name} select g, 0 from generate_series(1, 20) g")
        admin.execute(f"grant all on {name} to public")
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(f"drop table if exists {name}")


@dataclass(frozen=True)
class DsnParts:
    host: str
    port: int
    user: str
    password: str
    database: str

    def kwargs(self) -> dict[str, object]:
        """Keyword arguments as pg8000 and psycopg2 accept them."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "database": self.database,
        }


def split_dsn(dsn: str) -> DsnParts:
    """Split a ``postgresql://user:pw@host:port/db`` URL (TCP only)."""
    parts = urlsplit(dsn)
    return DsnParts(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        database=unquote(parts.path.lstrip("/")),
    )


def targets(pg_dsn: str, proxy_dsn: str) -> dict[str, str]:
    """``{"direct": pg_dsn, "proxy": proxy_dsn}`` — iterate it to run a scenario twice."""
    return {"direct": pg_dsn, "proxy": proxy_dsn}


# -- the comparison ------------------------------------------------------------------------

T = TypeVar("T")


def _the_same(results: dict[str, T]) -> T:
    """What the direct run returned, after asserting the proxied run returned the same."""
    assert results["proxy"] == results["direct"]
    return results["direct"]


def same_on_both(
    pg_dsn: str,
    proxy_dsn: str,
    scenario: Callable[[Any], T],
    *,
    connect: Callable[[str], AbstractContextManager[Any]] | None = None,
) -> T:
    """Run ``scenario`` straight to PostgreSQL, then through dbgate; assert both returned
    the same; return the direct run's result for the test's own assertions.

    With ``connect``, each run gets a fresh connection — ``connect(dsn)`` is a context
    manager that opens it and closes it afterwards. Without, ``scenario`` gets the DSN
    (for tools that connect themselves, such as psql or an SQLAlchemy engine).
    The direct run goes first, so a scenario may rely on objects it creates and drops.
    """
    results: dict[str, T] = {}
    for side, dsn in targets(pg_dsn, proxy_dsn).items():
        if connect is None:
            results[side] = scenario(dsn)
        else:
            with connect(dsn) as conn:
                results[side] = scenario(conn)
    return _the_same(results)


async def same_on_both_async(
    pg_dsn: str,
    proxy_dsn: str,
    scenario: Callable[[Any], Awaitable[T]],
    *,
    connect: Callable[[str], AbstractAsyncContextManager[Any]] | None = None,
) -> T:
    """:func:`same_on_both` for asyncio drivers: ``scenario`` is awaited, ``connect(dsn)``
    is an async context manager."""
    results: dict[str, T] = {}
    for side, dsn in targets(pg_dsn, proxy_dsn).items():
        if connect is None:
            results[side] = await scenario(dsn)
        else:
            async with connect(dsn) as conn:
                results[side] = await scenario(conn)
    return _the_same(results)


# -- a proxy in its own process ----------------------------------------------------------

_CHILD = r"""
import asyncio, json, sys
import uvloop
from dbgate.config import Config
from dbgate.proxy.server import ProxyServer

async def main():
    server = ProxyServer(Config.model_validate(json.loads(sys.argv[1])))
    await server.start()
    print(server.port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(grace=1)

uvloop.run(main())
"""


@pytest.fixture(scope="session")
def proxy_process_dsn(pg_server: Any, pg_database: str) -> Iterator[str]:
    """DSN of the allow-everything proxy running in a *separate process*.

    Needed for libpq's blocking cancel (``PQcancel``/``PQcancelBlocking``), which
    psycopg 3 (binary) and psycopg2 call while holding the GIL: with the in-process
    proxy thread of the ``proxy`` fixture the cancel connection could never be served
    and the test would deadlock — an artefact of the test harness, not of dbgate.
    The configuration is the same as the ``proxy`` fixture's.
    """
    config = proxy_config(pg_server).model_dump(mode="json")
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, json.dumps(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        yield (
            f"postgresql://{quote(AGENT)}:{quote(AGENT_PASSWORD)}@127.0.0.1:{port}/{pg_database}"
        )
    finally:
        assert child.stdin is not None
        child.stdin.close()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
