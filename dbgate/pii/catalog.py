"""The PII catalog: which columns hold personal data, and of which kind.

Three sources, in this order of precedence for one column:

1. ``columns`` entries of the catalog file (``schema.table.column`` globs -> entity,
   or ``none`` to switch a column off). The operator's word is final.
   Then :data:`QUERY_TEXT_COLUMNS`: system views that return SQL text
   (``pg_stat_activity.query``, ``pg_cursors.statement`` ...) — that text holds the
   raw values of the tokens dbgate resolved, so it is PII by default; and
   :data:`SAMPLED_VALUE_COLUMNS`: the planner's statistics, samples of column values.
2. ``COMMENT ON COLUMN … IS 'pii:email'`` in the database. A comment can only *add*
   PII, never remove it: whoever may comment on a column (perhaps the agent itself)
   must not be able to unmask it.
3. Column-name defaults (:data:`dbgate.pii.entities.DEFAULT_NAME_PATTERNS`, plus the
   catalog's own ``names``), unless the catalog sets ``name_defaults: false``.

Globs use ``*`` (any run of characters except ``.``), ``?`` and ``[...]``, and match
case-insensitively: a PII column spelled ``"Email"`` must not slip through because an
operator wrote ``email``. Matching is pure; applying the catalog to a live schema is
:mod:`dbgate.pii.coverage`, loading the YAML file with ``file:line`` errors is
:mod:`dbgate.pii.catalog_load`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from dbgate.pii.entities import DEFAULT_NAME_PATTERNS, KNOWN_ENTITIES, MIXED, NONE

__all__ = [
    "QUERY_TEXT_COLUMNS",
    "SAMPLED_VALUE_COLUMNS",
    "WORK_COUNTER_COLUMNS",
    "Catalog",
    "ColumnRule",
    "NameRule",
    "compile_glob",
    "entity_from_comment",
    "snake_case",
]


@lru_cache(maxsize=4096)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """A case-insensitive regex for one name glob (``*`` does not cross ``.``)."""
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            out.append(r"[^.]*")
        elif ch == "?":
            out.append(r"[^.]")
        elif ch == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "]") else i + 1)
            if end < 0:
                out.append(re.escape(ch))
            else:
                body = pattern[i + 1 : end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out) + r"\Z", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ColumnRule:
    """``schema.table.column`` glob -> entity (``none`` switches the column off)."""

    pattern: str  # always three dot-separated parts after loading
    entity: str
    file: str = ""
    line: int = 0

    @property
    def exact(self) -> bool:
        """True when the pattern names one column (no wildcard): it must exist."""
        return not any(c in self.pattern for c in "*?[")

    def matches(self, schema: str, table: str, column: str) -> bool:
        return compile_glob(self.pattern).match(f"{schema}.{table}.{column}") is not None


@dataclass(frozen=True, slots=True)
class NameRule:
    """Column-name glob -> entity, from the catalog's ``names`` or the built-in list."""

    pattern: str
    entity: str
    builtin: bool = True

    def matches(self, column: str) -> bool:
        return compile_glob(self.pattern).match(column) is not None


#: Columns that return SQL text the server received. dbgate forwards SQL in which the
#: tokens the agent sent are replaced by their raw values, so this text is PII whatever
#: the catalog file says; only an explicit ``columns`` entry overrides these (the
#: operator's word is final). Functions that return such text are in
#: :data:`dbgate.pii.lineage.DATA_READERS`.
QUERY_TEXT_COLUMNS: tuple[str, ...] = (
    "pg_catalog.pg_stat_activity.query",
    "pg_catalog.pg_cursors.statement",
    "pg_catalog.pg_prepared_statements.statement",
    "pg_catalog.pg_backend_memory_contexts.ident",
    "*.pg_stat_statements.query",
    "*.pg_stat_monitor.query",
    "*.pg_stat_monitor.query_plan",
)
#: Columns that return values sampled from other columns: the planner's statistics
#: (``most_common_vals``, ``histogram_bounds`` ...) of a PII column are PII. Reading
#: them is held by the default rules (a dump); once approved, they are tokenized.
SAMPLED_VALUE_COLUMNS: tuple[str, ...] = (
    "pg_catalog.pg_stats.most_common_vals",
    "pg_catalog.pg_stats.histogram_bounds",
    "pg_catalog.pg_stats.most_common_elems",
    "pg_catalog.pg_stats_ext.most_common_vals",
    "pg_catalog.pg_stats_ext_exprs.most_common_vals",
    "pg_catalog.pg_stats_ext_exprs.histogram_bounds",
    "pg_catalog.pg_stats_ext_exprs.most_common_elems",
    "pg_catalog.pg_statistic.stavalues?",
    "pg_catalog.pg_statistic_ext_data.stxdmcv",
    "pg_catalog.pg_statistic_ext_data.stxdexpr",  # pg_statistic rows of each expression
)


