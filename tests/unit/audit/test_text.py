"""Escaping of text PostgreSQL cannot store: reversible and used only when needed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dbgate.audit.text import escape, from_bytes, needs_escape, unescape


def test_storable_text_needs_no_escape() -> None:
    for text in ("plain", "back\\slash", "tab\tnew\nline\x01\x7f", "\ufffd", "\U0001f600", ""):
        assert not needs_escape(text)


def test_the_escapes() -> None:
    assert escape("a\\b") == "a\\\\b"
    assert escape("nul\x00") == "nul\\x00"
    assert escape(from_bytes(b"\xff\xc3(")) == "\\xff\\xc3("
    assert escape("\ud800\udfff") == "\\ud800\\udfff"
    assert needs_escape("nul\x00") and needs_escape(from_bytes(b"\xff"))


@settings(max_examples=500, deadline=None, derandomize=True)
@given(st.text(alphabet=st.characters(codec=None, exclude_categories=())))
def test_escape_round_trips_any_text(text: str) -> None:
    escaped = escape(text)
    assert not needs_escape(escaped)
    assert unescape(escaped) == text


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary())
def test_any_bytes_survive_as_text(data: bytes) -> None:
    escaped = escape(from_bytes(data))
    assert not needs_escape(escaped)
    escaped.encode("utf-8")  # storable: no surrogates left
    assert unescape(escaped).encode("utf-8", "surrogateescape") == data
