"""Approval requests, decisions and shape approvals in the state database.

This is the only module that writes ``dbgate.approval_requests``. Its rules:

* **Status changes are conditional updates** (``… WHERE status = 'pending'``), so
  when a decision, an expiry and a withdrawal race, exactly one wins and the others
  see what happened. A database trigger also refuses any change outside the
  lifecycle (docs/approvals.md), whoever attempts it.
* **Decisions lock the request row** (``SELECT … FOR UPDATE``): two approvers, or
  two tabs of one, deciding at once are serialised; the second finds the request
  decided and gets a 409 :class:`~dbgate.approvals.errors.Conflict`.
* **An approval is used once.** A waiting session *claims* its approved request; an
  approve-then-retry approval is claimed by the first identical retry
  (``FOR UPDATE SKIP LOCKED``), never by a second.
* Every change of status is announced on channel ``dbgate_approvals`` by a trigger,
  at commit, which wakes the replica that holds the statement.
* **Every step is told, refusals too.** Each committed step of a request's life, a
  shape approval's revocation, and every decision that was refused (not eligible,
  already decided, expired) is told to :attr:`ApprovalStore.on_event`, which the
  audit trail attaches to: whoever tried to decide what, through which door, and why
  it did not count.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from dbgate.approvals.db import StateDB
from dbgate.approvals.eligibility import Approver, refusal
from dbgate.approvals.errors import ApprovalError, BadRequest, Conflict, Forbidden, NotFound
from dbgate.pii.sql_mask import mask_text

log = logging.getLogger("dbgate.approvals")

#: (step, the request as it is now, who acted or "", why, when it was committed)
StepHook = Callable[[str, "RequestRecord", str, str, float], None]

#: Every status a request can have; ``pending`` is the only one that is not final,
#: and an ``approved`` request becomes ``executed`` once it ran.
STATUSES = ("pending", "approved", "rejected", "expired", "withdrawn", "abandoned", "executed")
MAX_REASON = 2000


@dataclass(frozen=True, slots=True)
class NewRequest:
    """What the service records for one held statement (already masked and hashed)."""

    mode: str  # wait | retry
    deadline_seconds: float
    identity: str
    identity_groups: tuple[str, ...]
    owners: tuple[str, ...]
    application_name: str
    client_addr: str
    session_id: int
    replica: str
    purpose: str
    model: str
    statement: str
    params: tuple[str | None, ...]
    match_hash: bytes
    fingerprint: str
    categories: tuple[str, ...]
    reasons: tuple[tuple[str, str], ...]
    rule: str
    rule_message: str
    tables: tuple[str, ...]
    columns: tuple[str, ...]
    approver_groups: tuple[str, ...]
    approvals_needed: int
    wait_seconds: float

    def values(self) -> tuple[Any, ...]:
        """The values of :data:`_REQUEST_FIELDS`, in order, as the driver sends them."""
        return (
            self.identity,
            list(self.identity_groups),
            list(self.owners),
            self.application_name,
            self.client_addr,
            self.session_id,
            self.replica,
            self.purpose,
            self.model,
            self.statement,
            json.dumps(list(self.params)),
            self.match_hash,
            self.fingerprint,
            list(self.categories),
            json.dumps([{"code": c, "text": t} for c, t in self.reasons]),
            self.rule,
            self.rule_message,
            list(self.tables),
            list(self.columns),
            list(self.approver_groups),
            self.approvals_needed,
            self.wait_seconds,
        )


#: The columns of approval_requests a :class:`NewRequest` fills (``NewRequest.values``).
_REQUEST_FIELDS = (
    "identity, identity_groups, owners, application_name, client_addr, session_id, replica, "
    "purpose, model, statement, params, match_hash, fingerprint, categories, reasons, rule, "
    "rule_message, tables, columns, approver_groups, approvals_needed, wait_seconds"
)


def _placeholders(first: int, count: int = 22) -> str:
    return ", ".join(f"${i}" for i in range(first, first + count))


@dataclass(frozen=True, slots=True)
class Decision:
    approver: str
    decision: str  # approve | reject
    reason: str
    via: str  # api | cli | shape
    decided_at: datetime


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One approval request as stored (masked), with its decisions."""

    id: int
    status: str
    mode: str
    created_at: datetime
    deadline: datetime
    identity: str
    identity_groups: tuple[str, ...]
    owners: tuple[str, ...]
    application_name: str
    client_addr: str
    session_id: int
    replica: str
    purpose: str
    model: str
    statement: str
    params: tuple[str | None, ...]
    fingerprint: str
    categories: tuple[str, ...]
    reasons: tuple[tuple[str, str], ...]
    rule: str
    rule_message: str
    tables: tuple[str, ...]
    columns: tuple[str, ...]
    approver_groups: tuple[str, ...]
    approvals_needed: int
    wait_seconds: float
    estimated_rows: int | None
    estimate_note: str
    decided_at: datetime | None
    finished_at: datetime | None
    reason: str
    valid_until: datetime | None
    claimed_at: datetime | None
    executed_at: datetime | None
    shape_id: int | None
    approvals: int
    decided_by: tuple[str, ...]
    waited_seconds: float
    decisions: tuple[Decision, ...] = ()


