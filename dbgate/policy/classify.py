"""Public classifier API: SQL text in, :class:`~dbgate.policy.model.Classification` out.

This is the proxy's hot path, so the common case is a dictionary lookup:

1. **exact text** — the same query string seen before (drivers re-send identical
   text with ``$n`` parameters) → one dict lookup;
2. **masked text** — :mod:`dbgate.policy.literals` replaces literals with
   placeholders in ~0.2 µs; trusted for a key only after its rendering matched
   ``normalize`` once (see that module for why that makes it sound);
3. **normalized text** — ``pglast.parser.normalize`` replaces every literal with
   ``$n`` (a full parse, 2 to 4 µs); statements that differ only in literal values share
   an entry;
4. **cold** — ``parse_sql_json`` + a walk over the JSON tree (:mod:`dbgate.policy.walk`).

Why the second-level key is the normalized *text* and not the 64-bit fingerprint:
``fingerprint`` is a non-cryptographic hash; trusting "same fingerprint" as "same
statement" would let an agent that can find a collision inherit a cached ``read``
for a ``COPY ... TO PROGRAM``. The normalized text compares exactly. The fingerprint
is still computed on the cold path and reported in ``Classification.fingerprint``.

Literal values *can* matter (``SET standard_conforming_strings = off``,
``set_config('role', ...)``, ``LIMIT 5`` vs ``LIMIT 5000``): the walker marks a
statement *literal-sensitive* whenever it reads a literal to decide, and such
results are cached only under their exact text. Results that depend on session
state (``EXECUTE`` of a prepared statement) are never cached.

Nothing here raises: a parse error gives ``parse_error`` plus an ``opaque``
statement; any internal exception gives ``opaque`` with reason ``internal-error``.

**Concurrency.** :func:`classify` may run in several threads at once (a worker
pool): each call walks its own tree with its own state; the caches are dicts whose
lookups are atomic and whose stores and evictions take the module lock; results are
immutable and shared. Only the hit counters of :func:`cache_info` may miss an
increment under contention. In a worker *process* each process has its own caches;
arguments (text, Bind values, prepared texts, :class:`~dbgate.policy.keys.KeyCatalog`)
and the :class:`~dbgate.policy.model.Classification` it returns are picklable.

**Cost.** Parsing and walking are linear in the statement's size:
:mod:`dbgate.policy.prescan` keeps PostgreSQL's scanner away from its quadratic
inputs, each sub-select is walked once, and :func:`dbgate.policy.prescan.classification_cost`
estimates the cost before any of it (docs/classifier.md, "Performance").
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson
from pglast import parser as _pg

from dbgate.policy.keys import KeyCatalog
from dbgate.policy.literals import fast_mask as _mask
from dbgate.policy.literals import render_key
from dbgate.policy.model import (
    MAX_CACHED_SQL,
    Category,
    Classification,
    Prepared,
    Reason,
    StatementClass,
)
from dbgate.policy.parse_errors import parser_complaint
from dbgate.policy.prescan import MAX_OPERATOR_RUN, classification_cost, prepare
from dbgate.policy.prescan import Prepared as Prescan
from dbgate.policy.walk import StatementFacts, statement

__all__ = [
    "CACHE_CHARS",
    "CACHE_SIZE",
    "MAX_CACHED_SQL",
    "cache_info",
    "classification_cost",
    "classify",
    "classify_bind",
    "clear_cache",
    "is_cached",
    "remember",
    "seen_exactly",
]

#: Entries per cache level; on overflow the oldest tenth is dropped.
CACHE_SIZE = 20_000

#: Total characters of keys per cache level (~32 MB of text): the memory bound that
#: holds even when every entry is close to MAX_CACHED_SQL.
CACHE_CHARS = 32 * 1024 * 1024

_EMPTY: frozenset[str] = frozenset()
#: pglast's parse tree comes as JSON; orjson decodes it in about half json's time.
_loads = orjson.loads
_exact: dict[Any, Classification] = {}
_masked: dict[Any, Classification] = {}
_normalized: dict[Any, Classification] = {}
_chars: dict[int, int] = {id(_exact): 0, id(_masked): 0, id(_normalized): 0}  # key chars held
_lock = threading.Lock()
_stats = {"exact": 0, "masked": 0, "normalized": 0, "cold": 0}


def clear_cache() -> None:
    """Forget every cached classification (tests; after the function catalog changes)."""
    with _lock:
        _exact.clear()
        _masked.clear()
        _normalized.clear()
        for k in _chars:
            _chars[k] = 0
        for k in _stats:
            _stats[k] = 0


def seen_exactly(
    sql: str, *, extra_pure_functions: frozenset[str] = _EMPTY, keys: KeyCatalog | None = None
) -> bool:
    """Whether ``sql`` itself (not just its shape) is in the cache: a text that repeats.

    The proxy remembers verdicts only for such texts; remembering every text of a
    client that inlines fresh values would cost more than it saves. Asked with the
    arguments :func:`classify` gets: texts are cached per key catalog. A text too
    long to be cached is not looked up: hashing a hostile 50 MB statement costs ~15 ms.
    """
    if len(sql) > MAX_CACHED_SQL:
        return False
    context = _context(extra_pure_functions, keys)
    return ((sql, context) if context is not None else sql) in _exact


def _context(extra: frozenset[str], keys: KeyCatalog | None) -> Any:
    """The part of a cache key besides the text (None in the common case)."""
    if extra or keys is not None:
        return (extra, keys.cache_token if keys is not None else None)
    return None


def cached_shape(
    sql: str,
    masked: str,
    *,
    extra_pure_functions: frozenset[str] = _EMPTY,
    keys: KeyCatalog | None = None,
) -> Classification | None:
    """What :func:`classify` answers for ``sql`` (whose literal mask is ``masked``,
    ``literals.fast_mask``) from its masked cache: None when the shape is not cached,
    or when ``sql`` itself is (it repeats: see :func:`seen_exactly`)."""
    context = _context(extra_pure_functions, keys)
    if context is None:
        return None if sql in _exact else _masked.get(masked)
    return None if (sql, context) in _exact else _masked.get((masked, context))


def is_cached(
    sql: str, *, extra_pure_functions: frozenset[str] = _EMPTY, keys: KeyCatalog | None = None
) -> bool:
    """Whether :func:`classify` would answer ``sql`` from its exact-text or masked
    cache, without parsing: the gate classifies such a text inline however long it is.
    Costs a dict lookup and, on a miss, one pass of the literal mask (C, linear)."""
    if len(sql) > MAX_CACHED_SQL:
        return False
    context = _context(extra_pure_functions, keys)
    if ((sql, context) if context is not None else sql) in _exact:
        return True
    masked = _mask(sql)
    return masked is not None and ((masked, context) if context is not None else masked) in _masked


def remember(
    sql: str,
    result: Classification,
    *,
    extra_pure_functions: frozenset[str] = _EMPTY,
    keys: KeyCatalog | None = None,
) -> bool:
    """Store a classification of ``sql`` computed elsewhere (a worker process running
    :func:`classify` with the same arguments) under its exact text, so the next
    identical text is a cache hit. Texts :func:`classify` would not cache (too long,
    or a result that depends on session state) are not stored; returns whether it was."""
    if len(sql) > MAX_CACHED_SQL or result.session_dependent or "\x00" in sql:
        return False
    context = _context(extra_pure_functions, keys)
    _store(_exact, (sql, context) if context is not None else sql, result)
    return True


def cache_info() -> dict[str, int]:
    """Hit counters and sizes, for SHOW-style diagnostics and tests."""
    return {
        **_stats,
        "exact_size": len(_exact),
        "masked_size": len(_masked),
        "normalized_size": len(_normalized),
        "exact_chars": _chars[id(_exact)],
        "masked_chars": _chars[id(_masked)],
        "normalized_chars": _chars[id(_normalized)],
    }


def _key_chars(key: Any) -> int:
    return len(key) if isinstance(key, str) else len(key[0])


def _store(cache: dict[Any, Classification], key: Any, value: Classification) -> None:
    """Insert, evicting the oldest tenth when the entry or character budget is spent.

    Under the module lock, so concurrent classifiers (worker threads) keep the budgets
    exact; lookups need no lock (a dict read is atomic, and entries never change)."""
    with _lock:
        if key in cache:  # another thread got there first
            cache[key] = value
            return
        chars = _chars[id(cache)] + _key_chars(key)
        if len(cache) >= CACHE_SIZE or chars > CACHE_CHARS:
            for k in list(cache)[: max(len(cache) // 10, 1)]:
                if cache.pop(k, None) is not None:
                    chars -= _key_chars(k)
        cache[key] = value
        _chars[id(cache)] = chars


def _opaque(code: str, message: str, command: str = "") -> StatementClass:
    return StatementClass(
        categories=frozenset({Category.OPAQUE}),
        reasons=(Reason(Category.OPAQUE, code, message),),
        command=command,
    )


_NUL_MESSAGE = "the query contains a NUL character, where PostgreSQL would stop reading it"
_NUL_RESULT = Classification(
    statements=(
        StatementClass(
            categories=frozenset({Category.OPAQUE}),
            reasons=(Reason(Category.OPAQUE, "parse-error", _NUL_MESSAGE),),
        ),
    ),
    parse_error=_NUL_MESSAGE,
)


_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_was_enabled = False


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Keep Python's cyclic garbage collector from running while a large statement is
    classified: its parse tree (hundreds of thousands of dicts and lists, no cycles,
    freed by reference counting) would otherwise be traversed by every full
    collection it triggers, which makes the cost grow faster than the text. Counted,
    so concurrent classifiers re-enable it only when the last one is done, and only
    if it was enabled before the first."""
    global _gc_pausers, _gc_was_enabled
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_enabled:
                gc.enable()


