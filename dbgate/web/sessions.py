"""Signed-in browsers and failed sign-ins, kept in the state database.

Why server-side sessions rather than a signed cookie: signing out must end the
session everywhere at once (a copied cookie stops working), an idle session must
lapse, and every replica behind a load balancer must agree. The cookie holds 256
random bits; the database keeps only their SHA-256, so a leaked table holds no
usable cookie.

Each session has its own CSRF token, which every form of that session carries
(compared in constant time). Sign-in itself, before there is a session, uses a
double-submit token: a random value both in a cookie and in the form.

Lockout: failed sign-ins are counted per approver name and per client address
within ``lockout_seconds``; at ``max_failures`` for a name (four times that for an
address, which several people may share) further attempts are refused for
``lockout_seconds`` without checking the password. A lock is time-limited so that
an attacker can delay, but never permanently lock out, a real approver.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from dbgate.approvals.db import StateDB
from dbgate.approvals.eligibility import Approver

if TYPE_CHECKING:
    from dbgate.config import WebConfig

SESSION_COOKIE = "dbgate_session"
LOGIN_COOKIE = "dbgate_login"
ADDRESS_FACTOR = 4


@dataclass(frozen=True, slots=True)
class WebSettings:
    """The page's knobs (``web:`` in the config; docs/web.md)."""

    secure_cookies: bool = False
    session_idle: timedelta = timedelta(minutes=30)
    session_max: timedelta = timedelta(hours=12)
    login_max_failures: int = 5
    login_lockout_seconds: float = 900.0
    queue_limit: int = 1000

    @classmethod
    def from_config(cls, web: WebConfig | None) -> WebSettings:
        if web is None:
            return cls()
        return cls(
            secure_cookies=web.cookies_secure,
            session_idle=timedelta(minutes=web.session_idle_minutes),
            session_max=timedelta(hours=web.session_max_hours),
            login_max_failures=web.login_max_failures,
            login_lockout_seconds=web.login_lockout_seconds,
            queue_limit=web.queue_limit,
        )


@dataclass(frozen=True, slots=True)
class WebSession:
    token_hash: bytes
    approver: Approver
    csrf: str
    expires_at: datetime

    def csrf_ok(self, sent: str | None) -> bool:
        return bool(sent) and hmac.compare_digest(self.csrf.encode(), (sent or "").encode())


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def new_secret() -> str:
    return secrets.token_urlsafe(32)


