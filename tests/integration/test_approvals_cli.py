"""``dbgate approvals …`` and ``dbgate approvers …`` against a real state database.

The commands run their own event loop (``asyncio.run``), so the async tests call
them in a worker thread while the hold waits on the test's loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dbgate.approvals.model import HoldStatus
from dbgate.cli import app
from tests.integration.approvals_helpers import (
    PII_SQL,
    PII_VALUES,
    Notices,
    drop_database,
    fresh_database,
    make_request,
    running_service,
)

DB = "dbgate_approvals_cli_test"
runner = CliRunner()


@pytest.fixture(scope="module")
async def state_dsn(pg_server) -> AsyncIterator[str]:
    dsn = await fresh_database(pg_server, DB)
    yield dsn
    await drop_database(pg_server, DB)


def cli(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), input=input)
    return result.exit_code, result.stdout, result.stderr


async def acli(*args: str, input: str | None = None) -> tuple[int, str, str]:
    return await asyncio.to_thread(cli, *args, input=input)


@pytest.fixture(scope="module")
async def accounts(state_dsn) -> dict[str, str]:
    """alice (dba), bob (dba), olga (owner of 'agent', via the config file)."""
    for name, group in [("alice", "dba"), ("bob", "dba"), ("olga", "dba")]:
        code, out, err = await acli(
            "approvers", "add", name, "--group", group, "--no-password", "--dsn", state_dsn
        )
        assert code == 0, err
        assert f"approver {name} added (groups: {group})" in out
    return {"dsn": state_dsn}


async def test_approvers_add_token_list_and_revoke(state_dsn, accounts) -> None:
    code, out, err = await acli(
        "approvers",
        "add",
        "paula",
        "-g",
        "dba",
        "-g",
        "security",
        "--password-stdin",
        "--dsn",
        state_dsn,
        input="long enough secret\n",
    )
    assert code == 0 and "groups: dba, security" in out, err
    code, _, err = await acli("approvers", "add", "paula", "--no-password", "--dsn", state_dsn)
    assert code == 1 and "already exists" in err
    code, _, err = await acli(
        "approvers", "add", "shorty", "--password-stdin", "--dsn", state_dsn, input="short\n"
    )
    assert code == 1 and "at least 8 characters" in err
    code, _, err = await acli("approvers", "add", "bad name!", "--no-password", "--dsn", state_dsn)
    assert code == 1 and "approver name" in err

    code, token, err = await acli(
        "approvers", "token", "paula", "--days", "7", "--label", "laptop", "--dsn", state_dsn
    )
    token = token.strip()
    assert code == 0 and re.fullmatch(r"dbg_[A-Za-z0-9_-]{43}", token), (token, err)
    token_id = re.search(r"token (\d+) for paula, valid 7 days", err).group(1)  # type: ignore[union-attr]
    code, _, err = await acli("approvers", "token", "nobody", "--dsn", state_dsn)
    assert code == 1 and "no approver named 'nobody'" in err

    async with running_service(state_dsn, replica="cli-check") as svc:
        assert (await svc.accounts.authenticate_token(token)).name == "paula"
        code, listed, _ = await acli("approvers", "list", "--json", "--dsn", state_dsn)
        paula = next(a for a in json.loads(listed) if a["name"] == "paula")
        assert paula["groups"] == ["dba", "security"] and paula["password"] is True
        assert paula["tokens"][0]["label"] == "laptop" and not paula["tokens"][0]["revoked"]
        assert token not in listed
        code, text, _ = await acli("approvers", "list", "--dsn", state_dsn)
        assert f"token {token_id} 'laptop': active" in text

        code, out, _ = await acli("approvers", "revoke-token", token_id, "--dsn", state_dsn)
        assert code == 0 and f"token {token_id} revoked" in out
        from dbgate.approvals.errors import Unauthorized

        with pytest.raises(Unauthorized, match="revoked"):
            await svc.accounts.authenticate_token(token)
        _, second = await svc.accounts.issue_token("paula")
        code, out, _ = await acli("approvers", "revoke-token", second, "--dsn", state_dsn)
        assert code == 0
        _, third = await svc.accounts.issue_token("paula")
        code, out, _ = await acli("approvers", "revoke-token", "--all", "paula", "--dsn", state_dsn)
        assert code == 0 and "1 token(s) of paula revoked" in out
        with pytest.raises(Unauthorized):
            await svc.accounts.authenticate_token(third)
    code, _, err = await acli("approvers", "revoke-token", "--dsn", state_dsn)
    assert code == 1 and "name one token" in err
    code, _, err = await acli("approvers", "revoke-token", "nonsense", "--dsn", state_dsn)
    assert code == 1 and "neither a token id nor a token" in err


async def test_list_show_and_approve_a_held_statement(state_dsn, accounts) -> None:
    async with running_service(state_dsn, replica="cli-holder") as svc:
        notices = Notices()
        task = asyncio.create_task(svc.hold(make_request(PII_SQL, ("4111111111111111",)), notices))
        rid = await notices.request_id()

        code, out, _ = await acli("approvals", "list", "--dsn", state_dsn)
        assert code == 0 and re.search(rf"^\s*{rid}\s+pending\s+agent\s", out, re.M)
        code, out, _ = await acli("approvals", "show", str(rid), "--dsn", state_dsn)
        assert code == 0
        assert f"request     {rid}  (pending, wait)" in out
        assert "'<email>'" in out and "parameters  '<card>'" in out
        assert "rule        hold-destructive: destructive statements are held" in out
        code, out, _ = await acli("approvals", "show", str(rid), "--json", "--dsn", state_dsn)
        assert json.loads(out)["id"] == str(rid)
        code, listed, _ = await acli(
            "approvals", "list", "--status", "all", "--json", "--dsn", state_dsn
        )
        assert any(item["id"] == str(rid) for item in json.loads(listed))
        for text in (out, listed):
            for raw in PII_VALUES:
                assert raw not in text

        code, out, err = await acli(
            "approvals",
            "approve",
            str(rid),
            "--as",
            "alice",
            "--reason",
            "checked",
            "--dsn",
            state_dsn,
        )
        assert code == 0 and f"request {rid} approved by alice" in out, err
        outcome = await task
        assert outcome.status is HoldStatus.APPROVED and outcome.reason == "checked"
        code, out, _ = await acli("approvals", "show", str(rid), "--dsn", state_dsn)
        assert "decision    approve by alice via cli" in out

        code, _, err = await acli(
            "approvals", "reject", str(rid), "--as", "bob", "--reason", "late", "--dsn", state_dsn
        )
        assert code == 1 and "already approved" in err


async def test_refusals_from_the_shell(state_dsn, accounts, tmp_path: Path) -> None:
    async with running_service(state_dsn, replica="cli-refusals") as svc:
        outcome = await svc.hold(make_request(wait=0, approvals_needed=2), Notices())
        rid = outcome.request_id

        code, _, err = await acli("approvals", "reject", rid, "--as", "alice", "--dsn", state_dsn)
        assert code == 1 and "a reason is required" in err
        code, _, err = await acli(
            "approvals", "approve", rid, "--as", "mallory", "--dsn", state_dsn
        )
        assert code == 1 and "no approver named 'mallory'" in err
        code, _, err = await acli(
            "approvals", "approve", "987654", "--as", "alice", "--dsn", state_dsn
        )
        assert code == 1 and "does not exist" in err
        code, _, err = await acli("approvals", "show", "x1", "--dsn", state_dsn)
        assert code == 1 and "not a request id" in err

        # Owners come from the config's identities[].owners.
        config = tmp_path / "dbgate.yaml"
        config.write_text(
            "state:\n  dsn: " + state_dsn + "\n"
            "identities:\n  - name: agent\n    password: x\n    owners: [olga]\n"
        )
        code, _, err = await acli("approvals", "approve", rid, "--as", "olga", "-c", str(config))
        assert code == 1 and "owns identity 'agent'" in err

        code, out, _ = await acli("approvals", "approve", rid, "--as", "alice", "-c", str(config))
        assert code == 0 and f"request {rid}: approval by alice recorded; 1 of 2 approvals" in out
        code, _, err = await acli("approvals", "approve", rid, "--as", "alice", "--dsn", state_dsn)
        assert code == 1 and "already decided" in err
        code, out, _ = await acli("approvals", "approve", rid, "--as", "bob", "--dsn", state_dsn)
        assert code == 0 and f"request {rid} approved by alice, bob" in out


def test_no_or_unreachable_state_database_exits_2(tmp_path: Path) -> None:
    env_free = {k: v for k, v in os.environ.items() if k != "DBGATE__STATE__DSN"}
    result = runner.invoke(app, ["approvals", "list"], env=env_free)
    assert result.exit_code == 2 and "give the state database" in result.stderr
    code, _, err = cli("approvals", "list", "--dsn", "postgresql://x:pw@127.0.0.1:1/state")
    assert code == 2 and "cannot reach the state database" in err and "pw" not in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("state: [\n")
    code, _, err = cli("approvals", "list", "-c", str(bad))
    assert code == 2 and "invalid YAML" in err


def test_the_installed_command_runs(state_dsn, accounts) -> None:
    env = dict(os.environ, DBGATE__STATE__DSN=state_dsn)
    done = subprocess.run(
        [sys.executable, "-m", "dbgate", "approvers", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "alice  groups: dba  [token-only]" in done.stdout
