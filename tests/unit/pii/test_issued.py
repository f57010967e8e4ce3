"""The issued-token store: the compiled one answers as the Python reference does."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbgate.pii.issued import IssuedTokens, PyIssuedTokens

rows_c = pytest.importorskip("dbgate.pii._rows", reason="the compiled store is optional")


def token(prefix: bytes, n: int) -> bytes:
    return prefix + hashlib.blake2b(n.to_bytes(4, "big"), digest_size=16).hexdigest().encode()


PREFIXES = [b"tok_email_h", b"tok_phone_h", b""]

# an operation: add (prefix, token number, value) or get (prefix, token number)
ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "get"]),
        st.sampled_from(PREFIXES),
        st.integers(0, 30),
        st.binary(max_size=12),
    ),
    max_size=120,
)


@settings(max_examples=400, deadline=None)
@given(st.integers(1, 6), st.integers(0, 5), ops)
def test_property_compiled_store_equals_python(size: int, gens: int, seq: list) -> None:  # type: ignore[type-arg]
    c, py = IssuedTokens(size, gens), PyIssuedTokens(size, gens)
    assert type(c) is not PyIssuedTokens  # the compiled one is in use
    forgot_c: list[int] = []
    forgot_py: list[int] = []
    c.on_forget = lambda: forgot_c.append(len(c))
    py.on_forget = lambda: forgot_py.append(len(py))
    for op, prefix, n, value in seq:
        tok = token(prefix, n)
        if op == "add":
            c.add(tok, value)
            py.add(tok, value)
        assert c.get(tok) == py.get(tok)
        assert len(c) == len(py)
    assert forgot_c == forgot_py
    for prefix in PREFIXES:
        for n in range(31):
            assert c.get(token(prefix, n)) == py.get(token(prefix, n))


@pytest.mark.parametrize("store", [IssuedTokens, PyIssuedTokens])
def test_malformed_tokens_are_refused_or_unknown(store: type) -> None:
    s = store(4, 2)
    good = token(b"tok_email_h", 1)
    s.add(good, b"a@x.io")
    for bad in (good[:-1], good.upper(), good[:-1] + b"g", b"", b"short"):
        assert s.get(bad) is None
        with pytest.raises(ValueError):
            s.add(bad, b"x")
    assert s.get(good) == b"a@x.io"
    assert s.get(good + b"0") is None  # one hex digit more: another token
    long = token(b"p" * 256, 1)  # a prefix longer than the compiled store remembers
    with pytest.raises(ValueError):
        s.add(long, b"x")
    assert s.get(long) is None
    s.add(token(b"p" * 255, 1), b"y")
    assert s.get(token(b"p" * 255, 1)) == b"y"
    with pytest.raises(ValueError):
        store(0, 2)


def test_big_values_and_many_generations() -> None:
    s = IssuedTokens(1000, 3)
    big = b"v" * 5000
    for i in range(3500):
        s.add(token(b"tok_note_h", i), big if i % 100 == 0 else str(i).encode())
    assert len(s) == 2500  # three generations, the newest half full
    assert s.get(token(b"tok_note_h", 999)) is None  # the first generation is gone
    assert s.get(token(b"tok_note_h", 1000)) == big
    assert s.get(token(b"tok_note_h", 3499)) == b"3499"


@pytest.mark.parametrize("store", [IssuedTokens, PyIssuedTokens])
def test_a_generation_size_past_the_bound_is_refused(store: type) -> None:
    """3 * 6148914691236517206 wraps to 2 in 64 bits: the compiled store sized that
    generation's index at 16 slots, and the probe for a 17th token never ended (the
    gateway hung, holding the GIL). Both stores refuse sizes past 2**40."""
    for size in (2**40 + 1, 6148914691236517206, 2**63 - 1):
        with pytest.raises((ValueError, OverflowError)):
            store(size, 1)
    with pytest.raises(ValueError):
        store(4, 1_000_001)
    s = store(2**40, 0)  # the bound itself; no generation kept, nothing allocated
    s.add(token(b"tok_email_h", 1), b"a@x.io")
    assert s.get(token(b"tok_email_h", 1)) is None


def test_the_configured_token_cache_is_bounded() -> None:
    from pydantic import ValidationError

    from dbgate.config.pii import PiiConfig

    assert PiiConfig(token_cache_entries=10 * 2**40).token_cache_entries == 10 * 2**40
    with pytest.raises(ValidationError):
        PiiConfig(token_cache_entries=61489146912365172060)
