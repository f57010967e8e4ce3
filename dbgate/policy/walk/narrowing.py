"""Shape: which relations of a query level does its WHERE restrict at all?

This is what separates a statement that asks for every row of a table (``dump``, an
UPDATE/DELETE that is ``destructive``) from one that filters them (``read``,
``write``). It is judged from the shape of the SQL, which is cheap to forge
(``id - id = 0`` restricts nothing, yet looks like a filter), so a shape only ever
makes a statement *stricter*: whether a filtered statement is narrow is proven by
:mod:`~dbgate.policy.walk.bounds`, or measured at run time. docs/classifier.md ("What
is a dump") states the rules; this module is their implementation. A sub-select that
decides a restriction (``id IN (SELECT ...)``) was walked, and remembered, by the
normal walk before this runs (:func:`dbgate.policy.walk.queries.nested_query`).
"""

from __future__ import annotations

from typing import Any

from dbgate.policy import functions as _fn
from dbgate.policy.walk import queries
from dbgate.policy.walk.facts import StatementFacts
from dbgate.policy.walk.nodes import Ctes, op_name, strs

#: Operators that keep (nearly) every row: ``id <> 5`` or ``NOT LIKE`` restrict nothing.
_NEGATIVE_OPS = frozenset({"<>", "!=", "!~~", "!~~*", "!~", "!~*"})


class Scope:
    """The relations of one query level, for deciding which of them a WHERE narrows.

    ``names``: qualifiers of this level's FROM items (alias, else table name).
    ``outer``: qualifiers of enclosing levels — inside a correlated sub-select or a
    LATERAL item, ``o.id`` is a per-row value, so ``p.order_id = o.id`` narrows ``p``.
    """

    __slots__ = ("names", "outer", "single")

    def __init__(self, names: frozenset[str], outer: frozenset[str], count: int = 0) -> None:
        self.names = names
        self.outer = outer - names
        # An unqualified column belongs to the level's only relation. Two unaliased
        # sub-selects share the qualifier "", so count relations, not names.
        self.single = next(iter(names)) if len(names) == 1 and count <= 1 else None


def _cols(v: Any, sc: Scope, quals: set[str]) -> bool:
    """Whether ``v`` mentions a column of this level (outside sub-selects).

    Adds to ``quals`` the relations those columns belong to, where known: the
    qualifier, or the only relation of the level for an unqualified column.
    """
    if type(v) is dict and len(v) == 1:  # fast paths for the common operands
        if "A_Const" in v or "ParamRef" in v:
            return False
        cr = v.get("ColumnRef")
        if cr is not None:
            fields = cr.get("fields", ())
            if len(fields) >= 2:
                q = (fields[-2].get("String") or {}).get("sval", "")
                if q in sc.outer:
                    return False
                if q in sc.names:
                    quals.add(q)
            elif sc.single is not None:
                quals.add(sc.single)
            return True
    found = False
    stack = [v]
    while stack:
        x = stack.pop()
        if type(x) is list:
            stack.extend(x)
            continue
        if type(x) is not dict:
            continue
        for k, y in x.items():
            if k == "ColumnRef":
                fields = y.get("fields", ())
                if len(fields) >= 2:
                    q = (fields[-2].get("String") or {}).get("sval", "")
                    if q in sc.outer:
                        continue  # an enclosing row's value
                    found = True
                    if q in sc.names:
                        quals.add(q)
                else:
                    found = True
                    if sc.single is not None:
                        quals.add(sc.single)
            elif k == "CurrentOfExpr":
                found = True
                quals.update(sc.names)
            elif k == "SubLink":
                stack.append(y.get("testexpr"))
            elif k != "SelectStmt" and type(y) in (dict, list):
                stack.append(y)
    return found


