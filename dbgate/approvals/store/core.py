"""The :class:`ApprovalStore` itself: the state its parts share, and how a committed step
is told to :attr:`~ApprovalStore.on_event`. Its other methods come from the mixins of
:mod:`dbgate.approvals.store` — see there for the store's rules.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta

from dbgate.approvals.db import StateDB
from dbgate.approvals.store.decisions import Deciding
from dbgate.approvals.store.records import RequestRecord
from dbgate.approvals.store.requests import Requests
from dbgate.approvals.store.secrets import Secrets
from dbgate.approvals.store.shapes import Shapes

log = logging.getLogger("dbgate.approvals")

#: (step, the request as it is now, who acted or "", why, when it was committed)
StepHook = Callable[[str, RequestRecord, str, str, float], None]


class ApprovalStore(Requests, Deciding, Shapes, Secrets):
    """Reads and writes approval requests; see :mod:`dbgate.approvals.store` for the rules.

    ``owners`` (identity -> approver names, from the config) is added to the owners
    recorded with each request when deciding who may decide it.
    ``approved_lifetime`` is how long an approve-then-retry approval stays usable.
    """

    def __init__(
        self,
        db: StateDB,
        *,
        owners: Mapping[str, Sequence[str]] | None = None,
        approved_lifetime: float = 900.0,
        max_shape_minutes: int = 1440,
    ) -> None:
        self.db = db
        self.owners: Mapping[str, Sequence[str]] = owners or {}
        self.approved_lifetime = timedelta(seconds=approved_lifetime)
        self.max_shape_minutes = max_shape_minutes
        #: Told of each step in a request's life once it is committed: (event, the
        #: request as it is now, who acted or "", why, when: time.time() at the commit).
        #: The audit trail attaches here.
        self.on_event: StepHook | None = None

    async def _tell(self, event: str, request_id: int, actor: str = "", reason: str = "") -> None:
        hook = self.on_event
        if hook is None:
            return
        at = time.time()  # before reading the request back: a later step may overtake it
        try:
            hook(event, await self.get(request_id), actor, reason, at)
        except Exception:  # the step is committed; its echo must not undo the caller's work
            log.exception("approval request %s: the %s event was not told", request_id, event)
