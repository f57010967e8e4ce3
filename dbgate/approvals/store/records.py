"""What the store keeps: a new request as the service records it (:class:`NewRequest`),
a request as it is stored (:class:`RequestRecord`, with its :class:`Decision` rows), a
shape approval (:class:`ShapeRecord`), every status a request can have, and the
columns a new request fills (:data:`REQUEST_FIELDS`, in the order of
:meth:`NewRequest.values`).

Frozen dataclasses and constants; nothing here talks to the database. The service, the
web pages and API, the CLI, the notifications and the audit trail read what the store
returns through these types.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

#: Every status a request can have; ``pending`` is the only one that is not final,
#: and an ``approved`` request becomes ``executed`` once it ran.
STATUSES = ("pending", "approved", "rejected", "expired", "withdrawn", "abandoned", "executed")


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
    database: str = ""  # the database the statement was sent to
    #: Keyed hash of the statement's context (matching.context_hash): what a shape
    #: approved from this request must share with the statements it covers.
    context_hash: bytes | None = None

    def values(self) -> tuple[Any, ...]:
        """The values of :data:`REQUEST_FIELDS`, in order, as the driver sends them."""
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
            self.database,
            self.context_hash,
        )


#: The columns of approval_requests a :class:`NewRequest` fills (``NewRequest.values``).
REQUEST_FIELDS = (
    "identity, identity_groups, owners, application_name, client_addr, session_id, replica, "
    "purpose, model, statement, params, match_hash, fingerprint, categories, reasons, rule, "
    "rule_message, tables, columns, approver_groups, approvals_needed, wait_seconds, database, "
    "context_hash"
)


#: How many values :meth:`NewRequest.values` gives.
REQUEST_FIELD_COUNT = REQUEST_FIELDS.count(",") + 1


def placeholders(first: int, count: int = REQUEST_FIELD_COUNT) -> str:
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
    database: str = ""


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
    database: str = ""
