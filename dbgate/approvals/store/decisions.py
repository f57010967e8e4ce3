"""Decisions (mixin of :class:`~dbgate.approvals.store.ApprovalStore`): one approver's
approve or reject (``decide``), and the decisions that did not count (``refused``).

A decision locks the request row (``SELECT … FOR UPDATE``): two approvers, or two
tabs of one, deciding at once are serialised; the second finds the request decided
and gets a 409 :class:`~dbgate.approvals.errors.Conflict`. A request is approved once
enough distinct approvers said yes, rejected at the first no. Who may decide is
:mod:`dbgate.approvals.eligibility`; an approver's reason is :func:`clean_reason`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from dbgate.approvals.eligibility import Approver, refusal
from dbgate.approvals.errors import ApprovalError, BadRequest, Conflict, Forbidden, NotFound
from dbgate.approvals.store.records import RequestRecord
from dbgate.pii.sql_mask import mask_text

log = logging.getLogger("dbgate.approvals")

MAX_REASON = 2000


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
    if not storable_text(reason):
        raise BadRequest("'reason' must be text PostgreSQL can store (no NUL, no lone surrogate)")
    return mask_text(reason)


def storable_text(text: str) -> bool:
    """Whether a text column can hold ``text``: PostgreSQL refuses NUL, and UTF-8
    cannot encode a lone surrogate (JSON's ``"\\ud800"``). Refused before it reaches the
    state database, such a value is the caller's error (400), not the database's (503)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def owners_of(
    rec_owners: Sequence[str], identity: str, extra: Mapping[str, Sequence[str]]
) -> set[str]:
    return set(rec_owners) | set(extra.get(identity, ()))


class Deciding:
    """Deciding and refusing. The state lives in
    :class:`~dbgate.approvals.store.ApprovalStore`'s ``__init__``."""

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
        owners = owners_of(row["owners"], row["identity"], self.owners)
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
