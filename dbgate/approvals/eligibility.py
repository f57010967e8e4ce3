"""Who may decide a request: the rule's groups, and never the requester's side.

Pure functions, so the rules read as a table and are tested without a database.
A request may be decided by an approver who

* is not disabled;
* is not the requesting identity itself (an agent that is also an approver);
* is not one of the identity's ``owners`` (the humans who run that agent, from the
  config at the time of the request, plus the deciding replica's current config);
* belongs to one of the rule's ``approver_groups`` (none listed: any approver).

The same rules apply to approving and to rejecting: deciding one's own request
either way is refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Approver:
    """A person with an approver account (``dbgate approvers add``)."""

    name: str
    groups: frozenset[str] = frozenset()
    disabled: bool = False


def refusal(
    approver: Approver,
    identity: str,
    approver_groups: Iterable[str],
    owners: Iterable[str] = (),
) -> str | None:
    """Why ``approver`` may not decide a request of ``identity``; None when they may."""
    if approver.disabled:
        return f"approver {approver.name!r} is disabled"
    if approver.name == identity:
        return f"{approver.name!r} is the identity that asked: nobody decides their own request"
    if approver.name in set(owners):
        return (
            f"{approver.name!r} owns identity {identity!r}: its requests need an approver "
            "who does not run it"
        )
    wanted = sorted(set(approver_groups))
    if wanted and not approver.groups.intersection(wanted):
        return (
            f"this request needs an approver from group {' or '.join(wanted)}; "
            f"{approver.name!r} is in {', '.join(sorted(approver.groups)) or 'no group'}"
        )
    return None
