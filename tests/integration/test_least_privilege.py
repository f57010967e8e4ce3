"""The demo's agent reaches PostgreSQL as a least-privilege role, not as the superuser.

The dataset, the role (:func:`dbgate.demo_data.ensure_agent_role`) and the proxy config
(:func:`dbgate.demo.build_config`) are the demo's own, on throwaway databases of the
session server; only the identity's allowed database is pointed at the throwaway copy
of ``demo``. With the policy off (a plain relay) every statement reaches the server,
which shows what the role itself may do when dbgate lets something through.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest

from dbgate.app import build_gate
from dbgate.config import Config
from dbgate.demo import AGENT_IDENTITY, build_config
from dbgate.demo_data import DEMO_TABLES, ensure_agent_role, ensure_database, load_demo_dataset
from dbgate.preflight import privileged_upstream_roles
from tests.conftest import PgServer
from tests.integration.conftest import RunningProxy

AGENT_PASSWORD = "agent-pw-for-least-privilege"


@dataclass
class DemoCopy:
    """A throwaway ``demo`` with its role, and the demo's proxy config for it."""

    server: PgServer
    database: str
    state_database: str
    role: str
    role_password: str
    config: Config

    def admin_dsn(self, database: str | None = None) -> str:
        return self.server.dsn(database or self.database)

    def role_dsn(self, database: str) -> str:
        host = self.server.host
        return (
            f"postgresql://{quote(self.role)}:{quote(self.role_password)}"
            f"@{host}:{self.server.port}/{database}"
        )


async def _admin(server: PgServer, *statements: str) -> None:
    conn = await asyncpg.connect(server.dsn())
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
async def demo_copy(pg_server: PgServer) -> AsyncIterator[DemoCopy]:
    suffix = secrets.token_hex(4)
    database, state_database = f"dbgate_lp_demo_{suffix}", f"dbgate_lp_state_{suffix}"
    role, role_password = f"dbgate_agent_{suffix}", secrets.token_urlsafe(12)
    await ensure_database(pg_server.dsn(), database)
    await ensure_database(pg_server.dsn(), state_database)
    try:
        await load_demo_dataset(pg_server.dsn(database), customers=50)
        await ensure_agent_role(
            pg_server.dsn(database), role_password, role=role, state_database=state_database
        )
        config = build_config(
            pg_server, "127.0.0.1:0", AGENT_PASSWORD, role_password, upstream_role=role
        )
        identity = config.identity(AGENT_IDENTITY)
        assert identity is not None
        config = config.model_copy(
            update={"identities": [identity.model_copy(update={"databases": [database]})]}
        )
        yield DemoCopy(pg_server, database, state_database, role, role_password, config)
    finally:
        await _admin(
            pg_server,
            f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)',
            f'DROP DATABASE IF EXISTS "{state_database}" WITH (FORCE)',
            f'DROP ROLE IF EXISTS "{role}"',
        )


def _proxy(config: Config, **update: Any) -> RunningProxy:
    config = config.model_copy(update=update)
    inspector = build_gate(config) if config.policy == "enforce" else None
    return RunningProxy(config, inspector).start()


async def test_agent_runs_as_its_role_and_meets_the_servers_own_refusals(
    demo_copy: DemoCopy,
) -> None:
    proxy = _proxy(demo_copy.config, policy="off")  # a relay: everything reaches the server
    try:
        conn = await asyncpg.connect(proxy.dsn(demo_copy.database, AGENT_IDENTITY, AGENT_PASSWORD))
        try:
            assert await conn.fetchval("select current_user") == demo_copy.role
            assert await conn.fetchval("select session_user") == demo_copy.role
            assert await conn.fetchval("show is_superuser") == "off"
            # What the demo needs works: reads, and changes that use the sequences.
            assert await conn.fetchval("select count(*) from customers") == 50
            new_id = await conn.fetchval(
                "insert into orders (customer_id, total, status) values (1, 9.99, 'pending')"
                " returning id"
            )
            assert await conn.execute("update orders set total = 10 where id = $1", new_id) == (
                "UPDATE 1"
            )
            assert await conn.execute("delete from orders where id = $1", new_id) == "DELETE 1"
            # Superuser-only and beyond-the-demo actions fail with the server's own 42501.
            refusals = {
                "select * from pg_authid": "permission denied for table pg_authid",
                "create role dbgate_lp_escalate": "permission denied to create role",
                "truncate payments": "permission denied for table payments",
                "create table public.scratch (x int)": "permission denied for schema public",
                "create temporary table scratch (x int)": "permission denied to create temporary",
                "alter role current_user bypassrls": "permission denied to alter role",
            }
            for sql, server_words in refusals.items():
                with pytest.raises(asyncpg.InsufficientPrivilegeError) as refused:
                    await conn.execute(sql)
                assert refused.value.sqlstate == "42501", sql
                assert server_words in refused.value.message, (sql, refused.value.message)
        finally:
            await conn.close()
    finally:
        proxy.stop()


