"""Reading a few server settings over a logged-in connection, sans-IO.

dbgate sizes its pool of server connections by the server's own limits
(``max_connections`` and the slots it reserves), which only the server knows. This
flow asks for them with one simple Query on a connection that is ready for a query,
and reads everything the server answers up to its next ReadyForQuery, so the
connection is left exactly as ready as it was — idle, outside any transaction — and
can be handed on (:mod:`dbgate.proxy.server` uses a client's fresh upstream session
before its relay starts).

``current_setting(name, true)`` is used rather than ``SHOW``: it is an ordinary
function any role may call, all settings come in one row, and a setting the server
does not have (``reserved_connections`` before PostgreSQL 16) reads as NULL instead
of failing the statement.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from dbgate.wire.codec import (
    parse_data_row,
    parse_error_fields,
    parse_ready_for_query,
    query,
)
from dbgate.wire.errors import ServerProtocolError
from dbgate.wire.flow import Flow
from dbgate.wire.primitives import show

__all__ = ["SettingsRefused", "read_settings", "settings_sql"]

_NAME = re.compile(r"[a-z_][a-z0-9_.]*")
_ROW_DESCRIPTION, _DATA_ROW, _COMPLETE = ord("T"), ord("D"), ord("C")
_ERROR, _NOTICE, _PARAMETER_STATUS, _READY = ord("E"), ord("N"), ord("S"), ord("Z")


class SettingsRefused(Exception):
    """The server answered the query with an error (``fields``: its ErrorResponse).
    The connection is ready for the next query all the same."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__(f"{fields.get('C', '?????')}: {fields.get('M', 'no message')}")
        self.fields = fields


def settings_sql(names: Sequence[str]) -> str:
    """The one statement that reads ``names`` (lower-case setting names only: they are
    spelled into the SQL, so nothing else is accepted)."""
    if not names:
        raise ValueError("no setting to read")
    for name in names:
        if _NAME.fullmatch(name) is None:
            raise ValueError(f"not a setting name: {name!r}")
    return "SELECT " + ", ".join(f"pg_catalog.current_setting('{n}', true)" for n in names)


def read_settings(
    names: Sequence[str], parameter_status: list[bytes] | None = None
) -> Flow[dict[str, str | None]]:
    """Ask for ``names``; return each one's value (None: the server has no such
    setting). A ParameterStatus the server reports meanwhile (a setting changed by a
    configuration reload) is appended to ``parameter_status``, for the client that
    inherits the connection. Raises :class:`SettingsRefused` once the server is ready again when it
    refused the query, :class:`ServerProtocolError` when it breaks the protocol."""
    sql = settings_sql(names)
    row: tuple[bytes | None, ...] | None = None
    refused: dict[str, str] | None = None
    t, body = yield query(sql)
    while True:
        if t == _DATA_ROW:
            if row is not None:
                raise ServerProtocolError("upstream sent two rows for one settings query")
            row = parse_data_row(body)
        elif t == _ERROR:
            refused = parse_error_fields(body)
        elif t == _READY:
            parse_ready_for_query(body)
            break
        elif t == _PARAMETER_STATUS:
            if parameter_status is not None:
                parameter_status.append(body)
        elif t not in (_ROW_DESCRIPTION, _COMPLETE, _NOTICE):
            raise ServerProtocolError(f"unexpected message {show(t)} from upstream after a query")
        t, body = yield b""
    if refused is not None:
        raise SettingsRefused(refused)
    if row is None or len(row) != len(names):
        raise ServerProtocolError("upstream answered a settings query without its one row")
    try:
        return {
            name: None if value is None else value.decode()
            for name, value in zip(names, row, strict=True)
        }
    except UnicodeDecodeError:
        raise ServerProtocolError("upstream sent a setting that is not UTF-8") from None
