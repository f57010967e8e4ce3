"""The rules engine: ``rules/*.yaml`` -> :class:`RuleSet` -> :class:`Decision`.

How a decision is made (the reference is ``docs/rules.md``):

1. A parse error is ``deny`` (rule ``parse-error``, the parser's message); no rule
   is consulted, so no rule can allow input the classifier could not read.
2. Otherwise every *unit* — one category of one statement — is decided on its
   own: the first rule (files in lexical order, rules in file order) whose
   ``match`` accepts the identity, the statement and that category decides it.
   A unit no rule matches gets the built-in default, ``hold`` (rule ``default``).
3. The query string's decision is the most restrictive unit decision,
   ``deny`` > ``hold`` > ``allow``. An ``allow`` for ``read`` therefore cannot
   carry the ``export`` half of ``COPY (SELECT ...) TO PROGRAM``, and a harmless
   first statement cannot carry a dangerous second one. ``Decision.reasons`` are
   the classifier's reasons for the units decided at that action: what this
   statement does that the deciding rules acted on.
4. Any exception while matching is ``deny`` (rule ``internal-error``): a bug in
   dbgate must never turn into ``allow``.

Everything after :func:`load_rules` is pure and allocation-light: the proxy calls
:meth:`RuleSet.decide` for every statement that is not answered from its cache.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dbgate.policy import limits
from dbgate.policy.model import (
    Action,
    Category,
    Classification,
    Decision,
    Identity,
    Prepared,
    Reason,
    StatementClass,
)
from dbgate.policy.rules_load import RuleProblem, RulesError, load_directory
from dbgate.policy.rules_match import SEVERITY, Match, Rule
from dbgate.policy.session_guards import GuardEntry, SessionGuards
from dbgate.policy.session_guards import judge as judge_guards
from dbgate.policy.session_guards import resolve as resolve_guards

log = logging.getLogger(__name__)

#: Environment variable naming the rules directory when none is given explicitly.
RULES_DIR_ENV = "DBGATE_RULES_DIR"

#: The built-in decision for a unit that no rule matches: hold, any approver.
DEFAULT_RULE = Rule(
    name="default",
    action=Action.HOLD,
    message="no rule matched this statement, so dbgate holds it for approval",
    index=1 << 30,
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
    "find_shadowed",
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
    import sys

    import dbgate

    source_tree = Path(dbgate.__file__).resolve().parent.parent / "rules"
    if source_tree.is_dir():
        return source_tree
    # A wheel install puts the pack under <prefix>/share/dbgate/rules (pyproject data-files).
    return Path(sys.prefix) / "share" / "dbgate" / "rules"


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


_OPAQUE = frozenset({Category.OPAQUE})
#: Decisions remembered per (identity, classification object); cleared when full.
_DECISION_CACHE_SIZE = 8192


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A rule plus what the hot loop needs precomputed."""

    rule: Rule
    scope: frozenset[Category] | None
    statement_conditions: bool


def _has_statement_conditions(m: Match) -> bool:
    return any(
        x is not None for x in (m.all_categories, m.statements, m.tables, m.schemas, m.functions)
    )


def _deciding_rules(units: Sequence[UnitDecision]) -> list[Rule]:
    """Rules at the most restrictive action among ``units``, in pack order, deduplicated."""
    worst = max(SEVERITY[u.rule.action] for u in units)
    rules = {u.rule.index: u.rule for u in units if SEVERITY[u.rule.action] == worst}
    return [rules[i] for i in sorted(rules)]


#: Reason codes of settings under which the server reads SQL text otherwise than
#: dbgate (dbgate.policy.catalog_settings): refused outright, never held.
UNREADABLE_SETTINGS = frozenset({"escape-standard-conforming-strings", "escape-client-encoding"})


def _acted_reasons(
    statements: tuple[StatementClass, ...], acted: dict[int, set[Category]]
) -> tuple[Reason, ...]:
    """The reasons of ``statements`` whose category is in ``acted[position]``.

    The usual case is one statement all of whose categories were decided alike: its
    reasons tuple is returned as it is.
    """
    if len(statements) == 1 and len(acted.get(0, ())) == len(statements[0].categories):
        return statements[0].reasons
    return tuple(
        r
        for i, stmt in enumerate(statements)
        if i in acted
        for r in stmt.reasons
        if r.category in acted[i]
    )


