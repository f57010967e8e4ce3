"""Queries: SELECT wherever it nests (CTEs, sub-selects, EXPLAIN, COPY, CTAS, DML sources).

Every query handler (this module's :func:`select`, :mod:`~dbgate.policy.walk.dml` for
INSERT/UPDATE/DELETE/MERGE) returns a :class:`~dbgate.policy.walk.nodes.Produced`:

* ``whole`` — the tables whose every row its result may hold, judged by shape
  (:mod:`~dbgate.policy.walk.narrowing`), so the enclosing construct decides: a
  top-level SELECT becomes a ``dump``, a sub-select in FROM leaves it to the outer
  LIMIT, ``INSERT ... SELECT`` copies a table — and the reason names the tables;
* ``rows`` — a proven bound on its rows (:mod:`~dbgate.policy.walk.bounds`), which
  lets a relation joined on a key, or a sub-select correlated with its rows, be
  bounded in turn;
* ``reads`` — the table rows it reads, which its caller adds to its own: once for a
  FROM item, a CTE, a set-operation arm or an uncorrelated sub-select, once per row
  of the enclosing level for a sub-select correlated with it (one that refers to a
  column it does not itself resolve — an unqualified name it cannot place counts).

Each sub-select is walked exactly once (:func:`nested_query` remembers it by node), so
a judgement that needs a sub-select's result again (``id IN (SELECT ...)`` in a
WHERE) costs a lookup, and nesting costs linear time.

Data that no row limit can bound is a ``dump`` wherever it appears: an aggregate that
collects its input (``string_agg``, ``array_agg``, ``json_agg`` ..., also as a window
function) or an ``ARRAY(SELECT ...)`` over rows no unique key bounds returns a whole
table in one value — into the result, an error message or a setting — whatever LIMIT
stands outside it; so does a recursive CTE that reads such rows, since each step can
append to what the previous one carried.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from dbgate.policy.model import DDL, DUMP, READ, WRITE
from dbgate.policy.walk import bounds, dml, expressions, narrowing, sources, statements
from dbgate.policy.walk.facts import StatementFacts
from dbgate.policy.walk.nodes import (
    KNOWN,
    Ctes,
    Produced,
    WholeTables,
    name_list,
    op_name,
    relations_read,
    relname,
    table_key,
    value_of,
)

#: A SELECT whose row count is capped at or below this is not a bulk read ("dump").
DUMP_LIMIT_THRESHOLD = 1000


def query(
    k: str, body: dict[str, Any], facts: StatementFacts, out: bool, ctes: Ctes, decide: bool = True
) -> Produced:
    """Walk a query node into the current read accumulator (``facts.reads``)."""
    if k == "SelectStmt":
        return select(body, facts, out, ctes, decide)
    h = dml.HANDLERS.get(k)
    if h is not None:
        saved = facts.calls
        facts.calls = None  # a DML is no SELECT level: its calls decide no row count
        try:
            return h(body, facts, out, ctes)
        finally:
            facts.calls = saved
    statements.stmt_body(k, body, facts)
    return Produced()


def produce(
    k: str, body: dict[str, Any], facts: StatementFacts, out: bool, ctes: Ctes, decide: bool = True
) -> Produced:
    """Walk a query with an accumulator of its own; the caller merges ``reads``."""
    saved = facts.reads
    facts.reads = {}
    try:
        produced = query(k, body, facts, out, ctes, decide)
        produced.reads = facts.reads
    finally:
        facts.reads = saved
    return produced


def run(
    k: str, body: dict[str, Any], facts: StatementFacts, out: bool, ctes: Ctes, decide: bool = True
) -> Produced:
    """Walk a query that runs once per run of the current level, and charge its reads."""
    produced = produce(k, body, facts, out, ctes, decide)
    bounds.merge_reads(facts.reads, produced.reads)
    return produced


def nested_query(
    k: str, body: dict[str, Any], facts: StatementFacts, out: bool, ctes: Ctes
) -> Produced:
    """A query inside an expression (a sub-select): walked once; the reads of one
    correlated with the level around it are left for that level to multiply by the
    rows it runs it for, an uncorrelated one reads the same rows each time."""
    memo = facts.memo.get(id(body))
    if memo is not None:
        return memo  # type: ignore[no-any-return]
    produced = produce(k, body, facts, out, ctes)
    facts.memo[id(body)] = produced
    if facts.pending is not None and produced.correlated:
        facts.pending.append(produced.reads)  # runs again for each row of the level
    else:
        bounds.merge_reads(facts.reads, produced.reads)  # the same rows every time
    return produced


def memo_rows(facts: StatementFacts, body: dict[str, Any]) -> bounds.Bound:
    """The proven row bound of an uncorrelated sub-select the walk has already seen
    (else None): ``id IN (SELECT id)`` returns one row per outer row — the outer row."""
    produced = facts.memo.get(id(body))
    if produced is None or produced.correlated:
        return None
    return produced.rows


def with_clause(w: dict[str, Any] | None, facts: StatementFacts, ctes: Ctes) -> Ctes:
    """Walk the CTEs of a WITH clause; the CTEs visible in its query, and what each
    produces. Their reads are charged to the current level (a CTE runs once)."""
    if not w:
        return ctes
    scope = dict(ctes)
    recursive = w.get("recursive", False)
    listed = [c["CommonTableExpr"] for c in w.get("ctes", ()) if c.get("CommonTableExpr")]
    if recursive:
        listed = _in_reading_order(listed, scope)
    for cte in listed:
        name = cte.get("ctename", "")
        if recursive:
            scope[name] = Produced()  # self-reference inside the recursive term: any rows
        q = cte.get("ctequery") or {}
        produced = Produced()
        for k, body in q.items():
            produced = run(k, body, facts, True, scope, decide=False)
        if recursive and _self_referencing(cte) and bounds.total(produced.reads) is None:
            tables = _unbounded_tables(produced.reads)
            facts.add(
                DUMP,
                "recursive-collects",
                f"reads rows of {name_list(tables)} in a recursive query, whose every step "
                "can carry what the previous steps read (no row limit can bound it)",
            )
        if recursive and _self_referencing(cte):
            produced = Produced(produced.whole, None, produced.reads)
        scope[name] = produced
    return scope


def _in_reading_order(listed: list[dict[str, Any]], scope: Ctes) -> list[dict[str, Any]]:
    """Under ``WITH RECURSIVE`` a CTE may read one listed after it, which the server
    runs first: ``WITH RECURSIVE a AS (SELECT * FROM orders WHERE id = 1), orders AS
    (SELECT ... FROM customers) SELECT * FROM a`` reads the CTE ``orders``, not the
    table, so a key of the table bounds nothing. The CTEs are walked in the order of
    what they read; a name read before it is walked (mutual recursion, which the server
    refuses) stands for any rows meanwhile (``Produced()``), as a self-reference does."""
    names = {cte.get("ctename", "") for cte in listed}
    reads = {
        cte.get("ctename", ""): relations_read(cte.get("ctequery"))
        & (names - {cte.get("ctename", "")})
        for cte in listed
    }
    ordered: list[dict[str, Any]] = []
    done: set[str] = set()
    pending = list(listed)
    while pending:
        ready = [cte for cte in pending if reads[cte.get("ctename", "")] <= done] or pending[:1]
        for cte in ready:
            pending.remove(cte)
            ordered.append(cte)
            done.add(cte.get("ctename", ""))
    if any(reads[cte.get("ctename", "")] for cte in listed):
        for name in names:
            scope.setdefault(name, Produced())
    return ordered


def carries_rows(reads: dict[Any, bounds.Bound], rows: bounds.Bound) -> bool:
    """Whether unboundedly many rows that carry table data feed one value: the input
    of a collecting aggregate, or of ``ARRAY(SELECT ...)``. A LIMIT or a key that
    bounds those rows bounds the value; a LIMIT outside it does not."""
    return rows is None and any(type(t) is str or t[0] != "lock" for t in reads)


def _self_referencing(cte: dict[str, Any]) -> bool:
    q = (cte.get("ctequery") or {}).get("SelectStmt") or {}
    return q.get("op", "SETOP_NONE") != "SETOP_NONE"


def _unbounded_tables(reads: dict[Any, bounds.Bound]) -> WholeTables:
    found = tuple(t for t, n in reads.items() if type(t) is str and n is None)
    return found or ("a table",)


def _literal_limit(s: dict[str, Any], facts: StatementFacts) -> int | None:
    """The LIMIT / FETCH FIRST row count when it is a literal (WITH TIES may return more)."""
    if s.get("limitOption") == "LIMIT_OPTION_WITH_TIES":
        return None
    return _literal_count(s.get("limitCount"), facts)


def _parameter_count(s: dict[str, Any]) -> bool:
    """Whether the level's LIMIT is a parameter (cast to an integer type or not)."""
    lc = s.get("limitCount")
    if type(lc) is not dict or s.get("limitOption") == "LIMIT_OPTION_WITH_TIES":
        return False
    tc = lc.get("TypeCast")
    if type(tc) is dict:
        lc = tc.get("arg")
    return type(lc) is dict and "ParamRef" in lc


