"""FROM items: the relations of one query level, walked once for two judges.

Each item is recorded twice: for the *shape* (:mod:`~dbgate.policy.walk.narrowing`:
which relations could contribute a whole table, and the join equalities that carry a
restriction from one side to the other) and for the *proof*
(:mod:`~dbgate.policy.walk.bounds`: a :class:`~dbgate.policy.walk.bounds.Source` per
relation with its unique keys, and what each ``JOIN ... ON`` / ``USING`` pins).

Joins and proof: an inner join's ON filters both sides, a LEFT JOIN's only its right
(nullable) side — its left rows all stay — a RIGHT JOIN's only its left side, and a
FULL JOIN's neither. A join with an alias hides the relations inside it from the rest
of the level, so nothing outside it pins them. ``LATERAL`` items and table functions
run once per row of the items before them: their reads wait until those rows are
bounded (:attr:`FromClause.lateral`).
"""

from __future__ import annotations

from typing import Any

from dbgate.policy.model import READ
from dbgate.policy.walk import bounds, expressions, narrowing, queries
from dbgate.policy.walk.facts import StatementFacts
from dbgate.policy.walk.nodes import (
    Ctes,
    Reads,
    WholeTables,
    catalog_read,
    is_catalog,
    relname,
    table_key,
)

#: (qualifier, the tables whose every row it may contribute): the shape's view.
ShapeSource = tuple[str, WholeTables]


class FromClause:
    """Everything one level's FROM (or an UPDATE's FROM, a DELETE's USING) produced."""

    __slots__ = ("_names", "eqs", "found", "full_join", "lateral", "pins", "srcs")

    def __init__(self) -> None:
        self.found: list[ShapeSource] = []  # only ever appended to
        self._names: tuple[int, frozenset[str]] = (0, frozenset())
        self.eqs: list[tuple[set[str], set[str]]] = []
        self.srcs: list[bounds.Source] = []
        self.pins = bounds.Pins()
        # (how many sources precede it, its reads): LATERAL items and table functions
        self.lateral: list[tuple[int, Reads]] = []
        self.full_join = False

    def names(self) -> frozenset[str]:
        """The qualifiers found so far. Asked at every join of a chain: kept, and
        extended by the new ones only, so a chain of k joins costs k small steps
        rather than k walks over everything found before."""
        count, names = self._names
        found = self.found
        if count != len(found):
            names = names.union([n for n, _ in found[count:]])
            self._names = (len(found), names)
        return names

    def bounded_quals(self) -> set[str]:
        """Relations that hold a proven, small number of rows and no table: a VALUES
        list, a bounded sub-select. Joined to one of them, a table is restricted."""
        return {s.qual for s in self.srcs if s.table is None and s.rows is not None and s.qual}

    def add_table(
        self,
        qual: str,
        table: str | None,
        keys: tuple[frozenset[str], ...],
        columns: frozenset[str] | None = None,
    ) -> None:
        self.srcs.append(bounds.Source(qual, table, keys, columns=columns))

    def places(self, name: str) -> bool:
        """Whether an unqualified column name certainly belongs to this level: one of
        its relations is known to have such a column."""
        return any(s.columns is not None and name in s.columns for s in self.srcs)

    def finish(self, facts: StatementFacts) -> None:
        """Charge the level's table reads, once its sources are bounded."""
        reads = facts.reads
        for s in self.srcs:
            if s.table is not None:
                bounds.merge_reads(reads, {s.table: s.bound})
        for n, lateral in self.lateral:
            times: bounds.Bound = 1
            for s in self.srcs[:n]:
                times = bounds.mul(times, s.factor)
            bounds.merge_reads(reads, lateral, times)


def from_range_var(rv: dict[str, Any], facts: StatementFacts) -> WholeTables:
    """A table read in FROM (not a CTE); the tables whose every row it may contribute."""
    schema, name = relname(rv)
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


