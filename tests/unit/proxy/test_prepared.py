"""PreparedStatements: dbgate's picture of the server's prepared statements.

Two properties matter. Safety: whatever the server really holds under a name is
always among the candidates dbgate judges Binds and EXECUTE by, and a name whose
statement asks for Bind checks is always in ``checked``. Exactness: once every change
sent has been answered, the candidates are exactly what the server holds — so a
statement that was refused, replaced or failed never stands in for a later one (a
psycopg 3 connection was once refused statement after statement because an old
unnamed statement stayed a candidate). The model-based test drives a small
simulation of PostgreSQL's rules (Parse of an existing name fails, Close never fails,
DEALLOCATE of a missing name fails, an error skips the rest of the cycle) with
pipelined cycles and random errors, and checks both after every step.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dbgate.proxy.prepared import (
    LOST,
    MAX_CANDIDATES,
    MAX_PENDING,
    Candidate,
    PendingChange,
    PreparedChange,
    PreparedStatements,
    TooManyStatements,
)

SAFE = Candidate("select 1")
RISKY = Candidate("select set_config($1, $2, false)", check_binds=True)


def _add(name: str, cand: Candidate) -> PreparedChange:
    return PreparedChange("add", name, cand.sql, cand.check_binds, tokens_only=cand.tokens_only)


def _quick(session: object, body: bytes) -> object:
    return "quick"


def test_a_bind_is_judged_quickly_only_when_it_can_mean_one_statement_that_can_be() -> None:
    """``recheck``: the Parse verdict's quick judge of its Binds (Allow.recheck_bind).
    A Bind that may meet another statement (a Parse of its name in flight) is judged
    in full, and so is every Bind after the rules change (judge_binds_again)."""
    p = PreparedStatements()
    windowed = Candidate("select v from w where id = $1", check_binds=True, recheck=_quick)
    p.parse_sent(1, "s", windowed.sql, True, recheck=_quick).resolve(True)  # type: ignore[union-attr]
    assert p.recheck("s") is _quick
    assert p.recheck("other") is None
    h = p.parse_sent(2, "s", RISKY.sql, True)  # replaced, not yet answered
    assert p.recheck("s") is None  # the old statement or the new one
    assert p.recheck("s", batch=2) is None  # the new one: it has no quick judge
    h.resolve(False)  # type: ignore[union-attr]
    assert p.recheck("s") is _quick
    p.judge_binds_again()
    assert p.recheck("s") is None
    assert p.candidates("s") == (replace(windowed, recheck=None),)
    # a change that asks for no Bind check has no quick judge to keep
    p.parse_sent(3, "t", "select 1", False, recheck=_quick).resolve(True)  # type: ignore[union-attr]
    assert p.recheck("t") is None and not p.checks_binds("t")


def test_an_added_statement_counts_before_the_server_confirms_it() -> None:
    p = PreparedStatements()
    h = p.sent(1, _add("s", RISKY))
    assert p.candidates("s") == (RISKY,)
    assert "s" in p.checked
    h.resolve(True)
    assert p.candidates("s") == (RISKY,)
    assert p.texts["s"] == (RISKY.sql,)
    assert p.pending == 0


def test_a_confirmed_parse_replaces_and_a_failed_one_leaves_nothing_behind() -> None:
    p = PreparedStatements()
    p.sent(1, _add("", RISKY)).resolve(True)
    h = p.sent(2, _add("", SAFE))
    assert set(p.candidates("")) == {RISKY, SAFE}  # unanswered: either may be held
    h.resolve(False)  # the server failed or skipped it
    assert p.candidates("") == (RISKY,)
    p.sent(3, _add("", SAFE)).resolve(True)
    assert p.candidates("") == (SAFE,)
    assert "" not in p.checked


def test_a_refused_bind_does_not_poison_the_next_statement() -> None:
    """psycopg 3: Parse "" (value-dependent), Bind refused, then ordinary statements."""
    p = PreparedStatements()
    p.sent(1, _add("", RISKY)).resolve(True)  # ParseComplete came before the refusal
    h = p.parse_sent(2, "", "select $1::int", check_binds=False)
    assert h is not None  # tracked: it replaces a checked statement
    assert p.checks_binds("")  # until the server answers, either may be held
    h.resolve(True)
    assert p.candidates("") == (Candidate("select $1::int"),)
    assert not p.checks_binds("")
    for cycle in range(3, 11):  # and nothing of the refused statement comes back
        h = p.parse_sent(cycle, "", f"select {cycle}", check_binds=False)
        if h is not None:
            h.resolve(True)
        assert not p.checks_binds("")


def test_a_bind_after_a_parse_in_the_same_batch_meets_only_that_parse() -> None:
    p = PreparedStatements()
    p.sent(1, _add("", RISKY)).resolve(True)
    p.parse_sent(2, "", "select 2", check_binds=False)
    assert p.candidates("", batch=2) == (Candidate("select 2"),)
    assert set(p.candidates("", batch=3)) == {RISKY, Candidate("select 2")}


@pytest.mark.parametrize("checked_ran", [True, False], ids=["replaced", "skipped"])
def test_a_plain_unnamed_parse_queues_behind_an_unanswered_one(checked_ran: bool) -> None:
    """Cycle 1 has a checked unnamed Parse, then (replaced) a plain one, or (skipped)
    an error first; cycle 2 a plain one. Cycle 1 is answered, cycle 2 is not, and cycle
    3 brings another plain unnamed Parse with a Bind: nothing asks for checks any more,
    but cycle 2's Parse is still unanswered. Cycle 3's Parse must be queued behind it:
    otherwise cycle 2's answer later writes its statement into the picture although
    the server then holds cycle 3's, and cycle 3's Bind is matched to cycle 2's Parse.
    """
    second, third = Candidate("select 2"), Candidate("select 3")
    p = PreparedStatements()
    first = [p.parse_sent(1, "", RISKY.sql, check_binds=True)]
    if checked_ran:
        first.append(p.parse_sent(1, "", SAFE.sql, check_binds=False))
    h2 = p.parse_sent(2, "", second.sql, check_binds=False)
    assert h2 is not None  # a checked statement may still be held
    for h in first:
        assert h is not None
        h.resolve(checked_ran)  # skipped after an error: neither ran
    assert not p.checks_binds("")  # only plain statements can be held now
    h3 = p.parse_sent(3, "", third.sql, check_binds=False)
    assert p.candidates("", batch=3) == (third,)  # the Bind of cycle 3 meets only it
    h2.resolve(True)
    assert h3 is not None
    assert p.candidates("", batch=3) == (third,)
    h3.resolve(True)
    assert p.pending == 0
    assert p.candidates("") == (third,) and not p.checks_binds("")
    # once nothing is in flight, the same text parsed again is untracked; a new one
    # is tracked until answered
    assert p.parse_sent(4, "", third.sql, check_binds=False) is None
    h5 = p.parse_sent(5, "", "select 5", check_binds=False)
    assert h5 is not None and p.candidates("") == (third, Candidate("select 5"))
    h5.resolve(True)
    assert p.candidates("") == (Candidate("select 5"),) and not p.checked


def test_a_plain_unnamed_parse_in_the_same_batch_replaces_an_unanswered_one() -> None:
    """A client that reads answers before its Sync: the plain Parse sent while a
    checked one was unanswered is tracked; when that one is answered nothing asks for
    checks, and a second plain Parse of the same batch follows. A Bind after it meets
    the second, never the first."""
    second, third = Candidate("select 2"), Candidate("select 3")
    p = PreparedStatements()
    h1 = p.parse_sent(1, "", RISKY.sql, check_binds=True)
    h2 = p.parse_sent(2, "", second.sql, check_binds=False)
    assert h1 is not None and h2 is not None
    h1.resolve(False)  # skipped: cycle 1 failed before it
    assert not p.checks_binds("")
    h3 = p.parse_sent(2, "", third.sql, check_binds=False)
    assert p.candidates("", batch=2) == (third,)
    h2.resolve(True)
    assert h3 is not None
    h3.resolve(True)
    assert p.candidates("") == (third,) and p.pending == 0


def test_a_removal_counts_only_when_the_server_ran_it() -> None:
    p = PreparedStatements()
    p.sent(1, _add("s", RISKY)).resolve(True)
    h = p.close_sent(2, "s")
    assert h is not None
    assert p.candidates("s") == (RISKY,)  # not yet confirmed
    h.resolve(False)
    assert p.candidates("s") == (RISKY,) and "s" in p.checked
    h = p.close_sent(3, "s")
    assert h is not None
    h.resolve(True)
    assert p.candidates("s") == () and "s" not in p.checked
    assert "s" not in p.texts


def test_clear_keeps_the_unnamed_statement() -> None:
    p = PreparedStatements()
    p.sent(1, _add("", RISKY)).resolve(True)
    p.sent(1, _add("a", SAFE)).resolve(True)
    p.sent(2, PreparedChange("clear")).resolve(True)
    assert p.candidates("a") == ()
    assert p.candidates("") == (RISKY,) and "" in p.checked


def test_the_common_unnamed_parse_leaves_no_trace() -> None:
    """A driver's unnamed Parse of the same text for every execution: tracked once,
    then nothing to track while the server holds it."""
    p = PreparedStatements()
    first = p.parse_sent(1, "", "select $1", check_binds=False)
    assert first is not None
    first.resolve(True)
    for cycle in range(2, 100):
        assert p.parse_sent(cycle, "", "select $1", check_binds=False) is None
        assert not p.pending
    assert p.candidates("") == (Candidate("select $1"),) and not p.checked


def test_a_plain_unnamed_statement_is_a_candidate_while_a_checked_parse_is_unanswered() -> None:
    """A plain unnamed Parse, an error, then a checked unnamed Parse the server skips,
    all in one batch; a Bind in the next batch, sent before the answers: the server
    binds the plain statement, which must be among the candidates the Bind is judged
    by (before, it was forgotten at its Parse, and the Bind was judged as the checked
    statement alone)."""
    p = PreparedStatements()
    plain = p.parse_sent(1, "", SAFE.sql, check_binds=False)
    checked = p.parse_sent(1, "", RISKY.sql, check_binds=True)
    assert plain is not None and checked is not None
    assert SAFE.sql in [c.sql for c in p.candidates("", batch=2)]
    assert p.checks_binds("")
    plain.resolve(True)
    checked.resolve(False)  # skipped after the error
    assert p.candidates("") == (Candidate(SAFE.sql),) and not p.checks_binds("")


def test_parameter_types_follow_the_server_description() -> None:
    p = PreparedStatements()
    p.sent(1, PreparedChange("add", "s", "select $1 limit $2", True, (0, 0))).resolve(True)
    p.described("s", (25, 20))
    assert p.candidates("s")[0].param_types == (25, 20)


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
    assert p.close_sent(1, "never-prepared") is None
    assert not p.pending


def test_too_many_possibilities_collapse_into_lost_until_answered() -> None:
    p = PreparedStatements()
    handles = [
        p.sent(i + 1, _add("s", Candidate(f"select {i}"))) for i in range(MAX_CANDIDATES + 1)
    ]
    assert p.candidates("s") == (LOST,)
    assert "s" in p.checked  # every Bind of it is shown to the inspector (and refused)
    assert p.texts["s"] == ()  # EXECUTE of it: unknown, so opaque
    for h in handles[:-1]:
        h.resolve(False)
    handles[-1].resolve(True)
    assert p.candidates("s") == (Candidate(f"select {MAX_CANDIDATES}"),)
    assert "s" not in p.checked


# -- model-based: a simulated server against the tracker ---------------------------------

NAMES = ["", "a", "b"]
# the last: checked at Bind only for PII tokens among its values
CANDS = [
    SAFE,
    RISKY,
    Candidate("select 2"),
    Candidate("select $1::int", check_binds=True),
    Candidate("select 3 where $1", check_binds=True, tokens_only=True),
]

op = st.one_of(
    st.tuples(st.just("parse"), st.sampled_from(NAMES), st.sampled_from(CANDS)),
    st.tuples(st.just("close"), st.sampled_from(NAMES[1:])),
    st.tuples(st.just("prepare"), st.sampled_from(NAMES[1:]), st.sampled_from(CANDS)),
    st.tuples(st.just("deallocate"), st.sampled_from(NAMES[1:])),
    st.tuples(st.just("clear")),
    st.tuples(st.just("error")),  # any other message that fails (a bad Execute, 1/0 ...)
)
cycle = st.lists(op, max_size=5)


def _server_step(server: dict[str, Candidate], o: tuple) -> bool:
    """PostgreSQL's behaviour for one message; returns whether it raised an error."""
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
    elif kind == "clear":
        unnamed = server.get("")
        server.clear()
        if unnamed is not None:
            server[""] = unnamed
    return False


