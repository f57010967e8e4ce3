"""What a SELECT level's clauses ask of its rows, read from the parse tree and the
column references alone (no walk state): whether a predicate is a whole-value guess or
equality, whether a select list aggregates, which references ask each row its own
question, and which level encloses which. :mod:`.queries` decides with them.
"""

from __future__ import annotations

from dbgate.pii.lin import CLEAN, Lin
from dbgate.pii.lineage.nodes import Node, lossless_cast, strs
from dbgate.pii.lineage.scope import Item, Ref, Scope
from dbgate.policy.catalog_builtin import AGGREGATES


def kinds(refs: list[Ref], scope: Scope) -> list[Ref]:
    """The column references a nested set operation's branches read at one output, as
    the comparison around it judges them: every outer level's (a correlated one), and
    of the rest one of each kind (clean or PII, a stored row's or a query's, another
    row than the first or not, a whole row or a column) — what ``Queries.chose``
    tells apart — so that a chain of set operations costs no more than its branches."""
    if len(refs) <= 4:
        return refs
    kept: list[Ref] = []
    seen: set[tuple[bool, bool, bool, bool]] = set()
    first = refs[0][1]
    for ref in refs:
        if encloses(ref[0], scope):
            kept.append(ref)
            continue
        lin = ref[2]
        key = (ref[1] is first, lin.pii or lin.unknown, ref[1].schema is None, ref[3] == "*")
        if key not in seen:
            seen.add(key)
            kept.append(ref)
    return kept


def sublink_of(node: Node) -> Node | None:
    """The sub-select a predicate consists of, perhaps negated (``EXISTS (...)``,
    ``NOT EXISTS (...)``, ``x NOT IN (...)``)."""
    while "BoolExpr" in node and node["BoolExpr"].get("boolop") == "NOT_EXPR":
        args = node["BoolExpr"].get("args") or ()
        if len(args) != 1:
            return None
        node = args[0]
    return node.get("SubLink")


def encloses(level: Scope, scope: Scope) -> bool:
    """Whether ``level`` is a query level around ``scope`` (not ``scope`` itself)."""
    s = scope.parent
    while s is not None:
        if s is level:
            return True
        s = s.parent
    return False


def all_but_each(lins: list[Lin]) -> list[Lin]:
    """For each position, the union of every other position's lineage (what the other
    branches of a set operation bring), in one pass each way."""
    before = [CLEAN]
    for lin in lins[:-1]:
        before.append(before[-1] | lin)
    after = [CLEAN]
    for lin in reversed(lins[1:]):
        after.append(after[-1] | lin)
    after.reverse()
    return [b | a for b, a in zip(before, after, strict=True)]


def asks_each_row(refs: list[Ref]) -> bool:
    """Whether a predicate over one table row's columns reads a clean column of it
    besides PII, or the whole row: the clean value may pick which piece of the PII
    each row answers for (see ``Queries.choose``)."""
    clean = pii = False
    for ref in refs:
        if ref[3] == "*":
            return True
        lin = ref[2]
        if lin.pii or lin.unknown:
            pii = True
        else:
            clean = True
    return clean and pii


def aggregates(body: Node) -> bool:
    """Whether a SELECT aggregates its rows: GROUP BY, HAVING, or an aggregate or
    window call in its select list, outside sub-selects."""
    if body.get("groupClause") or body.get("havingClause"):
        return True
    return _has_aggregate(body.get("targetList"))


def _has_aggregate(node: object) -> bool:
    """Whether ``node`` calls an aggregate or window function outside sub-selects.

    A walk over the parse tree's dicts and lists only (every SELECT level asks it of
    its select list, on every cold plan): scalars are never visited."""
    pending = [node]
    pop, push, extend = pending.pop, pending.append, pending.extend
    while pending:
        n = pop()
        if type(n) is list:
            extend(n)
            continue
        if type(n) is not dict:
            continue
        for kind, body in n.items():
            t = type(body)
            if t is dict:
                if kind in _OTHER_LEVELS:
                    continue
                if kind == "FuncCall":
                    if body.get("over"):
                        return True  # a window function adds up the rows of its partition
                    name = strs(body.get("funcname"))[-1].lower()
                    if name in AGGREGATES or body.get("agg_star") or body.get("agg_filter"):
                        return True
                push(body)
            elif t is list:
                push(body)
    return False


#: Parse-tree nodes whose aggregates belong to another SELECT level.
_OTHER_LEVELS = frozenset(("SubLink", "SelectStmt"))


