"""The fan-out of statement events to observers: each event reaches exactly the
observers that want it, a failing observer does not stop the others, and the relay
is told which events nobody wants (it does not emit them)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from dbgate.gate.observers import STATEMENT_EVENTS, FanOut, MetricsObserver, combine
from dbgate.gate.schema_loads import SchemaWatch
from dbgate.policy.model import Category
from dbgate.proxy.seams import ALLOW, Allow, Statement, StatementRecord
from dbgate.proxy.session_info import SessionInfo
from dbgate.proxy.tracker import StatementTracker
from dbgate.wire import messages as m
from tests.unit.proxy.test_tracker import Pair


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
    # the metrics count decisions through verdict_given, with no record
    assert fan.ignores == {"statement_received", "statement_decided", "statement_forwarded"}
    assert fan.verdict_given is not None and fan.follows is not None
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
        "ends too",
        frozenset(STATEMENT_EVENTS) - {"statement_completed", "statement_failed"},
        fail=True,
    )
    fan = FanOut([decided_only, also_ends, ends_only])
    # decided: the observer's own method; completed (two hear it): the fan-out's loop,
    # where one that fails does not keep the next from hearing
    assert getattr(fan.listener("statement_decided"), "__self__", None) is not fan
    assert getattr(fan.listener("statement_completed"), "__self__", None) not in (
        ends_only,
        also_ends,
    )
    info = SessionInfo(1, "agent", "db", "app", "127.0.0.1")
    tracker = StatementTracker(info, observer=fan)
    rec = tracker.received(Statement("query", "select 1"))
    assert rec is not None
    tracker.decided(rec, ALLOW)  # the observer raises: logged, not raised
    tracker._finish(rec)
    assert decided_only.heard == ["statement_decided"]
    assert ends_only.heard == also_ends.heard == ["statement_completed"]
    # three that hear it (a loop): the same
    third = Recording(
        "third", frozenset(STATEMENT_EVENTS) - {"statement_completed", "statement_failed"}
    )
    fan = FanOut([also_ends, third, ends_only])
    fan.listener("statement_completed")(info, rec)
    assert also_ends.heard == ends_only.heard == ["statement_completed"] * 2
    assert third.heard == ["statement_completed"]


class Loads:
    """What :class:`SchemaWatch` asks of a database's schema snapshots."""

    def __init__(self) -> None:
        self.refreshed: list[str] = []
        self.changing: list[str] = []

    def change_began(self, database: str) -> None:
        self.changing.append(database)

    def change_ended(self, database: str) -> None:
        self.changing.remove(database)
        self.refreshed.append(database)

    def refresh_soon(self, database: str) -> None:
        self.refreshed.append(database)


class DdlInspector:
    """Allows everything; a text that says ``ddl`` is classified as DDL."""

    inspects_binds = False

    def inspect(self, session: SessionInfo, stmt: Any) -> Allow:
        categories = frozenset({Category.DDL}) if "ddl" in stmt.sql else frozenset()
        return Allow(note=SimpleNamespace(classification=SimpleNamespace(categories=categories)))


def _schema_watched(seed: int) -> tuple[Pair, Loads]:
    loads = Loads()
    watch = combine([MetricsObserver(), SchemaWatch([loads])])  # type: ignore[list-item]
    return Pair(seed, inspector=DdlInspector(), observer=watch), loads


def test_the_schema_reloads_once_the_transaction_of_a_ddl_statement_is_over() -> None:
    """The schema watch follows a DDL statement and every statement after it until its
    transaction ends, also one pipelined behind it before its answer came: the reload
    comes after the COMMIT, not after the DDL statement."""
    p, loads = _schema_watched(30)
    p.send(m.query("select rows=1"), m.query("begin"))
    p.answer()
    assert loads.refreshed == [] and not p.tracker._watch  # nothing followed
    p.send(m.query("create ddl"), m.query("select rows=2"))
    p.answer()
    assert loads.refreshed == []  # still in the transaction
    p.send(m.query("commit"))
    p.answer()
    assert loads.refreshed == ["db"]
    p.send(m.query("select rows=1"))
    p.answer()
    assert loads.refreshed == ["db"]


class RememberingDdlInspector(DdlInspector):
    """:class:`DdlInspector` that gives a text the same verdict object every time, as
    remembered verdicts are given again."""

    def __init__(self) -> None:
        self.verdicts: dict[str, Allow] = {}

    def inspect(self, session: SessionInfo, stmt: Any) -> Allow:
        verdict = self.verdicts.get(stmt.sql)
        if verdict is None:
            verdict = self.verdicts[stmt.sql] = super().inspect(session, stmt)
        return verdict


def test_a_verdict_not_followed_before_is_followed_after_ddl_in_its_transaction() -> None:
    """The relay does not ask the observer again about a verdict it did not follow
    when the same verdict is given again, until the observer follows a statement: a
    COMMIT not followed before is followed after DDL, so the schema reloads at it."""
    loads = Loads()
    watch = combine([MetricsObserver(), SchemaWatch([loads])])  # type: ignore[list-item]
    p = Pair(31, inspector=RememberingDdlInspector(), observer=watch)
    for _ in range(2):
        p.send(m.query("begin"), m.query("select rows=1"), m.query("commit"))
        p.answer()
    assert loads.refreshed == [] and not p.tracker._watch  # nothing followed
    p.send(m.query("begin"), m.query("create ddl"))
    p.answer()
    assert loads.refreshed == []  # still in the transaction
    p.send(m.query("commit"))
    p.answer()
    assert loads.refreshed == ["db"]


