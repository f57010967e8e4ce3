"""Type-preserving replacements, the DataRow rewriter and the COPY rewriters."""

from __future__ import annotations

import ipaddress
import json
import struct
import uuid
from datetime import date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbgate.pii.copyout import BinaryCopyRewriter, CsvCopyRewriter, TextCopyRewriter
from dbgate.pii.pseudonyms import Pseudonymizer, TypeRegistry
from dbgate.pii.rows import ColumnAction, RowRewriter, ValueCache
from dbgate.pii.tokens import Key, Keyring, Tokenizer
from dbgate.wire.backend import DataRow
from dbgate.wire.framing import split_frames
from dbgate.wire.messages import data_row, parse_data_row

TOK = Tokenizer(Keyring([Key("k", b"k" * 32)]), "hashed")
P = Pseudonymizer(TOK, TypeRegistry())
EPOCH = date(2000, 1, 1)


def text(oid: int, raw: bytes, entity: str = "pii") -> bytes:
    return P.value(entity, oid, 0, raw)


def binary(oid: int, raw: bytes, entity: str = "pii") -> bytes:
    return P.value(entity, oid, 1, raw)


def test_text_format_values_keep_their_type() -> None:
    assert text(25, b"ann@x.io").startswith(b"tok_pii_h")
    assert json.loads(text(3802, b'{"a": 1}')).startswith("tok_pii_")
    assert json.loads(text(114, b"[1]")).startswith("tok_pii_")
    d = date.fromisoformat(text(1082, b"1990-05-01").decode())
    assert date(1920, 1, 1) <= d <= date(2009, 12, 31) and d != date(1990, 5, 1)
    datetime.fromisoformat(text(1114, b"2020-01-01 10:00:00").decode())
    assert text(1184, b"2020-01-01 10:00:00+01").endswith(b"+00")
    uuid.UUID(text(2950, b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").decode())
    assert ipaddress.ip_address(text(869, b"192.168.1.1").decode()) in ipaddress.ip_network(
        "10.0.0.0/8"
    )
    assert ipaddress.ip_address(text(869, b"2001:db8::1").decode()) in ipaddress.ip_network(
        "fd00::/8"
    )
    assert text(650, b"192.168.0.0/24").endswith(b"/32")
    assert int(text(23, b"42")) > 0 and int(text(1700, b"12.5")) > 0
    assert text(16, b"t") in (b"t", b"f")
    assert bytes.fromhex(text(17, b"\\x0102")[2:].decode()).startswith(b"tok_pii_")
    assert len(text(829, b"08:00:2b:01:02:03").split(b":")) == 6


def test_text_and_binary_dates_get_the_same_pseudonym() -> None:
    iso = text(1082, b"1991-10-15", "birth_date")
    days = struct.unpack(
        "!i", binary(1082, struct.pack("!i", (date(1991, 10, 15) - EPOCH).days), "birth_date")
    )[0]
    assert (EPOCH + timedelta(days=days)).isoformat().encode() == iso
    assert (
        text(23, b"42") == str(struct.unpack("!i", binary(23, struct.pack("!i", 42)))[0]).encode()
    )


def test_binary_values_keep_their_layout() -> None:
    assert len(binary(20, struct.pack("!q", 7))) == 8
    assert len(binary(21, struct.pack("!h", 7))) == 2
    assert len(binary(1114, struct.pack("!q", 0))) == 8
    assert len(binary(2950, uuid.uuid4().bytes)) == 16
    inet = binary(869, bytes((2, 32, 0, 4, 192, 168, 1, 1)))
    assert inet[:4] == bytes((2, 32, 0, 4)) and inet[4] == 10
    assert binary(3802, b'\x01{"a":1}').startswith(b'\x01"tok_pii_')
    ndig, weight, sign, dscale = struct.unpack_from(
        "!hhHH", binary(1700, b"\x00\x01\x00\x00\x00\x00\x00\x00\x00\x07")
    )
    assert ndig >= 1 and sign == 0 and dscale == 0 and weight == ndig - 1


def test_arrays_text_keep_structure_nulls_and_quoting() -> None:
    out = text(1009, b'{ann@x.io,NULL,"with, comma",""}').decode()
    assert out.startswith("{tok_pii_") and ",NULL," in out and out.count("tok_pii_") == 3
    nested = text(1182, b"{{1990-01-01,NULL},{1991-02-02,1992-03-03}}").decode()
    assert nested.count("{") == 3 and "NULL" in nested
    assert text(1007, b"[0:1]={1,2}").startswith(b"[0:1]={")
    jsons = text(3807, b'{"{\\"a\\": 1}"}')
    assert jsons.startswith(b'{"\\"tok_pii_')


def test_arrays_binary() -> None:
    elems = [b"a@x.io", None, b"b@x.io"]
    body = struct.pack("!iiI", 1, 1, 25) + struct.pack("!ii", 3, 1)
    for e in elems:
        body += b"\xff\xff\xff\xff" if e is None else struct.pack("!i", len(e)) + e
    out = binary(1009, body)
    assert out[:20] == body[:20]
    n = struct.unpack_from("!i", out, 20)[0]
    assert out[24 : 24 + n].startswith(b"tok_pii_") and b"\xff\xff\xff\xff" in out


def test_records_text_and_binary() -> None:
    out = text(2249, b'(1,"Ann Lee",ann@x.io,,"")').decode()
    fields = out[1:-1].split(",")
    assert (
        len(fields) == 5 and fields[3] == "" and all(f.startswith("tok_pii_") for f in fields[:3])
    )
    rec = (
        struct.pack("!i", 2)
        + struct.pack("!Ii", 23, 4)
        + struct.pack("!i", 5)
        + struct.pack("!Ii", 25, -1)
    )
    out_b = binary(2249, rec)
    assert struct.unpack_from("!iIi", out_b, 0) == (2, 23, 4) and out_b.endswith(
        struct.pack("!Ii", 25, -1)
    )


def test_values_that_do_not_parse_are_still_replaced() -> None:
    date.fromisoformat(text(1082, b"infinity").decode())  # any text gets a valid date
    assert binary(2950, b"short").startswith(b"tok_pii_")
    assert text(1009, b"\xff{not utf8").startswith(b"tok_pii_")
    assert text(1009, b"{unbalanced").startswith(b"tok_pii_")


# ---------------------------------------------------------------------------- rows


def rewriter(actions: list[ColumnAction], ncols: int) -> RowRewriter:
    return RowRewriter(actions, ncols, P, ValueCache())


def test_only_pii_columns_change() -> None:
    rw = rewriter([ColumnAction(1, "email", 25, 0)], 3)
    body = data_row([b"1", b"ann@x.io", b"paid"])[5:]
    out = parse_data_row(rw.data_row(body))
    assert (
        out[0] == b"1" and out[2] == b"paid" and out[1] == TOK.token("email", b"ann@x.io").encode()
    )


def test_nulls_empty_strings_and_huge_values() -> None:
    rw = rewriter([ColumnAction(0, "name", 25, 0), ColumnAction(1, "name", 25, 0)], 3)
    assert rw.data_row(data_row([None, None, b"x"])[5:]) == data_row([None, None, b"x"])[5:]
    out = parse_data_row(rw.data_row(data_row([b"", None, b"x"])[5:]))
    assert out[0].startswith(b"tok_name_") and out[1] is None
    huge = b"x" * (100 * 1024 * 1024)
    out = parse_data_row(rw.data_row(data_row([huge, b"y", b"z"])[5:]))
    assert len(out[0]) < 100 and out[2] == b"z"


def test_data_rows_buffer_equals_row_by_row() -> None:
    rw = rewriter([ColumnAction(0, "email", 25, 0)], 2)
    msgs = [data_row([f"u{i}@x.io".encode(), b"1"]) for i in range(5)]
    buf = b"".join(msgs[:2]) + b"C\x00\x00\x00\x0dSELECT 5\x00" + b"".join(msgs[2:])
    expected = b"".join(
        b"D" + struct.pack("!I", len(rw.data_row(x[5:])) + 4) + rw.data_row(x[5:])
        if x[0] == 0x44
        else x
        for x in [*msgs[:2], b"C\x00\x00\x00\x0dSELECT 5\x00", *msgs[2:]]
    )
    assert rw.data_rows(buf, 0, len(buf)) == expected
    assert rw.data_rows_py(buf, 0, len(buf)) == expected
    # a run inside a larger read: only buf[start:end] is rewritten and returned
    framed = b"Z\x00\x00\x00\x05I" + buf + b"Z\x00\x00\x00\x05I"
    assert rw.data_rows(framed, 6, 6 + len(buf)) == expected
    with pytest.raises(ValueError):
        rw.data_rows(buf, 0, len(buf) - 1)
    with pytest.raises(ValueError):
        rw.data_rows_py(buf, 0, len(buf) - 1)
    nulls = data_row([None, b"1"]) * 3
    assert rw.data_rows(nulls, 0, len(nulls)) is None  # nothing to replace: unchanged
    assert rw.data_rows_py(nulls, 0, len(nulls)) is None


values = st.one_of(st.none(), st.binary(max_size=40))


@settings(max_examples=300, deadline=None)
@given(st.lists(values, min_size=1, max_size=12), st.data())
def test_property_rewritten_rows_are_valid_and_touch_only_pii(
    row: list[bytes | None], data: st.DataObject
) -> None:
    pii = data.draw(st.sets(st.integers(0, len(row) - 1)))
    rw = rewriter([ColumnAction(i, "pii", 25, 0) for i in pii], len(row))
    out = parse_data_row(rw.data_row(data_row(row)[5:]))
    assert len(out) == len(row)
    for i, (before, after) in enumerate(zip(row, out, strict=True)):
        if i in pii and before is not None:
            assert after == TOK.token("pii", before).encode()
        else:
            assert after == before


# ---------------------------------------------------------------------------- COPY


def rep(_i: int, raw: bytes) -> bytes:
    return b"T(" + raw + b")"


def test_text_copy_escapes_nulls_and_split_messages() -> None:
    rw = TextCopyRewriter({1: rep})
    part1 = rw.copy_data(b"1\tann\\tlee\t\\N\n2\t\\N\tx")
    part2 = rw.copy_data(b"\n")
    assert part1 + part2 == b"1\tT(ann\\tlee)\t\\N\n2\t\\N\tx\n"
    assert TextCopyRewriter({0: rep}, delimiter="|").copy_data(b"a\\|b|c\n") == b"T(a\\|b)|c\n"


def test_csv_copy_quoted_multiline_fields_header_and_null() -> None:
    rw = CsvCopyRewriter({1: rep}, header=True)
    out = rw.copy_data(b'id,addr\n1,"12 Main St,\nApt ""3"""\n') + rw.copy_data(b'2,\n3,""\n')
    assert out == b'id,addr\n1,"T(12 Main St,\nApt ""3"")"\n2,\n3,T()\n'


def test_binary_copy_header_tuples_trailer_split_anywhere() -> None:
    header = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
    tup = struct.pack("!h", 2) + struct.pack("!i", 1) + b"7" + struct.pack("!i", 3) + b"ann"
    null_tup = struct.pack("!h", 2) + struct.pack("!i", 1) + b"8" + struct.pack("!i", -1)
    stream = header + tup + null_tup + struct.pack("!h", -1)
    whole = BinaryCopyRewriter({1: rep}).copy_data(stream)
    rw = BinaryCopyRewriter({1: rep})
    pieces = b"".join(rw.copy_data(stream[i : i + 3]) for i in range(0, len(stream), 3))
    assert pieces == whole
    assert b"T(ann)" in whole and whole.endswith(null_tup + b"\xff\xff")


# ---------------------------------------------------------------------------- compiled loop

rows_c = pytest.importorskip("dbgate.pii._rows", reason="the C row loop is optional (no compiler)")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(st.none(), st.binary(max_size=300)), min_size=1, max_size=10),
    st.data(),
    st.sampled_from(["hashed", "reversible"]),
)
def test_property_compiled_loop_equals_python(
    row: list[bytes | None], data: st.DataObject, mode: str
) -> None:
    tok = Tokenizer(Keyring([Key("k", b"q" * 32)]), mode)
    p = Pseudonymizer(tok, TypeRegistry())
    pii = sorted(data.draw(st.sets(st.integers(0, len(row) - 1))))
    oids = [data.draw(st.sampled_from([25, 1043, 3802, 1082, 17])) for _ in pii]
    actions = [ColumnAction(i, "email", oid, 0) for i, oid in zip(pii, oids, strict=True)]
    body = data_row(row)[5:]
    compiled = RowRewriter(actions, len(row), p, ValueCache())
    reference = RowRewriter(actions, len(row), p, ValueCache())
    assert compiled.data_row(body) == reference.data_row_py(body)
    assert compiled.data_row(body) == reference.data_row_py(body)  # second time: from the caches


