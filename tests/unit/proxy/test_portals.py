"""A Bind's verdict when the server may bind either of two statements under its name."""

from __future__ import annotations

from dbgate.proxy.portals import AMBIGUOUS_BIND, for_every_candidate
from dbgate.proxy.prepared import Candidate
from dbgate.proxy.seams import ALLOW, Allow, Statement


def bind(*texts: str) -> Statement:
    cands = tuple(Candidate(t, check_binds=True) for t in texts)
    return Statement("bind", texts[-1], statement_name="s", candidates=cands)


def test_a_plain_allow_holds_for_every_candidate() -> None:
    assert for_every_candidate(bind("UPDATE a SET x = 1", "UPDATE b SET x = 1"), ALLOW) is ALLOW


def test_a_change_limit_is_made_for_one_candidate_only() -> None:
    """Regression: a measured Bind's change limit was kept when the candidates
    differed; past the limit approvers were asked to keep one statement's changes
    while the server had run the other."""
    measured = Allow(max_changes=10)
    stmt = bind("UPDATE a SET x = 1", "UPDATE b SET x = 1")
    assert for_every_candidate(stmt, measured) is AMBIGUOUS_BIND
    same = bind("UPDATE a SET x = 1", "UPDATE a SET x = 1")
    assert for_every_candidate(same, measured) is measured
