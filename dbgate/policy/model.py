"""Value types shared by the classifier, the rules engine, the CLI and the proxy.

Everything here is immutable and hashable so classifications can be cached by
statement fingerprint and shared between sessions without copying.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

#: The session's prepared statements for classifying ``EXECUTE name``: name -> SQL
#: text, or every text the name may stand for when the proxy cannot know which one
#: the server holds (``()``: unknown, so opaque).
Prepared = Mapping[str, str | tuple[str, ...]]

#: Query strings longer than this (characters) are never cached by the classifier:
#: keys are the text itself, and 20,000 entries of megabyte-long SQL would be a memory
#: exhaustion vector.
MAX_CACHED_SQL = 64 * 1024


class Category(StrEnum):
    """What a statement does, as far as the gateway's policy is concerned.

    A statement usually carries several categories (a CTE that reads and deletes is
    both ``read`` and ``destructive``). Rules match on any of them.
    """

    READ = "read"
    WRITE = "write"
    DESTRUCTIVE = "destructive"
    DDL = "ddl"
    PRIVILEGE = "privilege"
    EXPORT = "export"
    DUMP = "dump"
    ADMIN = "admin"
    ESCAPE = "escape"
    OPAQUE = "opaque"
    CONTROL = "control"
    LOCK = "lock"


# Module-level names for the categories, defined here once. The long names are for
# code (a module global is a dict lookup; ``Category.READ`` costs an enum attribute
# lookup on the classifier's hot path); the short ones are for tables written as data,
# such as the function catalog and the classifier's test tables.
READ = R = Category.READ
WRITE = W = Category.WRITE
DESTRUCTIVE = X = Category.DESTRUCTIVE
DDL = Category.DDL
PRIVILEGE = P = Category.PRIVILEGE
EXPORT = E = Category.EXPORT
DUMP = D = Category.DUMP
ADMIN = A = Category.ADMIN
ESCAPE = ESC = Category.ESCAPE
OPAQUE = O = Category.OPAQUE  # noqa: E741 - a column of tables, reads better short
CONTROL = C = Category.CONTROL
LOCK = L = Category.LOCK


class Action(StrEnum):
    """The outcome of a rule decision. Ordered from least to most restrictive."""

    ALLOW = "allow"
    HOLD = "hold"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a category was assigned: a machine code plus a sentence for humans."""

    category: Category
    code: str  # e.g. "copy-to-program", "delete-without-where", "unknown-function"
    message: str


@dataclass(frozen=True, slots=True)
class PreparedEffect:
    """What running one statement does to the session's prepared statements.

    SQL ``PREPARE`` and the protocol's named Parse share one namespace in PostgreSQL,
    so a later ``EXECUTE name`` or Bind of ``name`` runs whatever the name was last
    given. A proxy that judges those by the text behind the name must follow every
    change, and takes them from here rather than reading SQL again:

    * ``add``: ``PREPARE name [(types)] AS body`` — ``name`` as the parser truncates
      identifiers (63 bytes, at a character boundary; quoted names keep their case),
      ``body`` the exact text of the prepared statement as it appears in the query
      string (without the parameter types, comments around it or the semicolon);
    * ``remove``: ``DEALLOCATE [PREPARE] name``;
    * ``clear``: ``DEALLOCATE [PREPARE] ALL`` and ``DISCARD ALL``.

    The effect happens only if the server runs the statement successfully.
    """

    kind: Literal["add", "remove", "clear"]
    name: str = ""
    body: str = ""


#: The session guards: timeouts an identity may lower but not raise past its ceiling.
GUARD_SETTINGS = (
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "transaction_timeout",
)


@dataclass(frozen=True, slots=True)
class GuardSetting:
    """A statement's change to one of :data:`GUARD_SETTINGS`, for the rules to compare
    with the identity's ceiling.

    ``value_ms``: the new value in milliseconds as the server reads it (0 means "no
    limit"); None when it is not known in advance (computed, a parameter, or text the
    server would read differently). ``reset``: back to the session's starting value
    (``RESET``, ``SET ... TO DEFAULT``), which is the value dbgate set.
    ``local``: ``SET LOCAL`` / ``set_config(..., true)``, until the transaction ends.
    """

    name: str
    value_ms: int | None
    local: bool = False
    reset: bool = False


