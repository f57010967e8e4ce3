"""``dbgate seed-demo``: the demo's databases and role on a server dbgate does not run.

``dbgate demo`` starts its own embedded PostgreSQL. The docker-compose file and a
Kubernetes trial need the same dataset on a real server instead: database ``demo``
(customers, orders, payments of fake people), the empty state database
``dbgate_state``, and the least-privilege role ``dbgate_agent`` that dbgate logs in
as for the agent. The work is :mod:`dbgate.demo_data`'s; this module only points it
at a DSN. Idempotent, so every container start may run it.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit

from dbgate.demo_data import (
    DEMO_DATABASE,
    STATE_DATABASE,
    ensure_agent_role,
    ensure_database,
    ensure_demo_database,
)

__all__ = ["seed", "with_password"]


def with_password(dsn: str, password: str) -> str:
    """``dsn`` with ``password`` put in (URL-quoted), replacing any it had."""
    parts = urlsplit(dsn)
    host = parts.netloc.rsplit("@", 1)[-1]
    user = quote(parts.username or "postgres", safe="")
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


class _Server:
    """What :func:`ensure_demo_database` needs: a DSN per database name."""

    def __init__(self, admin_dsn: str) -> None:
        self._parts = urlsplit(admin_dsn)

    def dsn(self, dbname: str = "postgres") -> str:
        return urlunsplit(self._parts._replace(path="/" + dbname))


async def seed(admin_dsn: str, agent_password: str, *, customers: int = 5000) -> dict[str, int]:
    """Create (or find) the demo dataset, state database and agent role; row counts."""
    server = _Server(admin_dsn)
    await ensure_database(server.dsn(), STATE_DATABASE)
    counts = await ensure_demo_database(server, customers)
    await ensure_agent_role(server.dsn(DEMO_DATABASE), agent_password)
    return counts
