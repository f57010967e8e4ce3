"""The two things the suite is pointed at: a real PostgreSQL, and dbgate in front of one.

Each run gets its own freshly initialised server so that whatever one run leaves
behind (roles, databases, settings changed by a failing test) cannot change the
other run's results. Both are context managers that stop what they started even
when the body raises or the runner is interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

# asyncpg's own test clusters run with JIT off ("JITting messes up timing tests");
# log_connections stays off: it only fills the log.
SERVER_SETTINGS: dict[str, str] = {"jit": "off"}


class TargetError(RuntimeError):
    """A server or the proxy could not be started; the message says why."""


@dataclass(frozen=True)
class Endpoint:
    """What the suite needs to know to connect: exported as PG* variables."""

    host: str
    port: int
    user: str
    password: str
    database: str = "postgres"

    def pg_env(self) -> dict[str, str]:
        """The variables asyncpg's test base reads when ``PGHOST`` is set (external cluster)."""
        return {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGPASSWORD": self.password,
            "PGDATABASE": self.database,
        }


@dataclass(frozen=True)
class Server:
    """A running PostgreSQL: its superuser endpoint and version."""

    endpoint: Endpoint
    version: str
    log_file: Path


async def _query_version(ep: Endpoint) -> str:
    import asyncpg

    con = await asyncpg.connect(
        host=ep.host,
        port=ep.port,
        user=ep.user,
        password=ep.password,
        database=ep.database,
        timeout=15,
    )
    try:
        return str(await con.fetchval("SHOW server_version"))
    finally:
        await con.close()


@contextlib.contextmanager
def postgres(data_dir: Path) -> Iterator[Server]:
    """A fresh embedded PostgreSQL (dbgate's test server) in ``data_dir``, stopped on exit."""
    try:
        from dbgate.embedded import EmbeddedPostgres
    except ImportError as e:  # pragma: no cover - the module ships with dbgate
        raise TargetError(f"dbgate.embedded is not available: {e}") from e

    shutil.rmtree(data_dir, ignore_errors=True)
    pg = EmbeddedPostgres(data_dir, settings=SERVER_SETTINGS)
    try:
        pg.start()
        ep = Endpoint(host=pg.host, port=pg.port, user=pg.user, password=pg.password)
        version = asyncio.run(_query_version(ep))
        yield Server(endpoint=ep, version=version, log_file=pg.log_file)
    finally:
        pg.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dbgate_command() -> list[str]:
    """The console script next to this interpreter, else ``python -m dbgate``."""
    script = Path(sys.executable).parent / "dbgate"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "dbgate"]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def blind_relay(upstream: Endpoint) -> Iterator[Endpoint]:
    """A byte-for-byte TCP relay in front of ``upstream``: the control group.

    A test that also fails through a relay that understands nothing of the protocol
    fails because *any* hop was added (extra buffering, latency), not because of
    something dbgate does. We use asyncpg's own relay (``_testbase.fuzzer``, what
    its suite uses for connection-loss tests) so the control is not our code.
    """
    from asyncpg._testbase.fuzzer import TCPFuzzingProxy

    relay = TCPFuzzingProxy(backend_host=upstream.host, backend_port=upstream.port)
    relay.start()
    try:
        yield Endpoint(
            host=relay.listening_addr,
            port=int(relay.listening_port),
            user=upstream.user,
            password=upstream.password,
            database=upstream.database,
        )
    finally:
        relay.stop()


@dataclass
class Proxy:
    """A running ``dbgate serve``: the endpoint agents (here: the suite) use."""

    endpoint: Endpoint
    process: subprocess.Popen[bytes]
    log_file: Path
    config_file: Path

    def alive(self) -> bool:
        return self.process.poll() is None


def write_proxy_config(path: Path, upstream: Endpoint, *, policy: str) -> Endpoint:
    """Config for ``dbgate serve`` in front of ``upstream``; returns the client endpoint.

    The identity is named like the upstream superuser because asyncpg's suite
    connects with one ``PGUSER`` and expects superuser rights (it creates roles,
    databases and extensions). Its password differs from the upstream one on
    purpose: the suite must succeed without ever knowing the real credential, as
    an agent would.
    """
    port = _free_port()
    identity_password = secrets.token_urlsafe(18)
    config = {
        "listen": f"127.0.0.1:{port}",
        "upstream": {
            "host": upstream.host,
            "port": upstream.port,
            "user": upstream.user,
            "password": upstream.password,
        },
        "identities": [
            {
                "name": upstream.user,
                "password": identity_password,
                "upstream_user": upstream.user,
            }
        ],
        "policy": policy,
        "shutdown_grace_seconds": 2,
        "log_level": "info",
        # asyncpg's suite needs a superuser (see above); dbgate warns and serves.
        "allow_privileged_upstream": True,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return Endpoint(host="127.0.0.1", port=port, user=upstream.user, password=identity_password)


async def _smoke_test(ep: Endpoint) -> None:
    """One real query through the proxy: a listening socket alone proves little."""
    import asyncpg

    con = await asyncpg.connect(
        host=ep.host,
        port=ep.port,
        user=ep.user,
        password=ep.password,
        database=ep.database,
        timeout=10,
    )
    try:
        value = await con.fetchval("SELECT 1")
        if value != 1:
            raise TargetError(f"SELECT 1 through dbgate returned {value!r}")
    finally:
        await con.close()


def _stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM (dbgate drains sessions), then SIGKILL the whole process group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    # start_new_session made the process its own group: reap workers it may have left.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


@contextlib.contextmanager
def dbgate(work_dir: Path, upstream: Endpoint, *, policy: str = "off") -> Iterator[Proxy]:
    """``dbgate serve`` in front of ``upstream`` until the block ends.

    Raises :class:`TargetError` (with the tail of dbgate's log) when it does not
    start, does not listen within 30 s, or fails a ``SELECT 1`` smoke test.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    config_file = work_dir / "dbgate.yaml"
    log_file = work_dir / "dbgate.log"
    ep = write_proxy_config(config_file, upstream, policy=policy)
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(
            [*_dbgate_command(), "serve", "-c", str(config_file)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proxy = Proxy(endpoint=ep, process=proc, log_file=log_file, config_file=config_file)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise TargetError(
                    f"dbgate serve exited with code {proc.returncode} during start-up\n"
                    f"--- {log_file} ---\n{_tail(log_file)}"
                )
            with contextlib.suppress(OSError), socket.create_connection((ep.host, ep.port), 1):
                break
            if time.monotonic() > deadline:
                raise TargetError(
                    f"dbgate serve did not listen on {ep.host}:{ep.port} within 30s\n"
                    f"--- {log_file} ---\n{_tail(log_file)}"
                )
            time.sleep(0.1)
        try:
            asyncio.run(_smoke_test(ep))
        except Exception as e:
            raise TargetError(
                f"SELECT 1 through dbgate failed: {type(e).__name__}: {e}\n"
                f"--- {log_file} ---\n{_tail(log_file)}"
            ) from e
        yield proxy
    finally:
        _stop_process(proc)