@dataclass(frozen=True, slots=True)
class StatementClass:
    """Classification of one statement of a query string.

    Bounds (docs/classifier.md, "Narrow by proof"): ``read_bound`` is a proven upper
    bound on the table rows the statement reads (0: none; None: unbounded, the
    run-time ``max_rows`` applies), ``unbounded_tables`` the tables read without one.
    ``write_bound`` bounds the rows it inserts, updates or deletes (0: it changes no
    rows; None: unbounded, ``max_rows_changed`` applies), and ``writes_counted`` says
    whether the statement's command tag counts them (not so for a DML in WITH or
    under EXPLAIN ANALYZE). ``result_bound`` bounds the rows it returns: a SELECT
    can return more rows than it reads from tables (``FROM orders o,
    generate_series(1, 5000) WHERE o.id = 1`` reads one and returns 5,000), so only
    this bound lets a row limit go unwatched; for statements whose handler proves no
    such bound it is ``read_bound``.
    """

    categories: frozenset[Category]
    reasons: tuple[Reason, ...]
    tables: frozenset[str] = frozenset()  # "schema.table" when qualified, else "table"
    columns: frozenset[str] = frozenset()  # "table.column" where resolvable, else "column"
    functions: frozenset[str] = frozenset()  # lower-cased, schema-qualified when written so
    command: str = ""  # statement tag-ish name: "SELECT", "COPY", "DO", ...
    # True when the decision depends on Bind parameter values (e.g. set_config($1, $2, false)):
    # the proxy must classify again at Bind with the actual values.
    needs_bind: bool = False
    # PREPARE / DEALLOCATE / DISCARD ALL: what the statement does to prepared statements.
    prepared_effect: PreparedEffect | None = None
    # SET/RESET dbgate.purpose or dbgate.model: what the agent declares about itself
    # for approvers, as (key, value) pairs ("purpose" or "model"; "" after RESET).
    declares: tuple[tuple[str, str], ...] = ()
    read_bound: int | None = 0
    result_bound: int | None = 0
    unbounded_tables: frozenset[str] = frozenset()
    write_bound: int | None = 0
    writes_counted: bool = True
    # Changes to the session guards (timeouts), and the longest constant pg_sleep (ms).
    guard_settings: tuple[GuardSetting, ...] = ()
    sleep_ms: int | None = None


def _sum_of_bounds(bounds: Iterable[int | None]) -> int | None:
    """The sum of the statements' bounds, or None when one of them is unbounded."""
    out = 0
    for n in bounds:
        if n is None:
            return None
        out += n
    return out


