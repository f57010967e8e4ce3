"""A cheap literal mask for the classifier cache, sound because it is verified.

``pglast.parser.normalize`` (replace every constant with ``$n``) is what lets
``... WHERE id = 17`` and ``... WHERE id = 18`` share one cache entry, but it is a full
parse: 2 to 4 µs per statement, paid by every statement of a client that inlines its
values (pgbench ``-M simple``, ORMs). :func:`mask` finds the literals with a small
lexer instead (a C port of it runs in ~0.2 µs) and returns a key in which each literal
is replaced by a placeholder naming its kind.

A hand-written lexer can disagree with PostgreSQL's, and a disagreement must never let
two different statements share an entry. So a key is only *trusted* after
:func:`render` — the same spans numbered ``$1, $2, …`` — came out identical to
``normalize`` for the statement that created the entry (``classify`` checks this once
per key). Why that is enough for every other statement ``T2`` with the same key:

* the key is injective: placeholders start with NUL, which never occurs in SQL that
  reaches the classifier, so equal keys mean equal text outside the literals and
  literals of the same kinds at the same places;
* PostgreSQL's lexer reads the text outside the literals identically (same characters,
  and — by induction over the literals — the same state at each literal's start);
* the verified statement proves that PostgreSQL starts exactly one constant at each
  literal's start, and each kind's rule below is the lexer's own rule for that token
  from that point with ``standard_conforming_strings`` on (the proxy refuses sessions
  where it is off), so ``T2``'s literal is one constant of the same kind and ends
  where the mask says; the text that follows is identical again.

``T2`` thus has the token stream of the verified statement with other constant
values, i.e. the same normalized form, and the classifier's cache already treats
statements of one normalized form alike (literal-sensitive results are never shared).

Kinds: ``N`` integer of at most 9 digits (always an int4 constant), ``F`` decimal
``d.d`` (numeric), ``M``/``G`` the same with a leading ``-`` that the grammar folds into
the constant, ``S`` a plain ``'...'`` string (``''`` escapes). Anything the mask does not
understand is either copied verbatim into the key (which only makes it more specific)
or makes :func:`mask` return None (dollar quotes, ``E''``/``B''``/``X''``/``U&''``
strings, unterminated quotes or comments): the caller then normalizes as before.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["fast_mask", "mask", "render", "render_key", "spans"]

Span = tuple[int, int, str]  # (start, end, kind)

_DIGITS = frozenset("0123456789")
# Characters after which a '-' followed by a digit is a sign, not a binary minus.
_SIGN_CONTEXT = frozenset(" \t\n\r\f(,=<>+*/%^|[:")


def _ident(c: str) -> bool:
    """A character that continues an identifier or keyword in PostgreSQL's lexer."""
    return (c.isascii() and (c.isalnum() or c == "_")) or c >= "\x80"


def _closing(sql: str, start: int, quote: str) -> int:
    """Index of the quote closing the one at ``start`` (doubled quotes are content),
    or -1 when it is unterminated."""
    j = start + 1
    while True:
        k = sql.find(quote, j)
        if k < 0 or not sql.startswith(quote * 2, k):
            return k
        j = k + 2


