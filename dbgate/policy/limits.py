"""Run-time limits: what an allowed statement that is not proven narrow runs under.

The classifier proves a bound on the rows a statement reads and changes only where a
unique key pins them (docs/classifier.md, "Narrow by proof"); everything else is
measured while it runs. The allow rules that decided a statement carry the numbers
(docs/rules.md, "Run-time limits"), and this module puts them on the
:class:`~dbgate.policy.model.Decision`:

* ``max_rows`` — when some statement's read bound is unknown or above it: the gate
  counts the rows each statement returns (portals, FETCH and COPY TO included) and
  past it fails the statement with SQLSTATE 54000 or holds it;
* ``max_rows_changed`` — when some statement may change more rows: the gate runs it
  under a savepoint, reads the count from its command tag, and keeps it or rolls it
  back and holds it (or fails it) with the measured count. A statement whose writes
  its tag does not count (a DML in WITH, EXPLAIN ANALYZE) cannot be measured, so it is
  held up front;
* ``row_window`` — on every allowed statement that reads tables, proven or not:
  reading a table one key at a time is still reading it.

Where several rules decided a statement, the smallest limit of each kind wins; a rule
that sets none lifts nothing another rule set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from dbgate.policy.model import (
    Action,
    Category,
    Classification,
    Decision,
    OverLimit,
    Reason,
    RowWindow,
    StatementClass,
)
from dbgate.policy.rules_match import Rule, qualify_table

_CATALOG_SCHEMAS = ("pg_catalog.", "information_schema.")


def _smallest(rules: Sequence[Rule], attr: str) -> Rule | None:
    found = [r for r in rules if getattr(r, attr) is not None]
    return min(found, key=lambda r: (getattr(r, attr), r.index)) if found else None


def _over(rule: Rule) -> OverLimit:
    return OverLimit(
        rule.over_limit,
        rule.name,
        rule.approver_groups,
        rule.approvals_needed,
        rule.expires_after_seconds,
    )


def read_tables(classification: Classification) -> frozenset[str]:
    """The tables the string reads, as the rows-per-window account names them."""
    out = set()
    for st in classification.statements:
        if Category.READ not in st.categories:
            continue
        for t in st.tables:
            if not qualify_table(t).startswith(_CATALOG_SCHEMAS):
                out.add(t)
    return frozenset(out)


def _rows_unproven(st: StatementClass, limit: int) -> bool:
    """Whether ``st`` may return more than ``limit`` rows of table data: it reads more
    table rows, or it reads some and its result may repeat them (a read pinned to one
    row of ``orders`` by its key, cross-joined with ``generate_series`` or a catalog).
    A statement that reads no table rows returns none (``SELECT * FROM pg_class``)."""
    read = st.read_bound
    if read is None or read > limit:
        return True
    return read > 0 and (st.result_bound is None or st.result_bound > limit)


def limited(decision: Decision, rules: Sequence[Rule], classification: Classification) -> Decision:
    """``decision`` (an allow by ``rules``) with the run-time limits that apply to it."""
    statements = classification.statements
    rows_rule = _smallest(rules, "max_rows")
    changes_rule = _smallest(rules, "max_rows_changed")
    window_rule = _smallest(rules, "max_rows_per_window")
    max_rows = max_changed = None
    if rows_rule is not None:
        limit = rows_rule.max_rows
        assert limit is not None
        if any(_rows_unproven(st, limit) for st in statements):
            max_rows = limit
    uncounted: list[Reason] = []
    if changes_rule is not None:
        limit = changes_rule.max_rows_changed
        assert limit is not None
        for st in statements:
            if st.write_bound == 0 or (st.write_bound is not None and st.write_bound <= limit):
                continue
            max_changed = limit
            if not st.writes_counted:
                uncounted.append(
                    Reason(
                        Category.WRITE,
                        "uncounted-changes",
                        f"changes rows that its command tag does not count ({st.command} with "
                        "a data-modifying WITH, under EXPLAIN ANALYZE, calling a function "
                        "that writes, such as nextval or lo_create, once per row, or "
                        "deleting rows that cascading foreign keys follow, or writing a table "
                        "with rewrite rules), so the "
                        f"limit of {limit} changed rows cannot be measured; run the change as "
                        "its own statement",
                    )
                )
    if uncounted and changes_rule is not None:
        return Decision(
            Action.HOLD,
            changes_rule.name,
            f"rule '{changes_rule.name}' limits changed rows to {changes_rule.max_rows_changed}, "
            "which this statement's changes cannot be measured against",
            approver_groups=changes_rule.approver_groups,
            approvals_needed=changes_rule.approvals_needed,
            wait_seconds=changes_rule.wait_seconds,
            classification=classification,
            reasons=tuple(uncounted),
        )
    window = None
    if window_rule is not None:
        tables = read_tables(classification)
        if tables:
            assert window_rule.max_rows_per_window is not None
            window = RowWindow(
                window_rule.max_rows_per_window,
                window_rule.window_seconds or 3600,
                window_rule.name,
                tables,
            )
    if max_rows is None and max_changed is None and window is None:
        return decision
    return replace(
        decision,
        max_rows=max_rows,
        max_rows_changed=max_changed,
        rows_over_limit=_over(rows_rule) if max_rows is not None and rows_rule else None,
        changes_over_limit=(
            _over(changes_rule) if max_changed is not None and changes_rule else None
        ),
        row_window=window,
    )
