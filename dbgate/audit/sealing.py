"""Hash a record into its chain, escaping its texts first when they cannot be stored
as they are (a NUL, a lone surrogate: :mod:`dbgate.audit.text`)."""

from __future__ import annotations

import json
from hashlib import sha256
from typing import Any

from dbgate.audit.canonical import DETAILS, ESCAPED, FIELDS, INDEX, FieldType, canonical_text
from dbgate.audit.text import escape, needs_escape

_TEXT_FIELDS = tuple(name for name, kind in FIELDS if kind is FieldType.TEXT)
_ARRAY_FIELDS = tuple(name for name, kind in FIELDS if kind is FieldType.ARRAY)


def dump_details(details: dict[str, Any]) -> str:
    return json.dumps(details, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def seal(values: list[Any], prev_hash: bytes) -> bytes:
    """Hash a record (its chain fields set), escaping it first if it must be.

    The canonical text shows whether escaping is needed at no extra cost in the
    common case: a NUL appears in it as ``\\u0000`` and a lone surrogate makes
    UTF-8 encoding fail. Only then are the values examined and escaped.
    """
    text = canonical_text(values)
    try:
        if "\\u0000" in text:
            raise UnicodeError
        data = text.encode()
    except UnicodeError:
        if _needs_escape(values):
            _escape_values(values)
            values[ESCAPED] = True
        data = canonical_text(values).encode()
    d = sha256(data).digest()
    return sha256(prev_hash + d).digest()


def _needs_escape(values: list[Any]) -> bool:
    for name in _TEXT_FIELDS:
        v = values[INDEX[name]]
        if v and needs_escape(v):
            return True
    for name in _ARRAY_FIELDS:
        for item in values[INDEX[name]] or ():
            if item and needs_escape(item):
                return True
    details = values[DETAILS]
    return bool(details) and _json_needs_escape(json.loads(details))


def _json_needs_escape(value: Any) -> bool:
    if isinstance(value, str):
        return needs_escape(value)
    if isinstance(value, dict):
        return any(_json_needs_escape(k) or _json_needs_escape(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_json_needs_escape(v) for v in value)
    return False


def _escape_values(values: list[Any]) -> None:
    if values[DETAILS]:
        values[DETAILS] = dump_details(_escape_json(json.loads(values[DETAILS])))
    for name in _TEXT_FIELDS:
        i = INDEX[name]
        if values[i]:
            values[i] = escape(values[i])
    for name in _ARRAY_FIELDS:
        i = INDEX[name]
        if values[i]:
            values[i] = [None if x is None else escape(x) for x in values[i]]


def _escape_json(value: Any) -> Any:
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, dict):
        return {_escape_json(k): _escape_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escape_json(v) for v in value]
    return value
