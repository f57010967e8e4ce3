"""Narrow by proof: how many rows of each table can a query level read?

:mod:`~dbgate.policy.walk.narrowing` judges the *shape* of a WHERE (does it restrict a
relation at all), which is what separates "asks for every row" (``dump``,
``destructive``) from a filtered read. Shapes are cheap to forge (``id - id = 0``,
``length(ssn) > 0``, ``id = (SELECT id)``), so a shape never lets a statement through
without a run-time limit. This module is the other half: a static *upper bound* on the
rows a level reads from each table, which exists only when the predicate pins a unique
key (docs/classifier.md, "Narrow by proof"):

* ``col = v`` and ``col IN (v, ...)`` / ``col = ANY(ARRAY[v, ...])`` where ``col`` is a
  column of a unique key (all columns of a composite key) from the
  :class:`~dbgate.policy.keys.KeyCatalog`, and each ``v`` a constant, a Bind
  parameter, a column of an enclosing query level (one value per outer row) or a cast
  of one of those (not to a floating-point type, whose equality would merge keys);
* ``col IN (SELECT ...)`` whose sub-select is proven to return at most n rows;
* ``a.k = b.x`` where ``k`` completes a unique key of ``a`` and ``b`` is itself bounded:
  each row of ``b`` meets at most one row of ``a``. Both sides must be plain columns
  of this level's relations, named unambiguously;
* AND combines pins; OR pins a column only when every arm pins it (the counts add up).

Everything else — ranges, LIKE, functions of columns, sub-selects that echo the outer
row, NATURAL joins, keys the catalog does not list — proves nothing. Without a key
catalog, no table is ever proven narrow.

Bounds are integers saturated at :data:`PROOF_ROW_LIMIT`: anything above counts as
unbounded (``None``), so ``id IN (<5,000 keys>)`` is not a proof of narrowness.
"""

from __future__ import annotations

from typing import Any

from dbgate.policy.catalog_builtin import BUILTIN_TYPES
from dbgate.policy.walk.nodes import op_name

#: A static bound above this many rows is no bound: the run-time limits decide.
PROOF_ROW_LIMIT = 1000

Bound = int | None

#: Cast targets whose equality is coarser than the key's own: float8 merges bigints,
#: and a ``varchar`` key compared with a ``bpchar`` value is compared as ``bpchar``,
#: which ignores trailing spaces (``'x'`` and ``'x  '`` are two keys and one value).
_LOSSY_CASTS = frozenset(
    {"float4", "float8", "real", "double precision", "money", "bpchar", "char", "character"}
)


def _lossy_cast(tc: dict[str, Any]) -> bool:
    """A cast to a type whose equality may merge distinct keys: one of
    :data:`_LOSSY_CASTS`, or a type PostgreSQL does not ship (``citext``, a domain, an
    extension's type), whose operators dbgate does not know."""
    names = [
        (n.get("String") or {}).get("sval", "") for n in (tc.get("typeName") or {}).get("names", ())
    ]
    if not names:
        return True
    if names[-1] in _LOSSY_CASTS:
        return True
    return (len(names) > 1 and names[-2] != "pg_catalog") or names[-1] not in BUILTIN_TYPES


def cap(n: int | None) -> Bound:
    """``n`` if it is a bound worth the name, else None."""
    return None if n is None or n > PROOF_ROW_LIMIT else n


def mul(a: Bound, b: Bound) -> Bound:
    if a is None or b is None:
        return None
    return cap(a * b)


def plus(a: Bound, b: Bound) -> Bound:
    if a is None or b is None:
        return None
    return cap(a + b)


#: Table rows read, by table: what a query level (and everything nested in it) reads.
Reads = dict[Any, Bound]


def merge_reads(into: Reads, more: Reads, times: Bound = 1) -> None:
    """Add ``more`` (read ``times`` times with different values) to ``into``."""
    for table, n in more.items():
        if n == 0:
            into.setdefault(table, 0)
            continue
        into[table] = plus(into.get(table, 0), mul(n, times))