def _send(p: PreparedStatements, n: int, ops: list[tuple]) -> list[PendingChange | None]:
    out: list[PendingChange | None] = []
    for o in ops:
        kind = o[0]
        if kind == "parse":
            cand = o[2]
            out.append(
                p.parse_sent(n, o[1], cand.sql, cand.check_binds, tokens_only=cand.tokens_only)
            )
        elif kind == "prepare":
            out.append(p.sent(n, _add(o[1], o[2])))
        elif kind in ("close", "deallocate"):
            out.append(p.close_sent(n, o[1]))
        elif kind == "clear":
            out.append(p.sent(n, PreparedChange("clear")))
        else:
            out.append(None)
    return out


def _tracked(name: str, cand: Candidate) -> bool:
    # Untracked on purpose: an unnamed statement that needs no checks (it cannot be
    # EXECUTEd, so only Bind checks matter). Judging its Binds against a checked
    # statement still in flight is strict, not unsafe.
    return bool(name) or cand.check_binds


def _assert_covers(p: PreparedStatements, server: dict[str, Candidate]) -> None:
    for name, cand in server.items():
        cands = p.candidates(name)
        if cands == (LOST,):
            assert name in p.checked
            continue
        if not _tracked(name, cand):
            continue
        assert cand in cands, (name, cand, cands)
        if cand.check_binds:
            assert name in p.checked, (name, cand)


