"""Lineage analyses remembered by statement text, and by *shape* across literal values.

A client that inlines its values (``pgbench -M simple``, ORMs, an agent writing
``... WHERE id = 4711``) sends a text the exact-text cache has never seen with
every statement; parsing and walking each one again costs tens of microseconds to a
millisecond. Statements that differ only in their literal values have the same
lineage, so the second level of this cache is keyed by the text with its literals
masked — the *shape* — and one analysis serves them all.

**The key.** :func:`dbgate.policy.literals.fast_mask` replaces each literal with a
placeholder naming its kind (C, ~0.2 µs); texts it cannot read with certainty (``$``
anywhere, ``E''``/``U&''``/``B''``/``X''`` strings, dollar quotes, an unterminated
quote or comment, a NUL) have no shape. As in the classifier, a key is only trusted
once PostgreSQL's own parser has confirmed it on a text with that key: a constant
starts exactly where each placeholder stands, of its kind and with that literal's
value (:func:`shape_holds`). That proves PostgreSQL reads each masked literal as one
constant token and nothing more, so *every* text with the key has the same token
stream up to constant values (the argument is in :mod:`dbgate.policy.literals`; the
classifier checks with ``normalize`` instead, whose ``$n`` numbering follows the tree,
not the text, and which also replaces keywords such as ``extract``'s field — a CTE or
an ``extract(year …)`` would refute every key). A key is checked when a second text of
that shape arrives, not when the first is planned — the check is a full parse, and
most statements' shapes never repeat — and the verdict, either way, is kept with the
key.

**Why one analysis serves every text of a shape.** Lineage follows values, never
literals: a constant is clean, whatever it says (``lower(email)`` is PII with any
``LIMIT``, ``CASE`` branches are unioned, subscripts and ``LIMIT`` only choose rows),
and function widths, relations and names come from identifiers, which
the mask never touches. The walk reads a literal's value in two places only: a string
holding ``tok_`` is a token sent back, to be resolved; and an integer that names an
output by position (``ORDER BY 2``, ``GROUP BY 1``, ``DISTINCT ON (2)``), which chooses
by that output's value (``SELECT g, abs(g - ascii(...)) FROM ... ORDER BY 2 LIMIT 1``
returns the code in ``g``; ``ORDER BY 1`` does not). So:

* a text with ``tok_`` anywhere has no shape (it is never served from, nor stored
  under, one): a masked literal is a plain ``'...'`` string whose value is its text
  with ``''`` read as ``'``, so a token in any literal's value shows as ``tok_`` in
  the text;
* an analysis in which an integer named an output (``Analysis.reads_literals``) is
  remembered for its own text only;
* whether the row-choosing clauses are walked at all depends on the whole text
  (:func:`dbgate.pii.lineage.filters_matter`, which a literal can switch on), so it is
  part of the key;
* what the caller does not cache exactly is not stored here either (too long,
  session-bound: ``FETCH``, ``EXECUTE``, ``DECLARE``, ``PREPARE``), nor is an analysis
  that failed (a parse error, or a walker error: its message may quote the tree), nor
  a text without literals (its shape is its text: the exact level holds it).

Everything else in the analysis — offsets of token literals — only exists for texts
with tokens. The rest of a plan that does depend on the text (``COPY`` options such as
``DELIMITER ';'``, token resolution) is read from the statement's own text, which the
plan keeps (:class:`dbgate.pii.plans.StatementPlan`).

**Invalidation.** Both levels are cleared together by :meth:`PlanCache.clear`, which
the room calls whenever the schema snapshot or the catalog applied to it changes.

**Bounds.** Each level holds at most :data:`PLAN_CACHE_SIZE` entries and
:data:`CACHE_CHARS` characters of keys; on overflow the oldest tenth goes. Texts
longer than :data:`MAX_CACHED_SQL` have a small level of their own, exact only:
:data:`LONG_ENTRIES` of them and :data:`LONG_CHARS` characters at most, the oldest
going first. A long text costs seconds to trace (in a worker, see
:mod:`dbgate.gate.classify_pool`); remembered, its prepared statement's Binds and a
driver's repeated Parse find it here instead of tracing it again on the event loop.
Decisions about long texts are not remembered elsewhere (:meth:`PlanCache.seen_exactly`
says no): their keys would hold megabytes each.

**Concurrency.** Lookups take no lock (a dict read is atomic, entries never change
but for a key's check, which every thread would settle the same way); stores and
evictions take the cache's lock.
"""

from __future__ import annotations

import threading
from typing import Any

from dbgate.pii.lineage import Analysis, filters_matter, parse
from dbgate.policy.literals import fast_mask, mask, spans