def _locked_rows_limit(s: dict[str, Any], facts: StatementFacts) -> int | None:
    """How many rows a ``FOR UPDATE`` / ``FOR SHARE`` of this level can lock at most by
    its LIMIT: the rows it skips by OFFSET are locked too (PostgreSQL locks each row
    the Limit node pulls through LockRows), so LIMIT n OFFSET k locks n + k rows; an
    OFFSET that is not a literal bounds nothing."""
    limit = _literal_limit(s, facts)
    if limit is None or s.get("limitOffset") is None:
        return limit
    offset = _literal_count(s.get("limitOffset"), facts)
    return None if offset is None else limit + offset


#: Cast targets a LIMIT or OFFSET count may pass through and keep its value exactly
#: (``LIMIT $1::INTEGER``, as SQLAlchemy writes it): a text that is not an integer
#: fails on the server.
_INTEGER_TYPES = frozenset({"int2", "int4", "int8", "smallint", "integer", "bigint", "int"})


def _literal_count(lc: Any, facts: StatementFacts) -> int | None:
    """A LIMIT or OFFSET count when it is a literal, or a parameter whose Bind value
    the walk was given (either one cast to an integer type at most).

    A parameter is read only at Bind: at Parse it bounds nothing and asks for no
    Bind-time decision of its own (a LIMIT that decides ``dump`` asks for one in
    :func:`_small_limit`). A count that is not a whole number is rounded up: the
    server rounds a ``numeric`` one to the nearest, never above that."""
    if type(lc) is not dict:
        return None
    tc = lc.get("TypeCast")
    if type(tc) is dict:
        names = [
            (n.get("String") or {}).get("sval", "")
            for n in (tc.get("typeName") or {}).get("names", ())
        ]
        if (
            not names
            or names[-1] not in _INTEGER_TYPES
            or (tc.get("typeName") or {}).get("arrayBounds")
        ):
            return None
        if len(names) > 1 and names[:-1] != ["pg_catalog"]:
            return None
        lc = tc.get("arg")
        if type(lc) is not dict:
            return None
    if "A_Const" not in lc and ("ParamRef" not in lc or facts.params is None):
        return None
    state, text = value_of(lc, facts)
    if state != KNOWN or text is None:
        return None
    try:
        n = math.ceil(float(text.strip()))
    except (ValueError, OverflowError):
        return None
    return max(n, 0)


