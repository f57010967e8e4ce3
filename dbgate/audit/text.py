"""Text that PostgreSQL cannot store, made storable without losing what it said.

A statement reaches dbgate as bytes; the relay decodes it, and what it hands the
audit may hold characters a ``text`` column refuses: NUL, and lone surrogates (the
way Python's ``surrogateescape`` keeps bytes that were not valid UTF-8). Writing such
a value would fail the whole COPY batch, and dropping it would lose the record.

So a record whose text needs it is *escaped*, all its text fields the same way, and
says so (``escaped = true``): a backslash becomes ``\\\\``, NUL becomes ``\\x00``, a
surrogate that stands for an undecodable byte (U+DC80..U+DCFF) becomes ``\\xNN``
(that byte), any other lone surrogate ``\\uXXXX``. Records that need none of this —
nearly all — are stored exactly as given, backslashes included. Reading an escaped
record back is unambiguous: every backslash in it starts one of these sequences.
"""

from __future__ import annotations

import re

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_ESCAPE = re.compile("[\\\\\x00\ud800-\udfff]")


def needs_escape(value: str) -> bool:
    """True when ``value`` cannot be stored in a PostgreSQL ``text`` column as is."""
    return _UNSTORABLE.search(value) is not None


def _escape_one(m: re.Match[str]) -> str:
    ch = m.group(0)
    if ch == "\\":
        return "\\\\"
    code = ord(ch)
    if code == 0:
        return "\\x00"
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def escape(value: str) -> str:
    """The escaped form of ``value`` (see the module docstring)."""
    return _ESCAPE.sub(_escape_one, value)


_UNESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2}|u[0-9a-f]{4})")


def _unescape_one(m: re.Match[str]) -> str:
    seq = m.group(1)
    if seq == "\\":
        return "\\"
    if seq[0] == "x":
        code = int(seq[1:], 16)
        return "\x00" if code == 0 else chr(0xDC00 + code)
    return chr(int(seq[1:], 16))


def unescape(value: str) -> str:
    """The original text of an escaped value (a reader's tool; the audit never needs it)."""
    return _UNESCAPE.sub(_unescape_one, value)


def from_bytes(value: bytes) -> str:
    """Text for a value given as raw bytes: UTF-8 where it is, the rest kept as
    surrogates (and later escaped byte for byte)."""
    return value.decode("utf-8", "surrogateescape")


def truncate(value: str, limit: int) -> str:
    """At most ``limit`` characters (done before escaping, so no escape is cut)."""
    if len(value) <= limit:
        return value
    return value[:limit]
