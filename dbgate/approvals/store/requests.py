"""Approval requests (mixin of :class:`~dbgate.approvals.store.ApprovalStore`): record a
held statement, the steps of its life that are not decisions (claimed, expired,
withdrawn, abandoned, swept, executed, its row estimate), and reading requests back
(``get``, ``list``, ``history``).

Every change of status here is a conditional update (``… WHERE status = 'pending'``
or ``'approved'``): when it races a decision, exactly one of them wins. An
approve-then-retry approval is claimed by the first identical retry
(``FOR UPDATE SKIP LOCKED``), never by a second.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import asyncpg

from dbgate.approvals.errors import BadRequest, NotFound
from dbgate.approvals.store.records import (
    REQUEST_FIELDS,
    STATUSES,
    Decision,
    NewRequest,
    RequestRecord,
    placeholders,
)

_COLUMNS = """
    r.id, r.status, r.mode, r.created_at, r.deadline, r.identity, r.identity_groups, r.owners,
    r.application_name, r.client_addr, r.session_id, r.replica, r.purpose, r.model,
    r.statement, r.params, r.fingerprint, r.categories, r.reasons, r.rule, r.rule_message,
    r.tables, r.columns, r.approver_groups, r.approvals_needed, r.wait_seconds,
    r.estimated_rows, r.estimate_note, r.decided_at, r.finished_at, r.reason, r.valid_until,
    r.claimed_at, r.executed_at, r.shape_id, r.database,
    coalesce(d.approvals, 0) AS approvals, coalesce(d.decided_by, '{}') AS decided_by,
    extract(epoch FROM coalesce(r.finished_at, now()) - r.created_at)::float8 AS waited_seconds
