"""Approval requests, decisions and shape approvals in the state database.

This is the only package that writes ``dbgate.approval_requests``. Its rules:

* **Status changes are conditional updates** (``… WHERE status = 'pending'``), so
  when a decision, an expiry and a withdrawal race, exactly one wins and the others
  see what happened. A database trigger also refuses any change outside the
  lifecycle (docs/approvals.md), whoever attempts it.
* **Decisions lock the request row** (``SELECT … FOR UPDATE``): two approvers, or
  two tabs of one, deciding at once are serialised; the second finds the request
  decided and gets a 409 :class:`~dbgate.approvals.errors.Conflict`.
* **An approval is used once.** A waiting session *claims* its approved request; an
  approve-then-retry approval is claimed by the first identical retry
  (``FOR UPDATE SKIP LOCKED``), never by a second.
* Every change of status is announced on channel ``dbgate_approvals`` by a trigger,
  at commit, which wakes the replica that holds the statement.
* **Every step is told, refusals too.** Each committed step of a request's life, a
  shape approval's revocation, and every decision that was refused (not eligible,
  already decided, expired) is told to :attr:`ApprovalStore.on_event`, which the
  audit trail attaches to: whoever tried to decide what, through which door, and why
  it did not count.

One class, one module per job. :class:`ApprovalStore` (``core``) holds what its parts
share (the state database, the owners from the config, the lifetimes, ``on_event``);
the other modules each give it one mixin, because a decision, a shape approval and a
step of a request's life all lock, change and read the same request rows, and each
step is told through the same hook:

=============  ===================================================================
``records``    what is stored and returned: :class:`NewRequest`,
               :class:`RequestRecord` with its :class:`Decision` rows,
               :class:`ShapeRecord`, :data:`STATUSES`, the columns a new request
               fills
``core``       :class:`ApprovalStore`: the state its parts share, :data:`StepHook`
               and telling a committed step to ``on_event``
``requests``   ``Requests``: record a held request, the steps of its life that are
               not decisions (claim, expire, withdraw, abandon, sweep, executed,
               the row estimate), and reading (``get``, ``list``, ``history``)
``decisions``  ``Deciding``: ``decide`` (the row lock, N distinct approvers, the
               first no), the refusals (``refused``), :func:`clean_reason`
``shapes``     ``Shapes``: give a shape approval from a request, find and use it,
               revoke it, read shapes back
``secrets``    ``Secrets``: secrets shared by every replica (the retry-matching
               key when ``approvals.match_key`` is not set)
=============  ===================================================================

The mixins call each other through ``self`` (a shape approval records its request's
decision with ``self._record_decision``; every part tells its steps with
``self._tell``), never at import time.
"""

from __future__ import annotations

from dbgate.approvals.store.core import ApprovalStore, StepHook
from dbgate.approvals.store.decisions import MAX_REASON, clean_reason
from dbgate.approvals.store.records import (
    STATUSES,
    Decision,
    NewRequest,
    RequestRecord,
    ShapeRecord,
)
from dbgate.approvals.store.requests import DECIDED_JOIN

__all__ = [
    "DECIDED_JOIN",
    "MAX_REASON",
    "STATUSES",
    "ApprovalStore",
    "Decision",
    "NewRequest",
    "RequestRecord",
    "ShapeRecord",
    "StepHook",
    "clean_reason",
]