def _small_limit(s: dict[str, Any], facts: StatementFacts) -> bool:
    """True when the statement's LIMIT/FETCH caps it at DUMP_LIMIT_THRESHOLD rows or fewer."""
    lc = s.get("limitCount")
    if lc is None or s.get("limitOption") == "LIMIT_OPTION_WITH_TIES":
        return False
    state, text = value_of(lc, facts)
    if state != KNOWN or text is None:
        return False
    try:
        return int(float(text.strip())) <= DUMP_LIMIT_THRESHOLD
    except ValueError:
        return False


def unbounded_after_where(
    fc: sources.FromClause, where: Any, facts: StatementFacts, ctes: Ctes, outer: frozenset[str]
) -> WholeTables:
    """The tables whose every row may remain: those of relations WHERE does not narrow
    (by shape: this decides ``dump``, never that a statement is narrow)."""
    found = fc.found
    if not any(u for _, u in found):
        return ()
    sc = narrowing.Scope(frozenset(n for n, _ in found), outer, len(found))
    narrowed = narrowing.restricted(where, facts, ctes, sc, fc.eqs) if where is not None else set()
    if fc.eqs:
        narrowed = narrowing.propagate(narrowed | fc.bounded_quals(), fc.eqs)
    return tuple(t for n, u in found if n not in narrowed for t in u)


