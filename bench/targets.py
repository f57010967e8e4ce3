"""What the benchmark clients connect to.

Each target (direct Postgres, PgBouncer, dbgate) is described by the same five
fields, and every client (pgbench, asyncpg) is pointed at it in the same way:
TCP on loopback, user and database on the command line, password through the
environment. Keeping the DSN form identical keeps the comparison honest: the only
thing that differs between the three rows of the table is what sits on the port.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

TARGET_ORDER = (
    "direct",
    "pgbouncer",
    "dbgate",
    "dbgate-w2",
    "dbgate-audit",
    "dbgate-noaudit",
    "dbgate-approvals",
    "dbgate-nolimits",
    "dbgate-nopolicy",
    "pump",
)
# "dbgate" is one process (``--workers 1``); "dbgate-w2" is ``dbgate serve --workers 2``
# (two processes on one port): on this 2-core machine it must cost nothing.
# "dbgate-audit" is dbgate with a state database: every statement and session goes to
# the audit trail (holds, tokenization and approvals are on, and the rows-per-window
# accounts are kept there). "dbgate-noaudit" is the same with ``audit.enabled: false``,
# so "audit on vs off" is dbgate-audit/dbgate-noaudit (the audit trail alone), and
# "state on/off" dbgate-noaudit/dbgate (what the state database's other features —
# shared row windows, approvals — cost). "dbgate-approvals" is dbgate-noaudit without a
# rows-per-window rule on pgbench's tables: the approval service on its state database
# and nothing else there, so "approvals on/off" (dbgate-approvals/dbgate) is what
# ordinary traffic pays for approvals alone. "dbgate-nolimits" lifts every run-time limit
# on pgbench's tables, so "limits on/off" is dbgate/dbgate-nolimits. Opt-in
# diagnostics: "dbgate-nopolicy" is dbgate with ``policy: off`` (the relay without the
# inspector: what the policy costs), "pump" (bench/pump.py) a blind Python byte relay
# (the floor for any relay on uvloop).
OPT_IN_TARGETS = ("dbgate-nopolicy", "pump")
DEFAULT_TARGETS = tuple(t for t in TARGET_ORDER if t not in OPT_IN_TARGETS)
#: The targets with a proxy in front of PostgreSQL (their CPU is measured).
PROXIES = tuple(t for t in TARGET_ORDER if t != "direct")


@dataclass
class Target:
    """One place to send benchmark traffic, and whether it can be used."""

    name: str
    host: str
    port: int
    user: str
    password: str
    dbname: str
    # None while usable; otherwise why this target is skipped (shown in the table).
    unavailable: str | None = None
    notes: list[str] = field(default_factory=list)
    # Process group of the proxy serving this target (None for direct): its CPU use
    # per transaction is measured alongside the throughput.
    pgid: int | None = None

    @property
    def available(self) -> bool:
        return self.unavailable is None

    def libpq_env(self) -> dict[str, str]:
        """Environment for libpq programs (pgbench): credentials never on argv."""
        env = dict(os.environ)
        for key in [k for k in env if k.startswith("PG")]:
            del env[key]  # a developer's PGHOST/PGSERVICE must not redirect the run
        env.update(
            PGHOST=self.host,
            PGPORT=str(self.port),
            PGUSER=self.user,
            PGPASSWORD=self.password,
            PGDATABASE=self.dbname,
            PGSSLMODE="disable",  # the same for all three: no TLS anywhere
            PGAPPNAME=f"bench-{self.name}",
        )
        return env

    def asyncpg_kwargs(self) -> dict[str, object]:
        """Keyword arguments for ``asyncpg.connect`` to this target."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "database": self.dbname,
            "ssl": False,
        }
