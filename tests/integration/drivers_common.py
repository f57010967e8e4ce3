"""Helpers shared by the driver-matrix tests (``test_driver_*.py``).

Every driver test runs the same scenario twice — straight to PostgreSQL and through
the proxy — and asserts the two runs behave identically. These helpers keep that
boilerplate small: unique object names so concurrent tests never collide, DSN
conversions for drivers that do not take URLs, and the pair of targets to loop over.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

#: The two sides of every comparison, in a fixed order.
SIDES = ("direct", "proxy")


def unique(prefix: str) -> str:
    """A lower-case identifier unique to this call (safe to use unquoted in SQL)."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class DsnParts:
    host: str
    port: int
    user: str
    password: str
    database: str

    def kwargs(self) -> dict[str, object]:
        """Keyword arguments as pg8000 and psycopg2 accept them."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "database": self.database,
        }


def split_dsn(dsn: str) -> DsnParts:
    """Split a ``postgresql://user:pw@host:port/db`` URL (TCP only)."""
    parts = urlsplit(dsn)
    return DsnParts(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        database=unquote(parts.path.lstrip("/")),
    )


def targets(pg_dsn: str, proxy_dsn: str) -> dict[str, str]:
    """``{"direct": pg_dsn, "proxy": proxy_dsn}`` — iterate it to run a scenario twice."""
    return {"direct": pg_dsn, "proxy": proxy_dsn}
