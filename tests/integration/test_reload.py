"""SIGHUP to ``dbgate serve`` (alone and with workers): the open sessions are judged
by the new rules at their next statement, a broken rules file changes nothing and
says so in one line, and both reloads are in the audit trail."""

from __future__ import annotations

import secrets
import shutil
import signal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from dbgate.policy.rules import default_rules_dir
from tests.conftest import PgServer
from tests.integration.serve_process import ServeProcess, serve_config, wait_until

PROBE = "select count(*) from reload_probe"
DENY_PROBE = """\
version: 1
rules:
  - name: deny-reload-probe
    match:
      tables: [reload_probe]
    action: deny
    message: reload_probe is closed
"""
BROKEN = """\
version: 1
rules:
  - name: deny-reload-probe
    match:
      tables: [reload_probe]
    action: perhaps
"""


@pytest.fixture
async def state_dsn(pg_server: PgServer) -> Any:
    name = f"dbgate_reload_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(pg_server.dsn())
    await admin.execute(f"create database {name}")
    yield pg_server.dsn(name)
    await admin.execute(f"drop database {name} with (force)")
    await admin.close()


@pytest.mark.parametrize("workers", [1, 2])
async def test_sighup_reloads_rules_for_open_sessions_and_keeps_them_on_a_bad_file(
    workers: int, tmp_path: Path, pg_server: PgServer, pg_database: str, state_dsn: str
) -> None:
    admin = await asyncpg.connect(pg_server.dsn(pg_database))
    await admin.execute("create table if not exists reload_probe (id int)")
    await admin.close()
    rules = tmp_path / "rules"
    rules.mkdir()
    shutil.copy(default_rules_dir() / "default.yaml", rules / "default.yaml")
    server = ServeProcess(
        tmp_path,
        serve_config(pg_server, rules_dir=str(rules), state={"dsn": state_dsn}),
        workers,
    )
    try:
        server.wait_ready()
        dsn = server.dsn(pg_database)
        conns = [await asyncpg.connect(dsn) for _ in range(6)]
        for c in conns:  # allowed, and remembered by each session
            assert await c.fetchval(PROBE) == 0
            assert await c.fetchval(PROBE) == 0

        (rules / "00-probe.yaml").write_text(DENY_PROBE)
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for("reloaded rules", times=workers)
        for c in conns:  # the same sessions, now under the new rule
            with pytest.raises(asyncpg.InsufficientPrivilegeError) as denied:
                await c.fetchval(PROBE)
            assert "deny-reload-probe" in (denied.value.hint or ""), denied.value.as_dict()
            assert await c.fetchval("select 41 + 1") == 42

        (rules / "00-probe.yaml").write_text(BROKEN)
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for("reload failed", times=workers)
        failures = [m for m in server.messages() if m.startswith("reload failed")]
        assert len(failures) == workers
        assert failures[0].startswith(
            f"reload failed: {rules}/00-probe.yaml:6: unknown action 'perhaps' "
            "(valid: allow, hold, deny); still using the rules, PII catalog and approver "
            "settings loaded at 20"
        ), failures[0]
        for c in conns:  # nothing dropped, nothing loosened
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await c.fetchval(PROBE)
            assert await c.fetchval("select 41 + 1") == 42
        late = await asyncpg.connect(dsn)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await late.fetchval(PROBE)
        await late.close()

        state = await asyncpg.connect(state_dsn)
        try:

            async def recorded() -> bool:
                rows = await state.fetch(
                    "select event, outcome from dbgate.audit_log where kind = 'reload'"
                )
                got = sorted((r["event"], r["outcome"]) for r in rows)
                return got == sorted([("rules", "ok")] * workers + [("rules", "failed")] * workers)

            await wait_until(recorded, timeout=30)
        finally:
            await state.close()
        for c in conns:
            await c.close()
        assert server.stop() == 0, server.output()
    finally:
        server.kill()
