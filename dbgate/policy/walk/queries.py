"""Queries: SELECT and DML, wherever they nest (CTEs, sub-selects, EXPLAIN, COPY, CTAS).

Each handler returns whether the rows it produces may be a whole table's rows, so
that the enclosing construct decides: a top-level SELECT becomes a ``dump``, a
sub-select in FROM leaves it to the outer LIMIT, ``INSERT ... SELECT`` copies a
table. UPDATE and DELETE are ``write`` when their target is narrowed by the WHERE
(:mod:`dbgate.policy.walk.narrowing`) and ``destructive`` when not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dbgate.policy.model import ADMIN, DDL, DESTRUCTIVE, DUMP, READ, WRITE
from dbgate.policy.walk import expressions, narrowing, statements
from dbgate.policy.walk.facts import StatementFacts
from dbgate.policy.walk.nodes import (
    KNOWN,
    QUERY_NODES,
    catalog_read,
    has_column,
    is_catalog,
    relname,
    table_key,
    value_of,
)

#: A SELECT whose row count is capped at or below this is not a bulk read ("dump").
DUMP_LIMIT_THRESHOLD = 1000


def query(
    k: str, body: dict[str, Any], facts: StatementFacts, out: bool, ctes: dict[str, bool]
) -> bool:
    """Walk a query node; True when its result may hold all rows of some table."""
    if k == "SelectStmt":
        return select(body, facts, out, ctes, True)
    h = _DML.get(k)
    if h is not None:
        return h(body, facts, out, ctes)
    statements.stmt_body(k, body, facts)
    return False


def with_clause(
    w: dict[str, Any] | None, facts: StatementFacts, ctes: dict[str, bool]
) -> dict[str, bool]:
    if not w:
        return ctes
    scope = dict(ctes)
    recursive = w.get("recursive", False)
    for c in w.get("ctes", ()):
        cte = c.get("CommonTableExpr")
        if cte is None:
            continue
        name = cte.get("ctename", "")
        if recursive:
            scope[name] = False  # self-reference inside the recursive term
        q = cte.get("ctequery") or {}
        unbounded = False
        for k, body in q.items():
            if k == "SelectStmt":
                unbounded = select(body, facts, True, scope, False)
            else:
                unbounded = query(k, body, facts, True, scope)
        scope[name] = unbounded
    return scope


def from_range_var(rv: dict[str, Any], facts: StatementFacts, ctes: dict[str, bool]) -> bool:
    schema, name = relname(rv)
    if schema is None and name in ctes:
        return ctes[name]
    key = table_key(schema, name)
    facts.tables.add(key)
    alias = rv.get("alias")
    if alias:
        facts.aliases[alias.get("aliasname", "")] = key
    facts.add(READ, "select", "reads data")
    if is_catalog(schema, name):
        catalog_read(schema, name, facts)
        return False
    return True


Source = tuple[str, bool]  # (qualifier, may contribute a whole table's rows)


def sources(
    item: Any,
    facts: StatementFacts,
    out: bool,
    ctes: dict[str, bool],
    found: list[Source],
    eqs: list[tuple[set[str], set[str]]],
) -> None:
    """Walk one FROM/USING item, appending its relations to ``found``.

    JOIN ... ON equalities go to ``eqs`` (they let a narrowed relation narrow its
    join partner). LATERAL sub-selects see the relations listed before them.
    """
    if type(item) is not dict:
        return
    for k, x in item.items():
        if k == "RangeVar":
            unbounded = from_range_var(x, facts, ctes)
            alias = x.get("alias")
            found.append(((alias or {}).get("aliasname") or x.get("relname", ""), unbounded))
        elif k == "RangeSubselect":
            sub = (x.get("subquery") or {}).get("SelectStmt")
            unbounded = False
            if sub is not None:
                saved = facts.scope
                if x.get("lateral"):
                    facts.scope = saved | frozenset(n for n, _ in found)
                unbounded = select(sub, facts, out, ctes, False)
                facts.scope = saved
            found.append(((x.get("alias") or {}).get("aliasname", ""), unbounded))
        elif k == "JoinExpr":
            i0 = len(found)
            sources(x.get("larg"), facts, out, ctes, found, eqs)
            i1 = len(found)
            sources(x.get("rarg"), facts, out, ctes, found, eqs)
            if x.get("usingClause") or x.get("isNatural"):  # JOIN ... USING (id) / NATURAL
                eqs.append(({n for n, _ in found[i0:i1]}, {n for n, _ in found[i1:]}))
            quals = x.get("quals")
            if quals is not None:
                saved = facts.scope
                facts.scope = saved | frozenset(n for n, _ in found)
                expressions.walk(quals, facts, False, ctes)
                facts.scope = saved
                sc = narrowing.Scope(frozenset(n for n, _ in found), saved)
                narrowing.restricted(quals, facts, ctes, sc, eqs)  # only its equalities are kept
        elif k == "RangeTableSample":
            sources(x.get("relation"), facts, out, ctes, found, eqs)
            expressions.walk(x.get("method"), facts, False, ctes)
            expressions.walk(x.get("args"), facts, False, ctes)
            expressions.walk(x.get("repeatable"), facts, False, ctes)
        else:  # functions, XMLTABLE, JSON_TABLE: bounded sources, but walk their calls
            saved = facts.scope
            facts.scope = saved | frozenset(n for n, _ in found)
            expressions.walk(item, facts, out, ctes)
            facts.scope = saved
            alias = (x.get("alias") or {}).get("aliasname", "") if type(x) is dict else ""
            found.append((alias, False))


def from_item(item: Any, facts: StatementFacts, out: bool, ctes: dict[str, bool]) -> bool:
    """Walk one FROM item; True when it may contribute a whole table's rows."""
    found: list[Source] = []
    sources(item, facts, out, ctes, found, [])
    return any(u for _, u in found)