def _rule_message(rule: Rule, categories: Sequence[Category]) -> str:
    if rule.message:
        return rule.message
    cats = ", ".join(sorted(c.value for c in categories)) or "these"
    verb = {Action.ALLOW: "allows", Action.HOLD: "holds", Action.DENY: "denies"}[rule.action]
    return f"rule '{rule.name}' {verb} {cats} statements"


@dataclass(frozen=True, slots=True)
class RuleSet:
    """An ordered, validated rule pack. Immutable; share it between sessions."""

    rules: tuple[Rule, ...]
    files: tuple[Path, ...] = ()
    default: Rule = field(default=DEFAULT_RULE)
    #: Not errors, but almost certainly mistakes (see :func:`find_shadowed`).
    warnings: tuple[RuleProblem, ...] = ()
    #: ``session_guards`` entries, in pack order (docs/rules.md, "Session guards").
    guards: tuple[GuardEntry, ...] = ()

    _compiled: tuple[_Compiled, ...] = field(init=False, repr=False, compare=False)
    _by_identity: dict[Identity, dict[Category, tuple[_Compiled, ...]]] = field(
        init=False, repr=False, compare=False
    )
    _messages: dict[tuple[str, frozenset[Category]], str] = field(
        init=False, repr=False, compare=False
    )
    _decisions: dict[tuple[Identity, int], Decision] = field(init=False, repr=False, compare=False)
    _guards: dict[Identity, SessionGuards] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Pack order is the rule's position here, whatever the caller passed in, and
        # the default sorts after every rule: ``index`` is how decisions name rules.
        if any(r.index != i for i, r in enumerate(self.rules)):
            object.__setattr__(
                self, "rules", tuple(replace(r, index=i) for i, r in enumerate(self.rules))
            )
        if self.default.index < len(self.rules):
            object.__setattr__(self, "default", replace(self.default, index=DEFAULT_RULE.index))
        compiled = tuple(
            _Compiled(r, r.match.category_scope, _has_statement_conditions(r.match))
            for r in self.rules
        )
        object.__setattr__(self, "_compiled", compiled)
        object.__setattr__(self, "_by_identity", {})
        object.__setattr__(self, "_messages", {})
        object.__setattr__(self, "_decisions", {})
        object.__setattr__(self, "_guards", {})

    def session_guards(self, identity: Identity) -> SessionGuards:
        """The identity's timeout ceilings: what the gate sets on every upstream session
        it opens for it, and what statements may not raise (first matching
        ``session_guards`` entry per setting; none: no ceiling)."""
        cached = self._guards.get(identity)
        if cached is None:
            if len(self._guards) > 4096:
                self._guards.clear()
            cached = self._guards[identity] = resolve_guards(self.guards, identity)
        return cached

    # -- evaluation -----------------------------------------------------------------
    def _candidates(self, identity: Identity) -> dict[Category, tuple[_Compiled, ...]]:
        """Per category, the rules (in pack order) that could decide it for ``identity``.

        Memoised per identity. Indexing by category makes the common case — a
        statement with one or two categories and category-only rules — a couple
        of dict lookups instead of a walk over the whole pack.
        """
        cached = self._by_identity.get(identity)
        if cached is None:
            if len(self._by_identity) > 4096:  # identities are few; bound it anyway
                self._by_identity.clear()
            ok = [c for c in self._compiled if c.rule.matches_identity(identity)]
            cached = {
                cat: tuple(c for c in ok if c.scope is None or cat in c.scope) for cat in Category
            }
            self._by_identity[identity] = cached
        return cached

    def _units(
        self, candidates: dict[Category, tuple[_Compiled, ...]], stmt: StatementClass
    ) -> list[tuple[Category, Rule]]:
        """First-match-wins per category of one statement; no match -> the default rule."""
        cats = stmt.categories or _OPAQUE
        units: list[tuple[Category, Rule]] = []
        for cat in cats:
            for c in candidates[cat]:
                if not c.statement_conditions or c.rule.matches_statement(stmt, cats):
                    units.append((cat, c.rule))
                    break
            else:
                units.append((cat, self.default))
        return units

    def explain(
        self, identity: Identity, classification: Classification
    ) -> tuple[StatementDecision, ...]:
        """Decide every unit of every statement: what ``dbgate classify`` shows."""
        candidates = self._candidates(identity)
        out = []
        for stmt in classification.statements:
            units = sorted(self._units(candidates, stmt), key=lambda u: u[0].value)
            out.append(StatementDecision(stmt, tuple(UnitDecision(c, r) for c, r in units)))
        return tuple(out)

    def decide(self, identity: Identity, classification: Classification) -> Decision:
        """The one decision for a query string. Never raises; never allows by accident."""
        if classification.parse_error is not None:
            # The message is the parser's own: the gate answers like PostgreSQL would
            # (SQLSTATE 42601 at Classification.parse_error_position), not as a denial.
            return Decision(
                Action.DENY,
                "parse-error",
                classification.parse_error,
                classification=classification,
                reasons=classification.reasons,
            )
        try:
            # The classifier hands out the same Classification object for a cached
            # statement, so remember decisions by object identity. A cached Decision
            # holds its classification, which keeps the id from being reused while
            # the entry lives; the `is` check makes a stale hit impossible anyway.
            key = (identity, id(classification))
            hit = self._decisions.get(key)
            if hit is not None and hit.classification is classification:
                return hit
            decision = self._decide(identity, classification)
            if self.guards:
                decision = judge_guards(decision, self.session_guards(identity), classification)
            if classification.reused:  # (else never asked again: see Classification.reused)
                if len(self._decisions) >= _DECISION_CACHE_SIZE:
                    self._decisions.clear()
                self._decisions[key] = decision
            return decision
        except Exception as e:  # the whole point: catch anything
            log.exception("rules engine failed; denying")
            return Decision(
                Action.DENY,
                "internal-error",
                f"dbgate could not evaluate its rules for this statement ({type(e).__name__}); "
                "refusing it rather than guessing",
                classification=classification,
            )

    def _message(self, rule: Rule, categories: frozenset[Category]) -> str:
        key = (rule.name, categories)
        msg = self._messages.get(key)
        if msg is None:
            if len(self._messages) > 4096:
                self._messages.clear()
            msg = self._messages[key] = _rule_message(rule, sorted(categories))
        return msg

    def _decide(self, identity: Identity, classification: Classification) -> Decision:
        if not classification.statements:
            # Only comments or whitespace: PostgreSQL answers EmptyQueryResponse.
            return Decision(
                Action.ALLOW, "empty-query", "empty query", classification=classification
            )
        blind = [r for r in classification.reasons if r.code in UNREADABLE_SETTINGS]
        if blind:
            # Once the server reads SQL text otherwise than dbgate's parser does, dbgate
            # refuses every statement (it cannot tell what they do) — but a statement
            # the client pipelined behind the change is judged before the server
            # reports it, as the server will not read it: approving the change could
            # only let such a statement through. Refused whatever the rule pack says.
            return Decision(
                Action.DENY,
                "unreadable-settings",
                "dbgate refuses settings under which the server would read SQL text "
                "differently from dbgate (standard_conforming_strings off, a client_encoding "
                "other than UTF8): it could no longer tell what a statement does",
                classification=classification,
                reasons=tuple(blind),
            )
        candidates = self._candidates(identity)
        worst = -1
        # rule index -> (rule, categories it decided), for rules at the worst action
        deciding: dict[int, tuple[Rule, set[Category]]] = {}
        # statement position -> its categories decided at the worst action
        acted: dict[int, set[Category]] = {}
        for i, stmt in enumerate(classification.statements):
            for cat, rule in self._units(candidates, stmt):
                sev = SEVERITY[rule.action]
                if sev < worst:
                    continue
                if sev > worst:
                    worst = sev
                    deciding = {}
                    acted = {}
                entry = deciding.get(rule.index)
                if entry is None:
                    deciding[rule.index] = (rule, {cat})
                else:
                    entry[1].add(cat)
                cats = acted.get(i)
                if cats is None:
                    acted[i] = {cat}
                else:
                    cats.add(cat)
        reasons = _acted_reasons(classification.statements, acted)
        order = sorted(deciding)
        first = deciding[order[0]][0]
        if len(order) == 1:
            message = self._message(first, frozenset(deciding[order[0]][1]))
        else:
            messages: list[str] = []
            for i in order:
                rule, cats = deciding[i]
                msg = self._message(rule, frozenset(cats))
                if msg not in messages:
                    messages.append(msg)
            message = "; ".join(messages)
        if first.action is Action.ALLOW:
            allowed = Decision(
                first.action, first.name, message, classification=classification, reasons=reasons
            )
            return limits.limited(allowed, [deciding[i][0] for i in order], classification)
        if first.action is not Action.HOLD:
            return Decision(
                first.action, first.name, message, classification=classification, reasons=reasons
            )
        rules = [deciding[i][0] for i in order]
        waits = [r.wait_seconds for r in rules if r.wait_seconds is not None]
        return Decision(
            Action.HOLD,
            first.name,
            message,
            approver_groups=first.approver_groups,
            approvals_needed=max(r.approvals_needed for r in rules),
            wait_seconds=min(waits) if waits else None,
            classification=classification,
            reasons=reasons,
        )

    # -- introspection ----------------------------------------------------------------
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
    rules, files, guards = load_directory(path)
    return RuleSet(
        tuple(rules), tuple(files), warnings=tuple(find_shadowed(rules)), guards=tuple(guards)
    )


