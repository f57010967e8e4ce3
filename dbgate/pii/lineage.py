"""Column lineage: which output columns of a statement carry values of PII columns.

The walk runs over PostgreSQL's own parse tree (pglast's ``parse_sql_json``, i.e.
libpg_query), not over a re-implementation of the grammar: whatever the server
accepts, the walker sees exactly as the server will, so no dialect gap can hide a
column. It follows *values*, not control: a column in a select-list expression, a
function argument, a CASE branch, a scalar sub-select's output, an aggregate or a
window function's argument flows into the result; a column in WHERE, JOIN ... ON,
GROUP BY, ORDER BY, a window's PARTITION BY or an aggregate's FILTER only decides
*which* rows appear, which is what an agent is allowed to do. ``count(...)`` carries
no value. Except when the choice *is* a value: a predicate that relates a PII-derived
value with columns of another row source (``g = ascii(substr(full_name, 1, 1))``, ``g
IN (SELECT ... full_name ...)``) makes the rows of those columns spell the PII, so
every output of their query level is derived from it (``_Walker.choose``).
Everything the walker cannot follow — a user-defined function, a relation
not in the schema snapshot, a cursor it did not see declared, a node type it does not
know — makes the value *unknown*, which callers treat as PII (fail closed).

Tokens the agent sends back (``'tok_email_…'``) are resolved to real values before
the statement runs, so the walker also notes where each token literal and each bind
parameter appears: in a filter or an output (fine: outputs are tokenized again), as a
value written into a PII column (fine), or anywhere it could be stored or echoed raw —
a non-PII column, a setting, a user function, a view definition, EXPLAIN (refused).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from pglast import parser as _pg

from dbgate.pii.lin import CLEAN, UNKNOWN_LIN, Lin
from dbgate.pii.schema import Relation, SchemaSnapshot
from dbgate.pii.tokens import TOKEN_RE

__all__ = [
    "Analysis",
    "ColumnSource",
    "Output",
    "SessionState",
    "StatementLineage",
    "TokenSite",
    "analyze",
    "filters_matter",
    "parse",
]

Node = dict[str, Any]
_loads = orjson.loads

#: Results that never carry their arguments' values.
VALUE_FREE_FUNCTIONS = frozenset(
    {"count", "grouping", "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile"}
)
#: Built-in functions that read data by name, or files, or other sessions' text: their
#: result's provenance cannot be followed.
DATA_READERS = frozenset(
    {
        "query_to_xml",
        "query_to_xml_and_xmlschema",
        "table_to_xml",
        "table_to_xml_and_xmlschema",
        "cursor_to_xml",
        "schema_to_xml",
        "schema_to_xml_and_xmlschema",
        "database_to_xml",
        "database_to_xml_and_xmlschema",
        "ts_stat",
        "pg_read_file",
        "pg_read_binary_file",
        "lo_get",
        "loread",
        "pg_stat_get_activity",
        "pg_stat_get_backend_activity",
        "pg_logical_slot_get_changes",
        "pg_logical_slot_peek_changes",
        "pg_logical_slot_get_binary_changes",
        "pg_logical_slot_peek_binary_changes",
        # the text of this session's statements, cursors and prepared statements: it
        # holds the raw values of the tokens dbgate resolved in the SQL it forwarded
        "current_query",
        "pg_cursor",
        "pg_prepared_statement",
        "pg_get_backend_memory_contexts",
    }
)
#: Ordered-set aggregates whose result is *not* drawn from the WITHIN GROUP input
#: (hypothetical-set aggregates return a rank or a fraction). Every other aggregate
#: called WITHIN GROUP (mode, percentile_disc, percentile_cont, user-defined ones)
#: takes its value from the ORDER BY expressions: they flow like arguments.
HYPOTHETICAL_SET_AGGREGATES = frozenset({"rank", "dense_rank", "percent_rank", "cume_dist"})
#: Built-in functions whose arguments are stored or sent somewhere a later read does
#: not trace back to a PII column: a resolved token must not reach them.
SIDE_EFFECTS = frozenset(
    {
        "set_config",
        "pg_notify",
        "lo_from_bytea",
        "lo_put",
        "lowrite",
        "lo_import",
        "lo_export",
        "pg_logical_emit_message",
        "pg_file_write",
        "dblink",
        "dblink_exec",
        "pg_advisory_lock",
    }
)
#: Width of built-in set-returning functions when no schema snapshot says.
_BUILTIN_SRF_WIDTH = {
    "json_each": 2,
    "jsonb_each": 2,
    "json_each_text": 2,
    "jsonb_each_text": 2,
    "pg_options_to_table": 2,
}
#: Polymorphic pseudo-types (anyelement, anynonarray, anycompatible,
#: anycompatiblenonarray): a set-returning function declared to return one of them
#: has as many columns as its actual argument type, which may be composite.
_POLYMORPHIC_TYPES = frozenset({2283, 2776, 5077, 5079})
#: Built-in set-returning functions returning such a type, for snapshots without functions.
_POLYMORPHIC_SRFS = frozenset(
    {
        "unnest",
        "json_populate_record",
        "json_populate_recordset",
        "jsonb_populate_record",
        "jsonb_populate_recordset",
    }
)
#: Base types whose values are scalars (an array of them unnests to one column).
_SCALAR_TYPE_NAMES = frozenset(
    [
        "bool",
        "boolean",
        "bytea",
        "char",
        "bpchar",
        "varchar",
        "text",
        "name",
        "int2",
        "int4",
        "int8",
        "int",
        "smallint",
        "integer",
        "bigint",
        "numeric",
        "decimal",
        "float4",
        "float8",
        "real",
        "date",
        "time",
        "timetz",
        "timestamp",
        "timestamptz",
        "interval",
        "uuid",
        "json",
        "jsonb",
        "xml",
        "inet",
        "cidr",
        "macaddr",
        "macaddr8",
        "money",
        "oid",
        "bit",
        "varbit",
    ]
)


@dataclass(frozen=True, slots=True)
class TokenSite:
    """A string literal holding at least one token, and whether it may be resolved."""

    location: int  # byte offset of the literal in the statement text
    allowed: bool
    why: str = ""
    text: str = ""  # the literal's value as the server reads it


class _Ctx:
    """Where a value being walked ends up (decides whether a token may be resolved)."""

    __slots__ = ("allowed", "target", "why")

    def __init__(self, allowed: bool, why: str = "", target: str | None = None) -> None:
        self.allowed = allowed
        self.why = why
        self.target = target


OUTPUT = _Ctx(True)
FILTER = _Ctx(True)
WRITE_PII = _Ctx(True)


def _refused(why: str) -> _Ctx:
    return _Ctx(False, why)


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
    token_writes: list[str] = field(default_factory=list)
    #: relation names the snapshot did not know (the schema may be stale)
    unknown_relations: set[str] = field(default_factory=set)
    parse_error: str = ""
    #: cursors and prepared statements this query declares, for the session to remember
    declares: dict[str, Output] = field(default_factory=dict)
    prepares: dict[str, Output] = field(default_factory=dict)
    deallocates: set[str] = field(default_factory=set)


class ColumnSource(Protocol):
    """What the walk needs from the catalog applied to a schema (dbgate.pii.coverage)."""

    snapshot: SchemaSnapshot

    def relation_lins(self, rel: Relation) -> list[Lin]: ...


class SessionState(Protocol):
    """Cursors and SQL-level prepared statements a session declared earlier."""

    def cursor(self, name: str) -> Output | None: ...

    def prepared(self, name: str) -> Output | None: ...


class _Item:
    """One FROM-clause entry as name resolution sees it."""

    __slots__ = ("_index", "alias", "chosen", "cols", "names", "open", "rest", "schema", "table")

    def __init__(
        self,
        alias: str | None,
        names: list[str],
        cols: list[Lin],
        open: bool = False,
        rest: Lin = CLEAN,
        schema: str | None = None,
        chosen: Lin = CLEAN,
        table: bool = False,
    ) -> None:
        self.alias = alias
        self.names = names
        self.cols = cols
        self.open = open
        self.rest = rest
        self.schema = schema
        self.chosen = chosen  # its source's rows were chosen by PII (Output.chosen)
        self.table = table  # one row of a table: its columns are one stored row's
        self._index: dict[str, Lin] | None = None

    def get(self, name: str) -> Lin | None:
        index = self._index
        if index is None:
            # built on the first lookup: an item's names are final once it is in scope
            index = self._index = {}
            for n, lin in zip(self.names, self.cols, strict=True):
                seen = index.get(n)
                index[n] = lin if seen is None else seen | lin
        found = index.get(name)
        if found is None and self.open:
            return self.rest
        return found

    def whole(self) -> Lin:
        out = self.rest if self.open else CLEAN
        for lin in self.cols:
            out = out | lin
        return out


class _Scope:
    __slots__ = ("chosen", "ctes", "items", "parent", "stars")

    def __init__(self, parent: _Scope | None) -> None:
        self.parent = parent
        self.items: list[_Item] = []  # everything resolvable by name
        self.stars: list[_Item] = []  # top-level FROM entries, for SELECT *
        self.ctes: dict[str, tuple[Output, list[str]]] = {}
        #: PII that chose this level's rows (``_Walker.choose``): every output has it
        self.chosen = CLEAN

    def level_chosen(self) -> Lin:
        """What PII chose in this level's rows: here, or in a FROM entry's source."""
        out = self.chosen
        for item in self.items:
            out = out | item.chosen
        return out

    def mark(self, out: Output) -> Output:
        """``out`` with this level's chosen PII added to every column."""
        chosen = self.level_chosen()
        if chosen is CLEAN:
            return out
        out.columns = [lin | chosen for lin in out.columns]
        if out.tail is not None:
            out.tail = out.tail | chosen
        out.chosen = out.chosen | chosen
        return out

    def cte(self, name: str) -> tuple[Output, list[str]] | None:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.ctes:
                return scope.ctes[name]
            scope = scope.parent
        return None