#: Columns that count work: rows read or returned, scans, blocks, calls. A statement
#: can do as much work as a value derived from PII says (``count(*) FROM payments
#: WHERE id <= ascii(email)`` returns nothing raw, yet ``idx_tup_read`` grows by the
#: character code), and a later statement reads the counter: a counter is PII.
WORK_COUNTER_COLUMNS: tuple[str, ...] = (
    "pg_catalog.pg_stat_all_*.*",
    "pg_catalog.pg_stat_sys_*.*",
    "pg_catalog.pg_stat_user_*.*",
    "pg_catalog.pg_stat_xact_*.*",
    "pg_catalog.pg_statio_*.*",
    "pg_catalog.pg_stat_database*.*",
    "pg_catalog.pg_stat_io.*",
    "pg_catalog.pg_stat_wal.*",
    "pg_catalog.pg_stat_bgwriter.*",
    "pg_catalog.pg_stat_checkpointer.*",
    "pg_catalog.pg_stat_slru.*",
    "pg_catalog.pg_stat_progress_*.*",
    "pg_catalog.pg_backend_memory_contexts.*",
    "*.pg_stat_statements.*",
    "*.pg_stat_monitor.*",
)


#: Of the per-object counter views (``pg_stat_user_tables``, ``pg_statio_all_indexes``,
#: ``pg_stat_xact_user_functions``, ``pg_stat_database`` …), the columns that name the
#: object counted rather than count work: the same names and OIDs ``pg_class``,
#: ``pg_proc`` and ``pg_database`` return clean. A row's presence (a function's once
#: it was called) is no more told by its name than by ``count(*)`` of the view.
WORK_COUNTER_NAMES: tuple[str, ...] = (
    "relid",
    "indexrelid",
    "schemaname",
    "relname",
    "indexrelname",
    "funcid",
    "funcname",
    "datid",
    "datname",
)
#: The views :data:`WORK_COUNTER_NAMES` applies to.
WORK_COUNTER_OBJECT_VIEWS: tuple[str, ...] = (
    "pg_catalog.pg_stat_all_*",
    "pg_catalog.pg_stat_sys_*",
    "pg_catalog.pg_stat_user_*",
    "pg_catalog.pg_stat_xact_*",
    "pg_catalog.pg_statio_*",
    "pg_catalog.pg_stat_database*",
)


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEPARATORS = re.compile(r"[-\s.]+")


@lru_cache(maxsize=8192)
def snake_case(name: str) -> str:
    """``name`` with its words joined by ``_``: ``emailAddress`` -> ``email_address``,
    ``IPAddress`` -> ``IP_Address``, ``e-mail`` -> ``e_mail`` (case is kept: the globs
    ignore it)."""
    return _SEPARATORS.sub("_", _CAMEL.sub("_", name))


_COMMENT = re.compile(r"(?<![A-Za-z0-9_])pii\s*:\s*([A-Za-z][A-Za-z0-9_]*)?", re.IGNORECASE)


def _names_counted(schema: str, table: str, column: str) -> bool:
    """Whether ``column`` of a counter view names the object counted
    (:data:`WORK_COUNTER_NAMES`)."""
    if column not in WORK_COUNTER_NAMES:
        return False
    view = f"{schema}.{table}"
    return any(compile_glob(p).match(view) is not None for p in WORK_COUNTER_OBJECT_VIEWS)


