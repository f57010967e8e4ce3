"""Replicas sharing one state database: a decision anywhere wakes the holder.

Replica A is a real ``dbgate serve`` process (so it can be killed outright, as a
crashed pod is); replica B is an App on a thread of this process; replica C, also
in-process, is stopped gracefully. The agent is held on one, the decision goes
through the other's API.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from bench.procs import free_port, wait_for_port
from tests.integration.holds.clients import AsyncpgNotices
from tests.integration.holds.harness import (
    AGENT,
    AGENT_PASSWORD,
    HoldsEnv,
    RunningApp,
    app_config,
    start_env,
)

DBGATE = str(Path(sys.executable).parent / "dbgate")


class ServeProcess:
    """``dbgate serve -c CONFIG`` as its own process (replica id ``rep-a``)."""

    def __init__(self, holds: HoldsEnv, work: Path) -> None:
        self.port = free_port()
        config = app_config(
            holds.pg_server,
            holds.pg_server.dsn(holds.state_db),
            Path(holds.app.config.rules_dir or ""),
            replica="rep-a",
        )
        data: dict[str, Any] = config.model_dump(mode="json", exclude_none=True)
        data["listen"] = f"127.0.0.1:{self.port}"
        data["web"] = {
            "listen": f"127.0.0.1:{free_port()}",
            "public_url": data["web"]["public_url"],
        }
        data["allow_privileged_upstream"] = True  # the test server has only a superuser
        data["log_level"] = "warning"
        self.config_path = work / "rep-a.yaml"
        self.config_path.write_text(yaml.safe_dump(data))
        self.config_path.chmod(0o600)
        self.log_path = work / "rep-a.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServeProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                # One process, as one crashed pod is: with workers a SIGKILL of the
                # supervisor makes its workers drain (and end their holds) instead.
                [DBGATE, "serve", "-c", str(self.config_path), "--workers", "1"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        try:
            wait_for_port("127.0.0.1", self.port, 60, self.proc)  # type: ignore[arg-type]
        except RuntimeError as e:
            raise RuntimeError(f"{e}: {self.log_path.read_text()[-2000:]}") from None
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def dsn(self, dbname: str) -> str:
        return f"postgresql://{AGENT}:{AGENT_PASSWORD}@127.0.0.1:{self.port}/{dbname}"


@pytest.fixture(scope="module")
def holds(pg_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HoldsEnv]:
    """Replica B (in-process, the API the decisions go through)."""
    yield from start_env(pg_server, "holds_replicas", tmp_path_factory.mktemp("replicas"))


@pytest.fixture(scope="module")
def replica_a(holds: HoldsEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    a = ServeProcess(holds, tmp_path_factory.mktemp("rep-a")).start()
    yield a
    a.stop()


async def held_on(dsn: str) -> tuple[asyncpg.Connection, AsyncpgNotices]:
    conn = await asyncpg.connect(dsn)
    return conn, AsyncpgNotices(conn)


async def test_held_on_one_replica_decided_through_the_other(
    holds: HoldsEnv, replica_a: ServeProcess
) -> None:
    t = holds.table("rep_decided", 3)
    conn, notices = await held_on(replica_a.dsn(holds.data_db))
    try:
        running = asyncio.create_task(conn.execute(f"DELETE FROM {t}"))
        rid = await notices.held()
        row = await holds.app.arequest(rid)
        assert row["replica"] == "rep-a" and holds.app.replica != "rep-a"
        await holds.app.aapprove(rid, "approved on replica B")
        assert await running == "DELETE 3"
        assert (await holds.app.await_status(rid, "executed"))["replica"] == "rep-a"
        running = asyncio.create_task(conn.execute(f"TRUNCATE {t}"))
        await holds.app.areject(await notices.held(), "rejected on replica B")
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as info:
            await running
        assert info.value.message.endswith("rejected on replica B")
    finally:
        await conn.close()


async def test_a_replica_that_restarts_abandons_its_holds(
    holds: HoldsEnv, replica_a: ServeProcess
) -> None:
    t = holds.table("rep_restart", 3)
    conn, notices = await held_on(replica_a.dsn(holds.data_db))
    running = asyncio.create_task(conn.execute(f"DELETE FROM {t}"))
    rid = await notices.held()
    replica_a.kill()  # a crash: nothing ends the request
    with pytest.raises((asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError, OSError)):
        await running
    conn.terminate()
    assert (await holds.app.arequest(rid))["status"] == "pending"
    replica_a.start()  # same replica id
    row = await holds.app.await_status(rid, "abandoned")
    assert row["reason"] == "replica rep-a restarted while the statement was held"
    status, body = await holds.app.aapi("POST", f"/api/approvals/{rid}/approve", body={})
    assert status == 409, body
    assert holds.count(t) == 3  # nothing approved later runs by itself
    # The restarted replica holds and runs again.
    conn, notices = await held_on(replica_a.dsn(holds.data_db))
    try:
        running = asyncio.create_task(conn.execute(f"DELETE FROM {t}"))
        await holds.app.aapprove(await notices.held())
        assert await running == "DELETE 3"
    finally:
        await conn.close()


async def test_a_replica_that_stops_ends_its_holds_abandoned(
    holds: HoldsEnv, tmp_path: Path
) -> None:
    t = holds.table("rep_stop", 3)
    config = app_config(
        holds.pg_server,
        holds.pg_server.dsn(holds.state_db),
        Path(holds.app.config.rules_dir or ""),
        replica="rep-c",
    )
    c = RunningApp(config).start()
    try:
        conn, notices = await held_on(c.dsn(holds.data_db))
        running = asyncio.create_task(conn.execute(f"DELETE FROM {t}"))
        rid = await notices.held()
        stopping = asyncio.ensure_future(asyncio.to_thread(c.stop))
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as info:
            await running
        assert "could not be obtained (dbgate is shutting down)" in info.value.message
        await stopping
        row = await holds.app.arequest(rid)
        assert (row["status"], row["replica"]) == ("abandoned", "rep-c")
        status, _ = await holds.app.aapi("POST", f"/api/approvals/{rid}/approve", body={})
        assert status == 409
        assert holds.count(t) == 3
        conn.terminate()
    finally:
        c.stop()
