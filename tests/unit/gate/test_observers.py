"""The fan-out of statement events to observers: each event reaches exactly the
observers that want it, a failing observer does not stop the others, and the relay
is told which events nobody wants (it does not emit them)."""

from __future__ import annotations

from typing import Any

from dbgate.gate.observers import STATEMENT_EVENTS, FanOut, MetricsObserver, combine
from dbgate.gate.schema_loads import SchemaWatch
from dbgate.proxy.seams import ALLOW, Statement, StatementRecord
from dbgate.proxy.session_info import SessionInfo
from dbgate.proxy.tracker import StatementTracker


class Recording:
    def __init__(self, name: str, ignores: frozenset[str] = frozenset(), fail: bool = False):
        self.name = name
        self.heard: list[str] = []
        self.fail = fail
        if ignores:
            self.ignores = ignores

    def __getattr__(self, event: str) -> Any:
        if not event.startswith(("statement_", "session_")):
            raise AttributeError(event)

        def hear(*_: Any) -> None:
            self.heard.append(event)
            if self.fail:
                raise RuntimeError("observer bug")

        return hear


def test_each_event_reaches_the_observers_that_do_not_ignore_it() -> None:
    wants_all = Recording("all", fail=True)  # fails on every event: the others still hear
    decided_only = Recording("decided", frozenset(STATEMENT_EVENTS) - {"statement_decided"})
    fan = FanOut([wants_all, decided_only])
    record = StatementRecord(1, "query", "select 1", 0.0)
    for event in STATEMENT_EVENTS:
        getattr(fan, event)(None, record)
    fan.session_started(None)  # type: ignore[arg-type]
    assert wants_all.heard == [*STATEMENT_EVENTS, "session_started"]
    assert decided_only.heard == ["statement_decided", "session_started"]  # sessions: all
    assert fan.ignores == frozenset()


def test_events_nobody_wants_are_not_emitted_by_the_relay() -> None:
    fan = combine([MetricsObserver(), SchemaWatch(())])
    assert isinstance(fan, FanOut)
    assert fan.ignores == {"statement_received", "statement_forwarded"}
    spy = Recording("spy", frozenset({"statement_received", "statement_forwarded"}))
    info = SessionInfo(1, "agent", "db", "app", "127.0.0.1")
    tracker = StatementTracker(info, observer=spy)  # type: ignore[arg-type]
    rec = tracker.received(Statement("query", "select 1"))
    assert rec is not None
    tracker.decided(rec, ALLOW)
    tracker.query_sent(rec, ALLOW)  # statement_forwarded
    assert spy.heard == ["statement_decided"]


def test_an_event_one_observer_hears_goes_straight_to_it_and_its_failure_is_contained() -> None:
    """The relay calls the one observer hearing an event directly (no loop of the
    fan-out); one that fails there is logged and the statement goes on."""
    decided_only = Recording(
        "decided", frozenset(STATEMENT_EVENTS) - {"statement_decided"}, fail=True
    )
    ends_only = Recording(
        "ends", frozenset(STATEMENT_EVENTS) - {"statement_completed", "statement_failed"}
    )
    also_ends = Recording(
        "ends too", frozenset(STATEMENT_EVENTS) - {"statement_completed", "statement_failed"}
    )
    fan = FanOut([decided_only, ends_only, also_ends])
    # decided: the observer's own method; completed (two hear it): the fan-out's
    assert getattr(fan.listener("statement_decided"), "__self__", None) is not fan
    assert getattr(fan.listener("statement_completed"), "__self__", None) is fan
    info = SessionInfo(1, "agent", "db", "app", "127.0.0.1")
    tracker = StatementTracker(info, observer=fan)
    rec = tracker.received(Statement("query", "select 1"))
    assert rec is not None
    tracker.decided(rec, ALLOW)  # the observer raises: logged, not raised
    tracker._finish(rec)
    assert decided_only.heard == ["statement_decided"]
    assert ends_only.heard == also_ends.heard == ["statement_completed"]
