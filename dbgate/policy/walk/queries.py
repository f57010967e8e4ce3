"""Queries: SELECT and DML, wherever they nest (CTEs, sub-selects, EXPLAIN, COPY, CTAS).

Each handler returns the tables whose every row the rows it produces may hold
(:data:`~dbgate.policy.walk.nodes.WholeTables`, empty when bounded), so that the
enclosing construct decides: a top-level SELECT becomes a ``dump``, a sub-select in
FROM leaves it to the outer LIMIT, ``INSERT ... SELECT`` copies a table — and the
reason names the tables, so an agent knows what to narrow. UPDATE and DELETE are ``write`` when their target is narrowed by the WHERE
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
    Ctes,
    WholeTables,
    catalog_read,
    has_column,
    is_catalog,
    name_list,
    op_name,
    relname,
    table_key,
    value_of,
)

#: A SELECT whose row count is capped at or below this is not a bulk read ("dump").
DUMP_LIMIT_THRESHOLD = 1000


def query(
    k: str, body: dict[str, Any], facts: StatementFacts, out: bool, ctes: Ctes
) -> WholeTables:
    """Walk a query node; the tables whose every row its result may hold."""
    if k == "SelectStmt":
        return select(body, facts, out, ctes, True)
    h = _DML.get(k)
    if h is not None:
        return h(body, facts, out, ctes)
    statements.stmt_body(k, body, facts)
    return ()


def with_clause(w: dict[str, Any] | None, facts: StatementFacts, ctes: Ctes) -> Ctes:
    """Walk the CTEs of a WITH clause; the CTEs visible in its query, and what each holds."""
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
            scope[name] = ()  # self-reference inside the recursive term
        q = cte.get("ctequery") or {}
        unbounded: WholeTables = ()
        for k, body in q.items():
            if k == "SelectStmt":
                unbounded = select(body, facts, True, scope, False)
            else:
                unbounded = query(k, body, facts, True, scope)
        scope[name] = unbounded
    return scope


def from_range_var(rv: dict[str, Any], facts: StatementFacts, ctes: Ctes) -> WholeTables:
    """A table (or CTE) read in FROM; the tables whose every row it may contribute."""
    schema, name = relname(rv)
    if schema is None and name in ctes:
        return ctes[name]
    key = table_key(schema, name)
    facts.tables.add(key)
    alias = rv.get("alias")
    if alias:
        facts.aliases[alias.get("aliasname", "")] = key
    facts.add(READ, "select", "reads data with a query")
    if is_catalog(schema, name):
        catalog_read(schema, name, facts, (alias or {}).get("aliasname") or name)
        return ()
    return (key,)


Source = tuple[str, WholeTables]  # (qualifier, the tables whose every row it may contribute)


def sources(
    item: Any,
    facts: StatementFacts,
    out: bool,
    ctes: Ctes,
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
            unbounded: WholeTables = ()
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
            found.append((alias, ()))


def from_item(item: Any, facts: StatementFacts, out: bool, ctes: Ctes) -> WholeTables:
    """Walk one FROM item; the tables whose every row it may contribute."""
    found: list[Source] = []
    sources(item, facts, out, ctes, found, [])
    return tuple(t for _, u in found for t in u)


def unbounded_after_where(
    found: list[Source],
    where: Any,
    facts: StatementFacts,
    ctes: Ctes,
    eqs: list[tuple[set[str], set[str]]],
    outer: frozenset[str],
) -> WholeTables:
    """The tables whose every row may remain: those of relations WHERE does not narrow."""
    if not any(u for _, u in found):
        return ()
    sc = narrowing.Scope(frozenset(n for n, _ in found), outer)
    narrowed = narrowing.restricted(where, facts, ctes, sc, eqs) if where is not None else set()
    if eqs:
        narrowed = narrowing.propagate(narrowed, eqs)
    return tuple(t for n, u in found if n not in narrowed for t in u)


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
    s: dict[str, Any], facts: StatementFacts, out: bool, ctes: Ctes, decide: bool
) -> WholeTables:
    """Walk a SelectStmt; the tables whose every row its rows may be (empty: bounded).

    ``decide``: add ``dump`` here (top-level, sub-link) or leave it to the caller
    (set-operation arms, FROM sub-selects, CTEs), whose LIMIT may still bound it.
    """
    facts.add(READ, "select", "reads data with a query")
    ctes = with_clause(s.get("withClause"), facts, ctes)
    op = s.get("op", "SETOP_NONE")
    unbounded: WholeTables
    if op != "SETOP_NONE":
        left = select(s.get("larg") or {}, facts, out, ctes, False)
        right = select(s.get("rarg") or {}, facts, out, ctes, False)
        unbounded = left + right
    elif "valuesLists" in s:
        expressions.walk(s["valuesLists"], facts, out, ctes)
        unbounded = ()
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
        saved_rows = facts.setting_rows
        facts.setting_rows = _pg_settings_rows(s, facts)
        expressions.walk(tl, facts, out, ctes)
        facts.setting_rows = saved_rows
        for f in ("groupClause", "havingClause", "windowClause", "distinctClause"):
            if f in s:
                expressions.walk(s[f], facts, False, ctes)
        facts.scope = outer
        unbounded = unbounded_after_where(found, where, facts, ctes, eqs, outer)
        if unbounded:
            kind = narrowing.agg_kind(tl)
            names = frozenset(n for n, _ in found)
            if kind == 1 or (kind == 0 and _distinct_values_of_one_expression(s, names)):
                # count(*), sum(...): rows are reduced, not returned; and the distinct
                # values of one column are what ``x, count(*) ... GROUP BY x`` returns
                # (judged alike: docs/rules.md, "Reading whole columns").
                unbounded = ()
    for f in ("sortClause", "limitOffset", "limitCount", "lockingClause"):
        if f in s:
            expressions.walk(s[f], facts, False, ctes)
    if unbounded and _small_limit(s, facts):
        unbounded = ()
    into = s.get("intoClause")
    if into is not None:
        rel = into.get("rel") or {}
        target = table_key(*relname(rel))
        facts.tables.add(target)
        facts.add(DDL, "select-into", f"creates the table {target} (SELECT INTO)")
        facts.add(WRITE, "select-into", f"writes the query's rows into the new table {target}")
        if unbounded:
            copies_whole_tables(unbounded, target, facts)
    if unbounded and decide and out:
        facts.add(
            DUMP,
            "unbounded-select",
            f"reads every row of {name_list(unbounded)} (no WHERE that narrows it, "
            f"no LIMIT of at most {DUMP_LIMIT_THRESHOLD} rows)",
        )
    return unbounded


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


def target_write(rv: dict[str, Any], facts: StatementFacts) -> str:
    """Record the table a DML statement writes; returns its qualifier (alias or name)."""
    schema, name = relname(rv)
    key = table_key(schema, name)
    facts.tables.add(key)
    alias = (rv.get("alias") or {}).get("aliasname")
    if alias:
        facts.aliases[alias] = key
    if is_catalog(schema, name):
        facts.add(ADMIN, "catalog-write", f"writes to the system catalog table {name}")
    return alias or name


def _target_narrowed(
    target: str,
    found: list[Source],
    where: Any,
    facts: StatementFacts,
    ctes: Ctes,
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


def _returning(body: dict[str, Any], facts: StatementFacts, ctes: Ctes) -> bool:
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


def insert(body: dict[str, Any], facts: StatementFacts, out: bool, ctes: Ctes) -> WholeTables:
    """INSERT: ``write``; ``dump`` when it copies whole tables (INSERT ... SELECT)."""
    ctes = with_clause(body.get("withClause"), facts, ctes)
    relation = body.get("relation") or {}
    target = table_key(*relname(relation))
    target_write(relation, facts)
    _written_columns(relation, body.get("cols"), facts)
    facts.add(WRITE, "insert", f"inserts rows into {target}")
    src = body.get("selectStmt") or {}
    unbounded: WholeTables = ()
    for k, s in src.items():
        if k == "SelectStmt" and "valuesLists" in s and s.get("op", "SETOP_NONE") == "SETOP_NONE":
            expressions.walk(s["valuesLists"], facts, True, ctes)
        else:
            unbounded = query(k, s, facts, True, ctes)
            if unbounded:
                facts.add(
                    DUMP,
                    "insert-select-table",
                    f"copies every row of {name_list(unbounded)} into {target} "
                    f"(no WHERE that narrows it, no LIMIT of at most {DUMP_LIMIT_THRESHOLD} rows)",
                )
    expressions.walk(body.get("onConflictClause"), facts, True, ctes)
    returns = _returning(body, facts, ctes)
    return unbounded if returns else ()


def _row_write(
    body: dict[str, Any], facts: StatementFacts, ctes: Ctes, verb: str, sources_key: str
) -> WholeTables:
    """UPDATE and DELETE: ``write`` when the target table is narrowed by the WHERE,
    else ``destructive``; RETURNING from an unnarrowed one is a ``dump``.

    Only the target must be narrowed: rows of FROM/USING tables are not written.
    Returns whether rows of the whole table flow out (unnarrowed RETURNING).
    """
    ctes = with_clause(body.get("withClause"), facts, ctes)
    relation = body.get("relation") or {}
    table = table_key(*relname(relation))
    target = target_write(relation, facts)
    if verb == "update":
        _written_columns(relation, body.get("targetList"), facts)
    found: list[Source] = [(target, (table,))]
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
    if bounded:
        facts.add(WRITE, verb, f"{verb}s the rows of {table} its WHERE selects")
    else:
        facts.add(
            DESTRUCTIVE,
            f"{verb}-without-where",
            f"{verb}s every row of {table} (no WHERE that narrows it to a few rows)",
        )
    returns = _returning(body, facts, ctes)
    if returns and not bounded:
        facts.add(
            DUMP,
            "returning-all-rows",
            f"returns every row of {table} it {verb}s (RETURNING with no WHERE that narrows it)",
        )
    return (table,) if returns and not bounded else ()


def update(body: dict[str, Any], facts: StatementFacts, out: bool, ctes: Ctes) -> WholeTables:
    return _row_write(body, facts, ctes, "update", "fromClause")


def delete(body: dict[str, Any], facts: StatementFacts, out: bool, ctes: Ctes) -> WholeTables:
    return _row_write(body, facts, ctes, "delete", "usingClause")


def merge(body: dict[str, Any], facts: StatementFacts, out: bool, ctes: Ctes) -> WholeTables:
    """MERGE: ``write``; ``destructive`` when it deletes or joins on no condition."""
    ctes = with_clause(body.get("withClause"), facts, ctes)
    relation = body.get("relation") or {}
    table = table_key(*relname(relation))
    target_write(relation, facts)
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
        facts.add(
            DESTRUCTIVE,
            "merge-delete",
            f"merges into {table} with a DELETE action or a join condition that names no column",
        )
    else:
        facts.add(WRITE, "merge", f"merges rows into {table}")
    if src and inserts:
        facts.add(
            DUMP,
            "merge-insert-table",
            f"inserts every row of {name_list(src)} into {table} "
            "(a MERGE source with no WHERE that narrows it)",
        )
    _returning(body, facts, ctes)
    return ()


_DML: dict[str, Callable[[dict[str, Any], StatementFacts, bool, Ctes], WholeTables]] = {
    "InsertStmt": insert,
    "UpdateStmt": update,
    "DeleteStmt": delete,
    "MergeStmt": merge,
}
assert {"SelectStmt", *_DML} == QUERY_NODES, "nodes.QUERY_NODES must name every query handler"
