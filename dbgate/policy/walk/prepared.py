"""Prepared statements: PREPARE, EXECUTE, DEALLOCATE and DISCARD.

``PREPARE name AS body`` is judged by its body (an agent that prepares a DELETE gets
the hold at PREPARE), and ``EXECUTE name`` by the body the session's prepared
statement stands for (``StatementFacts.prepared``). Both forms change or consult
session state, so each statement also reports its
:class:`~dbgate.policy.model.PreparedEffect` for the proxy to follow: the body text
is cut from the query string itself, so what the proxy later checks an ``EXECUTE``
against is exactly what the server stored.
"""

from __future__ import annotations

from typing import Any

from pglast import parser as _pg

from dbgate.policy.model import CONTROL, OPAQUE, PreparedEffect
from dbgate.policy.walk import expressions, nested, statements
from dbgate.policy.walk.facts import StatementFacts
from dbgate.policy.walk.nodes import KNOWN, value_of

#: Scanner tokens that are not part of the statement's syntax.
_COMMENTS = frozenset({"C_COMMENT", "SQL_COMMENT"})


def prepare_body(text: str, scan_text: str | None = None) -> str | None:
    """The body of ``PREPARE name [(type, ...)] AS body`` exactly as written in ``text``.

    ``text`` is one PREPARE statement (as the parser delimits it: no semicolon);
    ``scan_text`` the same text with comments neutralised (same offsets), which is
    what the scanner runs on when given.
    The grammar fixes where the body starts: after the name, the optional
    parenthesised type list and ``AS``; it ends with the statement's last token, so
    trailing comments are not part of it. Offsets come from PostgreSQL's own scanner
    (pglast reports them in characters). None when ``text`` does not have that shape.
    """
    try:
        tokens = [t for t in _pg.scan(scan_text or text) if t.name not in _COMMENTS]
    except Exception:
        return None
    if len(tokens) < 4 or tokens[0].name != "PREPARE":
        return None
    i = 2  # after PREPARE and the name
    if tokens[i].name == "ASCII_40":  # "(": the parameter types, which may nest "(" ")"
        depth = 0
        while i < len(tokens):
            name = tokens[i].name
            if name == "ASCII_40":
                depth += 1
            elif name == "ASCII_41":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        i += 1
    if i + 1 >= len(tokens) or tokens[i].name != "AS":
        return None
    return text[tokens[i + 1].start : tokens[-1].end + 1]


def prepare(body: dict[str, Any], facts: StatementFacts) -> None:
    """PREPARE: the body's categories, and the name and body text as an ``add``."""
    facts.add(
        CONTROL, "prepare", "prepares a statement (PREPARE), judged by the statement it stores"
    )
    for arg in body.get("argtypes") or ():  # PREPARE q(my_domain): EXECUTE q('x') casts
        if type(arg) is dict:
            expressions.type_name(arg.get("TypeName"), facts)
    q = body.get("query") or {}
    sub = StatementFacts(None, facts.prepared, facts.extra_pure, facts.depth)
    for k, b in q.items():
        statements.stmt_body(k, b, sub)
    facts.merge(sub.result())
    # The effect carries the body's text, literals included: cache by exact text only.
    facts.sensitive = True
    text = facts.statement_text()
    stored = prepare_body(text, facts.statement_text(scanned=True)) if text is not None else None
    if stored is None:
        facts.add(
            OPAQUE,
            "prepare-body-unknown",
            "prepares a statement whose text dbgate could not locate, "
            "so a later EXECUTE of it could not be checked",
        )
        return
    facts.prepared_effect = PreparedEffect("add", body.get("name", ""), stored)


def execute(body: dict[str, Any], facts: StatementFacts) -> None:
    """EXECUTE: judged by every body the session's statement of that name may hold."""
    name = body.get("name", "")
    facts.uncacheable = True  # depends on session state, never cache
    # The arguments are expressions evaluated when EXECUTE runs (set_config(...),
    # pg_read_file(...) are allowed there): they are classified like any other.
    expressions.walk(body.get("params"), facts, True, {})
    found = facts.prepared.get(name) if facts.prepared is not None else None
    # The session may know several statements the name could stand for (after errors,
    # see dbgate.proxy.prepared): each is classified, so the strictest one decides.
    texts = (found,) if isinstance(found, str) else tuple(found or ())
    if not texts:
        facts.add(
            OPAQUE,
            "unknown-prepared",
            f"runs the prepared statement {name}, whose text dbgate does not know",
        )
        return
    params: list[bytes | str | None] | None = []
    for p in body.get("params", ()):
        state, v = value_of(p, facts)
        if state != KNOWN or params is None:
            params = None  # some argument is computed or a Bind parameter not yet seen
            continue
        params.append(v)
    for text in texts:
        nested.nested_sql(text, facts, f"EXECUTE {name}", params, unwrap_prepare=True)


def deallocate(body: dict[str, Any], facts: StatementFacts) -> None:
    """DEALLOCATE [PREPARE] name | ALL."""
    facts.add(CONTROL, "session", "deallocates prepared statements (DEALLOCATE)")
    if body.get("isall"):
        facts.prepared_effect = PreparedEffect("clear")
    else:
        facts.prepared_effect = PreparedEffect("remove", body.get("name", ""))


def discard(body: dict[str, Any], facts: StatementFacts) -> None:
    """DISCARD ALL | PLANS | SEQUENCES | TEMP; only ALL deallocates prepared statements."""
    target = body.get("target", "DISCARD_ALL").removeprefix("DISCARD_")
    facts.add(CONTROL, "discard", f"resets session state (DISCARD {target})")
    if body.get("target") == "DISCARD_ALL":
        facts.prepared_effect = PreparedEffect("clear")