def test_a_ddl_statement_pipelined_with_its_commit_reloads_the_schema() -> None:
    p, loads = _schema_watched(31)
    p.send(m.query("begin"), m.query("create ddl"), m.query("commit"))
    p.answer()
    assert loads.refreshed == ["db"]
    # prepared, then executed in the extended protocol, outside a transaction
    p.send(m.Parse("s", "alter ddl").encode(), m.SYNC)
    p.answer()
    before = len(loads.refreshed)
    p.send(m.Bind("", "s").encode(), m.Execute("", 0).encode(), m.SYNC)
    p.answer()
    assert len(loads.refreshed) == before + 1


def test_a_ddl_execute_answered_before_its_sync_reloads_once_the_sync_committed_it() -> None:
    """An Execute's CommandComplete comes before its Sync (the client sent Flush, or
    pipelines the Sync later): the implicit transaction commits at the Sync, so a
    reload started at the CommandComplete could read the schema before the change."""
    p, loads = _schema_watched(32)
    p.send(m.Parse("", "alter ddl").encode(), m.Bind("", "").encode(), m.Execute("", 0).encode())
    p.send(m.FLUSH)
    p.answer()  # ParseComplete, BindComplete, CommandComplete: no ReadyForQuery yet
    assert loads.refreshed == []
    p.send(m.SYNC)
    p.answer()
    assert loads.refreshed == ["db"]
    p.send(m.query("select rows=1"))
    p.answer()
    assert loads.refreshed == ["db"]  # once


def test_a_ddl_execute_inside_a_block_reloads_at_the_commit_not_at_its_sync() -> None:
    p, loads = _schema_watched(33)
    p.send(m.query("begin"))
    p.answer()
    p.send(m.Parse("", "alter ddl").encode(), m.Bind("", "").encode(), m.Execute("", 0).encode())
    p.send(m.SYNC)
    p.answer()
    assert loads.refreshed == []  # status T: the change is not committed
    p.send(m.Parse("", "select rows=1").encode(), m.Bind("", "").encode())
    p.send(m.Execute("", 0).encode(), m.SYNC)
    p.answer()
    assert loads.refreshed == []
    p.send(m.query("commit"))
    p.answer()
    assert loads.refreshed == ["db"]


def test_a_fan_out_follows_what_any_observer_follows_and_all_when_one_does_not_say() -> None:
    class Follows(Recording):
        def __init__(self, word: str) -> None:
            super().__init__(word, frozenset(STATEMENT_EVENTS) - {"statement_completed"})
            self.word = word
            self.given: list[str] = []

        def follows(self, session: Any, verdict: Allow) -> bool:
            return verdict.note == self.word

        def verdict_given(self, session: Any, kind: str, verdict: Any, remembered: bool) -> None:
            self.given.append(kind)

    a, b = Follows("a"), Follows("b")
    fan = FanOut([a, b])
    assert fan.follows is not None
    assert [fan.follows(None, Allow(note=w)) for w in ("a", "b", "c")] == [True, True, False]
    fan.verdict_given(None, "query", ALLOW, False)  # type: ignore[misc]
    assert a.given == b.given == ["query"]
    # an observer without ``follows`` (the audit trail) follows every statement; one
    # that hears nothing after a decision follows none
    assert FanOut([a, Recording("all")]).follows is None
    decided_only = Recording("decided", frozenset(STATEMENT_EVENTS) - {"statement_decided"})
    one = FanOut([a, decided_only]).follows
    assert one is not None and [one(None, Allow(note=w)) for w in "ab"] == [True, False]
    none = FanOut([MetricsObserver(), decided_only]).follows
    assert none is not None and not none(None, Allow(note="a"))
    assert FanOut([Recording("x"), Recording("y")]).verdict_given is None


class ExecutesOnly:
    """Hears statement ends only, follows every statement (no ``follows``, like the
    audit trail) and needs no record of an allowed Parse or Bind."""

    ignores = frozenset({"statement_received", "statement_decided", "statement_forwarded"})
    executes_only = True

    def __init__(self) -> None:
        self.ended: list[tuple[str, str, str]] = []

    def statement_completed(self, session: Any, record: StatementRecord) -> None:
        self.ended.append((record.kind, record.sql, "completed"))

    def statement_failed(self, session: Any, record: StatementRecord) -> None:
        self.ended.append((record.kind, record.sql, "failed"))

    def __getattr__(self, event: str) -> Any:
        if event.startswith("session_"):
            return lambda *_: None
        raise AttributeError(event)


def test_an_observer_of_executes_only_gets_no_record_of_an_allowed_parse_or_bind() -> None:
    from tests.unit.proxy.test_tracker import Inspector

    watch = ExecutesOnly()
    fan = FanOut([MetricsObserver(), watch])
    assert fan.executes_only and fan.follows is None
    assert not FanOut([watch, Recording("all")]).executes_only  # one that wants them all
    p = Pair(34, inspector=Inspector(), observer=fan)
    p.send(m.Parse("s", "select rows=2").encode(), m.SYNC)
    p.answer()
    assert watch.ended == []  # the Parse: no record
    p.send(m.Bind("", "s").encode(), m.Execute("", 0).encode(), m.SYNC)
    p.send(m.query("select rows=1"))
    p.answer()
    assert [(k, e) for k, _, e in watch.ended] == [("execute", "completed"), ("query", "completed")]
    # a refused Parse is still recorded (and so is a refused Query)
    p.send(m.Parse("", "refuse me").encode(), m.SYNC, m.query("refuse this"))
    p.answer()
    assert watch.ended[2:] == [
        ("parse", "refuse me", "failed"),
        ("query", "refuse this", "failed"),
    ]
