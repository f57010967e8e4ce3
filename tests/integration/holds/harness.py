"""A whole dbgate (:class:`~dbgate.app.App`) on its own event-loop thread, for holds.

Held statements need everything at once: the proxy, the gate with the rules, the
approval service on a state database, and the HTTP API an approver decides through.
:class:`RunningApp` runs one ``App(config)`` on a private uvloop thread, the way
``RunningProxy`` runs a bare proxy, so synchronous drivers (psql, psycopg) and async
ones on pytest's loop can be held by it alike. Its helpers decide through the real
API (aiohttp, Bearer token) and read the state database through the App's own pool.

Tests synchronise on what dbgate itself produces — the hold's NoticeResponse (sent
only after the request is durably recorded), the client's answer, a status in the
state database — never on sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import psycopg
import uvloop

from dbgate.app import App
from dbgate.config import Config
from dbgate.policy.rules import default_rules_dir

AGENT = "agent"
AGENT_PASSWORD = "agent-holds-pw"
OTHER_AGENT = "agent-two"
OTHER_PASSWORD = "agent-two-pw"
APPROVER = "alice"  # group dba: the default pack's hold rules name it
OWNER = "olga"  # dba too, but she runs the agent: she may not approve its requests
PUBLIC_URL = "https://approve.example.test"

#: Rules of the tests, read before the shipped pack (file names sort first). They
#: only cover tables named for them; everything else is the default pack's.
TEST_RULES = """\
version: 1
rules:
  - name: retry-destructive
    description: approve-then-retry for tables named retry_*
    match: {categories: [destructive], tables: ["retry_*"]}
    action: hold
    message: bulk change of a retry table, decided out of band
    approver_groups: [dba]
    wait_seconds: 0
  - name: quick-expiry
    description: a wait short enough to run out in a test
    match: {categories: [destructive], tables: ["expiring_*"]}
    action: hold
    message: bulk change of an expiring table
    approver_groups: [dba]
    wait_seconds: 1
  - name: small-window
    description: a rows-per-window limit small enough to reach in a test
    match: {categories: [read], tables: ["windowed_*"]}
    action: allow
    max_rows_per_window: 30
    window: 1h
"""

_REQUEST_ID = re.compile(r"\(request (\d+)\)")
_RETRY_ID = re.compile(r"it is request (\d+)")


def request_id(text: str) -> int:
    """The approval request a hold notice (or an approve-then-retry error) names."""
    m = _REQUEST_ID.search(text) or _RETRY_ID.search(text)
    if m is None:
        raise AssertionError(f"no approval request named in {text!r}")
    return int(m.group(1))


@contextmanager
def statements_seen(gate: Any, method: str = "inspect") -> Iterator[list[Any]]:
    """The statements the running gate's ``method`` (``inspect``: every statement the
    relay shows it; ``_judge``: those judged the long way) is called with, in order.
    The relay asks the gate's attribute at each statement, so the wrapper takes effect
    at once and is removed on exit."""
    seen: list[Any] = []
    inner = getattr(gate, method)

    def recording(*args: Any) -> Any:
        seen.append(args[-1])  # the Statement is the last argument of both
        return inner(*args)

    setattr(gate, method, recording)
    try:
        yield seen
    finally:
        delattr(gate, method)


def admin_execute(dsn: str, *statements: str) -> None:
    """Run statements in autocommit, straight to PostgreSQL (not through dbgate)."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        for sql in statements:
            conn.execute(sql)  # type: ignore[arg-type]