def unbounded_after_where(
    found: list[Source],
    where: Any,
    facts: StatementFacts,
    ctes: dict[str, bool],
    eqs: list[tuple[set[str], set[str]]],
    outer: frozenset[str],
) -> bool:
    """True when some relation that may hold a whole table is not narrowed by WHERE."""
    if not any(u for _, u in found):
        return False
    sc = narrowing.Scope(frozenset(n for n, _ in found), outer)
    narrowed = narrowing.restricted(where, facts, ctes, sc, eqs) if where is not None else set()
    if eqs:
        narrowed = narrowing.propagate(narrowed, eqs)
    return any(u and n not in narrowed for n, u in found)


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


def select(
    s: dict[str, Any], facts: StatementFacts, out: bool, ctes: dict[str, bool], decide: bool
) -> bool:
    """Walk a SelectStmt. Returns True when its rows may be a whole table's rows.

    ``decide``: add ``dump`` here (top-level, sub-link) or leave it to the caller
    (set-operation arms, FROM sub-selects, CTEs), whose LIMIT may still bound it.
    """
    facts.add(READ, "select", "reads data")
    ctes = with_clause(s.get("withClause"), facts, ctes)
    op = s.get("op", "SETOP_NONE")
    if op != "SETOP_NONE":
        left = select(s.get("larg") or {}, facts, out, ctes, False)
        right = select(s.get("rarg") or {}, facts, out, ctes, False)
        unbounded = left or right
    elif "valuesLists" in s:
        expressions.walk(s["valuesLists"], facts, out, ctes)
        unbounded = False
    else:
        outer = facts.scope
        found: list[Source] = []
        eqs: list[tuple[set[str], set[str]]] = []
        for item in s.get("fromClause", ()):
            sources(item, facts, out, ctes, found, eqs)
        facts.scope = outer | frozenset(n for n, _ in found)  # visible to sub-selects
        where = s.get("whereClause")
        if where is not None:
            expressions.walk(where, facts, False, ctes)
        tl = s.get("targetList")
        expressions.walk(tl, facts, out, ctes)
        for f in ("groupClause", "havingClause", "windowClause", "distinctClause"):
            if f in s:
                expressions.walk(s[f], facts, False, ctes)
        facts.scope = outer
        unbounded = unbounded_after_where(found, where, facts, ctes, eqs, outer)
        if unbounded and narrowing.agg_kind(tl) == 1:
            unbounded = False  # count(*), sum(...): rows are reduced, not returned
    for f in ("sortClause", "limitOffset", "limitCount", "lockingClause"):
        if f in s:
            expressions.walk(s[f], facts, False, ctes)
    if unbounded and _small_limit(s, facts):
        unbounded = False
    into = s.get("intoClause")
    if into is not None:
        rel = into.get("rel") or {}
        facts.tables.add(table_key(*relname(rel)))
        facts.add(DDL, "select-into", "SELECT INTO creates a table")
        facts.add(WRITE, "select-into", "SELECT INTO writes rows into a new table")
        if unbounded:
            facts.add(DUMP, "copy-table-into-table", "copies whole tables into a new table")
    if unbounded and decide and out:
        facts.add(
            DUMP, "unbounded-select", "returns whole tables (no restricting WHERE or small LIMIT)"
        )
    return unbounded


