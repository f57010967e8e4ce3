"""Approval requests: a held statement waits here until humans decide.

The gate (``dbgate.gate``) turns a ``hold`` decision into an :class:`ApprovalRequest`
and awaits :meth:`ApprovalService.hold`; this room records the request in the state
database, tells the agent where it is decided, wakes up when an approver decides on
any replica, and returns the :class:`HoldOutcome`. See ``docs/approvals.md``.
"""

from dbgate.approvals.model import (
    ApprovalRequest,
    ApprovalService,
    HoldOutcome,
    HoldStatus,
    Requester,
)

__all__ = ["ApprovalRequest", "ApprovalService", "HoldOutcome", "HoldStatus", "Requester"]
