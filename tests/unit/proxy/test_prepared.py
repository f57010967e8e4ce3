"""PreparedStatements: dbgate's picture of the server's prepared statements.

The one property that matters: whatever the server really holds under a name is
always among the candidates dbgate judges Binds and EXECUTE by, and a name whose
statement asks for Bind checks is always in ``checked``. The model-based test drives
a small simulation of PostgreSQL's rules (Parse of an existing name fails, Close never
fails, DEALLOCATE of a missing name fails, an error skips the rest of the cycle) with
pipelined cycles and random errors, and checks that property after every step.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbgate.proxy.prepared import (
    LOST,
    MAX_CANDIDATES,
    MAX_PENDING,
    Candidate,
    PreparedChange,
    PreparedStatements,
    TooManyStatements,
)

SAFE = Candidate("select 1")
RISKY = Candidate("select set_config($1, $2, false)", check_binds=True)


def _add(name: str, cand: Candidate) -> PreparedChange:
    return PreparedChange("add", name, cand.sql, cand.check_binds)


def test_an_added_statement_counts_before_the_server_confirms_it() -> None:
    p = PreparedStatements()
    p.sent(1, _add("s", RISKY))
    assert p.candidates("s") == (RISKY,)
    assert "s" in p.checked
    p.cycle_done(1, failed=False)
    assert p.candidates("s") == (RISKY,)
    assert p.texts["s"] == (RISKY.sql,)


def test_a_clean_cycle_replaces_and_a_failed_one_adds_a_possibility() -> None:
    p = PreparedStatements()
    p.sent(1, _add("", RISKY))
    p.cycle_done(1, failed=False)
    p.sent(2, _add("", SAFE))
    p.cycle_done(2, failed=True)  # the Parse may or may not have run
    assert set(p.candidates("")) == {RISKY, SAFE}
    assert "" in p.checked
    p.sent(3, _add("", SAFE))
    p.cycle_done(3, failed=False)
    assert p.candidates("") == (SAFE,)
    assert "" not in p.checked


def test_a_removal_counts_only_when_its_cycle_had_no_error() -> None:
    p = PreparedStatements()
    p.sent(1, _add("s", RISKY))
    p.cycle_done(1, failed=False)
    p.close_sent(2, "s")
    assert p.candidates("s") == (RISKY,)  # not yet confirmed
    p.cycle_done(2, failed=True)
    assert p.candidates("s") == (RISKY,) and "s" in p.checked
    p.close_sent(3, "s")
    p.cycle_done(3, failed=False)
    assert p.candidates("s") == () and "s" not in p.checked
    assert "s" not in p.texts


def test_clear_keeps_the_unnamed_statement() -> None:
    p = PreparedStatements()
    p.sent(1, _add("", RISKY))
    p.sent(1, _add("a", SAFE))
    p.cycle_done(1, failed=False)
    p.sent(2, PreparedChange("clear"))
    p.cycle_done(2, failed=False)
    assert p.candidates("a") == ()
    assert p.candidates("") == (RISKY,) and "" in p.checked


def test_the_common_unnamed_parse_leaves_no_trace() -> None:
    p = PreparedStatements()
    for cycle in range(1, 100):
        p.parse_sent(cycle, "", f"select {cycle}", check_binds=False)
        assert not p.pending
        p.cycle_done(cycle, failed=False)
    assert p.candidates("") == () and not p.checked


def test_names_are_keyed_as_the_server_truncates_them() -> None:
    p = PreparedStatements()
    p.sent(1, _add("a" * 63 + "1", RISKY))
    assert p.candidates("a" * 63 + "2") == (RISKY,)
    assert p.checks_binds("a" * 63 + "2") and p.checks_binds(("a" * 63).encode() + b"\xff")
    p.sent(1, _add("b" * 62 + "é", RISKY))  # 64 bytes: the server keeps "b"*62 + 0xC3
    assert p.checks_binds(("b" * 62).encode() + b"\xc3")
    assert not p.checks_binds("b" * 62)


def test_bookkeeping_is_bounded() -> None:
    p = PreparedStatements()
    with pytest.raises(TooManyStatements) as info:
        for i in range(MAX_PENDING + 1):
            p.sent(1, _add(f"s{i}", SAFE))
    assert info.value.sqlstate == "54000"


def test_close_of_an_unknown_name_is_not_tracked() -> None:
    p = PreparedStatements()
    p.close_sent(1, "never-prepared")
    assert not p.pending


def test_too_many_possibilities_collapse_into_lost() -> None:
    p = PreparedStatements()
    for i in range(MAX_CANDIDATES + 1):
        p.sent(i + 1, _add("s", Candidate(f"select {i}")))
        p.cycle_done(i + 1, failed=True)
    assert p.candidates("s") == (LOST,)
    assert "s" in p.checked  # every Bind of it is shown to the inspector (and refused)
    assert p.texts["s"] == ()  # EXECUTE of it: unknown, so opaque
    p.sent(100, _add("s", SAFE))
    p.cycle_done(100, failed=False)
    assert p.candidates("s") == (SAFE,) and "s" not in p.checked


# -- model-based: a simulated server against the tracker ---------------------------------

NAMES = ["", "a", "b"]
CANDS = [SAFE, RISKY, Candidate("select 2"), Candidate("select $1::int", check_binds=True)]

op = st.one_of(
    st.tuples(st.just("parse"), st.sampled_from(NAMES), st.sampled_from(CANDS)),
    st.tuples(st.just("close"), st.sampled_from(NAMES[1:])),
    st.tuples(st.just("prepare"), st.sampled_from(NAMES[1:]), st.sampled_from(CANDS)),
    st.tuples(st.just("deallocate"), st.sampled_from(NAMES[1:])),
    st.tuples(st.just("clear")),
    st.tuples(st.just("error")),  # any other message that fails (a bad Execute, 1/0 ...)
)
cycle = st.lists(op, max_size=5)


def _server_run(server: dict[str, Candidate], ops: list[tuple]) -> bool:
    """PostgreSQL's behaviour for one cycle; returns whether it sent an error."""
    for o in ops:
        kind = o[0]
        if kind == "error":
            return True
        if kind in ("parse", "prepare"):
            name, cand = o[1], o[2]
            if name and name in server:
                return True  # prepared statement already exists
            server[name] = cand
        elif kind == "close":
            server.pop(o[1], None)  # Close of a missing name is no error
        elif kind == "deallocate":
            if o[1] not in server:
                return True
            del server[o[1]]
        else:
            unnamed = server.get("")
            server.clear()
            if unnamed is not None:
                server[""] = unnamed
    return False


