"""The rules' run-time limits, turned into what the relay enforces.

An allowed statement that the classifier could not prove narrow carries limits in
its :class:`~dbgate.policy.model.Decision` (docs/rules.md, "Run-time limits"):

* ``max_rows`` — rows returned per statement: the relay counts them
  (``Allow.max_rows``), stops forwarding past the limit, cancels upstream and fails
  the statement with SQLSTATE 54000 (``Allow.over_limit``). A rule that says
  ``over_limit: hold`` for reads cannot be honoured half-way through a result, so
  such a read is held before it runs;
* ``max_rows_changed`` — rows changed per statement. A simple Query of plain DML,
  and an extended-protocol batch that binds it, run measured (``Allow.max_changes``,
  :mod:`dbgate.proxy.measure`): under a savepoint pipelined with them, kept when
  their command tags count at most the limit, undone past it and then decided by
  :func:`over_changes_decision` — held for approval with the measured count, or
  refused with 54000, as the rule's ``over_limit`` says. What cannot be measured is
  held before it runs (fail closed): a measured Bind in the middle of a batch the
  relay could not set up, strings with transaction control or other commands a
  savepoint would change, DML whose tag does not count its rows (in ``WITH``, under
  ``EXPLAIN ANALYZE``), and a limit of 0;
* ``guard_clamps`` — a statement that sets a session guard (``statement_timeout``
  and friends) to 0, "no limit": it runs with the identity's ceiling instead
  (``SET statement_timeout = 0`` is forwarded as ``SET statement_timeout = 120000``;
  the client sees ``SET`` as usual). Only plain ``SET``/``SET LOCAL`` statements can
  be rewritten so; anything else that clamps (``set_config``) is held.
"""

from __future__ import annotations

from dataclasses import replace

import pglast

from dbgate.gate.notes import GateNote
from dbgate.policy.model import Action, Category, Classification, Decision, Reason
from dbgate.proxy.seams import Allow, Refuse
from dbgate.wire import sqlstate


def has_limits(decision: Decision) -> bool:
    return bool(decision.max_rows or decision.max_rows_changed is not None or decision.guard_clamps)


def rows_refusal(decision: Decision) -> Refuse:
    """What a read that returned more than ``max_rows`` rows gets."""
    limit = decision.max_rows
    return Refuse(
        sqlstate.PROGRAM_LIMIT_EXCEEDED,
        f"dbgate: the statement returned more than {limit} rows, the limit of rule "
        f"'{decision.rule}' for statements not proven narrow; it was stopped",
        hint="select fewer rows: filter on a unique key, or add LIMIT",
    )


