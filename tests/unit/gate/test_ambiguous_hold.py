"""A held Bind that may bind either of two statements is refused, never held."""

from __future__ import annotations

from dbgate.gate.refusals import ambiguous_hold
from dbgate.policy.model import Action, Decision
from dbgate.proxy.prepared import Candidate
from dbgate.proxy.seams import Statement

HOLD = Decision(Action.HOLD, "hold-destructive", "held")
DENY = Decision(Action.DENY, "deny", "denied")


def bind(*cands: Candidate) -> Statement:
    return Statement("bind", cands[-1].sql, statement_name="s", candidates=cands)


def test_one_candidate_or_the_same_one_twice_is_held() -> None:
    a = Candidate("DELETE FROM t WHERE id = $1", True, param_types=(20,))
    assert not ambiguous_hold(HOLD, bind(a))
    assert not ambiguous_hold(HOLD, bind(a, Candidate(a.sql, True, param_types=(20,))))


def test_two_texts_are_ambiguous() -> None:
    a, b = Candidate("DELETE FROM a", True), Candidate("DELETE FROM b", True)
    assert ambiguous_hold(HOLD, bind(a, b))
    assert not ambiguous_hold(DENY, bind(a, b))  # refused either way


def test_one_text_with_other_parameter_types_is_ambiguous() -> None:
    """Regression: the same text under int8 and float8 reads one binary value as two
    different numbers; only the text was compared."""
    sql = "DELETE FROM t WHERE id = $1"
    assert ambiguous_hold(
        HOLD,
        bind(Candidate(sql, True, param_types=(20,)), Candidate(sql, True, param_types=(701,))),
    )