def target_write(rv: dict[str, Any], facts: StatementFacts) -> str:
    """Record the table a DML statement writes; returns its qualifier (alias or name)."""
    schema, name = relname(rv)
    key = table_key(schema, name)
    facts.tables.add(key)
    alias = (rv.get("alias") or {}).get("aliasname")
    if alias:
        facts.aliases[alias] = key
    if is_catalog(schema, name):
        facts.add(ADMIN, "catalog-write", f"writes to the system catalog {name}")
    return alias or name


def _target_narrowed(
    target: str,
    found: list[Source],
    where: Any,
    facts: StatementFacts,
    ctes: dict[str, bool],
    eqs: list[tuple[set[str], set[str]]],
    outer: frozenset[str],
) -> bool:
    """Does WHERE narrow the rows an UPDATE/DELETE touches (only the target matters)?"""
    if where is None:
        return False
    sc = narrowing.Scope(frozenset(n for n, _ in found), outer)
    narrowed = narrowing.restricted(where, facts, ctes, sc, eqs)
    if eqs:
        narrowed = narrowing.propagate(narrowed, eqs)
    return target in narrowed


def _returning(body: dict[str, Any], facts: StatementFacts, ctes: dict[str, bool]) -> bool:
    rc = body.get("returningClause")
    exprs = rc.get("exprs") if isinstance(rc, dict) else body.get("returningList")
    if exprs:
        expressions.walk(exprs, facts, True, ctes)
        return True
    return False


def _written_columns(rel: dict[str, Any], targets: list[Any] | None, facts: StatementFacts) -> None:
    """Record ``table.column`` for the columns an INSERT/UPDATE assigns."""
    table = table_key(*relname(rel))
    for t in targets or ():
        name = (t.get("ResTarget") or {}).get("name")
        if name:
            facts.columns.add(f"{table}.{name}")


def insert(body: dict[str, Any], facts: StatementFacts, out: bool, ctes: dict[str, bool]) -> bool:
    ctes = with_clause(body.get("withClause"), facts, ctes)
    target_write(body.get("relation") or {}, facts)
    _written_columns(body.get("relation") or {}, body.get("cols"), facts)
    facts.add(WRITE, "insert", "inserts rows")
    src = body.get("selectStmt") or {}
    unbounded = False
    for k, s in src.items():
        if k == "SelectStmt" and "valuesLists" in s and s.get("op", "SETOP_NONE") == "SETOP_NONE":
            expressions.walk(s["valuesLists"], facts, True, ctes)
        else:
            unbounded = query(k, s, facts, True, ctes)
            if unbounded:
                facts.add(DUMP, "insert-select-table", "copies whole tables into another table")
    expressions.walk(body.get("onConflictClause"), facts, True, ctes)
    _returning(body, facts, ctes)
    return unbounded and ("returningClause" in body or "returningList" in body)


