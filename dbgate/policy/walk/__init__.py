"""Walk pglast's JSON parse tree of one statement and collect what it does.

Why JSON dicts and not pglast's Python AST: building the AST costs ~100 µs for a
small statement; ``parse_sql_json`` + ``orjson.loads`` costs a few µs. Nodes look like
``{"SelectStmt": {...fields...}}`` (a one-key dict whose key starts upper-case) when
the field is a generic ``Node*``, and like a bare ``{...fields...}`` when the field
has a fixed type (``InsertStmt.relation``). Fields equal to their zero value
(0, false, "", empty list) are omitted, so every read uses ``.get`` with a default.

The walker is deliberately conservative:

* every statement type and every function it does not know makes the statement
  ``opaque`` (the rules engine holds opaque statements);
* a value that decides a category (a LIMIT, a setting, ``set_config``'s name) is read
  only when it is a literal or a bound parameter — anything computed fails closed;
* reading such a literal marks the result *literal-sensitive* so the cache never
  shares it with a statement that differs only in that literal.

One module per concern, in the order a reader needs them:

========================  ==============================================================
``facts``                 :class:`StatementFacts`, the walk's state for one statement
``nodes``                 reading names, literal values and relations out of the tree
``narrowing``             the shape: which relations a WHERE restricts at all
``bounds``                the proof: which unique keys a predicate pins, and the rows left
``sources``               FROM items, for both judges
``expressions``           the generic descent, operators and function calls
``queries``               SELECT, wherever it nests
``dml``                   INSERT, UPDATE, DELETE and MERGE
``nested``                SQL inside SQL (``query_to_xml('...')``, ``EXECUTE``)
``prepared``              PREPARE / EXECUTE / DEALLOCATE / DISCARD and their effects
``settings``              SET / RESET / transaction modes and function options
``guards``                changes to the session guards (timeouts) and sleeps
``statements``            the entry point and one handler per statement type
``fixed_statements``      statements whose categories never depend on their arguments
``command_names``         the SQL command each parse node stands for
========================  ==============================================================

SQL's grammar is recursive (a sub-select inside an expression inside a query inside
a CTE), so ``expressions``, ``narrowing``, ``sources``, ``queries``, ``dml``,
``nested``, ``prepared`` and ``statements`` call each other. They do so through module attributes
(``queries.select(...)``), never at import time, so any of them can be imported first.
"""

from __future__ import annotations

from dbgate.policy.walk.expressions import walk
from dbgate.policy.walk.facts import StatementFacts
from dbgate.policy.walk.nested import MAX_NESTING
from dbgate.policy.walk.queries import DUMP_LIMIT_THRESHOLD
from dbgate.policy.walk.statements import statement

__all__ = ["DUMP_LIMIT_THRESHOLD", "MAX_NESTING", "StatementFacts", "statement", "walk"]
