"""A small simulation of how PostgreSQL answers the frontend protocol.

Enough of the server's rules to check the statement tracker without a socket: the
order of answers, errors that skip to Sync (and skip a Query slipped in before it),
the unnamed statement dropped by every Parse of it, named statements that cannot be
parsed twice, portals that end with their transaction, row-limited Execute,
ReadyForQuery's transaction status, and the failures dbgate injects for a refused
statement. Statement "SQL" is a small language of its own: a text containing
``fail`` fails when executed, ``rows=N`` returns N rows, ``begin``/``commit`` open
and end a transaction block. Every row carries the text of the statement that made
it (for a simple query, the whole query string), so a test can tell whose rows it is
looking at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from dbgate.wire import messages as m
from dbgate.wire.framing import split_frames

_ROWS = re.compile(r"rows=(\d+)")


def _cstr(body: bytes, pos: int) -> tuple[str, int]:
    end = body.index(b"\0", pos)
    return body[pos:end].decode(), end + 1


def row_description() -> bytes:
    return m.RowDescription(fields=(m.FieldDescription("v", 0, 0, 25, -1, -1, 0),)).encode()


@dataclass
class _Portal:
    sql: str
    done: int = 0


@dataclass
class SimServer:
    """Feed it the bytes dbgate forwards; read back the bytes PostgreSQL would send."""

    statements: dict[str, str] = field(default_factory=dict)
    portals: dict[str, _Portal] = field(default_factory=dict)
    skipping: bool = False
    in_block: bool = False  # inside BEGIN ... COMMIT
    failed_block: bool = False  # an error inside the block
    out: bytearray = field(default_factory=bytearray)
    #: Every Bind the server ran: its parameter values and the statement it bound.
    bound: list[tuple[tuple[bytes | None, ...], str]] = field(default_factory=list)

    # -- helpers ---------------------------------------------------------------------
    def _error(self, message: str) -> None:
        self.out += m.error_response("XX001", message)
        if self.in_block:
            self.failed_block = True

    def _status(self) -> str:
        if not self.in_block:
            return "I"
        return "E" if self.failed_block else "T"

    def _end_implicit(self) -> None:
        if not self.in_block:
            self.portals.clear()

    def _run(self, sql: str, portal: _Portal | None, max_rows: int, label: str = "") -> bool:
        """Run one statement's body; returns False when it failed. Rows carry
        ``label`` (default: the statement's text)."""
        label = label or sql
        if self.failed_block and "commit" not in sql and "rollback" not in sql:
            self._error("current transaction is aborted")
            return False
        if "dbgate-refusal-" in sql:
            token = re.search(r"dbgate-refusal-[0-9a-f]+-\d+", sql)
            assert token is not None
            self._error(f'invalid input syntax for type integer: "{token.group(0)}"')
            return False
        if "fail" in sql or "RAISE EXCEPTION" in sql or "dbgate-limit-" in sql:
            self._error(f"statement failed: {sql}")
            return False
        if "begin" in sql:
            self.in_block = True
        if "commit" in sql or "rollback" in sql:
            self.in_block = self.failed_block = False
            self.portals.clear()
        found = _ROWS.search(sql)
        total = int(found.group(1)) if found else 0
        start = portal.done if portal is not None else 0
        n = total - start
        if max_rows and n > max_rows:
            n = max_rows
        for i in range(n):
            self.out += m.data_row([f"{label}#{start + i}".encode()])
        if portal is not None:
            portal.done += n
            if portal.done < total:
                self.out += m.PORTAL_SUSPENDED
                return True
        self.out += m.command_complete(f"SELECT {n}")
        return True

    # -- the protocol ------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        for t, s, e in split_frames(data):
            self.message(t, data[s:e])

    def message(self, t: int, body: bytes) -> None:
        kind = chr(t)
        if kind == "S":
            self.skipping = False
            self._end_implicit()
            self.out += m.ready_for_query(self._status())
            return
        if self.skipping or kind == "H":
            return
        if kind == "Q":
            self._query(_cstr(body, 0)[0])
        elif kind == "P":
            name, pos = _cstr(body, 0)
            sql, _ = _cstr(body, pos)
            if name == "":
                self.statements.pop("", None)  # dropped before parsing
            if name and name in self.statements:
                self._fail_extended("prepared statement already exists")
            elif "dbgate-refusal-" in sql or "dbgate-limit-" in sql or "badparse" in sql:
                self._fail_extended(f"cannot parse {sql}")
            else:
                self.statements[name] = sql
                self.out += m.PARSE_COMPLETE
        elif kind == "B":
            portal, stmt, _, params, _ = m.parse_bind(body)
            sql = self.statements.get(stmt)
            if sql is None or "badbind" in sql:
                self._fail_extended("cannot bind")
                return
            self.bound.append((params, sql))
            self.portals[portal] = _Portal(sql)
            self.out += m.BIND_COMPLETE
        elif kind == "D":
            which, name = chr(body[0]), _cstr(body, 1)[0]
            if which == "S":
                sql = self.statements.get(name)
                if sql is None:
                    self._fail_extended("no such statement")
                    return
                self.out += m.ParameterDescription(type_oids=()).encode()
            else:
                p = self.portals.get(name)
                if p is None:
                    self._fail_extended("no such portal")
                    return
                sql = p.sql
            self.out += row_description() if _ROWS.search(sql) else m.NO_DATA
        elif kind == "E":
            portal, pos = _cstr(body, 0)
            max_rows = int.from_bytes(body[pos : pos + 4], "big")
            p = self.portals.get(portal)
            if p is None:
                self._fail_extended("no such portal")
                return
            if not self._run(p.sql, p, max_rows):
                self.skipping = True
        elif kind == "C":
            which, name = chr(body[0]), _cstr(body, 1)[0]
            (self.statements if which == "S" else self.portals).pop(name, None)
            self.out += m.CLOSE_COMPLETE
        else:  # pragma: no cover - the tests send nothing else
            raise AssertionError(f"unexpected message {kind!r}")

    def _fail_extended(self, message: str) -> None:
        self._error(message)
        self.skipping = True

    def _query(self, sql: str) -> None:
        parts = [sql] if sql.startswith("DO ") else [p.strip() for p in sql.split(";")]
        parts = [p for p in parts if p] or [""]
        for part in parts:
            if part == "":
                self.out += m.EMPTY_QUERY_RESPONSE
                break
            if _ROWS.search(part) and not self.failed_block:
                self.out += row_description()
            if not self._run(part, None, 0, label=sql):
                break
        self._end_implicit()
        self.out += m.ready_for_query(self._status())

    def take(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data
