"""What can go wrong when someone reads or decides approvals, phrased for that person.

Each error carries the HTTP status and a short machine-readable code, so that the
API, the CLI and (later) the web page report a refusal the same way: the API turns
it into ``{"error": code, "message": ...}`` with ``status``, the CLI prints the
message and exits non-zero.
"""

from __future__ import annotations


class ApprovalError(Exception):
    """A refusal with a reason; never a bug (those are ordinary exceptions)."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ApprovalError):
    status = 400
    code = "bad_request"


class Unauthorized(ApprovalError):
    """No credential, or one that is forged, revoked or expired."""

    status = 401
    code = "unauthorized"


class Forbidden(ApprovalError):
    """A known approver who may not do this (own request, outside the rule's groups)."""

    status = 403
    code = "forbidden"


class NotFound(ApprovalError):
    status = 404
    code = "not_found"


class Conflict(ApprovalError):
    """The request is no longer in a state that allows this (decided, expired, …).
    ``expired_now``: this very attempt found the request overdue and marked it
    expired (the expiry is a step of its own to record)."""

    status = 409
    code = "conflict"

    def __init__(self, message: str, *, expired_now: bool = False) -> None:
        super().__init__(message)
        self.expired_now = expired_now


class StateUnavailable(ApprovalError):
    """The state database cannot be reached or did not answer in time."""

    status = 503
    code = "unavailable"


class PayloadTooLarge(ApprovalError):
    status = 413
    code = "payload_too_large"
