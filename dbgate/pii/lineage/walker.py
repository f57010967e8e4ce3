"""The walker put together, and the entry points.

:func:`analyze` parses a query string (:func:`parse`), decides whether the clauses that
only choose rows need walking (:func:`filters_matter`), and walks each statement with a
:class:`Walker`, which joins the parts of the walk (one mixin class per module).
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from pglast import parser as _pg

from dbgate.pii.lin import CLEAN, UNKNOWN_LIN
from dbgate.pii.lineage.builtin_names import PRNG_DRAWS, SIDE_EFFECTS, STATE_WRITERS
from dbgate.pii.lineage.expressions import Expressions
from dbgate.pii.lineage.nodes import Node
from dbgate.pii.lineage.queries import Queries
from dbgate.pii.lineage.results import (
    Analysis,
    ColumnSource,
    Output,
    SessionState,
    StatementLineage,
    TokenSite,
)
from dbgate.pii.lineage.sources import Sources
from dbgate.pii.lineage.statement_texts import asks_statement_text
from dbgate.pii.lineage.statements import Statements
from dbgate.pii.lineage.writes import Writes

_loads = orjson.loads


class Walker(Statements, Queries, Sources, Writes, Expressions):
    """One walk over the statements of one query string (:func:`analyze`).

    Each part is a mixin over :class:`~.state.WalkState`; they call each other through
    ``self``, as the grammar nests.
    """


def parse(sql: str) -> list[Node]:
    """The statements of ``sql`` as pglast JSON nodes (raises pglast's ParseError).

    orjson decodes pglast's JSON in half json's time (a third of a cold plan)."""
    return [s["stmt"] for s in _loads(_pg.parse_sql_json(sql)).get("stmts", ()) if "stmt" in s]


def filters_matter(sql: str) -> bool:
    """Whether the clauses that only choose rows (WHERE, ORDER BY, ...) must be walked:
    only when the text may hold a token, a bind parameter or a call that stores its
    argument (see ``Queries.control``). A plan depends on the text through this too,
    so a cache that shares plans between texts keys on it (:mod:`.plan_cache`)."""
    if "tok_" in sql or "$" in sql:
        return True
    lowered = sql.lower()
    # most texts name none: one search for the parts rules them out (the plain-query path)
    if _side_effect_part(lowered) is None:
        return False
    return any(name in lowered for name in SIDE_EFFECTS)


#: Every name of SIDE_EFFECTS contains one of these.
_SIDE_EFFECT_PARTS = (
    "pg_",
    "lo_",
    "lowrite",
    "set_config",
    "dblink",
    "setseed",
    "setval",
    "nextval",
)
_side_effect_part = re.compile("|".join(map(re.escape, _SIDE_EFFECT_PARTS))).search
assert all(any(part in name for part in _SIDE_EFFECT_PARTS) for name in SIDE_EFFECTS)


#: Every name of PRNG_DRAWS contains one of these (and TABLESAMPLE its own).
_DRAW_PARTS = ("random", "array_s", "tablesample")
assert all(any(part in name for part in _DRAW_PARTS) for name in PRNG_DRAWS)


def _counted_draws(stmt: Node) -> frozenset[int]:
    """Locations of the draws that run once per row of the statement's own query (a
    cursor's or an EXPLAIN's too): a bare ``random()`` or ``random_normal()`` its ORDER BY sorts by, in
    a plain SELECT (no set operation, grouping, DISTINCT or window: once per row kept by
    WHERE) or its select list returns as it is, one in a conjunct of its WHERE that
    reads no column (once per row scanned), and a TABLESAMPLE that is its only FROM
    item (scanned once)."""
    around = stmt.get("DeclareCursorStmt") or stmt.get("ExplainStmt")
    if around is not None:
        stmt = around.get("query") or {}
    body = stmt.get("SelectStmt")
    if (
        body is None
        or body.get("op", "SETOP_NONE") != "SETOP_NONE"
        or body.get("groupClause")
        or body.get("distinctClause")
        or body.get("havingClause")
        or body.get("windowClause")
    ):
        return frozenset()
    out: set[int] = set()
    for item in body.get("sortClause") or ():
        call = (item.get("SortBy") or {}).get("node", {}).get("FuncCall")
        if call is not None and _a_draw(call):
            out.add(call.get("location", -1))
    # ... one its select list returns as it is (``SELECT id, email, random()``)
    for target in body.get("targetList") or ():
        call = (target.get("ResTarget") or {}).get("val", {}).get("FuncCall")
        if call is not None and _a_draw(call):
            out.add(call.get("location", -1))
    # ... and one in a conjunct of its WHERE that reads nothing (``random() < 0.01``)
    where = body.get("whereClause")
    conjuncts = [where] if where is not None else []
    boolean = (where or {}).get("BoolExpr")
    if boolean is not None and boolean.get("boolop") == "AND_EXPR":
        conjuncts = boolean.get("args") or []
    for conjunct in conjuncts:
        calls: list[Node] = []
        if _reads_nothing(conjunct, calls):
            out.update(c.get("location", -1) for c in calls if _a_draw(c))
    from_ = body.get("fromClause") or ()
    if len(from_) == 1 and "RangeTableSample" in from_[0]:
        out.add(from_[0]["RangeTableSample"].get("location", -1))
    return frozenset(out)


def _a_draw(call: Node) -> bool:
    """``random()`` or ``random_normal()`` of PostgreSQL's own, with no arguments."""
    if call.get("args") or call.get("over") or call.get("agg_filter"):
        return False
    parts = [p.get("String", {}).get("sval", "").lower() for p in call.get("funcname", ())]
    return parts[-1:] in (["random"], ["random_normal"]) and parts[:-1] in ([], ["pg_catalog"])


