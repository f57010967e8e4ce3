"""Approver accounts and their API tokens, kept in the state database.

Every replica (and the CLI) sees the same accounts. Passwords are stored as scrypt
hashes and tokens as SHA-256 hashes (:mod:`dbgate.approvals.passwords`); a token
is shown once, when it is issued, and can be revoked or expire.
"""

from __future__ import annotations

import asyncio
import functools
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from dbgate.approvals.db import StateDB
from dbgate.approvals.eligibility import Approver
from dbgate.approvals.errors import BadRequest, Conflict, NotFound, Unauthorized
from dbgate.approvals.passwords import (
    TOKEN_PREFIX,
    hash_password,
    new_token,
    token_hash,
    verify_password,
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,62}$")
_GROUP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: int
    approver: str
    label: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


@dataclass(frozen=True, slots=True)
class ApproverInfo:
    approver: Approver
    created_at: datetime
    has_password: bool
    tokens: tuple[TokenInfo, ...]


@functools.cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise BadRequest(
            f"approver name {name!r} must be 1-63 letters, digits, '.', '_', '@', '+' or '-'"
        )
    return name


def check_groups(groups: Iterable[str]) -> list[str]:
    out = sorted(set(groups))
    for g in out:
        if not _GROUP.match(g):
            raise BadRequest(f"group name {g!r} must be 1-63 letters, digits, '.', '_' or '-'")
    return out


def _approver(row: asyncpg.Record) -> Approver:
    return Approver(
        name=row["name"], groups=frozenset(row["groups"]), disabled=row["disabled_at"] is not None
    )


class AccountStore:
    """Create approvers, issue and check tokens, check passwords."""

    def __init__(self, db: StateDB) -> None:
        self.db = db

    async def add(self, name: str, groups: Iterable[str], password: str | None) -> Approver:
        """A new approver; ``password`` None makes a token-only account."""
        check_name(name)
        group_list = check_groups(groups)
        hashed = hash_password(password) if password is not None else None
        async with self.db.connection() as conn:
            try:
                row = await conn.fetchrow(
                    "INSERT INTO dbgate.approvers (name, groups, password_hash) "
                    "VALUES ($1, $2, $3) RETURNING name, groups, disabled_at",
                    name,
                    group_list,
                    hashed,
                )
            except asyncpg.UniqueViolationError:
                raise Conflict(f"approver {name!r} already exists") from None
        return _approver(row)

    async def get(self, name: str) -> Approver:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                "SELECT name, groups, disabled_at FROM dbgate.approvers WHERE name = $1", name
            )
        if row is None:
            raise NotFound(f"no approver named {name!r} (add one with: dbgate approvers add)")
        return _approver(row)

    async def list(self) -> list[ApproverInfo]:
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT name, groups, disabled_at, created_at, password_hash IS NOT NULL AS pw "
                "FROM dbgate.approvers ORDER BY name"
            )
            tokens = await conn.fetch(
                "SELECT id, approver, label, created_at, expires_at, revoked_at, last_used_at "
                "FROM dbgate.approver_tokens ORDER BY id"
            )
        by_name: dict[str, list[TokenInfo]] = {}
        for t in tokens:
            by_name.setdefault(t["approver"], []).append(TokenInfo(**dict(t)))
        return [
            ApproverInfo(_approver(r), r["created_at"], r["pw"], tuple(by_name.get(r["name"], ())))
            for r in rows
        ]

    async def set_disabled(self, name: str, disabled: bool) -> None:
        async with self.db.connection() as conn:
            done = await conn.fetchval(
                "UPDATE dbgate.approvers SET disabled_at = CASE WHEN $2 THEN now() END "
                "WHERE name = $1 RETURNING name",
                name,
                disabled,
            )
        if done is None:
            raise NotFound(f"no approver named {name!r}")

    async def issue_token(
        self, name: str, *, label: str = "", lifetime: timedelta | None = timedelta(days=30)
    ) -> tuple[int, str]:
        """A new token for ``name``: (token id, token). The token is not kept anywhere."""
        token = new_token()
        async with self.db.connection() as conn:
            token_id = await conn.fetchval(
                "INSERT INTO dbgate.approver_tokens (approver, token_hash, label, expires_at) "
                "SELECT name, $2, $3, now() + $4::interval FROM dbgate.approvers WHERE name = $1 "
                "RETURNING id",
                name,
                token_hash(token),
                label,
                lifetime,
            )
        if token_id is None:
            raise NotFound(f"no approver named {name!r} (add one with: dbgate approvers add)")
        return token_id, token

    async def revoke_token(self, token_or_id: str) -> int:
        """Revoke one token, named by its id or by the token itself; returns its id."""
        async with self.db.connection() as conn:
            if token_or_id.startswith(TOKEN_PREFIX):
                where, arg = "token_hash = $1", token_hash(token_or_id)
            elif token_or_id.isdigit():
                where, arg = "id = $1", int(token_or_id)  # type: ignore[assignment]
            else:
                raise BadRequest(f"{token_or_id!r} is neither a token id nor a token")
            row = await conn.fetchrow(
                f"UPDATE dbgate.approver_tokens SET revoked_at = coalesce(revoked_at, now()) "
                f"WHERE {where} RETURNING id",
                arg,
            )
        if row is None:
            raise NotFound("no such token")
        return int(row["id"])

    async def revoke_all(self, name: str) -> int:
        """Revoke every token of ``name``; returns how many were still valid."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "UPDATE dbgate.approver_tokens SET revoked_at = now() "
                "WHERE approver = $1 AND revoked_at IS NULL RETURNING id",
                name,
            )
        return len(rows)

    async def authenticate_token(self, token: str) -> Approver:
        """The approver a Bearer token belongs to; Unauthorized if it is not valid now."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            raise Unauthorized("not a dbgate token")
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                "UPDATE dbgate.approver_tokens t SET last_used_at = now() "
                "FROM dbgate.approvers a WHERE t.token_hash = $1 AND a.name = t.approver "
                "RETURNING a.name, a.groups, a.disabled_at, t.revoked_at, "
                "t.expires_at IS NOT NULL AND t.expires_at <= now() AS expired",
                token_hash(token),
            )
        if row is None:
            raise Unauthorized("unknown token")
        if row["revoked_at"] is not None:
            raise Unauthorized("this token was revoked")
        if row["expired"]:
            raise Unauthorized("this token has expired")
        if row["disabled_at"] is not None:
            raise Unauthorized(f"approver {row['name']!r} is disabled")
        return _approver(row)

    async def check_password(self, name: str, password: str) -> Approver:
        """The approver when the password is right; Unauthorized otherwise."""
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                "SELECT name, groups, disabled_at, password_hash FROM dbgate.approvers "
                "WHERE name = $1",
                name,
            )
        # scrypt takes about half a second: in a thread, so that the event loop (and
        # every proxied session on it) does not stall while a password is checked.
        if row is None:
            await asyncio.to_thread(lambda: verify_password(password, _dummy_hash()))  # same time
            raise Unauthorized("wrong name or password")
        if not await asyncio.to_thread(verify_password, password, row["password_hash"]):
            raise Unauthorized("wrong name or password")
        if row["disabled_at"] is not None:
            raise Unauthorized(f"approver {name!r} is disabled")
        return _approver(row)
