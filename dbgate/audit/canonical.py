"""The canonical form of a record: the exact bytes its hash covers.

One table, :data:`FIELDS`, names every hashed column and its type, in order. From it
come both implementations of the canonical form, which must agree byte for byte:

* :func:`canonical` in Python, used by the writer (before a record is written or
  spilled) and by ``audit verify --file``;
* :func:`canonical_sql`, a SQL expression that PostgreSQL evaluates for every row
  during ``audit verify --dsn``, so that verification reads one column per record
  instead of decoding thirty-odd in Python (the difference between ~20,000 and
  well over 100,000 records per second here). It uses only built-in functions, and
  the verifier still hashes the bytes itself.

The form is a compact JSON array (no spaces) of the fields in groups, each group in
table order::

    [[numbers], [texts], [booleans], array, array, array, array, details]

numbers are the integers and timestamps (timestamps as microseconds since
1970-01-01 UTC), each a number or ``null``; texts are JSON strings (``""`` when
absent — NULL and empty text mean the same); booleans ``true``/``false``/``null``;
each text array is an array (``[]`` when absent); ``details`` is the stored JSON
text itself (``{}`` when absent). String escaping is JSON's: ``"``, ``\\`` and
control characters below U+0020, exactly what Python's ``json`` and PostgreSQL's
``to_json`` both produce.

A record's hash is ``sha256(prev_hash || sha256(canonical))``; the first record of a
chain has 32 zero bytes as ``prev_hash``.
"""

from __future__ import annotations

import hashlib
import json
from enum import Enum
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any


class FieldType(Enum):
    TEXT = "text"
    INT = "int"
    TIME = "time"  # stored timestamptz; canonical: integer microseconds since the epoch
    BOOL = "bool"
    ARRAY = "array"  # text[]
    JSON = "json"


T = FieldType

#: Every hashed column, in canonical order. Adding a field means a new FORMAT.
FIELDS: tuple[tuple[str, FieldType], ...] = (
    ("format", T.INT),
    ("chain", T.TEXT),
    ("seq", T.INT),
    ("logged_at", T.TIME),
    ("at", T.TIME),
    ("kind", T.TEXT),
    ("event", T.TEXT),
    ("replica", T.TEXT),
    ("session_id", T.INT),
    ("identity", T.TEXT),
    ("application_name", T.TEXT),
    ("client_addr", T.TEXT),
    ("database", T.TEXT),
    ("purpose", T.TEXT),
    ("model", T.TEXT),
    ("statement", T.TEXT),
    ("statement_length", T.INT),
    ("params", T.ARRAY),
    ("fingerprint", T.TEXT),
    ("categories", T.ARRAY),
    ("tables", T.ARRAY),
    ("columns", T.ARRAY),
    ("decision", T.TEXT),
    ("rule", T.TEXT),
    ("approval_id", T.TEXT),
    ("outcome", T.TEXT),
    ("rows", T.INT),
    ("duration_us", T.INT),
    ("tokenized", T.BOOL),
    ("actor", T.TEXT),
    ("reason", T.TEXT),
    ("details", T.JSON),
    ("scrubbed", T.INT),
    ("escaped", T.BOOL),
)
FORMAT = 1
NAMES: tuple[str, ...] = tuple(name for name, _ in FIELDS)
INDEX: dict[str, int] = {name: i for i, name in enumerate(NAMES)}
TYPES: dict[str, FieldType] = dict(FIELDS)
GENESIS = bytes(32)
#: Positions of the fields the writer and the sealing read by number.
CHAIN, SEQ, LOGGED_AT, AT = INDEX["chain"], INDEX["seq"], INDEX["logged_at"], INDEX["at"]
ESCAPED, SCRUBBED, DETAILS = INDEX["escaped"], INDEX["scrubbed"], INDEX["details"]


def _groups() -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """Field positions by group, each in table order: numbers (integers and
    timestamps), texts, booleans, arrays, JSON."""
    numbers, texts, bools, arrays, jsons = [], [], [], [], []
    for i, (_, kind) in enumerate(FIELDS):
        {
            T.INT: numbers,
            T.TIME: numbers,
            T.TEXT: texts,
            T.BOOL: bools,
            T.ARRAY: arrays,
            T.JSON: jsons,
        }[kind].append(i)
    return numbers, texts, bools, arrays, jsons