@dataclass(frozen=True, slots=True)
class Classification:
    """Classification of a whole query string (one or more statements)."""

    statements: tuple[StatementClass, ...]
    # The text the fingerprint is computed from, on demand (:attr:`fingerprint`): a
    # fingerprint is a full parse, and only holds and approvals read it.
    fingerprint_source: str = field(default="", repr=False)
    parse_error: str | None = None  # set when pglast could not parse: always fails closed
    # Where the parser stopped, as PostgreSQL reports it (ErrorResponse field P):
    # 1-based, in characters of the query string; None when unknown.
    parse_error_position: int | None = None
    # True when the result depends on session state (EXECUTE of a prepared statement):
    # the same text may classify differently later in the same session.
    session_dependent: bool = False

    @property
    def reused(self) -> bool:
        """Whether the classifier may hand out this same object again: it caches texts
        up to :data:`MAX_CACHED_SQL` only. Memos keyed by a classification's identity
        (the rules' decisions, the gate's answers) keep only these: a longer text's
        classification is new each time, so its entry would never be asked for, and
        would keep the text (:attr:`fingerprint_source`, 20 MB for a 20 MB statement)
        alive until the memo fills up."""
        return len(self.fingerprint_source) <= MAX_CACHED_SQL

    @property
    def fingerprint(self) -> str:
        """pglast's fingerprint of the query string (its shape, not its literals); ""
        when there is none (a parse error, an empty string)."""
        if not self.fingerprint_source:
            return ""
        from pglast import parser

        try:
            return str(parser.fingerprint(self.fingerprint_source))
        except Exception:
            return ""

    @property
    def categories(self) -> frozenset[Category]:
        statements = self.statements
        if len(statements) == 1:  # the common case, asked of every statement
            return statements[0].categories
        out: set[Category] = set()
        for s in self.statements:
            out |= s.categories
        return frozenset(out)

    @property
    def reasons(self) -> tuple[Reason, ...]:
        return tuple(r for s in self.statements for r in s.reasons)

    @property
    def tables(self) -> frozenset[str]:
        return frozenset(t for s in self.statements for t in s.tables)

    @property
    def functions(self) -> frozenset[str]:
        return frozenset(f for s in self.statements for f in s.functions)

    @property
    def needs_bind(self) -> bool:
        return any(s.needs_bind for s in self.statements)

    @property
    def declares(self) -> tuple[tuple[str, str], ...]:
        """The agent's declarations (``SET dbgate.purpose = ...``), in order."""
        return tuple(d for s in self.statements for d in s.declares)

    @property
    def read_bound(self) -> int | None:
        """Table rows the whole string reads (None: some statement is unbounded)."""
        return _sum_of_bounds(s.read_bound for s in self.statements)

    @property
    def result_bound(self) -> int | None:
        """Rows the whole string returns (None: some statement is unbounded)."""
        return _sum_of_bounds(s.result_bound for s in self.statements)

    @property
    def write_bound(self) -> int | None:
        """Rows the whole string changes (None: some statement is unbounded)."""
        return _sum_of_bounds(s.write_bound for s in self.statements)

    @property
    def prepared_effects(self) -> tuple[PreparedEffect, ...]:
        """What the query string does to prepared statements, statement by statement,
        in order (empty for almost every string)."""
        return tuple(s.prepared_effect for s in self.statements if s.prepared_effect is not None)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is asking: the dbgate identity plus what the client told us about itself."""

    name: str
    application_name: str = ""
    client_addr: str = ""
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class OverLimit:
    """What the run time does when a statement passes one of its limits.

    ``action`` DENY: stop, and fail the statement with SQLSTATE 54000; HOLD: roll the
    statement back (a write, run under a savepoint) and ask a human, showing the
    measured count, with these approval parameters. ``rule`` set the limit.
    """

    action: Action
    rule: str
    approver_groups: tuple[str, ...] = ()
    approvals_needed: int = 1
    expires_after_seconds: int | None = None


@dataclass(frozen=True, slots=True)
class RowWindow:
    """Rows an identity may read from each table over a sliding window (all sessions
    and replicas): accounted per (identity, table) for every table in ``tables``."""

    rows: int
    seconds: int
    rule: str
    tables: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Decision:
    """What the rules say about one query string for one identity.

    ``message`` is the deciding rule's text (the same for every statement that rule
    decides); ``reasons`` are this statement's own: an agent told "reads every row of
    customers (no WHERE that narrows it ...)" knows what to change.
    """

    action: Action
    rule: str  # name of the rule that decided, "default" or "internal-error"
    message: str = ""
    approver_groups: tuple[str, ...] = ()
    approvals_needed: int = 1
    #: How long the statement waits for a decision (the shortest of the holding
    #: rules'); 0: answer at once, the agent retries once approved; None: the default.
    wait_seconds: float | None = None
    classification: Classification | None = field(default=None, compare=False)
    # The classifier's reasons this decision acted on: those whose category (of their
    # statement) was decided at ``action``. For a hold or deny, what the agent must
    # change; ``message`` is the deciding rule's text.
    reasons: tuple[Reason, ...] = ()

    @property
    def expires_after_seconds(self) -> float | None:
        """The older name of :attr:`wait_seconds`."""
        return self.wait_seconds

    # Run-time limits of an allowed statement that is not proven within them: at most
    # ``max_rows`` rows returned per statement (portals, FETCH and COPY TO included),
    # at most ``max_rows_changed`` rows inserted/updated/deleted/merged per statement.
    # None: no limit applies. ``*_over_limit`` says what to do past each.
    max_rows: int | None = None
    max_rows_changed: int | None = None
    rows_over_limit: OverLimit | None = None
    changes_over_limit: OverLimit | None = None
    #: Who decides when a clamped guard cannot be set back to its ceiling (the gate
    #: holds it): the ``session_guards`` entry's approvers, not the allow rule's.
    guard_hold: OverLimit | None = None
    # Rows per identity and table over a sliding window, for every allowed read.
    row_window: RowWindow | None = None
    # (setting, ms): guards the statement sets to 0 ("no limit") that must stay at the
    # identity's ceiling: the gate forwards a plain SET of each as a SET to the ceiling
    # (and holds any other statement that carries one, such as set_config).
    guard_clamps: tuple[tuple[str, int], ...] = ()

    @property
    def limits(self) -> dict[str, int | None] | None:
        """``{"max_rows": N, "max_rows_changed": M}`` when a limit applies, else None
        (what ``dbgate classify --json`` reports)."""
        if self.max_rows is None and self.max_rows_changed is None:
            return None
        return {"max_rows": self.max_rows, "max_rows_changed": self.max_rows_changed}