@dataclass(frozen=True, slots=True)
class ShapeRecord:
    """ "This fingerprint, for this identity, until then" — one approver's standing yes."""

    id: int
    identity: str
    fingerprint: str
    params_fixed: bool
    statement: str
    source_request: int | None
    created_by: str
    reason: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    revoked_by: str | None
    revoke_reason: str
    uses: int
    active: bool


_COLUMNS = """
    r.id, r.status, r.mode, r.created_at, r.deadline, r.identity, r.identity_groups, r.owners,
    r.application_name, r.client_addr, r.session_id, r.replica, r.purpose, r.model,
    r.statement, r.params, r.fingerprint, r.categories, r.reasons, r.rule, r.rule_message,
    r.tables, r.columns, r.approver_groups, r.approvals_needed, r.wait_seconds,
    r.estimated_rows, r.estimate_note, r.decided_at, r.finished_at, r.reason, r.valid_until,
    r.claimed_at, r.executed_at, r.shape_id,
    coalesce(d.approvals, 0) AS approvals, coalesce(d.decided_by, '{}') AS decided_by,
    extract(epoch FROM coalesce(r.finished_at, now()) - r.created_at)::float8 AS waited_seconds
"""
_DECIDED = """
LEFT JOIN LATERAL (
    SELECT array_agg(x.approver ORDER BY x.decided_at, x.approver)
               FILTER (WHERE x.decision = CASE WHEN r.status = 'rejected' THEN 'reject'
                                                ELSE 'approve' END) AS decided_by,
           count(*) FILTER (WHERE x.decision = 'approve') AS approvals
    FROM dbgate.approval_decisions x WHERE x.request_id = r.id
) d ON true
"""
_SELECT = f"SELECT {_COLUMNS} FROM dbgate.approval_requests r {_DECIDED}"
_SHAPE_COLUMNS = """
    id, identity, fingerprint, params_fixed, statement, source_request, created_by, reason,
    created_at, expires_at, revoked_at, revoked_by, revoke_reason, uses,
    (revoked_at IS NULL AND expires_at > now()) AS active
"""


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


def _shape(row: asyncpg.Record) -> ShapeRecord:
    return ShapeRecord(**dict(row))


def clean_reason(reason: Any, *, required: bool) -> str:
    """An approver's reason: text, bounded, with PII-shaped values masked."""
    if reason is None:
        reason = ""
    if not isinstance(reason, str):
        raise BadRequest("'reason' must be a string")
    reason = reason.strip()
    if required and not reason:
        raise BadRequest("a reason is required: the agent is told why its statement was refused")
    if len(reason) > MAX_REASON:
        raise BadRequest(f"'reason' is longer than {MAX_REASON} characters")
    return mask_text(reason)


def _owners_of(
    rec_owners: Sequence[str], identity: str, extra: Mapping[str, Sequence[str]]
) -> set[str]:
    return set(rec_owners) | set(extra.get(identity, ()))


