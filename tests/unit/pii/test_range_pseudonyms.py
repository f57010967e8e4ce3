"""Ranges and multiranges made from PII: a range of the same type whose bounds are
pseudonyms of the subtype, in the text and binary formats, with one shape whatever
the value's was (empty, bounds included or infinite, how many ranges)."""

from __future__ import annotations

import struct

import pytest

from dbgate.pii.pseudonyms import Pseudonymizer, TypeRegistry
from dbgate.pii.tokens import Key, Keyring, Tokenizer

DATERANGE, INT4RANGE, TSTZRANGE, DATEMULTIRANGE = 3912, 3904, 3910, 4535


def _pseudonymizers() -> tuple[Pseudonymizer, Pseudonymizer]:
    tok = Tokenizer(Keyring([Key("k", b"f" * 32)]), "hashed")
    types = TypeRegistry()
    return Pseudonymizer(tok, types), Pseudonymizer(tok.fresh(), types)


def _binary_range(lower: bytes | None, upper: bytes | None, flags: int = 0x02) -> bytes:
    out = bytes((flags | (0 if lower else 0x08) | (0 if upper else 0x10),))
    for b in (lower, upper):
        if b:
            out += struct.pack("!i", len(b)) + b
    return out


def _text_bounds(value: bytes) -> list[str]:
    text = value.decode()
    assert text[0] == "[" and text[-1] == "]", text
    return [b.strip('"') for b in text[1:-1].split(",")]


@pytest.mark.parametrize(
    "raw", [b"[1958-06-16,1958-06-17)", b"empty", b"(,1958-06-17]", b"[1958-06-16,)"]
)
def test_a_text_range_gets_two_date_bounds_whatever_its_shape(raw: bytes) -> None:
    for p in _pseudonymizers():
        bounds = _text_bounds(p.value("birth_date", DATERANGE, 0, raw))
        assert len(bounds) == 2 and all(len(b) == 10 and b[4] == "-" for b in bounds)


def test_a_stored_range_keeps_its_bounds_pseudonyms_and_a_derived_one_does_not() -> None:
    stored, fresh = _pseudonymizers()
    raw = b"[1958-06-16,1958-06-17)"
    assert stored.value("birth_date", DATERANGE, 0, raw) == stored.value(
        "birth_date", DATERANGE, 0, raw
    )
    lower = _text_bounds(stored.value("birth_date", DATERANGE, 0, raw))[0]
    assert lower.encode() == stored.value("birth_date", 1082, 0, b"1958-06-16")
    assert fresh.value("birth_date", DATERANGE, 0, raw) != fresh.value(
        "birth_date", DATERANGE, 0, raw
    )


@pytest.mark.parametrize(
    "raw",
    [
        _binary_range(struct.pack("!i", 97), struct.pack("!i", 98)),
        b"\x01",  # empty
        _binary_range(struct.pack("!i", 97), None),
    ],
)
def test_a_binary_range_has_one_layout(raw: bytes) -> None:
    _, fresh = _pseudonymizers()
    out = fresh.value("email", INT4RANGE, 1, raw)
    assert out[0] == 0x06 and len(out) == 1 + 2 * (4 + 4)
    assert struct.unpack_from("!i", out, 1)[0] == 4 and struct.unpack_from("!i", out, 9)[0] == 4


def test_a_multirange_holds_one_range_whatever_it_held() -> None:
    _, fresh = _pseudonymizers()
    for raw in (b"{}", b"{[1958-06-16,1958-06-17),[1960-01-01,1960-01-02)}"):
        out = fresh.value("birth_date", DATEMULTIRANGE, 0, raw).decode()
        assert out.startswith("{[") and out.endswith("]}") and out.count("[") == 1
    one = _binary_range(struct.pack("!i", 1), struct.pack("!i", 2))
    raw = struct.pack("!i", 2) + 2 * (struct.pack("!i", len(one)) + one)
    out = fresh.value("birth_date", DATEMULTIRANGE, 1, raw)
    assert struct.unpack_from("!i", out, 0)[0] == 1