def select(
    s: dict[str, Any], facts: StatementFacts, out: bool, ctes: Ctes, decide: bool
) -> Produced:
    """Walk a SelectStmt into the current accumulator.

    ``decide``: add ``dump`` here (top-level, sub-link) or leave it to the caller
    (set-operation arms, FROM sub-selects, CTEs), whose LIMIT may still bound it.
    """
    facts.add(READ, "select", "reads data with a query")
    ctes = with_clause(s.get("withClause"), facts, ctes)
    saved_pending, saved_calls, saved_refs = facts.pending, facts.calls, facts.free_refs
    facts.pending = []
    facts.calls = []
    facts.free_refs = set()
    bound: Callable[[str], bool] = _never
    try:
        op = s.get("op", "SETOP_NONE")
        if op != "SETOP_NONE":
            whole, rows = _set_operation(s, op, facts, out, ctes)
            _walk_tail(s, facts, ctes)
            _merge_pending(facts, 1)
        elif "valuesLists" in s:
            expressions.walk(s["valuesLists"], facts, out, ctes)
            rows = bounds.cap(len(s["valuesLists"]))
            whole = ()
            _walk_tail(s, facts, ctes)
            _merge_pending(facts, 1)
        else:
            whole, rows, bound = _level(s, facts, out, ctes)
        free = {r for r in facts.free_refs if not bound(r)}
    finally:
        facts.pending, facts.calls, facts.free_refs = saved_pending, saved_calls, saved_refs
    if saved_refs is not None:
        saved_refs |= free
    limit = _literal_limit(s, facts)
    if limit is not None:
        rows = limit if rows is None else min(rows, limit)
        rows = bounds.cap(rows)
    elif rows is None and not decide and facts.params is None and _parameter_count(s):
        # A sub-select's, CTE's or set arm's rows bound what is joined to them (the
        # ORM's ``joinedload`` with ``.limit()``): decided again with the value.
        facts.needs_bind = True
    if whole and _small_limit(s, facts):
        whole = ()
    into = s.get("intoClause")
    if into is not None:
        target = table_key(*relname(into.get("rel") or {}))
        facts.tables.add(target)
        facts.add(DDL, "select-into", f"creates the table {target} (SELECT INTO)")
        facts.add(WRITE, "select-into", f"writes the query's rows into the new table {target}")
        if whole:
            copies_whole_tables(whole, target, facts)
    if whole and decide and out:
        facts.add(
            DUMP,
            "unbounded-select",
            f"reads every row of {name_list(whole)} (no WHERE that narrows it, "
            f"no LIMIT of at most {DUMP_LIMIT_THRESHOLD} rows)",
        )
    produced = Produced(whole, rows)
    produced.correlated = bool(free)
    return produced


def _never(_ref: str) -> bool:
    return False


def _set_operation(
    s: dict[str, Any], op: str, facts: StatementFacts, out: bool, ctes: Ctes
) -> tuple[WholeTables, bounds.Bound]:
    left = run("SelectStmt", s.get("larg") or {}, facts, out, ctes, decide=False)
    right = run("SelectStmt", s.get("rarg") or {}, facts, out, ctes, decide=False)
    if op == "SETOP_INTERSECT":
        rows = (
            left.rows
            if right.rows is None
            else right.rows
            if left.rows is None
            else min(left.rows, right.rows)
        )
    elif op == "SETOP_EXCEPT":
        rows = left.rows
    else:
        rows = bounds.plus(left.rows, right.rows)
    return left.whole + right.whole, rows


