"""The observer sees every statement's whole life, with real drivers and a real server.

One place where a statement's life is visible: received, decided (with the verdict
and the inspector's note, also when the relay remembered the verdict), forwarded,
then completed (command tags, rows) or failed (SQLSTATE). Audit and metrics attach
here and nowhere else, so every path must report: simple and extended protocol,
repeated statements served from the relay's memory, refusals, errors, row-limited
portals.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from dbgate.proxy.seams import ALLOW_REPEATABLE, Allow, Refuse, Statement, StatementRecord
from dbgate.proxy.session_info import SessionInfo


class Recorder:
    """Keeps (event, kind, sql, verdict note, tags, rows, sqlstate) per statement."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, str]] = []
        self.finished: dict[int, StatementRecord] = {}
        self.sessions: list[str] = []
        self.ended = threading.Event()
        self.lock = threading.Lock()

    def _add(self, event: str, rec: StatementRecord) -> None:
        with self.lock:
            self.events.append((event, rec.id, rec.kind))
            if event in ("completed", "failed"):
                self.finished[rec.id] = rec

    def session_started(self, session: SessionInfo) -> None:
        self.sessions.append("started")

    def session_ended(self, session: SessionInfo) -> None:
        self.sessions.append("ended")
        self.ended.set()

    def session_refused(self, *args: Any) -> None: ...

    def statement_received(self, session: SessionInfo, rec: StatementRecord) -> None:
        self._add("received", rec)

    def statement_decided(self, session: SessionInfo, rec: StatementRecord) -> None:
        self._add("decided", rec)

    def statement_forwarded(self, session: SessionInfo, rec: StatementRecord) -> None:
        self._add("forwarded", rec)

    def statement_completed(self, session: SessionInfo, rec: StatementRecord) -> None:
        self._add("completed", rec)

    def statement_failed(self, session: SessionInfo, rec: StatementRecord) -> None:
        self._add("failed", rec)

    def lives(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for event, rid, _ in self.events:
            out.setdefault(rid, []).append(event)
        return out


class NotingInspector:
    """Notes every verdict with the statement text; refuses texts saying 'nope'."""

    inspects_binds = False

    def inspect(self, session: SessionInfo, stmt: Statement) -> Allow | Refuse:
        if "nope" in stmt.sql:
            return Refuse("42501", "dbgate: nope", note=("refused", stmt.sql))
        if stmt.sql.startswith("select 1"):
            return ALLOW_REPEATABLE  # remembered by the relay after the first time
        return Allow(note=("allowed", stmt.sql))


@pytest.fixture
def observed(make_proxy: Any, pg_database: str) -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()
    running = make_proxy(inspector=NotingInspector(), observer=recorder)
    yield running.dsn(pg_database), recorder


def test_every_statement_is_received_decided_forwarded_and_finished(
    observed: tuple[str, Recorder],
) -> None:
    dsn, rec = observed
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create temp table t (x int)")
        conn.execute("insert into t select generate_series(1, 5)")
        assert conn.execute("select count(*) from t").fetchone() == (5,)
        for _ in range(3):
            assert conn.execute("select 1").fetchone() == (1,)  # remembered after the first
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select 'nope'")
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select 1/0 as boom")
        assert conn.execute("select x from t where x > %s order by x", [3]).fetchall() == [
            (4,),
            (5,),
        ]
    assert rec.ended.wait(10), "the session's end was never reported"
    with rec.lock:
        lives = rec.lives()
        finished = dict(rec.finished)
    assert rec.sessions == ["started", "ended"]
    for rid, events in lives.items():
        assert events[0] == "received", events
        assert events.count("completed") + events.count("failed") == 1, (rid, events)
        if "forwarded" in events:
            assert events.index("decided") < events.index("forwarded"), events
    executed = [r for r in finished.values() if r.kind in ("query", "execute")]
    by_sql = {r.sql: r for r in executed}
    insert = by_sql["insert into t select generate_series(1, 5)"]
    assert (insert.tags, insert.rows, insert.sqlstate) == (["INSERT 0 5"], 5, "")
    assert insert.note == ("allowed", insert.sql)
    refused = [r for r in finished.values() if r.sqlstate == "42501"]
    assert len(refused) == 1 and refused[0].note == ("refused", "select 'nope'")
    boom = [r for r in finished.values() if "boom" in r.sql and r.kind in ("query", "execute")]
    assert [r.sqlstate for r in boom] == ["22012"]
    ones = [r for r in executed if r.sql == "select 1"]
    assert len(ones) == 3 and all(r.tags == ["SELECT 1"] for r in ones)
    assert any(r.remembered for r in finished.values() if r.sql == "select 1")
    where = by_sql["select x from t where x > $1 order by x"]
    assert (where.tags, where.rows) == (["SELECT 2"], 2)


def test_a_client_turned_away_at_startup_is_reported(
    observed: tuple[str, Recorder], make_proxy: Any, pg_database: str
) -> None:
    refused: list[tuple[str, str, str]] = []

    class Refusals(Recorder):
        def session_refused(
            self, user: str, database: str, client_addr: str, sqlstate: str, message: str
        ) -> None:
            refused.append((user, database, sqlstate))

    running = make_proxy(observer=Refusals())
    bad = running.dsn(pg_database).replace("agent-secret-pw", "wrong")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(bad, connect_timeout=5)
    assert refused == [("agent", pg_database, "28P01")]
