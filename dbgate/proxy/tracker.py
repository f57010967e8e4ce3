"""The statement tracker: every protocol rule the relay must follow, in one sans-IO object.

The relay (:mod:`dbgate.proxy.session`) moves bytes; this object keeps the books. It
is fed what the client sends (after the inspector's verdict) and what the server
answers, and it is the single owner of:

* the **in-flight queue**: one entry per client message the server will answer, in
  order. PostgreSQL answers messages strictly in the order it reads them, so every
  server message is matched to the entry at the head of the queue: ParseComplete to
  a Parse, BindComplete to a Bind, rows and CommandComplete to an Execute or a Query,
  ReadyForQuery to a Sync. An ErrorResponse fails the head entry and, in the extended
  protocol, every entry up to the next Sync (the server skips them). A server message
  that does not fit the head means dbgate lost track: :class:`TrackerDesync` ends
  the session (fail closed);
* **cycles**: every Query, FunctionCall and Sync the server will answer with a
  ReadyForQuery (for draining, idleness and cancelling orphaned statements);
* **copy-in**: PostgreSQL ignores Sync while it copies in (libpq's extended COPY
  sends one right after the Execute); those Syncs are dropped from the queue;
* **skip to Sync**: after dbgate refuses an extended-protocol message the client's
  messages up to its Sync are not forwarded (the server would skip them anyway);
* **injected refusals**: a refused statement is replaced upstream by one that fails
  with a marker (see :meth:`StatementTracker.refuse`), whose error is swapped back
  for the refusal on the way to the client;
* the **server's prepared statements and portals** as the server confirmed them,
  which decide the result plan an Execute runs under, and the exact resolution of
  prepared-statement changes (:mod:`dbgate.proxy.prepared`);
* **statement records** (:class:`~dbgate.proxy.seams.StatementRecord`) and the
  observer's events: received, decided, forwarded, completed or failed.

Transitions live in the ``_on_*`` methods of the server side, one per message type,
and the ``*_sent`` methods of the client side. Nothing here does I/O: the relay
writes what :meth:`refuse` returns and what :meth:`server_chunk` returns.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from struct import Struct, unpack_from
from typing import TYPE_CHECKING

from dbgate.proxy.prepared import PendingChange, name_key
from dbgate.proxy.seams import (
    Allow,
    MessageFilter,
    Observer,
    RecordKind,
    Refuse,
    RowRewriter,
    Statement,
    StatementRecord,
)
from dbgate.wire import messages as m
from dbgate.wire import sqlstate
from dbgate.wire.errors import ProtocolError
from dbgate.wire.framing import ALL_TYPES, Frame, split_frames, type_mask

if TYPE_CHECKING:
    from dbgate.proxy.session_info import SessionInfo

log = logging.getLogger("dbgate.session")

_NONCE = secrets.token_hex(8)  # marks errors this process injected; unguessable by clients

# Backend message types
_Z, _PS, _E, _N, _A = (ord(c) for c in "ZSENA")
_PARSE_OK, _BIND_OK, _CLOSE_OK = (ord(c) for c in "123")
_PARAM_DESC, _ROW_DESC, _NO_DATA = (ord(c) for c in "tTn")
_DATA_ROW, _CMD_COMPLETE, _EMPTY, _SUSPENDED = (ord(c) for c in "DCIs")
_COPY_IN, _COPY_OUT, _COPY_BOTH, _COPY_DATA, _COPY_DONE = (ord(c) for c in "GHWdc")
_FUNC_RESULT = ord("V")

#: What the server side must always see: everything that answers a client message,
#: and ParameterStatus/ErrorResponse. DataRow/CopyData only while a rewriter is
#: active; notices and notifications only when a message filter is configured.
TRACK_TYPES = type_mask("ZSE123tTnCIsGHWV")

#: Entries in flight per session; a client that pipelines more without reading its
#: answers is ended (54000) rather than allowed to grow dbgate's memory.
MAX_IN_FLIGHT = 100_000

# Entry kinds
QUERY, PARSE, BIND, DESCRIBE_S, DESCRIBE_P, EXECUTE, CLOSE, SYNC, FUNCTION = range(9)
INJECTED_QUERY, INJECTED_PARSE, COPY_END = 9, 10, 11
_KIND_NAMES = (
    "Query",
    "Parse",
    "Bind",
    "Describe statement",
    "Describe portal",
    "Execute",
    "Close",
    "Sync",
    "FunctionCall",
    "refused Query",
    "refused message",
    "end of COPY data",
)
_ENDS_CYCLE = frozenset({QUERY, SYNC, FUNCTION, INJECTED_QUERY})
#: Server messages that answer the message at the head of the queue.
_ANSWERS = frozenset(b"123tTnCIsGHWV")

_I16 = Struct("!h")


class TrackerDesync(ProtocolError):
    """The server sent something that does not answer the message dbgate expected.

    dbgate's picture of the session can no longer be trusted, so the session ends.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, sqlstate=sqlstate.PROTOCOL_VIOLATION)