def _reads_nothing(node: Any, calls: list[Node]) -> bool:
    """Whether ``node`` names no column and holds no sub-select (its function calls are
    collected in ``calls``)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("ColumnRef", "SubLink"):
                return False
            if key == "FuncCall":
                calls.append(value)
            if not _reads_nothing(value, calls):
                return False
    elif isinstance(node, list):
        return all(_reads_nothing(v, calls) for v in node)
    return True


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
    walker = Walker(source, session, result)
    walker.filters_matter = filters_matter(sql)
    walker.tree = stmts
    # a call that keeps state may run or not as any value the statement computes says
    # (a CASE, a WHERE, a FILTER, a scalar sub-select's rows): every such value is noted
    lowered = sql.lower()
    watch = (walker.filters_matter and any(name in lowered for name in STATE_WRITERS)) or any(
        name in lowered for name in _DRAW_PARTS
    )
    for stmt in stmts:
        writes, draws = len(walker.state_writes), len(walker.draws)
        walker.written_asked = frozenset()
        if watch:
            walker.seen = CLEAN
        try:
            result.statements.append(walker.statement(stmt))
        except Exception as e:  # a tree shape the walker did not expect: fail closed
            why = f"internal error while following {next(iter(stmt))}: {type(e).__name__}: {e}"
            result.unknown_reasons.append(why)
            result.statements.append(StatementLineage(next(iter(stmt)), Output(tail=UNKNOWN_LIN)))
            result.token_sites.append(TokenSite(-1, False, why))
        if watch:
            seen = UNKNOWN_LIN if walker.seen is None else walker.seen
            walker.state_run_by(writes, draws, seen, _counted_draws(stmt))
            walker.seen = None
    walker.state_written()
    if any(site.allowed for site in result.token_sites):
        reader = _reads_statement_text(stmts, source)
        if reader:
            # the text forwarded holds the resolved values, and this one reads it back
            why = (
                f"the statement reads statement texts ({reader}), which hold the values "
                "of the tokens resolved into them; send the value as a Bind parameter"
            )
            result.token_sites[:] = [
                s if not s.allowed else TokenSite(s.location, False, why, s.text, s.stores)
                for s in result.token_sites
            ]
    asked = any(name in lowered for name in STATEMENT_TEXT_READERS) or "u&" in lowered
    if not asked:
        views = _text_views(source)
        asked = bool(views) and any(name in lowered for name in views)
    for stmt in stmts if asked else ():
        reader = _reads_statement_text([stmt], source)
        where = reader and asks_statement_text(stmt, source, STATEMENT_TEXT_READERS)
        if where:
            # a question asked of the text is a question asked of the values resolved
            # into it: a row per bit, reading no table row (held, like a copy of PII)
            result.pii_writes.append(
                f"the statement reads statement texts ({reader}), which hold the values "
                f"of the tokens resolved into them, in a predicate or expression ({where}):"
                " what it returns could spell a value; read them only as plain columns of"
                " the select list"
            )
    return result


#: Built-ins and system views that return statement texts, this session's too: dbgate
#: forwards a text with the tokens in it resolved, so reading it back reads the values
#: (``ascii(substr(current_query(), n, 1)) & 4 <> 0`` is a bit of one, reading no
#: table row). ``QUERY_TEXT_COLUMNS`` and ``DATA_READERS`` hold the same names.
STATEMENT_TEXT_READERS = frozenset(
    {
        "current_query",
        "pg_stat_get_activity",
        "pg_stat_get_backend_activity",
        "pg_cursor",
        "pg_prepared_statement",
        "pg_get_backend_memory_contexts",
        "pg_stat_activity",
        "pg_cursors",
        "pg_prepared_statements",
        "pg_backend_memory_contexts",
        "pg_stat_statements",
        "pg_stat_monitor",
    }
)


#: per schema snapshot, the names of its views that read statement texts
_TEXT_VIEWS: dict[int, tuple[Any, frozenset[str]]] = {}


def _text_views(source: ColumnSource) -> frozenset[str]:
    """The (lower-cased) names of the snapshot's views that read statement texts,
    through other views too: a text naming none of them, nor a reader, nor a Unicode
    escape (``U&"…"`` spells any name), asks no statement text. Computed once a
    snapshot."""
    snap = source.snapshot
    hit = _TEXT_VIEWS.get(id(snap))
    if hit is not None and hit[0] is snap:
        return hit[1]
    names = frozenset(
        name.lower()
        for name, rels in snap.by_name.items()
        if any(r.definition is not None for r in rels)
        and _reads_statement_text([{"RangeVar": {"relname": name}}], source)
    )
    if len(_TEXT_VIEWS) >= 16:
        _TEXT_VIEWS.clear()
    _TEXT_VIEWS[id(snap)] = (snap, names)
    return names


def _reads_statement_text(stmts: list[Node], source: ColumnSource) -> str:
    """The first reader of statement texts the text calls or names
    (``STATEMENT_TEXT_READERS``), through the views it reads too; "" when none."""
    seen: set[int] = set()

    def view_reads(names: list[tuple[str, str | None]], depth: int) -> str:
        for name, schema in names:
            if name.lower() in STATEMENT_TEXT_READERS:
                return name
            for rel in source.snapshot.lookup(name, schema):
                if rel.definition is None or rel.oid in seen or depth > 8:
                    continue
                seen.add(rel.oid)
                words = re.findall(r"[A-Za-z_][A-Za-z0-9_$]*", rel.definition)
                found = view_reads([(w, None) for w in words], depth + 1)
                if found:
                    return f"{found} through {rel.name}"
        return ""

    names: list[tuple[str, str | None]] = []
    _names(stmts, names, 0)
    return view_reads(names, 0)


def _names(node: Any, out: list[tuple[str, str | None]], depth: int) -> None:
    """The relation and function names a parse tree holds."""
    if depth > 300:
        out.append(("pg_stat_activity", None))  # too deep to read: as if it did
        return
    if isinstance(node, dict):
        rel = node.get("relname")
        if isinstance(rel, str):
            out.append((rel, node.get("schemaname")))
        call = node.get("FuncCall")
        if isinstance(call, dict):
            parts = [p.get("String", {}).get("sval", "") for p in call.get("funcname", ())]
            if parts:
                out.append((parts[-1], None))
        for value in node.values():
            _names(value, out, depth + 1)
    elif isinstance(node, list):
        for value in node:
            _names(value, out, depth + 1)