def _operator_run_result(run: tuple[int, int]) -> Classification:
    """A text with an operator run PostgreSQL's scanner reads in quadratic time."""
    start, length = run
    return Classification(
        statements=(
            _opaque(
                "operator-run",
                f"has a run of {length} operator characters (at character {start + 1}), which "
                f"dbgate does not parse (it parses runs of at most {MAX_OPERATOR_RUN})",
            ),
        )
    )


def _internal_error(exc: BaseException) -> Classification:
    """Opaque result for a classifier bug. Only the exception type is reported: its
    message could quote the statement, and reasons reach the audit log and approvers."""
    return Classification(
        statements=(
            _opaque(
                "internal-error",
                f"could not be classified ({type(exc).__name__} in dbgate), so it is refused",
            ),
        )
    )


def classify(
    sql: str,
    params: Sequence[bytes | str | None] | None = None,
    *,
    prepared: Prepared | None = None,
    extra_pure_functions: frozenset[str] = _EMPTY,
    keys: KeyCatalog | None = None,
) -> Classification:
    """Classify every statement of ``sql``.

    ``params``: text-format Bind values; when given the result is computed fresh and
    never cached. ``prepared``: name -> SQL of statements PREPAREd earlier in the
    session, so ``EXECUTE name`` is classified by its body instead of ``opaque``.
    ``extra_pure_functions``: user functions the caller has verified harmless (see
    docs/classifier.md), as ``name`` or ``schema.name`` exactly as called.
    ``keys``: the upstream's unique keys (:mod:`dbgate.policy.keys`), which let a
    statement be proven narrow; None proves nothing narrow. Results are cached per
    (text, ``keys.cache_token``).
    """
    try:
        if "\x00" in sql:  # the C parser would stop at the NUL and never see the rest
            return _NUL_RESULT
        if len(sql) > MAX_CACHED_SQL:
            with _collector_paused():
                return _cold(sql, params, prepared, extra_pure_functions, keys)[0]
        if params is not None:
            return _cold(sql, params, prepared, extra_pure_functions, keys)[0]
        context = _context(extra_pure_functions, keys)
        key: Any = (sql, context) if context is not None else sql
        hit = _exact.get(key)
        if hit is not None:
            _stats["exact"] += 1
            return hit
        masked = _mask(sql)
        mkey: Any = None
        if masked is not None:
            mkey = (masked, context) if context is not None else masked
            hit = _masked.get(mkey)
            if hit is not None:
                _stats["masked"] += 1
                return hit
        prep = prepare(sql)
        if prep.operator_run is not None:
            result = _operator_run_result(prep.operator_run)
            _store(_exact, key, result)
            return result
        try:
            norm = _pg.normalize(prep.text)
        except Exception:
            norm = None
        nkey: Any = None
        if norm is not None:
            nkey = (norm, context) if context is not None else norm
            hit = _normalized.get(nkey)
            if hit is not None:
                _stats["normalized"] += 1
                if mkey is not None and render_key(masked) == norm:
                    _store(_masked, mkey, hit)  # the mask agrees with PostgreSQL here
                # Texts that reach this point usually differ from earlier ones only in
                # literals (pgbench -M simple, ORMs that inline values) and rarely
                # repeat, so copying them would only churn the exact cache. A text
                # without literals (``... WHERE id = $1``) is its own normalized form
                # and is re-sent verbatim by every driver: that one is worth an entry,
                # or each of its Parses pays a normalize (a full parse).
                if norm == sql:
                    _store(_exact, key, hit)
                return hit
        _stats["cold"] += 1
        result, sensitive, cacheable = _cold(sql, None, prepared, extra_pure_functions, keys, prep)
        if cacheable:
            _store(_exact, key, result)
            if not sensitive and nkey is not None:
                _store(_normalized, nkey, result)
                if mkey is not None and render_key(masked) == norm:
                    _store(_masked, mkey, result)
        return result
    except Exception as exc:  # never raise, never allow because of a bug
        return _internal_error(exc)