#: How each type of field is rendered, as a Python expression of the value ``{v}``.
_EXPR: dict[FieldType, str] = {
    T.INT: "('null' if {v} is None else str({v}))",
    T.TIME: "('null' if {v} is None else str({v}))",
    T.TEXT: "(_s({v}) if {v} else '\"\"')",
    T.BOOL: "('null' if {v} is None else 'true' if {v} else 'false')",
    T.ARRAY: "(_a({v}) if {v} else '[]')",
    T.JSON: "({v} or '{{}}')",
}


def _layout() -> tuple[str | int, ...]:
    """The canonical form in order: its punctuation (text) and its fields (positions)."""
    numbers, texts, bools, arrays, jsons = _groups()
    out: list[str | int] = []

    def group(positions: list[int], opening: str) -> None:
        out.append(opening)
        for n, i in enumerate(positions):
            if n:
                out.append(",")
            out.append(i)

    group(numbers, "[[")
    group(texts, "],[")
    group(bools, "],[")
    group(arrays + jsons, "],")
    out.append("]")
    return tuple(out)


LAYOUT = _layout()


def _python_source() -> str:
    """Source of a function that renders a values list (in FIELDS order) canonically.

    Generated from the table rather than looping over it: one expression per field,
    no per-field dispatch, several times faster, and it cannot drift from the table.
    """
    numbers, texts, bools, arrays, jsons = _groups()

    def joined(positions: list[int]) -> str:
        exprs = [_EXPR[FIELDS[i][1]].format(v=f"v[{i}]") for i in positions]
        return "','.join((" + ", ".join(exprs) + ",))"

    body = (
        f"'[[' + {joined(numbers)} + '],[' + {joined(texts)} + '],['"
        f" + {joined(bools)} + '],' + {joined(arrays + jsons)} + ']'"
    )
    return f"def canonical_text(v):\n    return {body}\n"


def _array(items: Any) -> str:
    if None in items:
        return "[" + ",".join(["null" if x is None else encode_basestring(x) for x in items]) + "]"
    return "[" + ",".join(map(encode_basestring, items)) + "]"


_namespace: dict[str, Any] = {"_s": encode_basestring, "_a": _array}
exec(compile(_python_source(), "<dbgate.audit.canonical>", "exec"), _namespace)
#: The canonical form as text (before UTF-8 encoding).
canonical_text = _namespace["canonical_text"]
#: A text array's canonical form (a JSON array; NULL elements as null).
array_json = _array
_render_one = {
    kind: eval(f"lambda x: {expr.format(v='x')}", dict(_namespace)) for kind, expr in _EXPR.items()
}


class Template:
    """The canonical text of records that agree in every field but some (``varying``):
    the text around those fields is rendered once, they are rendered per record.

    A statement's records differ from one execution to the next only in a few fields
    (its time, parameters, outcome, rows, duration, place in the chain): the writer
    keeps one template per statement shape and renders a record in a fraction of the
    time :func:`canonical_text` takes. ``render(values)`` equals
    ``canonical_text(values)`` whenever ``values`` agree with those the template was
    made from outside ``varying``. The field at ``given`` (one of ``varying``) is
    rendered by the caller, who may know more about it (a list of hashes needs no
    escaping): ``render(values, text)``.
    """

    __slots__ = ("_fragments", "_render")

    def __init__(self, values: list[Any], varying: tuple[int, ...], given: int = -1) -> None:
        fragments: list[str] = []
        run: list[str] = []
        order: list[int] = []
        for x in LAYOUT:
            if isinstance(x, str):
                run.append(x)
            elif x in varying:
                fragments.append("".join(run))
                run = []
                order.append(x)
            else:
                run.append(_render_one[FIELDS[x][1]](values[x]))
        fragments.append("".join(run))
        self._fragments = tuple(fragments)
        self._render = _renderer(tuple(order), given)

    def render(self, values: list[Any], given: str = "") -> str:
        return self._render(self._fragments, values, given)  # type: ignore[no-any-return]

    @property
    def fragments(self) -> tuple[str, ...]:
        """The text around the varying fields, in order (one more than the fields)."""
        return self._fragments


