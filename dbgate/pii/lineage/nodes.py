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


#: Types whose input keeps only part of a text: ``"char"`` its first byte, ``name``
#: 63 bytes, ``float4``/``float8`` the leading digits (a length, ``varchar(n)``,
#: ``numeric(p, s)``, is refused as well).
_TRUNCATING_TYPES = frozenset({"char", "name", "float4", "float8"})
#: Of those, the ones looked for anywhere in a text (float8 keeps 15 digits: a phone
#: whole; its casts are common in queries that also send tokens back).
TYPES_THAT_CUT = frozenset({"char", "name", "float4"})


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
