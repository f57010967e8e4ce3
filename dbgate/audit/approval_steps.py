"""Approval requests' steps as audit records.

The approval store tells each committed step of a request's life (requested,
approved, rejected, expired, withdrawn, abandoned, executed; ``revoked`` for a
shape approval given from it; ``refused`` for an attempt to decide that did not
count) to a hook (:attr:`~dbgate.approvals.store.ApprovalStore.on_event`);
:func:`recorder` turns an
:class:`~dbgate.audit.writer.AuditWriter` into that hook. The statement is the
request's stored text as approvers see it (PII masked by place), with every literal
then replaced by ``$n`` as in statement records: approvers are shown values in places
not known to hold PII (a function's argument, ``lookup_customer('Ann Lee')``), which
the append-only trail does not keep. Records go through the
writer's queue: the step itself is committed in the approvals table already, and
the queue never drops a record (it waits, or spills, while the database is away).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, get_args

from dbgate.audit.events import ApprovalEvent, ApprovalStage
from dbgate.pii.sql_mask import mask_every_literal

if TYPE_CHECKING:
    from dbgate.approvals.store import RequestRecord, StepHook
    from dbgate.audit.writer import AuditWriter

#: The approval steps the trail records: those of the events' vocabulary.
_STEPS = frozenset(get_args(ApprovalStage))


def approval_event(
    step: str, request: RequestRecord, actor: str, reason: str, at: float
) -> ApprovalEvent:
    if step not in _STEPS:
        raise ValueError(f"unknown approval step {step!r}")
    return ApprovalEvent(
        event=step,  # type: ignore[arg-type]
        approval_id=str(request.id),
        at=at,
        identity=request.identity,
        actor=actor,
        reason=reason,
        statement=mask_every_literal(request.statement),
        fingerprint=request.fingerprint,
        categories=request.categories,
        rule=request.rule,
    )


def recorder(writer: AuditWriter) -> StepHook:
    """The approval store's ``on_event`` hook, recording into ``writer``."""

    def record(step: str, request: RequestRecord, actor: str, reason: str, at: float) -> None:
        writer.record(approval_event(step, request, actor, reason, at))

    return record
