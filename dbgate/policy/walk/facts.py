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
from typing import TYPE_CHECKING, Any

from dbgate.policy.model import (
    ADMIN,
    LOCK,
    OPAQUE,
    Category,
    GuardSetting,
    Prepared,
    PreparedEffect,
    Reason,
    StatementClass,
)

#: ``StatementFacts.result_rows`` before a handler proves the statement's rows.
UNPROVEN = object()

if TYPE_CHECKING:
    from dbgate.policy.keys import KeyCatalog


class StatementFacts:
    """Everything learnt about one statement while walking it, and the context of the walk."""

    __slots__ = (
        "aliases",
        "calls",
        "cats",
        "columns",
        "command",
        "declares",
        "depth",
        "extra_pure",
        "free_refs",
        "functions",
        "guard_settings",
        "guarded_reads",
        "keys",
        "memo",
        "needs_bind",
        "nested_rows",
        "params",
        "pending",
        "prepared",
        "prepared_effect",
        "reads",
        "reasons",
        "result_rows",
        "scan_source",
        "scope",
        "seen",
        "sensitive",
        "setting_rows",
        "sleep_ms",
        "source",
        "span",
        "tables",
        "top",
        "uncacheable",
        "uncounted_writes",
        "write_calls",
        "writes",
    )

    def __init__(
        self,
        params: Sequence[bytes | str | None] | None,
        prepared: Prepared | None,
        extra_pure: frozenset[str],
        depth: int = 0,
        keys: KeyCatalog | None = None,
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
        #: calls that write (nextval, lo_create ...) walked so far: a query level that
        #: may evaluate them many times cannot have their effects counted by its tag
        self.write_calls = 0
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
        # The same text with comment contents neutralised (dbgate.policy.prescan): what
        # PostgreSQL's scanner is run on, in linear time; offsets equal the source's.
        self.scan_source: str | None = None
        # -- the proof of narrowness (dbgate.policy.walk.bounds) ------------------------
        self.keys = keys  # unique keys of the upstream tables; None: nothing is proven
        self.reads: dict[Any, int | None] = {}  # the current query level's table reads
        # Reads of sub-selects of the current level, waiting to be multiplied by the
        # number of rows the level runs them for (None: merge at once).
        self.pending: list[dict[Any, int | None]] | None = None
        self.memo: dict[int, Any] = {}  # id(SelectStmt body) -> Produced: walk each once
        # The function calls of the current query level, outside its sub-selects, as
        # (name, schema, windowed): aggregates and set-returning functions decide its
        # rows. None outside a SELECT level.
        self.calls: list[tuple[str, str | None, bool]] | None = None
        # The column references of the current query level (and what its sub-selects
        # left unresolved) that it does not itself resolve: qualifiers, and "?name" for
        # an unqualified name. A sub-select with any is correlated with the level
        # around it (``id IN (SELECT id)`` echoes the outer row): no proof. None
        # outside a SELECT level.
        self.free_refs: set[str] | None = None
        self.writes: dict[str, int | None] = {}  # target table -> rows it may change
        # Rows changed where the statement's command tag does not count them (a DML in
        # WITH, EXPLAIN ANALYZE): a run-time limit on changed rows cannot see them.
        self.uncounted_writes = False
        self.top: Any = None  # the statement's own node, to tell it from nested DML
        # The rows the statement returns, when a handler proves them (a top-level
        # SELECT: its level's row bound, which FROM functions, VALUES, grouping sets
        # and set-returning calls can make larger than the table rows it reads);
        # UNPROVEN: the table rows it reads bound them (see ``result``).
        self.result_rows: int | object | None = UNPROVEN
        # What nested statements that run as part of this one return (EXECUTE of a
        # prepared SELECT): summed, None once one is unbounded.
        self.nested_rows: int | None = 0
        # -- session guards -------------------------------------------------------------
        self.guard_settings: list[GuardSetting] = []
        self.sleep_ms: int | None = None  # the longest constant pg_sleep, in ms
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

    def statement_text(self, scanned: bool = False) -> str | None:
        """This statement's text in the query string (None when the walk has no source).

        ``scanned``: the same span of the text PostgreSQL's scanner may be run on
        (comments neutralised, same offsets: :mod:`dbgate.policy.prescan`).
        """
        sql = self.scan_source if scanned and self.scan_source is not None else self.source
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

    def merge(
        self,
        other: StatementClass,
        only: frozenset[Category] | None = None,
        *,
        bounds: bool = False,
    ) -> None:
        """Take over another statement's findings (SQL nested in this one).

        ``bounds``: its reads and writes happen as part of this statement (nested SQL
        that runs, a PREPARE's body judged now); False for what only plans or defines.
        """
        for r in other.reasons:
            if only is None or r.category in only:
                self.add(r.category, r.code, r.message)
        self.tables |= other.tables
        self.columns |= other.columns
        self.functions |= other.functions
        if bounds:
            lump = ("rows", len(self.reads))
            self.reads[lump] = other.read_bound
            for table in other.unbounded_tables:
                self.reads[table] = None
            if other.write_bound != 0:
                self.writes[f"\x00{len(self.writes)}"] = other.write_bound
            self.uncounted_writes |= not other.writes_counted
            if self.nested_rows is not None:
                from dbgate.policy.walk.bounds import plus

                self.nested_rows = (
                    None
                    if other.result_bound is None
                    else plus(self.nested_rows, other.result_bound)
                )
            self.guard_settings.extend(other.guard_settings)
            if other.sleep_ms is not None:
                self.sleep_ms = max(self.sleep_ms or 0, other.sleep_ms)

    def _settle_bounds(self) -> tuple[int | None, frozenset[str], int | None]:
        """(read bound, unbounded tables, write bound) from the statement's accounts,
        and ``lock`` for row locks no unique key or small LIMIT bounds."""
        from dbgate.policy.walk.bounds import PROOF_ROW_LIMIT, plus

        read: int | None = 0
        unbounded: set[str] = set()
        locked: dict[str, int | None] = {}
        for key, n in self.reads.items():
            if type(key) is tuple and key[0] == "lock":
                locked[key[1]] = n
                continue
            if n is None and type(key) is str:
                unbounded.add(key)
            read = plus(read, n) if read is not None else None
        lock_total: int | None = 0
        for n in locked.values():
            lock_total = plus(lock_total, n) if lock_total is not None else None
        if locked and (lock_total is None or lock_total > PROOF_ROW_LIMIT):
            names = sorted(t for t, n in locked.items() if n is None) or sorted(locked)
            self.add(
                LOCK,
                "row-lock",
                f"locks rows of {', '.join(names)} that no unique key or small LIMIT bounds "
                "(FOR UPDATE / FOR SHARE), blocking other sessions' writes until the "
                "transaction ends",
            )
        write: int | None = 0
        for n in self.writes.values():
            write = plus(write, n) if write is not None else None
        return read, frozenset(unbounded), write

    def _result_bound(self, read_bound: int | None) -> int | None:
        """The rows the statement returns: what its handler proved, else what the
        nested statements it runs return (EXECUTE), else the table rows it reads (a
        statement that returns no table data reads none: 0)."""
        proven = self.result_rows
        if proven is not UNPROVEN:
            return proven  # type: ignore[return-value]
        if self.nested_rows != 0:
            if self.nested_rows is None or read_bound is None:
                return None
            return max(self.nested_rows, read_bound)
        return read_bound

    def result(self) -> StatementClass:
        if self.guarded_reads:
            self._settle_guarded_reads()
        read_bound, unbounded, write_bound = self._settle_bounds()
        result_bound = self._result_bound(read_bound)
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
            read_bound=read_bound,
            result_bound=result_bound,
            unbounded_tables=unbounded,
            write_bound=write_bound,
            writes_counted=not self.uncounted_writes,
            guard_settings=tuple(self.guard_settings),
            sleep_ms=self.sleep_ms,
        )