class _Prepared:
    """A statement as the relay knows it: the verdict it was allowed with."""

    __slots__ = ("description", "param_types", "sql", "verdict")

    def __init__(self, sql: str, verdict: Allow | None, param_types: tuple[int, ...]) -> None:
        self.sql = sql
        self.verdict = verdict
        self.param_types = param_types
        self.description: bytes | None = None  # RowDescription body, once described


class _Portal:
    """A portal the server holds: its statement, Bind's verdict, formats, rewriter."""

    __slots__ = ("description", "formats", "params", "planned", "rewriter", "stmt", "verdict")

    def __init__(
        self,
        stmt: _Prepared | None,
        verdict: Allow | None,
        formats: tuple[int, ...],
        params: tuple[bytes | None, ...],
    ) -> None:
        self.stmt = stmt
        self.verdict = verdict  # the Bind's own verdict when it was inspected
        self.formats = formats  # result format codes as Bind sent them
        self.params = params
        self.description: bytes | None = None
        self.rewriter: RowRewriter | None = None
        self.planned = False  # the plan was asked once for this portal

    @property
    def plan_verdict(self) -> Allow | None:
        if self.verdict is not None:
            return self.verdict
        return None if self.stmt is None else self.stmt.verdict


class _Entry:
    """One client message in flight (or a marker in the client's message order)."""

    __slots__ = ("change", "data", "index", "kind", "name", "record", "refusal", "token")

    def __init__(self, kind: int, name: str = "", record: StatementRecord | None = None) -> None:
        self.kind = kind
        self.name = name  # statement or portal name
        self.record = record
        self.data: object = None  # per kind: _Prepared (Parse), (body, verdict) (Bind), ...
        self.change: PendingChange | list[tuple[int, PendingChange]] | None = None
        self.index = 0  # Query: statements of the string finished so far
        self.refusal: Refuse | None = None
        self.token = b""


def _row_count(tag: str) -> int:
    """Rows returned or affected, from a command tag ("SELECT 5", "INSERT 0 5")."""
    i = tag.rfind(" ")
    if i > 0 and tag[i + 1 :].isdigit():
        return int(tag[i + 1 :])
    return 0


def _expand_formats(formats: tuple[int, ...], n: int) -> tuple[int, ...]:
    """Bind's format codes (none = all text, one = all alike, or one each) for n values."""
    if not formats:
        return (0,) * n
    if len(formats) == 1:
        return formats * n
    return formats


def _bind_names(body: bytes) -> tuple[str, str]:
    """Portal and statement name of a Bind body, without decoding the values."""
    i = body.find(b"\0")
    j = body.find(b"\0", i + 1) if i >= 0 else -1
    if j < 0:
        raise ProtocolError("malformed Bind message")
    return (
        body[:i].decode("utf-8", "surrogateescape"),
        body[i + 1 : j].decode("utf-8", "surrogateescape"),
    )


def _field_count(description: bytes | None) -> int:
    return 0 if description is None or len(description) < 2 else _I16.unpack_from(description)[0]


