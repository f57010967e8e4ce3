"""The data server's own statement log (``log_statement = 'all'``) as the audit's
witness: what PostgreSQL logged as run for one backend, and the final statement
records of one client session, to compare in order.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from tests.integration.holds.harness import HoldsEnv, admin_execute

#: Where a log entry of the embedded server begins (log_line_prefix '%m [%p] ').
_ENTRY = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \S+ \[(\d+)\] ", re.MULTILINE)
#: What log_statement = 'all' writes for a statement the server runs.
_RAN = re.compile(r"LOG:  (statement: |execute (?:fetch from )?[^:]*: |fastpath function call: )")


#: What dbgate itself runs on the agent's upstream session, not the agent's statement
#: and not recorded (docs/audit.md, "What is not recorded"): its read of the server's
#: connection limits on a fresh session (dbgate/proxy/capacity.py), and the refusal
#: marker it sends in place of a refused simple Query (a DO block that raises).
_OWN = re.compile(
    r"^LOG:  statement: (?:SELECT pg_catalog\.current_setting\('max_connections'"
    r"|DO \$dbgate_[0-9a-f]{16}\$BEGIN RAISE EXCEPTION USING ERRCODE = '\w{5}',"
    r" MESSAGE = 'dbgate-refusal-[0-9a-f]{16}-\d+'; END\$dbgate_[0-9a-f]{16}\$$)"
)


def server_ran(log_file: Path, pid: int) -> list[str]:
    """What the server logged as run for backend ``pid``, in order."""
    return without_measuring([line for p, line in ran_since(log_file) if p == pid])


def ran_since(log_file: Path, offset: int = 0) -> list[tuple[int, str]]:
    """What the server logged as run after byte ``offset`` of its log, by whom (the
    backend pid), in order."""
    with log_file.open("rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    starts = list(_ENTRY.finditer(text))
    out = []
    for i, m in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        entry = text[m.end() : end].rstrip("\n")
        if _RAN.match(entry) and not _OWN.search(entry):
            out.append((int(m.group(1)), entry.removeprefix("LOG:  ")))
    return out


def without_measuring(ran: list[str]) -> list[str]:
    """``ran`` without what dbgate sends around a measured write (docs/audit.md): its
    set-up before the write, and after it the release of its savepoint, or the end of
    the transaction it opened."""
    out: list[str] = []
    after_write: bool | None = False
    for line in ran:
        if line.startswith("execute dbgate_measure_"):
            # the same around a write of the extended protocol, run as dbgate's own
            # prepared statement (its name carries the process's nonce)
            continue
        if line.startswith("statement: BEGIN; SAVEPOINT dbgate_measure_"):
            after_write = None  # the next line is the write
            continue
        if after_write is None:
            out.append(line)
            after_write = True
            continue
        if after_write:
            after_write = False
            if line.startswith(
                (
                    "statement: RELEASE SAVEPOINT dbgate_measure_",
                    "statement: ROLLBACK TO SAVEPOINT dbgate_measure_",
                )
            ) or line in ("statement: COMMIT", "statement: ROLLBACK"):
                continue
        out.append(line)
    return out


def recorded(env: HoldsEnv, app_name: str) -> list[tuple[str, str, str, str | None, int | None]]:
    """The final statement records of the sessions named ``app_name``, in order."""
    env.app.call(env.app.app.audit.flush())
    rows = env.app.rows(
        "SELECT event, decision, statement, outcome, rows FROM dbgate.audit_log"
        " WHERE kind = 'statement' AND event <> 'decided' AND application_name = $1"
        " ORDER BY chain, seq",
        app_name,
    )
    return [(r["event"], r["decision"], r["statement"], r["outcome"], r["rows"]) for r in rows]


def compare(env: HoldsEnv, log_file: Path, app_name: str, pid: int) -> tuple[list, list]:
    ran = server_ran(log_file, pid)
    recs = recorded(env, app_name)
    return ran, recs


def show(ran: list[str], recs: list) -> str:
    return (
        "server:\n  "
        + "\n  ".join(ran)
        + "\naudit:\n  "
        + "\n  ".join(" | ".join(str(x) for x in r) for r in recs)
    )


async def session_over(env: HoldsEnv, app: str, pid: int) -> None:
    """Wait until dbgate recorded the session's end and the server's backend is gone
    (so that both the trail and the server's log are complete)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    admin = await asyncpg.connect(env.admin_dsn)
    try:
        while True:
            await env.app.acall(env.app.app.audit.flush())
            ended = await env.app.acall(
                env.app._fetch(
                    "SELECT count(*) AS n FROM dbgate.audit_log WHERE kind = 'session'"
                    " AND event = 'disconnect' AND application_name = $1",
                    app,
                )
            )
            alive = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid
            )
            if ended[0]["n"] and not alive:
                return
            assert loop.time() < deadline, f"session {app} did not end (backend alive: {alive})"
            await asyncio.sleep(0.02)  # polling the state database and the server, bounded
    finally:
        await admin.close()


async def wait_running(env: HoldsEnv, pid: int, like: str) -> None:
    """Until the server runs a statement like ``like`` for backend ``pid``."""
    admin = await asyncpg.connect(env.admin_dsn)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while not await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND query LIKE $2"
            " AND state = 'active'",
            pid,
            like,
        ):
            assert loop.time() < deadline, f"the server never ran {like}"
            await asyncio.sleep(0.02)  # polling the server's own view, bounded
    finally:
        await admin.close()


def log_every_statement(env: HoldsEnv) -> Path:
    """Have the data server log every statement of ``env``'s data database (for the
    sessions opened from now on); the log file it writes to."""
    log_file = getattr(env.pg_server, "log_file", None)
    if log_file is None:
        pytest.skip("needs the embedded server, whose log this test reads")
    admin_execute(env.admin_dsn, f"ALTER DATABASE {env.data_db} SET log_statement = 'all'")
    return Path(log_file)


def verify_trail(state_dsn: str) -> None:
    """``dbgate audit verify`` passes on the state database."""
    done = subprocess.run(
        [sys.executable, "-m", "dbgate", "audit", "verify", "--dsn", state_dsn],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
