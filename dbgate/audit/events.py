"""What callers hand the audit writer: one small object per event.

These are the only types the rest of dbgate needs to build (``gate`` for statements
and sessions, ``approvals`` for decisions, ``pii`` for detokenizations, ``app`` for
reloads). They are plain slotted dataclasses, neither frozen nor validated: one is
built per statement on the relay's hot path, where a frozen dataclass's ``__init__``
costs several times more. Callers must not change an event after handing it over.
All the work — scrubbing, escaping, coercing, hashing — happens later in the
writer's task (:mod:`dbgate.audit.rows`), which never rejects an event: a value of
the wrong type is recorded as text and the record says so.

Timestamps are ``time.time()`` floats (or aware datetimes); ``at`` defaults to the
moment the event object is built.

Statement text must already be masked by the caller (literals compared with or
assigned to PII columns replaced); the writer's scrubber is only a last resort.
Parameters are either masked text (``str``), ``None`` for SQL NULL, or the raw value
as ``bytes``, which the writer replaces by a keyed hash and never stores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import Any, Literal

Timestamp = float | datetime

#: What happened to a statement, as recorded in ``decision``.
Decision = Literal[
    "allow",  # forwarded without asking anyone
    "deny",  # refused by the rules
    "hold",  # waiting for approval (the record written before waiting)
    "approved",  # held, then approved: forwarded
    "rejected",  # held, then rejected by an approver
    "expired",  # held, nobody decided in time
    "withdrawn",  # held, the client cancelled or disconnected
    "refused",  # not forwarded for another reason (audit unavailable, inspector error)
]

#: A statement's stage: ``decided`` is written (durably) before a held, approved,
#: denied or rejected statement is forwarded or refused; ``completed``/``failed``
#: when the server has answered; ``refused`` when dbgate answered instead.
StatementStage = Literal["decided", "completed", "failed", "refused"]

#: ``pii_exempt``: the session sees raw values (``pii.exempt_*``); ``reason`` says why.
SessionStage = Literal["connect", "auth_ok", "auth_failed", "disconnect", "pii_exempt"]

#: ``revoked``: a shape approval given from this request was revoked; ``refused``: an
#: attempt to decide (or revoke) did not count — not eligible, already decided, expired.
ApprovalStage = Literal[
    "requested",
    "approved",
    "rejected",
    "expired",
    "withdrawn",
    "abandoned",
    "executed",
    "revoked",
    "refused",
]

ReloadWhat = Literal["config", "rules", "catalog"]


def _now() -> float:
    return time.time()


@dataclass(slots=True)
class StatementEvent:
    """One statement (or one simple-query string) at one stage of its life."""

    event: StatementStage
    statement: str | bytes  # masked by the caller
    decision: Decision | str = "allow"
    at: Timestamp = field(default_factory=_now)
    identity: str = ""
    session_id: int | None = None
    application_name: str = ""
    client_addr: str = ""
    database: str = ""
    purpose: str = ""
    model: str = ""
    params: tuple[str | bytes | None, ...] = ()
    fingerprint: str = ""
    categories: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()  # "table.column", as the classifier names them
    rule: str = ""
    approval_id: str = ""
    outcome: str = ""  # command tag(s) ("SELECT 3"), or the SQLSTATE of a failure
    rows: int | None = None
    duration_us: int | None = None
    tokenized: bool | None = None  # were values in the results replaced by tokens
    reason: str = ""  # why it was refused or held, for humans


@dataclass(slots=True)
class SessionEvent:
    """A client connecting, authenticating (or failing to) and leaving."""

    event: SessionStage
    at: Timestamp = field(default_factory=_now)
    identity: str = ""  # the user name the client gave, also when authentication failed
    session_id: int | None = None
    application_name: str = ""
    client_addr: str = ""
    database: str = ""
    outcome: str = ""  # SQLSTATE when refused
    reason: str = ""
    duration_us: int | None = None  # session length, on disconnect
    statements: int | None = None  # statements the session ran, on disconnect


@dataclass(slots=True)
class ApprovalEvent:
    """A step in an approval request's life, above all a human's decision."""

    event: ApprovalStage
    approval_id: str
    at: Timestamp = field(default_factory=_now)
    identity: str = ""  # who asked
    actor: str = ""  # who decided (approver), or "" for the system
    reason: str = ""
    statement: str = ""  # masked, as the approver saw it
    fingerprint: str = ""
    categories: tuple[str, ...] = ()
    rule: str = ""
    #: "shape" approvals: the fingerprint is allowed for this identity until then.
    expires_at: Timestamp | None = None


@dataclass(slots=True)
class DetokenizeEvent:
    """Someone turned tokens back into the values they stand for."""

    identity: str  # whose tokens (the agent identity the values were shown to)
    actor: str  # who detokenized (an approver or operator)
    tokens: int
    at: Timestamp = field(default_factory=_now)
    columns: tuple[str, ...] = ()
    approval_id: str = ""
    reason: str = ""


@dataclass(slots=True)
class ReloadEvent:
    """The configuration, rule pack or PII catalog was (re)loaded, or failed to."""

    what: ReloadWhat | str
    ok: bool
    at: Timestamp = field(default_factory=_now)
    source: str = ""  # file or directory
    version: str = ""  # a checksum of what was loaded
    actor: str = ""  # who asked (signal, API user)
    reason: str = ""  # the error, when it failed


def statement_like_plain(
    proto: StatementEvent,
    event: StatementStage,
    at: Timestamp,
    params: tuple[str | bytes | None, ...],
    outcome: str,
    rows: int | None,
    duration_us: int | None,
    tokenized: bool | None,
) -> StatementEvent:
    copy = replace(proto, event=event, at=at, params=params, outcome=outcome)
    copy.rows, copy.duration_us, copy.tokenized = rows, duration_us, tokenized
    return copy


#: ``statement_like(proto, event, at, params, outcome, rows, duration_us, tokenized)``:
#: a new StatementEvent with ``proto``'s values but these (the fields in which one
#: statement shape's executions in one session differ): copied in one compiled step
#: (dbgate/audit/_seal.c), a fifth of building it field by field.
statement_like = statement_like_plain
_VARYING = ("event", "at", "params", "outcome", "rows", "duration_us", "tokenized")
try:
    from dbgate.audit import _seal

    _names = tuple(f.name for f in fields(StatementEvent))
    if _seal.configure_like(StatementEvent, _names, tuple(map(_names.index, _VARYING))):
        statement_like = _seal.statement_like  # type: ignore[assignment]
except ImportError:  # pragma: no cover - depends on the build
    pass


AuditEvent = StatementEvent | SessionEvent | ApprovalEvent | DetokenizeEvent | ReloadEvent
EVENT_TYPES: tuple[type, ...] = (
    StatementEvent,
    SessionEvent,
    ApprovalEvent,
    DetokenizeEvent,
    ReloadEvent,
)


class WriterEvent:
    """Records the writer makes about itself: chain start and end, outages."""

    __slots__ = ("at", "details", "event")

    def __init__(self, event: str, details: dict[str, Any], at: float) -> None:
        self.event = event
        self.details = details
        self.at = at