def _row_write(
    body: dict[str, Any], facts: StatementFacts, ctes: dict[str, bool], verb: str, sources_key: str
) -> bool:
    """UPDATE and DELETE: ``write`` when the target table is narrowed by the WHERE,
    else ``destructive``; RETURNING from an unnarrowed one is a ``dump``.

    Only the target must be narrowed: rows of FROM/USING tables are not written.
    Returns whether rows of the whole table flow out (unnarrowed RETURNING).
    """
    ctes = with_clause(body.get("withClause"), facts, ctes)
    relation = body.get("relation") or {}
    target = target_write(relation, facts)
    if verb == "update":
        _written_columns(relation, body.get("targetList"), facts)
    found: list[Source] = [(target, True)]
    eqs: list[tuple[set[str], set[str]]] = []
    for item in body.get(sources_key, ()):
        sources(item, facts, False, ctes, found, eqs)
    outer = facts.scope
    facts.scope = outer | frozenset(n for n, _ in found)
    if verb == "update":
        expressions.walk(body.get("targetList"), facts, True, ctes)
    where = body.get("whereClause")
    expressions.walk(where, facts, False, ctes)
    facts.scope = outer
    bounded = _target_narrowed(target, found, where, facts, ctes, eqs, outer)
    upper = verb.upper()
    if bounded:
        facts.add(WRITE, verb, f"{verb}s rows")
    else:
        facts.add(DESTRUCTIVE, f"{verb}-without-where", f"{upper} without a restricting WHERE")
    returns = _returning(body, facts, ctes)
    if returns and not bounded:
        facts.add(DUMP, "returning-all-rows", f"RETURNING from an unrestricted {upper}")
    return returns and not bounded


def update(body: dict[str, Any], facts: StatementFacts, out: bool, ctes: dict[str, bool]) -> bool:
    return _row_write(body, facts, ctes, "update", "fromClause")


def delete(body: dict[str, Any], facts: StatementFacts, out: bool, ctes: dict[str, bool]) -> bool:
    return _row_write(body, facts, ctes, "delete", "usingClause")


def merge(body: dict[str, Any], facts: StatementFacts, out: bool, ctes: dict[str, bool]) -> bool:
    ctes = with_clause(body.get("withClause"), facts, ctes)
    target_write(body.get("relation") or {}, facts)
    src = from_item(body.get("sourceRelation"), facts, True, ctes)
    cond = body.get("joinCondition")
    expressions.walk(cond, facts, False, ctes)
    destructive = not has_column(cond)
    inserts = False
    for w in body.get("mergeWhenClauses", ()):
        mw = w.get("MergeWhenClause") or {}
        ct = mw.get("commandType")
        if ct == "CMD_DELETE":
            destructive = True
        elif ct == "CMD_INSERT":
            inserts = True
        expressions.walk(mw.get("condition"), facts, False, ctes)
        expressions.walk(mw.get("targetList"), facts, True, ctes)
        expressions.walk(mw.get("values"), facts, True, ctes)
    if destructive:
        facts.add(DESTRUCTIVE, "merge-delete", "MERGE that deletes rows or joins on no condition")
    else:
        facts.add(WRITE, "merge", "merges rows")
    if src and inserts:
        facts.add(DUMP, "merge-insert-table", "MERGE inserting from a whole table")
    _returning(body, facts, ctes)
    return False


_DML: dict[str, Callable[[dict[str, Any], StatementFacts, bool, dict[str, bool]], bool]] = {
    "InsertStmt": insert,
    "UpdateStmt": update,
    "DeleteStmt": delete,
    "MergeStmt": merge,
}
assert {"SelectStmt", *_DML} == QUERY_NODES, "nodes.QUERY_NODES must name every query handler"