def _send(p: PreparedStatements, n: int, ops: list[tuple]) -> None:
    for o in ops:
        kind = o[0]
        if kind == "parse":
            p.parse_sent(n, o[1], o[2].sql, o[2].check_binds)
        elif kind == "prepare":
            p.sent(n, _add(o[1], o[2]))
        elif kind in ("close", "deallocate"):
            p.close_sent(n, o[1])
        elif kind == "clear":
            p.sent(n, PreparedChange("clear"))


def _assert_covers(p: PreparedStatements, server: dict[str, Candidate]) -> None:
    for name, cand in server.items():
        cands = p.candidates(name)
        if cands == (LOST,):
            assert name in p.checked
            continue
        if name == "" and not cand.check_binds:
            # Untracked on purpose: the unnamed statement cannot be EXECUTEd, so only
            # Bind checks are ever consulted for it, and this one needs none.
            continue
        assert cand in cands, (name, cand, cands)
        if cand.check_binds:
            assert name in p.checked, (name, cand)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(cycle, max_size=12),
    st.integers(min_value=1, max_value=3),
    st.integers(min_value=0, max_value=2),
)
def test_what_the_server_holds_is_always_a_candidate(cycles: list, depth: int, drift: int) -> None:
    """``drift``: the relay numbers cycles ahead of the server's ReadyForQuery count
    (a Query the server skipped after an error), which must not matter for safety."""
    p = PreparedStatements()
    server: dict[str, Candidate] = {}
    in_flight: list[tuple[int, list[tuple]]] = []
    for n, ops in enumerate(cycles, start=1):
        _send(p, n + drift, ops)
        in_flight.append((n, ops))
        _assert_covers(p, server)
        while len(in_flight) >= depth or (n == len(cycles) and in_flight):
            done, done_ops = in_flight.pop(0)
            failed = _server_run(server, done_ops)
            _assert_covers(p, server)  # the server ran it; ReadyForQuery not yet read
            p.cycle_done(done, failed)
            _assert_covers(p, server)
