"""Statement policy: classify SQL, then decide allow / hold / deny with the rules.

Pure code (no network) shared by the proxy and the CLI. The rules side is
imported eagerly because it is cheap; the classifier (pglast) is imported on
first use so ``import dbgate.policy`` stays fast for tools that only load rules.
"""

from __future__ import annotations

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
    "classify",
    "classify_bind",
    "decide_bind",
    "default_rules_dir",
    "load_rules",
]

_LAZY = {"classify", "classify_bind"}


def __getattr__(name: str) -> Any:
    """Import the classifier only when someone asks for it (pglast is heavy)."""
    if name in _LAZY:
        from dbgate.policy import classify as _classify_module

        return getattr(_classify_module, name)
    raise AttributeError(f"module 'dbgate.policy' has no attribute {name!r}")
