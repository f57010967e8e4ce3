"""A linear look at a query string before PostgreSQL's scanner sees it.

PostgreSQL's scanner (which pglast runs in-process, under the classifier) takes time
that grows with the *square* of two kinds of input, because its rules match a whole
run of operator characters and then back off:

* a run of operator characters that splits into many tokens (``1 + + + ... + 1``):
  every token rescans the rest of the run — 60,000 ``+`` cost seconds;
* comment openers nested inside a comment (``/*/*/*...*/*/*/``): each ``/*`` rescans
  the rest of the run of ``*`` and ``/``.

The server has the same cost, but in its own backend; dbgate's is on the event loop
that serves every session. So before parsing, :func:`prepare`

* finds operator runs longer than :data:`MAX_OPERATOR_RUN` outside literals and
  comments — no SQL anyone writes has one — and the classifier refuses them as
  ``opaque`` without parsing;
* finds, inside comments, runs of operator characters with so many comment openers
  in them that the *server's* scanner would spend more than
  :data:`MAX_COMMENT_RESCAN` character reads on them (at each ``/*`` it reads the
  rest of the run and puts it back): the rewrite below spares dbgate that cost, but
  the server reads the original text, and a backend burning seconds of CPU on one
  comment takes them from every other session. They are reported as an operator
  run too (refused as ``opaque``, never forwarded);
* rewrites nested comments into plain ones: inside a comment whose depth goes past
  one, every ``*`` and ``/`` except the outer opener and closer becomes a space. A
  comment is whitespace to the parser whatever it contains, so the statement is the
  same; the text keeps its length, so every offset (error positions, a PREPARE's
  body) is the same too. The rewrite is trusted only when PostgreSQL's own scanner,
  run on the rewritten text (now in linear time), sees exactly those comments
  (:func:`verified`); where the two would disagree, the original text is parsed.

:func:`classification_cost` is a cheap estimate (one pass of C-speed searches) of
what classifying a text costs, for the gate to decide between classifying inline and
in a worker.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

from pglast import parser as _pg

__all__ = [
    "MAX_COMMENT_RESCAN",
    "MAX_OPERATOR_RUN",
    "Prepared",
    "classification_cost",
    "prepare",
    "verified",
]

#: The longest run of operator characters dbgate parses (PostgreSQL refuses operator
#: names of 64 bytes or more; longer runs only occur as many tokens in a row).
MAX_OPERATOR_RUN = 64
#: Characters PostgreSQL's scanner may read again and again at the comment openers of
#: one text (see the module docstring) before dbgate refuses it: about a tenth of a
#: second of the server's CPU. A comment with a few nested openers, or a banner of
#: ``*`` of any length, stays far below; 16,000 openers in a row read ~10⁹.
MAX_COMMENT_RESCAN = 50_000_000

_OP_CHARS = "~!@#^&|`?+\\-*/%<>="
_LONG_RUN = re.compile(f"[{_OP_CHARS}]{{{MAX_OPERATOR_RUN + 1},}}")
_OP_TAIL = re.compile(f"[{_OP_CHARS}]*")
_OPENER = "/*"
_SPECIAL = re.compile(r"['\"$]|--|/\*")
_DOLLAR = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z_0-9\x80-\U0010ffff]*)?\$")
_E_STRING_END = re.compile(r"(?:[^'\\]|\\.|'')*'", re.DOTALL)
_COMMENT_TOKEN = re.compile(r"/\*|\*+/|\*+|[^*/]+|/", re.DOTALL)


def _ident(c: str) -> bool:
    return c.isalnum() or c == "_" or c == "$" or c >= "\x80"


@dataclass(frozen=True, slots=True)
class Prepared:
    """What :func:`prepare` found. ``text`` is what to parse (the original, or the
    rewrite); ``operator_run`` is (start, length) of a run too long to parse, or None."""

    text: str
    rewritten: bool = False
    operator_run: tuple[int, int] | None = None


_PLAIN = Prepared("")


def _comment_end(sql: str, start: int) -> tuple[int, int]:
    """(end, deepest nesting) of the block comment opening at ``start``: PostgreSQL's
    rules for its comment state — ``/*`` nests, a run of ``*`` followed by ``/`` closes
    one level. ``end`` is -1 when the comment is never closed."""
    depth, deepest = 1, 1
    pos = start + 2
    n = len(sql)
    while pos < n:
        m = _COMMENT_TOKEN.match(sql, pos)
        assert m is not None  # the alternatives cover every character
        tok = m.group()
        pos = m.end()
        if tok == "/*":
            depth += 1
            deepest = max(deepest, depth)
        elif tok[-1] == "/" and tok[0] == "*":
            depth -= 1
            if depth == 0:
                return pos, deepest
    return -1, deepest


def _regions(sql: str) -> tuple[list[tuple[int, int]], list[tuple[int, int, int]]]:
    """(literal and comment spans, block comments as (start, end, deepest nesting)),
    found the way PostgreSQL's scanner finds them with standard_conforming_strings on."""
    spans: list[tuple[int, int]] = []
    comments: list[tuple[int, int, int]] = []
    n = len(sql)
    pos = 0
    while True:
        m = _SPECIAL.search(sql, pos)
        if m is None:
            break
        i = m.start()
        c = sql[i]
        if c == "'":
            escaped = i > 0 and sql[i - 1] in "eE" and (i < 2 or not _ident(sql[i - 2]))
            if escaped:
                e = _E_STRING_END.match(sql, i + 1)
                end = e.end() if e is not None else n
            else:
                end = i + 1
                while True:
                    k = sql.find("'", end)
                    if k < 0:
                        end = n
                        break
                    if sql.startswith("''", k):
                        end = k + 2
                        continue
                    end = k + 1
                    break
        elif c == '"':
            end = i + 1
            while True:
                k = sql.find('"', end)
                if k < 0:
                    end = n
                    break
                if sql.startswith('""', k):
                    end = k + 2
                    continue
                end = k + 1
                break
        elif c == "$":
            d = _DOLLAR.match(sql, i) if i == 0 or not _ident(sql[i - 1]) else None
            if d is None:
                pos = i + 1
                continue
            k = sql.find(d.group(), d.end())
            end = n if k < 0 else k + len(d.group())
        elif m.group() == "--":
            end = i + 2
            while end < n and sql[end] not in "\n\r":
                end += 1
        else:  # /*
            end, deepest = _comment_end(sql, i)
            comments.append((i, end, deepest))  # end -1: never closed
            end = n if end < 0 else end
        spans.append((i, end))
        pos = end
    return spans, comments


def _span_end(spans: list[tuple[int, int]], pos: int) -> int | None:
    """The end of the literal or comment span holding ``pos`` (spans are sorted and
    apart), or None when ``pos`` is outside them all."""
    i = bisect.bisect_right(spans, (pos + 1,)) - 1  # the last span starting at or before pos
    if i >= 0 and spans[i][0] <= pos < spans[i][1]:
        return spans[i][1]
    return None


def prepare(sql: str) -> Prepared:
    """Look at ``sql`` before it is parsed: see the module docstring."""
    long_run = _LONG_RUN.search(sql)
    if long_run is None and "/*" not in sql:
        return Prepared(sql)
    spans, comments = _regions(sql)
    while long_run is not None:
        end = _span_end(spans, long_run.start())
        if end is None:
            return Prepared(sql, operator_run=(long_run.start(), len(long_run.group())))
        # A run that starts in a comment or literal may go on after it (``*/+++…``):
        # the part outside is a run of its own for the scanner.
        long_run = _LONG_RUN.search(sql, end)
    rescanned = _costly_comment_run(sql, comments)
    if rescanned is not None:
        return Prepared(sql, operator_run=rescanned)
    nested = [(s, e) for s, e, deepest in comments if deepest > 1]
    if not nested:
        return Prepared(sql)
    chars = list(sql)
    for start, end in nested:
        stop = len(sql) if end < 0 else end - 2  # keep the outer closer, if there is one
        for j in range(start + 2, stop):
            if chars[j] == "*" or chars[j] == "/":
                chars[j] = " "
    rewritten = "".join(chars)
    if not verified(rewritten, nested):
        return Prepared(sql)
    return Prepared(rewritten, rewritten=True)


