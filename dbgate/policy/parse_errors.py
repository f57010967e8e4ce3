"""PostgreSQL's parse errors, as PostgreSQL would report them and safe to show.

The gate refuses what it cannot parse the way PostgreSQL itself would: SQLSTATE
42601 with the parser's message and the error position, so psql draws its caret and
a client reads a syntax error, not a permission problem. Two details matter:

* **position**: PostgreSQL reports a 1-based index in *characters* (not bytes) of
  the query string. pglast's ``ParseError`` carries the parser's cursor as a 0-based
  character index, and none for errors at the end of the input, which PostgreSQL
  reports one past the last character.
* **message**: the message travels to the agent, the audit log and the approval
  page. The parser echoes the token where it stopped, which may be a literal value
  (an SSN in an unterminated string, the rest of the text after an unterminated
  comment, a quoted identifier): that token is replaced first.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from pglast.parser import ParseError

_NEAR = re.compile(r'at or near "(.*)"(, at index \d+)?$', re.DOTALL)
_LITERAL_START = re.compile(r"^(?:'|\$|[0-9.]|[EeBbXxNn]'|[Uu]&')")


def safe_parse_message(message: str) -> str:
    """The parser's message with any echoed literal replaced by ``<literal>``.

    ``unterminated quoted string at or near "'123-45-6789"`` would carry a value into
    the audit log and the approval page; so would an unterminated comment (the rest of
    the text, ``<comment>``) and a quoted identifier (``<identifier>``). Keywords and
    plain identifiers stay (they are what makes the message useful: ``syntax error at
    or near "SELEC"``).
    """
    m = _NEAR.search(message)
    if m is None:
        return message
    near = m.group(1)
    if _LITERAL_START.match(near):
        what = "<literal>"
    elif near.startswith("/*"):  # an unterminated comment: the rest of the text
        what = "<comment>"
    elif near.startswith(('"', 'U&"', 'u&"')):  # a quoted identifier holds anything
        what = "<identifier>"
    else:
        return message
    return message[: m.start()] + "at or near " + what + (m.group(2) or "")


class ParserComplaint(NamedTuple):
    """A parse error as PostgreSQL reports it: message (literals masked) and position."""

    message: str
    position: int | None  # 1-based, in characters of the query string


_UNTERMINATED_COMMENT = "unterminated /* comment at or near "


def parser_complaint(sql: str, error: ParseError) -> ParserComplaint:
    """Message and position of ``error``, raised by pglast for the text ``sql``.

    pglast may have parsed a copy of ``sql`` whose nested comments were flattened
    (:mod:`dbgate.policy.prescan`: same offsets); an unterminated comment's message
    quotes the rest of the text from the comment's start, so it is quoted from ``sql``.
    """
    args = error.args
    message = str(args[0]) if args else "syntax error"
    index = args[1] if len(args) > 1 else None
    if message.startswith(_UNTERMINATED_COMMENT) and isinstance(index, int):
        message = f'{_UNTERMINATED_COMMENT}"{sql[index:]}"'
    if isinstance(index, int) and 0 <= index < len(sql):
        position: int | None = index + 1
    elif message.endswith("at end of input"):
        position = len(sql) + 1  # where PostgreSQL's scanner stood: after the last character
    else:
        position = None
    return ParserComplaint(safe_parse_message(message), position)
