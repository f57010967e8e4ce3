"""The tamper-evident audit trail (docs/audit.md).

Every statement that reaches dbgate, every session, approval decision,
detokenization and reload becomes a record in the state database's ``dbgate``
schema. Records are hash-chained, one chain per writing process; reviewers read
``dbgate.audit_log`` with psql and prove it untouched with ``dbgate audit verify``.

Rooms: :mod:`~dbgate.audit.events` (what callers build), :mod:`~dbgate.audit.writer`
(a package: queue and backpressure, the batching task, the state database, the spill
path), :mod:`~dbgate.audit.rows` and
:mod:`~dbgate.audit.scrub` (making a record safe to store),
:mod:`~dbgate.audit.canonical` (what the hash covers), :mod:`~dbgate.audit.verify`,
:mod:`~dbgate.audit.export`, :mod:`~dbgate.audit.archive`, :mod:`~dbgate.audit.spill`.

Importing this package is cheap: the writer (and asyncpg) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dbgate.audit.errors import AuditError, AuditUnavailable
from dbgate.audit.events import (
    ApprovalEvent,
    AuditEvent,
    DetokenizeEvent,
    ReloadEvent,
    SessionEvent,
    StatementEvent,
)

if TYPE_CHECKING:
    from dbgate.audit.writer import AuditWriter

__all__ = [
    "ApprovalEvent",
    "AuditError",
    "AuditEvent",
    "AuditUnavailable",
    "AuditWriter",
    "DetokenizeEvent",
    "ReloadEvent",
    "SessionEvent",
    "StatementEvent",
]


def __getattr__(name: str) -> Any:
    if name == "AuditWriter":
        from dbgate.audit.writer import AuditWriter

        return AuditWriter
    raise AttributeError(f"module 'dbgate.audit' has no attribute {name!r}")
