"""Shared fixtures: a real PostgreSQL server for the whole test session.

Design choices, and why:

* ``pg_server`` is the one upstream every integration test talks to. By default it
  is an :class:`~dbgate.embedded.EmbeddedPostgres` (PG 18 from the wheel) on loopback
  TCP with a SCRAM password — the way dbgate meets real servers — started once per
  session because start-up costs about a second. Set ``DBGATE_TEST_DSN`` to a
  ``postgresql://`` URL of an existing server (whose user may create databases) to
  test against that instead; nothing is started then.
* ``pg_database`` is a database created for this session and dropped at the end,
  so tests never touch ``postgres`` or data of an external server.
* ``pg_version_matrix`` runs a test against the embedded server *and* against
  ``postgres:14``…``postgres:17`` via testcontainers. Without a reachable Docker
  engine the container variants are skipped with a reason that says so; they never
  fail for lack of Docker.
* Everything under ``tests/integration`` (and any test using these fixtures) is
  marked ``integration`` automatically, so ``-m "not integration"`` runs only the
  pure unit tests.
* Hypothesis has two profiles. Locally the default one explores: new random
  examples every run, failures remembered in ``.hypothesis/``. With the environment
  variable ``CI`` set (``.ci/run`` sets it) the ``ci`` profile makes every run the
  same: examples derived from each test's name (``derandomize``), no example
  database carried between runs, and a failure printed with the blob that replays it
  (``@reproduce_failure``). ``--hypothesis-profile`` still picks either explicitly.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit

import pytest
from hypothesis import settings as hypothesis_settings

DOCKER_IMAGES: dict[str, str] = {
    "14": "postgres:14",
    "15": "postgres:15",
    "16": "postgres:16",
    "17": "postgres:17",
}
SESSION_DIR_PREFIX = "dbgate-test-pg-"
PG_FIXTURES = {"pg_server", "pg_database", "pg_dsn", "pg_version_matrix"}

hypothesis_settings.register_profile("ci", derandomize=True, database=None, print_blob=True)

# The tokens and pseudonyms of values derived from PII are drawn anew for every cell
# (dbgate/pii/tokens.py, FreshTokens); a pinned secret makes each run draw the same
# ones, so a pseudonym that happens to equal some raw value of the demo data does so
# in every run or in none. Set before anything starts a dbgate (child processes too).
os.environ.setdefault("DBGATE_TEST_FRESH_SEED", "5eed" * 16)


def running_in_ci() -> bool:
    """CI systems set ``CI`` (``true`` on GitHub and GitLab, ``1`` in ``.ci/run``)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


if running_in_ci():
    hypothesis_settings.load_profile("ci")


class PgServer(Protocol):
    """What tests may rely on, whichever kind of server backs the fixture."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def user(self) -> str: ...
    @property
    def password(self) -> str: ...
    @property
    def socket_dir(self) -> Path | None: ...
    def dsn(self, dbname: str = "postgres") -> str: ...


@dataclass(frozen=True)
class ExternalPostgres:
    """A server we did not start: from ``DBGATE_TEST_DSN`` or a testcontainer."""

    host: str
    port: int
    user: str
    password: str
    socket_dir: Path | None = None
    label: str = "external"

    @classmethod
    def from_dsn(cls, dsn: str) -> ExternalPostgres:
        parts = urlsplit(dsn)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError(f"DBGATE_TEST_DSN must be a postgresql:// URL, got {dsn!r}")
        query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
        host = unquote(query.get("host", "")) or parts.hostname or "127.0.0.1"
        return cls(
            host=host,
            port=parts.port or int(query.get("port", 5432)),
            user=unquote(parts.username or "postgres"),
            password=unquote(parts.password or ""),
            socket_dir=Path(host) if host.startswith("/") else None,
        )

    def dsn(self, dbname: str = "postgres") -> str:
        auth = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}"
        if self.socket_dir is not None:
            return (
                f"postgresql://{auth}@/{quote(dbname, safe='')}?host={self.host}&port={self.port}"
            )
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgresql://{auth}@{host}:{self.port}/{quote(dbname, safe='')}"


def _admin_execute(server: PgServer, *statements: str, dbname: str = "postgres") -> None:
    """Run statements in autocommit (CREATE/DROP DATABASE cannot run in a transaction)."""
    import psycopg

    with psycopg.connect(server.dsn(dbname), autocommit=True, connect_timeout=10) as conn:
        for sql in statements:
            conn.execute(sql)  # type: ignore[arg-type]


@functools.cache
def docker_available() -> tuple[bool, str]:
    """(True, "") when a Docker engine answers a ping, else (False, why not).

    Cached: asking costs a connection attempt, and the answer does not change
    during a session.
    """
    try:
        import docker
    except ImportError:
        return False, "the docker/testcontainers Python packages are not installed"
    try:
        client = docker.from_env(timeout=3)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as e:
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        return False, f"no Docker engine reachable at {where} ({first_line})"
    return True, ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests that need a real server as ``integration`` without per-file boilerplate."""
    integration_dir = Path(__file__).parent / "integration"
    for item in items:
        path = Path(str(item.path))
        uses_pg = bool(PG_FIXTURES & set(getattr(item, "fixturenames", ())))
        if uses_pg or integration_dir in path.parents:
            item.add_marker(pytest.mark.integration)


