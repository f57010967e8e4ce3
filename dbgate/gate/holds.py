"""A ``hold`` decision becomes a wait on the approval service.

The relay accepts an awaitable verdict: while it is pending the session reads
nothing more from its client, keeps the client's pipelined messages in order, and a
CancelRequest cancels the wait (57014; the service marks the request withdrawn).
This module builds the :class:`~dbgate.approvals.model.ApprovalRequest` from what
the gate knows (who, what, which rule, why) and maps the service's outcome to what
the client sees:

* approved: the statement runs as if it had never waited;
* rejected: 42501 with the approver's reason;
* expired: 57014, like a statement timeout;
* pending (``wait_seconds`` 0, approve-then-retry): 42501 naming the request and
  saying to send the identical statement again once it is approved;
* unavailable or abandoned: 42501, fail closed.

The request carries what the agent declared about itself (purpose, model:
:mod:`dbgate.gate.declarations`). An earlier approval of the very same statement and values (or a shape approval for
this identity and fingerprint) is looked up first, so a retry runs without a new
request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dbgate.approvals.matching import statement_context
from dbgate.approvals.model import (
    ApprovalRequest,
    ApprovalService,
    HoldOutcome,
    HoldStatus,
    Requester,
)
from dbgate.gate.audit import recorded_application_name
from dbgate.gate.declarations import declared
from dbgate.gate.notes import note_for
from dbgate.gate.refusals import reasons_text, rule_hint
from dbgate.policy.model import Classification, Decision
from dbgate.proxy.seams import Allow, Notice, Refuse
from dbgate.proxy.session_info import SessionInfo
from dbgate.wire import sqlstate

if TYPE_CHECKING:
    from dbgate.gate.audit import AuditTrail

log = logging.getLogger("dbgate.gate")

#: Hold outcomes recorded under their own name; the rest (unavailable, abandoned,
#: pending for approve-then-retry) are "refused" with the reason.
_REFUSED_AS = frozenset({"rejected", "expired", "withdrawn"})
_UNRECORDED = HoldOutcome(
    HoldStatus.UNAVAILABLE,
    reason="the audit trail cannot record it: the state database is unreachable",
)


class HoldDesk:
    """Sends held statements to the approval service and waits for the outcome."""

    def __init__(
        self,
        service: ApprovalService,
        *,
        default_wait_seconds: float,
        replica: str = "",
        audit: AuditTrail | None = None,
    ) -> None:
        self.service = service
        self.default_wait_seconds = default_wait_seconds
        self.replica = replica
        self.audit = audit
        self._background: set[asyncio.Task[None]] = set()

    def request(
        self,
        session: SessionInfo,
        sql: str,
        params: Sequence[str | None],
        decision: Decision,
        classification: Classification,
        pii_columns: Sequence[str] = (),
        param_types: Sequence[int] = (),
    ) -> ApprovalRequest:
        server = session.server_params
        intent = declared(session.declared, classification.declares, sql)
        requester = Requester(
            identity=session.identity,
            groups=session.groups,
            database=session.database,
            # as its records carry it: a name the server reports and the client never
            # gave (filled from the data) is not shown or stored
            application_name=(
                self.audit.application_name(session, sql, tuple(params))
                if self.audit is not None
                else recorded_application_name(session, ((sql, tuple(params)),))
            ),
            client_addr=session.client_addr,
            session_id=session.session_id,
            replica=self.replica,
            purpose=intent.get("purpose", ""),
            model=intent.get("model", ""),
        )
        reasons = decision.reasons or classification.reasons
        wait = decision.wait_seconds
        return ApprovalRequest(
            requester=requester,
            sql=sql,
            params=tuple(params),
            fingerprint=classification.fingerprint,
            categories=tuple(sorted(c.value for c in classification.categories)),
            reasons=tuple((r.code, r.message) for r in reasons),
            rule=decision.rule,
            rule_message=decision.message,
            approver_groups=decision.approver_groups,
            approvals_needed=decision.approvals_needed,
            wait_seconds=float(wait) if wait is not None else self.default_wait_seconds,
            tables=tuple(sorted(classification.tables)),
            columns=tuple(sorted({c for s in classification.statements for c in s.columns})),
            pii_columns=tuple(pii_columns),
            context=statement_context(server, param_types),
        )

    async def wait(
        self, session: SessionInfo, request: ApprovalRequest, decision: Decision
    ) -> Allow | Refuse:
        """Look for an earlier approval, else hold; the verdict for the relay."""

        def notify(message: str, detail: str) -> None:
            session.notify_client(Notice(message, detail))

        audit = self.audit
        if audit is not None and not await audit.durable(
            audit.held(session, request, decision, "decided", "hold")
        ):
            return self.verdict(_UNRECORDED, decision)  # nothing waits unrecorded
        outcome = await self.service.approved_before(request)
        if outcome is None:
            try:
                outcome = await self.service.hold(request, notify)
            except asyncio.CancelledError:  # a CancelRequest or the client left
                if audit is not None:
                    audit.writer.record(
                        audit.held(session, request, decision, "refused", "withdrawn")
                    )
                raise
        verdict = self.verdict(outcome, decision)
        if audit is not None and not await self._recorded(
            audit, session, request, decision, outcome, verdict
        ):
            return self.verdict(_UNRECORDED, decision)  # approved, but not run unrecorded
        if isinstance(verdict, Allow):
            if decision.classification is not None:  # a SET dbgate.purpose in it now runs
                session.declared.update(decision.classification.declares)
            if outcome.request_id:
                self._mark_executed(outcome.request_id)
        return verdict

    async def _recorded(
        self,
        audit: AuditTrail,
        session: SessionInfo,
        request: ApprovalRequest,
        decision: Decision,
        outcome: HoldOutcome,
        verdict: Allow | Refuse,
    ) -> bool:
        """The outcome is durable before the client hears of it: an approved statement's
        record before it is forwarded (False: it is not), a refusal's before it is sent
        (sent either way)."""
        rid = outcome.request_id or ""
        if isinstance(verdict, Allow):
            return await audit.durable(
                audit.held(session, request, decision, "decided", "approved", approval_id=rid)
            )
        status = outcome.status.value
        await audit.durable(
            audit.held(
                session,
                request,
                decision,
                "refused",
                status if status in _REFUSED_AS else "refused",
                approval_id=rid,
                outcome=verdict.sqlstate,
                reason=verdict.message,
            )
        )
        return True

    def verdict(self, outcome: HoldOutcome, decision: Decision) -> Allow | Refuse:
        status = outcome.status
        rid = outcome.request_id
        hint = rule_hint(decision)
        if status is HoldStatus.APPROVED:
            return Allow(note=note_for(decision, outcome))
        if status is HoldStatus.REJECTED:
            who = ", ".join(outcome.decided_by) or "an approver"
            why = f": {outcome.reason}" if outcome.reason else ""
            return Refuse(
                sqlstate.INSUFFICIENT_PRIVILEGE,
                f"dbgate: approval request {rid} was rejected by {who}{why}",
                detail=f"the statement needed approval: {reasons_text(decision)}",
                hint=hint,
                note=note_for(decision, outcome),
            )
        if status is HoldStatus.EXPIRED:
            return Refuse(
                sqlstate.QUERY_CANCELED,
                f"dbgate: approval request {rid} expired before anyone decided; "
                "the statement was not run",
                detail=outcome.reason,
                hint=f"ask an approver to look at {outcome.url}" if outcome.url else hint,
                note=note_for(decision, outcome),
            )
        if status is HoldStatus.PENDING:
            return Refuse(
                sqlstate.INSUFFICIENT_PRIVILEGE,
                f"dbgate: this statement needs approval ({reasons_text(decision)}); it is "
                f"request {rid}: send the identical statement again once it is approved",
                detail=outcome.reason,
                hint=f"decide at {outcome.url}" if outcome.url else hint,
                note=note_for(decision, outcome),
            )
        reason = outcome.reason or status.value
        return Refuse(
            sqlstate.INSUFFICIENT_PRIVILEGE,
            f"dbgate: this statement needs approval ({reasons_text(decision)}) and the "
            f"approval could not be obtained ({reason}), so it was not run",
            hint=hint,
            note=note_for(decision, outcome),
        )

    def _mark_executed(self, request_id: str) -> None:
        """The relay forwards an approved statement as soon as the verdict resolves;
        recording that happens beside it, never in its way."""

        async def mark() -> None:
            try:
                await self.service.executed(request_id)
            except Exception:
                log.warning("could not mark approval request %s executed", request_id)

        task = asyncio.ensure_future(mark())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