def test_a_null_range_where_a_derived_one_would_be_is_a_range() -> None:
    _, fresh = _pseudonymizers()
    assert len(_text_bounds(fresh.null("birth_date", TSTZRANGE, 0))) == 2
    assert fresh.null("birth_date", TSTZRANGE, 1)[0] == 0x06


BIT, VARBIT = 1560, 1562


@pytest.mark.parametrize("raw", [b"0110", b"0" * 200])
def test_a_bit_string_gets_sixty_four_bits_whatever_its_length(raw: bytes) -> None:
    """A bit string's length may be what an expression chose (``email::bytea`` as
    bits); asyncpg failed on a token's bytes there."""
    for p in _pseudonymizers():
        text = p.value("email", VARBIT, 0, raw)
        assert len(text) == 64 and set(text) <= set(b"01")
        n = len(raw)
        binary = struct.pack("!i", n) + int(raw, 2).to_bytes((n + 7) // 8, "big")
        out = p.value("email", BIT, 1, binary)
        assert struct.unpack_from("!i", out, 0)[0] == 64 and len(out) == 4 + 8


def test_a_stored_bit_strings_pseudonym_is_the_same_in_text_and_binary() -> None:
    stored, _ = _pseudonymizers()
    text = stored.value("email", VARBIT, 0, b"10100001")
    binary = stored.value("email", VARBIT, 1, struct.pack("!i", 8) + b"\xa1")
    assert int(text, 2).to_bytes(8, "big") == binary[4:]


POINT, PATH, POLYGON, CIRCLE = 600, 602, 604, 718


def test_geometric_values_keep_their_binary_layout_in_one_shape() -> None:
    """asyncpg failed on a token's bytes where a point, a box or a circle made from
    PII was; a path's or polygon's point count may be what the value chose."""
    _, fresh = _pseudonymizers()
    assert len(fresh.value("geo", POINT, 1, struct.pack("!dd", 97.0, 21.0))) == 16
    assert len(fresh.value("geo", CIRCLE, 1, struct.pack("!ddd", 97.0, 1.0, 2.0))) == 24
    for n in (2, 5):
        raw = b"\x00" + struct.pack("!i", n) + bytes(16 * n)
        path = fresh.value("geo", PATH, 1, raw)
        assert path[0] == 1 and struct.unpack_from("!i", path, 1)[0] == 2 and len(path) == 37
        polygon = fresh.value("geo", POLYGON, 1, struct.pack("!i", n) + bytes(16 * n))
        assert struct.unpack_from("!i", polygon, 0)[0] == 3 and len(polygon) == 52
    assert fresh.value("geo", POINT, 0, b"(97,21)").count(b",") == 1
    assert fresh.value("geo", CIRCLE, 0, b"<(97,1),2>").startswith(b"<(")


def test_a_box_array_is_read_and_written_with_its_own_delimiter() -> None:
    """box[] separates its elements with ``;`` (a box's text holds commas)."""
    stored, fresh = _pseudonymizers()
    raw = b"{(1,1),(0,0);(2,2),(1,1)}"
    out = stored.value("geo", 1020, 0, raw).decode()
    assert out.count(";") == 1 and '"' not in out
    one = fresh.value("geo", 1020, 0, raw).decode()
    assert one.startswith("{(") and ";" not in one and '"' not in one


def test_a_domain_over_a_range_is_replaced_as_the_range() -> None:
    from dbgate.pii.schema import SchemaSnapshot, TypeInfo

    snap = SchemaSnapshot(types={90001: TypeInfo(90001, "stay", "d", base=DATERANGE)})
    tok = Tokenizer(Keyring([Key("k", b"f" * 32)]), "hashed")
    p = Pseudonymizer(tok.fresh(), TypeRegistry(snap))
    assert len(_text_bounds(p.value("birth_date", 90001, 0, b"[1958-06-16,1958-06-17)"))) == 2
