"""The client's messages on their way upstream, for the statement tracker.

A mixin of :class:`~dbgate.proxy.tracker.StatementTracker` (whose ``__init__`` holds
the state): the transitions of an allowed message as it is forwarded (``*_sent``:
Query, Parse, Bind, Close, Sync, FunctionCall, the end of a copy), dbgate's own pings,
a refusal injected in a message's place (:meth:`ClientMessages.refuse`), and the row
limits of portals as the client sees them (which Execute must make the client wait).
The server's answers to them are :mod:`dbgate.proxy.answers`.
"""

from __future__ import annotations

import logging
from collections import deque
from struct import unpack_from
from typing import TYPE_CHECKING

from dbgate.proxy.entries import (
    BIND,
    BIND_MSG,
    CLOSE,
    COPY_END_ENTRY,
    EXECUTE,
    FUNCTION,
    INJECTED_PARSE,
    INJECTED_QUERY,
    NONCE,
    PARSE,
    PARSE_MSG,
    PING_ENTRY,
    QUERY,
    QUERY_MSG,
    SYNC_ENTRY,
    SYNC_FRAME,
    Entry,
    bind_names,
)
from dbgate.proxy.portals import (
    countable_rows,
    refined_verdict,
)
from dbgate.proxy.prepared import name_key
from dbgate.proxy.seams import (
    Allow,
    Refuse,
    Statement,
    StatementRecord,
)
from dbgate.wire import messages as m
from dbgate.wire import sqlstate

if TYPE_CHECKING:
    from dbgate.proxy.session_info import SessionInfo


log = logging.getLogger("dbgate.session")


class KnownStatement:
    """A statement as the relay knows it: its text, the verdict it was allowed with,
    its parameter types and (once described) its RowDescription. One per distinct
    Parse; a remembered Parse reuses it."""

    __slots__ = ("description", "param_types", "sql", "verdict")

    def __init__(self, sql: str, verdict: Allow, param_types: tuple[int, ...]) -> None:
        self.sql = sql
        self.verdict = verdict
        self.param_types = param_types
        self.description: bytes | None = None