def _walk_tail(s: dict[str, Any], facts: StatementFacts, ctes: Ctes) -> None:
    for f in ("sortClause", "limitOffset", "limitCount", "lockingClause"):
        if f in s:
            expressions.walk(s[f], facts, False, ctes)


def _merge_pending(facts: StatementFacts, times: bounds.Bound) -> None:
    """Charge the sub-selects of the level, run ``times`` times (once per row)."""
    for reads in facts.pending or ():
        bounds.merge_reads(facts.reads, reads, times)
    facts.pending = []


def _level(
    s: dict[str, Any], facts: StatementFacts, out: bool, ctes: Ctes
) -> tuple[WholeTables, bounds.Bound, Callable[[str], bool]]:
    """A plain SELECT level: FROM, WHERE, target list and the rest.

    Returns (whole, rows, resolves) and charges its reads: its tables' proven bounds,
    and its sub-selects times the level's rows. ``resolves(ref)`` says whether a
    column reference (a qualifier, or "?name") belongs to this level: one of its
    qualifiers, or a column one of its relations is known to have (a key column,
    the catalog's columns of a table, a sub-select's output names).
    """
    outer = facts.scope
    write_calls = facts.write_calls
    fc = sources.FromClause()
    for item in s.get("fromClause", ()):
        sources.item(item, facts, out, ctes, fc)
    facts.scope = outer | fc.names()  # visible to sub-selects
    where = s.get("whereClause")
    if where is not None:
        expressions.walk(where, facts, False, ctes)
    level = None
    if facts.keys is not None:  # without keys no pin proves anything: skip the proof
        level = bounds.Level(fc.srcs, outer, facts)
        if where is not None:
            bounds.collect(where, level, fc.pins, None, lambda n: memo_rows(facts, n))
    rows = None if fc.full_join else bounds.solve(fc.srcs, fc.pins)
    evaluated = rows  # the rows its expressions are evaluated for (before aggregation)
    fc.finish(facts)
    tl = s.get("targetList")
    saved_rows = facts.setting_rows
    facts.setting_rows = _pg_settings_rows(s, facts)
    expressions.walk(tl, facts, out, ctes)
    facts.setting_rows = saved_rows
    for f in ("groupClause", "havingClause", "windowClause", "distinctClause"):
        if f in s:
            expressions.walk(s[f], facts, False, ctes)
    _walk_tail(s, facts, ctes)
    facts.scope = outer
    _merge_pending(facts, rows)
    # -- data no row limit bounds --------------------------------------------------
    # Aggregates may stand only in the target list, HAVING, ORDER BY and WINDOW, so the
    # level's calls (outside its sub-selects) are those clauses' calls.
    level_calls = facts.calls or []
    collector = narrowing.collecting(level_calls) if carries_rows(facts.reads, rows) else None
    if collector is not None:
        tables = _unbounded_tables(facts.reads)
        facts.add(
            DUMP,
            "collects-rows",
            f"collects rows of {name_list(tables)} into one value ({collector}) with no "
            "unique key that bounds them, so a row limit cannot bound what it returns",
        )
    # -- the shape: does it ask for every row? ---------------------------------------
    whole = unbounded_after_where(fc, where, facts, ctes, outer)
    kind = narrowing.agg_kind(level_calls)
    if whole:
        names = fc.names()
        if kind == 1 or (kind == 0 and _distinct_values_of_one_expression(s, names)):
            # count(*), sum(...): rows are reduced, not returned; and the distinct
            # values of one column are what ``x, count(*) ... GROUP BY x`` returns
            # (judged alike: docs/rules.md, "Reading whole columns") -- unless the
            # grouping covers a unique key, which reduces nothing.
            keyed = _grouped_by_key(s, level) if level is not None else frozenset()
            whole = tuple(t for t in whole if t in keyed)
    # -- the rows it returns ---------------------------------------------------------
    if kind and "groupClause" not in s:  # one row, unless a set-returning call unrolls it
        rows = None if narrowing.returns_sets(level_calls) else 1
    elif rows is not None and (
        narrowing.returns_sets(level_calls) or _grouping_sets(s.get("groupClause"))
    ):
        rows = None
    _row_locks(s, fc, rows, facts)
    if facts.write_calls > write_calls and (
        (s.get("fromClause") and (evaluated is None or evaluated > 1))
        or narrowing.returns_sets(level_calls)
    ):
        # nextval(), lo_create() ... once per row of a FROM or a set-returning call:
        # their effects are not rows its command tag counts, nor bounded by one
        facts.writes[f"\x00calls{len(facts.writes)}"] = None
        facts.uncounted_writes = True
    names = fc.names()
    only = fc.srcs[0] if len(fc.srcs) == 1 else None
    key_columns = {c for k in only.keys for c in k} if only is not None else set()

    def resolves(ref: str) -> bool:
        if ref[0] == "?":
            return ref[1:] in key_columns or fc.places(ref[1:])
        return ref in names

    return whole, rows, resolves