async def test_policy_lets_show_through_and_the_server_refuses_it(demo_copy: DemoCopy) -> None:
    """With the demo's real policy: SHOW is allowed by dbgate, the role stops it."""
    proxy = _proxy(demo_copy.config)
    try:
        conn = await asyncpg.connect(proxy.dsn(demo_copy.database, AGENT_IDENTITY, AGENT_PASSWORD))
        try:
            assert await conn.fetchval("show is_superuser") == "off"
            with pytest.raises(asyncpg.InsufficientPrivilegeError) as refused:
                await conn.fetchval("show data_directory")
            assert refused.value.sqlstate == "42501"
            assert 'permission denied to examine "data_directory"' in refused.value.message
        finally:
            await conn.close()
    finally:
        proxy.stop()


async def test_role_has_nothing_on_the_state_database(demo_copy: DemoCopy) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for database"):
        await asyncpg.connect(demo_copy.role_dsn(demo_copy.state_database))
    conn = await asyncpg.connect(demo_copy.admin_dsn())
    try:
        for privilege in ("CONNECT", "TEMPORARY", "CREATE"):
            assert not await conn.fetchval(
                "select has_database_privilege($1, $2, $3)",
                demo_copy.role,
                demo_copy.state_database,
                privilege,
            ), privilege
    finally:
        await conn.close()


async def _privileges(demo_copy: DemoCopy) -> dict[str, Any]:
    """Everything the role holds that the demo cares about, as the catalog says."""
    conn = await asyncpg.connect(demo_copy.admin_dsn())
    try:
        attributes = await conn.fetchrow(
            "select rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolreplication,"
            " rolcanlogin, rolconfig from pg_roles where rolname = $1",
            demo_copy.role,
        )
        memberships = await conn.fetch(
            "select roleid::regrole::text from pg_auth_members where member = $1::regrole",
            demo_copy.role,
        )
        tables = await conn.fetch(
            "select table_name, string_agg(privilege_type, ',' order by privilege_type)"
            " from information_schema.role_table_grants where grantee = $1"
            " group by table_name order by table_name",
            demo_copy.role,
        )
        sequences = await conn.fetch(
            "select c.relname, has_sequence_privilege($1, c.oid, 'USAGE'),"
            " has_sequence_privilege($1, c.oid, 'SELECT'),"
            " has_sequence_privilege($1, c.oid, 'UPDATE')"
            " from pg_class c where c.relkind = 'S' order by 1",
            demo_copy.role,
        )
        database = {
            p: await conn.fetchval(
                "select has_database_privilege($1, current_database(), $2)", demo_copy.role, p
            )
            for p in ("CONNECT", "TEMPORARY", "CREATE")
        }
        schema = {
            p: await conn.fetchval(
                "select has_schema_privilege($1, 'public', $2)", demo_copy.role, p
            )
            for p in ("USAGE", "CREATE")
        }
    finally:
        await conn.close()
    return {
        "attributes": tuple(attributes),
        "memberships": [r[0] for r in memberships],
        "tables": {r[0]: r[1] for r in tables},
        "sequences": [tuple(r) for r in sequences],
        "database": database,
        "schema": schema,
    }


EXPECTED_PRIVILEGES = {
    "attributes": (False, False, False, False, False, True, None),
    "memberships": [],
    "tables": dict.fromkeys(DEMO_TABLES, "DELETE,INSERT,SELECT,UPDATE"),
    "sequences": [
        ("customers_id_seq", True, True, False),
        ("orders_id_seq", True, True, False),
        ("payments_id_seq", True, True, False),
    ],
    "database": {"CONNECT": True, "TEMPORARY": False, "CREATE": False},
    "schema": {"USAGE": True, "CREATE": False},
}


async def test_ensure_agent_role_is_idempotent_and_takes_back_extras(
    demo_copy: DemoCopy,
) -> None:
    assert await _privileges(demo_copy) == EXPECTED_PRIVILEGES
    role = f'"{demo_copy.role}"'
    await _admin(
        demo_copy.server,
        f"ALTER ROLE {role} CREATEDB BYPASSRLS",
        f"ALTER ROLE {role} SET work_mem = '64MB'",
        f"GRANT pg_read_all_settings TO {role}",
    )
    conn = await asyncpg.connect(demo_copy.admin_dsn())
    try:
        await conn.execute(f"GRANT TRUNCATE, REFERENCES ON customers TO {role}")
        await conn.execute(f"GRANT UPDATE ON SEQUENCE orders_id_seq TO {role}")
        await conn.execute(f"GRANT CREATE ON SCHEMA public TO {role}")
        await conn.execute(f'GRANT TEMPORARY ON DATABASE "{demo_copy.database}" TO {role}')
    finally:
        await conn.close()
    assert await _privileges(demo_copy) != EXPECTED_PRIVILEGES

    for _ in range(2):
        await ensure_agent_role(
            demo_copy.admin_dsn(),
            demo_copy.role_password,
            role=demo_copy.role,
            state_database=demo_copy.state_database,
        )
        assert await _privileges(demo_copy) == EXPECTED_PRIVILEGES
    conn = await asyncpg.connect(demo_copy.role_dsn(demo_copy.database))  # password still works
    await conn.close()


async def test_demo_config_passes_the_preflight(demo_copy: DemoCopy) -> None:
    assert await privileged_upstream_roles(demo_copy.config) == []