def admin_query(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def fresh_database(admin_dsn: str, name: str) -> None:
    admin_execute(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin_execute(admin_dsn, f'CREATE DATABASE "{name}"')


def drop_database(admin_dsn: str, name: str) -> None:
    admin_execute(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def rules_for_tests(directory: Path) -> Path:
    """The default pack plus :data:`TEST_RULES`, in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "10-holds-test.yaml").write_text(TEST_RULES)
    for f in default_rules_dir().glob("*.yaml"):
        shutil.copy(f, directory / f.name)
    return directory


PII_SECRET = "base64:" + base64.b64encode(os.urandom(32)).decode()


def app_config(
    pg_server: Any,
    state_dsn: str,
    rules_dir: Path | None,
    *,
    replica: str,
    audit: dict[str, Any] | None = None,
    pii: dict[str, Any] | None = None,
    **approvals: Any,
) -> Config:
    data: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "upstream": {
            "host": pg_server.host,
            "port": pg_server.port,
            "user": pg_server.user,
            "password": pg_server.password,
            # The test server allows 200 connections; a hundred sessions held at once
            # each keep theirs, above the default meant for PostgreSQL's 100.
            "max_server_conn": 150,
        },
        "identities": [
            {"name": AGENT, "password": AGENT_PASSWORD, "groups": ["agents"], "owners": [OWNER]},
            {"name": OTHER_AGENT, "password": OTHER_PASSWORD, "groups": ["agents"]},
        ],
        "state": {"dsn": state_dsn, "pool_max": 20},
        "web": {"listen": "127.0.0.1:0", "public_url": PUBLIC_URL},
        "approvals": {
            "replica_id": replica,
            "default_wait_seconds": 120,
            "recheck_seconds": 1,
            **approvals,
        },
        "rules_dir": str(rules_dir) if rules_dir is not None else None,
        # results are tokenized as in production; the key is the test module's own
        "pii": {"keys": [{"id": "holds", "secret": PII_SECRET}], **(pii or {})},
        "shutdown_grace_seconds": 2,
    }
    if audit is not None:
        data["audit"] = audit
    return Config.model_validate(data)


@dataclass
class Approvers:
    """API tokens of the approver accounts made for a test module."""

    tokens: dict[str, str] = field(default_factory=dict)


class RunningApp:
    """``App(config)`` on a private uvloop thread; decisions go through its HTTP API."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.app = App(config, check_upstream=False)  # the test server has only a superuser
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.tokens: dict[str, str] = {}

    # -- life ---------------------------------------------------------------------------
    def start(self) -> RunningApp:
        self._thread.start()
        try:
            self.call(self.app.start())  # App.start stops what it started if it fails
        except BaseException:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            raise
        return self

    def stop(self, grace: float = 2.0) -> None:
        if not self._thread.is_alive():
            return
        try:
            self.call(self.app.stop(grace=grace))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    def call(self, coro: Any, timeout: float = 60) -> Any:
        """Run ``coro`` on the App's loop and wait for it (from a synchronous test)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def acall(self, coro: Any) -> Any:
        """Run ``coro`` on the App's loop without blocking the caller's loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    # -- where things are ---------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self.app.proxy is not None
        return self.app.proxy.port

    @property
    def web_url(self) -> str:
        assert self.app.web_url is not None
        return self.app.web_url

    @property
    def replica(self) -> str:
        assert self.app.approvals is not None
        return self.app.approvals.replica

    def dsn(self, dbname: str, user: str = AGENT, password: str = AGENT_PASSWORD) -> str:
        return f"postgresql://{quote(user)}:{quote(password)}@127.0.0.1:{self.port}/{dbname}"

    # -- approvers ----------------------------------------------------------------------
    def add_approver(self, name: str, *groups: str) -> str:
        """An approver account (token only) and its API token; kept in ``tokens``."""

        async def add() -> str:
            svc = self.app.approvals
            assert svc is not None
            await svc.accounts.add(name, groups, None)
            _, token = await svc.accounts.issue_token(name)
            return str(token)

        self.tokens[name] = self.call(add())
        return self.tokens[name]

    # -- the HTTP API ---------------------------------------------------------------------
    async def _http(
        self, method: str, path: str, who: str | None, body: Any
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        async with (
            aiohttp.ClientSession() as http,
            http.request(
                method,
                self.web_url + path,
                headers=headers,
                data=None if body is None else json.dumps(body),
            ) as r,
        ):
            return r.status, await r.json()

    def api(
        self, method: str, path: str, who: str | None = APPROVER, body: Any = None
    ) -> tuple[int, dict[str, Any]]:
        return self.call(self._http(method, path, who, body))  # type: ignore[no-any-return]

    async def aapi(
        self, method: str, path: str, who: str | None = APPROVER, body: Any = None
    ) -> tuple[int, dict[str, Any]]:
        return await self.acall(self._http(method, path, who, body))  # type: ignore[no-any-return]

    def approve(self, rid: int, reason: str | None = None, who: str = APPROVER) -> dict[str, Any]:
        return _decided(self.api("POST", f"/api/approvals/{rid}/approve", who, _reason(reason)))

    def reject(self, rid: int, reason: str, who: str = APPROVER) -> dict[str, Any]:
        return _decided(self.api("POST", f"/api/approvals/{rid}/reject", who, {"reason": reason}))

    async def aapprove(
        self, rid: int, reason: str | None = None, who: str = APPROVER
    ) -> dict[str, Any]:
        return _decided(
            await self.aapi("POST", f"/api/approvals/{rid}/approve", who, _reason(reason))
        )

    async def areject(self, rid: int, reason: str, who: str = APPROVER) -> dict[str, Any]:
        return _decided(
            await self.aapi("POST", f"/api/approvals/{rid}/reject", who, {"reason": reason})
        )

    # -- the state database -----------------------------------------------------------------
    async def _fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        assert self.app.pool is not None
        async with self.app.pool.acquire() as conn:
            return [dict(r) for r in await conn.fetch(sql, *args)]

    def rows(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        return self.call(self._fetch(sql, *args))  # type: ignore[no-any-return]

    def request(self, rid: int) -> dict[str, Any]:
        """The request as the contract view ``dbgate.approvals`` shows it."""
        rows = self.rows("SELECT * FROM dbgate.approvals WHERE id = $1", rid)
        assert rows, f"approval request {rid} does not exist"
        return rows[0]

    async def arequest(self, rid: int) -> dict[str, Any]:
        rows = await self.acall(self._fetch("SELECT * FROM dbgate.approvals WHERE id = $1", rid))
        assert rows, f"approval request {rid} does not exist"
        return rows[0]  # type: ignore[no-any-return]

    def requests_since(self, after: int) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM dbgate.approvals WHERE id > $1 ORDER BY id", after)

    def last_id(self) -> int:
        return int(self.rows("SELECT coalesce(max(id), 0) AS n FROM dbgate.approvals")[0]["n"])

    def wait_status(self, rid: int, *statuses: str, timeout: float = 30) -> dict[str, Any]:
        """The request once its status is one of ``statuses``: for what dbgate records
        beside the client's answer (``executed``) or with no answer at all
        (``withdrawn`` after a disconnect)."""
        return self.call(self._wait_status(rid, statuses, timeout), timeout + 5)  # type: ignore[no-any-return]

    async def await_status(self, rid: int, *statuses: str, timeout: float = 30) -> dict[str, Any]:
        return await self.acall(self._wait_status(rid, statuses, timeout))  # type: ignore[no-any-return]

    async def _wait_status(
        self, rid: int, statuses: tuple[str, ...], timeout: float
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        row: dict[str, Any] = {}
        while time.monotonic() < deadline:
            rows = await self._fetch("SELECT * FROM dbgate.approvals WHERE id = $1", rid)
            if rows and rows[0]["status"] in statuses:
                return rows[0]
            row = rows[0] if rows else {}
            await asyncio.sleep(0.02)  # polling the recorded state: the condition decides
        raise AssertionError(
            f"request {rid} did not reach {statuses} in {timeout} s (status {row.get('status')})"
        )

    def wait_pending(self, after: int, count: int = 1, timeout: float = 30) -> list[dict[str, Any]]:
        """The first ``count`` requests after id ``after`` once they are all pending
        (for clients that cannot show the hold notice while they wait)."""
        return self.call(self._wait_pending(after, count, timeout), timeout + 5)  # type: ignore[no-any-return]

    async def await_pending(
        self, after: int, count: int = 1, timeout: float = 30
    ) -> list[dict[str, Any]]:
        return await self.acall(self._wait_pending(after, count, timeout))  # type: ignore[no-any-return]

    async def _wait_pending(self, after: int, count: int, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            rows = await self._fetch(
                "SELECT * FROM dbgate.approvals WHERE id > $1 AND status = 'pending' ORDER BY id",
                after,
            )
            if len(rows) >= count:
                return rows[:count]
            await asyncio.sleep(0.02)
        raise AssertionError(f"{count} pending request(s) after {after} did not appear: {rows}")


def _reason(reason: str | None) -> dict[str, str]:
    return {} if reason is None else {"reason": reason}


def _decided(answer: tuple[int, dict[str, Any]]) -> dict[str, Any]:
    status, body = answer
    assert status == 200, f"the decision was refused: {status} {body}"
    return body


@dataclass
class HoldsEnv:
    """What a test module gets: a running App, its databases, and the server."""

    app: RunningApp
    data_db: str
    admin_dsn: str  # superuser, straight to the data database
    state_db: str
    pg_server: Any

    def table(self, name: str, rows: int = 3) -> str:
        """A fresh table ``name(id int primary key, note text)`` with ``rows`` rows."""
        admin_execute(
            self.admin_dsn,
            f"DROP TABLE IF EXISTS {name}",
            f"CREATE TABLE {name} (id int PRIMARY KEY, note text NOT NULL DEFAULT 'n')",
            f"INSERT INTO {name} (id) SELECT g FROM generate_series(1, {rows}) g",
        )
        return name

    def count(self, table: str) -> int:
        return int(admin_query(self.admin_dsn, f"SELECT count(*) FROM {table}")[0][0])

    def notes(self, table: str) -> list[str]:
        return [r[0] for r in admin_query(self.admin_dsn, f"SELECT note FROM {table} ORDER BY id")]

    @property
    def dsn(self) -> str:
        """The agent's DSN through dbgate to the data database."""
        return self.app.dsn(self.data_db)


def start_env(pg_server: Any, name: str, tmp: Path, **approvals: Any) -> Iterator[HoldsEnv]:
    """Databases ``<name>_data`` and ``<name>_state``, the App, approvers alice (dba)
    and olga (dba, owner of the agent); everything is dropped afterwards."""
    admin = pg_server.dsn("postgres")
    data_db, state_db = f"{name}_data", f"{name}_state"
    fresh_database(admin, data_db)
    fresh_database(admin, state_db)
    config = app_config(
        pg_server,
        pg_server.dsn(state_db),
        rules_for_tests(tmp / "rules"),
        replica=f"{name}-a",
        **approvals,
    )
    app = RunningApp(config).start()
    try:
        app.add_approver(APPROVER, "dba")
        app.add_approver(OWNER, "dba")
        yield HoldsEnv(app, data_db, pg_server.dsn(data_db), state_db, pg_server)
    finally:
        app.stop()
        drop_database(admin, data_db)
        drop_database(admin, state_db)


Factory = Callable[..., RunningApp]
