"""What SQL ``PREPARE``/``DEALLOCATE``/``DISCARD ALL`` in a query string do to the
session's prepared statements, in the relay's terms.

SQL PREPARE and protocol-level Parse share one namespace in PostgreSQL, so a later
``EXECUTE name`` (or a Bind of ``name``) is judged by the body recorded here. Each
change names the position of its statement in the string, so the relay confirms it
by that statement's own command tag. A PREPARE that cannot be read is simply not
recorded: its EXECUTE then classifies as opaque (fail closed).
"""

from __future__ import annotations

import re

from pglast.parser import split

from dbgate.proxy.prepared import PreparedChange

PREPARED_COMMANDS = frozenset({"PREPARE", "DEALLOCATE", "DISCARD"})

_DISCARD_ALL = re.compile(r"^\s*DISCARD\s+ALL\s*;?\s*$", re.IGNORECASE)
_PREPARE = re.compile(
    r'^\s*PREPARE\s+("(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)\s*(?:\([^)]*\))?\s*AS\s+(.+?)\s*;?\s*$',
    re.IGNORECASE | re.DOTALL,
)
_DEALLOCATE = re.compile(
    r'^\s*DEALLOCATE\s+(?:PREPARE\s+)?("(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)\s*;?\s*$',
    re.IGNORECASE,
)


def _ident(token: str) -> str:
    if token.startswith('"'):
        return token[1:-1].replace('""', '"')
    return token.lower()


def sql_prepare_changes(sql: str) -> tuple[PreparedChange, ...]:
    """The prepared-statement changes of ``sql``, in statement order."""
    from dbgate.policy.classify import classify

    try:
        parts = split(sql)
    except Exception:
        return ()
    changes: list[PreparedChange] = []
    for index, part in enumerate(parts):
        if (mp := _PREPARE.match(part)) is not None:
            body = mp.group(2)
            changes.append(
                PreparedChange(
                    "add", _ident(mp.group(1)), body, classify(body).needs_bind, statement=index
                )
            )
        elif _DISCARD_ALL.match(part) is not None:
            changes.append(PreparedChange("clear", statement=index))
        elif (md := _DEALLOCATE.match(part)) is not None:
            name = md.group(1)
            if name.lower() == "all":
                changes.append(PreparedChange("clear", statement=index))
            else:
                changes.append(PreparedChange("remove", _ident(name), statement=index))
    return tuple(changes)
