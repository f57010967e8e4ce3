"""How many rows would a held statement touch? The planner's estimate, safely.

An approver decides better knowing whether ``DELETE … WHERE created_at < $1`` hits
ten rows or ten million. PostgreSQL's planner knows roughly, without running
anything: ``EXPLAIN (FORMAT JSON)``. This module asks it under these guards:

* never ``ANALYZE`` — the statement is not executed;
* only for ``SELECT`` (without ``INTO``), ``INSERT``, ``UPDATE``, ``DELETE`` and
  ``MERGE``; anything else (DDL, ``COPY``, utility commands) is not explained, nor
  (:func:`make_estimator`) a statement that calls code dbgate cannot follow or reads
  whole tables (categories ``opaque``, ``dump``): the planner runs STABLE functions
  on constants to estimate, and what they read would be the estimate;
* on a *separate* connection, as the agent's own upstream role (so the estimate can
  see nothing the agent could not), never the agent's session;
* inside a ``READ ONLY`` transaction that is rolled back, with a short
  ``statement_timeout`` — planning may evaluate immutable functions on constants,
  and this keeps that from writing anything or taking long;
* Bind values are passed through ``PREPARE`` / ``EXPLAIN EXECUTE`` as quoted
  literals, so the plan is the one for those values.

Errors become a note, never an exception: the server's primary message, with what it
quotes masked (an error may quote a value) and no DETAIL or HINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from pglast import parser as pg

from dbgate.approvals.model import ApprovalRequest, Requester
from dbgate.pii.sql_mask import mask_text

_EXPLAINABLE = frozenset({"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})


@dataclass(frozen=True, slots=True)
class RowEstimate:
    """``rows`` is the planner's estimate (summed over statements), or None with ``note``
    saying why there is none."""

    rows: int | None
    note: str = ""


def explainable(sql: str) -> tuple[list[str], str]:
    """The statements of ``sql`` that may be explained, or ([], why not)."""
    try:
        tree = json.loads(pg.parse_sql_json(sql))
    except (pg.ParseError, ValueError):
        return [], "the statement could not be parsed"
    stmts = tree.get("stmts") or []
    if not stmts:
        return [], "the statement is empty"
    out = []
    for raw in stmts:
        node = raw.get("stmt") or {}
        kind = next(iter(node), "")
        if kind not in _EXPLAINABLE:
            return [], f"the planner is not asked about {kind or 'this kind of'} statements"
        if kind == "SelectStmt" and node[kind].get("intoClause"):
            return [], "the planner is not asked about SELECT INTO"
        start = raw.get("stmt_location", 0)
        length = raw.get("stmt_len", 0)
        data = sql.encode("utf-8")
        piece = data[start : start + length] if length else data[start:]
        out.append(piece.decode("utf-8"))
    return out, ""


def _literal(value: str | None) -> str:
    if value is None:
        return "NULL"
    if "\x00" in value:
        raise ValueError("a parameter contains a NUL byte")
    return "'" + value.replace("'", "''") + "'"


def _plan_rows(plan: Mapping[str, Any]) -> float:
    """Rows the statement touches: for INSERT/UPDATE/DELETE/MERGE (ModifyTable, whose
    own estimate is of the rows it *returns*) the rows its input produces."""
    if plan.get("Node Type") == "ModifyTable" and plan.get("Plans"):
        return float(plan["Plans"][0].get("Plan Rows", 0))
    return float(plan.get("Plan Rows", 0))


async def estimate_rows(
    sql: str,
    params: Sequence[str | None] = (),
    *,
    connect: Mapping[str, Any],
    timeout_seconds: float = 2.0,
) -> RowEstimate:
    """The planner's row estimate for ``sql`` with Bind values ``params``.

    ``connect`` are keyword arguments for :func:`asyncpg.connect` reaching the
    upstream as the agent's role (host, port, user, password, database, ssl …).
    """
    statements, why = explainable(sql)
    if not statements:
        return RowEstimate(None, why)
    if params and len(statements) != 1:
        return RowEstimate(None, "parameters with several statements cannot be explained")
    try:
        literals = ", ".join(_literal(v) for v in params)
    except ValueError as e:
        return RowEstimate(None, str(e))
    try:
        async with asyncio.timeout(timeout_seconds * 2):
            return await _explain(
                statements, literals if params else None, connect, timeout_seconds
            )
    except TimeoutError:
        return RowEstimate(None, "the planner did not answer in time")
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        return RowEstimate(None, f"the planner could not estimate: {_error_text(e)}")


#: What PostgreSQL quotes in a message: a value it could not read (``invalid input
#: syntax for type integer: "…"``, ``date/time field value out of range: "…"``) or a name.
_QUOTED = re.compile(r'"(?:[^"]|"")*"')


#: A word with a digit in it: a number the server echoes unquoted (``requested
#: character too large for encoding: 219099999``, ``date field value out of range:
#: 1961-07-99``, ``index 9999 out of valid range``, bytes ``0xc3 0xa9``).
_NUMBER = re.compile(r"[^\s\"]*\d[^\s\"]*")


#: SQLSTATE classes whose messages the server writes itself when it plans: syntax
#: and access (42), data (22), resources and limits (53, 54, 57), connection (08),
#: unsupported (0A), transaction state (25).
_SAID_BY_THE_SERVER = frozenset({"42", "22", "53", "54", "57", "08", "0A", "25"})


_CONTEXT_LINE = re.compile(
    r"(?:SQL function |SQL statement |PL/pgSQL function .* at (?!RAISE|ASSERT)\w)"
)


def _server_wrote(e: BaseException) -> bool:
    """Whether the server wrote this message, not a function's own code (``RAISE``,
    ``ASSERT``, a procedural language's error call): no context, or only SQL and
    PL/pgSQL statements that are not RAISE or ASSERT in it."""
    context = getattr(e, "context", None)
    if not context:
        return True
    return all(_CONTEXT_LINE.match(line) for line in str(context).splitlines() if line)


def _error_text(e: BaseException) -> str:
    """An error for approvers: the primary message only (a DETAIL or HINT may quote a
    row: ``Key (email)=(…)``, ``Token "…" is invalid``), with whatever it quotes and
    every number in it replaced: the value it echoes is the agent's, masked in the
    statement by place (``birth_date = $1``) but not shaped like anything masking by
    look finds, or one a function the planner evaluated read from a table. An error
    raised inside a function, or of a class the server's own checks do not raise, is
    noted by its SQLSTATE alone."""
    if isinstance(e, asyncpg.PostgresError):
        code = getattr(e, "sqlstate", None) or ""
        if code[:2] not in _SAID_BY_THE_SERVER or not _server_wrote(e):
            # raised by a function the planner ran (an IMMUTABLE one on constants):
            # its message is the function's to write, table data included
            return f"an error in a function the planner evaluated (SQLSTATE {code or '?'})"
        text = str(e.args[0]) if e.args else type(e).__name__
        # The planner evaluates STABLE functions on constants to estimate a clause,
        # and a function of the database's own (or table_to_xml) may read a PII
        # column: the server's own message then names a number made of the value,
        # unquoted (chr(replace(ssn, '-', '')::int)). Numbers go with quoted values.
        text = _NUMBER.sub("…", _QUOTED.sub('"…"', text))
        return f"{mask_text(text)} (SQLSTATE {code})"
    else:
        text = str(e)
    return mask_text(_QUOTED.sub('"…"', text))


async def _explain(
    statements: list[str], literals: str | None, connect: Mapping[str, Any], timeout: float
) -> RowEstimate:
    settings = dict(connect.get("server_settings") or {})
    settings.update(
        application_name="dbgate-estimate",
        statement_timeout=str(max(1, int(timeout * 1000))),
        default_transaction_read_only="on",
    )
    kwargs = {**connect, "server_settings": settings, "timeout": timeout}
    conn = await asyncpg.connect(**kwargs)
    try:
        tx = conn.transaction(readonly=True)
        await tx.start()
        try:
            total = 0.0
            for stmt in statements:
                if literals is not None:
                    await conn.execute(f"PREPARE dbgate_estimate AS {stmt}")
                    text = await conn.fetchval(
                        f"EXPLAIN (FORMAT JSON) EXECUTE dbgate_estimate({literals})"
                    )
                else:
                    text = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {stmt}")
                plan = json.loads(text)[0]["Plan"]
                total += _plan_rows(plan)
        finally:
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError):
                await tx.rollback()
    finally:
        await conn.close(timeout=timeout)
    return RowEstimate(round(total))


#: Categories of statements that call code dbgate cannot follow (a function of the
#: database's own) or built-ins that read whole tables (``table_to_xml``): to estimate
#: a clause or a set-returning function's rows the planner runs STABLE functions on
#: constants, and what they read comes back as the estimate itself
#: (``generate_series(1, replace(ssn_of(1), '-', '')::int)`` is 219099999 rows).
_UNSEEN_CODE = frozenset({"opaque", "dump"})
_UNSEEN_CODE_NOTE = (
    "the planner is not asked about statements that call code dbgate cannot follow "
    "or read whole tables: it would run them to estimate"
)


def make_estimator(
    connect_for: Callable[[Requester], Mapping[str, Any] | None],
    *,
    timeout_seconds: float = 2.0,
) -> Callable[[ApprovalRequest], Awaitable[tuple[int | None, str]]]:
    """A :data:`~dbgate.approvals.service.RowEstimator` for the service.

    ``connect_for(requester)`` returns the :func:`asyncpg.connect` arguments that
    reach the upstream as that identity's upstream role (None: do not estimate).
    """

    async def estimate(request: ApprovalRequest) -> tuple[int | None, str]:
        if _UNSEEN_CODE.intersection(request.categories):
            return None, _UNSEEN_CODE_NOTE
        connect = connect_for(request.requester)
        if connect is None:
            return None, "no upstream connection for this identity"
        result = await estimate_rows(
            request.sql, request.params, connect=connect, timeout_seconds=timeout_seconds
        )
        return result.rows, result.note

    return estimate
