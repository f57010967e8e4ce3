"""Binary parameter values read as PostgreSQL prints them, checked against the server.

The unit table pins the encodings; the property test sends random values through a
real server (``$1::type::text`` with the value bound in binary) and compares the
server's own text with ours, so "what PostgreSQL would print" is measured, not assumed.
"""

from __future__ import annotations

import struct
from decimal import Decimal

import pytest

from dbgate.wire import values as v


@pytest.mark.parametrize(
    ("raw", "fmt", "oid", "expected"),
    [
        (None, 1, v.INT4, (True, None)),
        (b"5", 0, v.INT4, (True, "5")),
        (b"\x00\x00\x00\x05", 1, v.INT4, (True, "5")),
        (b"\xff\xfb", 1, v.INT2, (True, "-5")),
        (struct.pack("!q", 10**12), 1, v.INT8, (True, "1000000000000")),
        (b"\x00\x00\x00\x05", 1, 0, (False, None)),  # binary of an unknown type
        (b"\x00\x00\x00\x05", 1, v.INT8, (False, None)),  # wrong width
        (b"work_mem", 1, v.TEXT, (True, "work_mem")),
        (b"\xff", 1, v.TEXT, (False, None)),  # not UTF-8
        (b"\x01", 1, v.BOOL, (True, "true")),
        (b"\x02", 1, v.BOOL, (False, None)),
        (struct.pack("!d", 100.0), 1, v.FLOAT8, (True, "100")),
        (struct.pack("!f", 0.1), 1, v.FLOAT4, (True, "0.1")),
        (b"\x01{}", 1, v.JSONB, (True, "{}")),
        (b"abc", 2, v.TEXT, (False, None)),  # no such format code
    ],
)
def test_value_as_text(raw: bytes | None, fmt: int, oid: int, expected: tuple) -> None:
    assert v.value_as_text(raw, fmt, oid) == expected


def _numeric(d: Decimal) -> bytes:
    """Encode a Decimal as PostgreSQL's binary numeric (the way psycopg does)."""
    sign, digits, exp = d.as_tuple()
    assert isinstance(exp, int)
    dscale = max(0, -exp)
    # group the decimal digits into base-10000 digits aligned on the decimal point
    text = "".join(map(str, digits))
    int_len = len(text) + exp
    pad_left = (-int_len) % 4
    text = "0" * pad_left + text
    int_len += pad_left
    pad_right = (-len(text)) % 4
    text += "0" * pad_right
    groups = [int(text[i : i + 4]) for i in range(0, len(text), 4)]
    weight = int_len // 4 - 1
    while groups and groups[0] == 0:
        groups.pop(0)
        weight -= 1
    while groups and groups[-1] == 0:
        groups.pop()
    head = struct.pack("!hhHh", len(groups), weight if groups else 0, 0x4000 if sign else 0, dscale)
    return head + b"".join(struct.pack("!h", g) for g in groups)


@pytest.mark.parametrize(
    "text", ["0", "5", "-5", "10000", "0.001", "123.4500", "-0.50", "99999999.99", "1E+5"]
)
def test_numeric_as_postgres_prints_it(text: str) -> None:
    d = Decimal(text)
    assert v.numeric_text(_numeric(d)) == format(d, "f")


def test_values_as_text_refuses_when_one_value_is_unreadable() -> None:
    assert v.values_as_text((b"\x00\x00\x00\x05", b"x"), (1, 0), (v.INT4, 0)) == ["5", "x"]
    assert v.values_as_text((b"\x00\x00\x00\x05",), (1,), ()) is None


@pytest.mark.integration
def test_binary_values_read_as_the_server_prints_them(pg_dsn: str) -> None:
    """Random values bound in binary by psycopg (``%b``): the server's own ``::text``
    of each equals what dbgate reads from the bytes."""
    import random

    import psycopg

    rnd = random.Random(20261130)
    floats = [0.0, -0.0, 100.0, 1e15, 1e14, 1e-4, 1e-5, 1.5, -2.25, 1 / 3, 1e20, 123456.789]
    floats += [rnd.uniform(-1e6, 1e6) for _ in range(40)] + [rnd.random() * 1e-7 for _ in range(10)]
    decimals = [Decimal(x) for x in ("0", "0.000", "123.4500", "-1e-10", "1e30", "42")]
    decimals += [
        Decimal(rnd.randint(-(10**12), 10**12)) / 10 ** rnd.randint(0, 8) for _ in range(40)
    ]
    cases: list[tuple[str, object, int]] = [
        *((("float8", f, v.FLOAT8)) for f in floats),
        *((("numeric", d, v.NUMERIC)) for d in decimals),
        *((("int8", rnd.randint(-(2**62), 2**62), v.INT8)) for _ in range(20)),
        (("bool", True, v.BOOL)),
    ]
    with psycopg.connect(pg_dsn) as conn:
        for pg_type, value, oid in cases:
            cur = conn.cursor(binary=True)
            cur.execute(f"select %b::{pg_type}, %b::{pg_type}::text", [value, value])
            raw_row = cur.pgresult.get_value(0, 0)  # type: ignore[union-attr]
            server_text = cur.pgresult.get_value(0, 1).decode()  # type: ignore[union-attr]
            assert raw_row is not None
            assert v.value_as_text(bytes(raw_row), 1, oid) == (True, server_text), (pg_type, value)