"""
#: The decisions of request ``r`` (who decided it, how many approved): also the
#: approvers' page's list (dbgate.web.queries).
DECIDED_JOIN = """
LEFT JOIN LATERAL (
    SELECT array_agg(x.approver ORDER BY x.decided_at, x.approver)
               FILTER (WHERE x.decision = CASE WHEN r.status = 'rejected' THEN 'reject'
                                                ELSE 'approve' END) AS decided_by,
           count(*) FILTER (WHERE x.decision = 'approve') AS approvals
    FROM dbgate.approval_decisions x WHERE x.request_id = r.id
) d ON true
"""
_SELECT = f"SELECT {_COLUMNS} FROM dbgate.approval_requests r {DECIDED_JOIN}"


def _record(row: asyncpg.Record, decisions: Iterable[asyncpg.Record] = ()) -> RequestRecord:
    data = dict(row)
    for key in (
        "identity_groups",
        "owners",
        "categories",
        "tables",
        "columns",
        "approver_groups",
        "decided_by",
    ):
        data[key] = tuple(data[key] or ())
    data["params"] = tuple(json.loads(data["params"]))
    data["reasons"] = tuple((r["code"], r["text"]) for r in json.loads(data["reasons"]))
    data["decisions"] = tuple(Decision(**dict(d)) for d in decisions)
    return RequestRecord(**data)


class Requests:
    """Recording requests, the life of a hold, and reading. The state lives in
    :class:`~dbgate.approvals.store.ApprovalStore`'s ``__init__``."""

    # -- recording and the life of a hold ---------------------------------------------

    async def create(self, req: NewRequest) -> RequestRecord:
        """Record a new pending request; durable when this returns."""
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                "INSERT INTO dbgate.approval_requests AS r (mode, deadline, "
                + REQUEST_FIELDS
                + ") VALUES ($1, now() + $2 * interval '1 second', "
                + placeholders(3)
                + ") RETURNING "
                + _COLUMNS.replace("coalesce(d.approvals, 0)", "0::bigint").replace(
                    "coalesce(d.decided_by, '{}')", "'{}'::text[]"
                ),
                req.mode,
                req.deadline_seconds,
                *req.values(),
            )
        record = _record(row)
        await self._tell("requested", record.id)
        return record

    async def statuses(self, ids: Sequence[int]) -> dict[int, str]:
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT id, status FROM dbgate.approval_requests WHERE id = ANY($1::bigint[])",
                list(ids),
            )
        return {r["id"]: r["status"] for r in rows}

    async def finish(self, request_id: int) -> tuple[RequestRecord, bool]:
        """The request as it is now and, when it is approved and not yet claimed,
        claim it for the waiting session: (record, claimed_now)."""
        async with self.db.connection() as conn:
            claimed = await conn.fetchval(
                "UPDATE dbgate.approval_requests SET claimed_at = now() "
                "WHERE id = $1 AND status = 'approved' AND claimed_at IS NULL RETURNING id",
                request_id,
            )
            row = await conn.fetchrow(_SELECT + " WHERE r.id = $1", request_id)
        if row is None:
            raise NotFound(f"approval request {request_id} does not exist")
        return _record(row), claimed is not None

    async def end_pending(self, request_id: int, status: str, reason: str) -> bool:
        """Move a pending request to ``expired``, ``withdrawn`` or ``abandoned``;
        False when it was no longer pending (a decision won the race)."""
        if status not in ("expired", "withdrawn", "abandoned"):
            raise ValueError(status)
        async with self.db.connection() as conn:
            done = await conn.fetchval(
                "UPDATE dbgate.approval_requests SET status = $2, reason = $3, "
                "finished_at = now() WHERE id = $1 AND status = 'pending' RETURNING id",
                request_id,
                status,
                reason,
            )
        if done is not None:
            await self._tell(status, request_id, reason=reason)
        return done is not None

    async def abandon_replica(self, replica: str, reason: str) -> int:
        """Mark every pending waited request of ``replica`` abandoned (it restarted)."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "UPDATE dbgate.approval_requests SET status = 'abandoned', reason = $2, "
                "finished_at = now() WHERE replica = $1 AND status = 'pending' AND mode = 'wait' "
                "RETURNING id",
                replica,
                reason,
            )
        for row in rows:
            await self._tell("abandoned", row["id"], reason=reason)
        return len(rows)

    async def sweep(self, abandon_after: float) -> int:
        """End requests nobody will end: approve-then-retry requests past their window
        (expired) and waited ones long past their deadline (their replica is gone)."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                """
                UPDATE dbgate.approval_requests
                SET status = CASE WHEN mode = 'wait' THEN 'abandoned' ELSE 'expired' END,
                    reason = CASE WHEN mode = 'wait'
                                  THEN 'the replica holding it stopped answering'
                                  ELSE 'nobody decided it within its retry window' END,
                    finished_at = now()
                WHERE status = 'pending'
                  AND deadline < now() - CASE WHEN mode = 'wait' THEN $1 * interval '1 second'
                                              ELSE interval '0' END
                RETURNING id, status, reason
                """,
                abandon_after,
            )
        for row in rows:
            await self._tell(row["status"], row["id"], reason=row["reason"])
        return len(rows)

    async def claim_retry(self, identity: str, match_hash: bytes) -> RequestRecord | None:
        """Use an approve-then-retry approval of exactly this statement, once."""
        async with self.db.connection() as conn:
            rid = await conn.fetchval(
                """
                UPDATE dbgate.approval_requests SET claimed_at = now()
                WHERE id = (SELECT id FROM dbgate.approval_requests
                            WHERE identity = $1 AND match_hash = $2 AND mode = 'retry'
                              AND status = 'approved' AND claimed_at IS NULL
                              AND valid_until > now()
                            ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
                  AND status = 'approved' AND claimed_at IS NULL
                RETURNING id
                """,
                identity,
                match_hash,
            )
            if rid is None:
                return None
            row = await conn.fetchrow(_SELECT + " WHERE r.id = $1", rid)
        return _record(row)

    async def mark_executed(self, request_id: int) -> bool:
        async with self.db.connection() as conn:
            done = await conn.fetchval(
                "UPDATE dbgate.approval_requests SET status = 'executed', executed_at = now() "
                "WHERE id = $1 AND status = 'approved' RETURNING id",
                request_id,
            )
        if done is not None:
            await self._tell("executed", request_id)
        return done is not None

    async def set_estimate(self, request_id: int, rows: int | None, note: str) -> None:
        """Store the planner's estimate and announce it (``estimate:<id>``) so that a
        page showing the request can refresh."""
        async with self.db.connection() as conn:
            await conn.execute(
                "WITH u AS (UPDATE dbgate.approval_requests SET estimated_rows = $2, "
                "estimate_note = $3 WHERE id = $1 RETURNING id) "
                "SELECT pg_notify('dbgate_approvals', 'estimate:' || id) FROM u",
                request_id,
                rows,
                note,
            )

    # -- reading ----------------------------------------------------------------------

    async def get(self, request_id: int) -> RequestRecord:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(_SELECT + " WHERE r.id = $1", request_id)
            if row is None:
                raise NotFound(f"approval request {request_id} does not exist")
            decisions = await conn.fetch(
                "SELECT approver, decision, reason, via, decided_at FROM dbgate.approval_decisions "
                "WHERE request_id = $1 ORDER BY decided_at, approver",
                request_id,
            )
        return _record(row, decisions)

    async def list(
        self,
        *,
        statuses: Sequence[str] = (),
        identity: str | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> list[RequestRecord]:
        """Newest first; ``before`` pages on by id."""
        for s in statuses:
            if s not in STATUSES:
                raise BadRequest(f"unknown status {s!r}; one of {', '.join(STATUSES)}")
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                _SELECT
                + """
                WHERE (cardinality($1::text[]) = 0 OR r.status = ANY($1::text[]))
                  AND ($2::text IS NULL OR r.identity = $2)
                  AND ($3::bigint IS NULL OR r.id < $3)
                ORDER BY r.id DESC LIMIT $4
                """,
                list(statuses),
                identity,
                before,
                limit,
            )
        return [_record(r) for r in rows]

    async def history(
        self, fingerprint: str, *, exclude: int, limit: int = 20
    ) -> list[RequestRecord]:
        """Earlier requests with the same fingerprint (what approvers said before)."""
        if not fingerprint:
            return []
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                _SELECT + " WHERE r.fingerprint = $1 AND r.id <> $2 ORDER BY r.id DESC LIMIT $3",
                fingerprint,
                exclude,
                limit,
            )
        return [_record(r) for r in rows]
