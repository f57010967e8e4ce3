"""Pings that keep a held statement's transaction alive, against a simulated server.

A ping is a Sync of dbgate's (:meth:`StatementTracker.ping`): sent only inside a
transaction block and at a cycle boundary, its ReadyForQuery swallowed. Checked
here with no sockets: when the tracker offers one and when it must not (inside a
batch, after an error while the server skips to Sync, outside a block, while one is
in flight), that the client sees exactly what it would have seen without pings,
that the cycle counts are the client's only, and how the interval is derived.
The real server's idle guard is in tests/integration/holds/test_holds_in_transaction.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbgate.proxy.hold_ping import MAX_INTERVAL, MIN_INTERVAL, ping_interval
from dbgate.wire import messages as m
from tests.unit.proxy.pgsim import SimServer
from tests.unit.proxy.test_tracker import SQLS, Pair, _encode, _rows, _statuses, extended_op

SYNC = m.Sync().encode()


class WatchedServer(SimServer):
    """The simulated server, which also knows whether it is inside a batch (read an
    extended-protocol message since its last Sync/Query) — where no ping may land."""

    mid_batch = False

    def message(self, t: int, body: bytes) -> None:
        super().message(t, body)
        kind = chr(t)
        if kind in "PBDEC":
            self.mid_batch = True
        elif kind in "SQF":
            self.mid_batch = False


class PingPair(Pair):
    def __init__(self, seed: int, observe: bool = True) -> None:
        super().__init__(seed, observe)
        self.server = WatchedServer()
        self.pings = 0

    def ping(self) -> bool:
        """Ask the tracker for a ping; deliver it. True when one was sent."""
        data = self.tracker.ping()
        if not data:
            return False
        assert data == SYNC
        assert not self.server.mid_batch and not self.server.skipping, "a ping inside a batch"
        assert self.server.in_block, "a ping outside a transaction block"
        self.server.feed(data)
        self.pings += 1
        return True


def _in_block(seed: int = 1) -> PingPair:
    p = PingPair(seed)
    p.send(m.query("begin"))
    assert _statuses(p.answer()) == ["T"]
    return p


# -- when a ping is sent -----------------------------------------------------------------
def test_a_ping_at_a_boundary_in_a_block_is_answered_and_not_shown() -> None:
    p = _in_block()
    cycles = (p.tracker.sent_cycles, p.tracker.done_cycles)
    assert p.ping()
    assert not p.tracker.idle and p.tracker.pinging
    assert p.tracker.ping() == b""  # one at a time
    assert p.answer() == []  # the ReadyForQuery is swallowed
    assert p.tracker.idle and not p.tracker.pinging
    assert (p.tracker.sent_cycles, p.tracker.done_cycles) == cycles  # not a client cycle
    assert p.tracker.info.transaction_status == "T"
    assert p.ping()  # and again, once answered
    p.send(m.query("select rows=1"), m.query("commit"))
    msgs = p.answer()
    assert _rows(msgs) == [b"select rows=1#0"] and _statuses(msgs) == ["T", "I"]


def test_no_ping_outside_a_transaction_block() -> None:
    p = PingPair(2)
    assert p.tracker.ping() == b""
    p.send(m.query("begin"), m.query("commit"))
    p.answer()
    assert p.tracker.ping() == b""


def test_a_failed_block_is_pinged_and_stays_failed() -> None:
    p = _in_block(3)
    p.send(m.query("select fail"))
    assert _statuses(p.answer()) == ["E"]
    assert p.ping()
    assert p.answer() == []
    assert p.tracker.info.transaction_status == "E"
    p.send(m.query("rollback"))
    assert _statuses(p.answer()) == ["I"]


def test_no_ping_inside_a_batch_even_when_everything_sent_is_answered() -> None:
    """A Parse flushed without Sync: the server runs no idle timer, and a Sync would
    end the client's batch early."""
    p = _in_block(4)
    p.send(m.Parse("", "select rows=1").encode(), m.FLUSH)
    assert [type(x).__name__ for x in p.answer()] == ["ParseComplete"]
    assert p.tracker.idle
    assert p.tracker.ping() == b""
    p.send(m.Bind("", "").encode(), m.Execute("", 0).encode(), SYNC)
    msgs = p.answer()
    assert _rows(msgs) == [b"select rows=1#0"] and _statuses(msgs) == ["T"]
    assert p.ping()


def test_no_ping_while_the_server_skips_to_sync_after_an_error() -> None:
    p = _in_block(5)
    p.send(m.Parse("", "select badparse").encode(), m.FLUSH)
    assert [type(x).__name__ for x in p.answer()] == ["ErrorResponse"]
    assert p.tracker.idle and p.tracker.skip_until_sync
    assert p.tracker.ping() == b""
    p.send(SYNC)
    assert _statuses(p.answer()) == ["E"]
    assert p.ping()


def test_no_ping_while_something_is_in_flight() -> None:
    p = _in_block(6)
    p.send(m.query("select rows=2"))
    assert p.tracker.ping() == b""
    p.answer()
    assert p.ping()