@pytest.mark.parametrize("simd", [True, False])
def test_compiled_blake2b_matches_hashlib(simd: bool) -> None:
    """Both compressions (AVX2 where the CPU has it, and the portable one) give
    hashlib's bytes; the one chosen at import is put back afterwards."""
    import hashlib
    import os

    default = rows_c.use_simd(True)
    try:
        if rows_c.use_simd(simd) != simd:
            pytest.skip("this CPU has no AVX2")
        for n in [*range(0, 260), 1000, 100_000]:
            value, key, person = os.urandom(n), os.urandom(1 + n % 64), os.urandom(16)
            expected = (
                hashlib.blake2b(value, key=key, person=person, digest_size=16).hexdigest().encode()
            )
            assert rows_c.hashed_token(b"p_", key, person, value) == b"p_" + expected
    finally:
        rows_c.use_simd(default)


def test_compiled_loop_rejects_bodies_that_do_not_parse() -> None:
    rw = RowRewriter([ColumnAction(1, "email", 25, 0)], 2, P, ValueCache())
    with pytest.raises(ValueError):
        rw.data_row(b"\x00\x02\x00\x00\x00\x05ab")


def _run(rows: list[list[bytes | None]], others: bool) -> bytes:
    """Framed DataRows, with a CommandComplete after every third when ``others``."""
    out = b""
    for i, row in enumerate(rows):
        out += data_row(row)
        if others and i % 3 == 2:
            out += b"C\x00\x00\x00\x0dSELECT 5\x00"
    return out


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 6),
    st.lists(st.lists(st.one_of(st.none(), st.binary(max_size=300)), min_size=6, max_size=6)),
    st.data(),
    st.sampled_from(["hashed", "reversible"]),
    st.booleans(),
    st.booleans(),
)
def test_property_compiled_runs_equal_python(
    width: int,
    rows: list[list[bytes | None]],
    data: st.DataObject,
    mode: str,
    others: bool,
    simd: bool,
) -> None:
    """Byte for byte, with the values hashed four at a time (AVX2, when the CPU has it)
    and one at a time; and every hashed token the compiled loop shows resolves."""
    key = Key("k", b"q" * 32)
    tok = Tokenizer(Keyring([key]), mode)
    pii = sorted(data.draw(st.sets(st.integers(0, width - 1))))
    oids = [data.draw(st.sampled_from([25, 1043, 3802, 1082, 17])) for _ in pii]
    actions = [ColumnAction(i, "email", oid, 0) for i, oid in zip(pii, oids, strict=True)]
    buf = _run([r[:width] for r in rows], others)
    compiled = RowRewriter(actions, width, Pseudonymizer(tok, TypeRegistry()), ValueCache())
    ref_tok = Tokenizer(Keyring([key]), mode)  # its own: tokens the reference issues do not count
    reference = RowRewriter(actions, width, Pseudonymizer(ref_tok, TypeRegistry()), ValueCache())
    default = rows_c.use_simd(True)
    try:
        rows_c.use_simd(simd)
        for _ in range(2):  # the second time from the caches
            out = compiled.data_rows(buf, 0, len(buf))
            assert out == reference.data_rows_py(buf, 0, len(buf))
    finally:
        rows_c.use_simd(default)
    if mode != "hashed" or out is None:
        return
    shown = [parse_data_row(out[s:e]) for t, s, e in split_frames(out) if t == ord("D")]
    for raw_row, row in zip((r[:width] for r in rows), shown, strict=True):
        for i, oid in zip(pii, oids, strict=True):
            if oid in (25, 1043) and raw_row[i] is not None:
                assert tok.resolve(row[i].decode()) == ("email", raw_row[i])  # type: ignore[union-attr]