def total(reads: Reads) -> Bound:
    """All table rows read, or None when some table is read without a bound."""
    out: Bound = 0
    for key, n in reads.items():
        if type(key) is tuple and key[0] == "lock":
            continue
        out = plus(out, n)
        if out is None:
            return None
    return out


class Source:
    """One relation of a query level's FROM, as the proof sees it.

    ``qual``: how the level may name it (alias, else the relation's name; "" when it
    cannot be named). ``table``: the table whose rows it reads (None for sub-selects,
    functions, VALUES, CTEs and catalog relations). ``keys``: its unique column sets.
    ``rows``: for a non-table source, how many rows it produces (None: unbounded).
    ``visible``: whether the level's WHERE can name it (a join with an alias hides
    the relations inside it). ``columns``: the names of its columns, when known (the
    catalog's for a table, a sub-select's output names).
    """

    __slots__ = ("bound", "columns", "factor", "keys", "qual", "rows", "table", "visible")

    def __init__(
        self,
        qual: str,
        table: str | None = None,
        keys: tuple[frozenset[str], ...] = (),
        rows: Bound = None,
        columns: frozenset[str] | None = None,
    ) -> None:
        self.qual = qual
        self.table = table
        self.keys = keys
        self.rows = rows
        self.columns = columns  # every column it has, when known (to place bare names)
        self.visible = True
        self.bound: Bound = rows if table is None else None  # rows of it the level can hold
        self.factor: Bound = self.bound  # its share of the level's row count


Column = tuple[int, str]  # (source index, column name)


class Pins:
    """What a predicate fixes: values per column, and join equalities between columns."""

    __slots__ = ("edges", "values")

    def __init__(self) -> None:
        self.values: dict[Column, int] = {}  # column -> how many values it may take
        self.edges: list[tuple[Column, Column]] = []  # (determined, determining)

    def pin(self, col: Column, count: int) -> None:
        old = self.values.get(col)
        if old is None or count < old:
            self.values[col] = count


class Level:
    """The sources of one query level and the names that resolve to them."""

    __slots__ = ("by_qual", "facts", "outer", "sources")

    def __init__(self, sources: list[Source], outer: frozenset[str], facts: Any = None) -> None:
        self.sources = sources
        # the walk's StatementFacts: a proof that reads a literal's value (not just its
        # place) marks the statement literal-sensitive, so the cache keeps it apart
        self.facts = facts
        by_qual: dict[str, int] = {}
        dup: set[str] = set()
        for i, s in enumerate(sources):
            if not s.qual or not s.visible:
                continue
            if s.qual in by_qual:
                dup.add(s.qual)
            by_qual[s.qual] = i
        for q in dup:  # ambiguous: PostgreSQL would refuse, and we pin nothing through it
            by_qual[q] = -1
        self.by_qual = by_qual
        self.outer = outer - set(by_qual)

    def column(self, node: Any, allowed: frozenset[int] | None) -> Column | None:
        """The (source, column) a plain column reference names, if unambiguous."""
        ref = node.get("ColumnRef") if type(node) is dict else None
        if ref is None:
            return None
        fields = ref.get("fields", ())
        names = [(f.get("String") or {}).get("sval") for f in fields]
        if not names or any(n is None for n in names):
            return None  # t.* and friends
        if len(names) == 1:
            visible = [i for i, s in enumerate(self.sources) if s.visible]
            if len(visible) != 1:
                return None
            i = visible[0]
            src = self.sources[i]
            # An unqualified name belongs to this level only if its relation has that
            # column; a key column is one it certainly has.
            if not any(names[0] in k for k in src.keys):
                return None
        elif len(names) == 2:
            i = self.by_qual.get(names[0], -1)
            if i < 0:
                return None
        else:
            return None
        if allowed is not None and i not in allowed:
            return None
        return (i, names[-1])

    def is_outer(self, node: Any) -> bool:
        """A column of an enclosing level: one value per row of it."""
        ref = node.get("ColumnRef") if type(node) is dict else None
        if ref is None:
            return False
        fields = ref.get("fields", ())
        if len(fields) != 2:
            return False
        q = (fields[0].get("String") or {}).get("sval")
        return q is not None and q in self.outer and "String" in fields[1]


