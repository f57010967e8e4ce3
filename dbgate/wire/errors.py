"""Errors raised by the sans-IO protocol layer."""

from __future__ import annotations


class ProtocolError(Exception):
    """The peer sent bytes that are not valid PostgreSQL protocol.

    The I/O shell answers the client with an ErrorResponse carrying ``sqlstate``
    (08P01 protocol_violation unless stated) and closes that one connection.
    """

    def __init__(self, message: str, sqlstate: str = "08P01") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
