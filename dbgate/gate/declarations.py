"""What the agent says it is doing — its purpose and model — for the approver.

An agent declares them in one of three ways (docs/approvals.md):

* startup parameters ``dbgate.purpose`` / ``dbgate.model`` (or ``options=-c
  dbgate.purpose=...``), read by the relay into ``SessionInfo.declared``;
* ``SET dbgate.purpose = '...'`` / ``SET dbgate.model = '...'``: custom settings are
  not reported by ParameterStatus, so the gate reads the value from the classifier
  (``StatementClass.declares``) when it lets such a statement through, and keeps it
  in ``SessionInfo.declared``;
* a comment that opens the statement, ``/* dbgate: purpose=... model=... */``, for
  that statement only (values may be quoted with ``"`` or ``'``; unquoted, a value
  runs to the next ``key=``).

Nothing here is on the hot path: it runs when a statement is held.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

#: Longest declaration kept (characters): it is shown to approvers, not parsed.
MAX_CHARS = 500

_COMMENT = re.compile(r"\s*/\*\s*dbgate\s*:(.*?)\*/", re.DOTALL | re.IGNORECASE)
_PAIR = re.compile(r"""(\w+)\s*=\s*(?:"([^"]*)"|'([^']*)'|(.*?))(?=\s+\w+\s*=|\s*$)""", re.DOTALL)
_KEYS = ("purpose", "model")


def leading_comment(sql: str) -> dict[str, str]:
    """``purpose`` and ``model`` from a ``/* dbgate: ... */`` comment that opens ``sql``."""
    m = _COMMENT.match(sql)
    if m is None:
        return {}
    out: dict[str, str] = {}
    for p in _PAIR.finditer(m.group(1).strip()):
        key = p.group(1).lower()
        if key in _KEYS:
            value = next(v for v in p.group(2, 3, 4) if v is not None)
            out[key] = value.strip()
    return out


def declared(
    session: Mapping[str, str], statement: Iterable[tuple[str, str]], sql: str
) -> dict[str, str]:
    """What a held statement's request says: the session's declarations, then those
    the statement string makes itself (a SET in it, then its leading comment)."""
    out = dict(session)
    out.update(statement)
    out.update(leading_comment(sql))
    return {k: " ".join(v.split())[:MAX_CHARS] for k, v in out.items() if k in _KEYS}