def test_many_distinct_values_skip_the_cache_with_the_same_tokens_all_resolvable() -> None:
    """A million distinct e-mails miss the cache: the compiled loop stops looking them
    up for a while (rows.py / _rows.c), and must still give every value its token and
    remember it as issued."""
    tok = Tokenizer(Keyring([Key("k", b"q" * 32)]), "hashed")
    p = Pseudonymizer(tok, TypeRegistry())
    cache = ValueCache()
    rw = RowRewriter([ColumnAction(0, "email", 25, 0)], 2, p, cache)
    values = [f"user{i}@example.com".encode() for i in range(6000)]
    hot = [b"hot@example.com"] * 3000  # then repeated values: the cache is used again
    rows = [[v, b"1"] for v in values + hot + values[:500]]
    out = b""
    for i in range(0, len(rows), 700):
        buf = _run(rows[i : i + 700], False)
        out += rw.data_rows(buf, 0, len(buf)) or buf
        if i + 700 == 6300:  # the distinct values are done: most were not cached
            assert 0 < len(cache.table(rw.actions[0])) < 2000
    tokens = [decode(out[s:e]).columns[0] for _, s, e in split_frames(out)]
    expected = [tok.token("email", r[0]).encode() for r in rows]  # type: ignore[arg-type]
    assert tokens == expected
    for value, token in zip(values[::97], expected[: len(values) : 97], strict=True):
        assert tok.resolve(token.decode()) == ("email", value)


