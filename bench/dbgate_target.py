"""dbgate itself, started the way an operator starts it: ``dbgate serve -c CONFIG``.

It runs as a separate process (not imported into the runner) so that the numbers
include everything a deployment pays for: the CLI, config loading, uvloop, the
inspector hook, logging. Clients authenticate to it as a dbgate identity with
SCRAM-SHA-256; dbgate logs in upstream with the real credentials, which the
clients never see.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import asyncpg
import uvloop
import yaml

from bench.procs import LOOPBACK, ManagedProcess, free_port, wait_for_port
from bench.targets import Target

IDENTITY = "bench"


@dataclass(frozen=True)
class Approvals:
    """Run dbgate with its approval service: the state database (created and
    migrated by dbgate at start), where its API listens, and its replica id."""

    state_dsn: str
    web_port: int
    replica_id: str
    #: the audit trail (``audit.enabled``); off: the state database's other features only
    audit: bool = True
    #: other ``audit:`` settings, as (key, value) pairs
    audit_settings: tuple[tuple[str, object], ...] = ()

    @property
    def web_url(self) -> str:
        return f"http://{LOOPBACK}:{self.web_port}"


def server_dsn(server: Target, dbname: str) -> str:
    """A postgresql:// URL to ``dbname`` on the server behind ``server``."""
    auth = f"{quote(server.user, safe='')}:{quote(server.password, safe='')}"
    return f"postgresql://{auth}@{server.host}:{server.port}/{quote(dbname, safe='')}"


