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
