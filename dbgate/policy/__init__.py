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
    keys = key_catalog_from_rows(rows_of(KEYS_QUERY), search_path=[...], user=...)
    decision = rules.decide(Identity("agent"), classify(sql, keys=keys))
    decision.max_rows, decision.max_rows_changed, decision.guard_clamps  # run-time work
    rules.session_guards(Identity("agent")).settings()  # what to SET upstream
"""

from __future__ import annotations

from dbgate.policy.keys import KEYS_QUERY, KeyCatalog, key_catalog_from_rows
from dbgate.policy.model import (
    Action,
    Category,
    Classification,
    Decision,
    GuardSetting,
    Identity,
    OverLimit,
    Reason,
    RowWindow,
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
from dbgate.policy.session_guards import SessionGuards
from dbgate.policy.startup import StartupSetting, startup_setting

__all__ = [
    "KEYS_QUERY",
    "RULES_DIR_ENV",
    "Action",
    "Category",
    "Classification",
    "Decision",
    "GuardSetting",
    "Identity",
    "KeyCatalog",
    "OverLimit",
    "Reason",
    "RowWindow",
    "RuleProblem",
    "RuleSet",
    "RulesError",
    "SessionGuards",
    "StartupSetting",
    "StatementClass",
    "decide_bind",
    "default_rules_dir",
    "key_catalog_from_rows",
    "load_rules",
    "startup_setting",
]