def _category_only(rule: Rule) -> bool:
    """True when only the categories limit the rule (no identity/object conditions)."""
    m = rule.match
    return (
        m.all_categories is None
        and m.tables is None
        and m.schemas is None
        and m.functions is None
        and m.identities is None
        and m.groups is None
        and m.application_names is None
        and m.statements is None
    )


def find_shadowed(rules: Sequence[Rule]) -> list[RuleProblem]:
    """Rules that can never decide anything because earlier rules take every unit.

    Conservative: only earlier rules limited by nothing but ``categories`` count as
    covering, so every warning is certain. A final rule without ``match`` (the
    fail-closed catch-all) is never reported: it is there for categories a newer
    classifier may add.
    """
    all_cats = frozenset(Category)
    covered: set[Category] = set()
    by: dict[Category, Rule] = {}
    out: list[RuleProblem] = []
    for rule in rules:
        scope = rule.match.category_scope or all_cats
        is_catch_all = rule.match == Match()
        if not is_catch_all and scope <= covered:
            firsts = sorted({by[c].index: by[c] for c in scope}.values(), key=lambda r: r.index)
            where = ", ".join(f"'{r.name}' ({r.file}:{r.line})" for r in firsts)
            out.append(
                RuleProblem(
                    rule.file,
                    rule.line,
                    f"warning: rule '{rule.name}' can never match; every category it covers "
                    f"is decided earlier by {where}",
                )
            )
        if _category_only(rule):
            for c in scope - covered:
                by[c] = rule
            covered |= scope
    return out