class ClientMessages:
    """The client side's transitions (see the module docstring)."""

    # The tracker's state these share (set in its ``__init__``).
    info: SessionInfo
    sent_cycles: int
    skip_until_sync: bool
    _skip_code: str
    _skipped: dict[str, object]
    _skipped_records: int
    pinging: bool
    _queue: deque[Entry]
    _markers: int
    _batch_open: bool
    _batch_ran: bool
    _copy_in: bool
    _copy_in_open: bool
    _injection_seq: int
    _limits: bool
    _plans: bool
    _watch: bool
    _sent_limits: dict[str, Allow]
    _sent_stmts: dict[str, KnownStatement]
    _sent_used: dict[str, int]
    _rebound: dict[str, tuple[int, bytes, Allow | None]]

    if TYPE_CHECKING:  # the tracker's own members these call

        @property
        def idle(self) -> bool: ...
        def _block(self, entry: Entry, verdict: Allow) -> None: ...
        def _emit(self, event: str, rec: StatementRecord) -> None: ...

    def _note_portal_limit(self, portal: str, key: str, body: bytes = b"") -> None:
        """Which portals will run under a row limit, as the client sees them (the
        Execute that runs one must make the client wait), for a Bind of ``portal`` to
        the statement ``key`` that the inspector was not shown."""
        prepared = self._sent_stmts.get(key)
        self._portal_limit(portal, prepared.verdict if prepared is not None else None, body)

    def _portal_limit(self, portal: str, verdict: Allow | None, body: bytes = b"") -> None:
        """``portal`` is bound anew under ``verdict`` (its statement's refined by its
        Bind's), as the client sees it.

        The Bind may fail and leave the old portal of that name in place (a named
        portal still open: "cursor already exists"; ROLLBACK TO SAVEPOINT then makes
        it usable again). Executes in the Bind's own batch run only if it succeeded;
        for those of later batches, until the server confirms it, the portal is
        either (see :meth:`_ambiguous_portal`)."""
        old = self._sent_limits.get(portal)
        if old is not None or portal in self._sent_used:
            self._rebound[portal] = (self.sent_cycles + 1, body, old)
        else:
            self._rebound.pop(portal, None)
        if verdict is not None and verdict.max_rows:
            self._sent_limits[portal] = verdict
        else:
            self._sent_limits.pop(portal, None)
        self._sent_used.pop(portal, None)  # a new portal: none of its rows returned yet

    def _ambiguous_portal(self, portal: str) -> None:
        """An Execute of ``portal`` after the batch of a Bind of it whose answer is
        not confirmed: it runs the new portal or the old one, so it runs under either
        limit and is watched (the server's side then knows which one it runs)."""
        cycle, _body, old = self._rebound[portal]
        if cycle == self.sent_cycles + 1:
            return  # the Bind's own batch: the new portal, or skipped
        if portal not in self._sent_limits and old is not None:
            self._sent_limits[portal] = old
        self._sent_used[portal] = -1

    def _limited_execute(
        self, portal: str, rec: StatementRecord | None, verdict: Allow, chunk: bytes, e: int
    ) -> Entry:
        """The entry of an Execute of a portal under a row limit (client view): with its
        row count when it cannot reach the limit (its rows are counted, nothing
        waits), with None when it must be watched (the client waits meanwhile)."""
        fetch = unpack_from("!i", chunk, e - 4)[0]  # the Execute's last field
        used = self._sent_used.get(portal, 0)
        bound = countable_rows(verdict, fetch, used) if used >= 0 else None
        if bound is None:
            self._sent_used[portal] = -1
            return (EXECUTE, portal, rec, None)
        self._sent_used[portal] = used + bound
        return (EXECUTE, portal, rec, max(fetch, 0))

    def _sent(
        self, t: int, rec: StatementRecord | None, stmt: Statement, verdict: Allow, body: bytes
    ) -> KnownStatement | None:
        """Account for an allowed message on its way upstream (returns what a
        remembered Parse hands the tracker again)."""
        if t == QUERY_MSG:
            self.query_sent(rec, verdict)
        elif t == PARSE_MSG:
            prepared = KnownStatement(stmt.sql, verdict, stmt.param_types)
            self.parse_sent(rec, stmt.statement_name, prepared)
            return prepared
        elif t == BIND_MSG:
            self.bind_sent(rec, verdict, body)
        else:
            self.function_call_sent(rec)
        return None

    def bind_sent(
        self,
        rec: StatementRecord | None,
        verdict: Allow,
        body: bytes,
        names: tuple[str, str] | None = None,
    ) -> None:
        """An inspected Bind was forwarded. Its own verdict is kept: it refines the
        statement the server holds once the Bind is answered (:meth:`_bind_done`); the
        client's view (the statement it sent last) decides whether its Execute must
        wait. ``names``: its portal and statement key, when already read."""
        if names is None:
            portal, stmt_name = bind_names(body)
            key = name_key(stmt_name)
        else:
            portal, key = names
        prepared = self._sent_stmts.get(key)
        refined = refined_verdict(prepared.verdict if prepared is not None else None, verdict)
        if refined.plan is not None:
            self._plans = self._watch = True
        if refined.max_rows:
            self._limits = self._watch = True
        self._queue.append((BIND, body, verdict, rec, portal, key))
        self._batch_open = True
        if self._limits:
            self._portal_limit(portal, refined, body)
        if rec is not None:
            self._emit("statement_forwarded", rec)

    def query_sent(self, rec: StatementRecord | None, verdict: Allow) -> None:
        """An allowed Query was forwarded. ``verdict.changes``: SQL PREPARE/DEALLOCATE/
        DISCARD ALL in it, each confirmed by its own statement's command tag."""
        self.sent_cycles += 1
        self._batch_open = self._batch_ran = False
        if verdict.plan is not None:
            self._plans = self._watch = True
        changes = None
        if verdict.changes:
            sent = self.info.statements.sent
            changes = [0, [(c.statement, sent(self.sent_cycles, c)) for c in verdict.changes]]
        entry = (QUERY, verdict, rec, changes)
        self._queue.append(entry)
        if verdict.max_rows:
            self._limits = self._watch = True
            if countable_rows(verdict, 0, 0) is None:
                self._block(entry, verdict)
        if rec is not None:
            self._emit("statement_forwarded", rec)

    def parse_sent(self, rec: StatementRecord | None, name: str, prepared: KnownStatement) -> None:
        """An allowed Parse was forwarded (part of the cycle its Sync will end)."""
        key = name_key(name) if name else ""
        handle = self.info.statements.parse_sent(
            self.sent_cycles + 1,
            key,
            prepared.sql,
            prepared.verdict.check_binds,
            prepared.param_types,
            prepared.verdict.check_only_tokens,
            prepared.verdict.recheck_bind,
        )
        self._sent_stmts[key] = prepared
        if prepared.verdict.plan is not None:
            self._plans = self._watch = True
        if prepared.verdict.max_rows:
            self._limits = self._watch = True
        self._queue.append((PARSE, key, prepared, handle, rec))
        self._batch_open = True
        if rec is not None:
            self._emit("statement_forwarded", rec)

    def close_sent(self, body: bytes) -> None:
        self._batch_open = True
        kind, name = m.parse_close(body)
        if kind == "S":
            key = name_key(name)
            handle = self.info.statements.close_sent(self.sent_cycles + 1, key)
            self._queue.append((CLOSE, "S", key, handle))
        else:
            self._queue.append((CLOSE, "P", name, None))

    def sync_sent(self) -> None:
        """A Sync was forwarded. The server ignores it while it copies in: not a cycle."""
        self.skip_until_sync = False
        self._skipped_records = 0
        if self._skipped:
            self._skipped.clear()
        if not self._copy_in_open:
            self.sent_cycles += 1
            self._queue.append(SYNC_ENTRY)
            self._batch_open = self._batch_ran = False

    def function_call_sent(self, rec: StatementRecord | None) -> None:
        self.sent_cycles += 1
        self._batch_open = False
        self._queue.append((FUNCTION, rec))
        if rec is not None:
            self._emit("statement_forwarded", rec)

    def ping(self) -> bytes:
        """A Sync of dbgate's to send the server now, or ``b""`` when none may be sent.

        Asked (at an interval) while a statement waits for a human: a Sync re-arms the
        server's idle-in-transaction timer. It is sent only inside a transaction block
        (status T or E) and at a cycle boundary: everything sent has been answered and
        nothing was sent since the last message that ended a cycle, so the server is
        neither inside a batch (a Sync would end it early) nor skipping to Sync after
        an error (a Sync would end the skipping), and is not copying. Inside a batch or
        while skipping, the server runs no idle timer anyway (see
        :mod:`dbgate.proxy.hold_ping`). One ping at a time; its ReadyForQuery is
        swallowed and is not a client cycle (:attr:`sent_cycles` does not count it).
        """
        if (
            self.pinging
            or self._batch_open
            or self.skip_until_sync
            or self._copy_in_open
            or self._copy_in
            or self.info.transaction_status not in ("T", "E")
            or not self.idle
        ):
            return b""
        self.pinging = True
        self._queue.append(PING_ENTRY)
        return SYNC_FRAME

    def copy_end_sent(self) -> None:
        """The client sent CopyDone or CopyFail."""
        self._copy_in_open = False
        self._markers += 1
        self._queue.append(COPY_END_ENTRY)

    def refuse(self, rec: StatementRecord | None, refusal: Refuse, message_type: int) -> bytes:
        """The bytes to send the server in place of a refused message.

        The server itself then raises the error at the refused message's position, so
        PostgreSQL's own rules (roll back an implicit transaction, fail an explicit
        one, skip to Sync) hold by construction. A simple Query becomes a ``DO`` block
        that raises; an extended-protocol message (or FunctionCall) becomes a Parse of
        a *named* statement whose text fails parse analysis — a failed named Parse
        creates nothing, so the client's unnamed statement and portal are left alone.
        The error carries a per-process nonce that clients cannot forge.
        """
        code = (
            refusal.sqlstate
            if sqlstate.is_valid(refusal.sqlstate)
            else sqlstate.INSUFFICIENT_PRIVILEGE
        )
        self._injection_seq += 1
        token = f"dbgate-refusal-{NONCE}-{self._injection_seq}"
        if message_type == ord("Q"):
            tag = f"$dbgate_{NONCE}$"
            sql = (
                f"DO {tag}BEGIN RAISE EXCEPTION USING ERRCODE = '{code}', "
                f"MESSAGE = '{token}'; END{tag}"
            )
            self.sent_cycles += 1
            self._queue.append((INJECTED_QUERY, refusal, rec, token.encode()))
            self._batch_open = False
            return m.frame(ord("Q"), sql.encode() + b"\0")
        out = m.frame(ord("P"), f"dbgate_{NONCE}\0SELECT '{token}'::int4\0".encode() + b"\0\0")
        self._queue.append((INJECTED_PARSE, refusal, rec, token.encode()))
        if message_type == ord("F"):
            # FunctionCall is a cycle of its own: our Sync ends it with one RFQ.
            self.sent_cycles += 1
            self._queue.append(SYNC_ENTRY)
            self._batch_open = False
            return out + m.frame(ord("S"), b"")
        self.skip_until_sync = True  # the rest of the batch is not forwarded
        self._skip_code = code
        if rec is not None and rec.kind in ("parse", "bind"):
            # what it would have prepared or bound has this refusal's record
            self._skipped.clear()
            if rec.kind == "parse":
                self._skipped["S" + name_key(rec.statement_name)] = None
            else:
                self._skipped["P" + rec.portal] = None
        self._batch_open = True
        return out
