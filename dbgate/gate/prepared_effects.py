"""What SQL ``PREPARE``/``DEALLOCATE``/``DISCARD ALL`` in a query string do to the
session's prepared statements, in the relay's terms.

SQL PREPARE and protocol-level Parse share one namespace in PostgreSQL, so a later
``EXECUTE name`` (or a Bind of ``name``) is judged by the body recorded here. The
classifier reads the effects from the parse tree it builds anyway
(:class:`~dbgate.policy.model.PreparedEffect`); each change here names the position
of its statement in the string, so the relay confirms it by that statement's own
command tag.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pglast import parser as pg

from dbgate.policy.model import Classification
from dbgate.proxy.prepared import PreparedChange

PREPARED_COMMANDS = frozenset({"PREPARE", "DEALLOCATE", "DISCARD"})


def prepared_changes(classification: Classification) -> tuple[PreparedChange, ...]:
    """The prepared-statement changes of a classified query string, in order."""

    changes: list[PreparedChange] = []
    for index, st in enumerate(classification.statements):
        effect = st.prepared_effect
        if effect is None:
            continue
        if effect.kind == "add":
            # A protocol Bind of it is refused (the gate sees each one): the PREPARE
            # was judged as a PREPARE (it runs nothing), never as a Parse whose Binds
            # carry its holds, limits and PII plan (a Bind of it ran an approved-once
            # DELETE again and again, and returned PII raw). EXECUTE is judged.
            changes.append(
                PreparedChange(
                    "add", effect.name, effect.body, True, statement=index, sql_prepared=True
                )
            )
        else:
            changes.append(PreparedChange(effect.kind, effect.name, statement=index))
    return tuple(changes)


def sql_prepare_changes(sql: str) -> tuple[PreparedChange, ...]:
    """The prepared-statement changes of ``sql`` (classifies it)."""
    from dbgate.policy.classify import classify

    return prepared_changes(classify(sql))


def executed_texts(sql: str, texts: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    """Each prepared statement ``sql`` runs (``EXECUTE name``, also under ``EXPLAIN``
    or ``CREATE TABLE ... AS``), as its name followed by the texts the session may
    hold under it: what an approval of ``sql`` is an approval of (the text
    ``EXECUTE p`` stays the same when ``p`` is prepared anew)."""
    if "execute" not in sql.lower():
        return ()
    try:
        tree = json.loads(pg.parse_sql_json(sql))
    except (pg.ParseError, ValueError, RecursionError):
        return ()
    names: list[str] = []
    todo: list[Any] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            execute = node.get("ExecuteStmt")
            if isinstance(execute, dict):
                names.append(str(execute.get("name", "")))
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    out: list[str] = []
    for name in sorted(set(names)):
        out.append(name)
        out.extend(sorted(texts.get(name, ()) or ()))
    return tuple(out)
