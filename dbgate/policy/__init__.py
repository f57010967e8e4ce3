"""Statement policy: classify SQL, then decide allow / hold / deny with the rules.

Pure code (no network) shared by the proxy and the CLI. This package root
re-exports the shared types and the rules API, which are cheap to import. The
classifier lives in :mod:`dbgate.policy.classify` (``classify``, ``classify_bind``)
and is deliberately *not* re-exported here: the function and its module share the
name ``classify``, and importing pglast should be an explicit choice.

Typical use::

    from dbgate.policy import Identity, decide_bind, load_rules
    from dbgate.policy.classify import classify

    rules = load_rules()                      # shipped pack, or load_rules(Path(...))
    decision = rules.decide(Identity("agent"), classify(sql))
"""

from __future__ import annotations

from dbgate.policy.model import (
    Action,
    Category,
    Classification,
    Decision,
    Identity,
    Reason,
    StatementClass,
)
from dbgate.policy.rules import (
    RULES_DIR_ENV,
    RuleProblem,
    RulesError,
    RuleSet,
    decide_bind,
    default_rules_dir,
    load_rules,
)

__all__ = [
    "RULES_DIR_ENV",
    "Action",
    "Category",
    "Classification",
    "Decision",
    "Identity",
    "Reason",
    "RuleProblem",
    "RuleSet",
    "RulesError",
    "StatementClass",
    "decide_bind",
    "default_rules_dir",
    "load_rules",
]