def _costly_comment_run(sql: str, comments: list[tuple[int, int, int]]) -> tuple[int, int] | None:
    """(start, length) of the first run of operator characters that starts in a
    block comment and whose comment openers make PostgreSQL's scanner read more than
    :data:`MAX_COMMENT_RESCAN` characters in all, or None.

    At each ``/*`` (in a comment, or opening one) the scanner's rule for a comment
    opener matches the opener and every operator character after it, then puts back
    all but the two: the cost of an opener is the rest of its run. Only runs longer
    than :data:`MAX_OPERATOR_RUN` can cost much; they are found with one C-speed
    search per comment, and their openers counted with ``str.find``: linear."""
    total = 0
    for start, end, _ in comments:
        stop = len(sql) if end < 0 else end
        for run in _LONG_RUN.finditer(sql, start, stop):
            run_end = run.end()
            if run_end == stop:  # the run goes on after the comment: the scanner reads on
                tail = _OP_TAIL.match(sql, stop)
                run_end = tail.end() if tail is not None else stop
            pos = sql.find(_OPENER, run.start(), run.end())
            while pos >= 0:
                total += run_end - pos
                pos = sql.find(_OPENER, pos + 2, run.end())
            if total > MAX_COMMENT_RESCAN:
                return run.start(), run_end - run.start()
    return None


