"""A portal's verdict in the statement tracker: how a Bind's verdict combines with its
statement's, and whether an Execute's rows can be counted instead of watched.

Both halves of the tracker ask these (the client side when it forwards a Bind or an
Execute, the server side when the server confirms them), so they live apart from
either.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from dataclasses import replace

from pglast import parser as pg

from dbgate.proxy.seams import Allow, Refuse, RowRewriter, Statement
from dbgate.wire import sqlstate

__all__ = [
    "PortalState",
    "countable_rows",
    "declared_cursors",
    "for_every_candidate",
    "refined_verdict",
]

#: A Bind that may bind one of several statements, under a verdict made for one
AMBIGUOUS_BIND = Refuse(
    sqlstate.INSUFFICIENT_PRIVILEGE,
    "dbgate: this Bind may bind either of two statements (a Parse of its name is not "
    "answered yet) and its verdict holds for one of them only; wait for the answer "
    "(Sync) before binding",
)


def declared_cursors(sql: str) -> tuple[str, ...]:
    """The names of the SQL cursors ``sql`` declares (``DECLARE c CURSOR ...``); a
    text that cannot be parsed declares none it could name (its Query or Parse is
    refused by the gate)."""
    try:
        tree = json.loads(pg.parse_sql_json(sql))
    except (pg.ParseError, ValueError, RecursionError):
        return ()
    out: list[str] = []
    for raw in tree.get("stmts", ()):
        stmt = raw.get("stmt") or {}
        declare = stmt.get("DeclareCursorStmt")
        if isinstance(declare, dict):
            out.append(str(declare.get("portalname", "")))
    return tuple(out)


def for_every_candidate(
    stmt: Statement, verdict: Allow | Refuse | Awaitable[Allow | Refuse]
) -> Allow | Refuse | Awaitable[Allow | Refuse]:
    """A Bind's verdict, valid whichever of its candidates the server binds.

    The server may hold another statement under the name than the one last parsed
    (a Parse skipped after an error, not answered yet). The inspector judges every
    candidate, but what it makes of a Bind — values it replaces (PII tokens resolved),
    a result plan, a row limit — is made for one statement: applied to another, the
    resolved values would be echoed raw, or the other's own limit and plan replaced.
    So is a change limit: past it, approvers would be asked to keep one statement's
    changes while the server ran the other. Such a verdict is refused when the
    candidates differ; a plain allow holds for all.
    """
    cands = stmt.candidates
    if len(cands) < 2 or len({c.sql for c in cands}) < 2:
        return verdict
    if isinstance(verdict, Awaitable):
        return _later(verdict)
    return _checked(verdict)


def _checked(verdict: Allow | Refuse) -> Allow | Refuse:
    if type(verdict) is Allow and (
        verdict.replace_params is not None
        or verdict.replace_sql is not None
        or verdict.plan is not None
        or verdict.max_rows
        or verdict.max_changes
    ):
        return AMBIGUOUS_BIND
    return verdict


async def _later(verdict: Awaitable[Allow | Refuse]) -> Allow | Refuse:
    return _checked(await verdict)


def refined_verdict(parsed: Allow | None, verdict: Allow) -> Allow:
    """A Bind's verdict refines its statement's: what the Parse's verdict said about
    the results (their plan, the row limit) stands unless the Bind's says otherwise,
    since the Execute runs under the Bind's verdict alone."""
    if verdict.plan is not None and verdict.max_rows:
        return verdict
    if parsed is None or (parsed.plan is None and not parsed.max_rows):
        return verdict
    if verdict.max_rows:
        # asked at every Bind of a prepared statement under a limit: no copy when
        # there is no plan to add
        return verdict if parsed.plan is None else replace(verdict, plan=parsed.plan)
    return replace(
        verdict,
        plan=verdict.plan or parsed.plan,
        max_rows=parsed.max_rows,
        over_limit=parsed.over_limit,
    )


def countable_rows(verdict: Allow, fetch: int, used: int) -> int | None:
    """Whether an Execute of ``fetch`` rows (0: all of them) under ``verdict``'s row
    limit, ``used`` rows of it returned already, can be counted rather than watched.

    Returns the most rows it can return when that cannot take it past the limit (it
    returns ``fetch`` rows at most, and the statement is proven to read no more than
    ``verdict.result_bound``), else None: its rows must pass a :class:`RowLimiter` and
    the client wait meanwhile. A result plan rewrites the rows anyway, limit or not.
    """
    if verdict.plan is not None:
        return None
    bound = verdict.result_bound
    if fetch > 0 and (bound is None or fetch < bound):
        bound = fetch
    if bound is None or used + bound > verdict.max_rows:
        return None
    return bound


class PortalState:
    """What a portal under a result plan or a row limit needs across its Executes."""

    __slots__ = ("description", "rewriter", "rows")

    def __init__(self) -> None:
        self.description: bytes | None = None
        self.rewriter: RowRewriter | None = None
        #: Rows its counted Executes returned (a limiter, once it has one, counts on)
        self.rows = 0