def restricted(
    where: Any,
    facts: StatementFacts,
    ctes: Ctes,
    sc: Scope,
    eqs: list[tuple[set[str], set[str]]] | None,
) -> set[str]:
    """Which relations of this level does ``where`` narrow to a few rows?

    * AND narrows what any arm narrows; OR what every arm narrows; NOT nothing.
    * A comparison narrows the relation whose column stands alone on one side against
      a value (``id = $1``, ``email LIKE 'a%'``, ``created_at > now() - interval '1
      day'``, ``p.order_id = o.id`` with ``o`` from an enclosing level). Negative
      operators (``<>``, ``NOT LIKE``, ``NOT IN``, ``IS DISTINCT FROM``) never narrow.
    * ``a.x = b.y`` between two relations of this level narrows nothing by itself but is
      recorded in ``eqs``: a join key equal to a narrowed relation's narrows the other.
    * ``x IN (SELECT ...)`` narrows only when the sub-select is bounded; ``EXISTS`` never
      (uncorrelated it keeps every row); ``IS NULL`` narrows, ``IS NOT NULL`` does not.
    * A bare boolean column or function call narrows the relations it mentions
      (``WHERE active``); ``(cond) IS TRUE`` narrows like ``cond``; CASE, COALESCE,
      ``IS NOT TRUE`` and other constructs that can be true for every row do not.
    Documented limitation: a range such as ``id > 0`` counts as narrowing.
    """
    if type(where) is not dict:
        return set()
    for k, x in where.items():
        if k == "BoolExpr":
            args = x.get("args", [])
            op = x.get("boolop")
            if op == "AND_EXPR":
                out: set[str] = set()
                for a in args:
                    out |= restricted(a, facts, ctes, sc, eqs)
                return out
            if op == "OR_EXPR":
                sets = [restricted(a, facts, ctes, sc, None) for a in args]
                return set.intersection(*sets) if sets else set()
            return set()
        if k == "A_Expr":
            kind = x.get("kind", "AEXPR_OP")
            if kind in ("AEXPR_DISTINCT", "AEXPR_NOT_BETWEEN", "AEXPR_NOT_BETWEEN_SYM"):
                return set()
            op, _ = op_name(x.get("name"))
            if op in _NEGATIVE_OPS:
                return set()
            lq: set[str] = set()
            rq: set[str] = set()
            lh = _cols(x.get("lexpr"), sc, lq)
            rh = _cols(x.get("rexpr"), sc, rq)
            if lh and not rh:
                return lq if _values_bounded(x.get("rexpr"), facts, ctes, sc) else set()
            if rh and not lh:
                return rq if _values_bounded(x.get("lexpr"), facts, ctes, sc) else set()
            if lh and rh and op == "=" and eqs is not None and lq and rq:
                eqs.append((lq, rq))
            return set()
        if k == "SubLink":
            kind = x.get("subLinkType")
            if kind == "EXISTS_SUBLINK":
                return set()
            if kind != "ANY_SUBLINK":
                q: set[str] = set()
                _cols(where, sc, q)
                return q
            names = strs(x.get("operName"))
            if names and names[-1] in _NEGATIVE_OPS:
                return set()
            sub = (x.get("subselect") or {}).get("SelectStmt")
            if sub is None:
                return set()
            q = set()
            if not _whole(sub, facts, ctes, sc):
                _cols(x.get("testexpr"), sc, q)
            return q
        if k == "NullTest":
            q = set()
            if x.get("nulltesttype") == "IS_NULL":
                _cols(x.get("arg"), sc, q)
            return q
        if k == "BooleanTest":  # (cond) IS TRUE narrows like cond; IS NOT TRUE etc. do not
            if x.get("booltesttype") in ("IS_TRUE", "IS_NOT_FALSE"):
                return restricted(x.get("arg"), facts, ctes, sc, None)
            return set()
        if k == "TypeCast":
            return restricted(x.get("arg"), facts, ctes, sc, None)
        if k == "CurrentOfExpr":  # WHERE CURRENT OF cursor: one row
            return set(sc.names)
        if k in ("ColumnRef", "FuncCall"):  # WHERE active, WHERE starts_with(email, 'a')
            q = set()
            _cols(where, sc, q)
            return q
        return set()  # CASE, COALESCE, ...: can be true for every row
    return set()


