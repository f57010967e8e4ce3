"""Small pure helpers the page templates use: SQL formatting, durations, plain words.

The statement shown to approvers is the *masked* one from the store; formatting it
with PostgreSQL's own parser (pglast) and highlighting it with Pygments changes how
it looks, never what it says. Pygments escapes the text it highlights, so the result
is safe to insert into the page as is.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache

import pglast
from markupsafe import Markup
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PostgresLexer

from dbgate.approvals.notify.messages import reveal_hidden
from dbgate.pii.sql_mask import is_pii_column

_FORMATTER = HtmlFormatter(nowrap=True, classprefix="sql-")
_LEXER = PostgresLexer()


@lru_cache(maxsize=512)
def formatted_sql(statement: str) -> str:
    """The statement laid out by pglast; the text as stored if pglast cannot. A
    character that is invisible or reorders the text on screen (a right-to-left
    override in a literal) is shown as its code point, ``[U+202E]``."""
    try:
        return reveal_hidden(pglast.prettify(statement))
    except Exception:  # anything pglast cannot lay out is shown as it was stored
        return reveal_hidden(statement)


@lru_cache(maxsize=512)
def highlighted_sql(statement: str) -> Markup:
    """HTML of the statement, highlighted (escaped by Pygments)."""
    return Markup(highlight(statement, _LEXER, _FORMATTER))


def duration(seconds: float) -> str:
    """``45 s``, ``3 min 5 s``, ``2 h 10 min``, ``3 d 4 h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m} min {s} s" if s else f"{m} min"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h} h {m} min" if m else f"{h} h"
    d, h = divmod(h, 24)
    return f"{d} d {h} h" if h else f"{d} d"


def when(value: datetime | None) -> str:
    """A timestamp in UTC, to the second."""
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def rows(estimate: int | None) -> str:
    if estimate is None:
        return "not estimated"
    return f"{estimate:,}"


def pii_column(name: str) -> bool:
    """Whether a column touched by the statement holds personal data (by its name,
    until the PII catalog says more)."""
    bare = name.rsplit(".", 1)[-1].strip('"')
    return is_pii_column(bare)


STATUS_WORDS = {
    "pending": "waiting for a decision",
    "approved": "approved",
    "rejected": "rejected",
    "expired": "expired: nobody decided in time",
    "withdrawn": "withdrawn: the client cancelled or disconnected",
    "abandoned": "abandoned: the replica holding it stopped",
    "executed": "approved and executed",
}

FILTERS = {
    "duration": duration,
    "when": when,
    "rows": rows,
    "sql_format": formatted_sql,
    "sql_highlight": highlighted_sql,
    "revealed": reveal_hidden,
    "pii_column": pii_column,
    "status_words": lambda s: STATUS_WORDS.get(s, s),
}
