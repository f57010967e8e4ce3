"""``dbgate serve`` as an operator runs it: the console script in a subprocess, with
a YAML config, its log in a file, found and signalled from outside (psutil)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest
import yaml

from dbgate.embedded import find_free_port

DBGATE = Path(sys.executable).with_name("dbgate")
AGENT, AGENT_PASSWORD = "agent", "agent-pw"
START_TIMEOUT = 120.0


def serve_config(pg_server: Any, **extra: Any) -> dict[str, Any]:
    return {
        "listen": f"127.0.0.1:{find_free_port()}",
        "upstream": {
            "host": pg_server.host,
            "port": pg_server.port,
            "user": pg_server.user,
            "password": pg_server.password,
        },
        "identities": [{"name": AGENT, "password": AGENT_PASSWORD}],
        "allow_privileged_upstream": True,
        "shutdown_grace_seconds": 5,
        "pii": {"enabled": False},
        "logging": {"format": "json"},
        **extra,
    }


class ServeProcess:
    """One ``dbgate serve -c FILE --workers N`` and what can be seen of it."""

    def __init__(self, tmp: Path, config: dict[str, Any], workers: int) -> None:
        self.config = config
        self.workers = workers
        self.path = tmp / "dbgate.yaml"
        self.path.write_text(yaml.safe_dump(config))
        self.log = tmp / f"serve-{time.monotonic_ns()}.log"
        self.port = int(config["listen"].rsplit(":", 1)[1])
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(DBGATE), "serve", "-c", str(self.path), "--workers", str(workers)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def dsn(self, database: str) -> str:
        return f"postgresql://{AGENT}:{AGENT_PASSWORD}@127.0.0.1:{self.port}/{database}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def messages(self) -> list[str]:
        out = []
        for line in self.output().splitlines():
            try:
                out.append(json.loads(line)["msg"])
            except (ValueError, KeyError, TypeError):
                out.append(line)
        return out

    def count(self, fragment: str) -> int:
        return sum(fragment in m for m in self.messages())

    def wait_for(self, fragment: str, times: int = 1, timeout: float = START_TIMEOUT) -> None:
        """Until the log has ``fragment`` ``times`` times (polling a file, not a sleep)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count(fragment) >= times:
                return
            if self.proc.poll() is not None:
                pytest.fail(f"dbgate exited ({self.proc.returncode}):\n{self.output()}")
            time.sleep(0.05)
        pytest.fail(f"no {fragment!r} x{times} in the log after {timeout}s:\n{self.output()}")

    def wait_ready(self) -> None:
        if self.workers > 1:
            self.wait_for(f"{self.workers} workers serving")
        else:
            self.wait_for("dbgate listening on")

    def worker_processes(self) -> list[psutil.Process]:
        return [
            p
            for p in psutil.Process(self.proc.pid).children()
            if "multiprocessing.spawn" in " ".join(p.cmdline())
        ]

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"dbgate ignored {sig.name} for {timeout}s:\n{self.output()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                child.kill()
            self.proc.kill()
            self.proc.wait()


async def worker_of(conn: Any, workers: list[psutil.Process]) -> int:
    """Which of ``workers`` (pid) holds the session of ``conn`` (asyncpg or psycopg):
    the one with the TCP connection whose local port the upstream backend sees as
    its client's port."""
    if isinstance(conn, asyncpg.Connection):
        port = await conn.fetchval("select inet_client_port()")
    else:
        cur = await conn.execute("select inet_client_port()")
        port = (await cur.fetchone())[0]
    for p in workers:
        if any(c.laddr and c.laddr.port == port for c in p.net_connections(kind="tcp")):
            return p.pid
    raise AssertionError(f"no worker has the upstream connection from port {port}")


async def wait_until(predicate: Any, timeout: float = 30.0) -> None:
    """Poll an async condition (the server's state), never a fixed sleep."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)
