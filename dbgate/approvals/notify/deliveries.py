"""Notification deliveries in the state database: who sends what, and how it went.

One row per (request, event, target). Every replica hears of every request (LISTEN),
and the one whose ``INSERT … ON CONFLICT DO NOTHING`` creates the row sends the
message, so N replicas send one message, not N. The row then records each attempt,
and the approval page shows deliveries that failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from dbgate.approvals.db import StateDB

#: Statuses after which a ``finished`` notification is due (``executed`` follows
#: ``approved`` so fast that the approval may only be seen as executed).
FINISHED_STATUSES = ("approved", "rejected", "expired", "withdrawn", "abandoned", "executed")
MAX_ERROR = 500


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    request_id: int
    event: str
    target: str
    status: str  # sending | delivered | failed
    attempts: int
    last_error: str
    replica: str
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None


@dataclass(frozen=True, slots=True)
class FailureSummary:
    """Failed deliveries of one target within a recent window (for the queue page)."""

    target: str
    failed: int
    last_error: str
    last_at: datetime
    last_request: int


_COLUMNS = (
    "id, request_id, event, target, status, attempts, last_error, replica, created_at, "
    "updated_at, delivered_at"
)


class DeliveryStore:
    def __init__(self, db: StateDB) -> None:
        self.db = db

    async def claim(self, request_id: int, event: str, target: str, replica: str) -> int | None:
        """The new delivery's id when this replica is the one to send it, else None."""
        async with self.db.connection() as conn:
            value: int | None = await conn.fetchval(
                "INSERT INTO dbgate.notification_deliveries (request_id, event, target, replica) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (request_id, event, target) DO NOTHING "
                "RETURNING id",
                request_id,
                event,
                target,
                replica,
            )
        return value

    async def attempted(self, delivery_id: int, attempts: int, error: str) -> None:
        async with self.db.connection() as conn:
            await conn.execute(
                "UPDATE dbgate.notification_deliveries SET attempts = $2, last_error = $3, "
                "updated_at = now() WHERE id = $1",
                delivery_id,
                attempts,
                error[:MAX_ERROR],
            )

    async def finish(self, delivery_id: int, attempts: int, error: str | None) -> None:
        """Delivered (``error`` None) or given up with ``error``."""
        async with self.db.connection() as conn:
            await conn.execute(
                "UPDATE dbgate.notification_deliveries SET attempts = $2, "
                "status = CASE WHEN $3::text IS NULL THEN 'delivered' ELSE 'failed' END, "
                "last_error = coalesce($3::text, last_error), updated_at = now(), "
                "delivered_at = CASE WHEN $3::text IS NULL THEN now() END WHERE id = $1",
                delivery_id,
                attempts,
                None if error is None else error[:MAX_ERROR],
            )

    async def for_request(self, request_id: int) -> list[Delivery]:
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM dbgate.notification_deliveries WHERE request_id = $1 "
                "ORDER BY id",
                request_id,
            )
        return [Delivery(**dict(r)) for r in rows]

    async def recent_failures(self, within_seconds: float) -> list[FailureSummary]:
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                """
                SELECT DISTINCT ON (target) target,
                       count(*) OVER (PARTITION BY target) AS failed,
                       last_error, updated_at AS last_at, request_id AS last_request
                FROM dbgate.notification_deliveries
                WHERE status = 'failed' AND updated_at > now() - $1 * interval '1 second'
                ORDER BY target, updated_at DESC
                """,
                within_seconds,
            )
        return [FailureSummary(**dict(r)) for r in rows]

    async def missing(
        self, targets: Sequence[tuple[str, str]], window_seconds: float, min_age_seconds: float
    ) -> list[tuple[int, str, str]]:
        """(request id, event, target) due but never claimed: a lost NOTIFY, or a
        replica that stopped before it sent. ``targets`` are (target, event) pairs."""
        if not targets:
            return []
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                """
                SELECT r.id, t.event, t.target
                FROM dbgate.approval_requests r
                CROSS JOIN unnest($1::text[], $2::text[]) AS t(target, event)
                WHERE r.created_at > now() - $3 * interval '1 second'
                  AND r.created_at < now() - $4 * interval '1 second'
                  AND r.mode <> 'shape'
                  AND ((t.event = 'created' AND r.status = 'pending')
                       OR (t.event = 'finished' AND r.status = ANY($5::text[])
                           AND coalesce(r.finished_at, r.created_at)
                               < now() - $4 * interval '1 second'))
                  AND NOT EXISTS (SELECT 1 FROM dbgate.notification_deliveries d
                                  WHERE d.request_id = r.id AND d.event = t.event
                                    AND d.target = t.target)
                ORDER BY r.id
                LIMIT 1000
                """,
                [t for t, _ in targets],
                [e for _, e in targets],
                window_seconds,
                min_age_seconds,
                list(FINISHED_STATUSES),
            )
        return [(r["id"], r["event"], r["target"]) for r in rows]

    async def reclaim_stale(self, older_than_seconds: float, replica: str) -> list[Delivery]:
        """Deliveries left ``sending`` by a replica that stopped mid-way; now ours."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                f"UPDATE dbgate.notification_deliveries SET replica = $2, updated_at = now() "
                f"WHERE status = 'sending' AND updated_at < now() - $1 * interval '1 second' "
                f"RETURNING {_COLUMNS}",
                older_than_seconds,
                replica,
            )
        return [Delivery(**dict(r)) for r in rows]
