"""Values derived from PII get a new token (or pseudonym) in every cell.

A stored column's token is deterministic: the same value, the same token, so an agent
joins and follows a customer by it. A derived value's token must not be: an agent can
make the token of a text it chooses by folding a constant into a PII expression, and
compare it with the tokens of a value's pieces (``dbgate.pii.tokens.FreshTokens``).
"""

from __future__ import annotations

from dbgate.pii.pseudonyms import Pseudonymizer, TypeRegistry
from dbgate.pii.rows import ColumnAction, RowRewriter, ValueCache
from dbgate.pii.tokens import Key, Keyring, Tokenizer
from dbgate.wire import messages as m
from dbgate.wire.framing import split_frames

INT4, TEXT_OID, DATE = 23, 25, 1082


def _rewriter(mode: str, oid: int = TEXT_OID) -> tuple[RowRewriter, Tokenizer]:
    tok = Tokenizer(Keyring([Key("k", b"f" * 32)]), "hashed")
    types = TypeRegistry()
    rw = RowRewriter(
        [ColumnAction(0, "email", oid, 0, mode), ColumnAction(1, "email", oid, 0, mode)],
        3,
        Pseudonymizer(tok, types),
        ValueCache(),
        None,
        Pseudonymizer(tok.fresh(), types),
    )
    return rw, tok


def _row(*values: bytes) -> bytes:
    return m.data_row(list(values))[5:]


def test_equal_derived_values_get_different_tokens_that_each_resolve() -> None:
    rw, tok = _rewriter("fresh")
    first = m.parse_data_row(rw.data_row(_row(b"m", b"m", b"x")))
    second = m.parse_data_row(rw.data_row(_row(b"m", b"m", b"x")))
    tokens = [first[0], first[1], second[0], second[1]]
    assert all(t is not None and t.startswith(b"tok_email_h") for t in tokens)
    assert len(set(tokens)) == 4  # no two cells alike, in a row or across rows
    assert first[2] == second[2] == b"x"  # the other column is untouched
    for t in tokens:
        assert tok.resolve(t.decode()) == ("email", b"m")


def test_a_stored_columns_tokens_stay_deterministic() -> None:
    rw, _ = _rewriter("token")
    a = m.parse_data_row(rw.data_row(_row(b"m", b"m", b"x")))
    b = m.parse_data_row(rw.data_row(_row(b"m", b"n", b"x")))
    assert a[0] == a[1] == b[0] != b[1]


def test_derived_numbers_and_dates_get_new_pseudonyms_of_their_type() -> None:
    ints, _ = _rewriter("fresh", INT4)
    row = m.parse_data_row(ints.data_row(_row(b"109", b"109", b"x")))
    assert row[0] != row[1] and all(v is not None and v.isdigit() for v in row[:2])
    dates, _ = _rewriter("fresh", DATE)
    row = m.parse_data_row(dates.data_row(_row(b"1990-01-01", b"1990-01-01", b"x")))
    assert row[0] != row[1]
    assert all(v is not None and len(v) == 10 and v[4:5] == b"-" for v in row[:2])


def test_a_run_of_rows_with_a_derived_column_takes_the_uncached_path() -> None:
    rw, _ = _rewriter("fresh")
    run = m.data_row([b"m", b"m", b"x"]) * 3
    out = rw.data_rows(run, 0, len(run))
    assert out is not None
    cells = [c for _t, s, e in split_frames(out) for c in m.parse_data_row(out[s:e])[:2]]
    assert len(set(cells)) == 6
