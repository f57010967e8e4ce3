"""``dbgate demo`` end to end: the real console script, real signals, real clients.

The demo is a user-facing contract (DESIGN.md): an info file with working DSNs,
the dataset behind the agent DSN, and a clean stop on SIGTERM/Ctrl-C that takes the
embedded server with it. So this runs ``.venv/bin/dbgate`` exactly as a user would,
and checks from outside: connect, count, signal, look for leftover processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import psutil
import pytest

from dbgate.demo_data import AGENT_ROLE
from dbgate.embedded import find_free_port
from tests.conftest import PgServer

DBGATE = Path(sys.executable).with_name("dbgate")
SYSTEM_PSQL = shutil.which("psql")
START_TIMEOUT = 180.0  # first start: initdb + dataset, on a busy 2-core machine


class DemoProcess:
    """One ``dbgate demo`` subprocess with its data dir and info file."""

    def __init__(self, data_dir: Path, info_file: Path, listen: str) -> None:
        self.data_dir = data_dir
        self.info_file = info_file
        self.log = data_dir.parent / f"demo-{time.monotonic_ns()}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    str(DBGATE),
                    "demo",
                    "--listen",
                    listen,
                    "--data-dir",
                    str(data_dir),
                    "--info-file",
                    str(info_file),
                    "--web",
                    "127.0.0.1:0",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_info(self) -> dict[str, str]:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"demo exited early ({self.proc.returncode}):\n{self.output()}")
            if self.info_file.exists():
                return json.loads(self.info_file.read_text())
            time.sleep(0.2)
        pytest.fail(f"no info file after {START_TIMEOUT}s:\n{self.output()}")

    def postgres_family(self) -> list[psutil.Process]:
        """The embedded postmaster and all its children, found through postmaster.pid."""
        pid = int((self.data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()[0])
        postmaster = psutil.Process(pid)
        return [postmaster, *postmaster.children(recursive=True)]

    def stop(self, sig: signal.Signals) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"demo ignored {sig.name} for 60s:\n{self.output()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def demo_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    # Safety net when an assertion fails mid-test: no server left behind.
    pidfile = tmp_path / "data" / "pgdata" / "postmaster.pid"
    if pidfile.exists():
        try:
            proc = psutil.Process(int(pidfile.read_text().splitlines()[0]))
            if proc.name() == "postgres":
                proc.send_signal(signal.SIGINT)
                proc.wait(15)
        except (psutil.Error, ValueError, IndexError):
            pass


def _gone(procs: list[psutil.Process], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return True
        time.sleep(0.1)
    return False


async def _check_connections(info: dict[str, str]) -> None:
    agent = await asyncpg.connect(info["agent_dsn"])
    try:
        assert await agent.fetchval("select count(*) from customers") == 5000
        orders = await agent.fetchval("select count(*) from orders")
        payments = await agent.fetchval("select count(*) from payments")
        assert 15_000 <= orders <= 25_000
        assert 10_000 <= payments <= 20_000
        # Upstream the agent is a least-privilege role, never the superuser: what dbgate
        # lets through (SHOW is allowed) still meets the server's own permission checks.
        assert await agent.fetchval("select current_user") == AGENT_ROLE
        assert await agent.fetchval("show is_superuser") == "off"
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as refused:
            await agent.fetchval("show data_directory")
        assert refused.value.sqlstate == "42501"
        assert '"data_directory"' in refused.value.message  # the server's words
        assert "dbgate" not in refused.value.message
    finally:
        await agent.close()
    admin = await asyncpg.connect(info["admin_dsn"])
    try:
        assert await admin.fetchval("select current_database()") == "demo"
        assert await admin.fetchval("select rolsuper from pg_roles where rolname = current_user")
        role = await admin.fetchrow(
            "select rolsuper, rolbypassrls, rolcreaterole, rolcreatedb from pg_roles"
            " where rolname = $1",
            AGENT_ROLE,
        )
        assert tuple(role) == (False, False, False, False)
        for privilege in ("CONNECT", "TEMPORARY", "CREATE"):
            assert not await admin.fetchval(
                "select has_database_privilege($1, 'dbgate_state', $2)", AGENT_ROLE, privilege
            ), privilege
        comment = await admin.fetchval(
            "select col_description('customers'::regclass, "
            "(select attnum from pg_attribute where attrelid = 'customers'::regclass "
            "and attname = 'ssn'))"
        )
        assert comment.startswith("PII")
    finally:
        await admin.close()
    state = await asyncpg.connect(info["state_dsn"])
    try:
        assert await state.fetchval("select current_database()") == "dbgate_state"
    finally:
        await state.close()


async def _check_auditor(info: dict[str, str]) -> None:
    """The reviewer of the info file reads the audit trail, which shows the agent's
    statements (masked), and can change nothing."""
    auditor = await asyncpg.connect(info["auditor_dsn"])
    try:
        deadline = time.monotonic() + 30
        seen: list[str] = []
        while time.monotonic() < deadline:  # records arrive in batches: wait for one
            seen = [
                r["statement"]
                for r in await auditor.fetch(
                    "select statement from dbgate.audit_log"
                    " where identity = 'agent' and kind = 'statement'"
                )
            ]
            if "select count(*) from customers" in seen:
                break
            await asyncio.sleep(0.2)
        assert "select count(*) from customers" in seen
        assert await auditor.fetchval("select current_user") == "dbgate_demo_auditor"
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await auditor.execute("delete from dbgate.audit_events")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await auditor.fetch("select * from dbgate.approver_tokens")
    finally:
        await auditor.close()


async def _check_approver(info: dict[str, str]) -> None:
    """The approver of the info file is real: its token reads the API, a wrong one
    does not."""
    async with aiohttp.ClientSession() as http:
        url = f"{info['web_url']}/api/approvals?status=pending"
        ok = {"Authorization": f"Bearer {info['approver_token']}"}
        async with http.get(url, headers=ok) as resp:
            assert resp.status == 200, await resp.text()
            assert isinstance(await resp.json(), dict | list)
        async with http.get(url, headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 401
        async with http.get(f"{info['web_url']}/api/me", headers=ok) as resp:
            assert (await resp.json())["name"] == info["approver_user"]


async def test_demo_serves_dataset_and_stops_cleanly(demo_dir: Path) -> None:
    data_dir, info_file = demo_dir / "data", demo_dir / "info.json"
    port = find_free_port()

    demo = DemoProcess(data_dir, info_file, f"127.0.0.1:{port}")
    try:
        info = demo.wait_for_info()
        assert set(info) >= {
            "agent_dsn",
            "admin_dsn",
            "state_dsn",
            "web_url",
            "approver_user",
            "approver_password",
            "approver_token",
            "auditor_dsn",
        }
        await _check_approver(info)
        agent_url = urlsplit(info["agent_dsn"])
        assert (agent_url.username, agent_url.hostname, agent_url.port, agent_url.path) == (
            "agent",
            "127.0.0.1",
            port,
            "/demo",
        )
        await _check_connections(info)
        await _check_auditor(info)
        if SYSTEM_PSQL:
            out = subprocess.run(
                [
                    SYSTEM_PSQL,
                    "-X",
                    "-A",
                    "-t",
                    info["agent_dsn"],
                    "-c",
                    "select count(*) from customers",
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            assert out.stdout.strip() == "5000"
        family = demo.postgres_family()
        assert demo.stop(signal.SIGTERM) == 0, demo.output()
    finally:
        demo.kill()
    assert _gone(family), f"embedded postgres left running: {family}"
    assert not info_file.exists(), "info file must not outlive the demo"
    assert "dbgate demo is ready" in demo.output()

    # Second start on the same data dir: no reload, same credentials, and with
    # --listen port 0 the info file reports the port actually bound.
    demo2 = DemoProcess(data_dir, info_file, "127.0.0.1:0")
    try:
        info2 = demo2.wait_for_info()
        url2 = urlsplit(info2["agent_dsn"])
        assert url2.port not in (None, 0)
        assert (url2.username, url2.password) == (agent_url.username, agent_url.password)
        assert info2["admin_dsn"] == info["admin_dsn"]  # upstream port and password kept
        await _check_connections(info2)
        family2 = demo2.postgres_family()
        assert demo2.stop(signal.SIGINT) == 0, demo2.output()
    finally:
        demo2.kill()
    assert _gone(family2), f"embedded postgres left running: {family2}"


def test_demo_rejects_bad_listen(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(DBGATE), "demo", "--listen", "127.0.0.1:notaport", "--data-dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
        check=False,
    )
    assert result.returncode == 2
    assert "--listen" in result.stderr
    assert not (tmp_path / "d").exists()  # nothing was started


def test_dataset_is_deterministic_and_matches_the_contract() -> None:
    from dbgate.demo_data import COLUMNS, PII_COLUMNS, generate_demo_rows

    a, b = generate_demo_rows(100), generate_demo_rows(100)
    assert a == b  # fixed seed: every demo shows the same people
    assert COLUMNS == {
        "customers": (
            "id",
            "full_name",
            "email",
            "phone",
            "ssn",
            "birth_date",
            "address",
            "created_at",
        ),
        "orders": ("id", "customer_id", "total", "status", "created_at"),
        "payments": ("id", "order_id", "card_number", "amount"),
    }
    pii = {c for cols in PII_COLUMNS.values() for c in cols}
    assert pii == {"full_name", "email", "phone", "ssn", "birth_date", "address", "card_number"}
    assert len({row[2] for row in a.customers}) == 100  # e-mails are unique
    paid = {row[0] for row in a.orders if row[3] in ("paid", "shipped", "delivered", "refunded")}
    assert {row[1] for row in a.payments} == paid


async def test_load_and_ensure_are_idempotent(pg_server: PgServer) -> None:
    """Load into a throwaway database of the session server (never the shared one)."""
    from dbgate.demo_data import ensure_database, load_demo_dataset

    name = f"dbgate_test_demo_{secrets.token_hex(4)}"
    assert await ensure_database(pg_server.dsn(), name) is True
    assert await ensure_database(pg_server.dsn(), name) is False
    try:
        counts = await load_demo_dataset(pg_server.dsn(name), customers=300)
        assert counts["customers"] == 300
        assert counts["orders"] == 1200
        conn = await asyncpg.connect(pg_server.dsn(name))
        try:
            fks = await conn.fetchval("select count(*) from pg_constraint where contype = 'f'")
            assert fks == 2
            comments = await conn.fetch(
                "select a.attname from pg_attribute a "
                "where a.attrelid in ('customers'::regclass, 'payments'::regclass) "
                "and col_description(a.attrelid, a.attnum) like 'PII:%' order by 1"
            )
            assert [r[0] for r in comments] == sorted(
                ["full_name", "email", "phone", "ssn", "birth_date", "address", "card_number"]
            )
            # Identity columns continue after the loaded ids, so inserts work.
            new_id = await conn.fetchval(
                "insert into customers(full_name, email, phone, ssn, birth_date, address) "
                "values ('x', 'x@example.com', '1', '000-00-0000', '2000-01-01', 'y') returning id"
            )
            assert new_id == 301
        finally:
            await conn.close()
        # Loading again replaces, not duplicates.
        assert (await load_demo_dataset(pg_server.dsn(name), customers=300))["customers"] == 300
    finally:
        conn = await asyncpg.connect(pg_server.dsn())
        try:
            await conn.execute(f'drop database if exists "{name}" with (force)')
        finally:
            await conn.close()