def _grouping_sets(groups: list[Any] | None) -> bool:
    """Whether a GROUP BY has grouping sets (ROLLUP, CUBE, GROUPING SETS): each input
    row then counts in several groups, so the level may return more rows than it
    reads (``GROUP BY ()`` alone returns one row)."""
    for g in groups or ():
        gs = g.get("GroupingSet") if type(g) is dict else None
        if gs is not None and gs.get("kind") != "GROUPING_SET_EMPTY":
            return True
    return False


def _grouped_by_key(s: dict[str, Any], level: bounds.Level) -> frozenset[str]:
    """Tables whose unique key the GROUP BY covers: one group per row, no reduction."""
    groups = s.get("groupClause")
    if not groups:
        return frozenset()
    cols = {c for g in groups if (c := level.column(g, None)) is not None}
    out = set()
    for i, src in enumerate(level.sources):
        if src.table is not None and any(all((i, c) in cols for c in key) for key in src.keys):
            out.add(src.table)
    return frozenset(out)


def _row_locks(
    s: dict[str, Any], fc: sources.FromClause, rows: bounds.Bound, facts: StatementFacts
) -> None:
    """``FOR UPDATE`` / ``FOR SHARE``: the rows it locks, charged like reads (so that a
    correlated sub-select's locks multiply too); judged in ``StatementFacts.result``."""
    clauses = s.get("lockingClause")
    if not clauses:
        return
    limit = _locked_rows_limit(s, facts)
    cap = rows if limit is None else limit if rows is None else min(rows, limit)
    named: set[str] = set()
    every = False
    for c in clauses:
        rels = (c.get("LockingClause") or {}).get("lockedRels")
        if not rels:
            every = True
        for r in rels or ():
            rv = r.get("RangeVar") or {}
            named.add(rv.get("relname", ""))
    for src in fc.srcs:
        if not every and src.qual not in named:
            continue
        n = src.bound if src.table is not None else src.rows
        if cap is not None:
            n = cap if n is None else min(n, cap)
        key = ("lock", src.table or src.qual or "a sub-select")
        facts.reads[key] = bounds.plus(facts.reads.get(key, 0), n)


def _distinct_values_of_one_expression(s: dict[str, Any], sources: frozenset[str]) -> bool:
    """``SELECT DISTINCT x`` or ``SELECT x ... GROUP BY x``: one output expression,
    which is the grouping key, and no ``*`` or whole-row reference (``c`` for a FROM
    item ``c``) in it. Several columns could list whole rows (a key among them), so
    only a single one counts."""
    tl = s.get("targetList") or []
    if len(tl) != 1:
        return False
    val = (tl[0].get("ResTarget") or {}).get("val")
    if not isinstance(val, dict) or _whole_rows(val, sources):
        return False
    if "distinctClause" in s and "groupClause" not in s:
        keys = [k for k in s["distinctClause"] if k]  # DISTINCT: [{}]; DISTINCT ON: exprs
        return not keys or (len(keys) == 1 and _same_expression(keys[0], val))
    groups = s.get("groupClause") or []
    return len(groups) == 1 and _same_expression(groups[0], val)


