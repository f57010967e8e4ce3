"""Identifiers in setting text, read exactly as PostgreSQL reads them.

A neutral module: both the policy (``SET search_path``, ``set_config``, ``ALTER ...
SET``) and the proxy (a ``search_path`` in the client's StartupMessage) must split a
list-valued setting the way the server does, and neither may import the other. A
value read differently from the server is a way past dbgate: ``'"pg_catalog,x",
public, pg_catalog'`` names three schemas, the first called ``pg_catalog,x``, and
searches ``public`` before the real ``pg_catalog``.

Pure functions, no imports from the rest of dbgate.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "C_SPACE",
    "downcase_identifier",
    "search_path_escapes",
    "split_identifier_list",
    "truncate_identifier",
]

#: C's isspace() in the "C" locale, as PostgreSQL's scanners use it.
C_SPACE = " \t\n\r\v\f"
#: Identifiers are truncated to this many bytes (NAMEDATALEN - 1).
MAX_IDENTIFIER_BYTES = 63


def downcase_identifier(name: str) -> str:
    """PostgreSQL's downcase_identifier for a UTF-8 database: ASCII letters only."""
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in name)


def truncate_identifier(name: str) -> str:
    """truncate_identifier: at most 63 bytes, cut at a character boundary."""
    raw = name.encode("utf-8")
    if len(raw) <= MAX_IDENTIFIER_BYTES:
        return name
    return raw[:MAX_IDENTIFIER_BYTES].decode("utf-8", "ignore")


def split_identifier_list(text: str) -> list[str] | None:
    """Split a list-valued setting exactly as PostgreSQL's ``SplitIdentifierString``.

    How the server reads ``search_path`` given as one string (``set_config``, the
    startup packet, ``ALTER ... SET x = 'a, b'``): elements separated by commas;
    ``"quoted"`` elements keep their case and may hold commas (``""`` is a quote);
    unquoted ones end at a comma or white space and are lower-cased (ASCII letters
    only); both are truncated to 63 bytes. None when the server would refuse the
    text as invalid list syntax (an empty element, text after a quoted name, a
    zero-length quoted name): such a value never takes effect.
    """
    out: list[str] = []
    i, n = 0, len(text)
    while i < n and text[i] in C_SPACE:
        i += 1
    if i >= n:
        return out  # an empty string is an empty list
    while True:
        if i < n and text[i] == '"':
            i += 1
            buf = []
            while True:
                if i >= n:
                    return None  # unterminated quote
                if text[i] == '"':
                    if i + 1 < n and text[i + 1] == '"':
                        buf.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                buf.append(text[i])
                i += 1
            out.append(truncate_identifier("".join(buf)))  # "" is a (zero-length) name too
        else:
            j = i
            while j < n and text[j] != "," and text[j] not in C_SPACE:
                j += 1
            if j == i:
                return None  # empty unquoted name
            out.append(truncate_identifier(downcase_identifier(text[i:j])))
            i = j
        while i < n and text[i] in C_SPACE:
            i += 1
        if i >= n:
            return out
        if text[i] != ",":
            return None  # invalid syntax
        i += 1
        while i < n and text[i] in C_SPACE:
            i += 1


def search_path_escapes(schemas: Sequence[str]) -> bool:
    """True when some schema other than pg_temp is searched before pg_catalog.

    PostgreSQL searches ``pg_catalog`` first unless the path names it explicitly
    later; ``pg_temp`` is never searched for functions, so it may come first.
    """
    try:
        idx = list(schemas).index("pg_catalog")
    except ValueError:
        return False  # pg_catalog is implicitly searched first
    return any(s not in ("pg_temp", "") for s in schemas[:idx])