def test_a_cached_token_always_resolves_after_the_tokenizer_forgets() -> None:
    """The value cache forgets with the tokenizer: a hot value's token shown after a
    flood of others is issued again, so the agent can send it back."""
    tok = Tokenizer(Keyring([Key("k", b"q" * 32)]), "hashed", cache_entries=100)
    p = Pseudonymizer(tok, TypeRegistry())
    cache = ValueCache()
    tok.on_forget(cache.forget)
    for compiled in (True, False):
        rw = RowRewriter([ColumnAction(0, "email", 25, 0)], 1, p, cache)
        rewrite = rw.data_rows if compiled else rw.data_rows_py
        for round_ in range(5):
            rows = [[b"hot@x.io"]] + [[f"r{round_}-{i}@x.io".encode()] for i in range(150)]
            buf = _run([*rows, [b"hot@x.io"]], False)
            out = rewrite(buf, 0, len(buf))
            assert out is not None
            _t, start, end = split_frames(out)[-1]
            token = decode(out[start:end]).columns[0].decode()
            assert tok.resolve(token) == ("email", b"hot@x.io")


def decode(body: bytes) -> DataRow:
    return DataRow(parse_data_row(body))


def test_text_copy_header_line_is_kept() -> None:
    """HEADER in text format (PostgreSQL 15+): the column names come first, as is."""
    rw = TextCopyRewriter({1: rep}, header=True)
    assert rw.copy_data(b"id\tfull_name\n1\tann\n") == b"id\tfull_name\n1\tT(ann)\n"
    assert rw.copy_data(b"2\tbob\n") == b"2\tT(bob)\n"
