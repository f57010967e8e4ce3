"""The walker's state: what the walk has found out about one statement so far.

One :class:`StatementFacts` is filled per top-level statement (and a fresh one for
each nested or scratch walk): the categories with their reasons, the tables, columns
and functions touched, and the flags the cache needs (did a literal value decide,
did session state decide). It also carries the context the statement is walked in —
Bind values, the session's prepared statements, vouched-for functions, nesting depth
and the qualifiers of enclosing query levels — so every handler takes one argument
for all of it.
"""

from __future__ import annotations

from collections.abc import Sequence

from dbgate.policy.model import (
    ADMIN,
    OPAQUE,
    Category,
    Prepared,
    PreparedEffect,
    Reason,
    StatementClass,
)


class StatementFacts:
    """Everything learnt about one statement while walking it, and the context of the walk."""

    __slots__ = (
        "aliases",
        "cats",
        "columns",
        "command",
        "declares",
        "depth",
        "extra_pure",
        "functions",
        "guarded_reads",
        "needs_bind",
        "params",
        "prepared",
        "prepared_effect",
        "reasons",
        "scope",
        "seen",
        "sensitive",
        "setting_rows",
        "source",
        "span",
        "tables",
        "uncacheable",
    )

    def __init__(
        self,
        params: Sequence[bytes | str | None] | None,
        prepared: Prepared | None,
        extra_pure: frozenset[str],
        depth: int = 0,
    ) -> None:
        self.cats: set[Category] = set()
        self.reasons: list[Reason] = []
        self.seen: set[tuple[Category, str, str]] = set()
        self.tables: set[str] = set()
        self.columns: set[str] = set()
        self.aliases: dict[str, str] = {}  # FROM alias -> table, to name columns
        self.scope: frozenset[str] = frozenset()  # qualifiers of enclosing query levels
        self.functions: set[str] = set()
        self.command = ""
        self.needs_bind = False
        self.sensitive = False  # consulted a literal value: cache by exact text only
        self.uncacheable = False  # consulted session state (prepared statements)
        self.params = params
        self.prepared = prepared
        self.extra_pure = extra_pure
        self.depth = depth
        self.prepared_effect: PreparedEffect | None = None
        self.declares: list[tuple[str, str]] = []  # SET dbgate.purpose / dbgate.model
        # The query string and this statement's place in it (UTF-8 byte offset and
        # length, 0 = to the end, as the parser reports them), for the few handlers
        # that need the statement's own text (PREPARE records its body).
        self.source: str | None = None
        self.span: tuple[int, int] = (0, 0)
        # While the target list of ``SELECT ... FROM pg_settings WHERE name = '...'`` is
        # walked: (qualifiers of pg_settings, the setting names its rows can have).
        self.setting_rows: tuple[frozenset[str], frozenset[str]] | None = None
        # Relations whose reading is admin only if the statement touches their secret
        # columns: (relation, qualifier, secret columns), settled by result().
        self.guarded_reads: list[tuple[str, str, frozenset[str]]] = []

    def _settle_guarded_reads(self) -> None:
        """``admin`` for each credential relation whose secrets the statement touches:
        a column named like a secret one (whatever its qualifier), ``*``, or the row
        itself (a reference to the relation's qualifier)."""
        for relation, qualifier, secrets in self.guarded_reads:
            for c in self.columns:
                last = c.rpartition(".")[2]
                if last in secrets or last == "*" or c in (qualifier, relation):
                    self.add(
                        ADMIN, "credential-catalog", self.secret_read_message(relation, secrets)
                    )
                    break
        self.guarded_reads = []

    @staticmethod
    def secret_read_message(relation: str, secrets: frozenset[str]) -> str:
        """The reason for reading credentials (names only: never a value)."""
        return f"reads the credentials in {relation} ({', '.join(sorted(secrets))})"

    def statement_text(self) -> str | None:
        """This statement's text in the query string (None when the walk has no source)."""
        sql = self.source
        if sql is None:
            return None
        start, length = self.span
        if sql.isascii():  # byte offsets are character offsets
            return sql[start : start + length] if length else sql[start:]
        raw = sql.encode("utf-8")  # statements start and end on token boundaries
        return (raw[start : start + length] if length else raw[start:]).decode("utf-8")

    def add(self, cat: Category, code: str, message: str) -> None:
        """Assign a category with its reason (each distinct reason is kept once)."""
        key = (cat, code, message)
        if key in self.seen:
            return
        self.seen.add(key)
        self.cats.add(cat)
        self.reasons.append(Reason(cat, code, message))

    def merge(self, other: StatementClass, only: frozenset[Category] | None = None) -> None:
        for r in other.reasons:
            if only is None or r.category in only:
                self.add(r.category, r.code, r.message)
        self.tables |= other.tables
        self.columns |= other.columns
        self.functions |= other.functions

    def result(self) -> StatementClass:
        if self.guarded_reads:
            self._settle_guarded_reads()
        if not self.cats:  # never return an empty classification
            self.add(OPAQUE, "no-category", "is a statement dbgate found nothing to say about")
        columns = self.columns
        only = next(iter(self.tables)) if len(self.tables) == 1 else None
        if self.aliases or only:
            # best effort: "o.id" -> "orders.id" (aliases may repeat in subqueries), and
            # "id" -> "orders.id" when the statement touches a single table
            columns = set()
            for c in self.columns:
                head, dot, rest = c.partition(".")
                if dot:
                    table = self.aliases.get(head)
                    columns.add(f"{table}.{rest}" if table else c)
                else:
                    columns.add(f"{only}.{c}" if only and c != "*" else c)
        return StatementClass(
            categories=frozenset(self.cats),
            reasons=tuple(self.reasons),
            tables=frozenset(self.tables),
            columns=frozenset(columns),
            functions=frozenset(self.functions),
            command=self.command,
            needs_bind=self.needs_bind,
            prepared_effect=self.prepared_effect,
            declares=tuple(self.declares),
        )