def _whole(sub: dict[str, Any], facts: StatementFacts, ctes: Ctes, sc: Scope) -> bool:
    """Whether a sub-select may return every row of some table (by its shape).

    The normal walk has already seen it (WHERE and ON are walked before they are
    judged), so this is a lookup; a sub-select it has not seen is walked now, once.
    """
    produced = facts.memo.get(id(sub))
    if produced is None:
        saved = facts.scope
        facts.scope = sc.names | sc.outer
        produced = queries.nested_query("SelectStmt", sub, facts, False, ctes)
        facts.scope = saved
    return bool(produced.whole)


def _values_bounded(v: Any, facts: StatementFacts, ctes: Ctes, sc: Scope) -> bool:
    """False when the value side of a comparison is fed by an unbounded sub-select.

    ``id = ANY(ARRAY(SELECT id FROM customers))`` compares with every id there is.
    """
    if type(v) is dict and len(v) == 1 and ("A_Const" in v or "ParamRef" in v or "ColumnRef" in v):
        return True  # the common operands: nothing nested
    stack = [v]
    while stack:
        x = stack.pop()
        if type(x) is list:
            stack.extend(x)
            continue
        if type(x) is not dict:
            continue
        for k, y in x.items():
            if k == "SubLink":
                sub = (y.get("subselect") or {}).get("SelectStmt")
                if sub is not None and _whole(sub, facts, ctes, sc):
                    return False
            elif type(y) in (dict, list):
                stack.append(y)
    return True


def propagate(narrowed: set[str], eqs: list[tuple[set[str], set[str]]]) -> set[str]:
    """Close ``narrowed`` over join equalities (``o.customer_id = c.id``)."""
    changed = True
    while changed:
        changed = False
        for a, b in eqs:
            if a & narrowed and not b <= narrowed:
                narrowed |= b
                changed = True
            elif b & narrowed and not a <= narrowed:
                narrowed |= a
                changed = True
    return narrowed


#: (name, schema or None, windowed) of one call of a query level, outside its
#: sub-selects (collected by the walk: ``StatementFacts.calls``); ("JSON_ARRAYAGG",
#: None, windowed) for the SQL/JSON aggregates, which are not FuncCall nodes.
Call = tuple[str, str | None, bool]


def agg_kind(found: list[Call]) -> int:
    """0: no aggregate; 1: only reducing aggregates; 2: a collecting aggregate
    (array_agg ...), among ``found`` (window functions are not aggregation)."""
    kind = 0
    for name, schema, windowed in found:
        if windowed or schema not in (None, "pg_catalog"):
            continue
        if name in _fn.COLLECTING_CALLS or name in ("JSON_ARRAYAGG", "JSON_OBJECTAGG"):
            return 2
        if name in _fn.REDUCING_AGGREGATES:
            kind = 1
    return kind


def collecting(found: list[Call]) -> str | None:
    """The first aggregate among ``found`` that collects its input rather than
    reducing it (``string_agg``, ``array_agg``, ``json_agg`` ..., as a window function
    too), or None."""
    for name, schema, _ in found:
        if schema in (None, "pg_catalog") and (
            name in _fn.COLLECTING_CALLS or name in ("JSON_ARRAYAGG", "JSON_OBJECTAGG")
        ):
            return name
    return None


def returns_sets(found: list[Call]) -> bool:
    """Whether a target list's calls include a set-returning function (``generate_series``,
    ``unnest`` ...): the level then returns any number of rows. A function dbgate does
    not know could be one."""
    for name, schema, _ in found:
        if name in ("JSON_ARRAYAGG", "JSON_OBJECTAGG"):
            continue
        if schema not in (None, "pg_catalog") or name in _fn.SET_RETURNING:
            return True
        if name not in _fn.BUILTIN_NAMES and name not in _fn.BUILTIN_TYPES:
            return True
    return False
