"""Fixtures of the real-client suite: the demo dataset behind a policy-enforcing dbgate.

Every test here runs an unmodified client (SQLAlchemy, pandas, pgcli, psql, pg_dump,
asyncpg, psycopg 3) twice — straight to PostgreSQL and through dbgate — against the
demo dataset (:mod:`dbgate.demo_data`), and compares. Unlike the driver matrix
(``test_driver_*.py``, an allow-everything relay), the proxy here enforces the
shipped default rule pack, as ``dbgate serve`` and ``dbgate demo`` do: the point is
that ordinary client work is *not* refused, and that what is refused is refused
cleanly and says why.

Both sides reach PostgreSQL as the same least-privilege role (``demo_role``: no
superuser, no BYPASSRLS, no CREATEROLE; DML on the demo tables only), as an agent
should (issue 7 item 5), so direct and through-dbgate runs are comparable and no
client takes a superuser-only path (pg_dump reads ``pg_subscription`` only then).
Objects a scenario needs beyond the dataset are created by the server's own user
(``admin_dsn``) and granted to the role, since DDL through dbgate is held.

Cost: one database, one role and one proxy for the whole session. The dataset is the demo's
own generator at a fifth of the demo's size (1,000 customers, ~4,000 orders,
~3,000 payments: enough that a whole-table read means something, generated in
about a second).
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from dbgate.demo_data import load_demo_dataset
from tests.conftest import ExternalPostgres, PgServer, _admin_execute
from tests.integration.conftest import (
    AGENT,
    AGENT_PASSWORD,
    SCRATCH_WRITES,
    RunningProxy,
    pack_with,
    proxy_config,
)


def agent_config(pg_server: PgServer, demo_role: DemoRole, **overrides: Any) -> Any:
    """A proxy config whose agent identity reaches PostgreSQL as ``demo_role``."""
    agent = {
        "name": AGENT,
        "password": AGENT_PASSWORD,
        "groups": ["agents"],
        "upstream_user": demo_role.name,
        "upstream_password": demo_role.password,
    }
    return proxy_config(pg_server, identities=[agent], **overrides)


def pii_config(pg_server: PgServer, demo_role: DemoRole) -> Any:
    """:func:`agent_config` with tokenization on, under a fresh random key."""
    key = base64.b64encode(os.urandom(32)).decode()
    return agent_config(pg_server, demo_role, pii={"keys": [{"id": "test", "secret": key}]})


def start_pii_proxy(pg_server: PgServer, demo_role: DemoRole) -> RunningProxy:
    """A running proxy with the policy gate and PII tokenization (:func:`pii_config`);
    the caller stops it."""
    from dbgate.app import build_gate
    from dbgate.gate.pii import PiiGate

    config = pii_config(pg_server, demo_role)
    pii = PiiGate(config)
    pii.check()
    return RunningProxy(
        config,
        inspector=build_gate(config, None, pii),
        observer=pii.held_cursors,
        message_filter=pii.filter,
    ).start()


#: Customers generated for the suite (the demo itself loads 5,000).
DEMO_CUSTOMERS = 1000


def run_async(coro: Any) -> Any:
    """Run a coroutine to completion from synchronous fixture code.

    In a worker thread, so it never meets pytest-asyncio's session loop.
    """
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@dataclass(frozen=True)
class DemoRole:
    """The least-privilege role both sides log in as."""

    name: str
    password: str


@pytest.fixture(scope="session")
def demo_role(pg_server: PgServer) -> Iterator[DemoRole]:
    """A login role as an agent's should be: no superuser, BYPASSRLS, CREATEROLE or
    CREATEDB (its privileges on the dataset are granted by ``demo_db``)."""
    role = DemoRole(f"clients_agent_{secrets.token_hex(4)}", secrets.token_urlsafe(18))
    _admin_execute(
        pg_server,
        f"CREATE ROLE {role.name} LOGIN PASSWORD '{role.password}' "
        "NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB",
    )
    try:
        yield role
    finally:
        _admin_execute(pg_server, f"DROP ROLE IF EXISTS {role.name}")


@pytest.fixture(scope="session")
def demo_db(pg_server: PgServer, demo_role: DemoRole) -> Iterator[str]:
    """Name of a database holding the demo dataset, loaded once per session.

    On the private embedded server it is called ``demo``, like the demo's own, so
    the demo's configuration (which admits its agent to ``demo`` only) can be
    tested against it; on an external server (``DBGATE_TEST_DSN``) a random name
    keeps concurrent sessions and any real ``demo`` database apart.
    """
    external = isinstance(pg_server, ExternalPostgres)
    name = f"dbgate_clients_{secrets.token_hex(4)}" if external else "demo"
    _admin_execute(
        pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'
    )
    try:
        counts = run_async(load_demo_dataset(pg_server.dsn(name), customers=DEMO_CUSTOMERS))
        assert counts["customers"] == DEMO_CUSTOMERS
        _admin_execute(
            pg_server,
            f'GRANT CONNECT ON DATABASE "{name}" TO {demo_role.name}',
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public "
            f"TO {demo_role.name}",
            f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {demo_role.name}",
            dbname=name,
        )
        yield name
    finally:
        _admin_execute(
            pg_server,
            f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
        )


def enforcing_inspector(config: Any) -> Any:
    """The inspector ``dbgate serve`` builds for ``config``: the real policy.

    The one place this suite names the policy's wiring, so a move of that wiring
    changes one line here.
    """
    from dbgate.app import build_gate

    return build_gate(config)


def enforcing_session_setup(inspector: Any) -> Any:
    """The session guards ``dbgate serve`` sets on upstream sessions, from the rules
    of ``inspector`` (as :class:`dbgate.app.App` wires them)."""
    from dbgate.policy.startup import StartupGuards

    return StartupGuards(inspector.ruleset)


@pytest.fixture(scope="session")
def gate(
    pg_server: PgServer, demo_role: DemoRole, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningProxy]:
    """A dbgate proxy enforcing the shipped default rule pack (as ``dbgate serve``),
    plus one rule for bulk writes to the suite's own scratch tables.

    Its agent identity reaches PostgreSQL as ``demo_role``.
    """
    rules = pack_with(tmp_path_factory.mktemp("client-rules"), SCRATCH_WRITES)
    config = agent_config(pg_server, demo_role, rules_dir=str(rules))
    assert config.policy == "enforce"
    inspector = enforcing_inspector(config)
    running = RunningProxy(
        config, inspector=inspector, session_setup=enforcing_session_setup(inspector)
    ).start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def admin_dsn(pg_server: PgServer, demo_db: str) -> str:
    """The demo database as the server's own user: for set-up only, never compared."""
    return pg_server.dsn(demo_db)


@pytest.fixture(scope="session")
def direct_dsn(pg_server: PgServer, demo_db: str, demo_role: DemoRole) -> str:
    """Straight to PostgreSQL as ``demo_role`` (the 'direct' side)."""
    parts = urlsplit(pg_server.dsn(demo_db))
    where = parts.netloc.rsplit("@", 1)[-1]
    auth = f"{quote(demo_role.name, safe='')}:{quote(demo_role.password, safe='')}"
    return urlunsplit(parts._replace(netloc=f"{auth}@{where}"))


@pytest.fixture(scope="session")
def gate_dsn(gate: RunningProxy, demo_db: str) -> str:
    """Through the enforcing dbgate, as its agent identity (the 'through dbgate' side)."""
    return gate.dsn(demo_db)


@pytest.fixture(scope="session")
def sides(direct_dsn: str, gate_dsn: str) -> dict[str, str]:
    """``{"direct": ..., "gate": ...}``: iterate it to run a scenario on both sides."""
    return {"direct": direct_dsn, "gate": gate_dsn}