def verified(rewritten: str, comments: list[tuple[int, int]]) -> bool:
    """Whether PostgreSQL's scanner sees in ``rewritten`` a comment exactly at each of
    ``comments`` (start, end; end -1 for one never closed, which can only be the last):
    then the rewrite changed nothing but comment text.

    The scanner is deterministic and the texts are equal before each comment, so it
    enters each comment in the same state in both; inside, the rewrite's comment ends
    at the outer closer, where the original's nesting ends too. An unterminated
    comment is checked by the parse error it raises at its opener.
    """
    try:
        tokens = _pg.scan(rewritten)
    except _pg.ParseError as exc:
        message = str(exc.args[0]) if exc.args else ""
        index = exc.args[1] if len(exc.args) > 1 else None
        return (
            message.startswith("unterminated /* comment")
            and len(comments) >= 1
            and index == comments[-1][0]
            and comments[-1][1] == -1
        )
    if comments and comments[-1][1] == -1:
        return False  # the original never closes it; the rewrite must not either
    seen = {(t.start, t.end + 1) for t in tokens if t.name == "C_COMMENT"}
    return all(c in seen for c in comments)


_SELECT = re.compile(r"select", re.IGNORECASE)


def classification_cost(sql: str) -> int:
    """A cheap estimate of the CPU time classifying ``sql`` cold costs, in microseconds
    on the 2-core host of bench/bench_classify.py (which prints it next to the measured
    time for each family of input). Linear in the text, computed with C-speed
    searches and no allocation per token, so the gate can call it on every cold text
    and classify inline what is cheap, the rest in a worker with a time budget.

    The terms, fitted to the benchmark's inputs and rounded up: a fixed cost per
    statement; the parse, the JSON tree and the walk grow with the text and faster
    with its tokens (white space, commas, parentheses and ``=`` stand in for a token
    count); each SELECT adds a query level's bookkeeping; comment openers or a long
    operator run make :func:`prepare` scan the text once more. It errs high (up to a
    few times for literal-heavy text) rather than low, so a text it calls cheap is.
    """
    n = len(sql)
    cost = 50 + (6 * n) // 10
    cost += sql.count(" ") + 4 * sql.count(",") + 2 * sql.count("(") + 2 * sql.count("=")
    cost += 40 * (len(_SELECT.findall(sql)) + sql.count(";"))
    if "/*" in sql or _LONG_RUN.search(sql) is not None:
        cost += n
    return cost