def _single_value(node: Any, level: Level) -> bool:
    """A constant, a Bind parameter, an enclosing row's column, or a cast of one.

    Not a bare ``NULL``: under ``transform_null_equals`` the server reads ``col =
    NULL`` as ``col IS NULL``, which a unique key that allows several NULLs does not
    bound (otherwise it matches nothing, so nothing is lost by proving nothing)."""
    while type(node) is dict:
        const = node.get("A_Const")
        if const is not None:
            if const.get("isnull"):
                if level.facts is not None:  # `= NULL` must not share `= 'x'`'s entry
                    level.facts.sensitive = True
                return False
            return True
        if "ParamRef" in node:
            return True
        tc = node.get("TypeCast")
        if tc is not None:
            if _lossy_cast(tc):
                return False
            node = tc.get("arg")
            continue
        return level.is_outer(node)
    return False


def _array_count(node: Any, level: Level) -> int | None:
    """How many elements ``ANY(...)`` compares with, when they are single values."""
    if type(node) is not dict:
        return None
    tc = node.get("TypeCast")
    if tc is not None:
        if _lossy_cast(tc):  # '{1,2}'::float8[]: the element type compares
            return None
        arg = tc.get("arg")
        if type(arg) is dict and "A_Const" in arg:
            node = arg
        else:
            return _array_count(arg, level)
    arr = node.get("A_ArrayExpr")
    if arr is not None:
        elements = arr.get("elements", ())
        if all(_single_value(e, level) for e in elements):
            return len(elements)
        return None
    const = node.get("A_Const")
    if const is not None and "sval" in const:  # '{1,2,3}': at most commas + 1 elements
        if level.facts is not None:
            level.facts.sensitive = True
        return const["sval"].get("sval", "").count(",") + 1
    return None


def collect(
    where: Any,
    level: Level,
    pins: Pins,
    allowed: frozenset[int] | None,
    sub_rows: Any,
) -> None:
    """Add what ``where`` (an AND of conditions) pins to ``pins``.

    ``allowed``: the sources whose rows this condition filters (None: all). An outer
    join's ON filters only its nullable side. ``sub_rows(select_node)`` returns the
    proven row bound of a sub-select (for ``col IN (SELECT ...)``).
    """
    if type(where) is not dict:
        return
    b = where.get("BoolExpr")
    if b is not None:
        op = b.get("boolop")
        if op == "AND_EXPR":
            for a in b.get("args", ()):
                collect(a, level, pins, allowed, sub_rows)
        elif op == "OR_EXPR":
            _collect_or(b.get("args", ()), level, pins, allowed, sub_rows)
        return
    bt = where.get("BooleanTest")
    if bt is not None:
        if bt.get("booltesttype") == "IS_TRUE":
            collect(bt.get("arg"), level, pins, allowed, sub_rows)
        return
    e = where.get("A_Expr")
    if e is not None:
        _collect_expr(e, level, pins, allowed)
        return
    s = where.get("SubLink")
    if s is not None and s.get("subLinkType") == "ANY_SUBLINK":
        names = [(n.get("String") or {}).get("sval") for n in s.get("operName", ())]
        if names and names[-1] != "=":
            return
        col = level.column(s.get("testexpr"), allowed)
        sub = s.get("subselect") or {}
        if col is not None and "SelectStmt" in sub:
            n = sub_rows(sub["SelectStmt"])
            if n is not None:
                pins.pin(col, max(n, 1))


def _collect_or(
    args: Any, level: Level, pins: Pins, allowed: frozenset[int] | None, sub_rows: Any
) -> None:
    """``a = 1 OR a = 2`` pins ``a`` to two values; a column some arm leaves free is free."""
    common: dict[Column, int] | None = None
    for a in args:
        arm = Pins()
        collect(a, level, arm, allowed, sub_rows)
        if common is None:
            common = dict(arm.values)
        else:
            common = {c: n + arm.values[c] for c, n in common.items() if c in arm.values}
        if not common:
            return
    for c, n in (common or {}).items():
        if n <= PROOF_ROW_LIMIT:
            pins.pin(c, n)