def _assert_flags(p: PreparedStatements) -> None:
    """``checked`` and ``tokens_only`` say what the candidates say (kept incrementally,
    they must agree with a count from scratch)."""
    for name in NAMES:
        checked = [c for c in p.candidates(name) if c.check_binds]
        assert (name in p.checked) == bool(checked), (name, p.candidates(name))
        only_tokens = bool(checked) and all(c.tokens_only for c in checked)
        assert (name in p.tokens_only) == only_tokens, (name, p.candidates(name))


def _assert_exact(p: PreparedStatements, server: dict[str, Candidate]) -> None:
    """Nothing in flight: dbgate's picture is the server's, with nothing left over."""
    assert p.pending == 0
    for name in set(NAMES):
        held = server.get(name)
        cands = p.candidates(name)
        if name == "" and held is not None and not held.check_binds and not cands:
            continue  # the untracked common case
        if name == "" and held is None:
            # A failed unnamed Parse drops the old statement in PostgreSQL; dbgate keeps
            # it as a candidate (the safe side), which can only cost a Bind check.
            assert len(cands) <= 1
            continue
        assert cands == (() if held is None else (held,)), (name, held, cands)
        assert (name in p.checked) == (held is not None and held.check_binds)


@settings(max_examples=400, deadline=None)
@given(st.lists(cycle, max_size=12), st.integers(min_value=1, max_value=3))
# Rare in random runs: a plain unnamed Parse sent while an older one is unanswered.
@example(
    [[("parse", "", RISKY), ("parse", "", SAFE)], [("parse", "", CANDS[2])], [("parse", "", SAFE)]],
    2,
)
@example(
    [[("error",), ("parse", "", RISKY)], [], [("parse", "", SAFE)], [("parse", "", CANDS[2])]], 3
)
def test_what_the_server_holds_is_always_a_candidate_and_exact_once_answered(
    cycles: list, depth: int
) -> None:
    p = PreparedStatements()
    server: dict[str, Candidate] = {}
    in_flight: list[tuple[list[tuple], list[PendingChange | None]]] = []
    for n, ops in enumerate(cycles, start=1):
        in_flight.append((ops, _send(p, n, ops)))
        _assert_covers(p, server)
        _assert_flags(p)
        while len(in_flight) >= depth or (n == len(cycles) and in_flight):
            done_ops, handles = in_flight.pop(0)
            failed = False
            for o, h in zip(done_ops, handles, strict=True):
                if failed:
                    happened = False  # skipped up to Sync
                else:
                    failed = _server_step(server, o)
                    happened = not failed
                _assert_covers(p, server)  # the server ran it; not yet answered
                if h is not None:
                    h.resolve(happened)
                _assert_covers(p, server)
                _assert_flags(p)
        if not in_flight:
            _assert_exact(p, server)


