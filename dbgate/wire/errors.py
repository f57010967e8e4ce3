"""Errors raised by the sans-IO protocol layer, by whose fault they are.

A gateway has two peers, and what it does about bad bytes depends on who sent them
(h11 makes the same split between the local and the remote side):

* :class:`ClientProtocolError`: the client broke the protocol. That client's session
  ends with an ErrorResponse carrying the error's SQLSTATE and words; they describe
  the client's own mistake.
* :class:`ServerProtocolError`: the upstream server broke it. The client is not at
  fault and learns only that the server sent something invalid; the details go to
  dbgate's log, where the operator can act on them.
* :class:`ProtocolError` itself: the bytes are bad but the code that found it cannot
  know who sent them (the framer serves both directions). The I/O shell, which
  knows which connection it read, decides.

The codec attributes its errors by message direction: frontend messages and startup
packets only ever come from clients, backend messages from servers.

:class:`LimitExceeded` is not a protocol error at all: the bytes are valid, but a
session asked for more than dbgate allows it (a message over the size limit, too many
statements in flight). The relay ends that one session the same way.
"""

from __future__ import annotations

from dbgate.wire.sqlstate import PROGRAM_LIMIT_EXCEEDED, PROTOCOL_VIOLATION


class ProtocolError(Exception):
    """Bytes that are not valid PostgreSQL protocol; ``sqlstate`` says how to answer.

    The I/O shell answers with an ErrorResponse carrying ``sqlstate`` (08P01
    protocol_violation unless stated) and closes that one connection.
    """

    def __init__(self, message: str, sqlstate: str = PROTOCOL_VIOLATION) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class ClientProtocolError(ProtocolError):
    """The client sent bytes that are not valid protocol: its session ends, told why."""


class ServerProtocolError(ProtocolError):
    """The upstream server sent bytes that are not valid protocol.

    The client's session ends with a FATAL that blames the server without quoting it;
    the message of this exception is for dbgate's log.
    """


class LimitExceeded(Exception):
    """Valid protocol, but more than dbgate allows one session (54000).

    Not a :class:`ProtocolError`: nothing was malformed, and the client may well be
    right to want it. The relay still ends that one session, with this SQLSTATE and
    message, so that one client cannot grow dbgate's memory without bound.
    """

    def __init__(self, message: str, sqlstate: str = PROGRAM_LIMIT_EXCEEDED) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