def test_a_pipeline_sent_behind_a_ping_runs_as_without_it() -> None:
    """The verdict arrives while the ping is unanswered: the held statement and what
    followed it go out behind the Sync, and their answers are the client's."""
    p = _in_block(7)
    assert p.ping()
    p.send(
        m.Parse("s", "select plan rows=2").encode(),
        m.Bind("", "s").encode(),
        m.Execute("", 0).encode(),
        SYNC,
        m.query("commit"),
    )
    msgs = p.answer()
    assert _rows(msgs) == [b"PLAN:select plan rows=2#0", b"PLAN:select plan rows=2#1"]
    assert _statuses(msgs) == ["T", "I"]
    events = p.events
    assert events is not None
    assert [(r.kind, r.sql, events.finished.get(r.id)) for r in events.records] == [
        ("query", "begin", "completed"),
        ("parse", "select plan rows=2", "completed"),
        ("execute", "select plan rows=2", "completed"),  # its portal known behind the ping
        ("query", "commit", "completed"),
    ]


# -- invisible, whatever the client pipelines ----------------------------------------------
#: A batch of extended-protocol messages with its Sync, or without (the client reads
#: the answers of what it flushed before it sends the rest), a query string, or a
#: ping offered to the tracker.
step = st.one_of(
    st.tuples(st.just("extended"), st.lists(extended_op, max_size=6), st.booleans()),
    st.tuples(
        st.just("query"),
        st.sampled_from([*SQLS, "begin", "commit", "rollback", "select rows=1; select rows=2"]),
    ),
    st.just(("ping",)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(step, max_size=14), st.booleans(), st.integers(0, 2**32))
def test_pings_never_change_what_the_client_sees(steps: list, sliding: bool, seed: int) -> None:
    """The same client with and without pings (offered between any two steps, and
    inside batches the client has not ended yet) gets the same messages; no ping
    reaches the server inside a batch, while it skips to Sync or outside a block;
    and the tracker ends agreeing with the server."""
    plain, pinged = PingPair(seed), PingPair(seed)
    pairs = (plain, pinged)
    seen: dict[int, list[Any]] = {id(plain): [], id(pinged): []}
    tags = iter(range(1_000_000))
    for p in pairs:
        p.send(m.query("begin"))
    batch_open = False
    for kind, *rest in steps:
        if kind == "ping":
            pinged.ping()
            continue
        if kind == "extended":
            msgs = [_encode(op, next(tags)) for op in rest[0]]
            if rest[1]:
                msgs.append(SYNC)
            if msgs:  # an empty step leaves the batch as it was
                batch_open = not rest[1]
            for p in pairs:
                p.send(*msgs)
        else:
            # A Query slipped into a batch the client has not ended, after that batch
            # failed, is skipped by the server without a ReadyForQuery, and the relay's
            # cycle count ends one behind (liveness only; see StatementTracker._fail_entry)
            # with or without pings. The client ends its batch first here, so that this
            # property is about pings alone.
            msgs = [SYNC, m.query(rest[0])] if batch_open else [m.query(rest[0])]
            batch_open = False
            for p in pairs:
                p.send(*msgs)
        for p in pairs:
            seen[id(p)] += p.answer(cycles=1) if sliding else p.answer()
        pinged.ping()
    for p in pairs:
        p.send(SYNC)  # ends a batch left open
        seen[id(p)] += p.answer()
    assert seen[id(pinged)] == seen[id(plain)]
    for p in pairs:
        assert p.tracker.idle
        assert p.tracker.info.transaction_status == p.server._status()
    assert (pinged.tracker.sent_cycles, pinged.tracker.done_cycles) == (
        plain.tracker.sent_cycles,
        plain.tracker.done_cycles,
    )


# -- the interval ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("settings_", "expected"),
    [
        ({"idle_in_transaction_session_timeout": "60000"}, MAX_INTERVAL),  # dbgate's 1min
        ({"idle_in_transaction_session_timeout": "8000"}, 2.0),
        ({"idle_in_transaction_session_timeout": "2s"}, 0.5),
        ({"IDLE_IN_TRANSACTION_SESSION_TIMEOUT": " 1.5 s "}, 0.375),
        ({"idle_in_transaction_session_timeout": "1min"}, MAX_INTERVAL),
        ({"idle_in_transaction_session_timeout": "100ms"}, MIN_INTERVAL),
        ({"idle_in_transaction_session_timeout": "0"}, MAX_INTERVAL),  # no guard of dbgate's
        ({"idle_in_transaction_session_timeout": "0x10"}, MAX_INTERVAL),  # unread: the cap
        ({"statement_timeout": "1000"}, MAX_INTERVAL),
        ({}, MAX_INTERVAL),
    ],
)
def test_the_interval_is_a_quarter_of_the_sessions_idle_guard(
    settings_: dict[str, str], expected: float
) -> None:
    assert ping_interval(settings_) == pytest.approx(expected)
