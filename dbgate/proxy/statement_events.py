"""Statement records and the observer's events, for the statement tracker.

A mixin of :class:`~dbgate.proxy.tracker.StatementTracker` (whose ``__init__`` holds
the state): every message the inspector judges may get a
:class:`~dbgate.proxy.seams.StatementRecord`, and the observer hears what it asked to
hear of it — received, decided, forwarded, completed or failed. Records are made only
for what someone follows (``Observer.follows``, ``executes_only``): a session nobody
observes pays nothing here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from dbgate.proxy.entries import (
    FUNCTION_MSG,
    QUERY_MSG,
)
from dbgate.proxy.seams import (
    Allow,
    Observer,
    RecordKind,
    Refuse,
    Statement,
    StatementRecord,
)

if TYPE_CHECKING:
    from dbgate.proxy.session_info import SessionInfo


log = logging.getLogger("dbgate.session")


class StatementEvents:
    """Records and events (see the module docstring)."""

    # The tracker's state these share (set in its ``__init__``).
    info: SessionInfo
    observer: Observer | None
    _hearing: dict[str, Callable[[SessionInfo, StatementRecord], None]]
    _tell_completed: Callable[[SessionInfo, StatementRecord], None] | None
    _tell_received: bool
    _tell_started: bool
    _follows: Callable[[SessionInfo, Allow], bool] | None
    _exec_records: bool
    _executes_only: bool
    _verdict_given: Callable[[SessionInfo, str, Allow | Refuse, bool], None] | None
    _watch: bool
    _unfollowed: dict[int, Allow]
    _next_id: int

    if TYPE_CHECKING:  # the tracker's own method these call

        def _not_followed(self, verdict: Allow) -> None: ...

    def _record(
        self,
        kind: RecordKind,
        sql: str,
        statement_name: str = "",
        portal: str = "",
        params: tuple[bytes | None, ...] = (),
    ) -> StatementRecord:
        self._next_id += 1
        rec = StatementRecord(
            self._next_id, kind, sql, time.monotonic(), statement_name, portal, params
        )
        if self._tell_received:  # few observers want it
            self._emit("statement_received", rec)
        return rec

    def _emit(self, event: str, rec: StatementRecord) -> None:
        tell = self._hearing.get(event)
        if tell is None:
            return
        try:
            tell(self.info, rec)
        except Exception:
            log.exception("session %s: observer failed on %s", self.info.session_id, event)

    def received(self, stmt: Statement) -> StatementRecord | None:
        """The client sent a statement the inspector will judge (Query, Parse, an
        inspected Bind, FunctionCall): start its record."""
        if self.observer is None:
            return None
        return self._record(stmt.kind, stmt.sql, stmt.statement_name, stmt.portal, stmt.params)

    def decided(
        self, rec: StatementRecord | None, verdict: Allow | Refuse, remembered: bool = False
    ) -> None:
        if rec is not None:
            if self._verdict_given is not None:
                self._given(rec.kind, verdict, remembered)
            rec.verdict = verdict
            rec.remembered = remembered
            self._emit("statement_decided", rec)

    def _given(self, kind: str, verdict: Allow | Refuse, remembered: bool) -> None:
        try:
            self._verdict_given(self.info, kind, verdict, remembered)  # type: ignore[misc]
        except Exception:
            log.exception("session %s: observer failed on verdict_given", self.info.session_id)

    def _decision(
        self,
        t: int,
        stmt: Statement,
        rec: StatementRecord | None,
        verdict: Allow | Refuse,
        remembered: bool = False,
    ) -> StatementRecord | None:
        """Tell the observer of a statement's verdict; returns the record its life goes
        on with: None when the observer does not follow it (``Observer.follows``), one
        made now when the statement is followed and was not recorded on receipt."""
        if rec is not None:
            self.decided(rec, verdict, remembered)
        elif self._verdict_given is not None:
            self._given(stmt.kind, verdict, remembered)
        follows = self._follows
        if type(verdict) is not Allow:
            if rec is None and follows is None:  # every statement is followed
                rec = self._made(stmt, verdict, remembered)
            return rec
        if follows is not None:
            if self._unfollowed.get(id(verdict)) is verdict:  # a verdict given again
                return None
            try:
                followed = follows(self.info, verdict)
            except Exception:
                log.exception("session %s: observer failed on follows", self.info.session_id)
                followed = True  # told too much rather than too little
            if not followed:
                self._not_followed(verdict)
                return None
            self._unfollowed.clear()  # following one may change the answer for others
        if t != QUERY_MSG and t != FUNCTION_MSG:
            # a followed Parse or Bind has Executes: from now on they are recorded
            self._exec_records = self._watch = True
            if self._executes_only:
                return rec
        if rec is None:
            rec = self._made(stmt, verdict, remembered)
        return rec

    def _made(self, stmt: Statement, verdict: Allow | Refuse, remembered: bool) -> StatementRecord:
        """The record of a statement followed from its decision on."""
        rec = self._record(stmt.kind, stmt.sql, stmt.statement_name, stmt.portal, stmt.params)
        rec.verdict = verdict
        rec.remembered = remembered
        return rec

    def _finish(self, rec: StatementRecord, code: str = "", skipped: bool = False) -> None:
        if rec.finished_at:
            return
        rec.finished_at = time.monotonic()
        if code or skipped:
            rec.sqlstate = code
            self._emit("statement_failed", rec)
        else:
            self._emit("statement_completed", rec)
