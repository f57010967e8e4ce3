"""What the walk returns, and what it reads from its caller.

:class:`Analysis` is everything learned about one query string: a
:class:`StatementLineage` per statement with its :class:`Output` (the lineage of each
column it returns), the token literals found (:class:`TokenSite`), where bind parameters
flow, what is written where the catalog will not find it again. :class:`ColumnSource`
(the catalog applied to a schema) and :class:`SessionState` (cursors and prepared
statements declared earlier) are what the walk reads.

A classification worker traces analyses and pickles them back to the pool, which
unpickles only the names it allows (:mod:`dbgate.gate.classify_pool` lists these
classes under this module's name).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from dbgate.pii.lin import CLEAN, UNKNOWN_LIN, Lin
from dbgate.pii.schema import Relation, SchemaSnapshot


@dataclass(frozen=True, slots=True)
class TokenSite:
    """A string literal holding at least one token, and whether it may be resolved."""

    location: int  # byte offset of the literal in the statement text
    allowed: bool
    why: str = ""
    text: str = ""  # the literal's value as the server reads it
    stores: bool = False  # its value is stored in a PII column (Ctx.stores)


@dataclass
class Output:
    """Lineage of the columns a statement returns, in order.

    ``tail`` is set when the width is not known (``SELECT *`` over something opaque):
    every position past ``columns`` has that lineage.

    ``chosen`` is the part every column has because PII chose the rows (already in
    ``columns`` and ``tail``): a plain column is described by its table and attribute
    in the RowDescription and takes its lineage from there, plus this.
    """

    columns: list[Lin] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    tail: Lin | None = None
    chosen: Lin = CLEAN
    #: PII that kept rows of it (or of a level below) by each row's own value, and the
    #: levels where (``Scope.level_asked``): in no column, but a value of a sub-select
    #: standing as a value (``(SELECT count(*) ... WHERE ascii(email) & 4 <> 0)``)
    asked: Lin = CLEAN
    asked_levels: frozenset[int] = field(default=frozenset(), compare=False, repr=False)
    #: PII that chose the order of its rows (a nested ``ORDER BY email``, whole column
    #: too, here or below): in no column, but a value of whatever packs the rows in
    #: their order (``string_agg``, ``row_number() OVER ()``, ``ARRAY(...)``)
    ordered: Lin = CLEAN
    #: of a prepared statement: its parameters whose values it writes, keeps in session
    #: state, or lets choose the rows it writes (an EXECUTE argument there is a copy)
    writes: frozenset[int] = frozenset()
    #: positions of the columns that are a table row's stored column as it is, passed on
    #: unchanged (``SELECT id, email FROM customers``, or such a column of a sub-select):
    #: never a set operation's, an expression's or a value from elsewhere
    stored: frozenset[int] = field(default=frozenset(), compare=False, repr=False)

    def add(self, lin: Lin, name: str = "?column?") -> None:
        if self.tail is not None:
            self.tail = self.tail | lin
        else:
            self.columns.append(lin)
            self.names.append(name)

    def at(self, i: int) -> Lin:
        if i < len(self.columns):
            return self.columns[i]
        return self.tail if self.tail is not None else UNKNOWN_LIN

    def union(self) -> Lin:
        out = self.tail or CLEAN
        for lin in self.columns:
            out = out | lin
        return out

    def merged(self, other: Output) -> Output:
        """Positional union (set operations, statements sharing a description)."""
        n = min(len(self.columns), len(other.columns))
        out = Output(
            [a | b for a, b in zip(self.columns[:n], other.columns[:n], strict=True)],
            list(self.names[:n]),
            chosen=self.chosen | other.chosen,
            asked=self.asked | other.asked,
            asked_levels=self.asked_levels | other.asked_levels,
            ordered=self.ordered | other.ordered,
            writes=self.writes | other.writes,
        )
        if (
            self.tail is not None
            or other.tail is not None
            or len(self.columns) != len(other.columns)
        ):
            rest = (self.tail or CLEAN) | (other.tail or CLEAN)
            for lin in self.columns[n:] + other.columns[n:]:
                rest = rest | lin
            out.tail = rest
        return out


@dataclass
class StatementLineage:
    """One statement of a query string: what it is and what its rows carry."""

    kind: str  # parse-tree node name: SelectStmt, InsertStmt, CopyStmt, ...
    output: Output | None  # None: the statement returns no rows
    copy_out: bool = False  # COPY ... TO STDOUT: ``output`` describes its columns


@dataclass
class Analysis:
    """Everything the walk learned about one query string."""

    statements: list[StatementLineage] = field(default_factory=list)
    unknown_reasons: list[str] = field(default_factory=list)
    token_sites: list[TokenSite] = field(default_factory=list)
    #: bind parameter number -> why a token there must not be resolved ("" = it may)
    param_sites: dict[int, str] = field(default_factory=dict)
    #: PII that the statement stores where the catalog will not find it again
    pii_writes: list[str] = field(default_factory=list)
    #: bind parameters whose values flow into such places
    param_writes: set[int] = field(default_factory=set)
    #: parameters whose values are stored in a PII column (Ctx.stores)
    param_stores: set[int] = field(default_factory=set)
    #: parameters compared by containment (``@>``, ``<@``): a token there is resolved
    #: only inside an array or a JSON value, whose elements are compared whole
    param_contained: set[int] = field(default_factory=set)
    #: parameters compared with or written into what is not visibly an array or JSON
    #: (``Ctx.container``): a value of a type the Parse leaves to the server, in array
    #: syntax, would be read as that other type
    param_loose: set[int] = field(default_factory=set)
    token_writes: list[str] = field(default_factory=list)
    #: relation names the snapshot did not know (the schema may be stale)
    unknown_relations: set[str] = field(default_factory=set)
    parse_error: str = ""
    #: cursors and prepared statements this query declares, for the session to remember
    declares: dict[str, Output] = field(default_factory=dict)
    prepares: dict[str, Output] = field(default_factory=dict)
    deallocates: set[str] = field(default_factory=set)
    #: cursors this query runs (FETCH, MOVE) and SQL prepared statements it executes
    #: (EXECUTE), by name: their queries run now, and what the session declared them
    #: over may come back in the server's errors and notices
    runs_cursors: set[str] = field(default_factory=set)
    runs_prepared: set[str] = field(default_factory=set)
    #: cursors it declares WITH HOLD: their query runs when the transaction commits
    hold_cursors: set[str] = field(default_factory=set)
    #: cursors a write names in ``WHERE CURRENT OF``: what it writes depends on what
    #: the session declared them over, so the analysis is not remembered for the text
    current_of: set[str] = field(default_factory=set)
    #: relations written whose own rules or triggers run code the walk does not see:
    #: what that code reads may come back in its notices and errors
    hidden_code: list[str] = field(default_factory=list)
    #: relations read or written whose row-level security policies run: code the walk
    #: does not see, whose errors may say what it read
    policies_met: list[str] = field(default_factory=list)
    #: relations read whose reading runs code of the database's own: a view whose
    #: definition calls a user function, row-level security policies that do
    code_read: list[str] = field(default_factory=list)
    #: an INSERT, UPDATE or MERGE of the text has a RETURNING list: the server names
    #: the written table's columns as the origins of values the statement made
    #: (``SET email = substr(email, 1, 1) RETURNING email``), so no origin in it is a
    #: stored value (see ``StatementPlan.rows``)
    returns_written: bool = False
    #: the walk read a literal's value as more than a constant: ``ORDER BY 2``, ``GROUP
    #: BY 1`` name an output by position, so texts that differ in that literal differ
    #: in lineage and may not share one analysis (``dbgate.pii.plan_cache``)
    reads_literals: bool = False

    def unseen_code(self) -> str:
        """What of the database's own code the text runs (a trigger, a rule, a user
        function, a DO block, a view or policy that calls one), or "" when none.

        Such code may keep the text it runs under: ``current_query()`` is the whole
        text of the Query message, every statement of it, so an audit trigger's
        ``INSERT INTO log VALUES (current_query())``, fired by ``INSERT INTO audited
        …`` beside ``SELECT … WHERE email = 'tok_…'``, stored the raw e-mail where a
        clean column reads it. A Bind value is not in that text (``$1`` is).
        """
        if self.hidden_code:
            return self.hidden_code[0]
        if self.code_read:
            return self.code_read[0]
        for why in self.unknown_reasons:
            if why.endswith(UNSEEN_CODE[0]):
                return why[: -len(UNSEEN_CODE[0])].rstrip()  # "f()"
            if why.endswith(UNSEEN_CODE):
                return why
        return ""


#: The reasons the walk gives for code of the database's own that a text runs (a user
#: function, an operator or a cast over one, a DO block, a procedure)
UNSEEN_CODE = (
    " is not a PostgreSQL built-in function",
    "may be the database's own code",
    "a DO block runs code dbgate does not read",
    "CALL returns what a procedure chose to return",
)


class ColumnSource(Protocol):
    """What the walk needs from the catalog applied to a schema (dbgate.pii.coverage)."""

    snapshot: SchemaSnapshot
    #: views whose definition reads relations with row-level security policies: those
    #: relations, by the view's oid
    policed_views: dict[int, list[str]]

    def relation_lins(self, rel: Relation) -> list[Lin]: ...


class SessionState(Protocol):
    """Cursors and SQL-level prepared statements a session declared earlier."""

    def cursor(self, name: str) -> Output | None: ...

    def prepared(self, name: str) -> Output | None: ...