def _whole_rows(v: Any, sources: frozenset[str]) -> bool:
    """Whether an expression can carry whole rows: ``*``, ``t.*``, or a bare name
    that is a FROM item (``row_to_json(c)``, ``c::text``). Sub-selects count too."""
    stack = [v]
    while stack:
        x = stack.pop()
        if isinstance(x, list):
            stack.extend(x)
        elif isinstance(x, dict):
            if "A_Star" in x or "SubLink" in x:
                return True
            if "ColumnRef" in x:
                fields = x["ColumnRef"].get("fields") or []
                if len(fields) == 1:
                    name = (fields[0].get("String") or {}).get("sval")
                    if name is None or name in sources:
                        return True
            stack.extend(y for y in x.values() if isinstance(y, dict | list))
    return False


def _same_expression(a: Any, b: Any) -> bool:
    """Equal parse trees, ignoring where in the text each one is."""

    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k != "location"}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return bool(strip(a) == strip(b))


def _pg_settings_rows(
    s: dict[str, Any], facts: StatementFacts
) -> tuple[frozenset[str], frozenset[str]] | None:
    """For ``... FROM pg_settings [alias] WHERE name = 'a'`` (or ``name IN ('a', 'b')``,
    possibly AND-ed with other conditions): (qualifiers of pg_settings, {'a', 'b'})."""
    from_clause = s.get("fromClause", ())
    if len(from_clause) != 1 or "whereClause" not in s:
        return None
    rv = from_clause[0].get("RangeVar")
    if rv is None or rv.get("relname") != "pg_settings":
        return None
    if rv.get("schemaname") not in (None, "pg_catalog"):
        return None
    alias = (rv.get("alias") or {}).get("aliasname")
    qualifiers = frozenset({alias} if alias else {"pg_settings", "pg_catalog.pg_settings"})
    names = _names_in_where(s["whereClause"], qualifiers, facts)
    return (qualifiers, names) if names is not None else None


def _names_in_where(
    where: Any, qualifiers: frozenset[str], facts: StatementFacts
) -> frozenset[str] | None:
    """The literal values ``where`` limits the ``name`` column to, or None."""
    if type(where) is not dict:
        return None
    b = where.get("BoolExpr")
    if b is not None:
        if b.get("boolop") != "AND_EXPR":
            return None
        found = [_names_in_where(a, qualifiers, facts) for a in b.get("args", ())]
        known = [f for f in found if f is not None]
        return frozenset.intersection(*known) if known else None
    e = where.get("A_Expr")
    if e is None or not _is_name_column(e.get("lexpr"), qualifiers):
        return None
    op, foreign = op_name(e.get("name"))
    if foreign or op != "=" or e.get("kind") not in ("AEXPR_OP", "AEXPR_IN"):
        return None
    values = e.get("rexpr")
    if e.get("kind") == "AEXPR_IN":  # name IN ('a', 'b'): a List node
        values = (values or {}).get("List", {}).get("items") if type(values) is dict else values
    else:
        values = [values]
    if type(values) is not list or not values:
        return None
    names = set()
    for v in values:
        state, text = value_of(v, facts)
        if state != KNOWN or text is None:
            return None
        names.add(text)
    return frozenset(names)


def _is_name_column(node: Any, qualifiers: frozenset[str]) -> bool:
    ref = node.get("ColumnRef") if type(node) is dict else None
    if ref is None:
        return False
    fields = [(f.get("String") or {}).get("sval") for f in ref.get("fields", ())]
    if not fields or fields[-1] != "name":
        return False
    return len(fields) == 1 or ".".join(f or "" for f in fields[:-1]) in qualifiers


def copies_whole_tables(whole: WholeTables, target: str, facts: StatementFacts) -> None:
    """``dump``: rows of whole tables copied into another table (CTAS, INSERT ... SELECT)."""
    facts.add(
        DUMP,
        "copy-table-into-table",
        f"copies every row of {name_list(whole)} into {target} (no WHERE that narrows it, "
        f"no LIMIT of at most {DUMP_LIMIT_THRESHOLD} rows)",
    )