def table_columns(rv: dict[str, Any], facts: StatementFacts) -> frozenset[str] | None:
    """The columns the catalog lists for a RangeVar (None when unknown)."""
    if facts.keys is None:
        return None
    schema, name = relname(rv)
    return facts.keys.columns_of(schema, name) or None


def output_names(s: dict[str, Any], alias: dict[str, Any] | None) -> frozenset[str] | None:
    """The column names a sub-select in FROM offers: its alias's column list, else its
    target list's names (None when it has ``*`` or is not a plain SELECT/VALUES)."""
    colnames = (alias or {}).get("colnames")
    if colnames:
        return frozenset(n for c in colnames if (n := (c.get("String") or {}).get("sval")))
    if "valuesLists" in s:
        width = len(((s["valuesLists"] or [{}])[0].get("List") or {}).get("items", ()))
        return frozenset(f"column{i + 1}" for i in range(width))
    if s.get("op", "SETOP_NONE") != "SETOP_NONE":
        return None
    names = set()
    for t in s.get("targetList", ()):
        rt = t.get("ResTarget") or {}
        if "name" in rt:
            names.add(rt["name"])
            continue
        ref = (rt.get("val") or {}).get("ColumnRef")
        if ref is None:
            names.add("?column?")
            continue
        last = (ref.get("fields") or [{}])[-1]
        if "A_Star" in last:
            return None
        names.add((last.get("String") or {}).get("sval", ""))
    return frozenset(names)


def table_keys(rv: dict[str, Any], facts: StatementFacts) -> tuple[frozenset[str], ...]:
    """The unique keys the catalog lists for a RangeVar (``()`` without a catalog)."""
    if facts.keys is None:
        return ()
    schema, name = relname(rv)
    return facts.keys.keys_of(schema, name, only=not rv.get("inh", False))


def item(node: Any, facts: StatementFacts, out: bool, ctes: Ctes, fc: FromClause) -> None:
    """Walk one FROM/USING item into ``fc``."""
    if type(node) is not dict:
        return
    for k, x in node.items():
        if k == "RangeVar":
            _range_var(x, facts, ctes, fc)
        elif k == "RangeSubselect":
            _subselect(x, facts, out, ctes, fc)
        elif k == "JoinExpr":
            _join(x, facts, out, ctes, fc)
        elif k == "RangeTableSample":
            item(x.get("relation"), facts, out, ctes, fc)
            expressions.walk(x.get("method"), facts, False, ctes)
            expressions.walk(x.get("args"), facts, False, ctes)
            expressions.walk(x.get("repeatable"), facts, False, ctes)
        else:  # functions, XMLTABLE, JSON_TABLE: no table rows, but walk their calls
            reads = _per_row(node, facts, out, ctes, fc)
            fc.lateral.append((len(fc.srcs), reads))
            alias = (x.get("alias") or {}).get("aliasname", "") if type(x) is dict else ""
            fc.found.append((alias, ()))
            fc.srcs.append(bounds.Source(alias))


def _range_var(x: dict[str, Any], facts: StatementFacts, ctes: Ctes, fc: FromClause) -> None:
    schema, name = relname(x)
    qual = (x.get("alias") or {}).get("aliasname") or name
    if schema is None and name in ctes:
        cte = ctes[name]
        fc.found.append((qual, cte.whole))
        fc.srcs.append(bounds.Source(qual, rows=cte.rows))
        return
    whole = from_range_var(x, facts)
    fc.found.append((qual, whole))
    if whole:
        fc.add_table(qual, whole[0], table_keys(x, facts), table_columns(x, facts))
    else:  # a catalog relation: metadata, but any number of rows
        fc.srcs.append(bounds.Source(qual))