class StatementTracker:
    """Protocol bookkeeping of one relayed session (see the module docstring)."""

    def __init__(
        self,
        info: SessionInfo,
        observer: Observer | None = None,
        message_filter: MessageFilter | None = None,
        on_parameter_status: Callable[[], None] | None = None,
    ) -> None:
        self.info = info
        self.observer = observer
        self.message_filter = message_filter
        self._on_parameter_status = on_parameter_status
        self._queue: deque[_Entry] = deque()
        self.sent_cycles = 0  # Query/FunctionCall/Sync sent that the server will answer
        self.done_cycles = 0  # ReadyForQuery received
        #: The client's messages are dropped until its next Sync (after a refusal).
        self.skip_until_sync = False
        self._copy_in_open = False  # the server copies in and the client has not ended
        self._copy_in = False  # the server is in copy-in mode (since CopyInResponse)
        self._stmts: dict[str, _Prepared] = {}  # confirmed by ParseComplete
        self._portals: dict[str, _Portal] = {}  # confirmed by BindComplete
        # what the client sent last under each statement name (for records and plans
        # of messages not yet answered; the confirmed maps above decide once answered)
        self._sent_stmts: dict[str, _Prepared] = {}
        self._rewriter: RowRewriter | None = None  # for the result now arriving
        self._copy_out = False
        self.server_fatal = False
        self._next_id = 0
        self._injection_seq = 0
        #: Whether the server side must see every message (rows to rewrite, notices
        #: and notifications to filter). The relay picks its frame mask from this.
        self.full = message_filter is not None

    # ------------------------------------------------------------------ reading
    @property
    def idle(self) -> bool:
        """Nothing sent that the server has not answered."""
        return self.sent_cycles == self.done_cycles and not self._queue

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    def sent_statement(self, name: str) -> tuple[str, tuple[int, ...]]:
        """(text, parameter types) of what the client last prepared under ``name``:
        the statement its next Bind of that name refers to."""
        stmt = self._sent_stmts.get(name_key(name))
        return ("", ()) if stmt is None else (stmt.sql, stmt.param_types)

    @property
    def mask(self) -> bytes:
        return ALL_TYPES if self.full else TRACK_TYPES

    # ------------------------------------------------------------------ records
    def _record(
        self,
        kind: RecordKind,
        sql: str,
        statement_name: str = "",
        portal: str = "",
        params: tuple[bytes | None, ...] = (),
    ) -> StatementRecord | None:
        if self.observer is None:
            return None
        self._next_id += 1
        rec = StatementRecord(
            self._next_id, kind, sql, time.monotonic(), statement_name, portal, params
        )
        self._emit("statement_received", rec)
        return rec

    def _emit(self, event: str, rec: StatementRecord) -> None:
        try:
            getattr(self.observer, event)(self.info, rec)
        except Exception:
            log.exception("session %s: observer failed on %s", self.info.session_id, event)

    def received(self, stmt: Statement) -> StatementRecord | None:
        """The client sent a statement the inspector will judge (Query, Parse, an
        inspected Bind, FunctionCall): start its record."""
        if self.observer is None:
            return None
        return self._record(stmt.kind, stmt.sql, stmt.statement_name, stmt.portal, stmt.params)

    def decided(
        self, rec: StatementRecord | None, verdict: Allow | Refuse, remembered: bool = False
    ) -> None:
        if rec is not None:
            rec.verdict = verdict
            rec.remembered = remembered
            self._emit("statement_decided", rec)

    def _forwarded(self, rec: StatementRecord | None) -> None:
        if rec is not None:
            self._emit("statement_forwarded", rec)

    def _finish(self, rec: StatementRecord | None, code: str = "", skipped: bool = False) -> None:
        if rec is None or rec.finished_at:
            return
        rec.finished_at = time.monotonic()
        if code or skipped:
            rec.sqlstate = code
            self._emit("statement_failed", rec)
        else:
            self._emit("statement_completed", rec)

    # ------------------------------------------------------------------ client side
    def _push(self, entry: _Entry) -> None:
        if len(self._queue) >= MAX_IN_FLIGHT:
            raise ProtocolError(
                f"more than {MAX_IN_FLIGHT} messages in flight without reading the answers",
                sqlstate=sqlstate.PROGRAM_LIMIT_EXCEEDED,
            )
        self._queue.append(entry)

    def query_sent(self, rec: StatementRecord | None, verdict: Allow) -> None:
        """An allowed Query was forwarded. ``verdict.changes``: SQL PREPARE/DEALLOCATE/
        DISCARD ALL in it, each confirmed by its own statement's command tag."""
        self.sent_cycles += 1
        entry = _Entry(QUERY, record=rec)
        entry.data = verdict
        if verdict.changes:
            sent = self.info.statements.sent
            entry.change = [(c.statement, sent(self.sent_cycles, c)) for c in verdict.changes]
        self._push(entry)
        self._forwarded(rec)

    def parse_sent(
        self,
        rec: StatementRecord | None,
        name: str,
        sql: str,
        param_types: tuple[int, ...],
        verdict: Allow,
    ) -> None:
        """An allowed Parse was forwarded (part of the cycle its Sync will end)."""
        key = name_key(name)
        prepared = _Prepared(sql, verdict, param_types)
        entry = _Entry(PARSE, key, rec)
        entry.data = prepared
        entry.change = self.info.statements.parse_sent(
            self.sent_cycles + 1, key, sql, verdict.check_binds, param_types
        )
        self._sent_stmts[key] = prepared
        self._push(entry)
        self._forwarded(rec)

    def bind_sent(
        self, rec: StatementRecord | None, body: bytes, verdict: Allow | None = None
    ) -> None:
        """A Bind was forwarded; ``verdict`` when the inspector judged it. Its names
        are read only once the server answers (most Binds are never looked at)."""
        entry = _Entry(BIND, record=rec)
        entry.data = (body, verdict)
        self._push(entry)
        self._forwarded(rec)

    def describe_sent(self, body: bytes) -> None:
        kind, name = m.parse_describe(body)
        if kind == "S":
            self._push(_Entry(DESCRIBE_S, name_key(name)))
        else:
            self._push(_Entry(DESCRIBE_P, name))

    def execute_sent(self, body: bytes) -> None:
        portal, _ = m.parse_execute(body)
        entry = _Entry(EXECUTE, portal)
        if self.observer is not None:
            entry.record = self._record("execute", "", portal=portal)
        self._push(entry)
        if self._first() is entry:
            self._start_execute(entry)  # nothing ahead of it: its portal is known now

    def close_sent(self, body: bytes) -> None:
        kind, name = m.parse_close(body)
        entry = _Entry(CLOSE, name_key(name) if kind == "S" else name)
        entry.data = kind
        if kind == "S":
            entry.change = self.info.statements.close_sent(self.sent_cycles + 1, name)
        self._push(entry)

    def sync_sent(self) -> bool:
        """A Sync was forwarded; returns False when the server will ignore it (it is
        copying in), so it is not a cycle."""
        self.skip_until_sync = False
        if self._copy_in_open:
            return False
        self.sent_cycles += 1
        self._push(_Entry(SYNC))
        return True

    def function_call_sent(self, rec: StatementRecord | None) -> None:
        self.sent_cycles += 1
        self._push(_Entry(FUNCTION, record=rec))
        self._forwarded(rec)

    def copy_end_sent(self) -> None:
        """The client sent CopyDone or CopyFail."""
        self._copy_in_open = False
        self._push(_Entry(COPY_END))

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
        code = refusal.sqlstate if sqlstate.is_valid(refusal.sqlstate) else "42501"
        self._injection_seq += 1
        token = f"dbgate-refusal-{_NONCE}-{self._injection_seq}"
        if message_type == ord("Q"):
            tag = f"$dbgate_{_NONCE}$"
            sql = (
                f"DO {tag}BEGIN RAISE EXCEPTION USING ERRCODE = '{code}', "
                f"MESSAGE = '{token}'; END{tag}"
            )
            self.sent_cycles += 1
            entry = _Entry(INJECTED_QUERY, record=rec)
            out = m.frame(ord("Q"), sql.encode() + b"\0")
        else:
            entry = _Entry(INJECTED_PARSE, record=rec)
            out = m.frame(ord("P"), f"dbgate_{_NONCE}\0SELECT '{token}'::int4\0".encode() + b"\0\0")
            if message_type == ord("F"):
                # FunctionCall is a cycle of its own: our Sync ends it with one RFQ.
                self.sent_cycles += 1
                out += m.frame(ord("S"), b"")
                entry.refusal = refusal
                entry.token = token.encode()
                self._push(entry)
                self._push(_Entry(SYNC))
                return out
            self.skip_until_sync = True  # the rest of the batch is not forwarded
        entry.refusal = refusal
        entry.token = token.encode()
        self._push(entry)
        return out

    # ------------------------------------------------------------------ server side
    def server_chunk(self, chunk: bytes, frames: list[Frame], full: bool) -> list[bytes] | None:
        """Account for the server's messages in ``chunk``; ``frames`` are those the
        relay's mask selected (``full``: every message).

        Returns None when ``chunk`` goes to the client unchanged (the common case),
        else the pieces to write instead.
        """
        out: list[bytes] | None = None
        run = 0  # start of the unchanged run of chunk not yet copied to out
        for t, s, e in frames:
            replacement: bytes | None = None
            if t == _DATA_ROW:
                rw = self._rewriter
                if rw is not None:
                    replacement = m.frame(t, rw.data_row(chunk[s:e]))
            elif t == _COPY_DATA:
                rw = self._rewriter
                if rw is not None and self._copy_out:
                    replacement = m.frame(t, rw.copy_data(chunk[s:e]))
            elif t in (_N, _A):
                f = self.message_filter
                if f is not None:
                    body = chunk[s:e]
                    new = f.notice(self.info, body) if t == _N else f.notification(self.info, body)
                    if new is not body and new != body:
                        replacement = m.frame(t, new)
            else:
                was_full = self.full
                replacement = self._on_message(t, chunk, s, e)
                if self.full and not was_full and not full:
                    # A rewriter started mid-chunk: the rows after this message were
                    # not selected. See the rest of the chunk message by message.
                    rest = chunk[e:]
                    if out is None:
                        out = []
                    if s - 5 > run:
                        out.append(chunk[run : s - 5])
                    out.append(replacement if replacement is not None else chunk[s - 5 : e])
                    if rest:
                        more = self.server_chunk(rest, split_frames(rest), True)
                        out.extend(more if more is not None else (rest,))
                    return out
            if replacement is not None:
                if out is None:
                    out = []
                hdr = s - 5
                if hdr > run:
                    out.append(chunk[run:hdr])
                out.append(replacement)
                run = e
        if out is None:
            return None
        if run < len(chunk):
            out.append(chunk[run:])
        return out

    def _first(self) -> _Entry | None:
        """The entry the server answers next (markers of the client's order dropped)."""
        queue = self._queue
        while queue and queue[0].kind == COPY_END:
            queue.popleft()
        return queue[0] if queue else None

    def _head(self, t: int) -> _Entry:
        entry = self._first()
        if entry is None:
            raise TrackerDesync(f"server sent {chr(t)!r} with no message in flight")
        return entry

    def _desync(self, t: int, entry: _Entry) -> TrackerDesync:
        return TrackerDesync(
            f"server sent {chr(t)!r} while dbgate expected the answer to a "
            f"{_KIND_NAMES[entry.kind]}"
        )

    def _pop(self) -> None:
        self._queue.popleft()
        head = self._first()
        if head is not None and head.kind == EXECUTE:
            self._start_execute(head)

    def _on_message(self, t: int, chunk: bytes, s: int, e: int) -> bytes | None:
        """One tracked server message; returns a replacement or None."""
        if t == _PS:
            self._on_parameter_status_msg(chunk[s:e])
            return None
        if t == _E:
            return self._on_error(chunk[s:e])
        if t == _Z:
            self._on_ready(chunk, s)
            return None
        if t not in _ANSWERS:
            return None  # CopyDone of a COPY TO STDOUT, and anything not an answer
        entry = self._head(t)
        kind = entry.kind
        if t == _CMD_COMPLETE:
            self._on_command_complete(entry, chunk[s:e])
        elif t == _PARSE_OK:
            if kind != PARSE:
                raise self._desync(t, entry)
            self._parse_done(entry, True)
            self._pop()
        elif t == _BIND_OK:
            if kind != BIND:
                raise self._desync(t, entry)
            self._bind_done(entry, True)
            self._pop()
        elif t == _ROW_DESC:
            self._on_row_description(entry, chunk[s:e])
        elif t == _PARAM_DESC:
            if kind != DESCRIBE_S:
                raise self._desync(t, entry)
            self._on_parameter_description(entry, chunk[s:e])
        elif t == _NO_DATA:
            if kind not in (DESCRIBE_S, DESCRIBE_P):
                raise self._desync(t, entry)
            self._pop()
        elif t in (_EMPTY, _SUSPENDED):
            if kind == QUERY and t == _EMPTY:
                pass  # an empty statement of a query string
            elif kind == EXECUTE:
                self._execute_done(entry, suspended=t == _SUSPENDED)
            else:
                raise self._desync(t, entry)
        elif t == _CLOSE_OK:
            if kind != CLOSE:
                raise self._desync(t, entry)
            self._close_done(entry)
            self._pop()
        elif t == _COPY_IN:
            if kind not in (QUERY, EXECUTE):
                raise self._desync(t, entry)
            self._on_copy_in()
        elif t in (_COPY_OUT, _COPY_BOTH):
            if kind not in (QUERY, EXECUTE):
                raise self._desync(t, entry)
            self._on_copy_out(entry, chunk[s:e])
        elif t == _FUNC_RESULT and kind != FUNCTION:
            raise self._desync(t, entry)
        return None

    # -- per message type -------------------------------------------------------------
    def _on_parameter_status_msg(self, body: bytes) -> None:
        name, value = m.parse_parameter_status(body)
        info = self.info
        info.server_params[name] = value
        info.params_version += 1
        if self._on_parameter_status is not None:
            self._on_parameter_status()

    def _on_ready(self, chunk: bytes, s: int) -> None:
        entry = self._head(_Z)
        if entry.kind not in _ENDS_CYCLE:
            raise self._desync(_Z, entry)
        status = chr(chunk[s])
        if entry.kind in (QUERY, INJECTED_QUERY, FUNCTION):
            rec = entry.record
            if entry.kind == QUERY and isinstance(entry.change, list):
                for _, handle in entry.change:
                    handle.resolve(False)  # statements after an error did not run
            if rec is not None and not rec.finished_at:
                self._finish(rec, rec.sqlstate)
        self._rewriter = None
        self._copy_out = False
        self._copy_in = False
        self._copy_in_open = False
        self.full = self.message_filter is not None
        self.done_cycles += 1
        self.info.transaction_status = status
        if status == "I":
            self._portals.clear()  # portals end with their transaction
        self._pop()

    def _on_error(self, body: bytes) -> bytes | None:
        if b"SFATAL\0" in body or b"SPANIC\0" in body:
            self.server_fatal = True
        queue = self._queue
        entry = self._first()
        if entry is None:
            return self._filtered_error(body)  # e.g. a FATAL the server sends on its own
        replacement: bytes | None = None
        if entry.refusal is not None and entry.token in body:
            r = entry.refusal
            extra: dict[str, object] = {}
            if r.detail:
                extra["D"] = r.detail
            if r.hint:
                extra["H"] = r.hint
            if r.position:
                extra["P"] = str(r.position)
            replacement = m.error_response(r.sqlstate, r.message, **extra)
            code = r.sqlstate
        else:
            code = _sqlstate_of(body)
            replacement = self._filtered_error(body)
        kind = entry.kind
        self._rewriter = None
        self._copy_out = False
        if self._copy_in:
            self._copy_in = False
            self._copy_in_open = False  # the server left copy mode
        self.full = self.message_filter is not None
        if kind in (QUERY, INJECTED_QUERY, FUNCTION):
            # The query string stops here; ReadyForQuery follows.
            rec = entry.record
            if rec is not None:
                rec.sqlstate = code
            if kind == QUERY and isinstance(entry.change, list):
                self._resolve_query_changes(entry, failed_at=True)
            return replacement
        if kind == SYNC:
            return replacement  # an error after the batch (e.g. at commit)
        # Extended protocol: this message failed, the server skips to the next Sync.
        self._fail_entry(entry, code, skipped=False)
        queue.popleft()
        while queue and queue[0].kind != SYNC:
            self._fail_entry(queue.popleft(), code, skipped=True)
        return replacement

    def _filtered_error(self, body: bytes) -> bytes | None:
        f = self.message_filter
        if f is None:
            return None
        new = f.error(self.info, body)
        return None if new is body or new == body else m.frame(_E, new)

    def _fail_entry(self, entry: _Entry, code: str, skipped: bool) -> None:
        kind = entry.kind
        if kind == PARSE:
            self._parse_done(entry, False)
        elif kind == BIND:
            self._bind_done(entry, False)
        elif kind == CLOSE:
            if isinstance(entry.change, PendingChange):
                entry.change.resolve(False)
        elif kind == QUERY:
            # A Query slipped into a batch that failed: the server skips it entirely.
            self.done_cycles += 1  # it will never get its ReadyForQuery
            if isinstance(entry.change, list):
                for _, handle in entry.change:
                    handle.resolve(False)
        elif kind == FUNCTION:
            self.done_cycles += 1
        self._finish(entry.record, code, skipped)

    def _parse_done(self, entry: _Entry, ok: bool) -> None:
        handle = entry.change
        if isinstance(handle, PendingChange):
            handle.resolve(ok)
        prepared: _Prepared = entry.data  # type: ignore[assignment]
        if ok:
            self._stmts[entry.name] = prepared
        elif entry.name == "":
            self._stmts.pop("", None)  # an unnamed Parse drops the old one first
        self._finish(entry.record)

    def _bind_done(self, entry: _Entry, ok: bool) -> None:
        body, verdict = entry.data  # type: ignore[misc]
        portal_name, stmt_name = _bind_names(body)
        if ok:
            params: tuple[bytes | None, ...] = ()
            formats: tuple[int, ...] = ()
            stmt = self._stmts.get(name_key(stmt_name))
            planned = verdict if verdict is not None else stmt.verdict if stmt else None
            if (planned is not None and planned.plan is not None) or self.observer is not None:
                _, _, _, params, formats = m.parse_bind(body)
            self._portals[portal_name] = _Portal(stmt, verdict, formats, params)
        else:
            self._portals.pop(portal_name, None)
        self._finish(entry.record)

    def _close_done(self, entry: _Entry) -> None:
        if entry.data == "S":
            if isinstance(entry.change, PendingChange):
                entry.change.resolve(True)
            self._stmts.pop(entry.name, None)
        else:
            self._portals.pop(entry.name, None)

    def _on_parameter_description(self, entry: _Entry, body: bytes) -> None:
        n = _I16.unpack_from(body)[0] if len(body) >= 2 else 0
        types = unpack_from(f"!{n}I", body, 2) if n else ()
        stmt = self._stmts.get(entry.name)
        if stmt is not None:
            stmt.param_types = tuple(types)
        self.info.statements.described(entry.name, tuple(types))

    def _on_row_description(self, entry: _Entry, body: bytes) -> None:
        kind = entry.kind
        if kind == DESCRIBE_S:
            stmt = self._stmts.get(entry.name)
            if stmt is not None:
                stmt.description = body
            self._pop()
        elif kind == DESCRIBE_P:
            portal = self._portals.get(entry.name)
            if portal is not None:
                portal.description = body
            self._pop()
        elif kind == QUERY:
            verdict: Allow = entry.data  # type: ignore[assignment]
            plan = verdict.plan
            if plan is not None:
                formats = _description_formats(body)
                self._set_rewriter(plan.rows(self.info, body, formats))
        else:
            raise self._desync(_ROW_DESC, entry)

    def _on_command_complete(self, entry: _Entry, body: bytes) -> None:
        kind = entry.kind
        if kind == QUERY:
            self._rewriter = None
            self._copy_out = False
            self.full = self.message_filter is not None
            tag = m.parse_command_complete(body)
            rec = entry.record
            if rec is not None:
                rec.tags.append(tag)
                rec.rows += _row_count(tag)
            if isinstance(entry.change, list):
                self._resolve_query_changes(entry, failed_at=False)
            return
        if kind != EXECUTE:
            raise self._desync(_CMD_COMPLETE, entry)
        rec = entry.record
        if rec is not None:
            tag = m.parse_command_complete(body)
            rec.tags.append(tag)
            rec.rows += _row_count(tag)
        self._execute_done(entry, suspended=False)

    def _resolve_query_changes(self, entry: _Entry, failed_at: bool) -> None:
        """A statement of a query string ended: resolve the prepared-statement change
        it carried. Statements are counted by their CommandComplete (each statement of
        a simple query string ends with one, or with the error that stops the string)."""
        done = entry.index
        changes: list[tuple[int, PendingChange]] = entry.change  # type: ignore[assignment]
        rest = []
        for index, handle in changes:
            if index == done:
                handle.resolve(not failed_at)
            elif index < done:  # pragma: no cover - resolved earlier
                handle.resolve(False)
            else:
                rest.append((index, handle))
        entry.change = rest
        entry.index = done + 1

    def _start_execute(self, entry: _Entry) -> None:
        """An Execute reached the head: its portal is now exactly what the server has."""
        portal = self._portals.get(entry.name)
        rec = entry.record
        if portal is None:
            if rec is not None:
                self._emit("statement_decided", rec)
                self._forwarded(rec)
            return
        stmt = portal.stmt
        verdict = portal.plan_verdict
        if rec is not None:
            rec.sql = stmt.sql if stmt is not None else ""
            rec.statement_name = ""
            rec.params = portal.params
            rec.verdict = verdict
            rec.remembered = True
            self._emit("statement_decided", rec)
            self._forwarded(rec)
        if verdict is None or verdict.plan is None:
            return
        if not portal.planned:
            portal.planned = True
            description = portal.description or (stmt.description if stmt else None)
            n = _field_count(description)
            formats = _expand_formats(portal.formats, n) if n else portal.formats
            portal.rewriter = verdict.plan.rows(self.info, description, formats)
        self._set_rewriter(portal.rewriter)

    def _execute_done(self, entry: _Entry, suspended: bool) -> None:
        self._rewriter = None
        self._copy_out = False
        self.full = self.message_filter is not None
        rec = entry.record
        if rec is not None and suspended:
            rec.tags.append("suspended")
        self._finish(rec)
        self._pop()

    def _set_rewriter(self, rewriter: RowRewriter | None) -> None:
        self._rewriter = rewriter
        if rewriter is not None:
            self.full = True

    def _on_copy_in(self) -> None:
        """The server copies in: Syncs the client sent after the COPY's Execute and
        before its data are ignored by the server, and so are later ones until the
        client ends the copy."""
        self._copy_in = True
        queue = self._queue
        kept: list[_Entry] = []
        head = queue.popleft()
        ended = False
        while queue:
            entry = queue.popleft()
            if entry.kind == COPY_END:
                kept.append(entry)
                kept.extend(queue)
                queue.clear()
                ended = True
                break
            if entry.kind == SYNC:
                self.sent_cycles -= 1
                continue
            kept.append(entry)
        queue.append(head)
        queue.extend(kept)
        self._copy_in_open = not ended

    def _on_copy_out(self, entry: _Entry, body: bytes) -> None:
        if entry.kind == QUERY:
            verdict: Allow = entry.data  # type: ignore[assignment]
            plan = verdict.plan
        else:
            portal = self._portals.get(entry.name)
            pv = portal.plan_verdict if portal is not None else None
            plan = pv.plan if pv is not None else None
        if plan is not None:
            self._copy_out = True
            self._set_rewriter(plan.copy_out(self.info, body))


def _description_formats(body: bytes) -> tuple[int, ...]:
    """The format code of each column of a RowDescription body."""
    n = _I16.unpack_from(body)[0]
    pos = 2
    out = []
    for _ in range(n):
        pos = body.index(b"\0", pos) + 1 + 16  # name, table oid, attnum, type, size, mod
        out.append(_I16.unpack_from(body, pos)[0])
        pos += 2
    return tuple(out)


def _sqlstate_of(body: bytes) -> str:
    """The C field of an ErrorResponse body, walking its (code, string) fields."""
    pos = 0
    n = len(body)
    while pos < n and body[pos]:
        end = body.find(b"\0", pos + 1)
        if end < 0:
            break
        if body[pos] == 0x43:  # 'C'
            return body[pos + 1 : end].decode("ascii", "replace")
        pos = end + 1
    return sqlstate.INTERNAL_ERROR