def _sweep_dead_sessions() -> None:
    """Delete server directories of earlier test sessions that were killed outright.

    A SIGKILLed pytest cannot run its fixture teardown; the kernel stops its server
    (see dbgate.embedded) but the data directory stays behind in /tmp.
    """
    import psutil

    for d in Path(tempfile.gettempdir()).glob(SESSION_DIR_PREFIX + "*"):
        try:
            pid = int((d / "owner.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # not ours, or still being created
        if psutil.pid_exists(pid) or (d / "data" / "pgdata" / "postmaster.pid").exists():
            continue
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL server (``DBGATE_TEST_DSN`` or an embedded PG 18)."""
    external = os.environ.get("DBGATE_TEST_DSN")
    if external:
        server = ExternalPostgres.from_dsn(external)
        _admin_execute(server, "SELECT 1")  # fail early and clearly if unreachable
        yield server
        return

    from dbgate.embedded import EmbeddedPostgres

    _sweep_dead_sessions()
    tmp = Path(tempfile.mkdtemp(prefix=SESSION_DIR_PREFIX))
    tmp.chmod(0o711)  # reachable by the server user, so the cluster stays in place
    (tmp / "owner.pid").write_text(f"{os.getpid()}\n")
    pg = EmbeddedPostgres(tmp / "data")
    try:
        pg.start()
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_database(pg_server: PgServer) -> Iterator[str]:
    """Name of a fresh database for this session, dropped afterwards.

    On a private embedded server it is simply ``dbgate_test``; on an external server
    a random suffix keeps concurrent sessions from colliding.
    """
    if isinstance(pg_server, ExternalPostgres):
        name = f"dbgate_test_{secrets.token_hex(4)}"
    else:
        name = "dbgate_test"
    _admin_execute(
        pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'
    )
    try:
        yield name
    finally:
        _admin_execute(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_dsn(pg_server: PgServer, pg_database: str) -> str:
    """Superuser DSN straight to the session database (the 'direct' side of comparisons)."""
    return pg_server.dsn(pg_database)


@pytest.fixture(
    scope="session",
    params=["embedded", *(pytest.param(v, marks=pytest.mark.docker) for v in DOCKER_IMAGES)],
)
def pg_version_matrix(request: pytest.FixtureRequest) -> Iterator[PgServer]:
    """The same test against several PostgreSQL major versions.

    ``embedded`` is the session server (always available); ``14``…``17`` are
    testcontainers images, skipped cleanly when no Docker engine is reachable.
    """
    version: str = request.param
    if version == "embedded":
        yield request.getfixturevalue("pg_server")
        return
    ok, reason = docker_available()
    if not ok:
        pytest.skip(f"PostgreSQL {version} via testcontainers skipped: {reason}")
    from testcontainers.community.postgres import PostgresContainer

    password = secrets.token_urlsafe(12)
    container: Any = PostgresContainer(
        DOCKER_IMAGES[version],
        username="postgres",
        password=password,
        dbname="postgres",
        driver=None,
    )
    container.start()
    try:
        yield ExternalPostgres(
            host=container.get_container_host_ip(),
            port=int(container.get_exposed_port(5432)),
            user="postgres",
            password=password,
            label=f"postgres:{version}",
        )
    finally:
        container.stop()