def _subselect(
    x: dict[str, Any], facts: StatementFacts, out: bool, ctes: Ctes, fc: FromClause
) -> None:
    sub = (x.get("subquery") or {}).get("SelectStmt")
    qual = (x.get("alias") or {}).get("aliasname", "")
    if sub is None:
        fc.found.append((qual, ()))
        fc.srcs.append(bounds.Source(qual))
        return
    saved = facts.scope
    lateral = bool(x.get("lateral"))
    if lateral:
        facts.scope = saved | fc.names()
    produced = queries.produce("SelectStmt", sub, facts, out, ctes, decide=False)
    facts.scope = saved
    if lateral:
        fc.lateral.append((len(fc.srcs), produced.reads))
    else:
        bounds.merge_reads(facts.reads, produced.reads)
    fc.found.append((qual, produced.whole))
    fc.srcs.append(
        bounds.Source(qual, rows=produced.rows, columns=output_names(sub, x.get("alias")))
    )


def _per_row(item: Any, facts: StatementFacts, out: bool, ctes: Ctes, fc: FromClause) -> Reads:
    """Walk a table function's arguments; the reads of their sub-selects (per row of
    the items before it, which it may reference)."""
    saved_scope, saved_pending = facts.scope, facts.pending
    facts.scope = saved_scope | fc.names()
    facts.pending = []
    try:
        expressions.walk(item, facts, out, ctes)
        reads: Reads = {}
        for r in facts.pending:
            bounds.merge_reads(reads, r)
    finally:
        facts.scope, facts.pending = saved_scope, saved_pending
    return reads


_JOIN_FILTERS = {"JOIN_INNER": "both", "JOIN_LEFT": "right", "JOIN_RIGHT": "left"}


def _join(x: dict[str, Any], facts: StatementFacts, out: bool, ctes: Ctes, fc: FromClause) -> None:
    i0 = len(fc.srcs)
    n0 = len(fc.found)
    item(x.get("larg"), facts, out, ctes, fc)
    i1, n1 = len(fc.srcs), len(fc.found)
    item(x.get("rarg"), facts, out, ctes, fc)
    i2 = len(fc.srcs)
    filters = _JOIN_FILTERS.get(x.get("jointype", "JOIN_INNER"))
    if filters is None:
        fc.full_join = True
        allowed: frozenset[int] = frozenset()
    elif filters == "both":
        allowed = frozenset(range(i0, i2))
    elif filters == "right":
        allowed = frozenset(range(i1, i2))
    else:
        allowed = frozenset(range(i0, i1))
    using = x.get("usingClause")
    if using or x.get("isNatural"):  # JOIN ... USING (id) / NATURAL: shape equalities
        fc.eqs.append(({n for n, _ in fc.found[n0:n1]}, {n for n, _ in fc.found[n1:]}))
    if using and i1 - i0 == 1 and i2 - i1 == 1:
        for u in using:
            col = (u.get("String") or {}).get("sval")
            if col is None:
                continue
            if i1 in allowed:
                fc.pins.edges.append(((i1, col), (i0, col)))
            if i0 in allowed:
                fc.pins.edges.append(((i0, col), (i1, col)))
    quals = x.get("quals")
    if quals is not None:
        saved = facts.scope
        facts.scope = saved | fc.names()
        expressions.walk(quals, facts, False, ctes)
        facts.scope = saved
        sc = narrowing.Scope(fc.names(), saved, len(fc.found))
        narrowing.restricted(quals, facts, ctes, sc, fc.eqs)  # only its equalities are kept
        if facts.keys is not None:
            level = bounds.Level(fc.srcs, saved, facts)
            bounds.collect(quals, level, fc.pins, allowed, lambda n: queries.memo_rows(facts, n))
    if x.get("alias"):  # (a JOIN b ...) AS j: a and b are j's now, and WHERE says j.x
        for s in fc.srcs[i0:i2]:
            s.visible = False


def from_item(item_node: Any, facts: StatementFacts, out: bool, ctes: Ctes) -> FromClause:
    """Walk one FROM item on its own (MERGE's source) and charge its reads."""
    fc = FromClause()
    item(item_node, facts, out, ctes, fc)
    return fc