def ruleset_from_rules(rules: Sequence[Rule]) -> RuleSet:
    """Build a RuleSet from Rule objects (tests, embedding); list order is pack order."""
    return RuleSet(tuple(rules))


def decide_bind(
    ruleset: RuleSet,
    identity: Identity,
    classification: Classification,
    sql: str,
    params: Sequence[Any] | None,
    *,
    prepared: Prepared | None = None,
    bind_classifier: Callable[[Classification, str, Sequence[Any]], Classification] | None = None,
    keys: Any = None,
) -> Decision:
    """Decision at Bind time, when a Parse-time classification depends on parameters.

    ``SELECT set_config($1, $2, false)`` is harmless with ``('work_mem', '64MB')``
    and a privilege change with ``('role', 'postgres')``: the classifier marks such
    statements ``needs_bind`` and this helper re-classifies them with the actual
    values. Statements that do not need it keep their Parse-time decision. A failure
    to re-classify is ``deny`` (rule ``internal-error``), never the optimistic path.

    ``prepared`` (name -> SQL of the session's PREPAREd statements) and ``keys`` (the
    :class:`~dbgate.policy.keys.KeyCatalog` the Parse was classified with) are passed on
    to the classifier so ``EXECUTE name`` is judged by its body and the same keys
    prove narrowness. ``bind_classifier``
    defaults to :func:`dbgate.policy.classify.classify_bind`; tests may pass another.
    """
    if not classification.needs_bind or classification.parse_error is not None:
        return ruleset.decide(identity, classification)
    try:
        values = list(params) if params is not None else []
        if bind_classifier is None:
            from dbgate.policy.classify import classify_bind

            bound = classify_bind(classification, sql, values, prepared=prepared, keys=keys)
        else:
            bound = bind_classifier(classification, sql, values)
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
