"""Values of extensions' types, enums and ranges of the database's own: replaced by a
value of the same type, in the layout its driver adapters read (text and binary)."""

from __future__ import annotations

import struct

import pytest

from dbgate.pii.pseudonyms import Pseudonymizer, TypeRegistry
from dbgate.pii.schema import SchemaSnapshot, TypeInfo
from dbgate.pii.tokens import Key, Keyring, Tokenizer

HSTORE, LTREE, CUBE, VECTOR, MOOD, MOOD_D, BAND, BANDS, CITEXT = range(90001, 90010)

SNAP = SchemaSnapshot(
    types={
        HSTORE: TypeInfo(HSTORE, "hstore", "b"),
        LTREE: TypeInfo(LTREE, "ltree", "b"),
        CUBE: TypeInfo(CUBE, "cube", "b"),
        VECTOR: TypeInfo(VECTOR, "vector", "b"),
        MOOD: TypeInfo(MOOD, "mood", "e", labels=("calm", "tense")),
        MOOD_D: TypeInfo(MOOD_D, "mood_d", "d", base=MOOD),
        BAND: TypeInfo(BAND, "float_band", "r", subtype=701),
        BANDS: TypeInfo(BANDS, "float_band_multirange", "m", subtype=BAND),
        CITEXT: TypeInfo(CITEXT, "citext", "b"),
    }
)


def _pseudonymizers() -> list[Pseudonymizer]:
    tok = Tokenizer(Keyring([Key("k", b"f" * 32)]), "hashed")
    types = TypeRegistry(SNAP)
    return [Pseudonymizer(tok, types), Pseudonymizer(tok.fresh(), types)]


@pytest.mark.parametrize("p", _pseudonymizers())
def test_an_hstore_becomes_one_pair_holding_the_whole_values_token(p: Pseudonymizer) -> None:
    raw = b'"email"=>"ann@x.io", "phone"=>"555"'
    text = p.value("pii", HSTORE, 0, raw)
    assert text.startswith(b'"pii"=>"tok_pii_') and text.endswith(b'"') and b"ann" not in text
    binary = p.value("pii", HSTORE, 1, struct.pack("!i", 2) + b"\0" * 8)
    count, klen = struct.unpack_from("!ii", binary)
    assert count == 1 and binary[8 : 8 + klen] == b"pii"
    (vlen,) = struct.unpack_from("!i", binary, 8 + klen)
    assert binary[12 + klen :].startswith(b"tok_pii_") and len(binary) == 12 + klen + vlen
    assert p.null("pii", HSTORE, 0).startswith(b'"pii"=>"tok_pii_')


@pytest.mark.parametrize("p", _pseudonymizers())
def test_ltree_cube_vector_and_citext_keep_their_layouts(p: Pseudonymizer) -> None:
    assert p.value("address", LTREE, 0, b"Top.Ann_Smith").startswith(b"tok_address_")
    assert p.value("address", LTREE, 1, b"\x01Top.Ann_Smith").startswith(b"\x01tok_address_")
    cube = p.value("geo", CUBE, 0, b"(40.1, -70.2)")
    assert cube.startswith(b"(") and float(cube[1:-1]) > 0
    header, coord = struct.unpack("!Id", p.value("geo", CUBE, 1, b"\0" * 36))
    assert header == 0x80000001 and coord > 0
    vec = p.value("name", VECTOR, 0, b"[1,2,3]")
    assert vec.startswith(b"[") and float(vec[1:-1]) > 0
    dim, unused, elem = struct.unpack("!hhf", p.value("name", VECTOR, 1, b"\0" * 16))
    assert (dim, unused) == (1, 0) and elem > 0
    assert p.value("email", CITEXT, 1, b"Ann@x.io").startswith(b"tok_email_")


@pytest.mark.parametrize("p", _pseudonymizers())
def test_an_enum_and_a_domain_over_it_get_one_of_its_labels(p: Pseudonymizer) -> None:
    for oid in (MOOD, MOOD_D):
        for fmt in (0, 1):
            assert p.value("pii", oid, fmt, b"calm") in (b"calm", b"tense")
            assert p.null("pii", oid, fmt) in (b"calm", b"tense")


@pytest.mark.parametrize("p", _pseudonymizers())
def test_a_range_of_the_databases_own_is_one_range_of_its_subtype(p: Pseudonymizer) -> None:
    text = p.value("pii", BAND, 0, b"empty")
    lo, hi = text.decode()[1:-1].split(",")
    assert text[:1] == b"[" and float(lo) > 0 and float(hi) > 0
    binary = p.value("pii", BAND, 1, b"\x01")
    assert binary[0] == 0x06 and len(binary) == 1 + 2 * (4 + 8)
    multi = p.value("pii", BANDS, 0, b"{[1,2),[3,4)}")
    assert multi.startswith(b"{[") and multi.count(b",") == 1
    assert struct.unpack_from("!i", p.value("pii", BANDS, 1, struct.pack("!i", 0)))[0] == 1