def spans(sql: str) -> list[Span] | None:
    """The literals of ``sql`` as (start, end, kind), or None when it cannot tell."""
    if "$" in sql or "\x00" in sql:
        return None
    out: list[Span] = []
    n = len(sql)
    i = 0
    while i < n:
        c = sql[i]
        nxt = sql[i + 1] if i + 1 < n else ""
        if c == "'":
            prev = sql[i - 1] if i else " "
            if _ident(prev) or prev == "&":
                return None  # E'', B'', X'', N'', U&'' or a typed literal without space
            k = _closing(sql, i, "'")
            if k < 0:
                return None
            out.append((i, k + 1, "S"))
            i = k + 1
        elif c == '"':  # a quoted identifier: copied, never masked
            k = _closing(sql, i, '"')
            if k < 0:
                return None
            i = k + 1
        elif c == "-" and nxt == "-":  # a comment up to the end of the line (\n or \r)
            j = i + 2
            while j < n and sql[j] not in "\n\r":
                j += 1
            i = j
        elif c == "/" and nxt == "*":
            depth = 1
            j = i + 2
            while depth:
                if j >= n:
                    return None
                if sql.startswith("/*", j):
                    depth += 1
                    j += 2
                elif sql.startswith("*/", j):
                    depth -= 1
                    j += 2
                else:
                    j += 1
            i = j
        elif c in _DIGITS or (
            c == "-" and nxt in _DIGITS and nxt and (not i or sql[i - 1] in _SIGN_CONTEXT)
        ):
            negative = c == "-"
            start = i
            j = i + 1 if negative else i
            if not negative and i and (_ident(sql[i - 1]) or sql[i - 1] == "."):
                # digits inside an identifier (t1) or after a dot: copy the run verbatim
                while j < n and _ident(sql[j]):
                    j += 1
                i = j
                continue
            while j < n and sql[j] in _DIGITS:
                j += 1
            digits = j - start - negative
            kind = "M" if negative else "N"
            if j + 1 < n and sql[j] == "." and sql[j + 1] in _DIGITS:
                j += 1
                while j < n and sql[j] in _DIGITS:
                    j += 1
                kind = "G" if negative else "F"
            follow = sql[j] if j < n else " "
            if _ident(follow) or follow == "." or (kind in "NM" and digits > 9):
                # 1e5, 1_000, 0x1F, 123abc, 1.2.3, a big integer: verbatim
                while j < n and (_ident(sql[j]) or sql[j] == "."):
                    j += 1
                i = j
                continue
            out.append((start, j, kind))
            i = j
        else:
            i += 1
    return out


def _join(sql: str, found: list[Span], placeholder: Callable[[int, str], str]) -> str:
    parts: list[str] = []
    pos = 0
    for k, (s, e, kind) in enumerate(found, start=1):
        parts.append(sql[pos:s])
        parts.append(placeholder(k, kind))
        pos = e
    parts.append(sql[pos:])
    return "".join(parts)


def mask(sql: str) -> str | None:
    """The cache key of ``sql``: literals replaced by NUL + kind, or None."""
    found = spans(sql)
    if found is None:
        return None
    return _join(sql, found, lambda _k, kind: "\x00" + kind)


def render_key(key: str) -> str:
    """:func:`render` computed from a key :func:`mask` returned (no second lexing pass).

    What the classifier compares with ``normalize``: deriving it from the very key it
    will store means the check vouches for that key, whichever implementation (C or
    Python) produced it.
    """
    parts = key.split("\x00")
    out = [parts[0]]
    for n, part in enumerate(parts[1:], start=1):
        out.append(f"${n}")
        out.append(part[1:])  # drop the kind letter
    return "".join(out)


def render(sql: str) -> str | None:
    """``sql`` with its literals numbered ``$1, $2, …`` as ``normalize`` writes them."""
    found = spans(sql)
    if found is None:
        return None
    return _join(sql, found, lambda k, _kind: f"${k}")


try:  # the C port (dbgate/policy/_literals.c); optional, identical results
    from dbgate.policy._literals import mask as _c_mask
except ImportError:  # pragma: no cover - only without a compiler
    _c_mask = None

_MASK_ANY: Callable[[str], str | None] = _c_mask if _c_mask is not None else mask
#: Texts up to this long are remembered as the last one masked.
_LAST_MAX = 65_536
#: (text, its mask) of the last text masked: one statement's text is masked by the gate
#: (its remembered verdict, its shape) and again by the audit trail (its record), the
#: very same str each time. One tuple, swapped whole: a reader never sees the text of
#: one call with the mask of another.
_last: list[tuple[str | None, str | None]] = [(None, None)]


def fast_mask(sql: str) -> str | None:
    """What the classifier calls: the C port when it was built, else :func:`mask`
    (the same mask); the last text masked is answered from memory."""
    last = _last[0]
    if last[0] is sql:
        return last[1]
    key = _MASK_ANY(sql)
    if len(sql) <= _LAST_MAX:
        _last[0] = (sql, key)
    return key