def test_the_held_unnamed_statement_parsed_again_is_not_tracked_and_stays_checked() -> None:
    """Drivers parse the same unnamed statement for every execution: whether the
    server takes it again or not, dbgate's picture stays the one it has, so nothing is
    queued; a different text, check or judge is tracked as ever."""
    p = PreparedStatements()
    sql = "select email from t where id = $1"
    p.parse_sent(1, "", sql, True, tokens_only=True, recheck=_quick).resolve(True)
    held = p.candidates("")
    for cycle in range(2, 10):
        assert p.parse_sent(cycle, "", sql, True, tokens_only=True, recheck=_quick) is None
        assert not p.pending and p.candidates("") == held
        assert p.checks_binds("") and p.checks_only_tokens("")
    for other in (
        {"sql": "select 2 where $1"},
        {"tokens_only": False},
        {"recheck": None},
        {"param_types": (23,)},
    ):
        args = {"sql": sql, "tokens_only": True, "recheck": _quick, **other}
        handle = p.parse_sent(10, "", args.pop("sql"), True, **args)
        assert handle is not None and p.pending
        handle.resolve(False)  # failed: the old statement stays the candidate
        assert p.candidates("") == held and p.checks_only_tokens("")
    # a name the server already holds fails when parsed again: tracked as ever
    p.parse_sent(11, "s", sql, True, tokens_only=True).resolve(True)
    assert p.parse_sent(12, "s", sql, True, tokens_only=True) is not None


