"""Vouching for user functions from a live catalog (``extra_pure_functions``).

The classifier treats every function it does not know as ``opaque``. A deployment
with its own harmless SQL functions can read them from the upstream catalog
(:data:`LIVE_CATALOG_QUERY`), and :func:`vouch_for` returns the names that are safe to
pass to :func:`dbgate.policy.classify.classify` as ``extra_pure_functions``. The
reasoning — why STABLE/IMMUTABLE alone proves nothing — is in docs/classifier.md.

This sits on top of the classifier (it classifies function bodies), so the function
catalog below it never has to import the classifier back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pglast import parser

from dbgate.policy.catalog_settings import setting_effects, split_identifier_list
from dbgate.policy.classify import classify
from dbgate.policy.functions import BUILTIN_NAMES
from dbgate.policy.model import Category
from dbgate.policy.walk import StatementFacts, statement, walk

#: What the proxy runs against the upstream database to feed :func:`vouch_for`.
LIVE_CATALOG_QUERY = """
SELECT n.nspname, p.proname, p.provolatile, p.prosecdef, l.lanname,
       CASE WHEN p.prosqlbody IS NOT NULL THEN pg_get_functiondef(p.oid) ELSE p.prosrc END,
       coalesce(p.proconfig, '{}'::text[]), p.prokind
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_%'
"""


@dataclass(frozen=True, slots=True)
class CatalogFunction:
    """One row of :data:`LIVE_CATALOG_QUERY` (one overload of a user function)."""

    schema: str
    name: str
    volatility: str  # pg_proc.provolatile: 'i', 's' or 'v'
    security_definer: bool
    language: str
    body: str | None  # prosrc (or the whole definition for SQL-standard bodies)
    config: tuple[str, ...] = ()  # pg_proc.proconfig entries, "name=value"
    kind: str = "f"  # pg_proc.prokind


def _body_is_plain_read(body: str, extra: frozenset[str]) -> bool:
    """Does a SQL function body classify as nothing but ``read``?

    Classic bodies are SQL text. SQL-standard bodies (``RETURN expr`` / ``BEGIN
    ATOMIC ... END``) arrive as the whole CREATE FUNCTION (``pg_get_functiondef``):
    their parsed ``sql_body`` is walked directly.
    """
    c = classify(body, extra_pure_functions=extra)
    if c.parse_error is not None or c.needs_bind:
        return False
    if len(c.statements) != 1 or c.statements[0].command != "CREATE FUNCTION":
        return c.categories <= {Category.READ}
    try:
        tree = json.loads(parser.parse_sql_json(body))
        create = tree["stmts"][0]["stmt"]["CreateFunctionStmt"]
    except Exception:
        return False
    sql_body = create.get("sql_body")
    if not isinstance(sql_body, dict):
        return False
    facts = StatementFacts(None, None, extra)
    ret = sql_body.get("ReturnStmt")
    if ret is not None:
        facts.add(Category.READ, "select", "function body")
        walk(ret.get("returnval"), facts, True, {})
    else:
        stack: list[object] = [sql_body]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                lst = node.get("List")
                if lst is not None:
                    stack.extend(lst.get("items", ()))
                else:
                    statement(node, facts)
    return not facts.needs_bind and bool(facts.cats) and facts.cats <= {Category.READ}


def vouch_for(
    functions: list[CatalogFunction], *, search_path_first: str | None = None
) -> frozenset[str]:
    """Names of user functions that are safe to treat as pure (``extra_pure_functions``).

    A function qualifies only when **every** overload with its name is: a plain
    function (not an aggregate or procedure); IMMUTABLE or STABLE; not SECURITY
    DEFINER; ``LANGUAGE sql`` (other languages can call anything and are not
    checked by PostgreSQL); free of ``proconfig`` entries other than a harmless
    ``search_path``; and its body classifies as plain ``read`` by this classifier
    (so no unknown functions, no dump, no file access). A body may call other user
    functions accepted earlier; acceptance is iterated to a fixed point, which keeps
    the check well-founded (mutually recursive functions are never accepted).
    SQL-standard bodies (``RETURN ...`` / ``BEGIN ATOMIC``) are checked statement by
    statement from the parsed ``CREATE FUNCTION``.

    Returns ``schema.name`` for each, plus the bare ``name`` when ``schema`` is
    ``search_path_first`` (the first schema of the agent role's search path) and the
    name does not belong to a built-in — unqualified built-in names always resolve
    to ``pg_catalog`` first.
    """
    by_name: dict[tuple[str, str], list[CatalogFunction]] = {}
    for f in functions:
        by_name.setdefault((f.schema, f.name), []).append(f)

    def overload_ok(f: CatalogFunction, extra: frozenset[str]) -> bool:
        if f.kind != "f" or f.volatility not in ("i", "s") or f.security_definer:
            return False
        if f.language != "sql" or not f.body:
            return False
        for item in f.config:
            key, _, value = item.partition("=")
            if key.lower() != "search_path":
                return False
            effects, _ = setting_effects(key, split_identifier_list(value))
            if any(c is not Category.CONTROL for c, _, _ in effects):
                return False
        return _body_is_plain_read(f.body, extra)

    accepted: set[str] = set()
    changed = True
    while changed:  # a vouched function may call another vouched one
        changed = False
        extra = frozenset(accepted)
        for (schema, name), overloads in by_name.items():
            qual = f"{schema}.{name}"
            if qual in accepted:
                continue
            if all(overload_ok(f, extra) for f in overloads):
                accepted.add(qual)
                if schema == search_path_first and name not in BUILTIN_NAMES:
                    accepted.add(name)
                changed = True
    return frozenset(accepted)