__all__ = [
    "CACHE_CHARS",
    "LONG_CHARS",
    "LONG_ENTRIES",
    "MAX_CACHED_SQL",
    "PLAN_CACHE_SIZE",
    "PlanCache",
    "Shape",
    "shape_from_mask",
    "shape_holds",
    "shape_of",
]

#: Query strings longer than this (characters) are planned but never cached.
MAX_CACHED_SQL = 64 * 1024
#: Entries per level; on overflow the oldest tenth is dropped.
PLAN_CACHE_SIZE = 10_000
#: Characters of keys per level (~32 MB of text), whatever the entries' lengths.
CACHE_CHARS = 32 * 1024 * 1024
#: Texts longer than MAX_CACHED_SQL remembered at most, and their characters at most.
LONG_ENTRIES = 8
LONG_CHARS = 16 * 1024 * 1024

#: (the text with its literals masked, whether its row-choosing clauses are walked)
Shape = tuple[str, bool]

_UNCHECKED, _TRUSTED, _REFUTED = 0, 1, 2


def shape_of(sql: str) -> Shape | None:
    """The shape key of ``sql``, or None when it must only ever match itself."""
    if len(sql) > MAX_CACHED_SQL:
        return None
    return shape_from_mask(sql, fast_mask(sql))


def shape_from_mask(sql: str, masked: str | None) -> Shape | None:
    """:func:`shape_of` for a text whose literal mask (``fast_mask``) is at hand."""
    if len(sql) > MAX_CACHED_SQL or "tok_" in sql:
        return None
    if not sql.isascii():
        try:  # a lone surrogate: the parser refuses the text, so no shape may hide that
            sql.encode()
        except UnicodeEncodeError:
            return None
    if masked is None or "\x00" not in masked:  # unreadable, or no literal at all
        return None
    return (masked, filters_matter(sql))


def shape_holds(shape: Shape, sql: str) -> bool:
    """PostgreSQL reads exactly one constant where each placeholder of ``shape`` stands
    in ``sql`` (a text of that shape), and nothing more: its parse tree has a constant
    starting there, of the placeholder's kind, whose value is that literal's own.

    A string that PostgreSQL joins with the next one (``'a'`` newline ``'b'``) has a
    value the literal alone does not have, and the next literal no constant of its
    own; ``x -5`` is a minus and a constant ``5`` where the mask saw ``-5``; ``- 5`` is
    one constant where the mask saw ``5``: none of these hold. Constants outside the
    placeholders (``NULL``, ``true``, ``extract(year …)``'s field, ``1e5``) are in the
    key verbatim, the same in every text of the shape.
    """
    found = spans(sql)
    # the Python lexer, whose spans are read below, must agree with the key's lexer
    if not found or mask(sql) != shape[0]:
        return False
    try:
        tree = parse(sql)
    except Exception:  # a text the parser refuses has no trusted shape
        return False
    consts: dict[int, dict[str, Any]] = {}
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            const = node.get("A_Const")
            if const is not None and len(node) == 1:
                consts[const.get("location", 0)] = const
            else:
                stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, (dict, list)))
    ascii_text = sql.isascii()  # locations are byte offsets into the UTF-8 text
    for start, end, kind in found:
        at = start if ascii_text else len(sql[:start].encode())
        const = consts.get(at)
        if const is None or not _same_constant(const, sql[start:end], kind):
            return False
    return True


def _same_constant(const: dict[str, Any], literal: str, kind: str) -> bool:
    """Whether a parse tree's ``A_Const`` is ``literal`` (a mask span of ``kind``).
    The tree leaves out zero values: ``{"ival": {}}`` is 0, ``{"sval": {}}`` is ''."""
    if kind == "S":
        value = const.get("sval")
        return value is not None and value.get("sval", "") == literal[1:-1].replace("''", "'")
    if kind in ("N", "M"):
        value = const.get("ival")
        return value is not None and value.get("ival", 0) == int(literal)
    value = const.get("fval")  # F, G: numeric, kept as written ("-1.50")
    return value is not None and value.get("fval", "") == literal


class _Shaped:
    __slots__ = ("analysis", "state")

    def __init__(self, analysis: Analysis) -> None:
        self.analysis = analysis
        self.state = _UNCHECKED