#: Where an opaque function given no column reads from (``_Walker.met_opaque``).
_OPAQUE = _Item(None, [], [], open=True, rest=UNKNOWN_LIN)


def _strs(nodes: Iterable[Node] | None) -> list[str]:
    return [_str(n) for n in nodes or ()]


def _str(node: Node) -> str:
    s = node.get("String")
    return s.get("sval", "") if s is not None else "*"


def _one(node: Node) -> tuple[str, Any]:
    ((kind, body),) = node.items()
    return kind, body


class _Walker:
    def __init__(
        self, source: ColumnSource, session: SessionState | None, result: Analysis
    ) -> None:
        self.source = source
        self.snap = source.snapshot
        self.session = session
        self.r = result
        self.depth = 0
        self.filters_matter = True
        #: column references met while walking one predicate (``choose``): the level
        #: each resolved at, the FROM entry, its lineage; None outside predicates
        self.refs: list[tuple[_Scope, _Item, Lin]] | None = None

    # ------------------------------------------------------------------ bookkeeping
    def unknown(self, why: str) -> Lin:
        if why not in self.r.unknown_reasons:
            self.r.unknown_reasons.append(why)
        return UNKNOWN_LIN

    # ------------------------------------------------------------------ statements
    def statement(self, node: Node) -> StatementLineage:
        kind, body = _one(node)
        handler = getattr(self, "stmt_" + kind, None)
        if handler is None:
            self.walk_side(body, f"a {kind} statement")
            return StatementLineage(kind, None)
        out = handler(body)
        return out if isinstance(out, StatementLineage) else StatementLineage(kind, out)

    def query(self, node: Node, scope: _Scope | None, ctx: _Ctx) -> Output:
        """Output of a query node (SELECT, or DML with RETURNING inside a CTE)."""
        kind, body = _one(node)
        if kind == "SelectStmt":
            return self.select(body, scope, ctx)
        if kind in ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
            return getattr(self, "dml_" + kind)(body, scope) or Output()
        self.walk_side(body, f"a {kind} inside a query")
        out = Output(tail=self.unknown(f"cannot follow a {kind} inside a query"))
        return out

    def stmt_SelectStmt(self, body: Node) -> StatementLineage:
        if body.get("intoClause"):
            out = self.select(body, None, OUTPUT)
            self.note_copy(out, "SELECT INTO copies PII into a new table")
            return StatementLineage("SelectStmt", None)
        return StatementLineage("SelectStmt", self.select(body, None, OUTPUT))

    def stmt_InsertStmt(self, body: Node) -> Output | None:
        return self.dml_InsertStmt(body, None)

    def stmt_UpdateStmt(self, body: Node) -> Output | None:
        return self.dml_UpdateStmt(body, None)

    def stmt_DeleteStmt(self, body: Node) -> Output | None:
        return self.dml_DeleteStmt(body, None)

    def stmt_MergeStmt(self, body: Node) -> Output | None:
        return self.dml_MergeStmt(body, None)

    def stmt_ExplainStmt(self, body: Node) -> Output:
        # The plan text echoes literals (a resolved token would come back raw), but
        # no data values: the output is clean, tokens inside are refused.
        self.walk_side(body.get("query"), "EXPLAIN (its plan shows literal values)")
        return Output([CLEAN], ["QUERY PLAN"])

    def stmt_VariableShowStmt(self, body: Node) -> Output:
        return Output([CLEAN], [body.get("name", "")])

    def stmt_DeclareCursorStmt(self, body: Node) -> None:
        out = self.query(body["query"], None, OUTPUT)
        self.r.declares[body.get("portalname", "")] = out

    def stmt_FetchStmt(self, body: Node) -> Output | None:
        if body.get("ismove"):
            return None
        name = body.get("portalname", "")
        out = self.r.declares.get(name)  # declared earlier in the same query string
        if out is None and self.session is not None:
            out = self.session.cursor(name)
        if out is None:
            return Output(
                tail=self.unknown(
                    f"FETCH from cursor {name!r} declared where dbgate did not see it"
                )
            )
        return out

    def stmt_PrepareStmt(self, body: Node) -> None:
        out = self.query(
            body["query"], None, _refused("PREPARE (the value would outlive the statement)")
        )
        self.r.prepares[body.get("name", "")] = out

    def stmt_ExecuteStmt(self, body: Node) -> Output:
        self.walk_side(body.get("params"), "EXECUTE parameters")
        name = body.get("name", "")
        out = self.r.prepares.get(name)
        if out is None and self.session is not None:
            out = self.session.prepared(name)
        if out is None:
            return Output(
                tail=self.unknown(f"EXECUTE of {name!r}, prepared where dbgate did not see it")
            )
        return out

    def stmt_DeallocateStmt(self, body: Node) -> None:
        self.r.deallocates.add(body.get("name") or "*")

    def stmt_CallStmt(self, body: Node) -> Output:
        self.walk_side(body, "CALL (a procedure may store its arguments)")
        return Output(tail=self.unknown("CALL returns what a procedure chose to return"))

    def stmt_CopyStmt(self, body: Node) -> StatementLineage:
        if body.get("is_from"):
            self.walk_side(body, "COPY FROM")
            return StatementLineage("CopyStmt", None)
        if body.get("query") is not None:
            out = self.query(body["query"], None, OUTPUT)
        else:
            item = self.range_var(body["relation"], _Scope(None))
            attlist = _strs(body.get("attlist"))
            out = Output()
            if attlist:
                for name in attlist:
                    out.add(
                        item.get(name) or self.unknown(f"COPY of unknown column {name!r}"), name
                    )
            else:
                for name, lin in zip(item.names, item.cols, strict=True):
                    out.add(lin, name)
                if item.open:
                    out.tail = item.rest
        if body.get("filename") is not None or body.get("is_program"):
            self.note_copy(out, "COPY TO a file or program writes PII outside the database")
            return StatementLineage("CopyStmt", None)
        return StatementLineage("CopyStmt", out, copy_out=True)

    def stmt_CreateTableAsStmt(self, body: Node) -> None:
        ctx = _refused("CREATE ... AS (the value would be stored)")
        out = self.query(body["query"], None, ctx)
        if body.get("objtype") != "OBJECT_MATVIEW":  # a matview is covered by its definition
            self.note_copy(out, "CREATE TABLE AS copies PII into a new table")

    def stmt_ViewStmt(self, body: Node) -> None:
        self.query(body["query"], None, _refused("a view definition (the value would be stored)"))

    def stmt_RuleStmt(self, body: Node) -> None:
        self.walk_side(body, "a rule definition")

    # ------------------------------------------------------------------ SELECT
    def select(self, body: Node, outer: _Scope | None, ctx: _Ctx) -> Output:
        self.depth += 1
        try:
            if self.depth > 200:
                return Output(tail=self.unknown("statement nested too deeply"))
            return self._select(body, outer, ctx)
        finally:
            self.depth -= 1

    def _select(self, body: Node, outer: _Scope | None, ctx: _Ctx) -> Output:
        scope = _Scope(outer)
        if body.get("withClause"):
            self.with_clause(body["withClause"], scope)
        op = body.get("op", "SETOP_NONE")
        if op != "SETOP_NONE":
            left = self.select(body["larg"], scope, ctx)
            right = self.select(body["rarg"], scope, ctx)
            self.control(body, scope)
            return scope.mark(left.merged(right))
        if "valuesLists" in body:
            out: Output | None = None
            for row in body["valuesLists"]:
                items = row["List"]["items"]
                row_out = Output(
                    [self.expr(e, scope, ctx) for e in items],
                    [f"column{i + 1}" for i in range(len(items))],
                )
                out = row_out if out is None else out.merged(row_out)
            self.control(body, scope)
            return scope.mark(out or Output())
        for item in body.get("fromClause") or ():
            scope.stars.append(self.from_item(item, scope))
        out = Output()
        for target in body.get("targetList") or ():
            rt = target["ResTarget"]
            self.target(rt.get("val"), rt.get("name"), scope, ctx, out)
        self.control(body, scope)
        # last: a correlated predicate anywhere below may have chosen this level's rows
        return scope.mark(out)

    def control(self, body: Node, scope: _Scope) -> None:
        """Clauses that choose rows but carry no values: walk them for tokens.

        Their lineage is discarded; what matters there is a token literal, a bind
        parameter or a call that stores its argument, and, in WHERE and HAVING, a
        predicate that turns the choice into a value (``choose``, always walked). When
        the text has none of the former (the common case, checked once per statement),
        the other clauses are skipped.
        """
        self.choose(body.get("whereClause"), scope)
        self.choose(body.get("havingClause"), scope)
        if not self.filters_matter:
            return
        saved, self.refs = self.refs, None  # ORDER BY, GROUP BY ... relate no values
        try:
            self.clauses(body, scope)
        finally:
            self.refs = saved

    def clauses(self, body: Node, scope: _Scope) -> None:
        for key in (
            "groupClause",
            "sortClause",
            "distinctClause",
            "windowClause",
            "limitCount",
            "limitOffset",
        ):
            if body.get(key):
                self.expr(body[key], scope, FILTER)

    def choose(self, node: Node | None, scope: _Scope) -> None:
        """Walk a clause that chooses rows (WHERE, HAVING, JOIN ... ON, FILTER).

        Choosing rows is allowed, but a choice can be made to spell a value: ``SELECT
        g FROM generate_series(1, 20000) g WHERE g IN (SELECT n * 256 +
        ascii(substr(full_name, n, 1)) ...)`` returns numbers whose low byte is the
        name, and any column of the chosen rows (an ordinality, a lateral copy of
        ``g``, a lookup table's label, ``count(*)`` of ``g < ascii(...)``) tells which
        rows they were. So each predicate (a leaf under AND / OR / NOT) is walked like
        a value: when PII (or something unknown) flows into it, every column it
        compares that is not PII marks the query level that column comes from, and
        all outputs of that level get the predicate's PII (``_Scope.mark``). A whole
        level rather than the columns, because columns already copied elsewhere (a
        lateral sub-select, a correlated sub-select) were walked before the WHERE.

        Nothing new is marked when the predicate compares PII only with constants,
        parameters or other PII columns (``email = $1``, ``email LIKE 'a%'``,
        ``c.email = o.contact_email``), nor when every column it references is of one
        table row (``birth_date < created_at``, ``get_email(id) IS NULL``): a row
        chosen by its own values answers one bit, as with a constant. That holds for a
        table's rows only (a sub-select's row may pair a customer with every number),
        and not when a token or an opaque function given no column
        (``met_opaque``) brings a value from elsewhere.
        """
        if node is None:
            return
        if "BoolExpr" in node:
            for arg in node["BoolExpr"].get("args") or ():
                self.choose(arg, scope)
            return
        saved, self.refs = self.refs, []
        refs = self.refs
        try:
            lin = self.expr(node, scope, FILTER)
        finally:
            self.refs = saved
        if not (lin.pii or lin.unknown):
            return
        row = refs[0][1] if refs else None
        own_row = row is not None and row.table and all(item is row for _, item, _ in refs)
        if own_row and not lin.token:
            return  # one table row chosen by its own values
        chosen = Lin(lin.entities, lin.unknown)
        for level, _item, ref in refs:
            if not (ref.pii or ref.unknown):
                level.chosen = level.chosen | chosen

    def target(
        self, val: Node | None, name: str | None, scope: _Scope, ctx: _Ctx, out: Output
    ) -> None:
        if val is not None and "ColumnRef" in val:
            fields = val["ColumnRef"]["fields"]
            if "A_Star" in fields[-1]:
                self.star(_strs(fields[:-1]), scope, out)
                return
        lin = self.expr(val, scope, ctx)
        out.add(lin, name or self.name_of(val))

    @staticmethod
    def name_of(val: Node | None) -> str:
        if not val:
            return "?column?"
        kind, body = _one(val)
        if kind == "ColumnRef":
            return _strs(body["fields"])[-1]
        if kind == "FuncCall":
            return _strs(body["funcname"])[-1]
        if kind == "TypeCast":
            return _Walker.name_of(body.get("arg"))
        return "?column?"

    def star(self, qualifier: list[str], scope: _Scope, out: Output) -> None:
        if not qualifier:
            if not scope.stars:
                out.tail = (out.tail or CLEAN) | self.unknown("SELECT * without FROM")
            for item in scope.stars:
                self.expand(item, out)
            return
        item = self.find_item(qualifier, scope)
        if item is None:
            out.tail = (out.tail or CLEAN) | self.unknown(
                f"{'.'.join(qualifier)}.* of an unknown relation"
            )
            return
        self.expand(item, out)

    @staticmethod
    def expand(item: _Item, out: Output) -> None:
        for name, lin in zip(item.names, item.cols, strict=True):
            out.add(lin, name)
        if item.open:
            out.tail = (out.tail or CLEAN) | item.rest

    def with_clause(self, wc: Node, scope: _Scope) -> None:
        recursive = bool(wc.get("recursive"))
        for c in wc.get("ctes") or ():
            cte = c["CommonTableExpr"]
            name = cte["ctename"]
            colnames = _strs(cte.get("aliascolnames"))
            query = cte["ctequery"]
            kind, body = _one(query)
            if recursive and kind == "SelectStmt" and body.get("op", "SETOP_NONE") != "SETOP_NONE":
                seed = self.select(body["larg"], scope, OUTPUT)
                scope.ctes[name] = (seed, colnames)
                current = seed
                for _ in range(8):
                    nxt = current.merged(self.select(body["rarg"], scope, OUTPUT))
                    if nxt.columns == current.columns and nxt.tail == current.tail:
                        break
                    current = nxt
                    scope.ctes[name] = (current, colnames)
                else:
                    current = Output(tail=self.unknown(f"recursive CTE {name!r} did not settle"))
                scope.ctes[name] = (current, colnames)
            else:
                scope.ctes[name] = (self.query(query, scope, OUTPUT), colnames)

    # ------------------------------------------------------------------ FROM
    def from_item(self, node: Node, scope: _Scope) -> _Item:
        kind, body = _one(node)
        if kind == "RangeVar":
            return self.range_var(body, scope)
        if kind == "RangeSubselect":
            out = self.query(body["subquery"], scope, OUTPUT)
            return self.item_from_output(out, body.get("alias"), scope)
        if kind == "JoinExpr":
            return self.join(body, scope)
        if kind == "RangeFunction":
            return self.range_function(body, scope)
        if kind == "RangeTableSample":
            self.expr(body.get("args"), scope, FILTER)
            return self.from_item(body["relation"], scope)
        if kind in ("RangeTableFunc", "JsonTable"):
            source = self.expr(body.get("docexpr") or body.get("context_item"), scope, OUTPUT)
            alias = (body.get("alias") or {}).get("aliasname")
            item = _Item(alias, [], [], open=True, rest=source)
            scope.items.append(item)
            return item
        self.walk_side(body, f"a {kind} in FROM")
        item = _Item(None, [], [], open=True, rest=self.unknown(f"cannot follow a {kind} in FROM"))
        scope.items.append(item)
        return item

    def item_from_output(self, out: Output, alias: Node | None, scope: _Scope) -> _Item:
        names = list(out.names)
        if alias:
            renamed = _strs(alias.get("colnames"))
            names[: len(renamed)] = renamed[: len(names)]
        item = _Item(
            (alias or {}).get("aliasname"),
            names,
            list(out.columns),
            open=out.tail is not None,
            rest=out.tail or CLEAN,
            chosen=out.chosen,
        )
        scope.items.append(item)
        return item

    def range_var(self, body: Node, scope: _Scope) -> _Item:
        name = body.get("relname", "")
        schema = body.get("schemaname")
        alias = body.get("alias")
        if schema is None:
            found = scope.cte(name)
            if found is not None:
                out, colnames = found
                if colnames:
                    out = Output(
                        list(out.columns),
                        colnames[: len(out.columns)] + out.names[len(colnames) :],
                        out.tail,
                        out.chosen,
                    )
                return self.item_from_output(out, alias or {"aliasname": name}, scope)
        rels = self.snap.lookup(name, schema)
        shown = f"{schema}.{name}" if schema else name
        if not rels:
            self.r.unknown_relations.add(shown)
            item = _Item(
                (alias or {}).get("aliasname", name),
                [],
                [],
                open=True,
                rest=self.unknown(f"relation {shown} is not in dbgate's schema snapshot"),
                schema=schema,
            )
            scope.items.append(item)
            return item
        primary = rels[0]
        lins = self.source.relation_lins(primary)
        names = [c.name for c in primary.columns]
        for other in rels[1:]:  # same name in other schemas: the session's search_path decides
            other_lins = dict(
                zip([c.name for c in other.columns], self.source.relation_lins(other), strict=True)
            )
            lins = [lin | other_lins.get(n, CLEAN) for n, lin in zip(names, lins, strict=True)]
        if alias and alias.get("colnames"):
            renamed = _strs(alias["colnames"])
            names[: len(renamed)] = renamed[: len(names)]
        item = _Item(
            (alias or {}).get("aliasname", name),
            names,
            lins,
            schema=schema or primary.schema,
            table=len(rels) == 1 and primary.kind in ("r", "p"),
        )
        scope.items.append(item)
        return item

    def join(self, body: Node, scope: _Scope) -> _Item:
        left = self.from_item(body["larg"], scope)
        right = self.from_item(body["rarg"], scope)
        if body.get("quals"):
            self.choose(body["quals"], scope)
        using = _strs(body.get("usingClause"))
        if body.get("isNatural"):
            using = [n for n in left.names if n in right.names]
        names: list[str] = []
        cols: list[Lin] = []
        for n in using:
            names.append(n)
            cols.append((left.get(n) or CLEAN) | (right.get(n) or CLEAN))
        for side in (left, right):
            for n, lin in zip(side.names, side.cols, strict=True):
                if n not in using:
                    names.append(n)
                    cols.append(lin)
        open_ = left.open or right.open
        rest = (left.rest if left.open else CLEAN) | (right.rest if right.open else CLEAN)
        if open_ and using:
            # the merged columns of an open side sit in an unknown place: keep order honest
            names, cols = [], []
            rest = rest | left.whole() | right.whole()
        alias = (body.get("alias") or {}).get("aliasname")
        item = _Item(alias, names, cols, open=open_, rest=rest, chosen=left.chosen | right.chosen)
        if alias or (body.get("join_using_alias")):
            if body.get("join_using_alias"):
                ua = body["join_using_alias"].get("aliasname")
                scope.items.append(_Item(ua, using, cols[: len(using)]))
            if alias:
                scope.items.append(item)
        return item

    def range_function(self, body: Node, scope: _Scope) -> _Item:
        """A function (or ROWS FROM list) in FROM, WITH ORDINALITY adding a last column.

        Columns are laid out function after function, so once one function's width is
        not known (``unnest`` of an array that may hold composites, a polymorphic or
        opaque function), no later position is known either: that function, every
        later one and the ordinality column all go to the item's ``rest`` (fail closed).
        """
        names: list[str] = []
        cols: list[Lin] = []
        open_ = False
        rest = CLEAN
        alias = body.get("alias") or {}
        alias_name = alias.get("aliasname")
        functions = body.get("functions") or ()

        def place(lin: Lin, width: int | None, fnames: list[str]) -> None:
            nonlocal open_, rest
            if open_ or width is None:
                open_ = True
                rest = rest | lin
                return
            names.extend(fnames)
            cols.extend([lin] * width)

        for entry in functions:
            items = entry["List"]["items"]
            call = items[0]
            coldef = items[1] if len(items) > 1 and items[1] else None
            coldefs = coldef if isinstance(coldef, list) else body.get("coldeflist")
            kind, fbody = _one(call)
            if kind != "FuncCall":
                lin = self.expr(call, scope, OUTPUT)
                # CAST(... AS composite), COALESCE of rows ...: one column only for the
                # SQL value functions (current_date, current_user ...)
                width = 1 if kind == "SQLValueFunction" else None
                place(lin, width, [alias_name or "?column?"])
                continue
            fname = _strs(fbody["funcname"])[-1]
            args = fbody.get("args") or ()
            if fname == "unnest" and not coldefs and len(args) > 1 and len(functions) == 1:
                # unnest(a, b, ...) is ROWS FROM (unnest(a), unnest(b), ...)
                for arg in args:
                    lin = self.expr(arg, scope, OUTPUT)
                    place(lin, 1 if self.scalar_array(arg) else None, ["unnest"])
                continue
            lin = self.expr(call, scope, OUTPUT)
            if fname == "unnest" and not coldefs and len(args) == 1:
                width, fnames = (1, []) if self.scalar_array(args[0]) else (None, [])
            else:
                width, fnames = self.function_width(fbody, coldefs)
            if width == 1 and not fnames:
                fnames = [alias_name if (alias_name and len(functions) == 1) else fname]
            place(lin, width, fnames or [fname] * (width or 0))
        if body.get("ordinality"):
            place(CLEAN, 1, ["ordinality"])
        if alias.get("colnames"):
            renamed = _strs(alias["colnames"])
            names[: len(renamed)] = renamed[: len(names)]
        item = _Item(
            alias_name or (names[0] if names else None), names, cols, open=open_, rest=rest
        )
        scope.items.append(item)
        return item

    def scalar_array(self, node: Node) -> bool:
        """Whether ``node`` is surely an array of scalars (unnest gives one column).

        ``ARRAY['a', 'b']`` of constants, or a cast to ``text[]``, ``int[]`` ... of a
        base type no relation or composite type of the snapshot shadows.
        """
        kind, body = _one(node)
        if kind == "A_ArrayExpr":
            elements = body.get("elements") or ()
            return bool(elements) and all(
                _one(e)[0] == "A_Const"
                or (_one(e)[0] in ("A_ArrayExpr", "TypeCast") and self.scalar_array(e))
                or (_one(e)[0] == "TypeCast" and self.scalar_type(e["TypeCast"]["typeName"]))
                for e in elements
            )
        if kind == "TypeCast":
            tn = body.get("typeName") or {}
            return bool(tn.get("arrayBounds")) and self.scalar_type(tn)
        return False

    def scalar_type(self, tn: Node) -> bool:
        parts = _strs(tn.get("names"))
        if not parts or tn.get("setof") or tn.get("pct_type"):
            return False
        name = parts[-1].lower()
        if len(parts) > 1 and parts[-2] != "pg_catalog":
            return False
        if name not in _SCALAR_TYPE_NAMES or self.snap.lookup(name):
            return False
        return all(
            t.kind in ("b", "e", "r", "m") for t in self.snap.types.values() if t.name == name
        )

    def function_width(
        self, fbody: Node, coldefs: list[Node] | None
    ) -> tuple[int | None, list[str]]:
        if coldefs:
            return len(coldefs), [c["ColumnDef"].get("colname", "") for c in coldefs]
        parts = _strs(fbody["funcname"])
        name, schema = parts[-1], (parts[-2] if len(parts) > 1 else None)
        funcs = self.snap.functions_named(name, schema)
        widths: set[int] = set()
        names: list[str] = []
        for f in funcs:
            if f.out_names is not None:
                widths.add(len(f.out_names))
                names = list(f.out_names)
            else:
                rel = self.snap.by_row_type.get(f.ret_type)
                if rel is not None:
                    widths.add(len(rel.columns))
                    names = [c.name for c in rel.columns]
                elif f.ret_type == 2249 or f.ret_type in _POLYMORPHIC_TYPES:
                    # record without a column definition list; anyelement (a composite
                    # argument makes it as wide as that type)
                    return None, []
                else:
                    widths.add(1)
        if not funcs:
            if name in _POLYMORPHIC_SRFS:
                return None, []
            if name in _BUILTIN_SRF_WIDTH:
                return _BUILTIN_SRF_WIDTH[name], ["key", "value"]
            return (1, []) if self.snap.assume_builtin_functions else (None, [])
        if len(widths) != 1:
            return None, []
        return widths.pop(), names

    def find_item(self, qualifier: list[str], scope: _Scope) -> _Item | None:
        found = self.lookup(qualifier, scope)
        return found[0] if found is not None else None

    def lookup(self, qualifier: list[str], scope: _Scope) -> tuple[_Item, _Scope] | None:
        """The FROM entry a qualifier names, and the query level it belongs to."""
        alias = qualifier[-1]
        schema = qualifier[-2] if len(qualifier) > 1 else None
        s: _Scope | None = scope
        while s is not None:
            for item in reversed(s.items):
                if item.alias == alias and (schema is None or item.schema in (None, schema)):
                    return item, s
            s = s.parent
        return None

    def met(self, level: _Scope, item: _Item, lin: Lin) -> Lin:
        """Note a column reference for the predicate being walked (``choose``)."""
        if self.refs is not None:
            self.refs.append((level, item, lin))
        return lin

    def met_opaque(self, level: _Scope, before: int) -> None:
        """An opaque function given no column (``query_to_xml('...')``, ``secret()``)
        reads data of its own: for ``choose`` it is a row source of its own, never the
        row being chosen. Given columns (``get_email(c.id)``), it is taken as theirs."""
        if self.refs is not None and len(self.refs) == before:
            self.refs.append((level, _OPAQUE, UNKNOWN_LIN))

    # ------------------------------------------------------------------ DML
    def target_relation(self, rv: Node, scope: _Scope) -> tuple[_Item, Relation | None]:
        item = self.range_var(rv, scope)
        rels = self.snap.lookup(rv.get("relname", ""), rv.get("schemaname"))
        return item, (rels[0] if rels else None)

    def returning(self, body: Node, scope: _Scope, item: _Item) -> Output | None:
        rc = body.get("returningClause") or {}
        exprs = rc.get("exprs") if isinstance(rc, dict) else None
        if exprs is None:
            exprs = body.get("returningList")
        if not exprs:
            return None
        for alias in ("old", "new"):
            scope.items.append(_Item(alias, item.names, item.cols, item.open, item.rest))
        out = Output()
        for target in exprs:
            rt = target["ResTarget"]
            self.target(rt.get("val"), rt.get("name"), scope, OUTPUT, out)
        return scope.mark(out)

    def column_ctx(self, item: _Item, rel_name: str, column: str) -> _Ctx:
        lin = item.get(column)
        if lin is not None and (lin.pii or lin.unknown):
            return WRITE_PII
        return _Ctx(
            False,
            f"column {rel_name}.{column} is not PII in the catalog",
            target=f"{rel_name}.{column}",
        )

    def check_write(self, lin: Lin, ctx: _Ctx) -> None:
        if ctx.allowed or ctx.target is None:
            return
        if lin.pii:
            what = f"writes PII ({', '.join(sorted(lin.entities))}) into {ctx.target}, which the catalog does not mark"
            if lin.token:
                self.r.token_writes.append(what)
            if what not in self.r.pii_writes:
                self.r.pii_writes.append(what)
        if lin.params:
            self.r.param_writes |= lin.params

    def dml_InsertStmt(self, body: Node, outer: _Scope | None) -> Output | None:
        scope = _Scope(outer)
        if body.get("withClause"):
            self.with_clause(body["withClause"], scope)
        item, _rel = self.target_relation(body["relation"], _Scope(None))
        rel_name = body["relation"].get("relname", "")
        cols = [c["ResTarget"]["name"] for c in body.get("cols") or ()] or list(item.names)
        ctxs = [self.column_ctx(item, rel_name, c) for c in cols]
        select = body.get("selectStmt")
        if select is not None:
            sbody = select["SelectStmt"]
            if "valuesLists" in sbody and sbody.get("op", "SETOP_NONE") == "SETOP_NONE":
                for row in sbody["valuesLists"]:
                    for i, e in enumerate(row["List"]["items"]):
                        ctx = (
                            ctxs[i] if i < len(ctxs) else _refused("a value beyond the column list")
                        )
                        self.check_write(self.expr(e, scope, ctx), ctx)
            else:
                out = self.select(sbody, scope, OUTPUT)
                for i, ctx in enumerate(ctxs):
                    self.check_write(out.at(i), ctx)
        occ = body.get("onConflictClause")
        target_scope = _Scope(scope)
        target_scope.items.append(item)
        if occ:
            target_scope.items.append(
                _Item("excluded", item.names, item.cols, item.open, item.rest)
            )
            self.assignments(occ.get("targetList"), target_scope, item, rel_name)
            if occ.get("whereClause"):
                self.choose(occ["whereClause"], target_scope)
        return self.returning(body, target_scope, item)

    def assignments(
        self, targets: list[Node] | None, scope: _Scope, item: _Item, rel_name: str
    ) -> None:
        for t in targets or ():
            rt = t["ResTarget"]
            val = rt.get("val")
            ctx = self.column_ctx(item, rel_name, rt.get("name", ""))
            if val is not None and "MultiAssignRef" in val:
                src = val["MultiAssignRef"]["source"]
                ctx = (
                    _Ctx(False, "a multi-column assignment", target=f"{rel_name}.{rt.get('name')}")
                    if not ctx.allowed
                    else ctx
                )
                self.check_write(self.expr(src, scope, ctx), ctx)
                continue
            self.check_write(self.expr(val, scope, ctx), ctx)

    def dml_UpdateStmt(self, body: Node, outer: _Scope | None) -> Output | None:
        scope = _Scope(outer)
        if body.get("withClause"):
            self.with_clause(body["withClause"], scope)
        item, _rel = self.target_relation(body["relation"], scope)
        for f in body.get("fromClause") or ():
            self.from_item(f, scope)
        self.assignments(body.get("targetList"), scope, item, body["relation"].get("relname", ""))
        self.choose(body.get("whereClause"), scope)
        return self.returning(body, scope, item)

    def dml_DeleteStmt(self, body: Node, outer: _Scope | None) -> Output | None:
        scope = _Scope(outer)
        if body.get("withClause"):
            self.with_clause(body["withClause"], scope)
        item, _rel = self.target_relation(body["relation"], scope)
        for f in body.get("usingClause") or ():
            self.from_item(f, scope)
        self.choose(body.get("whereClause"), scope)
        return self.returning(body, scope, item)

    def dml_MergeStmt(self, body: Node, outer: _Scope | None) -> Output | None:
        scope = _Scope(outer)
        if body.get("withClause"):
            self.with_clause(body["withClause"], scope)
        item, _rel = self.target_relation(body["relation"], scope)
        self.from_item(body["sourceRelation"], scope)
        self.choose(body.get("joinCondition"), scope)
        rel_name = body["relation"].get("relname", "")
        for w in body.get("mergeWhenClauses") or ():
            clause = w["MergeWhenClause"]
            self.choose(clause.get("condition"), scope)
            targets = clause.get("targetList") or ()
            values = clause.get("values")
            if values is not None:
                names = [t["ResTarget"]["name"] for t in targets] or list(item.names)
                for i, v in enumerate(values):
                    ctx = (
                        self.column_ctx(item, rel_name, names[i])
                        if i < len(names)
                        else _refused("MERGE")
                    )
                    self.check_write(self.expr(v, scope, ctx), ctx)
            else:
                self.assignments(list(targets), scope, item, rel_name)
        return self.returning(body, scope, item)

    def note_copy(self, out: Output, what: str) -> None:
        lin = out.union()
        if lin.pii or lin.unknown:
            self.r.pii_writes.append(what)
            if lin.token:
                self.r.token_writes.append(what)
        self.r.param_writes |= lin.params

    # ------------------------------------------------------------------ expressions
    def expr(self, node: Any, scope: _Scope, ctx: _Ctx) -> Lin:
        # the hottest function of a cold plan: one dict lookup per node where it can
        if isinstance(node, dict):
            if len(node) == 1:
                ((kind, body),) = node.items()
                handler = _EXPR.get(kind)
                if handler is not None:
                    return handler(self, body, scope, ctx)
                if kind[:1].isupper():
                    return self.generic(body, scope, ctx)
            return self.generic(node, scope, ctx)
        if isinstance(node, list):
            out = CLEAN
            for n in node:
                out = out | self.expr(n, scope, ctx)
            return out
        return CLEAN

    def generic(self, body: Any, scope: _Scope, ctx: _Ctx) -> Lin:
        """Any node without a handler: the union of everything inside (fail closed)."""
        out = CLEAN
        if isinstance(body, dict):
            expr = self.expr
            for key, value in body.items():
                if isinstance(value, (dict, list)) and key not in _NOT_VALUES:
                    out = out | expr(value, scope, ctx)
        elif isinstance(body, list):
            for value in body:
                out = out | self.expr(value, scope, ctx)
        return out

    def walk_side(self, node: Any, why: str) -> None:
        """Walk a part whose values may be stored or echoed: tokens there are refused.

        Only token sites matter here: names that do not resolve without their scope
        are not reported as unknown outputs.
        """
        if node is not None:
            reasons = len(self.r.unknown_reasons)
            self.expr(node, _Scope(None), _refused(why))
            del self.r.unknown_reasons[reasons:]

    def e_ColumnRef(self, body: Node, scope: _Scope, ctx: _Ctx) -> Lin:
        fields = body["fields"]
        names = _strs(fields)
        if "A_Star" in fields[-1]:
            found = self.lookup(names[:-1], scope) if len(names) > 1 else None
            if found is None:
                if len(names) == 1:
                    out = CLEAN
                    for it in scope.stars:
                        out = out | self.met(scope, it, it.whole())
                    return out
                return self.unknown(f"{'.'.join(names)} of an unknown relation")
            return self.met(found[1], found[0], found[0].whole())
        return self.resolve(names, scope)

    def resolve(self, names: list[str], scope: _Scope) -> Lin:
        if len(names) == 1:
            name = names[0]
            s: _Scope | None = scope
            while s is not None:
                found: Lin | None = None
                for item in s.items:
                    lin = item.get(name)
                    if lin is not None:
                        found = lin if found is None else found | lin
                        self.met(s, item, lin)
                if found is not None:
                    return found
                for item in reversed(s.items):
                    if item.alias == name:
                        # a whole-row reference: t, row_to_json(t)
                        return self.met(s, item, item.whole())
                s = s.parent
            return self.unknown(f"column {name!r} could not be resolved")
        hit = self.lookup(names[:-1], scope)
        if hit is not None:
            item, level = hit
            lin = item.get(names[-1])
            if lin is not None:
                return self.met(level, item, lin)
            return self.unknown(f"column {'.'.join(names)} does not exist in dbgate's snapshot")
        # t.c where t is a column of a composite type: the whole of that column
        base = self.resolve(names[:1], scope) if len(names) == 2 else UNKNOWN_LIN
        if base is UNKNOWN_LIN:
            return self.unknown(f"column {'.'.join(names)} could not be resolved")
        return base

    def e_A_Const(self, body: Node, scope: _Scope, ctx: _Ctx) -> Lin:
        sval = body.get("sval")
        if sval is None:
            return CLEAN
        text = sval.get("sval", "")
        if "tok_" not in text:
            return CLEAN
        entities = frozenset(m.group(1) for m in TOKEN_RE.finditer(text))
        if not entities:
            return CLEAN
        self.r.token_sites.append(TokenSite(body.get("location", -1), ctx.allowed, ctx.why, text))
        return Lin(entities, token=True)

    def e_ParamRef(self, body: Node, scope: _Scope, ctx: _Ctx) -> Lin:
        n = body.get("number", 0)
        if not ctx.allowed:
            self.r.param_sites[n] = ctx.why
        else:
            self.r.param_sites.setdefault(n, "")
        return Lin(params=frozenset((n,)))

    def e_TypeCast(self, body: Node, scope: _Scope, ctx: _Ctx) -> Lin:
        return self.expr(body.get("arg"), scope, ctx)

    def e_SubLink(self, body: Node, scope: _Scope, ctx: _Ctx) -> Lin:
        test = self.expr(body.get("testexpr"), scope, ctx)
        sub = body.get("subselect")
        if body.get("subLinkType") == "EXISTS_SUBLINK":
            if sub is not None:
                self.query(sub, scope, FILTER)
            return test
        if sub is None:
            return test
        return test | self.query(sub, scope, ctx).union()

    def e_FuncCall(self, body: Node, scope: _Scope, ctx: _Ctx) -> Lin:
        parts = _strs(body["funcname"])
        name = parts[-1].lower()
        schema = parts[-2] if len(parts) > 1 else None
        builtin = schema in (None, "pg_catalog") and self.is_builtin(name, schema)
        # WITHIN GROUP (ORDER BY x) of mode()/percentile_*(): x is the value input
        within = bool(body.get("agg_within_group")) and not (
            builtin and name in HYPOTHETICAL_SET_AGGREGATES
        )
        # an aggregate's FILTER chooses the rows it adds up: sum(g) FILTER (WHERE g = ...)
        self.choose(body.get("agg_filter"), scope)
        for key in ("over",) if within else ("over", "agg_order"):
            if body.get(key):
                self.expr(body[key], scope, FILTER)
        args = body.get("args")
        if within and body.get("agg_order"):
            args = [*(args or ()), *body["agg_order"]]
        if builtin and name in SIDE_EFFECTS:
            lin = self.expr(args, scope, _refused(f"an argument of {name}()"))
            if lin.pii and name == "set_config":
                self.r.pii_writes.append("set_config stores PII in a setting")
            self.r.param_writes |= lin.params
            return lin
        if not builtin:
            met = len(self.refs) if self.refs is not None else 0
            lin = self.expr(
                args, scope, _refused(f"an argument of the user function {'.'.join(parts)}()")
            )
            self.r.param_writes |= lin.params
            self.met_opaque(scope, met)
            return lin | self.unknown(f"{'.'.join(parts)}() is not a PostgreSQL built-in function")
        if name in DATA_READERS:
            met = len(self.refs) if self.refs is not None else 0
            self.expr(args, scope, FILTER)
            self.met_opaque(scope, met)
            return self.unknown(f"{name}() reads data dbgate cannot follow")
        if name in VALUE_FREE_FUNCTIONS:
            self.expr(args, scope, FILTER)
            return CLEAN
        return self.expr(args, scope, ctx)

    def is_builtin(self, name: str, schema: str | None) -> bool:
        funcs = self.snap.functions_named(name)
        if not funcs:
            return self.snap.assume_builtin_functions
        if schema == "pg_catalog":
            return any(f.builtin for f in funcs)
        # an unqualified name may resolve to a user function first (search_path):
        # built-in only when every function of that name is
        return all(f.builtin for f in funcs)

    def e_GroupingFunc(self, body: Node, scope: _Scope, ctx: _Ctx) -> Lin:
        self.expr(body.get("args"), scope, FILTER)  # a bit mask of grouping columns
        return CLEAN

    def e_A_Indirection(self, body: Node, scope: _Scope, ctx: _Ctx) -> Lin:
        return self.expr(body.get("arg"), scope, ctx) | self.expr(
            body.get("indirection"), scope, FILTER
        )

    def e_RangeSubselect(self, body: Node, scope: _Scope, ctx: _Ctx) -> Lin:
        return self.query(body["subquery"], scope, ctx).union()