async def create_database(server: Target, name: str) -> str:
    """(Re)create database ``name`` on ``server`` (a superuser target such as
    ``direct``); its DSN. For a state database: dbgate creates its schema in it."""
    conn = await asyncpg.connect(server_dsn(server, "postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return server_dsn(server, name)


def dbgate_binary() -> str:
    """The console script next to the running interpreter (the project's venv)."""
    candidate = Path(sys.executable).parent / "dbgate"
    if not candidate.exists():
        raise RuntimeError(f"{candidate} not found: run 'make install' first")
    return str(candidate)


# A fixed scratch key (32 bytes, hex): tokens only need to agree across the bench's replicas.
BENCH_PII_KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"


# The streaming benchmark reads a million rows with a WHERE no unique key pins: the
# default pack stops that at 1,000 rows (54000). A rule like one an operator writes for
# a reporting agent lifts the ceiling above the result for these tables only, so the
# run measures streaming *under* a max_rows limit (the relay counts every row).
BENCH_RULES = """\
version: 1
rules:
  - name: bench-streaming-reads
    match:
      identities: [bench]
      categories: [read]
      tables: [bench_stream, bench_stream_pii]
    action: allow
    max_rows: 2000000
    max_rows_per_window: 100000000
    window: 1h
  - name: bench-pgbench-reads
    description: the default pack's row limit, a window pgbench cannot exhaust (still counted)
    match:
      identities: [bench]
      categories: [read]
      tables: ["pgbench_*"]
    action: allow
    max_rows: 1000
    max_rows_per_window: 1000000000
    window: 1h
"""

#: "dbgate-approvals": the same row limit on pgbench's tables, with no rows-per-window
#: rule there, so its state database holds approvals only (the audit trail is off).
APPROVALS_ONLY_RULES = BENCH_RULES.replace(
    """    max_rows: 1000
    max_rows_per_window: 1000000000
    window: 1h
""",
    """    max_rows: 1000
""",
)
assert APPROVALS_ONLY_RULES != BENCH_RULES

#: "dbgate-nolimits": the same, with pgbench's tables free of every run-time limit, so
#: "limits on/off" (dbgate/dbgate-nolimits) is what the row and change limits cost.
NO_LIMITS_RULES = (
    BENCH_RULES
    + """  - name: bench-pgbench-unlimited
    match:
      identities: [bench]
      categories: [read, write]
      tables: ["pgbench_*"]
    action: allow
"""
)


def write_rules(directory: Path, extra_rules: str = BENCH_RULES) -> Path:
    """The shipped pack plus one file of rules tried first (docs/rules.md, Recipes):
    by default the benchmark's; the tests pass their own."""
    from dbgate.policy.rules import default_rules_dir

    directory.mkdir(parents=True, exist_ok=True)
    for source in default_rules_dir().glob("*.yaml"):
        (directory / source.name).write_bytes(source.read_bytes())
    (directory / "05-extra.yaml").write_text(extra_rules)
    return directory


def write_config(
    path: Path,
    port: int,
    upstream_host: str,
    upstream_port: int,
    upstream_user: str,
    upstream_password: str,
    identity_password: str,
    log_level: str,
    policy: str | None = None,
    approvals: Approvals | None = None,
    extra_rules: str = BENCH_RULES,
) -> None:
    config: dict[str, object] = {
        "listen": f"{LOOPBACK}:{port}",
        "upstream": {
            "host": upstream_host,
            "port": upstream_port,
            "user": upstream_user,
            "password": upstream_password,
        },
        "identities": [{"name": IDENTITY, "password": identity_password}],
        "log_level": log_level,
        "shutdown_grace_seconds": 2,
        # The benchmark's scratch server has only its superuser; dbgate warns and serves.
        "allow_privileged_upstream": True,
    }
    # Tokenization is on wherever the policy is; every replica needs the same key.
    config["rules_dir"] = str(write_rules(path.parent / "rules", extra_rules))
    config["pii"] = {"keys": [{"id": "bench", "secret": BENCH_PII_KEY}]}
    if policy is not None:
        config["policy"] = policy  # "off": relay without inspection (a diagnostic)
    if approvals is not None:  # the approval service and its API, on a state database
        config["state"] = {"dsn": approvals.state_dsn}
        config["web"] = {"listen": f"{LOOPBACK}:{approvals.web_port}"}
        config["approvals"] = {"replica_id": approvals.replica_id}
        audit: dict[str, object] = dict(approvals.audit_settings)
        if not approvals.audit:
            audit["enabled"] = False
        if audit:
            config["audit"] = audit
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


async def _smoke(target: Target) -> None:
    conn = await asyncio.wait_for(asyncpg.connect(**target.asyncpg_kwargs()), 15)  # type: ignore[arg-type]
    try:
        value = await asyncio.wait_for(conn.fetchval("SELECT 41 + 1"), 15)
        if value != 42:
            raise RuntimeError(f"SELECT 41 + 1 through dbgate returned {value!r}")
    finally:
        await conn.close()


class Dbgate:
    """A running ``dbgate serve`` and the target that reaches it."""

    def __init__(
        self,
        work_dir: Path,
        upstream_host: str,
        upstream_port: int,
        upstream_user: str,
        upstream_password: str,
        identity_password: str,
        dbname: str,
        extra_args: list[str] | None = None,
        log_level: str = "info",
        name: str = "dbgate",
        policy: str | None = None,
        approvals: Approvals | None = None,
        extra_rules: str = BENCH_RULES,
    ) -> None:
        work_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config_path = work_dir / "dbgate.yaml"
        write_config(
            self.config_path,
            self.port,
            upstream_host,
            upstream_port,
            upstream_user,
            upstream_password,
            identity_password,
            log_level,
            policy,
            approvals,
            extra_rules,
        )
        self.approvals = approvals
        self.target = Target(name, LOOPBACK, self.port, IDENTITY, identity_password, dbname)
        extra = list(extra_args or [])
        if "--workers" not in extra:  # one process unless asked: what the numbers compare
            extra = ["--workers", "1", *extra]
        self.workers = int(extra[extra.index("--workers") + 1])
        self.log_path = work_dir / "dbgate.log"
        self.argv = [dbgate_binary(), "serve", "-c", str(self.config_path), *extra]
        self.process = ManagedProcess(name, self.argv, work_dir / "dbgate.log")
        self.target.pgid = self.process.pid  # its own session: group id == pid

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Listening, and a real query round-trips (not just an open port)."""
        try:
            wait_for_port(LOOPBACK, self.port, timeout, self.process.proc)
            uvloop.run(_smoke(self.target))
            if self.workers > 1:  # every worker serving, not only the first
                self._wait_for_log(f"{self.workers} workers serving", timeout)
        except (
            RuntimeError,
            OSError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            TimeoutError,
        ) as e:
            raise RuntimeError(
                f"{type(e).__name__}: {e}\n--- dbgate.log (tail) ---\n{self.process.log_tail()}"
            ) from None

    def _wait_for_log(self, fragment: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while fragment not in self.log_path.read_text(errors="replace"):
            if time.monotonic() > deadline or not self.process.alive():
                raise RuntimeError(f"no {fragment!r} in dbgate.log")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.alive()

    def stop(self) -> None:
        self.process.stop()
