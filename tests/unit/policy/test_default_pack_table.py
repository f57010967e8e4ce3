"""Every row of the classifier's table, decided by the shipped default pack.

The classifier table (test_classify_table.py, 500+ statements) pins categories;
this file pins the default pack's *action* for each of those statements against
the policy the README and docs/rules.md document:

    read, write, control                              -> allow
    dump, export, destructive, ddl, privilege,
    escape, opaque, lock                              -> hold
    admin                                             -> deny
        (VACUUM, REINDEX, CLUSTER, CHECKPOINT          -> hold: routine maintenance)
    unparseable SQL                                   -> deny
    several categories or statements                  -> the strictest of them

The expectation is derived from each row's expected categories (not from the
classifier's output), so a classifier regression and a pack regression both fail.
"""

from __future__ import annotations

from typing import Any

import pytest

from dbgate.policy.classify import classify
from dbgate.policy.model import Action, Category, Identity
from dbgate.policy.rules import UNREADABLE_SETTINGS, load_rules
from tests.unit.policy.test_classify_table import ALL

ALLOWED = {Category.READ, Category.WRITE, Category.CONTROL}
MAINTENANCE = {"VACUUM", "REINDEX", "CLUSTER", "CHECKPOINT"}
STRICTNESS = {Action.ALLOW: 0, Action.HOLD: 1, Action.DENY: 2}
AGENT = Identity(name="agent")


def documented_action(
    categories: frozenset[Category],
    maintenance: bool,
    unmeasurable: bool = False,
    unreadable: bool = False,
) -> Action:
    """``unmeasurable``: it changes rows no key bounds where its command tag does not
    count them (a DML in WITH): the write limit cannot be enforced, so it is held.
    ``unreadable``: it would make the server read SQL text otherwise than dbgate
    (``standard_conforming_strings`` off, a non-UTF8 ``client_encoding``): refused
    whatever the pack (docs/classifier.md, "Escape settings")."""
    if unreadable or (Category.ADMIN in categories and not maintenance):
        return Action.DENY
    if categories - ALLOWED or unmeasurable:
        return Action.HOLD
    return Action.ALLOW


def unmeasurable_writes(classification: Any) -> bool:
    return any(st.write_bound is None and not st.writes_counted for st in classification.statements)


@pytest.fixture(scope="module")
def pack() -> Any:
    return load_rules()


def _rows() -> list[Any]:
    return [p for p in ALL if not p.values[2]]  # rows with exact category sets


def test_enough_rows() -> None:
    assert len(_rows()) >= 250


@pytest.mark.parametrize(("sql", "expected", "subset"), _rows())
def test_default_pack_action(
    pack: Any, sql: str, expected: frozenset[Category], subset: bool
) -> None:
    classification = classify(sql)
    decision = pack.decide(AGENT, classification)
    if classification.parse_error is not None:
        assert decision.action is Action.DENY
        return
    commands = {st.command.upper() for st in classification.statements}
    maintenance = Category.ADMIN in expected and commands <= MAINTENANCE | {"ANALYZE"}
    unmeasurable = unmeasurable_writes(classification)
    unreadable = any(r.code in UNREADABLE_SETTINGS for r in classification.reasons)
    assert decision.action is documented_action(expected, maintenance, unmeasurable, unreadable), (
        decision.rule
    )


@pytest.mark.parametrize(("sql", "expected", "subset"), [p for p in ALL if p.values[2]])
def test_subset_rows_are_at_least_as_strict(
    pack: Any, sql: str, expected: frozenset[Category], subset: bool
) -> None:
    decision = pack.decide(AGENT, classify(sql))
    floor = documented_action(expected, maintenance=False)
    if floor is Action.DENY:
        floor = Action.HOLD  # maintenance commands among admin rows are held, not denied
    assert STRICTNESS[decision.action] >= STRICTNESS[floor], decision.rule