def test_binds_checked_only_for_tokens_are_skipped_while_every_candidate_allows_it() -> None:
    """A statement checked at Bind only because its values may be PII tokens needs its
    Binds shown only when they spell ``tok_``; once a candidate of the same name needs
    every Bind (its decision depends on the values), all of them are shown again."""
    p = PreparedStatements()
    p.parse_sent(1, "s", "select email from t where id = $1", True, tokens_only=True).resolve(True)
    assert p.checks_binds("s") and p.checks_only_tokens("s")
    h = p.parse_sent(2, "s", RISKY.sql, True)  # the same name, now value-dependent
    assert p.checks_binds("s") and not p.checks_only_tokens("s")  # either may be held
    h.resolve(True)
    assert not p.checks_only_tokens("s")
    p.parse_sent(3, "s", "select 2 where $1", True, tokens_only=True).resolve(True)
    assert p.checks_only_tokens("s")
    p.judge_binds_again()  # a reload: every Bind is judged again
    assert p.checks_binds("s") and not p.checks_only_tokens("s")
    p.sent(4, PreparedChange("remove", "s")).resolve(True)
    assert not p.checks_binds("s") and not p.checks_only_tokens("s")


def test_a_bind_of_the_batch_of_a_tokens_only_parse_meets_only_it() -> None:
    """The name's mark counts the statement the server held before (checked in full),
    which a Bind of a later batch may still meet; a Bind of the Parse's own batch can
    meet only that Parse, checked only for tokens."""
    p = PreparedStatements()
    p.parse_sent(1, "", RISKY.sql, check_binds=True).resolve(True)  # type: ignore[union-attr]
    h = p.parse_sent(2, "", "select $1", check_binds=True, tokens_only=True)
    assert h is not None
    assert not p.checks_only_tokens("")  # the older statement may still be met
    assert p.tokens_only_in("", 2) and not p.tokens_only_in("", 3)
    h.resolve(True)
    assert p.checks_only_tokens("") and not p.tokens_only_in("", 2)  # nothing pending
