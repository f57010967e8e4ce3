"""Helpers shared by the approvals tests: a state database, services, requests, notices.

Tests synchronise on events the code itself produces — the hold's notice (sent only
after the request is durably recorded), the outcome of ``hold()`` — never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from dbgate.approvals.model import ApprovalRequest, Requester
from dbgate.approvals.service import PgApprovalService

PII_SQL = (
    "UPDATE customers SET email = 'ann.lee@example.com', phone = '+1-780-563-6083' "
    "WHERE ssn = '427-73-4135'"
)
PII_VALUES = ("ann.lee@example.com", "+1-780-563-6083", "427-73-4135", "4111111111111111")


async def fresh_database(pg_server: Any, name: str) -> str:
    """Drop and create database ``name`` on the session's server; its DSN."""
    admin = await asyncpg.connect(pg_server.dsn("postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return str(pg_server.dsn(name))


async def drop_database(pg_server: Any, name: str) -> None:
    admin = await asyncpg.connect(pg_server.dsn("postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def make_request(
    sql: str = "DELETE FROM orders WHERE id = 7",
    params: tuple[str | None, ...] = (),
    *,
    identity: str = "agent",
    wait: float = 60.0,
    fingerprint: str = "fp-delete-order",
    approver_groups: tuple[str, ...] = (),
    approvals_needed: int = 1,
    purpose: str = "clean up a test order",
    categories: tuple[str, ...] = ("destructive",),
    reasons: tuple[tuple[str, str], ...] = (("delete", "DELETE removes rows"),),
    rule: str = "hold-destructive",
    **extra: Any,
) -> ApprovalRequest:
    return ApprovalRequest(
        requester=Requester(
            identity=identity,
            groups=frozenset({"agents"}),
            application_name="pytest",
            client_addr="127.0.0.1",
            session_id=42,
            purpose=purpose,
            model="test-model",
        ),
        sql=sql,
        params=params,
        fingerprint=fingerprint,
        categories=categories,
        reasons=reasons,
        rule=rule,
        rule_message="destructive statements are held",
        approver_groups=approver_groups,
        approvals_needed=approvals_needed,
        wait_seconds=wait,
        tables=("orders",),
        columns=("id",),
        **extra,
    )


class Notices:
    """A ``notify`` callable for hold(): records notices, and signals the first one."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self.sent = asyncio.Event()

    def __call__(self, message: str, detail: str) -> None:
        self.items.append((message, detail))
        self.sent.set()

    async def request_id(self) -> int:
        """The id named by the first notice (waits until it was sent)."""
        await asyncio.wait_for(self.sent.wait(), 30)
        message = self.items[0][0]
        return int(message.split("(request ", 1)[1].split(")", 1)[0])


@contextlib.asynccontextmanager
async def running_service(dsn: str, **kwargs: Any) -> AsyncIterator[PgApprovalService]:
    kwargs.setdefault("public_url", "http://approvals.test")
    svc = PgApprovalService(dsn, **kwargs)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


async def add_approver(svc: PgApprovalService, name: str, *groups: str) -> str:
    """An approver (token-only, no password: scrypt is slow) and a fresh token."""
    await svc.accounts.add(name, groups, None)
    _, token = await svc.accounts.issue_token(name)
    return token