def _leaf(self: _Walker, body: Any, scope: _Scope, ctx: _Ctx) -> Lin:
    return CLEAN


#: Keys of a node that hold no values (a type's name is not data).
_NOT_VALUES = frozenset({"typeName", "location"})
#: Nodes that hold no values: names, types, sort directions.
_LEAVES = frozenset(
    {
        "String",
        "Integer",
        "Float",
        "Boolean",
        "BitString",
        "TypeName",
        "SQLValueFunction",
        "SetToDefault",
        "A_Star",
        "ColumnDef",
    }
)
#: Each node kind with a handler of its own; any other kind is walked generically.
_EXPR: dict[str, Callable[[_Walker, Any, _Scope, _Ctx], Lin]] = {
    **{name: _leaf for name in _LEAVES},
    **{name[2:]: getattr(_Walker, name) for name in dir(_Walker) if name.startswith("e_")},
}


def parse(sql: str) -> list[Node]:
    """The statements of ``sql`` as pglast JSON nodes (raises pglast's ParseError).

    orjson decodes pglast's JSON in half json's time (a third of a cold plan)."""
    return [s["stmt"] for s in _loads(_pg.parse_sql_json(sql)).get("stmts", ()) if "stmt" in s]


def filters_matter(sql: str) -> bool:
    """Whether the clauses that only choose rows (WHERE, ORDER BY, ...) must be walked:
    only when the text may hold a token, a bind parameter or a call that stores its
    argument (see ``_Walker.control``). A plan depends on the text through this too,
    so a cache that shares plans between texts keys on it (:mod:`.plan_cache`)."""
    if "tok_" in sql or "$" in sql:
        return True
    lowered = sql.lower()
    return any(name in lowered for name in SIDE_EFFECTS)


def analyze(sql: str, source: ColumnSource, session: SessionState | None = None) -> Analysis:
    """Lineage of every statement in ``sql``; never raises.

    A statement PostgreSQL cannot parse is reported in ``parse_error`` with an
    unknown output (the server will refuse it too, but nothing is assumed clean).
    """
    result = Analysis()
    try:
        stmts = parse(sql)
    except Exception as e:  # pglast.parser.ParseError, or anything from a hostile text
        result.parse_error = str(e)
        result.unknown_reasons.append(f"the statement could not be parsed: {e}")
        result.statements.append(StatementLineage("?", Output(tail=UNKNOWN_LIN)))
        return result
    walker = _Walker(source, session, result)
    walker.filters_matter = filters_matter(sql)
    for stmt in stmts:
        try:
            result.statements.append(walker.statement(stmt))
        except Exception as e:  # a tree shape the walker did not expect: fail closed
            why = f"internal error while following {next(iter(stmt))}: {type(e).__name__}: {e}"
            result.unknown_reasons.append(why)
            result.statements.append(StatementLineage(next(iter(stmt)), Output(tail=UNKNOWN_LIN)))
            result.token_sites.append(TokenSite(-1, False, why))
    return result
