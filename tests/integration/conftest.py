"""Fixtures that put a real dbgate proxy in front of the session's PostgreSQL.

The proxy runs in-process on its own uvloop event loop in a background thread, so
tests can drive it with synchronous drivers (psycopg2, pg8000, psql) and with async
ones on pytest's loop alike, and can plug in their own inspector, observer or message filter to
exercise the seams.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import uvloop

from dbgate.config import Config
from dbgate.embedded import EmbeddedPostgres
from dbgate.embedded.binaries import find_free_port
from dbgate.proxy.seams import Inspector, MessageFilter, Observer, SessionSetup
from dbgate.proxy.server import ProxyServer
from tests.integration.certs import self_signed

AGENT = "agent"
AGENT_PASSWORD = "agent-secret-pw"


class RunningProxy:
    """A ProxyServer on a private event loop thread."""

    def __init__(
        self,
        config: Config,
        inspector: Inspector | None = None,
        observer: Observer | None = None,
        message_filter: MessageFilter | None = None,
        session_setup: SessionSetup | None = None,
    ) -> None:
        self.config = config
        self.loop = uvloop.new_event_loop()
        self.server = ProxyServer(
            config,
            inspector=inspector,
            observer=observer,
            message_filter=message_filter,
            session_setup=session_setup,
        )
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> RunningProxy:
        self._thread.start()
        self.call(self.server.start())
        return self

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, grace: float = 2.0) -> None:
        self.call(self.server.stop(grace=grace))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return self.server.port

    def dsn(self, dbname: str, user: str = AGENT, password: str = AGENT_PASSWORD) -> str:
        return f"postgresql://{quote(user)}:{quote(password)}@127.0.0.1:{self.port}/{dbname}"


def pack_with(directory: Path, extra_rules: str) -> Path:
    """The shipped rule pack plus one file of rules tried first, as an operator adds
    them (docs/rules.md, "Recipes"); the benchmark builds its pack the same way."""
    from bench.dbgate_target import write_rules

    return write_rules(directory, extra_rules)


#: The driver suites' agent writes its own scratch tables in bulk (COPY of 500 rows,
#: range deletes): an operator gives such an agent a rule for those tables, because
#: the shipped pack holds any write not proven within 100 rows (docs/rules.md).
SCRATCH_WRITES = """\
version: 1
rules:
  - name: tests-bulk-writes-to-scratch-tables
    match:
      identities: [agent]
      categories: [write]
      tables: ["scratch_*", "copy_cycles"]
    action: allow
"""


def proxy_config(pg_server: Any, **overrides: Any) -> Config:
    data: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "upstream": {
            "host": pg_server.host,
            "port": pg_server.port,
            "user": pg_server.user,
            "password": pg_server.password,
        },
        "identities": [{"name": AGENT, "password": AGENT_PASSWORD, "groups": ["agents"]}],
        "shutdown_grace_seconds": 2,
    }
    for key, value in overrides.items():  # a section given in part keeps its other keys
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return Config.model_validate(data)


@pytest.fixture(scope="session")
def proxy(pg_server: Any) -> Iterator[RunningProxy]:
    """The shared allow-everything proxy (no inspector, no plans: the fast path)."""
    running = RunningProxy(proxy_config(pg_server)).start()
    yield running
    running.stop()


@pytest.fixture
def make_proxy(pg_server: Any) -> Iterator[Callable[..., RunningProxy]]:
    """Start extra proxies with a custom inspector/observer/filter/session setup/config
    for one test."""
    started: list[RunningProxy] = []

    def factory(
        inspector: Inspector | None = None,
        observer: Observer | None = None,
        message_filter: MessageFilter | None = None,
        session_setup: SessionSetup | None = None,
        **config_overrides: Any,
    ) -> RunningProxy:
        running = RunningProxy(
            proxy_config(pg_server, **config_overrides),
            inspector,
            observer,
            message_filter,
            session_setup,
        ).start()
        started.append(running)
        return running

    yield factory
    for running in started:
        running.stop()


@pytest.fixture(scope="session")
def proxy_dsn(proxy: RunningProxy, pg_database: str) -> str:
    return proxy.dsn(pg_database)


@pytest.fixture(scope="session")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost, made for this run."""
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def state_server() -> Iterator[EmbeddedPostgres]:
    """A state database server of the module's own, which its tests stop and start (an
    outage of the state database) without touching the data server."""
    work = Path(tempfile.mkdtemp(prefix="dbgate-test-state-"))
    work.chmod(0o711)
    pg = EmbeddedPostgres(work / "pg", port=find_free_port()).start()
    try:
        yield pg
    finally:
        pg.stop()