def classify_bind(
    classification: Classification,
    sql: str,
    params: Sequence[bytes | str | None],
    *,
    prepared: Prepared | None = None,
    extra_pure_functions: frozenset[str] = _EMPTY,
    keys: KeyCatalog | None = None,
) -> Classification:
    """Re-classify at Bind with the actual text-format parameter values.

    Only statements whose category depends on a ``$n`` value (``set_config($1, $2,
    false)``, ``LIMIT $1``, ``query_to_xml($1, ...)``) report ``needs_bind``; for
    everything else the Parse-time classification is returned unchanged. A value
    that cannot be decoded (binary format) is treated as unknown: fail closed.
    """
    if not classification.needs_bind:
        return classification
    try:
        if "\x00" in sql:
            return _NUL_RESULT
        return _cold(sql, params, prepared, extra_pure_functions, keys)[0]
    except Exception as exc:
        return _internal_error(exc)


def _cold(
    sql: str,
    params: Sequence[bytes | str | None] | None,
    prepared: Prepared | None,
    extra: frozenset[str],
    keys: KeyCatalog | None = None,
    prep: Prescan | None = None,
) -> tuple[Classification, bool, bool]:
    """Parse and walk. Returns (classification, literal_sensitive, cacheable)."""
    if prep is None:
        prep = prepare(sql)
        if prep.operator_run is not None:
            return _operator_run_result(prep.operator_run), False, True
    text = prep.text  # what PostgreSQL's scanner runs on: same offsets as sql
    try:
        tree = _loads(_pg.parse_sql_json(text))
    except _pg.ParseError as exc:
        complaint = parser_complaint(sql, exc)
        return (
            Classification(
                statements=(_opaque("parse-error", f"could not be parsed: {complaint.message}"),),
                parse_error=complaint.message,
                parse_error_position=complaint.position,
            ),
            False,
            True,
        )
    stmts: list[StatementClass] = []
    sensitive = False
    cacheable = True
    for raw in tree.get("stmts", ()):
        facts = StatementFacts(params, prepared, extra, 0, keys)
        facts.source = sql
        facts.scan_source = text
        facts.span = (raw.get("stmt_location", 0), raw.get("stmt_len", 0))
        try:
            statement(raw.get("stmt") or {}, facts)
            stmts.append(facts.result())
        except RecursionError:
            stmts.append(
                _opaque("internal-error", "nests expressions too deeply to analyse", facts.command)
            )
        sensitive |= facts.sensitive
        cacheable &= not facts.uncacheable
    if not stmts:
        stmts.append(
            StatementClass(
                categories=frozenset({Category.CONTROL}),
                reasons=(Reason(Category.CONTROL, "empty-query", "is empty (no statement)"),),
                command="EMPTY",
            )
        )
    result = Classification(
        statements=tuple(stmts), fingerprint_source=text, session_dependent=not cacheable
    )
    return result, sensitive, cacheable