def entity_from_comment(comment: str | None, entities: frozenset[str]) -> str | None:
    """The entity a column comment declares (``'pii:email'``), or None.

    ``pii:`` followed by a name that is not an entity (``'PII: e-mail address'``)
    still marks the column as personal data, with the generic entity ``pii``.
    ``pii:none`` is ignored: comments only add PII.
    """
    if not comment:
        return None
    m = _COMMENT.search(comment)
    if m is None:
        return None
    name = (m.group(1) or "").lower()
    if name == NONE:
        return None
    if name in entities:
        # "pii: e-mail ..." yields "e", which is not an entity; the check is the point
        return name
    return MIXED


@dataclass(frozen=True)
class Catalog:
    """A loaded, validated catalog. ``Catalog()`` is the built-in default."""

    columns: tuple[ColumnRule, ...] = ()
    names: tuple[NameRule, ...] = ()  # the catalog's own, checked before the defaults
    name_defaults: bool = True
    comments: bool = True
    source: str = "(built-in defaults)"
    _name_rules: tuple[NameRule, ...] = field(init=False, repr=False, compare=False)
    _entities: frozenset[str] = field(init=False, repr=False, compare=False)
    _name_cache: dict[str, NameRule | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        builtin = (
            tuple(NameRule(p, e) for p, e in DEFAULT_NAME_PATTERNS) if self.name_defaults else ()
        )
        object.__setattr__(self, "_name_rules", self.names + builtin)
        used = {r.entity for r in self.columns} | {r.entity for r in self.names}
        object.__setattr__(self, "_entities", frozenset(KNOWN_ENTITIES) | (used - {NONE}))
        object.__setattr__(self, "_name_cache", {})

    @property
    def entities(self) -> frozenset[str]:
        """Every entity name this catalog can produce."""
        return self._entities

    def column_rule(self, schema: str, table: str, column: str) -> ColumnRule | None:
        for rule in self.columns:
            if rule.matches(schema, table, column):
                return rule
        return None

    def name_rule(self, column: str) -> NameRule | None:
        """The first name rule ``column`` matches, as it is spelled or as its words
        are: ``"emailAddress"``, ``"dateOfBirth"``, ``"e-mail"`` (an ORM's quoted
        camelCase) are ``email_address``, ``date_of_birth``, ``e_mail``."""
        cache = self._name_cache
        if column in cache:
            return cache[column]
        words = snake_case(column)
        found = None
        for rule in self._name_rules:
            if rule.matches(column) or (words != column and rule.matches(words)):
                found = rule
                break
        if len(cache) >= 65536:  # names repeat across tables (id, created_at ...)
            cache.clear()
        cache[column] = found
        return found

    def classify(
        self, schema: str, table: str, column: str, comment: str | None = None
    ) -> tuple[str | None, str]:
        """``(entity or None, why)`` for one column; ``why`` explains the decision."""
        rule = self.column_rule(schema, table, column)
        if rule is not None:
            where = f"{rule.file}:{rule.line}" if rule.file else "catalog"
            if rule.entity == NONE:
                return None, f"switched off by {rule.pattern!r} ({where})"
            return rule.entity, f"catalog {rule.pattern!r} ({where})"
        qualified = f"{schema}.{table}.{column}"
        for pattern in QUERY_TEXT_COLUMNS:
            if compile_glob(pattern).match(qualified) is not None:
                return MIXED, f"built-in: {pattern!r} returns query text (resolved tokens)"
        for pattern in SAMPLED_VALUE_COLUMNS:
            if compile_glob(pattern).match(qualified) is not None:
                return MIXED, f"built-in: {pattern!r} returns values sampled from columns"
        for pattern in WORK_COUNTER_COLUMNS:
            if compile_glob(pattern).match(qualified) is not None and not _names_counted(
                schema, table, column
            ):
                return MIXED, f"built-in: {pattern!r} counts work a statement can size by PII"
        if self.comments:
            from_comment = entity_from_comment(comment, self._entities)
            if from_comment is not None:
                return from_comment, "column comment"
        named = self.name_rule(column)
        if named is not None:
            kind = "built-in name default" if named.builtin else "catalog name pattern"
            return named.entity, f"{kind} {named.pattern!r}"
        return None, ""
