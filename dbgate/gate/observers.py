"""Observers of the relay's statement lifecycle: metrics now, audit beside them.

The relay tells one :class:`~dbgate.proxy.seams.Observer` of every statement's life
(received, decided, forwarded, completed or failed) and of sessions. Here that one
place fans out to whatever the composition root attached, each told in turn; one
that raises is logged and the others still hear of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from dbgate import metrics
from dbgate.gate.notes import GateNote
from dbgate.proxy.seams import (
    STATEMENT_EVENTS,
    Allow,
    Observer,
    QuietObserver,
    Refuse,
    StatementRecord,
)
from dbgate.proxy.session_info import SessionInfo

log = logging.getLogger("dbgate.gate")

_REFUSED_REASONS = {
    "28P01": "auth",
    "28000": "auth",
    "53300": "too_many_clients",
    "57P03": "shutting_down",
    "42501": "not_allowed",
    "08P01": "protocol",
}


def _follows_nothing(session: SessionInfo, verdict: Allow) -> bool:
    return False


class FanOut:
    """Tells each observer in turn (an :class:`Observer` itself). Each statement event
    goes only to the observers that do not declare they ignore it, and the events all
    of them ignore are this fan-out's ``ignores`` (the relay skips them)."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self.observers = tuple(observers)
        self._hearing = {
            event: tuple(
                o for o in self.observers if event not in getattr(o, "ignores", frozenset())
            )
            for event in STATEMENT_EVENTS
        }
        self.ignores = frozenset(e for e, hearing in self._hearing.items() if not hearing)
        # A statement is followed when one of the observers follows it; one that does
        # not say (``follows`` absent or None) follows every statement, one that hears
        # nothing after a decision follows none.
        after = {"statement_forwarded", "statement_completed", "statement_failed"}
        each = tuple(
            getattr(o, "follows", None)
            for o in self.observers
            if not after <= getattr(o, "ignores", frozenset())
        )
        self._follows = each
        self.follows: Callable[[SessionInfo, Allow], bool] | None = (
            None
            if any(f is None for f in each)
            else _follows_nothing
            if not each
            else each[0]
            if len(each) == 1
            else self._any_follows
        )
        # No record of an allowed Parse or Bind when none of those that hear a
        # statement's end wants one (Observer.executes_only).
        self.executes_only = all(
            getattr(o, "executes_only", False)
            for o in self.observers
            if not after <= getattr(o, "ignores", frozenset())
        )
        given = tuple(
            g for g in (getattr(o, "verdict_given", None) for o in self.observers) if g is not None
        )
        self._given = given
        self.verdict_given: Callable[..., None] | None = (
            None if not given else given[0] if len(given) == 1 else self._each_given
        )
        # each event's bound methods, found once (an event is told several times a statement)
        self._calls = {
            event: tuple(getattr(o, event) for o in self._hearing.get(event, self.observers))
            for event in (*STATEMENT_EVENTS, "session_started", "session_ended", "session_refused")
        }

    def _each_given(
        self, session: SessionInfo, kind: str, verdict: Allow | Refuse, remembered: bool
    ) -> None:
        for given in self._given:
            try:
                given(session, kind, verdict, remembered)
            except Exception:
                log.exception(
                    "observer %s failed on verdict_given",
                    type(getattr(given, "__self__", given)).__name__,
                )

    def _any_follows(self, session: SessionInfo, verdict: Allow) -> bool:
        return any(f(session, verdict) for f in self._follows)  # type: ignore[misc]

    def listener(self, event: str) -> Callable[..., None]:
        """What the relay calls to tell ``event``: the one observer's own method when
        only one hears it (the relay isolates its failures, see
        :meth:`~dbgate.proxy.tracker.StatementTracker._emit`), else this fan-out's.
        A statement's events mostly have one listener each (the metrics hear its
        decision, the audit trail its end): no loop for those."""
        calls = self._calls[event]
        if len(calls) == 1:
            return calls[0]
        if event not in STATEMENT_EVENTS:
            return getattr(self, event)  # type: ignore[no-any-return]

        def failed(call: Callable[..., None]) -> None:
            log.exception(
                "observer %s failed on %s", type(getattr(call, "__self__", call)).__name__, event
            )

        if len(calls) == 2:
            # the audit trail and one other (window charges) hear every statement's
            # end: each told in turn, without a loop
            first, second = calls

            def tell_two(session: SessionInfo, record: StatementRecord) -> None:
                try:
                    first(session, record)
                except Exception:
                    failed(first)
                try:
                    second(session, record)
                except Exception:
                    failed(second)

            return tell_two

        # what _each does for this event, without looking its calls up each time (the
        # audit trail hears every statement's end, and so do the others beside it)
        def tell(session: SessionInfo, record: StatementRecord) -> None:
            for call in calls:
                try:
                    call(session, record)
                except Exception:
                    failed(call)

        return tell

    def _each(self, method: str, *args: Any) -> None:
        for call in self._calls[method]:
            try:
                call(*args)
            except Exception:
                log.exception(
                    "observer %s failed on %s",
                    type(getattr(call, "__self__", call)).__name__,
                    method,
                )

    def session_started(self, session: SessionInfo) -> None:
        self._each("session_started", session)

    def session_ended(self, session: SessionInfo) -> None:
        self._each("session_ended", session)

    def session_refused(
        self, user: str, database: str, client_addr: str, sqlstate: str, message: str
    ) -> None:
        self._each("session_refused", user, database, client_addr, sqlstate, message)

    def statement_received(self, session: SessionInfo, record: StatementRecord) -> None:
        self._each("statement_received", session, record)

    def statement_decided(self, session: SessionInfo, record: StatementRecord) -> None:
        self._each("statement_decided", session, record)

    def statement_forwarded(self, session: SessionInfo, record: StatementRecord) -> None:
        self._each("statement_forwarded", session, record)

    def statement_completed(self, session: SessionInfo, record: StatementRecord) -> None:
        self._each("statement_completed", session, record)

    def statement_failed(self, session: SessionInfo, record: StatementRecord) -> None:
        self._each("statement_failed", session, record)


def combine(observers: Sequence[Observer]) -> Observer | None:
    """None, the one observer, or a :class:`FanOut` of several."""
    if not observers:
        return None
    if len(observers) == 1:
        return observers[0]
    return FanOut(observers)


class MetricsObserver(QuietObserver):
    """Counts sessions, refusals at startup and decided statements (Prometheus).

    A statement is counted once, when it is decided (an Execute is decided by the
    Parse that prepared it and is not counted again), by the category and action the
    gate's note gives.
    """

    ignores = frozenset(STATEMENT_EVENTS)  # a decision is told by verdict_given

    def follows(self, session: SessionInfo, verdict: Allow) -> bool:
        """No statement: the metrics count decisions only."""
        return False

    def session_started(self, session: SessionInfo) -> None:
        metrics.session_opened()

    def session_ended(self, session: SessionInfo) -> None:
        metrics.session_closed()

    def session_refused(
        self, user: str, database: str, client_addr: str, sqlstate: str, message: str
    ) -> None:
        metrics.connection_refused(_REFUSED_REASONS.get(sqlstate, "other"))

    def verdict_given(
        self, session: SessionInfo, kind: str, verdict: Allow | Refuse, remembered: bool
    ) -> None:
        if kind == "execute":
            return
        note = verdict.note
        if isinstance(note, GateNote):
            metrics.statement(note.category, note.action)
        elif isinstance(verdict, Refuse):
            metrics.statement("unknown", "refuse")
        else:
            metrics.statement("unknown", "allow")
