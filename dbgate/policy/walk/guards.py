"""Session guards: what a statement does to the timeouts dbgate sets, and how long it sleeps.

dbgate gives each upstream session ``statement_timeout``, ``lock_timeout``,
``idle_in_transaction_session_timeout`` and ``transaction_timeout`` (ceilings per
identity, from the rules: docs/rules.md, "Session guards"). An agent may lower them;
raising one past its ceiling, or to 0 ("no limit"), is for the rules to judge. The
classifier cannot know ceilings (they differ per identity, and classifications are
cached per text), so it reports each change as a
:class:`~dbgate.policy.model.GuardSetting` — the value in milliseconds exactly as the
server reads it (:func:`~dbgate.policy.catalog_settings.parse_time_ms`), or None when
it cannot be known — and the longest constant ``pg_sleep``, which the rules refuse up
front when it is longer than the identity's statement timeout.
"""

from __future__ import annotations

import re
from typing import Any

from dbgate.policy.catalog_settings import parse_time_ms
from dbgate.policy.model import GUARD_SETTINGS, GuardSetting
from dbgate.policy.walk.facts import StatementFacts
from dbgate.policy.walk.nodes import KNOWN, NEED_BIND, value_of

GUARDS = frozenset(GUARD_SETTINGS)


def single_value(node: Any) -> bool:
    """A constant or a Bind parameter (possibly cast): a value the client chose, not
    one computed from the database's rows."""
    while type(node) is dict:
        if "A_Const" in node or "ParamRef" in node:
            return True
        tc = node.get("TypeCast")
        if tc is None:
            return False
        node = tc.get("arg")
    return node is None


def record(
    facts: StatementFacts, name: str, value_ms: int | None, *, local: bool, reset: bool
) -> None:
    facts.guard_settings.append(GuardSetting(name, value_ms, local, reset))


def set_statement(
    name: str, kind: str, values: list[str] | None, local: bool, facts: StatementFacts
) -> None:
    """``SET [LOCAL] name = value`` / ``SET name TO DEFAULT`` / ``RESET name``.

    ``values``: the literal arguments (None when one is not a literal). A guard takes
    exactly one value; anything else the server refuses, and we report it as unknown.
    """
    if kind in ("VAR_SET_DEFAULT", "VAR_RESET"):
        record(facts, name, None, local=local, reset=True)
        return
    value = values[0] if values is not None and len(values) == 1 else None
    record(
        facts, name, parse_time_ms(value) if value is not None else None, local=local, reset=False
    )


def set_config_guard(qual: str, name: str, args: list[Any], facts: StatementFacts) -> None:
    """``set_config('statement_timeout', value, is_local)``."""
    local = False
    if len(args) > 2:
        state, text = value_of(args[2], facts)
        local = state != KNOWN or (text or "").strip().lower() in ("t", "true", "on", "1", "yes")
    value = args[1] if len(args) > 1 else None
    state, text = value_of(value, facts) if value is not None else (KNOWN, None)
    if state == NEED_BIND:
        return  # decided again at Bind, with the value (needs_bind is set)
    ms = parse_time_ms(text) if state == KNOWN and text is not None else None
    record(facts, name, ms, local=local, reset=False)


_INTERVAL_UNITS = {
    "microsecond": 0.001,
    "millisecond": 1.0,
    "ms": 1.0,
    "second": 1000.0,
    "sec": 1000.0,
    "s": 1000.0,
    "minute": 60_000.0,
    "min": 60_000.0,
    "m": 60_000.0,
    "hour": 3_600_000.0,
    "hr": 3_600_000.0,
    "h": 3_600_000.0,
    "day": 86_400_000.0,
    "d": 86_400_000.0,
    "week": 604_800_000.0,
    "w": 604_800_000.0,
}
_INTERVAL_PART = re.compile(r"\s*([+-]?\d+(?:\.\d+)?)\s*([a-z]+?)s?\b", re.IGNORECASE)
_CLOCK = re.compile(r"^\s*(\d+):(\d+)(?::(\d+(?:\.\d+)?))?\s*$")


def _interval_ms(text: str) -> int | None:
    """The common forms of a constant interval (``'5 minutes'``, ``'1 hour 30 min'``,
    ``'00:10:00'``); None for anything else (then only the run-time timeout bounds it).
    Used only to refuse a sleep early, never to allow anything."""
    m = _CLOCK.match(text)
    if m is not None:
        h, mi, sec = int(m.group(1)), int(m.group(2)), float(m.group(3) or 0)
        return int(((h * 60 + mi) * 60 + sec) * 1000)
    total = 0.0
    pos = 0
    stripped = text.strip()
    for part in _INTERVAL_PART.finditer(stripped):
        if part.start() != pos:
            return None
        unit = _INTERVAL_UNITS.get(part.group(2).lower())
        if unit is None:
            return None
        total += float(part.group(1)) * unit
        pos = part.end()
    if pos == 0 or stripped[pos:].strip():
        return None
    return int(total)


def sleep(name: str, args: list[Any], facts: StatementFacts) -> None:
    """``pg_sleep(seconds)`` / ``pg_sleep_for(interval)`` with a constant argument."""
    if not args or name == "pg_sleep_until":
        return
    state, text = value_of(args[0], facts)
    if state != KNOWN or text is None:
        return
    if name == "pg_sleep":
        try:
            ms = float(text.strip()) * 1000
        except ValueError:
            return
        if ms != ms:
            return
        ms = min(ms, 2.0**62)
    else:
        found = _interval_ms(text)
        if found is None:
            return
        ms = found
    value = int(ms)
    if value > 0 and (facts.sleep_ms is None or value > facts.sleep_ms):
        facts.sleep_ms = value
