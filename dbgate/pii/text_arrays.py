"""Text-format PostgreSQL arrays: find each element, quote a replacement, splice.

A PII element of an array is replaced in place (a token out, a real value in) while
the braces, dimensions, NULLs and spacing of the original text stay as they were, so
the client (or the server) reads an array of the same shape.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["elements", "map_elements", "quote_element"]


def elements(text: str, delim: str) -> tuple[str, list[tuple[int, int, str | None]]]:
    """Parse a text-format array: ``(prefix, [(start, end, element or None)])``.

    Start/end delimit each element's source text (quotes included), so the caller can
    splice replacements into the original and keep braces, dimensions and spacing.
    """
    i = 0
    n = len(text)
    items: list[tuple[int, int, str | None]] = []
    if text.startswith("["):  # explicit bounds: [1:2]={...}
        eq = text.find("=")
        if eq < 0:
            raise ValueError("array bounds without '='")
        i = eq + 1
    prefix_end = i
    depth = 0
    while i < n:
        ch = text[i]
        if ch == "{":
            depth += 1
            i += 1
        elif ch == "}":
            depth -= 1
            i += 1
        elif ch == delim or ch.isspace():
            i += 1
        elif ch == '"':
            start = i
            i += 1
            buf = []
            while i < n and text[i] != '"':
                if text[i] == "\\":
                    i += 1
                buf.append(text[i] if i < n else "")
                i += 1
            i += 1
            items.append((start, i, "".join(buf)))
        else:
            start = i
            buf = []
            while i < n and text[i] not in ("{", "}", delim):
                if text[i] == "\\":
                    i += 1
                buf.append(text[i] if i < n else "")
                i += 1
            raw = "".join(buf).rstrip()
            items.append(
                (start, i, None if raw.upper() == "NULL" and "\\" not in text[start:i] else raw)
            )
    if depth != 0:
        raise ValueError("unbalanced braces in array")
    return text[:prefix_end], items


def quote_element(value: str, delim: str) -> str:
    if (
        value == ""
        or value.upper() == "NULL"
        or any(c in value for c in '{}"\\' + delim)
        or any(c.isspace() for c in value)
    ):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def map_elements(text: str, delim: str, replace: Callable[[str], str | None]) -> str:
    """``text`` with each non-NULL element ``e`` replaced by ``replace(e)`` (quoted
    as needed); an element for which ``replace`` returns None keeps its source text."""
    prefix, items = elements(text, delim)
    out = [prefix]
    pos = len(prefix)
    for start, end, value in items:
        out.append(text[pos:start])
        new = None if value is None else replace(value)
        out.append(text[start:end] if new is None else quote_element(new, delim))
        pos = end
    out.append(text[pos:])
    return "".join(out)
