"""Held statements from psql, decided with the API (as ``curl`` would) or the CLI.

psql speaks the simple protocol only, prints notices on stderr as they arrive, and
sends a CancelRequest on SIGINT: the test reads its stderr up to the hold notice,
decides, and checks what psql printed and its exit code — what an agent's shell
script sees.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.holds.harness import APPROVER, PUBLIC_URL, HoldsEnv, request_id

PSQL = shutil.which("psql") or "/usr/bin/psql"
DBGATE = str(Path(sys.executable).parent / "dbgate")


def env(**extra: str) -> dict[str, str]:
    out = {**os.environ, "LC_ALL": "C.UTF-8", "PGCONNECT_TIMEOUT": "10", "PSQLRC": "/dev/null"}
    for var in ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGOPTIONS"):
        out.pop(var, None)
    out.update(extra)
    return out


class Psql:
    """A psql process running ``args``; its stderr is read line by line."""

    def __init__(self, dsn: str, *args: str, stdin: str | None = None, **environ: str) -> None:
        self.proc = subprocess.Popen(
            [PSQL, "-X", "-P", "pager=off", "-d", dsn, *args],
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(**environ),
        )
        if stdin is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(stdin)
            self.proc.stdin.close()
            self.proc.stdin = None  # all sent: communicate() must not touch it
        self.err_lines: list[str] = []

    def held(self) -> int:
        """Read stderr up to the hold notice and its DETAIL; the request id."""
        assert self.proc.stderr is not None
        while True:
            line = self.proc.stderr.readline()
            assert line, f"psql ended without a hold notice: {self.err_lines}"
            self.err_lines.append(line)
            if line.startswith("NOTICE:  dbgate: statement held for approval"):
                rid = request_id(line)
                detail = self.proc.stderr.readline()
                self.err_lines.append(detail)
                assert detail == f"DETAIL:  Decide at {PUBLIC_URL}/approvals/{rid}\n"
                return rid

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, out, "".join(self.err_lines) + err


@pytest.fixture
def psqls() -> Iterator[list[Psql]]:
    started: list[Psql] = []
    yield started
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(10)


def run(psqls: list[Psql], holds: HoldsEnv, *args: str, **kw: str) -> Psql:
    p = Psql(holds.dsn, *args, **kw)
    psqls.append(p)
    return p


def test_approved_with_the_api(holds: HoldsEnv, psqls: list[Psql]) -> None:
    t = holds.table("psql_approved", 3)
    p = run(psqls, holds, "-c", f"DELETE FROM {t}")
    rid = p.held()
    holds.app.approve(rid, "go ahead")
    code, out, err = p.finish()
    assert (code, out) == (0, "DELETE 3\n"), err
    assert holds.count(t) == 0


def test_approved_with_the_cli(holds: HoldsEnv, psqls: list[Psql]) -> None:
    t = holds.table("psql_cli", 3)
    p = run(psqls, holds, "-c", f"UPDATE {t} SET note = 'cli'")
    rid = p.held()
    state_dsn = holds.pg_server.dsn(holds.state_db)
    cli = subprocess.run(
        [DBGATE, "approvals", "approve", str(rid), "--dsn", state_dsn, "--as", APPROVER],
        capture_output=True,
        text=True,
        timeout=60,
        env=env(),
    )
    assert cli.returncode == 0, cli.stderr
    code, out, err = p.finish()
    assert (code, out) == (0, "UPDATE 3\n"), err
    assert holds.notes(t) == ["cli"] * 3
    assert holds.app.wait_status(rid, "executed")["decided_by"] == [APPROVER]


def test_rejected_expired_and_cancelled(holds: HoldsEnv, psqls: list[Psql]) -> None:
    t = holds.table("psql_rejected", 3)
    p = run(psqls, holds, "-c", f"TRUNCATE {t}")
    rid = p.held()
    holds.app.reject(rid, "needs a ticket")
    code, out, err = p.finish()
    assert code == 1 and out == ""
    assert (
        f"ERROR:  dbgate: approval request {rid} was rejected by {APPROVER}: needs a ticket\n"
        in err
    )
    assert "DETAIL:  the statement needed approval: removes every row of psql_rejected" in err
    assert "HINT:  " in err and "hold-destructive" in err

    e = holds.table("expiring_psql", 3)
    p = run(psqls, holds, "-c", f"DELETE FROM {e}")
    code, out, err = p.finish()
    rid = request_id(err)
    assert code == 1
    assert (
        f"ERROR:  dbgate: approval request {rid} expired before anyone decided; "
        "the statement was not run\n"
    ) in err
    assert f"HINT:  ask an approver to look at {PUBLIC_URL}/approvals/{rid}\n" in err

    p = run(psqls, holds, "-c", f"DELETE FROM {t}")
    rid = p.held()
    p.proc.send_signal(signal.SIGINT)  # Ctrl-C: psql sends a CancelRequest
    code, out, err = p.finish()
    assert code == 1 and "ERROR:  canceling statement due to user request\n" in err
    assert holds.app.request(rid)["status"] == "withdrawn"
    assert holds.count(t) == 3 and holds.count(e) == 3


def test_killed_psql_withdraws(holds: HoldsEnv, psqls: list[Psql]) -> None:
    t = holds.table("psql_killed", 3)
    p = run(psqls, holds, "-c", f"DELETE FROM {t}")
    rid = p.held()
    p.proc.kill()
    p.proc.wait(10)
    assert holds.app.wait_status(rid, "withdrawn")["status"] == "withdrawn"
    status, _ = holds.app.api("POST", f"/api/approvals/{rid}/approve", body={})
    assert status == 409
    assert holds.count(t) == 3


def test_approve_then_retry(holds: HoldsEnv, psqls: list[Psql]) -> None:
    t = holds.table("retry_psql", 3)
    sql = f"UPDATE {t} SET note = 'retried'"
    code, _, err = run(psqls, holds, "-c", sql).finish()
    rid = request_id(err)
    assert code == 1
    assert f"NOTICE:  dbgate: statement needs approval (request {rid})" in err
    assert "send the identical statement again once it is approved" in err
    holds.app.approve(rid)
    code, out, err = run(psqls, holds, "-c", sql).finish()
    assert (code, out) == (0, "UPDATE 3\n"), err
    code, _, err = run(psqls, holds, "-c", sql).finish()
    assert code == 1 and request_id(err) > rid  # exactly once


def test_a_transaction_script(holds: HoldsEnv, psqls: list[Psql]) -> None:
    t = holds.table("psql_tx", 3)
    script = (
        "BEGIN;\n"
        f"INSERT INTO {t} (id) VALUES (10);\n"
        f"DELETE FROM {t};\n"
        "SELECT 1;\n"
        "ROLLBACK;\n"
        f"SELECT count(*) FROM {t};\n"
    )
    p = run(psqls, holds, "-A", "-t", stdin=script)
    holds.app.reject(p.held(), "not now")
    code, out, err = p.finish()
    assert code == 0 and out == "BEGIN\nINSERT 0 1\nROLLBACK\n3\n", (out, err)
    assert "rejected by alice: not now" in err
    assert (
        "ERROR:  current transaction is aborted, commands ignored until end of transaction block"
    ) in err
    assert holds.count(t) == 3


def test_a_multi_statement_command_and_a_declared_purpose(
    holds: HoldsEnv, psqls: list[Psql]
) -> None:
    t = holds.table("psql_multi", 3)
    sql = (
        f"SET dbgate.model = 'psql-model'; UPDATE {t} SET note = 'x'; DELETE FROM {t} WHERE id = 1"
    )
    p = run(psqls, holds, "-c", sql, PGOPTIONS=r"-c dbgate.purpose=monthly\ cleanup")
    rid = p.held()
    row = holds.app.request(rid)
    assert row["statement"] == sql
    assert (row["purpose"], row["model"]) == ("monthly cleanup", "psql-model")
    holds.app.approve(rid)
    code, out, err = p.finish()
    assert (code, out) == (0, "SET\nUPDATE 3\nDELETE 1\n"), err
    assert holds.notes(t) == ["x"] * 2