#: Commands a measured Query may contain: running them inside dbgate's savepoint
#: changes nothing about what they do. Anything else (transaction control, VACUUM,
#: CREATE DATABASE, ...) would, so a string with it is not measured.
MEASURABLE_COMMANDS = frozenset(
    {"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "VALUES", "TABLE", "COPY"}
)


def measurable(classification: Classification) -> bool:
    """Whether the rows a query string changes can be measured from its command tags
    under a savepoint (see :mod:`dbgate.proxy.measure`)."""
    return all(
        st.command in MEASURABLE_COMMANDS and (st.writes_counted or st.write_bound == 0)
        for st in classification.statements
    )


def unmeasured_hold(decision: Decision, classification: Classification) -> Decision:
    """A write not proven within ``max_rows_changed`` that cannot be measured as it
    runs: held before it runs."""
    return _held(
        decision,
        classification,
        "unmeasured-changes",
        f"changes rows of a table without a unique key pinning them; the rule "
        f"'{decision.rule}' allows at most {decision.max_rows_changed} changed rows, "
        "which dbgate cannot measure for this statement as it runs (a string with "
        "transaction control, or a statement bound in the middle of a batch)",
        decision.changes_over_limit,
    )


def over_changes_decision(
    decision: Decision, classification: Classification, count: int
) -> Decision:
    """What a measured write that changed ``count`` rows, more than its limit, gets
    (it is already undone): held with the count for approvers, or denied. ``count``
    -1: the statement ran but its changes could not be counted."""
    over = decision.changes_over_limit
    limit = decision.max_rows_changed
    written = _written_tables(classification)
    if count >= 0:
        why = (
            f"would change {count:,} rows of {written}, more than the {limit:,} the rule "
            f"'{decision.rule}' allows without approval; it was undone"
        )
    else:
        why = (
            f"changes rows of {written} in a way dbgate could not count as it ran (a "
            "result too large to hold back, or a statement bound in the middle of a "
            f"batch); the rule '{decision.rule}' allows at most {limit:,}"
        )
    if over is not None and over.action is Action.HOLD:
        return _held(decision, classification, "changes-over-limit", why, over)
    return replace(
        decision,
        action=Action.DENY,
        message=f"{why}: refused",
        reasons=(Reason(Category.WRITE, "changes-over-limit", why),),
        max_rows=None,
        max_rows_changed=None,
    )


def changes_refusal(decision: Decision) -> Refuse:
    """A measured write past its limit that the rule refuses: 54000, as reads."""
    return Refuse(
        sqlstate.PROGRAM_LIMIT_EXCEEDED,
        f"dbgate: the statement {decision.reasons[0].message}",
        hint="change fewer rows: filter on a unique key",
    )


def _written_tables(classification: Classification) -> str:
    names = sorted(
        t
        for st in classification.statements
        if st.write_bound is None
        for t in (st.unbounded_tables or st.tables)
    )
    return ", ".join(names) or "its tables"


def limited_verdict(
    decision: Decision, classification: Classification, sql: str, note: GateNote
) -> Allow | Decision:
    """The relay's verdict for an allowed ``decision`` with limits, or a hold
    decision when a limit cannot be enforced at run time. A write is given
    ``max_changes`` here; the gate binds its ``over_changes`` to the session."""
    changes = decision.max_rows_changed
    if changes is not None and (changes <= 0 or not measurable(classification)):
        return unmeasured_hold(decision, classification)
    over = decision.rows_over_limit
    if decision.max_rows and over is not None and over.action is Action.HOLD:
        return _held(
            decision,
            classification,
            "unmeasured-rows",
            f"reads rows of a table without a unique key pinning them; the rule "
            f"'{decision.rule}' holds reads past {decision.max_rows} rows, which cannot be "
            "held once they are streaming",
            over,
        )
    replace_sql = None
    if decision.guard_clamps:
        replace_sql = clamped_sql(sql, classification, dict(decision.guard_clamps))
        if replace_sql is None:
            return verdict_hold(decision)
    max_rows = decision.max_rows or 0
    return Allow(
        note=note,
        max_rows=max_rows,
        over_limit=rows_refusal(decision) if max_rows else None,
        result_bound=select_bound(classification),
        replace_sql=replace_sql,
        max_changes=changes or 0,
    )


def select_bound(classification: Classification) -> int | None:
    """The proven bound on the rows a string of plain SELECTs returns, for the relay
    (``Allow.result_bound``); None for anything else, whose rows the relay must
    watch under a limit: COPY's come as CopyData, FETCH reads a cursor, and so on."""
    statements = classification.statements
    if not statements or any(st.command != "SELECT" for st in statements):
        return None
    return classification.result_bound


def clamped_sql(sql: str, classification: Classification, clamps: dict[str, int]) -> str | None:
    """``sql`` with each plain ``SET`` of a guard to 0 replaced by a ``SET`` to its
    ceiling; None when a clamp is not in a plain ``SET`` statement."""
    try:
        texts = pglast.split(sql)
    except Exception:
        return None
    statements = classification.statements
    if len(texts) != len(statements):
        return None
    out = []
    for text, st in zip(texts, statements, strict=True):
        zeroed = [g for g in st.guard_settings if g.value_ms == 0 and g.name in clamps]
        if not zeroed:
            out.append(text)
            continue
        if st.command != "SET" or len(st.guard_settings) != 1:
            return None
        g = zeroed[0]
        out.append(f"SET {'LOCAL ' if g.local else ''}{g.name} = {int(clamps[g.name])}")
    return "; ".join(out)


def _held(
    decision: Decision,
    classification: Classification,
    code: str,
    why: str,
    over: object,
) -> Decision:
    return replace(
        decision,
        action=Action.HOLD,
        message=f"{why}: held for approval",
        approver_groups=getattr(over, "approver_groups", ()) or decision.approver_groups,
        approvals_needed=getattr(over, "approvals_needed", 1) or decision.approvals_needed,
        wait_seconds=getattr(over, "expires_after_seconds", None) or decision.wait_seconds,
        reasons=(Reason(Category.WRITE if "changes" in code else Category.READ, code, why),),
        max_rows=None,
        max_rows_changed=None,
    )


def verdict_hold(decision: Decision) -> Decision:
    """A guard clamp that cannot be applied (``set_config``, or a Bind, which cannot
    rewrite its statement): held for the guard entry's approvers, under its name."""
    over = decision.guard_hold
    held = _held(
        decision,
        decision.classification,  # type: ignore[arg-type]
        "guard-off",
        "switches off a session guard (a timeout set to 0) in a way dbgate cannot set "
        "back to the identity's ceiling",
        over,
    )
    if over is None:
        return held
    return replace(held, rule=over.rule, approver_groups=over.approver_groups)
