"""Coerce a field an event gave to what its column holds: a value of the wrong type is
recorded as text, or dropped with its name in ``notes`` (``details.coerced``), so a
caller's bug never stops the writer or loses the record."""

from __future__ import annotations

from typing import Any

from dbgate.audit.text import from_bytes
from dbgate.audit.times import to_us

#: Integer fields stored in a narrower column than bigint.
_INT_LIMITS = {
    "scrubbed": 2**31 - 1,  # integer column
}
INT64 = 2**63 - 1


def text_value(x: Any, limit: int, notes: list[str], name: str) -> str | None:
    if x.__class__ is str:
        if len(x) > limit:
            return x[:limit]
        return x or None
    if x is None:
        return None
    x = text_slow(x, name, notes)
    return x[:limit] or None


def text_slow(x: Any, name: str, notes: list[str]) -> str:
    if isinstance(x, str):
        return str(x)
    if isinstance(x, bytes | bytearray | memoryview):
        return from_bytes(bytes(x))
    notes.append(name)
    return str(x)


def names(items: Any, limit: int, notes: list[str], name: str) -> list[str | None] | None:
    """Categories, tables, columns: short names, never scrubbed."""
    if items.__class__ is tuple or items.__class__ is list:
        for x in items:
            if x.__class__ is not str or len(x) > limit:
                break
        else:
            return list(items)
    elif items.__class__ is str:
        notes.append(name)
        return [items[:limit]]
    out: list[str | None] = []
    for x in items:
        t = text_value(x, limit, notes, name)
        out.append(t if t is not None else "")
    return out or None


def int_value(value: Any, name: str, notes: list[str]) -> int | None:
    if value is None:
        return None
    if value.__class__ is not int:
        try:
            value = int(value)
        except (TypeError, ValueError, OverflowError):
            notes.append(name)
            return None
        notes.append(name)
    limit = _INT_LIMITS.get(name, INT64)
    if not -limit - 1 <= value <= limit:
        notes.append(name)
        return None
    return value  # type: ignore[no-any-return]


def at_slow(at: Any, now_us: int, notes: list[str]) -> int:
    us = to_us(at)
    if us is None:
        notes.append("at")
        return now_us
    return us
