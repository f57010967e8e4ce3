"""Approval records as the API shows them (JSON). Everything here is already masked.

One function per object kind, so the API, the CLI's ``--json`` and the web page show
the same fields with the same names (documented in ``docs/approvals.md`` and the
OpenAPI document).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from dbgate.approvals.store import RequestRecord, ShapeRecord


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def request_summary(rec: RequestRecord, url: str) -> dict[str, Any]:
    """What a queue row needs."""
    return {
        "id": str(rec.id),
        "status": rec.status,
        "mode": rec.mode,
        "url": url,
        "created_at": iso(rec.created_at),
        "deadline": iso(rec.deadline),
        "waited_seconds": round(rec.waited_seconds, 3),
        "identity": rec.identity,
        "database": rec.database,
        "application_name": rec.application_name,
        "client_addr": rec.client_addr,
        "purpose": rec.purpose,
        "model": rec.model,
        "statement": rec.statement,
        "categories": list(rec.categories),
        "tables": list(rec.tables),
        "rule": rec.rule,
        "approver_groups": list(rec.approver_groups),
        "approvals_needed": rec.approvals_needed,
        "approvals": rec.approvals,
        "estimated_rows": rec.estimated_rows,
        "decided_by": list(rec.decided_by),
        "reason": rec.reason,
    }


def request_detail(
    rec: RequestRecord,
    url: str,
    *,
    may_decide: str | None,
    history: Sequence[dict[str, Any]] = (),
    shapes: Sequence[ShapeRecord] = (),
) -> dict[str, Any]:
    """Everything an approver is shown about one request.

    ``may_decide`` is None when the caller may decide it now, else why not.
    """
    out = request_summary(rec, url)
    out.update(
        {
            "params": list(rec.params),
            "reasons": [{"code": c, "text": t} for c, t in rec.reasons],
            "rule_message": rec.rule_message,
            "columns": list(rec.columns),
            "fingerprint": rec.fingerprint,
            "identity_groups": list(rec.identity_groups),
            "owners": list(rec.owners),
            "session_id": rec.session_id,
            "replica": rec.replica,
            "wait_seconds": rec.wait_seconds,
            "estimate_note": rec.estimate_note,
            "decided_at": iso(rec.decided_at),
            "finished_at": iso(rec.finished_at),
            "valid_until": iso(rec.valid_until),
            "claimed": rec.claimed_at is not None,
            "executed_at": iso(rec.executed_at),
            "shape_id": str(rec.shape_id) if rec.shape_id is not None else None,
            "decisions": [
                {
                    "approver": d.approver,
                    "decision": d.decision,
                    "reason": d.reason,
                    "via": d.via,
                    "decided_at": iso(d.decided_at),
                }
                for d in rec.decisions
            ],
            "can_decide": may_decide is None,
            "cannot_decide_reason": may_decide or "",
            "history": list(history),
            "shapes": [shape_json(s) for s in shapes],
        }
    )
    return out


def history_item(rec: RequestRecord, url: str) -> dict[str, Any]:
    return {
        "id": str(rec.id),
        "url": url,
        "status": rec.status,
        "identity": rec.identity,
        "created_at": iso(rec.created_at),
        "decided_by": list(rec.decided_by),
        "reason": rec.reason,
    }


def shape_json(shape: ShapeRecord) -> dict[str, Any]:
    return {
        "id": str(shape.id),
        "identity": shape.identity,
        "database": shape.database,
        "fingerprint": shape.fingerprint,
        "params": "fixed" if shape.params_fixed else "free",
        "statement": shape.statement,
        "source_request": str(shape.source_request) if shape.source_request else None,
        "created_by": shape.created_by,
        "reason": shape.reason,
        "created_at": iso(shape.created_at),
        "expires_at": iso(shape.expires_at),
        "revoked_at": iso(shape.revoked_at),
        "revoked_by": shape.revoked_by,
        "revoke_reason": shape.revoke_reason,
        "uses": shape.uses,
        "active": shape.active,
    }
