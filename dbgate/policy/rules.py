"""The rules engine: ``rules/*.yaml`` -> :class:`RuleSet` -> :class:`Decision`.

How a decision is made (the reference is ``docs/rules.md``):

1. A parse error is ``deny`` (rule ``parse-error``); no rule is consulted, so no
   rule can allow input the classifier could not read.
2. Otherwise every *unit* — one category of one statement — is decided on its
   own: the first rule (files in lexical order, rules in file order) whose
   ``match`` accepts the identity, the statement and that category decides it.
   A unit no rule matches gets the built-in default, ``hold`` (rule ``default``).
3. The query string's decision is the most restrictive unit decision,
   ``deny`` > ``hold`` > ``allow``. An ``allow`` for ``read`` therefore cannot
   carry the ``export`` half of ``COPY (SELECT ...) TO PROGRAM``, and a harmless
   first statement cannot carry a dangerous second one.
4. Any exception while matching is ``deny`` (rule ``internal-error``): a bug in
   dbgate must never turn into ``allow``.

Everything after :func:`load_rules` is pure and allocation-light: the proxy calls
:meth:`RuleSet.decide` for every statement that is not answered from its cache.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dbgate.policy.model import (
    Action,
    Category,
    Classification,
    Decision,
    Identity,
    Reason,
    StatementClass,
)
from dbgate.policy.rules_load import RuleProblem, RulesError, load_directory
from dbgate.policy.rules_match import SEVERITY, Match, Rule

log = logging.getLogger(__name__)

#: Environment variable naming the rules directory when none is given explicitly.
RULES_DIR_ENV = "DBGATE_RULES_DIR"

#: The built-in decision for a unit that no rule matches: hold, any approver.
DEFAULT_RULE = Rule(
    name="default",
    action=Action.HOLD,
    message="no rule matched this statement; dbgate holds what its rules do not cover",
    index=1 << 30,
)

_UNCATEGORISED = Reason(
    Category.OPAQUE,
    "no-category",
    "the classifier returned no category for this statement; treated as opaque",
)

__all__ = [
    "DEFAULT_RULE",
    "RULES_DIR_ENV",
    "Match",
    "Rule",
    "RuleProblem",
    "RuleSet",
    "RulesError",
    "StatementDecision",
    "UnitDecision",
    "decide_bind",
    "default_rules_dir",
    "load_rules",
    "ruleset_from_rules",
]


def default_rules_dir() -> Path:
    """Where the shipped rule pack lives.

    ``$DBGATE_RULES_DIR`` wins when set (an installed package, a container image);
    otherwise ``rules/`` next to the ``dbgate`` package, i.e. the repository root of
    a source or editable install.
    """
    env = os.environ.get(RULES_DIR_ENV)
    if env:
        return Path(env)
    import dbgate

    return Path(dbgate.__file__).resolve().parent.parent / "rules"


@dataclass(frozen=True, slots=True)
class UnitDecision:
    """The decision for one category of one statement, and the rule that made it."""

    category: Category
    rule: Rule


@dataclass(frozen=True, slots=True)
class StatementDecision:
    """Per-statement detail, for ``dbgate classify`` and the approval page."""

    statement: StatementClass
    units: tuple[UnitDecision, ...]

    @property
    def action(self) -> Action:
        return max((u.rule.action for u in self.units), key=SEVERITY.__getitem__)

    @property
    def rule(self) -> Rule:
        return _deciding_rules(self.units)[0]


def _deciding_rules(units: Sequence[UnitDecision]) -> list[Rule]:
    """Rules at the most restrictive action among ``units``, in pack order, deduplicated."""
    worst = max(SEVERITY[u.rule.action] for u in units)
    rules = {u.rule.index: u.rule for u in units if SEVERITY[u.rule.action] == worst}
    return [rules[i] for i in sorted(rules)]


def _rule_message(rule: Rule, categories: Sequence[Category]) -> str:
    if rule.message:
        return rule.message
    cats = ", ".join(sorted(c.value for c in categories))
    verb = {Action.ALLOW: "allows", Action.HOLD: "holds", Action.DENY: "denies"}[rule.action]
    return f"rule '{rule.name}' {verb} {cats} statements"


@dataclass(frozen=True, slots=True)
class RuleSet:
    """An ordered, validated rule pack. Immutable; share it between sessions."""

    rules: tuple[Rule, ...]
    files: tuple[Path, ...] = ()
    default: Rule = field(default=DEFAULT_RULE)

    # -- evaluation -----------------------------------------------------------------
    def explain(
        self, identity: Identity, classification: Classification
    ) -> tuple[StatementDecision, ...]:
        """Decide every unit of every statement; the building block of :meth:`decide`."""
        candidates = [r for r in self.rules if r.matches_identity(identity)]
        out = []
        for stmt in classification.statements:
            cats = stmt.categories or frozenset({Category.OPAQUE})
            pending = set(cats)
            units: list[UnitDecision] = []
            for rule in candidates:
                scope = rule.match.category_scope
                hit = pending if scope is None else pending & scope
                if not hit or not rule.matches_statement(stmt, cats):
                    continue
                units.extend(UnitDecision(c, rule) for c in hit)
                pending -= hit
                if not pending:
                    break
            units.extend(UnitDecision(c, self.default) for c in pending)
            units.sort(key=lambda u: u.category.value)
            out.append(StatementDecision(stmt, tuple(units)))
        return tuple(out)

    def decide(self, identity: Identity, classification: Classification) -> Decision:
        """The one decision for a query string. Never raises; never allows by accident."""
        if classification.parse_error is not None:
            return Decision(
                Action.DENY,
                "parse-error",
                f"dbgate could not parse this statement, so it is refused: "
                f"{classification.parse_error}",
                classification=classification,
            )
        try:
            return self._decide(identity, classification)
        except Exception as e:  # the whole point: catch anything
            log.exception("rules engine failed; denying")
            return Decision(
                Action.DENY,
                "internal-error",
                f"dbgate could not evaluate its rules for this statement ({type(e).__name__}); "
                "refusing it rather than guessing",
                classification=classification,
            )

    def _decide(self, identity: Identity, classification: Classification) -> Decision:
        if not classification.statements:
            # Only comments or whitespace: PostgreSQL answers EmptyQueryResponse.
            return Decision(
                Action.ALLOW, "empty-query", "empty query", classification=classification
            )
        explained = self.explain(identity, classification)
        units = [u for s in explained for u in s.units]
        rules = _deciding_rules(units)
        first = rules[0]
        action = first.action
        messages: list[str] = []
        for r in rules:
            cats = sorted({u.category for u in units if u.rule is r}, key=lambda c: c.value)
            msg = _rule_message(r, cats)
            if msg not in messages:
                messages.append(msg)
        if action is not Action.HOLD:
            return Decision(action, first.name, "; ".join(messages), classification=classification)
        expiries = [r.expires_after_seconds for r in rules if r.expires_after_seconds is not None]
        return Decision(
            Action.HOLD,
            first.name,
            "; ".join(messages),
            approver_groups=first.approver_groups,
            approvals_needed=max(r.approvals_needed for r in rules),
            expires_after_seconds=min(expiries) if expiries else None,
            classification=classification,
        )

    # -- introspection ----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rules)

    def rule(self, name: str) -> Rule:
        """Look a rule up by name (KeyError when absent)."""
        for r in self.rules:
            if r.name == name:
                return r
        raise KeyError(name)


def load_rules(directory: Path | None = None) -> RuleSet:
    """Load and validate a rules directory (or one file); None = the shipped pack.

    Raises :class:`RulesError` listing every problem as ``file:line: message``.
    """
    path = Path(directory) if directory is not None else default_rules_dir()
    rules, files = load_directory(path)
    return RuleSet(tuple(rules), tuple(files))


def ruleset_from_rules(rules: Sequence[Rule]) -> RuleSet:
    """Build a RuleSet from Rule objects (tests, embedding); assigns pack order."""
    return RuleSet(tuple(replace(r, index=i) for i, r in enumerate(rules)))


def decide_bind(
    ruleset: RuleSet,
    identity: Identity,
    classification: Classification,
    sql: str,
    params: Sequence[Any] | None,
) -> Decision:
    """Decision at Bind time, when a Parse-time classification depends on parameters.

    ``SELECT set_config($1, $2, false)`` is harmless with ``('work_mem', '64MB')``
    and a privilege change with ``('role', 'postgres')``: the classifier marks such
    statements ``needs_bind`` and this helper re-classifies them with the actual
    values. Statements that do not need it keep their Parse-time decision. A failure
    to re-classify is ``deny`` (rule ``internal-error``), never the optimistic path.
    """
    if not classification.needs_bind or classification.parse_error is not None:
        return ruleset.decide(identity, classification)
    try:
        from dbgate.policy.classify import classify_bind

        bound = classify_bind(classification, sql, list(params) if params is not None else [])
    except Exception as e:  # fail closed on any classifier failure
        log.exception("bind-time classification failed; denying")
        return Decision(
            Action.DENY,
            "internal-error",
            f"dbgate could not classify this statement with its parameters "
            f"({type(e).__name__}); refusing it rather than guessing",
            classification=classification,
        )
    return ruleset.decide(identity, bound)
