"""What the gate hands the approval service, and what it gets back.

These types are the contract between ``dbgate.gate`` (which decides that a statement
is held) and this room (which records, notifies, waits and returns the outcome).
They carry the raw statement and parameters because the approval of *these exact
values* must be matched later (approve-then-retry); the service stores only masked
text and a keyed hash of the raw form, never the raw values themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class HoldStatus(StrEnum):
    """Life of a request. ``pending`` is the only state that is not final."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"  # nobody decided within wait_seconds
    WITHDRAWN = "withdrawn"  # the client cancelled or disconnected while waiting
    ABANDONED = "abandoned"  # the replica holding it stopped or restarted
    EXECUTED = "executed"  # approved and then run
    #: Not stored: the service could not record or wait (state database down). The
    #: gate refuses the statement (fail closed).
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class Requester:
    """Who asked, as the proxy knows the session."""

    identity: str
    groups: frozenset[str] = frozenset()
    database: str = ""  # the database the agent's session is connected to
    application_name: str = ""
    client_addr: str = ""
    session_id: int = 0
    replica: str = ""
    purpose: str = ""  # SET dbgate.purpose / startup parameter / leading comment
    model: str = ""  # SET dbgate.model / ...


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """One held statement (or a whole simple-query string held as one)."""

    requester: Requester
    sql: str  # raw text as the client sent it: never stored or shown as is
    params: tuple[str | None, ...] = ()  # Bind values as text (None = NULL), raw
    fingerprint: str = ""  # pglast fingerprint of sql
    categories: tuple[str, ...] = ()
    reasons: tuple[tuple[str, str], ...] = ()  # (code, human sentence), from the classifier
    rule: str = ""
    rule_message: str = ""
    approver_groups: tuple[str, ...] = ()  # empty: any approver
    approvals_needed: int = 1
    wait_seconds: float = 300.0  # 0: do not wait (approve-then-retry)
    tables: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    #: Columns of the statement the PII catalog marks, for masking what approvers see.
    pii_columns: tuple[str, ...] = ()
    #: The session's settings and the parameters' declared types that decide what the
    #: text does (:func:`dbgate.approvals.matching.statement_context`): an approval
    #: covers the statement in this context only.
    context: tuple[tuple[str, str], ...] = ()
    #: For a statement that runs prepared statements (``EXECUTE name``): each name it
    #: executes followed by the texts the session may hold under it. ``EXECUTE p``
    #: says nothing of what it runs, so an approval of it covers these texts only.
    prepared: tuple[str, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HoldOutcome:
    status: HoldStatus
    request_id: str = ""
    reason: str = ""  # the approver's reason, or why the service could not help
    decided_by: tuple[str, ...] = ()
    url: str = ""  # where the request is decided


#: Sends the agent a NoticeResponse while it waits: (message, detail).
Notify = Callable[[str, str], None]


class ApprovalService(Protocol):
    async def hold(self, request: ApprovalRequest, notify: Notify) -> HoldOutcome:
        """Record the request durably, notify the agent, wait for a decision.

        Returns the final outcome. ``wait_seconds == 0`` returns at once with
        ``PENDING`` (the agent is told to retry once approved). If the awaiting task
        is cancelled (client CancelRequest or disconnect) the request becomes
        ``withdrawn`` and CancelledError propagates. Never raises otherwise: a
        failure is ``UNAVAILABLE`` with the reason.
        """
        ...

    async def approved_before(self, request: ApprovalRequest) -> HoldOutcome | None:
        """An earlier approval that covers this exact request (approve-then-retry, or a
        shape approved for this identity and fingerprint), consumed when it is a
        one-time approval; None when there is none."""
        ...

    async def executed(self, request_id: str) -> None:
        """The approved statement was forwarded: mark the request ``executed``."""
        ...
