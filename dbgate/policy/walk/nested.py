"""SQL inside SQL: ``query_to_xml('<sql>', ...)`` and ``EXECUTE`` of a prepared statement.

The text is parsed and walked like a top-level statement, one nesting level deeper,
and its categories are merged into the enclosing statement's. Nesting is bounded
(:data:`MAX_NESTING`), and anything that cannot be parsed is ``opaque``.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from pglast import parser as _pg

from dbgate.policy.model import OPAQUE
from dbgate.policy.parse_errors import safe_parse_message
from dbgate.policy.prescan import prepare
from dbgate.policy.walk import statements
from dbgate.policy.walk.facts import StatementFacts

#: Nesting depth for SQL found inside SQL (query_to_xml('...'), EXECUTE of a
#: prepared statement). Deeper nesting is opaque rather than a recursion bomb.
MAX_NESTING = 4


def nested_sql(
    text: str,
    facts: StatementFacts,
    why: str,
    params: Sequence[bytes | str | None] | None = None,
    *,
    unwrap_prepare: bool = False,
) -> None:
    """Classify SQL text found inside a statement and merge its categories.

    ``params``: values for the nested text's ``$n`` (EXECUTE arguments), or None when
    unknown. Nested SQL never receives Bind values of its own, so anything in it
    that would need them is opaque. ``unwrap_prepare``: the text is a whole
    ``PREPARE name AS ...`` (how a proxy may have recorded it): classify the body.
    """
    if facts.depth >= MAX_NESTING:
        facts.add(
            OPAQUE, "nesting-too-deep", f"{why} nests SQL more than {MAX_NESTING} levels deep"
        )
        return
    if "\x00" in text:  # the C parser would stop at the NUL
        facts.add(OPAQUE, "nested-parse-error", f"{why} contains a NUL character")
        return
    prep = prepare(text)
    if prep.operator_run is not None:
        facts.add(
            OPAQUE,
            "nested-parse-error",
            f"{why} has a run of {prep.operator_run[1]} operator characters, which dbgate "
            "does not parse",
        )
        return
    try:
        tree = orjson.loads(_pg.parse_sql_json(prep.text))
    except Exception as exc:  # parse errors of the nested text: fail closed
        message = safe_parse_message(str(exc.args[0]) if exc.args else "syntax error")
        facts.add(OPAQUE, "nested-parse-error", f"{why} could not be parsed: {message}")
        return
    for raw in tree.get("stmts", ()):
        node = raw.get("stmt") or {}
        if unwrap_prepare and "PrepareStmt" in node:
            node = node["PrepareStmt"].get("query") or {}
        sub = StatementFacts(params, facts.prepared, facts.extra_pure, facts.depth + 1, facts.keys)
        sub.source = text
        sub.scan_source = prep.text
        sub.span = (raw.get("stmt_location", 0), raw.get("stmt_len", 0))
        statements.statement(node, sub)
        facts.merge(sub.result(), bounds=True)
        facts.uncacheable |= sub.uncacheable
        facts.sensitive |= sub.sensitive
        if sub.needs_bind:
            facts.add(
                OPAQUE, "dynamic-sql", f"{why} depends on parameter values not known in advance"
            )
