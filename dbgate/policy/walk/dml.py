"""INSERT, UPDATE, DELETE and MERGE: what they change, and how much of it is proven.

The shape decides the category: UPDATE and DELETE are ``write`` when their WHERE
restricts the target table at all (:mod:`~dbgate.policy.walk.narrowing`) and
``destructive`` when not; a MERGE is judged action by action, each WHEN as the
UPDATE/DELETE/INSERT it is with the ON condition as its predicate (``WHEN NOT MATCHED
BY SOURCE`` acts on every target row the source does not name: ``destructive``).

The proof (:mod:`~dbgate.policy.walk.bounds`) bounds the rows changed
(``StatementFacts.writes``): an UPDATE/DELETE whose WHERE pins a unique key of the
target, a MERGE whose ON pins one (to values, or to the columns of a bounded source),
an INSERT of a VALUES list or of a bounded query. Anything else changes an unbounded
number of rows, which the run-time ``max_rows_changed`` measures. ``RETURNING`` reads
the changed rows; ``INSERT ... SELECT`` and MERGE's source read their rows like any
query.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dbgate.policy.model import ADMIN, DESTRUCTIVE, DUMP, WRITE
from dbgate.policy.walk import bounds, expressions, narrowing, queries, sources
from dbgate.policy.walk.facts import StatementFacts
from dbgate.policy.walk.nodes import (
    Ctes,
    Produced,
    has_column,
    is_catalog,
    name_list,
    relname,
    table_key,
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


def _changes(facts: StatementFacts, body: dict[str, Any], table: str, rows: bounds.Bound) -> None:
    """Charge rows changed in ``table``; a DML that is not the statement itself (a WITH
    member, EXPLAIN ANALYZE) changes rows its command tag does not count."""
    facts.writes[table] = bounds.plus(facts.writes.get(table, 0), rows)
    if body is not facts.top:
        facts.uncounted_writes = True


def _cascades(relation: dict[str, Any], facts: StatementFacts, deletes: bool, targets: Any) -> None:
    """Rows of other tables that deleting or updating rows of ``relation`` deletes or
    changes through their foreign keys (``ON DELETE CASCADE``, ``SET NULL``, ``SET
    DEFAULT``, and the same ``ON UPDATE`` of the referenced columns), or that its rewrite
    rules change: the command tag does not count them and no key bounds them, so a
    change limit cannot measure them. Known only from a key catalog
    (``Relation.cascades_delete``, ``cascade_update_columns``, ``has_rules``); an
    INSERT passes ``deletes=False`` and the columns an ON CONFLICT DO UPDATE sets."""
    if facts.keys is None:
        return
    schema, name = relname(relation)
    rel = facts.keys.relation(schema, name)
    if rel is None:
        return
    table = table_key(schema, name)
    if rel.has_rules:
        why = (
            f"writes {table}, whose rewrite rules (CREATE RULE) run their own statements "
            "instead of or besides it: what they change its command tag does not count"
        )
    else:
        updated = {(t.get("ResTarget") or {}).get("name") for t in targets or () if type(t) is dict}
        if not ((deletes and rel.cascades_delete) or updated & rel.cascade_update_columns):
            return
        why = (
            f"{'deletes' if deletes and rel.cascades_delete else 'updates'} rows of {table} "
            "that other tables' foreign keys follow (ON DELETE/UPDATE CASCADE, SET NULL or "
            "SET DEFAULT): it changes their rows too, which its command tag does not count"
        )
    facts.writes[f"\x00cascade{len(facts.writes)}"] = None
    facts.uncounted_writes = True
    facts.add(WRITE, "cascading-write", why)


def _returning(
    body: dict[str, Any], facts: StatementFacts, ctes: Ctes, table: str, rows: bounds.Bound
) -> bool:
    """RETURNING: a read of the changed rows (and of what its expressions read, per row)."""
    rc = body.get("returningClause")
    exprs = rc.get("exprs") if isinstance(rc, dict) else body.get("returningList")
    if not exprs:
        return False
    saved = facts.pending
    facts.pending = []
    expressions.walk(exprs, facts, True, ctes)
    for reads in facts.pending:
        bounds.merge_reads(facts.reads, reads, rows)
    facts.pending = saved
    bounds.merge_reads(facts.reads, {table: rows})
    return True


def _written_columns(rel: dict[str, Any], targets: list[Any] | None, facts: StatementFacts) -> None:
    """Record ``table.column`` for the columns an INSERT/UPDATE assigns."""
    table = table_key(*relname(rel))
    for t in targets or ():
        name = (t.get("ResTarget") or {}).get("name")
        if name:
            facts.columns.add(f"{table}.{name}")


def _per_row(facts: StatementFacts, walk: Callable[[], None], rows: bounds.Bound) -> None:
    """Walk expressions evaluated once per changed row; their sub-selects' reads count
    ``rows`` times."""
    saved = facts.pending
    facts.pending = []
    try:
        walk()
        for reads in facts.pending:
            bounds.merge_reads(facts.reads, reads, rows)
    finally:
        facts.pending = saved


def insert(body: dict[str, Any], facts: StatementFacts, out: bool, ctes: Ctes) -> Produced:
    """INSERT: ``write``; ``dump`` when it copies whole tables (INSERT ... SELECT)."""
    ctes = queries.with_clause(body.get("withClause"), facts, ctes)
    relation = body.get("relation") or {}
    target = table_key(*relname(relation))
    target_write(relation, facts)
    _written_columns(relation, body.get("cols"), facts)
    facts.add(WRITE, "insert", f"inserts rows into {target}")
    src = body.get("selectStmt")
    rows: bounds.Bound = 1  # DEFAULT VALUES
    whole: tuple[str, ...] = ()
    for k, s in (src or {}).items():
        if k == "SelectStmt" and "valuesLists" in s and s.get("op", "SETOP_NONE") == "SETOP_NONE":
            rows = bounds.cap(len(s["valuesLists"]))
            _per_row(facts, lambda s=s: expressions.walk(s["valuesLists"], facts, True, ctes), 1)
        else:
            produced = queries.run(k, s, facts, True, ctes, decide=False)
            rows, whole = produced.rows, produced.whole
            if whole:
                facts.add(
                    DUMP,
                    "insert-select-table",
                    f"copies every row of {name_list(whole)} into {target} (no WHERE that "
                    f"narrows it, no LIMIT of at most {queries.DUMP_LIMIT_THRESHOLD} rows)",
                )
    _changes(facts, body, target, rows)
    conflict = body.get("onConflictClause")
    if type(conflict) is dict and conflict.get("action") == "ONCONFLICT_UPDATE":
        _cascades(relation, facts, False, conflict.get("targetList"))
    else:
        _cascades(relation, facts, False, None)
    _per_row(facts, lambda: expressions.walk(conflict, facts, True, ctes), rows)
    returns = _returning(body, facts, ctes, target, rows)
    return Produced(whole if returns else (), rows if returns else 0)


def _row_write(
    body: dict[str, Any], facts: StatementFacts, ctes: Ctes, verb: str, sources_key: str
) -> Produced:
    """UPDATE and DELETE: ``write`` when the WHERE restricts the target table at all,
    else ``destructive``; RETURNING from an unrestricted one is a ``dump``. The rows
    changed are bounded when the WHERE pins a unique key of the target."""
    ctes = queries.with_clause(body.get("withClause"), facts, ctes)
    relation = body.get("relation") or {}
    table = table_key(*relname(relation))
    target = target_write(relation, facts)
    if verb == "update":
        _written_columns(relation, body.get("targetList"), facts)
    fc = sources.FromClause()
    fc.found.append((target, (table,)))
    fc.add_table(target, None, sources.table_keys(relation, facts))
    for item in body.get(sources_key, ()):
        sources.item(item, facts, False, ctes, fc)
    outer = facts.scope
    facts.scope = outer | fc.names()
    saved = facts.pending
    facts.pending = []
    where = body.get("whereClause")
    if verb == "update":
        expressions.walk(body.get("targetList"), facts, True, ctes)
    expressions.walk(where, facts, False, ctes)
    facts.scope = outer
    if where is not None and facts.keys is not None:  # without keys no pin proves anything
        level = bounds.Level(fc.srcs, outer, facts)
        bounds.collect(where, level, fc.pins, None, lambda n: queries.memo_rows(facts, n))
    fc.srcs[0].table = table  # bounded like a table, but its reads are the RETURNING's
    bounds.solve(fc.srcs, fc.pins)
    fc.srcs[0].table = None
    changed = fc.srcs[0].bound
    fc.finish(facts)
    for reads in facts.pending:
        bounds.merge_reads(facts.reads, reads, changed)
    facts.pending = saved
    _changes(facts, body, table, changed)
    _cascades(relation, facts, verb == "delete", body.get("targetList"))
    restricted = _target_narrowed(target, fc, where, facts, ctes, outer)
    if restricted:
        facts.add(WRITE, verb, f"{verb}s the rows of {table} its WHERE selects")
    else:
        facts.add(
            DESTRUCTIVE,
            f"{verb}-without-where",
            f"{verb}s every row of {table} (no WHERE that narrows it to a few rows)",
        )
    returns = _returning(body, facts, ctes, table, changed)
    if returns and not restricted:
        facts.add(
            DUMP,
            "returning-all-rows",
            f"returns every row of {table} it {verb}s (RETURNING with no WHERE that narrows it)",
        )
    return Produced((table,) if returns and not restricted else (), changed if returns else 0)


def _target_narrowed(
    target: str,
    fc: sources.FromClause,
    where: Any,
    facts: StatementFacts,
    ctes: Ctes,
    outer: frozenset[str],
) -> bool:
    """Does WHERE restrict the rows an UPDATE/DELETE touches (only the target matters)?"""
    if where is None:
        return False
    sc = narrowing.Scope(fc.names(), outer, len(fc.found))
    narrowed = narrowing.restricted(where, facts, ctes, sc, fc.eqs)
    if fc.eqs:
        narrowed = narrowing.propagate(narrowed | fc.bounded_quals(), fc.eqs)
    return target in narrowed


def update(body: dict[str, Any], facts: StatementFacts, out: bool, ctes: Ctes) -> Produced:
    _current_of(body, facts)
    return _row_write(body, facts, ctes, "update", "fromClause")


def delete(body: dict[str, Any], facts: StatementFacts, out: bool, ctes: Ctes) -> Produced:
    _current_of(body, facts)
    return _row_write(body, facts, ctes, "delete", "usingClause")


def _current_of(body: dict[str, Any], facts: StatementFacts) -> None:
    """``WHERE CURRENT OF c`` writes the row the session's cursor ``c`` stands on:
    what it means depends on that cursor (the PII gate holds it when PII chose the
    cursor's rows), so its verdict is never remembered for the text."""
    where = body.get("whereClause")
    if isinstance(where, dict) and "CurrentOfExpr" in where:
        facts.uncacheable = True


_MATCHED = "MERGE_WHEN_MATCHED"
_BY_SOURCE = "MERGE_WHEN_NOT_MATCHED_BY_SOURCE"


def merge(body: dict[str, Any], facts: StatementFacts, out: bool, ctes: Ctes) -> Produced:
    """MERGE: each WHEN action judged as the statement it is, with ON as its predicate.

    * ``WHEN MATCHED THEN UPDATE/DELETE``: like ``UPDATE/DELETE ... WHERE <ON>``: a
      ``write`` when ON restricts the target (by values, or by equality with a source
      that is itself restricted), else ``destructive``;
    * ``WHEN NOT MATCHED BY SOURCE THEN UPDATE/DELETE``: every target row the source
      does not name — ``destructive``, unbounded;
    * ``WHEN NOT MATCHED THEN INSERT``: ``INSERT ... SELECT`` from the source, a
      ``dump`` when the source is a whole table.
    """
    ctes = queries.with_clause(body.get("withClause"), facts, ctes)
    relation = body.get("relation") or {}
    table = table_key(*relname(relation))
    target = target_write(relation, facts)
    fc = sources.FromClause()
    fc.found.append((target, (table,)))
    fc.add_table(target, None, sources.table_keys(relation, facts))
    sources.item(body.get("sourceRelation"), facts, True, ctes, fc)
    target_only = frozenset({0})  # ON never filters the source: NOT MATCHED reads it all
    source_whole = tuple(t for _, u in fc.found[1:] for t in u)
    source_rows: bounds.Bound = 1
    for s in fc.srcs[1:]:
        source_rows = bounds.mul(source_rows, s.factor)  # the source as it stands
    cond = body.get("joinCondition")
    outer = facts.scope
    facts.scope = outer | fc.names()
    saved = facts.pending
    facts.pending = []
    expressions.walk(cond, facts, False, ctes)
    if facts.keys is not None:
        level = bounds.Level(fc.srcs, outer, facts)
        bounds.collect(cond, level, fc.pins, target_only, lambda n: queries.memo_rows(facts, n))
    fc.srcs[0].table = table
    bounds.solve(fc.srcs, fc.pins)
    fc.srcs[0].table = None
    matched = fc.srcs[0].bound
    restricted = has_column(cond) and _target_narrowed(target, fc, cond, facts, ctes, outer)
    changed: bounds.Bound = 0
    deletes = destroys = inserts = False
    for w in body.get("mergeWhenClauses", ()):
        mw = w.get("MergeWhenClause") or {}
        kind, command = mw.get("matchKind", _MATCHED), mw.get("commandType")
        if command == "CMD_NOTHING":
            continue
        if command == "CMD_INSERT":
            inserts = True
            changed = bounds.plus(changed, source_rows)
        elif kind == _BY_SOURCE:
            destroys = True
            changed = None
        else:
            deletes |= command == "CMD_DELETE"
            destroys |= not restricted
            changed = bounds.plus(changed, matched)
        if command in ("CMD_DELETE", "CMD_UPDATE"):
            _cascades(relation, facts, command == "CMD_DELETE", mw.get("targetList"))
        expressions.walk(mw.get("condition"), facts, False, ctes)
        expressions.walk(mw.get("targetList"), facts, True, ctes)
        expressions.walk(mw.get("values"), facts, True, ctes)
    facts.scope = outer
    fc.finish(facts)
    for reads in facts.pending:
        bounds.merge_reads(facts.reads, reads, changed)
    facts.pending = saved
    if destroys:
        facts.add(
            DESTRUCTIVE,
            "merge-all-rows",
            f"merges into {table} with an UPDATE or DELETE action that reaches every row "
            "(an ON condition that does not restrict it, or WHEN NOT MATCHED BY SOURCE)",
        )
    else:
        verb = "merges rows into" if not deletes else "merges rows into (and deletes from)"
        facts.add(WRITE, "merge", f"{verb} {table}")
    if source_whole and inserts:
        facts.add(
            DUMP,
            "merge-insert-table",
            f"inserts every row of {name_list(source_whole)} into {table} "
            "(a MERGE source with no WHERE that narrows it)",
        )
    _changes(facts, body, table, changed)
    returns = _returning(body, facts, ctes, table, changed)
    return Produced((), changed if returns else 0)


HANDLERS: dict[str, Callable[[dict[str, Any], StatementFacts, bool, Ctes], Produced]] = {
    "InsertStmt": insert,
    "UpdateStmt": update,
    "DeleteStmt": delete,
    "MergeStmt": merge,
}