class PlanCache:
    """Analyses by exact text, then by shape (see the module docstring)."""

    def __init__(self, entries: int = PLAN_CACHE_SIZE, chars: int = CACHE_CHARS) -> None:
        self.entries = entries
        self.chars = chars
        self._exact: dict[str, Analysis] = {}
        self._long: dict[str, Analysis] = {}  # texts over MAX_CACHED_SQL, oldest first
        self._long_chars = 0
        self._shapes: dict[Shape, _Shaped] = {}
        self._held = {"exact": 0, "shape": 0}  # characters of keys per level
        #: trusted shapes whose texts need nothing from PII (:meth:`nothing_to_change`)
        self._unchanged: set[Shape] = set()
        self._lock = threading.Lock()
        #: How lookups were answered (``exact``, ``shape``, ``cold``): diagnostics, tests.
        self.stats = {"exact": 0, "shape": 0, "cold": 0}

    def lookup(
        self, sql: str, shape: Shape | bool | None = False
    ) -> tuple[Analysis | None, Shape | None]:
        """The analysis of ``sql`` if known, else (None, its shape for :meth:`store`).
        ``shape``: ``shape_of(sql)`` when the caller has it already (False: not yet)."""
        hit = self._exact.get(sql) if len(sql) <= MAX_CACHED_SQL else self._long.get(sql)
        if hit is not None:
            self.stats["exact"] += 1
            return hit, None
        if shape is False:
            shape = shape_of(sql)
        if shape is not None:
            assert shape is not True
            entry = self._shapes.get(shape)
            if entry is not None:
                if entry.state == _UNCHECKED:
                    entry.state = _TRUSTED if shape_holds(shape, sql) else _REFUTED
                if entry.state == _TRUSTED:
                    self.stats["shape"] += 1
                    return entry.analysis, shape
        self.stats["cold"] += 1
        return None, shape

    def trusted(self, shape: Shape) -> bool:
        """Whether texts of ``shape`` share one analysis (checked on a text of it)."""
        entry = self._shapes.get(shape)
        return entry is not None and entry.state == _TRUSTED

    def nothing_to_change(self, shape: Shape) -> bool:
        """Whether a text of the trusted ``shape`` was found to need nothing from PII
        (no PII output, no token, no hold): every text of the shape has the same
        analysis, so the same holds for it. Lets fresh literals (pgbench -M simple,
        ORMs that inline values) skip planning."""
        return shape in self._unchanged

    def remember_unchanged(self, shape: Shape) -> None:
        if self.trusted(shape):
            if len(self._unchanged) >= self.entries:
                self._unchanged.clear()
            self._unchanged.add(shape)

    def seen_exactly(self, sql: str) -> bool:
        """Whether ``sql`` itself is remembered (not only its shape): a text that
        repeats, worth remembering decisions about."""
        return sql in self._exact

    def store(self, sql: str, shape: Shape | None, analysis: Analysis) -> None:
        """Remember a fresh analysis of ``sql`` that the caller may reuse for that
        text (not session-bound); ``shape`` as :meth:`lookup` returned it."""
        if len(sql) > MAX_CACHED_SQL:
            self._store_long(sql, analysis)
            return
        with self._lock:
            self._put(self._exact, "exact", sql, len(sql), analysis)
            if (
                shape is not None
                and shape not in self._shapes
                and not analysis.parse_error
                and not analysis.token_sites  # only a walker error adds one to such text
                and not analysis.reads_literals  # ORDER BY 2: the literal picks an output
            ):
                self._put(self._shapes, "shape", shape, len(shape[0]), _Shaped(analysis))

    def _store_long(self, sql: str, analysis: Analysis) -> None:
        size = len(sql)
        if size > LONG_CHARS:
            return
        with self._lock:
            long = self._long
            if sql in long:
                long[sql] = analysis
                return
            while long and (len(long) >= LONG_ENTRIES or self._long_chars + size > LONG_CHARS):
                old = next(iter(long))
                del long[old]
                self._long_chars -= len(old)
            long[sql] = analysis
            self._long_chars += size

    def _put(self, cache: dict[Any, Any], level: str, key: Any, size: int, value: Any) -> None:
        if key in cache:
            cache[key] = value
            return
        if size > self.chars:
            return
        held = self._held[level]
        while cache and (len(cache) >= self.entries or held + size > self.chars):
            for old in list(cache)[: max(len(cache) // 10, 1)]:  # the oldest tenth
                del cache[old]
                held -= len(old) if isinstance(old, str) else len(old[0])
        cache[key] = value
        self._held[level] = held + size

    def clear(self) -> None:
        """Forget everything (the schema snapshot or the catalog changed)."""
        with self._lock:
            self._exact.clear()
            self._long.clear()
            self._long_chars = 0
            self._shapes.clear()
            self._unchanged.clear()
            self._held = {"exact": 0, "shape": 0}

    def info(self) -> dict[str, int]:
        """Sizes and hit counters."""
        return {
            **self.stats,
            "exact_size": len(self._exact),
            "shape_size": len(self._shapes),
            "long_size": len(self._long),
            "exact_chars": self._held["exact"],
            "shape_chars": self._held["shape"],
        }
