"""Parameter values as text, from the text or binary format the client chose.

Bind-time decisions (``LIMIT $1``, ``set_config($1, $2, false)``) read parameter
values. psycopg 3, asyncpg and SQLAlchemy on either send numbers in PostgreSQL's
binary format: ``5`` as an int4 is ``00 00 00 05``, which means nothing as text. A
binary value can only be read with its type, which the server knows from the Parse
message's parameter types or from its own inference (reported to the client, and so
to dbgate, as ParameterDescription). This module turns a value of a known type into
exactly the text PostgreSQL's output function would print for it.

Only the types a decision can rely on are decoded: integers, numeric, floats,
booleans, the character types, oid and uuid. Anything else gives None, and the
caller refuses rather than guesses.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from struct import Struct
from uuid import UUID

BOOL, BYTEA, NAME, INT8, INT2, INT4, TEXT, OID = 16, 17, 19, 20, 21, 23, 25, 26
JSON, FLOAT4, FLOAT8, UNKNOWN, BPCHAR, VARCHAR = 114, 700, 701, 705, 1042, 1043
NUMERIC, UUID_OID, JSONB, REGCLASS = 1700, 2950, 3802, 2205

_I16, _I32, _I64 = Struct("!h"), Struct("!i"), Struct("!q")
_U32, _F32, _F64 = Struct("!I"), Struct("!f"), Struct("!d")

#: Types whose binary form is their UTF-8 text (what PostgreSQL's *send* functions
#: emit for the character types).
TEXTUAL = frozenset({TEXT, VARCHAR, BPCHAR, NAME, UNKNOWN, JSON})


def _int(st: Struct) -> Callable[[bytes], str | None]:
    def decode(raw: bytes) -> str | None:
        return str(st.unpack(raw)[0]) if len(raw) == st.size else None

    return decode


def _pg_float_text(digits: str, exponent: int, negative: bool, sci_from: int) -> str:
    """Format shortest round-trip digits the way PostgreSQL's float output does:
    fixed notation for decimal exponents in [-4, sci_from), else ``d.ddde+XX``."""
    sign = "-" if negative else ""
    if -4 <= exponent < sci_from:
        point = exponent + 1  # digits before the decimal point
        if point <= 0:
            return f"{sign}0.{'0' * -point}{digits}"
        if point >= len(digits):
            return sign + digits + "0" * (point - len(digits))
        return f"{sign}{digits[:point]}.{digits[point:]}"
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{sign}{mantissa}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"


def _float(st: Struct, sci_from: int) -> Callable[[bytes], str | None]:
    """float4/float8 as PostgreSQL prints them (the fewest digits that read back
    exactly: ``100``, ``1.5``, ``1e+20``)."""

    def decode(raw: bytes) -> str | None:
        if len(raw) != st.size:
            return None
        value = st.unpack(raw)[0]
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        if value == 0:
            return "-0" if math.copysign(1.0, value) < 0 else "0"
        for significant in range(1, 18):  # the shortest digits that round-trip
            shortest = f"{abs(value):.{significant - 1}e}"
            if st.unpack(st.pack(float(shortest)))[0] == abs(value):
                break
        mantissa, _, exp = shortest.partition("e")
        digits = mantissa.replace(".", "").rstrip("0") or "0"
        return _pg_float_text(digits, int(exp), value < 0, sci_from)

    return decode


def _bool(raw: bytes) -> str | None:
    if raw == b"\x01":
        return "true"
    if raw == b"\x00":
        return "false"
    return None


def _text(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _jsonb(raw: bytes) -> str | None:
    return _text(raw[1:]) if raw[:1] == b"\x01" else None


def _uuid(raw: bytes) -> str | None:
    return str(UUID(bytes=raw)) if len(raw) == 16 else None


_NUMERIC_POS, _NUMERIC_NEG, _NUMERIC_NAN = 0x0000, 0x4000, 0xC000
_NUMERIC_PINF, _NUMERIC_NINF = 0xD000, 0xF000


def numeric_text(raw: bytes) -> str | None:
    """PostgreSQL's binary numeric: ndigits, weight, sign, dscale, then base-10000
    digits; printed with exactly ``dscale`` digits after the point."""
    if len(raw) < 8:
        return None
    ndigits, weight = _I16.unpack_from(raw, 0)[0], _I16.unpack_from(raw, 2)[0]
    sign = int.from_bytes(raw[4:6], "big")
    dscale = _I16.unpack_from(raw, 6)[0]
    if sign == _NUMERIC_NAN:
        return "NaN"
    if sign == _NUMERIC_PINF:
        return "Infinity"
    if sign == _NUMERIC_NINF:
        return "-Infinity"
    if sign not in (_NUMERIC_POS, _NUMERIC_NEG) or ndigits < 0 or dscale < 0:
        return None
    if len(raw) != 8 + 2 * ndigits:
        return None
    digits = [_I16.unpack_from(raw, 8 + 2 * i)[0] for i in range(ndigits)]
    if any(not 0 <= d < 10000 for d in digits):
        return None
    # The value is sum(digit_i * 10000 ** (weight - i)); scale it to an integer of
    # units of 10 ** -dscale, then place the point.
    value = 0
    for d in digits:
        value = value * 10000 + d
    exponent = 4 * (weight - ndigits + 1)  # value * 10 ** exponent is the number
    shift = exponent + dscale
    # (PostgreSQL stores no digits beyond dscale, so the division is exact.)
    units = value * 10**shift if shift >= 0 else value // 10 ** (-shift)
    text = str(units).rjust(dscale + 1, "0")
    if dscale:
        text = f"{text[:-dscale]}.{text[-dscale:]}"
    if sign == _NUMERIC_NEG and units:
        text = "-" + text
    return text


_BINARY: dict[int, Callable[[bytes], str | None]] = {
    INT2: _int(_I16),
    INT4: _int(_I32),
    INT8: _int(_I64),
    OID: lambda raw: str(_U32.unpack(raw)[0]) if len(raw) == 4 else None,
    REGCLASS: lambda raw: str(_U32.unpack(raw)[0]) if len(raw) == 4 else None,
    FLOAT4: _float(_F32, 6),
    FLOAT8: _float(_F64, 15),
    NUMERIC: numeric_text,
    BOOL: _bool,
    JSONB: _jsonb,
    UUID_OID: _uuid,
    **dict.fromkeys(TEXTUAL, _text),
}


def value_as_text(raw: bytes | None, fmt: int, type_oid: int) -> tuple[bool, str | None]:
    """``(ok, text)`` for one parameter value; ``ok`` is False when it cannot be read.

    ``fmt`` is its Bind format code (0 text, 1 binary); ``type_oid`` the type the
    server reads it as (0: not known). NULL is ``(True, None)``. Text-format values
    are the client's text whatever the type; binary ones need a type dbgate decodes.
    """
    if raw is None:
        return True, None
    if fmt == 0:
        text = _text(raw)
        return text is not None, text
    if fmt != 1:
        return False, None
    decode = _BINARY.get(type_oid)
    if decode is None:
        return False, None
    text = decode(raw)
    return text is not None, text


def values_as_text(
    values: tuple[bytes | None, ...], formats: tuple[int, ...], types: tuple[int, ...]
) -> list[str | None] | None:
    """Every value as text, or None when one cannot be read (the caller refuses).

    ``formats`` has one code per value (already expanded from Bind's short forms);
    ``types`` may be shorter than ``values`` (unknown types are 0).
    """
    out: list[str | None] = []
    for i, raw in enumerate(values):
        fmt = formats[i] if i < len(formats) else 0
        oid = types[i] if i < len(types) else 0
        ok, text = value_as_text(raw, fmt, oid)
        if not ok:
            return None
        out.append(text)
    return out
