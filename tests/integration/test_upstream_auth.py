"""dbgate logs in upstream with whatever the server asks for: SCRAM, md5, cleartext, trust.

SCRAM is what every other integration test uses; this file gives a dedicated server
a pg_hba.conf that asks each of these roles for a different method.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from dbgate.embedded import EmbeddedPostgres

METHODS = {"md5_role": "md5", "password_role": "password", "trust_role": "trust"}


@pytest.fixture(scope="module")
def mixed_auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(tmp_path_factory.mktemp("upstream-auth") / "pg").start()
    try:
        pg.psql(
            "set password_encryption = 'md5';"
            "create role md5_role login password 'md5-pw';"
            "reset password_encryption;"
            "create role password_role login password 'clear-pw';"
            "create role trust_role login;"
        )
        hba = Path(pg.pgdata) / "pg_hba.conf"
        lines = [f"host all {role} 127.0.0.1/32 {method}" for role, method in METHODS.items()]
        hba.write_text("\n".join(lines) + "\n" + hba.read_text())
        pg.psql("select pg_reload_conf()")
        yield pg
    finally:
        pg.stop()


@pytest.mark.parametrize(
    ("role", "password"),
    [("md5_role", "md5-pw"), ("password_role", "clear-pw"), ("trust_role", None)],
)
async def test_upstream_auth_methods(
    mixed_auth_server: EmbeddedPostgres, make_proxy: Any, role: str, password: str | None
) -> None:
    proxy = make_proxy(
        upstream={
            "host": mixed_auth_server.host,
            "port": mixed_auth_server.port,
            "user": role,
            "password": password,
        }
    )
    conn = await asyncpg.connect(proxy.dsn("postgres"))
    try:
        assert await conn.fetchval("select current_user") == role
    finally:
        await conn.close()


def test_md5_role_really_has_an_md5_password(mixed_auth_server: EmbeddedPostgres) -> None:
    # Otherwise the server would silently use SCRAM for md5_role and the md5 path
    # above would be untested.
    out = mixed_auth_server.psql(
        "select left(rolpassword, 3) from pg_authid where rolname = 'md5_role'"
    )
    assert "md5" in out


async def test_wrong_upstream_password_gives_the_server_error(
    mixed_auth_server: EmbeddedPostgres, make_proxy: Any
) -> None:
    proxy = make_proxy(
        upstream={
            "host": mixed_auth_server.host,
            "port": mixed_auth_server.port,
            "user": "md5_role",
            "password": "not-it",
        }
    )
    with pytest.raises(asyncpg.InvalidPasswordError) as info:
        await asyncpg.connect(proxy.dsn("postgres"))
    assert "md5_role" in str(info.value)  # the server's words, about the upstream role
