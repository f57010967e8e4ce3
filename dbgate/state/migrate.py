"""Versioned migrations of the state database.

Migrations are the SQL files in ``dbgate/state/migrations`` named ``NNNN_what.sql``,
applied in order of their number, each in its own transaction, and recorded in
``dbgate.schema_migrations`` with a checksum of their text. Why these rules:

* several replicas start at once against one state database: a transaction-level
  advisory lock makes exactly one of them migrate while the others wait and then
  find nothing left to do;
* a file that changed after it was applied is an error, not a silent skip: the
  database would no longer be what the code expects (fix: a new migration);
* a database that knows a migration this code does not (a newer dbgate migrated it)
  is refused, rather than run against a schema it does not understand.

Numbering: ``0001``-``0009`` shared, ``0010``-``0019`` approvals, ``0020``-``0029``
audit, ``0030``-``0039`` budgets and PII; new rooms take the next free ten.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

log = logging.getLogger("dbgate.state")

#: pg_advisory_xact_lock key: "dbgate" in ASCII, so it cannot collide by accident.
_LOCK_KEY = 0x646267617465
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

_BOOKKEEPING = """
CREATE SCHEMA IF NOT EXISTS dbgate;
CREATE TABLE IF NOT EXISTS dbgate.schema_migrations (
    version    text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


class MigrationError(Exception):
    """The state database cannot be brought to the schema this code expects."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: str  # "0001"
    name: str  # file name
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def known_migrations() -> list[Migration]:
    """Every migration shipped with this code, in order."""
    out = []
    folder = resources.files("dbgate.state") / "migrations"
    for entry in folder.iterdir():
        m = _NAME.match(entry.name)
        if m is None:
            if entry.name.endswith(".sql"):
                raise MigrationError(f"migration file {entry.name!r} is not named NNNN_name.sql")
            continue
        out.append(Migration(m.group(1), entry.name, entry.read_text(encoding="utf-8")))
    out.sort(key=lambda mg: mg.version)
    versions = [mg.version for mg in out]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a number: {versions}")
    return out


async def _applied(conn: Any) -> dict[str, str]:
    rows = await conn.fetch("SELECT version, checksum FROM dbgate.schema_migrations")
    return {r["version"]: r["checksum"] for r in rows}


def _check_history(applied: dict[str, str], known: list[Migration]) -> list[Migration]:
    by_version = {mg.version: mg for mg in known}
    for version, checksum in sorted(applied.items()):
        mg = by_version.get(version)
        if mg is None:
            raise MigrationError(
                f"the state database has migration {version}, which this dbgate does not "
                "know: it was migrated by a newer dbgate; run that version"
            )
        if mg.checksum != checksum:
            raise MigrationError(
                f"migration {mg.name} changed after it was applied to the state database; "
                "never edit an applied migration, add a new one"
            )
    return [mg for mg in known if mg.version not in applied]


async def pending_migrations(conn: Any) -> list[Migration]:
    """Migrations not yet applied on ``conn``'s database (checks the history too)."""
    exists = await conn.fetchval("SELECT to_regclass('dbgate.schema_migrations') IS NOT NULL")
    applied = await _applied(conn) if exists else {}
    return _check_history(applied, known_migrations())


async def apply_migrations(conn: Any) -> list[str]:
    """Bring the state database up to date; returns the names of the files applied.

    ``conn`` is an asyncpg connection whose role may create the schema's objects.
    Safe to call from several replicas at once.
    """
    known = known_migrations()
    done: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(_BOOKKEEPING)
        todo = _check_history(await _applied(conn), known)
        for mg in todo:
            async with conn.transaction():  # a savepoint: the error names the file
                try:
                    await conn.execute(mg.sql)
                except Exception as e:
                    raise MigrationError(f"migration {mg.name} failed: {e}") from e
                await conn.execute(
                    "INSERT INTO dbgate.schema_migrations (version, checksum) VALUES ($1, $2)",
                    mg.version,
                    mg.checksum,
                )
            done.append(mg.name)
    if done:
        log.info("state database migrated: %s", ", ".join(done))
    return done
