"""The page's own reads: the queue and the history, as lean as a table row needs.

The approvals store's records carry every field of a request (and the detail page
uses them); a queue of a thousand rows needs a dozen columns, and reading only
those keeps the page within its budget (bench/bench_web.py). Every text here is
already masked in the state database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from dbgate.approvals.db import StateDB
from dbgate.approvals.store import DECIDED_JOIN, STATUSES


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    status: str
    mode: str
    created_at: datetime
    identity: str
    application_name: str
    purpose: str
    model: str
    categories: tuple[str, ...]
    tables: tuple[str, ...]
    estimated_rows: int | None
    approvals_needed: int
    approvals: int
    decided_by: tuple[str, ...]
    reason: str
    waited_seconds: float
    wait_seconds: float


_SELECT = (
    """
SELECT r.id, r.status, r.mode, r.created_at, r.identity, r.application_name, r.purpose,
       r.model, r.categories, r.tables, r.estimated_rows, r.approvals_needed,
       coalesce(d.approvals, 0) AS approvals, coalesce(d.decided_by, '{}') AS decided_by,
       r.reason, r.wait_seconds,
       extract(epoch FROM coalesce(r.finished_at, now()) - r.created_at)::float8 AS waited_seconds
FROM dbgate.approval_requests r
"""
    + DECIDED_JOIN
)


def _row(r: object) -> Row:
    data = dict(r)  # type: ignore[call-overload]
    for key in ("categories", "tables", "decided_by"):
        data[key] = tuple(data[key] or ())
    return Row(**data)


@dataclass(frozen=True, slots=True)
class HistoryFilter:
    identity: str | None = None
    statuses: Sequence[str] = ()
    category: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before: int | None = None  # paging: ids below this


#: The queue: pending rows via their partial index, decisions counted in one pass
#: (a pending request has no rejection and no final decider yet).
_PENDING = """
WITH p AS (
    SELECT id, status, mode, created_at, identity, application_name, purpose, model,
           categories, tables, estimated_rows, approvals_needed, reason, wait_seconds,
           extract(epoch FROM now() - created_at)::float8 AS waited_seconds
    FROM dbgate.approval_requests WHERE status = 'pending' ORDER BY id DESC LIMIT $1
), d AS (
    SELECT request_id, count(*) FILTER (WHERE decision = 'approve') AS approvals
    FROM dbgate.approval_decisions WHERE request_id IN (SELECT id FROM p) GROUP BY request_id
)
SELECT p.*, coalesce(d.approvals, 0) AS approvals, '{}'::text[] AS decided_by
FROM p LEFT JOIN d ON d.request_id = p.id ORDER BY p.id DESC
"""


async def pending(db: StateDB, limit: int) -> tuple[list[Row], int]:
    """Pending requests, newest first (at most ``limit``), and how many there are."""
    async with db.connection() as conn:
        rows = await conn.fetch(_PENDING, limit)
        total = len(rows)
        if total == limit:
            total = await conn.fetchval(
                "SELECT count(*) FROM dbgate.approval_requests WHERE status = 'pending'"
            )
    return [_row(r) for r in rows], int(total)


async def history(db: StateDB, f: HistoryFilter, limit: int) -> list[Row]:
    for s in f.statuses:
        if s not in STATUSES:
            raise ValueError(s)
    async with db.connection() as conn:
        rows = await conn.fetch(
            _SELECT
            + """
            WHERE ($1::text IS NULL OR r.identity = $1)
              AND (cardinality($2::text[]) = 0 OR r.status = ANY($2::text[]))
              AND ($3::text IS NULL OR $3 = ANY(r.categories))
              AND ($4::timestamptz IS NULL OR r.created_at >= $4)
              AND ($5::timestamptz IS NULL OR r.created_at < $5)
              AND ($6::bigint IS NULL OR r.id < $6)
            ORDER BY r.id DESC LIMIT $7
            """,
            f.identity,
            list(f.statuses),
            f.category,
            f.since,
            f.until,
            f.before,
            limit,
        )
    return [_row(r) for r in rows]


async def known_values(db: StateDB) -> tuple[list[str], list[str]]:
    """Identities and categories seen recently, for the history filter's suggestions."""
    async with db.connection() as conn:
        idents = await conn.fetch(
            "SELECT DISTINCT identity FROM (SELECT identity FROM dbgate.approval_requests "
            "ORDER BY id DESC LIMIT 5000) t ORDER BY 1 LIMIT 200"
        )
        cats = await conn.fetch(
            "SELECT DISTINCT c FROM (SELECT categories FROM dbgate.approval_requests "
            "ORDER BY id DESC LIMIT 5000) t, unnest(t.categories) c ORDER BY 1 LIMIT 200"
        )
    return [r[0] for r in idents], [r[0] for r in cats]


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit record of a request, as its page lists it (``dbgate.audit_log``)."""

    at: datetime
    kind: str
    event: str
    decision: str
    outcome: str
    rows: int | None
    actor: str
    reason: str
    replica: str
    chain: str
    seq: int


#: How many of a request's audit records its page lists (a request has a handful:
#: requested, decided, approved, executed, completed — and any refused attempts).
AUDIT_LIMIT = 100


async def audit_records(db: StateDB, request_id: int) -> list[AuditRecord]:
    """The audit records that belong to ``request_id`` (its approval steps and its
    statement's records), in the order they happened. Text is masked at the source."""
    async with db.connection() as conn:
        rows = await conn.fetch(
            "SELECT at, kind, event, coalesce(decision, '') AS decision, "
            "coalesce(outcome, '') AS outcome, rows, coalesce(actor, '') AS actor, "
            "coalesce(reason, '') AS reason, coalesce(replica, '') AS replica, chain, seq "
            "FROM dbgate.audit_log WHERE approval_id = $1 ORDER BY at, id LIMIT $2",
            str(request_id),
            AUDIT_LIMIT,
        )
    return [AuditRecord(**dict(r)) for r in rows]
