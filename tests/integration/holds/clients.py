"""Small client-side helpers for the holds tests: notices, cancel keys, errors."""

from __future__ import annotations

import asyncio
import queue
from typing import Any

import asyncpg
import psycopg

from tests.integration.holds.harness import PUBLIC_URL, request_id
from tests.integration.rawclient import send_cancel

NOTICE_WAIT = 30.0


class AsyncpgNotices:
    """A log listener for asyncpg: the hold notices, in order, awaitable."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        conn.add_log_listener(self._on)

    def _on(self, _conn: Any, message: Any) -> None:
        self.queue.put_nowait(message)

    async def next(self) -> Any:
        return await asyncio.wait_for(self.queue.get(), NOTICE_WAIT)

    async def held(self) -> int:
        """The next hold notice: checked against the contract; its request id."""
        notice = await self.next()
        return check_notice(notice.message, notice.detail, notice.sqlstate)

    def empty(self) -> bool:
        return self.queue.empty()


class PsycopgNotices:
    """A notice handler for psycopg 3 (called on the thread that reads results)."""

    def __init__(self, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
        self.queue: queue.Queue[tuple[str, str, str]] = queue.Queue()
        conn.add_notice_handler(self._on)

    def _on(self, d: psycopg.errors.Diagnostic) -> None:
        # The Diagnostic is only readable during the callback: copy what we need.
        self.queue.put((d.message_primary or "", d.message_detail or "", d.sqlstate or ""))

    def next(self) -> tuple[str, str, str]:
        return self.queue.get(timeout=NOTICE_WAIT)

    def held(self) -> int:
        return check_notice(*self.next())

    async def aheld(self) -> int:
        return await asyncio.to_thread(self.held)

    def empty(self) -> bool:
        return self.queue.empty()


def check_notice(message: str, detail: str, code: str) -> int:
    """A hold notice names the request, what it waits for and where it is decided."""
    rid = request_id(message)
    assert message.startswith(f"dbgate: statement held for approval (request {rid}): "), message
    assert "waiting up to " in message and " for 1 approval from dba" in message, message
    assert detail == f"Decide at {PUBLIC_URL}/approvals/{rid}", detail
    assert code == "00000"
    return rid


def check_retry_error(message: str, hint: str) -> int:
    """The approve-then-retry refusal names the request and says to send it again."""
    rid = request_id(message)
    assert "send the identical statement again once it is approved" in message, message
    assert hint == f"decide at {PUBLIC_URL}/approvals/{rid}", hint
    return rid


async def cancel_asyncpg(conn: asyncpg.Connection, port: int) -> None:
    """Send the CancelRequest asyncpg would send, with the key dbgate gave it."""
    proto = conn._protocol  # the cancel key is not public API
    secret = (proto.backend_secret & 0xFFFFFFFF).to_bytes(4, "big")
    await send_cancel("127.0.0.1", port, proto.backend_pid, secret)
