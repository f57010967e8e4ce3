"""Column lineage: which output columns of a statement carry values of PII columns.

The walk runs over PostgreSQL's own parse tree (pglast's ``parse_sql_json``, i.e.
libpg_query), not over a re-implementation of the grammar: whatever the server
accepts, the walker sees exactly as the server will, so no dialect gap can hide a
column. It follows *values*, not control: a column in a select-list expression, a
function argument, a CASE branch, a scalar sub-select's output, an aggregate or a
window function's argument flows into the result; a column in WHERE, JOIN ... ON,
GROUP BY, ORDER BY, a window's PARTITION BY or an aggregate's FILTER only decides
*which* rows appear, which is what an agent is allowed to do. ``count(...)`` carries
no value. Except when the choice *is* a value: a predicate that relates a PII-derived
value with columns of another row source (``g = ascii(substr(full_name, 1, 1))``, ``g
IN (SELECT ... full_name ...)``) makes the rows of those columns spell the PII, so
every output of their query level is derived from it (``Queries.choose``). And a value
computed from an order carries what ordered it, a row's own PII too: a window
function's value its window's keys (``Queries.window``), an ordered aggregate's value
its ORDER BY, and a nested level's rows an ORDER BY or DISTINCT ON of an expression of
PII (``Queries.ordered_by``).
Everything the walker cannot follow — a user-defined function, a relation
not in the schema snapshot, a cursor it did not see declared, a node type it does not
know — makes the value *unknown*, which callers treat as PII (fail closed).

Tokens the agent sends back (``'tok_email_…'``) are resolved to real values before
the statement runs, so the walker also notes where each token literal and each bind
parameter appears: in a filter or an output (fine: outputs are tokenized again), as a
value written into a PII column (fine), or anywhere it could be stored or echoed raw —
a non-PII column, a setting, a user function, a view definition, EXPLAIN (refused).

One module per concern, in the order a reader needs them:

=================  =====================================================================
``builtin_names``  the built-in functions and types the walk knows by name
``results``        what the walk returns (:class:`Analysis`, :class:`Output` ...) and
                   what it reads (:class:`ColumnSource`, :class:`SessionState`)
``context``        where a value ends up: whether a token there may be resolved
``nodes``          reading pglast's JSON tree: one-key nodes, names
``scope``          name resolution: FROM entries (``Item``), query levels (``Scope``)
``state``          ``WalkState``, the walk's state for one query string, and its
                   bookkeeping (unknown values, the columns a predicate meets)
``statements``     one handler per statement type, and a query wherever one nests
``queries``        SELECT: set operations, VALUES, target lists, CTEs, and the
                   clauses that choose rows (``choose``)
``sources``        FROM items: tables, sub-selects, joins, functions and their width
``writes``         INSERT, UPDATE, DELETE and MERGE, and PII stored where the
                   catalog will not find it again
``expressions``    the generic descent and one handler per node kind: the hot path
``walker``         the parts joined into ``Walker``; :func:`parse`,
                   :func:`filters_matter` and :func:`analyze`
=================  =====================================================================

SQL's grammar is recursive (a sub-select inside an expression inside a query inside a
CTE), so ``statements``, ``queries``, ``sources``, ``writes`` and ``expressions`` call
each other. Each holds one mixin class over ``WalkState`` (``Statements``, ``Queries``,
``Sources``, ``Writes``, ``Expressions``) and ``walker.Walker`` joins them: they call
each other through ``self`` (``self.select(...)``, ``self.expr(...)``), never at import
time, so any of them can be imported first. ``Expressions.expr`` and ``generic``, the
hottest functions of a cold plan, dispatch through ``_EXPR``, a plain dict of functions
built once when ``expressions`` is imported.

Analyses traced in a classification worker come back pickled; the pool unpickles only
the names it allows, the result classes of :mod:`.results` among them.
"""

from __future__ import annotations

# also importable from here, as before the split (dbgate.pii.catalog cites DATA_READERS)
from dbgate.pii.lineage.builtin_names import (  # noqa: F401
    DATA_READERS,
    HYPOTHETICAL_SET_AGGREGATES,
    SIDE_EFFECTS,
    VALUE_FREE_FUNCTIONS,
)
from dbgate.pii.lineage.results import (
    Analysis,
    ColumnSource,
    Output,
    SessionState,
    StatementLineage,
    TokenSite,
)
from dbgate.pii.lineage.walker import analyze, filters_matter, parse

__all__ = [
    "Analysis",
    "ColumnSource",
    "Output",
    "SessionState",
    "StatementLineage",
    "TokenSite",
    "analyze",
    "filters_matter",
    "parse",
]
