"""What the gate writes on a verdict, for whoever watches statements (audit, metrics).

The relay hands a verdict's ``note`` to the observer untouched. The gate's note says
what the statement was classified as and what decided it, so the audit record and
the metrics need not classify again: built once per (identity, classification) for
plain allows, so the hot path allocates nothing for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from dbgate.approvals.model import HoldOutcome
from dbgate.policy.model import Category, Classification, Decision

#: The category an allowed statement is counted under, in this order of interest.
_PRIMARY = (
    Category.ADMIN,
    Category.PRIVILEGE,
    Category.EXPORT,
    Category.DUMP,
    Category.DESTRUCTIVE,
    Category.DDL,
    Category.ESCAPE,
    Category.OPAQUE,
    Category.WRITE,
    Category.READ,
    Category.CONTROL,
)


def primary_category(classification: Classification | None) -> str:
    if classification is None:
        return "unknown"
    cats = classification.categories
    for c in _PRIMARY:
        if c in cats:
            return c.value
    return next(iter(sorted(c.value for c in cats)), "unknown")


@dataclass(frozen=True, slots=True)
class GateNote:
    """The gate's account of one verdict."""

    classification: Classification | None
    action: str  # allow | hold | deny | refuse (refused before any rule: settings, ...)
    category: str  # the category the statement is counted under
    decision: Decision | None = None  # the rules' decision, when they were asked
    approval: HoldOutcome | None = None  # for a held statement: how the wait ended
    #: The tables a read under a rows-per-window limit is charged to (gate/windows.py).
    window_tables: tuple[str, ...] = ()
    #: How those tables are charged: "" when the statement ends (the rows it
    #: returned), "ahead" when it was let through (it is proven to read no more than
    #: its bound, and was charged that), "binds" for a Parse (each of its Binds is
    #: judged and charged on its own).
    window_charge: str = ""
    #: (A Parse of DDL, with the other processes to tell) nothing changes the schema
    #: at the Parse: each of its Binds is judged, and announced, on its own
    #: (``Gate._announced``), and the change begins at that Bind's verdict.
    changes_at_binds: bool = False

    @property
    def rule(self) -> str:
        return self.decision.rule if self.decision is not None else ""


def note_for(decision: Decision, approval: HoldOutcome | None = None) -> GateNote:
    c = decision.classification
    return GateNote(c, decision.action.value, primary_category(c), decision, approval)