def whole_value_guess(node: Node) -> bool:
    """Whether a predicate compares one bare column, whole, with constants or
    parameters (``email = $1``, ``email IN ('a', 'b')``, ``email = ANY ($1)``, ``email
    IS NULL``): a guess at the whole value, so k of them in one statement find it
    among k candidates, never k bits of it. Under AND, OR and NOT, when every leaf is
    one (``email = $1 OR id = $2``)."""
    if "BoolExpr" in node:
        args = node["BoolExpr"].get("args") or ()
        return bool(args) and all(whole_value_guess(arg) for arg in args)
    if "NullTest" in node:
        return bare_column(node["NullTest"].get("arg"))
    expr = node.get("A_Expr")
    if expr is None:
        return False
    kind = expr.get("kind", "AEXPR_OP")
    names = strs(expr.get("name"))
    if kind in ("AEXPR_OP", "AEXPR_OP_ANY", "AEXPR_IN", "AEXPR_NOT_DISTINCT"):
        if kind != "AEXPR_NOT_DISTINCT" and names != ["="]:
            return False
    else:
        return False
    left, right = expr.get("lexpr"), expr.get("rexpr")
    return (bare_column(left) and _constant(right)) or (bare_column(right) and _constant(left))


def bare_column(node: object) -> bool:
    while isinstance(node, dict) and "TypeCast" in node:
        node = node["TypeCast"].get("arg")
    return isinstance(node, dict) and "ColumnRef" in node


def whole_column(node: object) -> bool:
    """Whether an ORDER BY, DISTINCT ON or PARTITION BY item is a column as it is, cast
    or not to a type that keeps it whole (``email``, ``c.email::text``): not
    ``email::varchar(1)``, which orders and groups by the first character, one of as
    many orders as there are lengths."""
    while isinstance(node, dict) and "TypeCast" in node:
        cast = node["TypeCast"]
        if not lossless_cast(cast.get("typeName") or {}):
            return False
        node = cast.get("arg")
    return isinstance(node, dict) and "ColumnRef" in node


def _constant(node: object) -> bool:
    """No column, call or sub-select in it: literals, parameters, casts, lists."""
    if isinstance(node, list):
        return all(_constant(n) for n in node)
    if not isinstance(node, dict):
        return True
    for kind, body in node.items():
        if kind in ("ColumnRef", "FuncCall", "SubLink", "SelectStmt"):
            return False
        if not _constant(body):
            return False
    return True


#: Operators of a whole-value equality (``whole_equality``).
_EQUALITY_OPERATORS = frozenset(("=", "<>", "!="))


def whole_equality(node: Node) -> bool:
    """Whether a predicate is ``a = b``, ``a <> b`` or ``a IS [NOT] DISTINCT FROM b``
    of two bare column references: over copies of one value it tests one whole guess
    per row, never a piece of the value."""
    expr = node.get("A_Expr")
    if expr is None:
        return False
    kind = expr.get("kind", "AEXPR_OP")
    if kind == "AEXPR_OP":
        names = strs(expr.get("name"))
        if len(names) != 1 or names[0] not in _EQUALITY_OPERATORS:
            return False
    elif kind not in ("AEXPR_DISTINCT", "AEXPR_NOT_DISTINCT"):
        return False
    sides = (expr.get("lexpr"), expr.get("rexpr"))
    return all(isinstance(side, dict) and "ColumnRef" in side for side in sides)


def multiplies(node: Node, refs: list[Ref], scope: Scope) -> bool:
    """Whether a WHERE or ON predicate lets the text choose how many rows of one FROM
    entry each row of another meets (``Scope.multiplied``): it relates two entries of
    ``scope`` other than by an equality of two stored relations' columns as they are
    (``o.customer_id = c.id`` meets as many orders as the data holds; ``g <= 1 << c.id
    % 20`` over a series meets as many as the text says, and so does ``m.k = c.id``
    over a sub-select that repeats each ``k`` at will)."""
    items: list[Item] = []
    for ref in refs:
        if ref[0] is scope and all(ref[1] is not seen for seen in items):
            items.append(ref[1])
    if len(items) < 2:
        return False
    return not (len(items) == 2 and _equi_join(node) and all(map(_stored_relation, items)))


def _equi_join(node: Node) -> bool:
    """``a = b`` or ``a IS NOT DISTINCT FROM b`` of two columns as they are."""
    expr = node.get("A_Expr")
    if expr is None:
        return False
    kind = expr.get("kind", "AEXPR_OP")
    if kind == "AEXPR_OP":
        if strs(expr.get("name")) != ["="]:
            return False
    elif kind != "AEXPR_NOT_DISTINCT":
        return False
    return bare_column(expr.get("lexpr")) and bare_column(expr.get("rexpr"))


def _stored_relation(item: Item) -> bool:
    """A table's or a view's row the snapshot knows, not one a query made."""
    return item.table or (item.schema is not None and not item.open)


def mentions_column(node: object) -> bool:
    """Whether a column reference stands anywhere in ``node`` (a FROM function's
    arguments: a lateral one, sized per row)."""
    pending = [node]
    pop, push, extend = pending.pop, pending.append, pending.extend
    while pending:
        n = pop()
        if type(n) is list:
            extend(n)
        elif type(n) is dict:
            if "ColumnRef" in n:
                return True
            for body in n.values():
                if type(body) is dict or type(body) is list:
                    push(body)
    return False
