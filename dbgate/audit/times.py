"""Timestamps of records: microseconds since the epoch in the record, ISO 8601 with
six fractional digits and ``Z`` in exports (one form, so an exported file hashes as
the database's canonical text does)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_US = timedelta(microseconds=1)
MIN_US = (datetime(1, 1, 1, tzinfo=UTC) - EPOCH) // ONE_US
MAX_US = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - EPOCH) // ONE_US


def to_us(value: Any) -> int | None:
    """Microseconds since the epoch of a ``time.time()`` float or an aware datetime."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        if value != value or value in (float("inf"), float("-inf")):
            return None
        us = round(value * 1_000_000)
    elif isinstance(value, datetime):
        dt = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        us = (dt - EPOCH) // ONE_US
    else:
        return None
    return us if MIN_US <= us <= MAX_US else None


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def iso(us: int) -> str:
    """The export form of a timestamp: always six fractional digits and ``Z``."""
    d = from_us(us)
    return (
        f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:"
        f"{d.second:02d}.{d.microsecond:06d}Z"
    )


def parse_iso(value: str) -> int:
    """Microseconds since the epoch of a timestamp written by :func:`iso` (or any
    ISO 8601 form with a zone)."""
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"timestamp without a time zone: {value!r}")
    return (dt - EPOCH) // ONE_US