_RENDERERS: dict[tuple[tuple[int, ...], int], Any] = {}


def _renderer(order: tuple[int, ...], given: int) -> Any:
    """``f(fragments, values, given)``: the fragments with the fields at ``order``
    between them, ``given`` in the place of the field at that position (generated
    once per set of varying fields)."""
    found = _RENDERERS.get((order, given))
    if found is None:
        parts = ["c[0]"]
        for n, i in enumerate(order, start=1):
            parts.append("g" if i == given else _EXPR[FIELDS[i][1]].format(v=f"v[{i}]"))
            parts.append(f"c[{n}]")
        # one join: a chain of + would allocate every longer prefix on the way
        source = "def render(c, v, g):\n    return ''.join((" + ", ".join(parts) + "))\n"
        space = dict(_namespace)
        exec(compile(source, "<dbgate.audit.canonical template>", "exec"), space)
        found = _RENDERERS[(order, given)] = space["render"]
    return found


def canonical(values: list[Any] | tuple[Any, ...]) -> bytes:
    """The canonical bytes of a record given as values in :data:`FIELDS` order.

    Text values must be ``str`` or None, integers and timestamps ``int`` or None,
    arrays sequences of ``str``/None, ``details`` a JSON text or None.
    """
    return canonical_text(values).encode()  # type: ignore[no-any-return]


def canonical_sql(alias: str = "") -> str:
    """The same canonical form as a SQL expression of type bytea over a row of the
    view ``dbgate.audit_log`` (whose arrays are text[]; the base table stores them
    as text).

    Fields are rendered a group at a time — ``array_to_json(ARRAY[...])`` over all
    numbers, then over all texts, then booleans — which is why the canonical form is
    grouped: a handful of function calls per row instead of one per field, well
    under half the server's time of rendering each field on its own.
    """
    p = f"{alias}." if alias else ""
    numbers, texts, bools, arrays, jsons = _groups()

    def col(i: int) -> str:
        return f'{p}"{FIELDS[i][0]}"'

    num = [
        f"(extract(epoch from {col(i)}) * 1000000)::bigint"
        if FIELDS[i][1] is T.TIME
        else f"{col(i)}::bigint"
        for i in numbers
    ]
    parts = [
        "array_to_json(ARRAY[" + ", ".join(num) + "])::text",
        "array_to_json(ARRAY[" + ", ".join(f"coalesce({col(i)}, '')" for i in texts) + "])::text",
        "array_to_json(ARRAY[" + ", ".join(f"{col(i)}::boolean" for i in bools) + "])::text",
    ]
    parts += [f"coalesce(array_to_json({col(i)})::text, '[]')" for i in arrays]
    parts += [f"coalesce({col(i)}::text, '{{}}')" for i in jsons]
    return "convert_to('[' || concat_ws(',', " + ", ".join(parts) + ") || ']', 'UTF8')"


def parse_canonical(data: bytes) -> dict[str, Any]:
    """The fields of canonical bytes by name (for reading and debugging records)."""
    numbers, texts, bools, *rest = json.loads(data)
    g_numbers, g_texts, g_bools, g_arrays, g_jsons = _groups()
    out: dict[str, Any] = {}
    for idx, vals in ((g_numbers, numbers), (g_texts, texts), (g_bools, bools)):
        out.update((FIELDS[i][0], v) for i, v in zip(idx, vals, strict=True))
    out.update((FIELDS[i][0], v) for i, v in zip(g_arrays + g_jsons, rest, strict=True))
    return out


def digest(canonical_bytes: bytes) -> bytes:
    return hashlib.sha256(canonical_bytes).digest()


def link(prev_hash: bytes, content_digest: bytes) -> bytes:
    """A record's hash from its predecessor's hash and its own content digest."""
    return hashlib.sha256(prev_hash + content_digest).digest()


def record_hash(prev_hash: bytes, values: list[Any] | tuple[Any, ...]) -> tuple[bytes, bytes]:
    """(digest, hash) of a record."""
    d = hashlib.sha256(canonical_text(values).encode()).digest()
    return d, hashlib.sha256(prev_hash + d).digest()