class ApprovalStore:
    """Reads and writes approval requests; see the module docstring for the rules.

    ``owners`` (identity -> approver names, from the config) is added to the owners
    recorded with each request when deciding who may decide it.
    ``approved_lifetime`` is how long an approve-then-retry approval stays usable.
    """

    def __init__(
        self,
        db: StateDB,
        *,
        owners: Mapping[str, Sequence[str]] | None = None,
        approved_lifetime: float = 900.0,
        max_shape_minutes: int = 1440,
    ) -> None:
        self.db = db
        self.owners: Mapping[str, Sequence[str]] = owners or {}
        self.approved_lifetime = timedelta(seconds=approved_lifetime)
        self.max_shape_minutes = max_shape_minutes
        #: Told of each step in a request's life once it is committed: (event, the
        #: request as it is now, who acted or "", why, when: time.time() at the commit).
        #: The audit trail attaches here.
        self.on_event: StepHook | None = None

    async def _tell(self, event: str, request_id: int, actor: str = "", reason: str = "") -> None:
        hook = self.on_event
        if hook is None:
            return
        at = time.time()  # before reading the request back: a later step may overtake it
        try:
            hook(event, await self.get(request_id), actor, reason, at)
        except Exception:  # the step is committed; its echo must not undo the caller's work
            log.exception("approval request %s: the %s event was not told", request_id, event)

    async def refused(self, request_id: int, actor: str, what: str, why: str) -> None:
        """Tell a refused attempt on ``request_id`` (step ``refused``): ``actor`` tried
        ``what`` ("approve via api", …) and was refused because ``why``. Nothing is
        told for a request that does not exist (there is nothing to attach it to)."""
        why = mask_text(why)
        log.info("approval request %s: %s by %s refused: %s", request_id, what, actor, why)
        hook = self.on_event
        if hook is None:
            return
        at = time.time()
        try:
            record = await self.get(request_id)
        except NotFound:
            return
        except ApprovalError as e:  # the refusal stands; only its record is missing
            log.warning("approval request %s: the refusal was not recorded: %s", request_id, e)
            return
        try:
            hook("refused", record, actor, f"{what} refused: {why}", at)
        except Exception:
            log.exception("approval request %s: the refused event was not told", request_id)

    async def _refusing(
        self, request_id: int, approver: Approver, what: str, error: ApprovalError
    ) -> ApprovalError:
        """Tell a decision that did not count (forbidden, or no longer possible); the
        error, for the caller to raise."""
        if isinstance(error, Forbidden | Conflict):
            await self.refused(request_id, approver.name, what, error.message)
        return error

    # -- recording and the life of a hold ---------------------------------------------

    async def create(self, req: NewRequest) -> RequestRecord:
        """Record a new pending request; durable when this returns."""
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                "INSERT INTO dbgate.approval_requests AS r (mode, deadline, "
                + _REQUEST_FIELDS
                + ") VALUES ($1, now() + $2 * interval '1 second', "
                + _placeholders(3)
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

    # -- deciding ---------------------------------------------------------------------

    async def decide(
        self, request_id: int, approver: Approver, *, approve: bool, reason: str, via: str = "api"
    ) -> RequestRecord:
        """Record one approver's decision; the request is approved once enough distinct
        approvers said yes, rejected at the first no. Raises NotFound, Conflict (decided,
        expired, already decided by this approver) or Forbidden (may not decide)."""
        reason = mask_text(reason)
        what = f"{'approve' if approve else 'reject'} via {via}"
        try:
            async with self.db.connection() as conn, conn.transaction():
                conflict = await self._record_decision(
                    conn, request_id, approver, approve=approve, reason=reason, via=via
                )
        except (Forbidden, Conflict) as e:
            raise await self._refusing(request_id, approver, what, e) from None
        if conflict is not None:  # committed (an overdue request is marked expired)
            if conflict.expired_now:
                await self._tell("expired", request_id, reason="nobody decided in time")
            raise await self._refusing(request_id, approver, what, conflict)
        await self._tell("approved" if approve else "rejected", request_id, approver.name, reason)
        return await self.get(request_id)

    async def _record_decision(
        self,
        conn: Any,
        request_id: int,
        approver: Approver,
        *,
        approve: bool,
        reason: str,
        via: str,
        needs_single: bool = False,
    ) -> Conflict | None:
        row = await conn.fetchrow(
            "SELECT id, status, identity, owners, approver_groups, approvals_needed, "
            "deadline <= now() AS overdue, mode, reason FROM dbgate.approval_requests "
            "WHERE id = $1 FOR UPDATE",
            request_id,
        )
        if row is None:
            raise NotFound(f"approval request {request_id} does not exist")
        if row["status"] != "pending":
            return Conflict(_already(row["status"], request_id, row["reason"]))
        if row["overdue"]:
            await conn.execute(
                "UPDATE dbgate.approval_requests SET status = 'expired', finished_at = now(), "
                "reason = 'nobody decided in time' WHERE id = $1",
                request_id,
            )
            return Conflict(
                f"approval request {request_id} expired before this decision", expired_now=True
            )
        owners = _owners_of(row["owners"], row["identity"], self.owners)
        why = refusal(approver, row["identity"], row["approver_groups"], owners)
        if why is not None:
            raise Forbidden(why)
        if needs_single and row["approvals_needed"] > 1:
            raise Forbidden(
                f"this request needs {row['approvals_needed']} approvers: a shape approval "
                "would let one approver decide alone, so it is only offered for rules that "
                "need one"
            )
        # The row lock above serialises every decision on this request, so this check
        # cannot race with another insert.
        if await conn.fetchval(
            "SELECT 1 FROM dbgate.approval_decisions WHERE request_id = $1 AND approver = $2",
            request_id,
            approver.name,
        ):
            return Conflict(
                f"{approver.name!r} already decided approval request {request_id}; "
                f"it needs {row['approvals_needed']} different approvers"
            )
        await conn.execute(
            "INSERT INTO dbgate.approval_decisions (request_id, approver, decision, reason, via) "
            "VALUES ($1, $2, $3, $4, $5)",
            request_id,
            approver.name,
            "approve" if approve else "reject",
            reason,
            via,
        )
        if not approve:
            await conn.execute(
                "UPDATE dbgate.approval_requests SET status = 'rejected', decided_at = now(), "
                "finished_at = now(), reason = $2 WHERE id = $1",
                request_id,
                reason or f"rejected by {approver.name}",
            )
            return None
        approvals = await conn.fetchval(
            "SELECT count(*) FROM dbgate.approval_decisions "
            "WHERE request_id = $1 AND decision = 'approve'",
            request_id,
        )
        if approvals >= row["approvals_needed"]:
            reasons = await conn.fetchval(
                "SELECT string_agg(reason, '; ' ORDER BY decided_at) FROM dbgate.approval_decisions "
                "WHERE request_id = $1 AND decision = 'approve' AND reason <> ''",
                request_id,
            )
            await conn.execute(
                "UPDATE dbgate.approval_requests SET status = 'approved', decided_at = now(), "
                "finished_at = now(), valid_until = now() + $2::interval, reason = $3 "
                "WHERE id = $1",
                request_id,
                self.approved_lifetime,
                reasons or "",
            )
        return None

    # -- shape approvals --------------------------------------------------------------

    async def approve_shape(
        self,
        request_id: int,
        approver: Approver,
        *,
        minutes: int,
        params_fixed: bool,
        reason: str,
        via: str = "api",
    ) -> tuple[ShapeRecord, RequestRecord]:
        """Allow this request's fingerprint for its identity for ``minutes`` (and approve
        the request itself if it is pending)."""
        reason = mask_text(reason)
        if not (isinstance(minutes, int) and 1 <= minutes <= self.max_shape_minutes):
            raise BadRequest(f"'minutes' must be an integer from 1 to {self.max_shape_minutes}")
        try:
            return await self._approve_shape(
                request_id,
                approver,
                minutes=minutes,
                params_fixed=params_fixed,
                reason=reason,
                via=via,
            )
        except (Forbidden, Conflict) as e:
            if isinstance(e, Conflict) and e.expired_now:
                await self._tell("expired", request_id, reason="nobody decided in time")
            raise await self._refusing(
                request_id, approver, f"approve shape via {via}", e
            ) from None

    async def _approve_shape(
        self,
        request_id: int,
        approver: Approver,
        *,
        minutes: int,
        params_fixed: bool,
        reason: str,
        via: str,
    ) -> tuple[ShapeRecord, RequestRecord]:
        async with self.db.connection() as conn:
            conflict: Conflict | None = None
            async with conn.transaction():
                row = await conn.fetchrow(
                    "SELECT status, identity, owners, approver_groups, approvals_needed, "
                    "fingerprint, statement, match_hash FROM dbgate.approval_requests "
                    "WHERE id = $1 FOR UPDATE",
                    request_id,
                )
                if row is None:
                    raise NotFound(f"approval request {request_id} does not exist")
                if not row["fingerprint"]:
                    raise Conflict(f"approval request {request_id} has no fingerprint to approve")
                if row["status"] == "pending":
                    conflict = await self._record_decision(
                        conn,
                        request_id,
                        approver,
                        approve=True,
                        reason=reason,
                        via=via,
                        needs_single=True,
                    )
                else:
                    owners = _owners_of(row["owners"], row["identity"], self.owners)
                    why = refusal(approver, row["identity"], row["approver_groups"], owners)
                    if why is not None:
                        raise Forbidden(why)
                    if row["approvals_needed"] > 1:
                        raise Forbidden(
                            f"this request needs {row['approvals_needed']} approvers: a shape "
                            "approval is only offered for rules that need one"
                        )
                if conflict is None:
                    shape = await conn.fetchrow(
                        "INSERT INTO dbgate.shape_approvals (identity, fingerprint, params_fixed, "
                        "match_hash, statement, source_request, created_by, reason, expires_at) "
                        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + $9 * interval '1 minute') "
                        f"RETURNING {_SHAPE_COLUMNS}",
                        row["identity"],
                        row["fingerprint"],
                        params_fixed,
                        row["match_hash"] if params_fixed else None,
                        row["statement"],
                        request_id,
                        approver.name,
                        reason,
                        minutes,
                    )
            if conflict is not None:
                raise conflict
        await self._tell("approved", request_id, approver.name, f"shape {shape['id']}: {reason}")
        return _shape(shape), await self.get(request_id)

    async def find_shape(
        self, identity: str, fingerprint: str, match_hash: bytes
    ) -> ShapeRecord | None:
        if not fingerprint:
            return None
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {_SHAPE_COLUMNS} FROM dbgate.shape_approvals "
                "WHERE identity = $1 AND fingerprint = $2 AND revoked_at IS NULL "
                "AND expires_at > now() AND (NOT params_fixed OR match_hash = $3) "
                "ORDER BY id LIMIT 1",
                identity,
                fingerprint,
                match_hash,
            )
        return _shape(row) if row is not None else None

    async def creator(self, name: str) -> Approver | None:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                "SELECT name, groups, disabled_at FROM dbgate.approvers WHERE name = $1", name
            )
        if row is None:
            return None
        return Approver(row["name"], frozenset(row["groups"]), row["disabled_at"] is not None)

    async def record_shape_use(self, shape_id: int, req: NewRequest) -> RequestRecord | None:
        """Record a statement that runs under a shape approval (approved, claimed);
        None when the shape was revoked or expired meanwhile."""
        async with self.db.connection() as conn, conn.transaction():
            shape = await conn.fetchrow(
                "UPDATE dbgate.shape_approvals SET uses = uses + 1 "
                "WHERE id = $1 AND revoked_at IS NULL AND expires_at > now() "
                "RETURNING created_by, reason",
                shape_id,
            )
            if shape is None:
                return None
            why = f"shape approval {shape_id} by {shape['created_by']}" + (
                f": {shape['reason']}" if shape["reason"] else ""
            )
            rid = await conn.fetchval(
                "INSERT INTO dbgate.approval_requests (status, mode, deadline, "
                + _REQUEST_FIELDS
                + ", decided_at, finished_at, valid_until, claimed_at, reason, shape_id) "
                "VALUES ('approved', 'shape', now(), "
                + _placeholders(1)
                + ", now(), now(), now(), now(), $23, $24) RETURNING id",
                *req.values(),
                why,
                shape_id,
            )
            await conn.execute(
                "INSERT INTO dbgate.approval_decisions (request_id, approver, decision, "
                "reason, via) VALUES ($1, $2, 'approve', $3, 'shape')",
                rid,
                shape["created_by"],
                why,
            )
        return await self.get(rid)

    async def revoke_shape(self, shape_id: int, approver: Approver, reason: str) -> ShapeRecord:
        """Any approver may revoke a shape approval (it only narrows what runs). Told
        as step ``revoked`` of the request the shape was given from."""
        reason = mask_text(reason)
        try:
            shape = await self._revoke_shape(shape_id, approver, reason)
        except Conflict as e:
            try:
                source = await self._shape_source(shape_id)
            except ApprovalError:  # the refusal stands; only its record is missing
                source = None
            if source is not None:
                await self.refused(source, approver.name, f"revoke shape {shape_id}", e.message)
            raise
        if shape.source_request is not None:
            why = f"shape {shape_id} revoked" + (f": {reason}" if reason else "")
            await self._tell("revoked", shape.source_request, approver.name, why)
        return shape

    async def _shape_source(self, shape_id: int) -> int | None:
        async with self.db.connection() as conn:
            value = await conn.fetchval(
                "SELECT source_request FROM dbgate.shape_approvals WHERE id = $1", shape_id
            )
        return int(value) if value is not None else None

    async def _revoke_shape(self, shape_id: int, approver: Approver, reason: str) -> ShapeRecord:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                "UPDATE dbgate.shape_approvals SET revoked_at = now(), revoked_by = $2, "
                "revoke_reason = $3 WHERE id = $1 AND revoked_at IS NULL AND expires_at > now() "
                f"RETURNING {_SHAPE_COLUMNS}",
                shape_id,
                approver.name,
                reason,
            )
            if row is None:
                old = await conn.fetchrow(
                    f"SELECT {_SHAPE_COLUMNS} FROM dbgate.shape_approvals WHERE id = $1", shape_id
                )
                if old is None:
                    raise NotFound(f"shape approval {shape_id} does not exist")
                state = "revoked" if old["revoked_at"] is not None else "expired"
                raise Conflict(f"shape approval {shape_id} is already {state}")
        return _shape(row)

    async def get_shape(self, shape_id: int) -> ShapeRecord:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {_SHAPE_COLUMNS} FROM dbgate.shape_approvals WHERE id = $1", shape_id
            )
        if row is None:
            raise NotFound(f"shape approval {shape_id} does not exist")
        return _shape(row)

    async def list_shapes(
        self,
        *,
        active: bool | None = None,
        identity: str | None = None,
        fingerprint: str | None = None,
        limit: int = 100,
    ) -> list[ShapeRecord]:
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {_SHAPE_COLUMNS} FROM dbgate.shape_approvals "
                "WHERE ($1::bool IS NULL OR (revoked_at IS NULL AND expires_at > now()) = $1) "
                "AND ($2::text IS NULL OR identity = $2) "
                "AND ($3::text IS NULL OR fingerprint = $3) ORDER BY id DESC LIMIT $4",
                active,
                identity,
                fingerprint,
                limit,
            )
        return [_shape(r) for r in rows]

    # -- secrets ----------------------------------------------------------------------

    async def secret(self, name: str, new_value: bytes) -> bytes:
        """A secret shared by every replica, created with ``new_value`` the first time."""
        async with self.db.connection() as conn:
            await conn.execute(
                "INSERT INTO dbgate.approval_secrets (name, value) VALUES ($1, $2) "
                "ON CONFLICT (name) DO NOTHING",
                name,
                new_value,
            )
            value: bytes = await conn.fetchval(
                "SELECT value FROM dbgate.approval_secrets WHERE name = $1", name
            )
        return value


def _already(status: str, request_id: int, reason: str) -> str:
    words = {
        "approved": "already approved",
        "executed": "already approved and executed",
        "rejected": "already rejected",
        "expired": "expired: nobody decided in time",
        "withdrawn": "withdrawn: the client cancelled or disconnected",
        "abandoned": "abandoned: the replica holding it stopped",
    }
    return f"approval request {request_id} is {words.get(status, status)}"
