"""PostgreSQL's parser messages, made safe to show and to log.

The classifier refuses what it cannot parse, and the message it gives travels to the
agent, the audit log and the approval page. The parser echoes the token where it
stopped, which may be a literal value (an SSN in an unterminated string): that token
is replaced before the message leaves the classifier.
"""

from __future__ import annotations

import re

_NEAR = re.compile(r'at or near "(.*)"(, at index \d+)?$', re.DOTALL)
_LITERAL_START = re.compile(r"^(?:'|\$|[0-9.]|[EeBbXxNn]'|[Uu]&')")


def safe_parse_message(message: str) -> str:
    """The parser's message with any echoed literal replaced by ``<literal>``.

    ``unterminated quoted string at or near "'123-45-6789"`` would carry a value into
    the audit log and the approval page; keywords and identifiers stay (they are what
    makes the message useful: ``syntax error at or near "SELEC"``).
    """
    m = _NEAR.search(message)
    if m is None or not _LITERAL_START.match(m.group(1)):
        return message
    return message[: m.start()] + "at or near <literal>" + (m.group(2) or "")
