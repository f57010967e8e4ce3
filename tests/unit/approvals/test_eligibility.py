"""Who may decide a request: a table of cases."""

from __future__ import annotations

import pytest

from dbgate.approvals.eligibility import Approver, refusal

ALICE = Approver("alice", frozenset({"dba"}))

CASES = [
    # approver, identity, rule's groups, owners, refused because (None: allowed)
    (ALICE, "agent", (), (), None),
    (ALICE, "agent", ("dba",), (), None),
    (ALICE, "agent", ("security", "dba"), (), None),
    (ALICE, "agent", ("security",), (), "needs an approver from group security"),
    (Approver("bob"), "agent", ("dba",), (), "'bob' is in no group"),
    (ALICE, "alice", (), (), "nobody decides their own request"),
    (ALICE, "agent", (), ("alice",), "owns identity 'agent'"),
    (Approver("alice", frozenset({"dba"}), disabled=True), "agent", (), (), "is disabled"),
]


@pytest.mark.parametrize(("approver", "identity", "groups", "owners", "why"), CASES)
def test_refusal(approver, identity, groups, owners, why) -> None:
    got = refusal(approver, identity, groups, owners)
    if why is None:
        assert got is None
    else:
        assert got is not None and why in got