def _collect_expr(
    e: dict[str, Any], level: Level, pins: Pins, allowed: frozenset[int] | None
) -> None:
    op, foreign = op_name(e.get("name"))
    if foreign or op != "=":
        return
    kind = e.get("kind", "AEXPR_OP")
    lexpr, rexpr = e.get("lexpr"), e.get("rexpr")
    if kind == "AEXPR_OP":
        lrow, rrow = _row_args(lexpr), _row_args(rexpr)
        if lrow is not None and rrow is not None and len(lrow) == len(rrow):
            for a, b in zip(lrow, rrow, strict=True):
                _equality(a, b, level, pins, allowed)
        else:
            _equality(lexpr, rexpr, level, pins, allowed)
    elif kind == "AEXPR_IN":
        items = (rexpr or {}).get("List", {}).get("items") if type(rexpr) is dict else rexpr
        if type(items) is not list or not items:
            return
        lrow = _row_args(lexpr)
        if lrow is None:
            col = level.column(lexpr, allowed)
            if col is not None and all(_single_value(v, level) for v in items):
                pins.pin(col, len(items))
            return
        rows = [_row_args(v) for v in items]  # (a, b) IN ((1, 2), (3, 4))
        for i, left in enumerate(lrow):
            col = level.column(left, allowed)
            if col is not None and all(
                r is not None and len(r) == len(lrow) and _single_value(r[i], level) for r in rows
            ):
                pins.pin(col, len(items))
    elif kind == "AEXPR_OP_ANY":
        col = level.column(lexpr, allowed)
        if col is not None:
            n = _array_count(rexpr, level)
            if n is not None:
                pins.pin(col, max(n, 1))


def _row_args(node: Any) -> list[Any] | None:
    row = node.get("RowExpr") if type(node) is dict else None
    return row.get("args", []) if row is not None else None


def _equality(a: Any, b: Any, level: Level, pins: Pins, allowed: frozenset[int] | None) -> None:
    ca = level.column(a, None)
    cb = level.column(b, None)
    if ca is not None and cb is not None:
        if ca[0] != cb[0]:  # a join equality: each side determines the other's column
            if allowed is None or ca[0] in allowed:
                pins.edges.append((ca, cb))
            if allowed is None or cb[0] in allowed:
                pins.edges.append((cb, ca))
        return
    if ca is not None and (allowed is None or ca[0] in allowed) and _single_value(b, level):
        pins.pin(ca, 1)
    elif cb is not None and (allowed is None or cb[0] in allowed) and _single_value(a, level):
        pins.pin(cb, 1)


def solve(sources: list[Source], pins: Pins) -> Bound:
    """Bound every table source (``Source.bound``) and return the level's row count.

    A table is bounded when one of its unique keys has every column pinned to a few
    values or equal to a column of an already bounded relation. Its *bound* (rows of
    it the level can hold) multiplies each key column's candidates; its *factor* (its
    share of the level's row count, given the relations it joins to) counts only the
    columns pinned to values. The level holds at most the product of the factors.
    """
    by_col: dict[Column, list[Column]] = {}
    for determined, determining in pins.edges:
        by_col.setdefault(determined, []).append(determining)
    changed = True
    while changed:
        changed = False
        for i, s in enumerate(sources):
            if s.table is None or s.bound is not None:
                continue
            best: tuple[Bound, Bound] | None = None
            for key in s.keys:
                bound: Bound = 1
                factor: Bound = 1
                for c in key:
                    n = pins.values.get((i, c))
                    joined = min(
                        (
                            b
                            for j, jc in by_col.get((i, c), ())
                            if (b := sources[j].bound) is not None
                        ),
                        default=None,
                    )
                    if joined is not None:
                        bound = mul(bound, joined if n is None else min(n, joined))
                    elif n is not None:
                        bound = mul(bound, n)
                        factor = mul(factor, n)
                    else:
                        bound = None
                    if bound is None:
                        break
                if bound is not None and (best is None or (factor or 0) < (best[1] or 0)):
                    best = (bound, factor)
            if best is not None:
                s.bound, s.factor = best
                changed = True
    rows: Bound = 1
    for s in sources:
        rows = mul(rows, s.factor)
    return rows
