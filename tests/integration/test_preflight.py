"""The least-privilege preflight against a real server, and ``dbgate serve`` acting on it.

Roles with each dangerous attribute, and roles that reach one through membership, are
created on the session server with a unique suffix and dropped afterwards; each gets
its own identity in one config, so one preflight run answers for all of them.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from dbgate.config import Config
from dbgate.preflight import check_upstream_privileges, privileged_upstream_roles
from tests.conftest import PgServer

DBGATE = Path(sys.executable).with_name("dbgate")
IDENTITY_PASSWORD = "preflight-identity-pw"


@dataclass
class Roles:
    """Role names by purpose, all sharing one password."""

    names: dict[str, str]
    password: str
    server_major: int

    def __getitem__(self, purpose: str) -> str:
        return self.names[purpose]


@pytest.fixture
async def roles(pg_server: PgServer) -> AsyncIterator[Roles]:
    suffix = secrets.token_hex(4)
    password = secrets.token_urlsafe(12)
    names = {
        p: f"dbgate_pf_{p}_{suffix}"
        for p in (
            "plain",
            "super",
            "bypass",
            "creator",
            "admin_group",
            "member",
            "middle",
            "chained",
            "no_set",
            "nologin",
        )
    }
    q = {p: f'"{n}"' for p, n in names.items()}
    pw = password.replace("'", "''")
    conn = await asyncpg.connect(pg_server.dsn())
    try:
        major = conn.get_server_version().major
        for statement in (
            f"CREATE ROLE {q['plain']} LOGIN PASSWORD '{pw}'",
            f"CREATE ROLE {q['super']} LOGIN SUPERUSER PASSWORD '{pw}'",
            f"CREATE ROLE {q['bypass']} LOGIN BYPASSRLS PASSWORD '{pw}'",
            f"CREATE ROLE {q['creator']} LOGIN CREATEROLE PASSWORD '{pw}'",
            f"CREATE ROLE {q['admin_group']} NOLOGIN SUPERUSER",
            f"CREATE ROLE {q['member']} LOGIN PASSWORD '{pw}'",
            f"GRANT {q['admin_group']} TO {q['member']}",
            f"CREATE ROLE {q['middle']} NOLOGIN",
            f"GRANT {q['admin_group']} TO {q['middle']}",
            f"CREATE ROLE {q['chained']} LOGIN PASSWORD '{pw}'",
            f"GRANT {q['middle']} TO {q['chained']}",
            f"CREATE ROLE {q['no_set']} LOGIN PASSWORD '{pw}'",
            f"CREATE ROLE {q['nologin']} NOLOGIN PASSWORD '{pw}'",
        ):
            await conn.execute(statement)
        if major >= 16:
            # A membership without SET cannot become the superuser role.
            await conn.execute(
                f"GRANT {q['admin_group']} TO {q['no_set']} WITH SET FALSE, INHERIT TRUE"
            )
        yield Roles(names, password, major)
    finally:
        for purpose in reversed(list(names)):
            await conn.execute(f"DROP ROLE IF EXISTS {q[purpose]}")
        await conn.close()


def _config(pg_server: PgServer, identities: list[dict[str, Any]], **extra: Any) -> Config:
    return Config.model_validate(
        {
            "listen": "127.0.0.1:0",
            "upstream": {
                "host": pg_server.host,
                "port": pg_server.port,
                "user": pg_server.user,
                "password": pg_server.password,
            },
            "identities": identities,
            **extra,
        }
    )


def _identity(name: str, upstream_user: str | None = None, password: str | None = None) -> dict:
    ident: dict[str, Any] = {"name": name, "password": IDENTITY_PASSWORD}
    if upstream_user is not None:
        ident.update(upstream_user=upstream_user, upstream_password=password)
    return ident


def _by_identity(problems: list[str], names: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {name: [] for name in names}
    for problem in problems:
        owners = [n for n in names if problem.startswith(f"identity {n!r} ")]
        assert len(owners) == 1, problem
        found[owners[0]].append(problem)
    return found


async def test_privileged_roles_are_named_with_what_is_wrong_and_the_fix(
    pg_server: PgServer, roles: Roles
) -> None:
    purposes = ["plain", "super", "bypass", "creator", "member", "chained", "no_set", "nologin"]
    identities = [_identity(f"id_{p}", roles[p], roles.password) for p in purposes]
    identities.append(_identity("id_default"))  # no own credentials: upstream.user
    identities.append(_identity("id_wrong_pw", roles["plain"], "not-the-password"))
    problems = await privileged_upstream_roles(_config(pg_server, identities))
    found = _by_identity(problems, [i["name"] for i in identities])

    assert found["id_plain"] == []
    if roles.server_major >= 16:
        assert found["id_no_set"] == []

    fix = "identities[].upstream_user and upstream_password"
    allow = "allow_privileged_upstream: true"
    (su,) = found["id_super"]
    assert su.startswith(f"identity 'id_super' connects upstream as role {roles['super']!r}, ")
    assert "which is a superuser" in su and fix in su and allow in su
    (bypass,) = found["id_bypass"]
    assert f"role {roles['bypass']!r}, which has BYPASSRLS" in bypass and fix in bypass
    (creator,) = found["id_creator"]
    assert f"role {roles['creator']!r}, which can create roles (CREATEROLE)" in creator
    assert fix in creator

    (member,) = found["id_member"]
    assert f"role {roles['member']!r}, which can SET ROLE to {roles['admin_group']!r}" in member
    assert "which is a superuser" in member
    assert f'(REVOKE "{roles["admin_group"]}" FROM "{roles["member"]}")' in member
    # Through a chain of memberships: chained -> middle -> admin_group.
    (chained,) = found["id_chained"]
    assert f"role {roles['chained']!r}, which can SET ROLE to {roles['admin_group']!r}" in chained
    assert f'(REVOKE "{roles["middle"]}" FROM "{roles["chained"]}")' in chained

    # The upstream section's superuser, used by an identity without its own role: one
    # line (a superuser may become every role; they are not listed).
    (default,) = found["id_default"]
    assert default.startswith(f"identity 'id_default' connects upstream as role {pg_server.user!r}")
    assert "which is a superuser" in default

    # Roles that cannot be vetted are reported too (fail closed).
    (wrong_pw,) = found["id_wrong_pw"]
    assert "could not be checked" in wrong_pw and "password authentication failed" in wrong_pw
    (nologin,) = found["id_nologin"]
    assert "could not be checked" in nologin and "not permitted to log in" in nologin


async def test_plain_roles_pass(pg_server: PgServer, roles: Roles) -> None:
    config = _config(
        pg_server,
        [
            _identity("one", roles["plain"], roles.password),
            _identity("two", roles["plain"], roles.password),
        ],
    )
    assert await privileged_upstream_roles(config) == []
    assert await check_upstream_privileges(config) is True


async def test_check_prints_one_line_per_problem_or_warns_when_allowed(
    pg_server: PgServer,
    roles: Roles,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    identities = [
        _identity("a", roles["super"], roles.password),
        _identity("b", roles["bypass"], roles.password),
        _identity("c", roles["plain"], roles.password),
    ]
    out = tmp_path / "stderr.txt"
    with out.open("w") as stderr:
        assert await check_upstream_privileges(_config(pg_server, identities), stderr=stderr) is (
            False
        )
    lines = out.read_text().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("dbgate: identity 'a' connects upstream as role ")
    assert lines[1].startswith("dbgate: identity 'b' connects upstream as role ")

    allowed = _config(pg_server, identities, allow_privileged_upstream=True)
    with out.open("w") as stderr, caplog.at_level("WARNING", logger="dbgate.preflight"):
        assert await check_upstream_privileges(allowed, stderr=stderr) is True
    assert out.read_text() == ""
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2
    assert all(w.startswith("allow_privileged_upstream is set: identity ") for w in warnings)
    assert roles["super"] in warnings[0] and roles["bypass"] in warnings[1]


# -- dbgate serve ---------------------------------------------------------------------------


def _write_config(path: Path, pg_server: PgServer, **extra: Any) -> Path:
    data = {
        "listen": "127.0.0.1:0",
        "upstream": {
            "host": pg_server.host,
            "port": pg_server.port,
            "user": pg_server.user,
            "password": pg_server.password,
        },
        "identities": [{"name": "agent", "password": IDENTITY_PASSWORD}],
        "shutdown_grace_seconds": 1,
        **extra,
    }
    path.write_text(yaml.safe_dump(data))
    return path


def _serve(config_file: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(DBGATE), "serve", "-c", str(config_file)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )


def test_serve_refuses_a_superuser_upstream(pg_server: PgServer, tmp_path: Path) -> None:
    proc = _serve(_write_config(tmp_path / "dbgate.yaml", pg_server))
    try:
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode != 0, stderr
    problems = [line for line in stderr.splitlines() if line.startswith("dbgate: identity")]
    assert problems == [
        f"dbgate: identity 'agent' connects upstream as role {pg_server.user!r}, which is a "
        "superuser, has BYPASSRLS (ignores row-level security) and can create roles "
        "(CREATEROLE): give the identity its own role with NOSUPERUSER NOBYPASSRLS "
        "NOCREATEROLE (identities[].upstream_user and upstream_password), or set "
        "allow_privileged_upstream: true to accept the risk"
    ]
    assert "dbgate listening" not in stderr


async def test_serve_starts_with_a_warning_when_allowed(
    pg_server: PgServer, pg_database: str, tmp_path: Path
) -> None:
    config = _write_config(tmp_path / "dbgate.yaml", pg_server, allow_privileged_upstream=True)
    proc = _serve(config)
    try:
        assert proc.stderr is not None
        seen: list[str] = []
        for line in proc.stderr:  # the log, up to the line that says it listens
            seen.append(line)
            if "dbgate listening on" in line:
                break
        else:
            pytest.fail(f"dbgate serve exited ({proc.wait()}) without listening:\n{''.join(seen)}")
        warnings = [line for line in seen if " WARNING dbgate.preflight: " in line]
        assert len(warnings) == 1, seen
        assert (
            f"allow_privileged_upstream is set: identity 'agent' connects upstream as role "
            f"{pg_server.user!r}, which is a superuser" in warnings[0]
        )
        port = int(seen[-1].rsplit(":", 1)[1])
        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=port,
            user="agent",
            password=IDENTITY_PASSWORD,
            database=pg_database,
        )
        try:
            assert await conn.fetchval("select 41 + 1") == 42
        finally:
            await conn.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
