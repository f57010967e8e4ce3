"""The literal mask behind the classifier's second cache level (dbgate.policy.literals).

Three things must hold: the C port returns exactly what the Python reference returns;
two statements that get the same key from a *verified* mask have the same normalized
form (so they may share a classification); and the classifier never lets a
literal-sensitive statement inherit another's result through the mask.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pglast import parser

from dbgate.policy import literals
from dbgate.policy.classify import cache_info, classify, clear_cache
from dbgate.policy.literals import mask, render, render_key, spans


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    clear_cache()
    yield
    clear_cache()


def test_the_c_port_is_built() -> None:
    # make install builds it; without it simple-mode statements pay a full parse each.
    assert literals._c_mask is not None
    assert literals._MASK_ANY is literals._c_mask  # what fast_mask masks with


def test_the_last_text_masked_is_answered_from_memory_and_only_itself() -> None:
    a = "SELECT a FROM t WHERE id = 17"
    b = "SELECT a FROM t WHERE id = 'x'"
    assert literals.fast_mask(a) == literals.fast_mask(a) == mask(a)
    assert literals.fast_mask(b) == mask(b) != mask(a)
    same_text = "".join(["SELECT a FROM t ", "WHERE id = 17"])  # equal, another object
    assert literals.fast_mask(same_text) == mask(a)
    long = "SELECT 1 " * 10_000  # longer than remembered: masked each time
    assert literals.fast_mask(long) == mask(long)
    assert literals._last[0][0] is same_text


@pytest.mark.parametrize(
    ("sql", "key"),
    [
        ("SELECT a FROM t WHERE id = 17;", "SELECT a FROM t WHERE id = \0N;"),
        ("UPDATE t SET b = b + -1234 WHERE id = 5", "UPDATE t SET b = b + \0M WHERE id = \0N"),
        ("select 'it''s', 1.5, -2.25", "select \0S, \0F, \0G"),
        ("select t1, x2y, 1e5, 0x1F, 1_000, 1234567890", None),  # nothing to mask
        ('select "a""b 5 \'x\'" from t', 'select "a""b 5 \'x\'" from t'),
        ("select 1 -- 'not a string\nfrom t", "select \0N -- 'not a string\nfrom t"),
        ("select /* /* 'x' */ 5 */ 6", "select /* /* 'x' */ 5 */ \0N"),
        ("select a-5, a -5", "select a-\0N, a \0M"),
        ("select 'a' || 'é'", "select \0S || \0S"),
        ("select E'x'", None),
        ("select U&'x'", None),
        ("select $1 + 5", None),
        ("select $$x$$", None),
        ("select 'unterminated", None),
        ("select /* unterminated", None),
        ('select "unterminated', None),
    ],
)
def test_mask_examples(sql: str, key: str | None) -> None:
    if key is None and spans(sql) == []:
        assert mask(sql) == sql
        return
    assert mask(sql) == key
    assert literals.fast_mask(sql) == key


_SQLISH_TOKENS = [*"abcXYZ_019 \t\n\r'\"-/*.,;()$&=<>+:|[]^%EUBé€😀\x80", "''", "--", "/*", "*/"]
_SQLISH = st.lists(st.sampled_from(_SQLISH_TOKENS), max_size=40).map("".join)


@settings(max_examples=3000, deadline=None)
@given(_SQLISH)
def test_c_port_matches_the_reference(sql: str) -> None:
    key = literals.fast_mask(sql)
    assert key == mask(sql)
    if key is not None:
        assert render_key(key) == render(sql)  # what classify() checks, from the key


# -- soundness: same verified key => same normalized form ------------------------------

_SEP = st.sampled_from([" ", "  ", "\n", "\t", " /* 'q' 7 -- */ ", " --c 'x' 5\n", "/**/"])
_ATOM = st.one_of(
    st.none(),  # a literal slot
    st.sampled_from(["a", '"Q""5"', "t1.b", "x2", "now()", "1e5", "a", "b"]),
)


@st.composite
def _expr(draw: st.DrawFn, depth: int = 0) -> list[str | None]:
    """A small SQL expression as fragments, None marking a literal slot."""
    sep = draw(_SEP)
    if depth >= 2 or draw(st.booleans()):
        atom = draw(_ATOM)
        cast = draw(st.sampled_from(["", "", "::int", "::text"]))
        return [atom, cast] if cast else [atom]
    left = draw(_expr(depth + 1))
    right = draw(_expr(depth + 1))
    form = draw(st.sampled_from(["op", "call", "in", "paren", "case", "neg"]))
    if form == "op":
        op = draw(st.sampled_from(["+", "-", "*", "=", "<", "<>", "||", "AND", "OR", "~", "@"]))
        return [*left, sep, op, draw(_SEP), *right]
    if form == "call":
        return ["coalesce(", *left, ",", sep, *right, ")"]
    if form == "in":
        return [*left, " IN (", *right, ",", sep, None, ")"]
    if form == "case":
        return ["CASE WHEN ", *left, " THEN ", *right, " ELSE ", None, " END"]
    if form == "neg":
        return ["-", *left]
    return ["(", *left, sep, ")"]


@st.composite
def _template(draw: st.DrawFn) -> list[str | None]:
    """A SELECT with literal slots (None): the shapes drivers and ORMs send."""
    cols = draw(_expr())
    where = draw(_expr())
    tail = draw(st.sampled_from(["", " LIMIT ", " OFFSET "]))
    out: list[str | None] = ["SELECT ", *cols, " FROM t WHERE ", *where]
    if tail:
        out.append(tail)
        if tail in (" LIMIT ", " OFFSET "):
            out.append(None)
    return out


def _literal(kind: str) -> st.SearchStrategy[str]:
    if kind == "N":
        return st.integers(0, 999_999_999).map(str)
    if kind == "M":
        return st.integers(0, 999_999_999).map(lambda v: f"-{v}")
    if kind in "FG":
        sign = "-" if kind == "G" else ""
        return st.tuples(st.integers(0, 99_999), st.integers(0, 99_999)).map(
            lambda p: f"{sign}{p[0]}.{p[1]}"
        )
    tokens = [*'ab 1\\;"é', "''", "--", "/*", "*/", "\n", "\r"]
    return st.lists(st.sampled_from(tokens), max_size=8).map(
        lambda t: "'" + "".join(x if x == "''" else x.replace("'", "''") for x in t) + "'"
    )


@settings(max_examples=400, deadline=None)
@given(_template(), st.data())
def test_a_verified_key_means_the_same_normalized_form(
    template: list[str | None], data: st.DataObject
) -> None:
    kinds = [data.draw(st.sampled_from("NMFGS")) for p in template if p is None]
    slots = iter(kinds)
    first = "".join(p if p is not None else data.draw(_literal(next(slots))) for p in template)
    slots = iter(kinds)
    second = "".join(p if p is not None else data.draw(_literal(next(slots))) for p in template)
    key = mask(first)
    assume(key is not None and mask(second) == key)
    try:
        normalized = parser.normalize(first)
    except parser.ParseError:
        assume(False)
    assume(render(first) == normalized)  # what classify() checks before trusting a key
    assert parser.normalize(second) == normalized


# -- the classifier never shares literal-sensitive results through the mask -------------


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("SELECT set_config('work_mem', '8MB', false)", "SELECT set_config('role', 'x', false)"),
        ("SET work_mem = '8MB'", "SET standard_conforming_strings = 'off'"),
        ("SELECT * FROM orders LIMIT 5", "SELECT * FROM orders LIMIT 500000"),
        ("SELECT * FROM orders WHERE id = 1", "SELECT * FROM orders WHERE id = 1 OR 1 = 1"),
        (
            "SELECT query_to_xml('select 1', true, true, '')",
            "SELECT query_to_xml('select * from users', true, true, '')",
        ),
    ],
)
def test_cached_result_equals_a_fresh_one(first: str, second: str) -> None:
    classify(first)
    cached = classify(second)
    clear_cache()
    fresh = classify(second)
    assert cached.categories == fresh.categories
    assert [s.needs_bind for s in cached.statements] == [s.needs_bind for s in fresh.statements]


def test_the_masked_level_takes_over_from_normalize() -> None:
    for i in range(50):
        classify(f"SELECT abalance FROM pgbench_accounts WHERE aid = {i * 7919};")
    info = cache_info()
    assert info["cold"] == 1 and info["masked"] == 49 and info["normalized"] == 0


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(["1", "'a'", "-2", "3.5", "'é€'", "'😀'", "x", ",", " "]), max_size=200
    ),
    st.sampled_from(["", "\x00", "\ud800", "é", "😀", "$1", "\x80"]),
)
def test_c_port_matches_the_reference_with_many_literals_and_odd_characters(
    parts: list[str], odd: str
) -> None:
    """More literals than the C port's stack array holds (its heap road), wide and
    lone-surrogate characters (inside a literal, the only wide ones or not), NUL."""
    for sql in ("".join(parts) + odd, odd + "".join(parts), "'" + odd + "'," + "".join(parts)):
        key = literals._MASK_ANY(sql)
        assert key == mask(sql)
        if key is not None:
            assert key.__sizeof__() == mask(sql).__sizeof__()  # the same str storage kind
