"""Which tables a session's SQL cursors read: what a FETCH is charged to.

``max_rows_per_window`` charges a read's rows to the tables it reads, and a FETCH
names no table: it reads the cursor its session declared. Without this, ``DECLARE c
CURSOR FOR SELECT ... FROM orders`` and a FETCH of 1,000 rows at a time read the
whole table while the window counted nothing (each FETCH is still capped by
``max_rows``). So the gate remembers, per session, the tables each ``DECLARE``
reads (as the classifier found them), and judges a FETCH of that cursor as a read of
those tables: capped by what the identity has left of them, and charged to them.

What is remembered is what the gate allowed to be sent, before the server ran it: a
DECLARE that then failed leaves a name no FETCH can use (the server knows no such
cursor), and a later DECLARE of the same name replaces it. Cursors are not forgotten
at COMMIT, CLOSE or DISCARD for the same reason: the server refuses a FETCH of a
cursor it no longer has. A FETCH of a cursor the gate never saw declared (inside a
function, whose call is judged on its own) is charged to nothing, as before.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pglast

from dbgate.policy.limits import read_tables
from dbgate.proxy.session_info import SessionInfo

_STATE_KEY = "dbgate.cursor_tables"
#: Cursors remembered per session (a client that declares thousands keeps the last).
MAX_CURSORS = 1024
#: Texts whose cursor names were read, remembered: drivers repeat their FETCH.
_NAMES: dict[str, tuple[tuple[str, str], ...]] = {}
_NAMES_SIZE = 4096

DECLARE = "DECLARE CURSOR"
FETCH = "FETCH"


def cursor_statements(sql: str) -> tuple[tuple[str, str], ...]:
    """(what, cursor name) for each statement of ``sql``, in order: ``("declare",
    name)``, ``("fetch", name)`` or ``("", "")`` for any other (MOVE included: it
    returns no rows)."""
    hit = _NAMES.get(sql)
    if hit is not None:
        return hit
    try:
        tree = json.loads(pglast.parser.parse_sql_json(sql))
    except pglast.parser.ParseError:
        out: tuple[tuple[str, str], ...] = ()
    else:
        found = []
        for raw in tree.get("stmts", ()):
            stmt = raw.get("stmt") or {}
            if "DeclareCursorStmt" in stmt:
                found.append(("declare", stmt["DeclareCursorStmt"].get("portalname", "")))
            elif "FetchStmt" in stmt and not stmt["FetchStmt"].get("ismove"):
                found.append(("fetch", stmt["FetchStmt"].get("portalname", "")))
            else:
                found.append(("", ""))
        out = tuple(found)
    if len(_NAMES) >= _NAMES_SIZE:
        _NAMES.clear()
    _NAMES[sql] = out
    return out


def remember_declared(session: SessionInfo, sql: str, classification: Any) -> None:
    """Remember the tables of each cursor ``sql`` declares (its statements as
    ``classification`` has them, one for one)."""
    statements = classification.statements
    named = cursor_statements(sql)
    if len(named) != len(statements):
        return
    cursors: dict[str, frozenset[str]] = session.state.setdefault(_STATE_KEY, {})
    for (what, name), st in zip(named, statements, strict=True):
        if what != "declare":
            continue
        cursors.pop(name, None)  # a redeclared name goes to the end
        if len(cursors) >= MAX_CURSORS:
            del cursors[next(iter(cursors))]
        cursors[name] = read_tables(replace(classification, statements=(st,)))


def with_cursor_tables(session: SessionInfo, sql: str, classification: Any) -> Any:
    """``classification`` with each FETCH reading the tables its cursor was declared
    over; None when no FETCH of a cursor this session declared is among its
    statements."""
    cursors: dict[str, frozenset[str]] | None = session.state.get(_STATE_KEY)
    if not cursors:
        return None
    statements = classification.statements
    named = cursor_statements(sql)
    if len(named) != len(statements):
        return None
    changed = False
    out = []
    for (what, name), st in zip(named, statements, strict=True):
        tables = cursors.get(name) if what == "fetch" else None
        if tables:
            st = replace(st, tables=st.tables | tables)
            changed = True
        out.append(st)
    return replace(classification, statements=tuple(out)) if changed else None
