"""Reading pglast's JSON parse tree.

A node under a generic ``Node*`` field is a one-key dict (``{"ColumnRef": {...}}``:
:func:`one` splits it into kind and body); a name is a list of ``String`` nodes
(:func:`strs`, with ``*`` for an ``A_Star``). Fields equal to their zero value are
omitted, so every read uses ``.get`` with a default.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Node = dict[str, Any]


def strs(nodes: Iterable[Node] | None) -> list[str]:
    """The names in a list of ``String`` nodes (``*`` for an ``A_Star``); inlined, as
    it runs for every column reference of a cold plan."""
    return [s.get("sval", "") if (s := n.get("String")) is not None else "*" for n in nodes or ()]


def one(node: Node) -> tuple[str, Any]:
    ((kind, body),) = node.items()
    return kind, body


def listed(arg: Node) -> bool:
    """An array whose elements the text lists (``ARRAY[a, b]``, ``'{a,b}'::text[]``):
    unnesting it returns that many rows, whatever the values."""
    if "TypeCast" in arg:
        arg = arg["TypeCast"].get("arg") or {}
    return "A_ArrayExpr" in arg or "A_Const" in arg


#: Extensions' types that read a number of the text as a float: cube (and earth, a
#: domain over it) as float8, seg as float4 (``'5264345250703443'::seg`` keeps seven
#: digits).
_FLOAT_EXTENSION_TYPES = ("cube", "earth", "seg")
#: Types whose input keeps only part of a text: ``"char"`` its first byte, ``name``
#: 63 bytes, ``float4``/``float8`` the leading digits (a length, ``varchar(n)``,
#: ``numeric(p, s)``, is refused as well).
_TRUNCATING_TYPES = frozenset({"char", "name", "float4", "float8", *_FLOAT_EXTENSION_TYPES})
#: Of those, the ones looked for anywhere in a text (float8 keeps 15 digits: a phone
#: whole; its casts are common in queries that also send tokens back).
TYPES_THAT_CUT = frozenset({"char", "name", "float4", "seg"})
#: Their OIDs: a column of one of these (or a domain over one, an array of one)
CUTTING_TYPE_OIDS = {18: '"char"', 19: "name", 700: "float4"}
#: Statistical aggregates: each returns a float (so rounds) and reads its rows in any
#: order (``ROUNDING`` here, ``ORDER_FREE`` in expressions.py).
STATISTICS = (
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_avgx",
    "regr_avgy",
    "regr_intercept",
    "regr_r2",
    "regr_slope",
    "regr_sxx",
    "regr_sxy",
    "regr_syy",
)
#: Built-ins that return a float (``float8``, ``float4``) under these names (some have a
#: ``numeric`` form too: by name alone it is not known which is called), and the float
#: types themselves. A literal compared with one is read as a float, keeping about 15
#: significant digits of a token's value: a near-miss guess of a long number matches.
ROUNDING = frozenset(
    {
        "float8",
        "float4",
        *_FLOAT_EXTENSION_TYPES,
        "ll_to_earth",
        "power",
        "pow",
        "sqrt",
        "cbrt",
        "exp",
        "ln",
        "log",
        "log10",
        "random",
        "random_normal",
        "pi",
        "degrees",
        "radians",
        "sin",
        "cos",
        "tan",
        "cot",
        "asin",
        "acos",
        "atan",
        "atan2",
        "sind",
        "cosd",
        "tand",
        "cotd",
        "asind",
        "acosd",
        "atand",
        "atan2d",
        "sinh",
        "cosh",
        "tanh",
        "asinh",
        "acosh",
        "atanh",
        "erf",
        "erfc",
        "gamma",
        "lgamma",
        "date_part",
        "percentile_cont",
        "percent_rank",
        "cume_dist",
        *STATISTICS,
        "similarity",
        "word_similarity",
        "strict_word_similarity",
        "ts_rank",
        "ts_rank_cd",
        "area",
        "diameter",
        "height",
        "width",
        "radius",
        "distance",
        # geometric types read their numbers as float8, and compare within 1e-6: a
        # line's coefficients by their ratios, an order of a token's value with a
        # number the agent chose (``('{a,1e-6,0}' || …)::line = 'tok_…'``)
        "point",
        "line",
        "lseg",
        "box",
        "path",
        "polygon",
        "circle",
    }
)


def lossless_cast(type_name: Node) -> bool:
    """Whether a cast to ``type_name`` keeps a value whole: no length or precision
    that would cut or round it, not a type whose input keeps a part of it."""
    if type_name.get("typmods"):
        return False
    names = strs(type_name.get("names") or [])
    return not names or names[-1].lower() not in _TRUNCATING_TYPES


def casts_to_cut(node: object, types: frozenset[str] = _TRUNCATING_TYPES) -> bool:
    """Whether an expression has a cast to a type that keeps part of a text anywhere in
    it: compared with a literal, it is of that type, and so is the literal the server
    reads (``email::"char" = 'tok_…'`` compares the value's first byte)."""
    if isinstance(node, dict):
        cast = node.get("TypeCast")
        if cast is not None:
            names = strs((cast.get("typeName") or {}).get("names") or [])
            if names and names[-1].lower() in types:
                return True
        type_name = node.get("typeName")
        if isinstance(type_name, dict):
            # a column definition list's type (``AS t(email "char")``) is a cast too
            names = strs(type_name.get("names") or [])
            if names and names[-1].lower() in types:
                return True
        call = node.get("FuncCall")
        if call is not None:
            # a cast written as a call: "char"(email), name(email), float8(...)
            names = strs(call.get("funcname") or [])
            if names and names[-1].lower() in types:
                return True
        return any(casts_to_cut(v, types) for v in node.values())
    if isinstance(node, list):
        return any(casts_to_cut(v, types) for v in node)
    return False


#: Collations whose equality is byte for byte whatever the database defines.
_BYTEWISE_COLLATIONS = frozenset({"c", "posix", "default", "ucs_basic", "pg_c_utf8"})


def collates(node: object) -> bool:
    """Whether a ``COLLATE`` clause names a collation other than the built-in bytewise
    ones anywhere in ``node``: a nondeterministic one (ICU, ``deterministic = false``)
    makes a value compared under it equal to others than itself — as its tailoring
    says, which may compare a part of the value or its shape only."""
    if isinstance(node, dict):
        clause = node.get("CollateClause")
        if clause is not None:
            names = strs(clause.get("collname") or [])
            if not names or names[-1].lower() not in _BYTEWISE_COLLATIONS:
                return True
        return any(collates(v) for v in node.values())
    if isinstance(node, list):
        return any(collates(v) for v in node)
    return False
