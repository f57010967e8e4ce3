"""Which server settings (GUCs) matter to the gateway, and for which values.

The same setting can be changed five ways — ``SET``, ``SET LOCAL``, ``set_config()``,
``ALTER ROLE/DATABASE ... SET`` and ``ALTER SYSTEM`` — so the judgement lives here once
and every path calls :func:`setting_effects`.

Why each group is what it is:

* ``role`` / ``session_authorization`` change *who* runs the next statement: privilege.
* ``escape``: settings that make the server read SQL differently from how dbgate
  parsed it, or switch off protections dbgate relies on:
  ``standard_conforming_strings = off`` (backslashes in ``'...'`` become escapes, so
  the proxy's and the server's idea of where a literal ends can differ),
  ``backslash_quote = on``, a non-UTF8 ``client_encoding`` (multi-byte encodings
  such as SJIS/GBK/BIG5 hide ``\\`` and ``'`` inside characters, CVE-2006-2313),
  read-only transaction characteristics turned off,
  ``session_replication_role`` other than ``origin`` (disables triggers and FKs), and a
  ``search_path`` that lists a schema *before* ``pg_catalog`` (a user function named
  like a built-in would then shadow it, and the function catalog would be wrong).
  A ``search_path`` without ``pg_catalog`` is safe: PostgreSQL searches it first
  implicitly. ``pg_temp`` is never searched for functions, so it may come first.
* ``admin``: logging/tracking (hides evidence), library loading, superuser-only settings.
* dotted custom settings (``app.tenant_id``, ``request.jwt.claims``): ``privilege`` —
  row-level-security policies commonly key on them, so setting one can change whose
  rows are visible.
* every other setting a normal user may set: ``control``. Unknown names: ``opaque``.
  That includes ``row_security``: turned off, it makes a query that row-level
  security would filter raise an error instead (roles that bypass RLS bypass it
  either way), so it can only show fewer rows, never more. pg_dump sends it.

Messages name the setting only when PostgreSQL has it (``set_config``'s name is a
string literal, and reasons never quote literal values) and never quote the value.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from dbgate.identifiers import C_SPACE as _C_SPACE
from dbgate.identifiers import search_path_escapes, split_identifier_list
from dbgate.policy.catalog_builtin import SETTING_CONTEXTS
from dbgate.policy.model import Category

Effect = tuple[Category, str, str]

_TRUE = frozenset({"on", "true", "yes", "1", "t", "tr", "tru", "y", "ye"})
_FALSE = frozenset({"off", "false", "no", "0", "of", "f", "fa", "fal", "fals", "n"})
_UTF8 = frozenset({"utf8", "utf-8", "unicode"})

PRIVILEGE_SETTINGS = frozenset({"role", "session_authorization"})
LIBRARY_SETTINGS = frozenset(
    {
        "shared_preload_libraries",
        "session_preload_libraries",
        "local_preload_libraries",
        "dynamic_library_path",
        "extension_control_path",
        "output_plugin_libraries",
    }
)
_ADMIN_PREFIXES = ("log_", "debug_", "trace_", "track_", "pgaudit.", "auto_explain.")

#: Settings whose effect depends on the value (so the value must be known).
VALUE_SENSITIVE = frozenset(
    {
        "standard_conforming_strings",
        "backslash_quote",
        "client_encoding",
        "default_transaction_read_only",
        "transaction_read_only",
        "session_replication_role",
        "search_path",
        "transform_null_equals",
    }
)


def _truthy(v: str) -> bool | None:
    v = v.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    return None


def setting_effects(
    name: str, values: Sequence[str] | None, *, as_list: bool = False
) -> tuple[list[Effect], bool]:
    """Effects of setting ``name`` to ``values``.

    ``values`` is the list of literal values, ``[]`` for DEFAULT/RESET, or ``None`` when
    the value is not known (an expression or a Bind parameter not yet seen).
    ``as_list`` says the single value is a comma-separated list string (set_config).
    Returns ``(effects, value_needed)``: ``value_needed`` is True when the outcome
    depends on an unknown value — the caller defers to Bind or fails closed.
    """
    name = name.lower()
    if name in PRIVILEGE_SETTINGS:
        return [(Category.PRIVILEGE, f"set-{name.replace('_', '-')}", _PRIVILEGE[name])], False
    if name in VALUE_SENSITIVE:
        if values is None:
            return [
                (
                    Category.OPAQUE,
                    "dynamic-setting-value",
                    f"sets {name} to a value not known in advance, and the value decides",
                )
            ], True
        if not values:  # DEFAULT / RESET: back to the configured default
            return [(Category.CONTROL, "setting", f"resets {name} to its default")], False
        if _value_escapes(name, values, as_list):
            return [(Category.ESCAPE, f"escape-{name.replace('_', '-')}", _ESCAPES[name])], False
        return [(Category.CONTROL, "setting", f"sets {name}")], False
    known = name in SETTING_CONTEXTS
    if name in LIBRARY_SETTINGS:
        what = name if known else "a library setting"
        return [
            (Category.ADMIN, "library-setting", f"sets {what}, which loads code into the server")
        ], False
    if name.startswith(_ADMIN_PREFIXES):
        what = name if known else "a logging or monitoring setting"
        return [
            (
                Category.ADMIN,
                "logging-setting",
                f"changes {what}, which decides what the server records about activity",
            )
        ], False
    if "." in name:
        return [
            (
                Category.PRIVILEGE,
                "custom-setting",
                "sets a custom (dotted) setting, which row-level security policies may read "
                "to decide whose rows are visible",
            )
        ], False
    ctx = SETTING_CONTEXTS.get(name)
    if ctx is None:
        return [
            (Category.OPAQUE, "unknown-setting", "sets a setting PostgreSQL 18 does not have")
        ], False
    if ctx != "user":
        return [
            (
                Category.ADMIN,
                "server-setting",
                f"changes {name}, which only a superuser or the server's configuration "
                f"may change ({ctx} level)",
            )
        ], False
    return [(Category.CONTROL, "setting", f"sets {name}")], False


_PRIVILEGE = {
    "role": "changes the role later statements run as (SET ROLE)",
    "session_authorization": (
        "changes the session user later statements run as (SET SESSION AUTHORIZATION)"
    ),
}

#: Why each value-sensitive setting escapes, without quoting the value.
_ESCAPES = {
    "standard_conforming_strings": (
        "turns standard_conforming_strings off, so the server would read backslashes in "
        "strings differently from dbgate"
    ),
    "backslash_quote": (
        "turns backslash_quote on, so the server would read quotes in strings "
        "differently from dbgate"
    ),
    "client_encoding": (
        "switches client_encoding away from UTF8, so the server could read the bytes of a "
        "statement differently from dbgate"
    ),
    "default_transaction_read_only": (
        "turns default_transaction_read_only off, a read-only default the operator may have set"
    ),
    "transaction_read_only": (
        "turns transaction_read_only off, a read-only default the operator may have set"
    ),
    "session_replication_role": (
        "sets session_replication_role to other than origin, which disables triggers "
        "and foreign-key checks"
    ),
    "search_path": (
        "puts a schema before pg_catalog in search_path, so a user function could "
        "shadow a built-in that dbgate trusts"
    ),
    "transform_null_equals": (
        "turns transform_null_equals on, so the server would read `col = NULL` as "
        "`col IS NULL`, matching every row whose unique key is NULL where dbgate proves "
        "at most one"
    ),
}


def _value_escapes(name: str, values: Sequence[str], as_list: bool) -> bool:
    if name == "search_path":
        # SET search_path = a, 'b, c': each argument is one element, as written (the
        # server quotes it); set_config and ALTER ... SET 'a, b' give one string that
        # the server splits. A string it cannot split never takes effect, but we
        # cannot tell how it would shadow, so it escapes.
        schemas: list[str] = []
        for v in values:
            if as_list:
                parts = split_identifier_list(v)
                if parts is None:
                    return True
                schemas.extend(parts)
            else:
                schemas.append(v)
        return search_path_escapes(schemas)
    v = values[0]
    if name in ("standard_conforming_strings", "default_transaction_read_only"):
        return _truthy(v) is not True
    if name == "transaction_read_only":
        return _truthy(v) is not True
    if name == "backslash_quote":
        return v.strip().lower() not in ("off", "safe_encoding", "false", "no", "0")
    if name == "client_encoding":
        return v.strip().lower().replace("_", "") not in _UTF8
    if name == "session_replication_role":
        return v.strip().lower() != "origin"
    if name == "transform_null_equals":
        return _truthy(v) is not False
    return True  # pragma: no cover - every VALUE_SENSITIVE name is handled above


# -- time-valued settings (the session guards) --------------------------------------

#: PostgreSQL's time units for settings whose base unit is milliseconds, largest first
#: (guc.c time_unit_conversion_table). Unit names are case-sensitive.
_TIME_UNITS: tuple[tuple[str, float], ...] = (
    ("d", 1000.0 * 60 * 60 * 24),
    ("h", 1000.0 * 60 * 60),
    ("min", 1000.0 * 60),
    ("s", 1000.0),
    ("ms", 1.0),
    ("us", 1.0 / 1000),
)
_INT_MAX = 2**31 - 1
_LONG_MAX = 2**63 - 1
_HEX = "0123456789abcdefABCDEF"


def _strtol0(text: str) -> tuple[int, int, bool]:
    """C ``strtol(text, &end, 0)``: (value, end index, overflowed). end 0: no number."""
    i, n = 0, len(text)
    while i < n and text[i] in _C_SPACE:
        i += 1
    sign = 1
    if i < n and text[i] in "+-":
        sign = -1 if text[i] == "-" else 1
        i += 1
    if text.startswith(("0x", "0X"), i) and i + 2 < n and text[i + 2] in _HEX:
        j = i + 2
        while j < n and text[j] in _HEX:
            j += 1
        value, end = int(text[i + 2 : j], 16), j
    elif i < n and text[i] == "0":
        j = i + 1
        while j < n and text[j] in "01234567":
            j += 1
        value, end = int(text[i:j], 8), j
    elif i < n and text[i].isascii() and text[i].isdigit():
        j = i
        while j < n and text[j].isascii() and text[j].isdigit():
            j += 1
        value, end = int(text[i:j]), j
    else:
        return 0, 0, False
    value *= sign
    return value, end, not -_LONG_MAX - 1 <= value <= _LONG_MAX


_FLOAT = re.compile(r"[ \t\n\r\v\f]*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def _strtod(text: str) -> tuple[float, int]:
    """C ``strtod`` for the forms a setting value can take: (value, end index), end 0
    when there is no number (hexadecimal floats, infinities and NaN are not numbers a
    timeout can hold, and are reported as none)."""
    m = _FLOAT.match(text)
    if m is None or text[m.end() - 1 :].startswith(("x", "X")):
        return 0.0, 0
    try:
        return float(m.group().strip(_C_SPACE)), m.end()
    except ValueError:
        return 0.0, 0


def parse_time_ms(text: str) -> int | None:
    """A time setting's value in milliseconds, exactly as PostgreSQL's ``parse_int``
    reads it for a setting whose unit is ms (``statement_timeout`` and friends):
    an integer in C notation (``010`` is octal, ``0x10`` hexadecimal) or a decimal
    number, optional white space, an optional case-sensitive unit (``us``, ``ms``,
    ``s``, ``min``, ``h``, ``d``), rounded half to even. None when the server would
    refuse the value (no number, an unknown unit, out of the int range, negative)."""
    value, end, overflow = _strtol0(text)
    number: float = float(value)
    if (end and (overflow or (end < len(text) and text[end] in ".eE"))) or not end:
        number, end = _strtod(text)
        if not end:
            return None
    rest = text[end:].strip(_C_SPACE)
    if rest:
        unit = rest
        for name, multiplier in _TIME_UNITS:
            if unit == name:
                converted = number * multiplier
                smaller = _TIME_UNITS.index((name, multiplier)) + 1
                if smaller < len(_TIME_UNITS):
                    step = _TIME_UNITS[smaller][1]
                    converted = round(converted / step) * step
                number = converted
                break
        else:
            return None
    if number != number:  # NaN
        return None
    result = round(number)
    if result > _INT_MAX or result < 0:
        return None  # out of range for the setting: the server refuses it
    return result
