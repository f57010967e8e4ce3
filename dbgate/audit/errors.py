"""The audit room's errors: whose problem it is decides what the caller does."""

from __future__ import annotations


class AuditError(Exception):
    """The audit store is misconfigured or misused (bad DSN, schema not migrated,
    a chain claimed twice, a bad export file): an operator must act."""


class AuditUnavailable(AuditError):
    """The audit cannot record right now (state database unreachable, spill file
    full, record not committed in time). Callers refuse the statement: fail closed."""
