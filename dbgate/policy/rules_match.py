"""Compiled rules and the predicates that decide whether a rule matches.

A rule is evaluated against one *unit*: one category of one statement, for one
identity. Splitting a statement into units is what makes the engine fail closed:
an ``allow`` rule for ``read`` covers only the ``read`` unit of a statement that
also exports, and the ``export`` unit must find its own rule.

The single principle behind every matching detail here:

    *Permissive rules match strictly, restrictive rules match generously.*

An ``allow`` rule's ``tables``/``schemas``/``functions`` must cover *every* object
the statement touches, and its globs are case-sensitive; a ``hold``/``deny`` rule
matches when *any* object matches, case-insensitively. A mistake in a pattern
therefore errs towards holding, never towards letting something through.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from dbgate.policy.model import Action, Category, Identity, StatementClass

#: Unqualified table names are assumed to live here (PostgreSQL's default
#: ``search_path`` is ``"$user", public``).
DEFAULT_TABLE_SCHEMA = "public"
#: Unqualified function names resolve to one of these under a default search path
#: (``pg_catalog`` is always searched first unless listed explicitly).
DEFAULT_FUNCTION_SCHEMAS = ("pg_catalog", "public")

SEVERITY: dict[Action, int] = {Action.ALLOW: 0, Action.HOLD: 1, Action.DENY: 2}


@dataclass(frozen=True, slots=True)
class Glob:
    """One shell-style pattern, compiled once at load time.

    ``qualified`` is True when the pattern names a schema (``sales.*``); such a
    pattern is compared with the qualified object name, an unqualified pattern
    only with the object's bare name (so ``customers`` matches in every schema).
    """

    pattern: str
    regex: re.Pattern[str]
    qualified: bool

    @classmethod
    def compile(cls, pattern: str, *, case_insensitive: bool) -> Glob:
        flags = re.IGNORECASE if case_insensitive else 0
        return cls(pattern, re.compile(fnmatch.translate(pattern), flags), "." in pattern)

    def matches(self, value: str) -> bool:
        return self.regex.match(value) is not None


_COMMAND_NOISE = re.compile(r"[\s_]+")


def command_key(command: str) -> str:
    """Canonical form of a command name for ``statements`` matching.

    Case, spaces and underscores are ignored, so ``ALTER SYSTEM``, ``AlterSystem``
    and ``alter_system`` are the same command: operators write SQL keywords, the
    classifier may report parse-node names, and neither should have to know.
    """
    return _COMMAND_NOISE.sub("", command).upper()


def _split(name: str) -> tuple[str | None, str]:
    schema, dot, bare = name.rpartition(".")
    return (schema if dot else None), bare


def _any_glob(globs: tuple[Glob, ...], value: str) -> bool:
    return any(g.matches(value) for g in globs)


def _catalog_relations() -> frozenset[str]:
    try:
        from dbgate.policy.catalog_builtin import PG_CATALOG_RELATIONS
    except ImportError:  # pragma: no cover - the catalog ships with the package
        return frozenset()
    return frozenset(PG_CATALOG_RELATIONS)


_PG_CATALOG_RELATIONS = _catalog_relations()


def qualify_table(table: str) -> str:
    """``table`` with the schema PostgreSQL would resolve it to by default.

    ``pg_catalog`` is searched before anything else, so an unqualified name of a
    catalog relation (``pg_class``) is ``pg_catalog.pg_class``; any other
    unqualified name is ``public.<name>`` (default ``search_path``).
    """
    schema, bare = _split(table)
    if schema is not None:
        return table
    if bare in _PG_CATALOG_RELATIONS:
        return f"pg_catalog.{bare}"
    return f"{DEFAULT_TABLE_SCHEMA}.{bare}"


def table_matches(globs: tuple[Glob, ...], table: str) -> bool:
    """Does ``table`` ("schema.table" or "table") match any of ``globs``?

    Unqualified patterns look at the bare name in any schema; qualified patterns
    see an unqualified table as :func:`qualify_table` resolves it.
    """
    full = qualify_table(table)
    bare = full.rpartition(".")[2]
    return any(g.matches(full if g.qualified else bare) for g in globs)


def function_matches(globs: tuple[Glob, ...], function: str) -> bool:
    """Like :func:`table_matches`; an unqualified function may be in pg_catalog or public."""
    schema, bare = _split(function)
    for g in globs:
        if not g.qualified:
            if g.matches(bare):
                return True
        elif schema is not None:
            if g.matches(function):
                return True
        elif any(g.matches(f"{s}.{bare}") for s in DEFAULT_FUNCTION_SCHEMAS):
            return True
    return False


def known_pure(function: str) -> bool:
    """Is ``function`` a built-in the function catalog knows to be harmless?

    Used only by ``allow`` rules' ``functions`` list so that ``functions: [myapp.*]``
    need not also list ``lower``, ``count`` and every other harmless built-in. If
    the catalog cannot be imported nothing counts as pure (strict, fail closed).
    """
    try:
        from dbgate.policy.functions import is_pure
    except ImportError:  # pragma: no cover - the catalog ships with the package
        return False
    schema, bare = _split(function)
    return is_pure(bare, schema)


def allow_functions_match(globs: tuple[Glob, ...], functions: Iterable[str]) -> bool:
    """``allow`` semantics for ``functions``: at least one called function matches,
    and every other one matches too or is a known-pure built-in."""
    matched = False
    for f in functions:
        if function_matches(globs, f):
            matched = True
        elif not known_pure(f):
            return False
    return matched


def table_schema(table: str) -> str:
    """The schema a table name refers to, assuming the default search path."""
    return qualify_table(table).rpartition(".")[0]


def _objects_match(
    globs: tuple[Glob, ...] | None,
    objects: Iterable[str],
    test: Callable[[tuple[Glob, ...], str], bool],
    *,
    strict: bool,
) -> bool:
    """Apply a per-object predicate with all-of (strict) or any-of semantics.

    A constrained rule never matches a statement that touches no such object: an
    ``allow`` for ``tables: [analytics.*]`` must not cover ``SELECT pg_sleep(1)``.
    """
    if globs is None:
        return True
    items = list(objects)
    if not items:
        return False
    if strict:
        return all(test(globs, o) for o in items)
    return any(test(globs, o) for o in items)


@dataclass(frozen=True, slots=True)
class Match:
    """The ``match:`` block of a rule. ``None`` means "not constrained"."""

    categories: frozenset[Category] | None = None
    all_categories: frozenset[Category] | None = None
    tables: tuple[Glob, ...] | None = None
    schemas: tuple[Glob, ...] | None = None
    functions: tuple[Glob, ...] | None = None
    identities: tuple[Glob, ...] | None = None
    groups: tuple[Glob, ...] | None = None
    application_names: tuple[Glob, ...] | None = None
    statements: tuple[Glob, ...] | None = None

    @property
    def category_scope(self) -> frozenset[Category] | None:
        """Which units (categories) the rule can decide; None = all of them."""
        if self.categories is None and self.all_categories is None:
            return None
        return (self.categories or frozenset()) | (self.all_categories or frozenset())


@dataclass(frozen=True, slots=True)
class Rule:
    """One validated rule, ready to evaluate. ``index`` is its position in the pack."""

    name: str
    action: Action
    match: Match = field(default_factory=Match)
    description: str = ""
    message: str = ""
    approver_groups: tuple[str, ...] = ()
    approvals_needed: int = 1
    #: How long a statement this rule holds waits for a decision; 0: answer at once
    #: (approve-then-retry); None: the config's default.
    wait_seconds: float | None = None
    file: str = ""
    line: int = 0
    index: int = 0
    # Run-time limits of an allow rule (docs/rules.md, "Run-time limits"): rows
    # returned per statement, rows changed per statement, rows read per identity and
    # table over a window; and what happens past the first two (DENY: fail with
    # 54000, HOLD: ask a human with the measured count).
    max_rows: int | None = None
    max_rows_changed: int | None = None
    max_rows_per_window: int | None = None
    window_seconds: int | None = None
    over_limit: Action = Action.DENY

    @property
    def expires_after_seconds(self) -> float | None:
        """The older name of :attr:`wait_seconds` (the ``expires_after`` key)."""
        return self.wait_seconds

    @property
    def strict(self) -> bool:
        """Permissive rules must cover everything they see (see module docstring)."""
        return self.action is Action.ALLOW

    def matches_identity(self, identity: Identity) -> bool:
        m = self.match
        if m.identities is not None and not _any_glob(m.identities, identity.name):
            return False
        if m.groups is not None and not any(_any_glob(m.groups, g) for g in identity.groups):
            return False
        return not (
            m.application_names is not None
            and not _any_glob(m.application_names, identity.application_name)
        )

    def matches_statement(self, stmt: StatementClass, categories: frozenset[Category]) -> bool:
        """Statement-level conditions: everything except which unit is being decided."""
        m = self.match
        strict = self.strict
        if m.all_categories is not None and not m.all_categories <= categories:
            return False
        if m.statements is not None and not _any_glob(m.statements, command_key(stmt.command)):
            return False
        if not _objects_match(m.tables, stmt.tables, table_matches, strict=strict):
            return False
        if m.schemas is not None:
            schemas = {table_schema(t) for t in stmt.tables}
            if not _objects_match(m.schemas, schemas, _any_glob, strict=strict):
                return False
        if m.functions is None:
            return True
        if strict:
            return allow_functions_match(m.functions, stmt.functions)
        return any(function_matches(m.functions, f) for f in stmt.functions)