class SessionStore:
    def __init__(self, db: StateDB, settings: WebSettings) -> None:
        self.db = db
        self.settings = settings

    async def create(
        self, approver: Approver, client_addr: str, user_agent: str
    ) -> tuple[str, WebSession]:
        """A new session; returns (cookie value, session)."""
        token = new_secret()
        csrf = new_secret()
        async with self.db.connection() as conn:
            expires = await conn.fetchval(
                "INSERT INTO dbgate.web_sessions (token_hash, approver, csrf_token, expires_at, "
                "client_addr, user_agent) VALUES ($1, $2, $3, now() + $4::interval, $5, $6) "
                "RETURNING expires_at",
                _hash(token),
                approver.name,
                csrf,
                self.settings.session_max,
                client_addr[:100],
                user_agent[:300],
            )
        return token, WebSession(_hash(token), approver, csrf, expires)

    async def get(self, token: str | None) -> tuple[WebSession | None, str]:
        """The live session for a cookie value and "", or None and why not, as a code
        the sign-in page explains: ``unknown``, ``signed_out``, ``disabled``,
        ``expired`` (time limit) or ``idle``."""
        if not token:
            return None, ""
        if len(token) > 100:
            return None, "unknown"
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                """
                UPDATE dbgate.web_sessions s SET last_seen_at = now()
                FROM dbgate.approvers a
                WHERE s.token_hash = $1 AND a.name = s.approver AND s.ended_at IS NULL
                  AND s.expires_at > now() AND s.last_seen_at > now() - $2::interval
                  AND a.disabled_at IS NULL
                RETURNING a.name, a.groups, s.csrf_token, s.expires_at
                """,
                _hash(token),
                self.settings.session_idle,
            )
            if row is not None:
                return (
                    WebSession(
                        _hash(token),
                        Approver(row["name"], frozenset(row["groups"])),
                        row["csrf_token"],
                        row["expires_at"],
                    ),
                    "",
                )
            old = await conn.fetchrow(
                "SELECT s.ended_at IS NOT NULL AS ended, s.expires_at <= now() AS expired, "
                "a.disabled_at IS NOT NULL AS disabled FROM dbgate.web_sessions s "
                "JOIN dbgate.approvers a ON a.name = s.approver WHERE s.token_hash = $1",
                _hash(token),
            )
        if old is None:
            return None, "unknown"
        if old["ended"]:
            return None, "signed_out"
        if old["disabled"]:
            return None, "disabled"
        if old["expired"]:
            return None, "expired"
        return None, "idle"

    async def end(self, session: WebSession) -> None:
        async with self.db.connection() as conn:
            await conn.execute(
                "UPDATE dbgate.web_sessions SET ended_at = now() WHERE token_hash = $1 "
                "AND ended_at IS NULL",
                session.token_hash,
            )

    async def purge(self) -> int:
        """Forget sessions that ended more than a day ago."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "DELETE FROM dbgate.web_sessions WHERE coalesce(ended_at, expires_at) "
                "< now() - interval '1 day' RETURNING 1"
            )
        return len(rows)


class LoginThrottle:
    """Failed sign-ins and lockouts (see the module docstring)."""

    def __init__(self, db: StateDB, settings: WebSettings) -> None:
        self.db = db
        self.max_failures = settings.login_max_failures
        self.lockout = settings.login_lockout_seconds

    @staticmethod
    def keys(name: str, client_addr: str) -> list[str]:
        return [f"name:{name.strip().lower()}", f"addr:{client_addr}"]

    def _limit(self, key: str) -> int:
        return self.max_failures * (ADDRESS_FACTOR if key.startswith("addr:") else 1)

    async def locked_until(self, keys: list[str]) -> datetime | None:
        async with self.db.connection() as conn:
            value: datetime | None = await conn.fetchval(
                "SELECT max(locked_until) FROM dbgate.web_login_failures "
                "WHERE key = ANY($1::text[]) AND locked_until > now()",
                keys,
            )
        return value

    async def failed(self, keys: list[str]) -> datetime | None:
        """Count a failure; the time the lock ends when this failure locked a key."""
        until: datetime | None = None
        async with self.db.connection() as conn, conn.transaction():
            for key in keys:
                row = await conn.fetchrow(
                    """
                    INSERT INTO dbgate.web_login_failures AS f (key, failures, window_start)
                    VALUES ($1, 1, now())
                    ON CONFLICT (key) DO UPDATE SET
                        failures = CASE WHEN f.window_start < now() - $2 * interval '1 second'
                                        THEN 1 ELSE f.failures + 1 END,
                        window_start = CASE WHEN f.window_start < now() - $2 * interval '1 second'
                                            THEN now() ELSE f.window_start END,
                        last_failure = now()
                    RETURNING failures
                    """,
                    key,
                    self.lockout,
                )
                if row["failures"] >= self._limit(key):
                    locked = await conn.fetchval(
                        "UPDATE dbgate.web_login_failures SET locked_until = now() + "
                        "$2 * interval '1 second', failures = 0, window_start = now() "
                        "WHERE key = $1 RETURNING locked_until",
                        key,
                        self.lockout,
                    )
                    until = locked if until is None else max(until, locked)
        return until

    async def succeeded(self, name: str) -> None:
        async with self.db.connection() as conn:
            await conn.execute(
                "DELETE FROM dbgate.web_login_failures WHERE key = $1",
                f"name:{name.strip().lower()}",
            )
