"""The client's COPY FROM STDIN data, looked at for what the gate refuses in it.

Tokens the agent sends back stand for values only in statement texts and Bind
values, where the gate sees what they are compared with or written into. The data
of a ``COPY … FROM STDIN`` arrives after its statement was judged, in CopyData
messages cut wherever the driver's buffer ended; a token in it would be stored as
its own text, silently. So every CopyData of a session whose message filter asks for
it (``MessageFilter.copy_in``, the PII gate's) is shown to the filter, with the end
of the previous one in front (a token cut in two is still whole), and the first one
the filter refuses is replaced by a CopyFail carrying the filter's reason: the server
ends the COPY with an error and stores none of its rows. The rest of the client's
COPY messages go on as they come; the server ignores them once the COPY has ended.
"""

from __future__ import annotations

from collections.abc import Callable
from struct import pack

__all__ = ["CARRIED", "CopyInCheck", "copy_fail_frame"]

#: Bytes of one CopyData kept in front of the next: more than the longest text a
#: check needs to see whole (a token's mark, entity and 32 hex digits).
CARRIED = 512

Check = Callable[[bytes], "str | None"]


def copy_fail_frame(reason: str) -> bytes:
    """A CopyFail message with ``reason`` (the server's error quotes it)."""
    data = reason.encode("utf-8", "replace").replace(b"\0", b"") + b"\0"
    return b"f" + pack("!I", 4 + len(data)) + data


class CopyInCheck:
    """One session's check of its COPY data (see the module)."""

    __slots__ = ("_check", "_tail")

    def __init__(self, check: Check) -> None:
        self._check = check
        self._tail = b""

    def data(self, payload: bytes) -> bytes | None:
        """The CopyFail to send instead of this CopyData, or None to forward it."""
        seen = self._tail + payload if self._tail else payload
        reason = self._check(seen)
        if reason is not None:
            self._tail = b""
            return copy_fail_frame(reason)
        self._tail = seen[-CARRIED:]
        return None

    def ended(self) -> None:
        """The client ended its COPY data (CopyDone or CopyFail)."""
        self._tail = b""
