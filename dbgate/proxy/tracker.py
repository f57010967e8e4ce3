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
  observer's events: received, decided, forwarded, completed or failed;
* **pings**: a Sync of dbgate's, sent only at a cycle boundary inside a transaction
  block while a statement waits for a human, whose ReadyForQuery is swallowed and
  never counted as a client cycle (see :mod:`dbgate.proxy.hold_ping`).

Transitions live in the ``_on_*`` methods of the server side, one per message type,
and the ``*_sent`` methods of the client side. The transitions of measured writes
(``Allow.max_changes``) are a part of the same object kept in its own module,
:mod:`dbgate.proxy.measured`; the message types and entry kinds both use are in
:mod:`dbgate.proxy.entries`. Nothing here does I/O: the relay
writes what :meth:`refuse` returns and what :meth:`server_chunk` returns.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import replace
from struct import unpack_from
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from dbgate.proxy import measure
from dbgate.proxy.entries import (
    BIND,
    BIND_MSG,
    BIND_OK,
    CLOSE,
    CLOSE_MSG,
    CLOSE_OK,
    CMD_COMPLETE,
    COPY_BOTH,
    COPY_DATA,
    COPY_DONE_MSG,
    COPY_DONE_SRV,
    COPY_END,
    COPY_END_ENTRY,
    COPY_FAIL_MSG,
    COPY_IN,
    COPY_OUT,
    DATA_ROW,
    DESCRIBE_MSG,
    DESCRIBE_P,
    DESCRIBE_S,
    DESCRIBE_UNNAMED_PORTAL,
    EMPTY_QUERY,
    ENDS_CYCLE,
    ERROR_MSG,
    EXECUTE,
    EXECUTE_MSG,
    FLUSH_MSG,
    FUNC_RESULT,
    FUNCTION,
    FUNCTION_MSG,
    INJECTED_PARSE,
    INJECTED_QUERY,
    KIND_NAMES,
    MAX_IN_FLIGHT,
    MEASURE_COMMIT,
    MEASURE_SETUP,
    MEASURE_SILENT,
    MEMO_MAX_ENTRIES,
    MEMO_MAX_MESSAGE,
    NO_DATA,
    NONCE,
    NOTICE_MSG,
    NOTIFY_MSG,
    PARAM_DESC,
    PARAM_STATUS_MSG,
    PARSE,
    PARSE_MSG,
    PARSE_OK,
    PING,
    PING_ENTRY,
    QUERY,
    QUERY_MSG,
    READY_MSG,
    ROW_DESC,
    SILENT_PARSE,
    SILENT_QUERY,
    STATUS,
    SUSPENDED,
    SYNC,
    SYNC_ENTRY,
    SYNC_FRAME,
    SYNC_MSG,
    TERMINATE_MSG,
    TRACK_TYPES,
    TRACK_WITH_MESSAGES,
    U16,
    Entry,
    bind_names,
    bind_statement_name,
    description_formats,
    expand_formats,
    field_count,
    rewritten_message,
    row_count,
    sqlstate_of,
)
from dbgate.proxy.measured import MeasuredWrites
from dbgate.proxy.prepared import name_key
from dbgate.proxy.row_limit import RowLimiter, rewrite_run
from dbgate.proxy.seams import (
    STATEMENT_EVENTS,
    Allow,
    AllowAll,
    Inspector,
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
from dbgate.wire.errors import ClientProtocolError, LimitExceeded, ServerProtocolError
from dbgate.wire.framing import (
    ALL_TYPES,
    ALL_TYPES_ROW_RUNS,
    DATA_ROW_RUN,
    LARGE_MESSAGE,
    Frame,
    split_frames,
)

if TYPE_CHECKING:
    from dbgate.proxy.session_info import SessionInfo

log = logging.getLogger("dbgate.session")


class TrackerDesync(ServerProtocolError):
    """The server sent something that does not answer the message dbgate expected.

    dbgate's picture of the session can no longer be trusted, so the session ends.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, sqlstate=sqlstate.PROTOCOL_VIOLATION)


class _Prepared:
    """A statement as the relay knows it: its text, the verdict it was allowed with,
    its parameter types and (once described) its RowDescription. One per distinct
    Parse; a remembered Parse reuses it."""

    __slots__ = ("description", "param_types", "sql", "verdict")

    def __init__(self, sql: str, verdict: Allow, param_types: tuple[int, ...]) -> None:
        self.sql = sql
        self.verdict = verdict
        self.param_types = param_types
        self.description: bytes | None = None


class _Limit:
    """A statement under a row limit, from its forwarding to its end.

    While it runs the client's later messages wait (the relay parks them), so that
    if the limit is hit nothing else has reached the server when dbgate fails it.
    """

    __slots__ = ("cancel_pending", "entry", "finished", "hit", "refusal", "silent")

    def __init__(self, entry: Entry, refusal: Refuse) -> None:
        self.entry = entry
        self.refusal = refusal
        self.hit = False
        self.finished = False  # the statement's own end was seen
        self.silent = False  # a failure of dbgate's is in flight (its answers dropped)
        self.cancel_pending = False


def _refined(parsed: Allow | None, verdict: Allow) -> Allow:
    """A Bind's verdict refines its statement's: what the Parse's verdict said about
    the results (their plan, the row limit) stands unless the Bind's says otherwise,
    since the Execute runs under the Bind's verdict alone."""
    if verdict.plan is not None and verdict.max_rows:
        return verdict
    if parsed is None or (parsed.plan is None and not parsed.max_rows):
        return verdict
    if verdict.max_rows:
        # asked at every Bind of a prepared statement under a limit: no copy when
        # there is no plan to add
        return verdict if parsed.plan is None else replace(verdict, plan=parsed.plan)
    return replace(
        verdict,
        plan=verdict.plan or parsed.plan,
        max_rows=parsed.max_rows,
        over_limit=parsed.over_limit,
    )


def _over_limit(verdict: Allow) -> Refuse:
    if verdict.over_limit is not None:
        return verdict.over_limit
    return Refuse(
        sqlstate.PROGRAM_LIMIT_EXCEEDED,
        f"dbgate: this statement returned more than {verdict.max_rows} rows, its limit, "
        "and was stopped",
        hint="narrow it (a WHERE on a key, a smaller LIMIT) or ask for approval",
    )


def _counted(verdict: Allow, fetch: int, used: int) -> int | None:
    """Whether an Execute of ``fetch`` rows (0: all of them) under ``verdict``'s row
    limit, ``used`` rows of it returned already, can be counted rather than watched.

    Returns the most rows it can return when that cannot take it past the limit (it
    returns ``fetch`` rows at most, and the statement is proven to read no more than
    ``verdict.read_bound``), else None: its rows must pass a :class:`RowLimiter` and
    the client wait meanwhile. A result plan rewrites the rows anyway, limit or not.
    """
    if verdict.plan is not None:
        return None
    bound = verdict.read_bound
    if fetch > 0 and (bound is None or fetch < bound):
        bound = fetch
    if bound is None or used + bound > verdict.max_rows:
        return None
    return bound


class _PortalState:
    """What a portal under a result plan or a row limit needs across its Executes."""

    __slots__ = ("description", "rewriter", "rows")

    def __init__(self) -> None:
        self.description: bytes | None = None
        self.rewriter: RowRewriter | None = None
        #: Rows its counted Executes returned (a limiter, once it has one, counts on)
        self.rows = 0


def _query_part(chunk: bytes, s: int, e: int) -> bytes:
    """``chunk[s:e]`` of a Query: a long one's as a view of the read that holds it.

    A copy would hold a 50 MB statement twice more while it is judged (its body and,
    while a verdict is awaited, its message) beside its text; a view holds only the
    read, which is alive meanwhile anyway. The view stands in for bytes: what is done
    with a Query's body and message takes any buffer (``len``, concatenation, a
    lookup in a set of bytes, a transport's write), and a long one is never a memo
    key (MEMO_MAX_MESSAGE)."""
    if e - s <= LARGE_MESSAGE:
        return chunk[s:e]
    return cast(bytes, memoryview(chunk)[s:e])


class Waiting(NamedTuple):
    """A statement whose verdict is awaited, and what the relay must keep meanwhile."""

    verdict: Awaitable[Allow | Refuse]
    message_type: int
    message: bytes  # the whole message, to forward if allowed
    statement: Statement
    record: StatementRecord | None
    body: bytes
    rest: bytes  # what followed it in the same read


class StatementTracker(MeasuredWrites):
    """Protocol bookkeeping of one relayed session (see the module docstring)."""

    def __init__(
        self,
        info: SessionInfo,
        inspector: Inspector | None = None,
        observer: Observer | None = None,
        message_filter: MessageFilter | None = None,
    ) -> None:
        self.info = info
        self.inspector: Inspector = inspector if inspector is not None else AllowAll()
        self.inspect_binds: bool = getattr(self.inspector, "inspects_binds", True)
        # An inspector shown every Bind is told which statement each one binds.
        info.statements.track_unnamed = self.inspect_binds
        # An inspector with a ``strict`` attribute may ask, while it is True, to see
        # every Query, Parse and Bind (see Inspector in seams.py).
        self._strictness = self.inspector if hasattr(self.inspector, "strict") else None
        self.observer = observer
        # The observer's method per statement event it hears (``Observer.ignores``: the
        # events it does nothing with are not called at all).
        ignored: frozenset[str] = getattr(observer, "ignores", frozenset())
        self._hearing: dict[str, Callable[[SessionInfo, StatementRecord], None]] = (
            {}
            if observer is None
            else {e: getattr(observer, e) for e in STATEMENT_EVENTS if e not in ignored}
        )
        self.message_filter = message_filter
        # Repeatable verdicts (Allow.repeatable), by message body: drivers re-send the
        # same Parse (unnamed, $n parameters) or BEGIN/COMMIT for every transaction,
        # and skipping the decode and the inspector for them is most of the relay's
        # per-statement work. Bounded in entries and message size; forgotten on any
        # ParameterStatus, by SessionInfo.forget_verdicts() and when the inspector's
        # ``generation`` changes (see Inspector in seams.py).
        self._memo: dict[bytes, tuple[Statement, Allow, _Prepared | None]] = {}
        info._forget = self._memo.clear
        self._generations = self.inspector if hasattr(self.inspector, "generation") else None
        self._memo_generation = getattr(self.inspector, "generation", 0)
        #: A statement waits for an awaitable verdict (see :meth:`client_chunk`).
        self.waiting: Waiting | None = None
        #: The client sent Terminate.
        self.terminating = False
        self._queue: deque[Entry] = deque()
        self._markers = 0  # COPY_END entries in the queue
        self.sent_cycles = 0  # Query/FunctionCall/Sync sent that the server will answer
        self.done_cycles = 0  # ReadyForQuery received
        #: The client's messages are dropped until its next Sync (after a refusal).
        self.skip_until_sync = False
        self._copy_in_open = False  # the server copies in and the client has not ended
        self._copy_in = False  # the server is in copy-in mode (since CopyInResponse)
        # Statements and portals as the server confirmed them (ParseComplete,
        # BindComplete): they decide the plan an Execute runs under.
        self._stmts: dict[str, _Prepared] = {}
        self._portals: dict[str, tuple[_Prepared | None, Allow | None, bytes]] = {}
        self._portal_state: dict[str, _PortalState] = {}  # only portals with a plan
        # what the client prepared last under each name (the text a Bind refers to)
        self._sent_stmts: dict[str, _Prepared] = {}
        #: A verdict with a result plan was sent in this session: from then on the
        #: relay keeps its portals' statements and descriptions (before, no portal
        #: can run under a plan, so there is nothing to keep).
        self._plans = False
        # Whether Executes need their portal looked up (plans or records)
        self._watch = observer is not None
        self._rewriter: RowRewriter | None = None  # for the result now arriving
        self._copy_out = False
        # -- row limits (Allow.max_rows)
        self._limits = False  # a verdict with a row limit was sent in this session
        self._sent_limits: dict[str, Allow] = {}  # portal -> its limited verdict (client view)
        #: portal -> the most rows its Executes sent so far can return (client view);
        #: -1 once one had to be watched row by row (then every later one is)
        self._sent_used: dict[str, int] = {}
        #: The Execute now answered is counted, not watched: the most rows it can return
        self._counting: int | None = None
        self._limit: _Limit | None = None  # the limited statement in progress
        self._dropping = False  # drop the server's messages until ReadyForQuery
        # -- measured writes (Allow.max_changes), see dbgate.proxy.measure
        self._measure: measure.Measurement | None = None  # the measured Query in flight
        self._measures = 0  # entries of measurements in the queue (theirs and dbgate's)
        #: ``over_changes`` answered with an awaitable: the relay awaits it and calls
        #: :meth:`measure_resume` with the verdict (the client's messages still wait).
        self.measure_waiting: Awaitable[Allow | Refuse] | None = None
        self._pending_decision: measure.Measurement | None = None
        #: Parse and Bind bodies of a measured batch approved past its limit and sent
        #: again: each is let through once without opening or joining a measurement.
        self._approved: set[bytes] = set()
        #: What a re-sent batch left unsent (it reached a statement under a row limit):
        #: the relay parks it ahead of the client's later messages.
        self.replay_rest = b""
        #: The client's messages wait: a statement under a row limit is running.
        self.blocked = False
        self.blocked_rest = b""  # what followed that statement in the same read
        #: The relay must send the server a CancelRequest for this session (then call
        #: :meth:`cancel_done`).
        self.cancel_requested = False
        self._upstream: list[bytes] = []  # bytes for the server, from the server side
        self.server_fatal = False
        #: The server's FATAL (or PANIC) ErrorResponse body, as the client got it: why
        #: the server is ending the session (an idle-in-transaction timeout, say).
        self.fatal_error = b""
        #: Extended-protocol messages were sent since the last message that ends a
        #: cycle (Sync, Query, FunctionCall): the server is inside a batch.
        self._batch_open = False
        #: A ping of dbgate's is in flight (its entry is in the queue).
        self.pinging = False
        self._next_id = 0
        self._injection_seq = 0
        # With a message filter, notices and notifications are selected too (errors
        # always are); rows only while a rewriter is active (``full``).
        self._track_mask = TRACK_WITH_MESSAGES if message_filter is not None else TRACK_TYPES
        #: Whether the server side must see every message (rows to rewrite or count).
        #: The relay picks its frame mask from :attr:`mask`.
        self.full = False

    # ------------------------------------------------------------------ reading
    @property
    def idle(self) -> bool:
        """Nothing sent that the server has not answered."""
        return self.sent_cycles == self.done_cycles and len(self._queue) == self._markers

    @property
    def in_flight(self) -> int:
        return len(self._queue) - self._markers

    @property
    def sees_every_message(self) -> bool:
        """The relay must hand :meth:`client_chunk` every message, not only the
        selected types: skipping to a Sync, or a measured batch that must see a Flush."""
        return self.skip_until_sync or (self._measure is not None and self._measure.open)

    @property
    def mask(self) -> bytes:
        if self._measures:
            return ALL_TYPES
        # while rows are rewritten or counted, DataRows come folded into runs
        return ALL_TYPES_ROW_RUNS if self.full else self._track_mask

    # ------------------------------------------------------------------ records
    def _record(
        self,
        kind: RecordKind,
        sql: str,
        statement_name: str = "",
        portal: str = "",
        params: tuple[bytes | None, ...] = (),
    ) -> StatementRecord:
        self._next_id += 1
        rec = StatementRecord(
            self._next_id, kind, sql, time.monotonic(), statement_name, portal, params
        )
        self._emit("statement_received", rec)
        return rec

    def _emit(self, event: str, rec: StatementRecord) -> None:
        tell = self._hearing.get(event)
        if tell is None:
            return
        try:
            tell(self.info, rec)
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

    def _finish(self, rec: StatementRecord, code: str = "", skipped: bool = False) -> None:
        if rec.finished_at:
            return
        rec.finished_at = time.monotonic()
        if code or skipped:
            rec.sqlstate = code
            self._emit("statement_failed", rec)
        else:
            self._emit("statement_completed", rec)

    # ------------------------------------------------------------------ client side
    def client_chunk(self, chunk: bytes, frames: list[Frame], full: bool) -> list[bytes] | None:
        """Judge and account for the client's messages in ``chunk``.

        ``frames`` are those the relay's mask selected (``full``: every message).
        Returns None when ``chunk`` goes upstream unchanged (the common case), else
        the pieces to write instead. When a statement waits for an awaitable verdict,
        :attr:`waiting` is set and the pieces returned are those before it; the
        relay parks the rest and calls :meth:`resume` with the verdict.
        """
        out: list[bytes] | None = None
        fwd = 0  # start of the range of chunk not yet forwarded
        queue = self._queue
        strictness = self._strictness
        strict = strictness is not None and strictness.strict  # type: ignore[attr-defined]
        memo = self._memo if not strict else None
        generations = self._generations
        if generations is not None and generations.generation != self._memo_generation:  # type: ignore[attr-defined]
            self._memo.clear()
            self._memo_generation = generations.generation  # type: ignore[attr-defined]
        observed = self.observer is not None
        for t, s, e in frames:
            hdr = s - 5
            if self._measure is not None and self._measure.open:
                self._measure.client_message(t, chunk[hdr:e], self.in_flight)
            if self.skip_until_sync:
                if t == SYNC_MSG:
                    self.sync_sent()
                    if self._approved:
                        self._approved.clear()  # a re-sent batch ends here
                    if self._measure is not None and self._measure.batch:
                        return self._end_measured_batch(chunk, e, out, fwd)
                elif t != FLUSH_MSG:
                    if out is None:
                        out = []
                    if hdr > fwd:
                        out.append(chunk[fwd:hdr])
                    fwd = e
                continue
            if t == SYNC_MSG:
                self.skip_until_sync = False
                if not self._copy_in_open:
                    self.sent_cycles += 1
                    queue.append(SYNC_ENTRY)
                    self._batch_open = False
                if self._approved:
                    self._approved.clear()  # a re-sent batch ends here
                if self._measure is not None and self._measure.batch:
                    return self._end_measured_batch(chunk, e, out, fwd)
                continue
            if t == EXECUTE_MSG:
                self._batch_open = True
                portal = "" if e - s == 5 and chunk[s] == 0 else m.parse_execute(chunk[s:e])[0]
                rec = None if not observed else self._record("execute", "", portal=portal)
                limited = self._sent_limits.get(portal) if self._limits else None
                if limited is None:
                    entry = (EXECUTE, portal, rec, None)
                else:
                    entry = self._limited_execute(portal, rec, limited, chunk, e)
                first = len(queue) == self._markers
                queue.append(entry)
                if limited is not None and entry[3] is None:
                    self._block(entry, limited)
                if first and self._watch:
                    self._start_execute(entry)  # nothing ahead of it: its portal is known
                if self.blocked:
                    return self._stop_at(chunk, e, out, fwd)
                continue
            if t == DESCRIBE_MSG:
                self._batch_open = True
                if e - s == 2 and chunk[s] == 0x50 and chunk[s + 1] == 0:
                    queue.append(DESCRIBE_UNNAMED_PORTAL)
                else:
                    kind, name = m.parse_describe(chunk[s:e])
                    queue.append(
                        (DESCRIBE_S, name_key(name)) if kind == "S" else (DESCRIBE_P, name)
                    )
                continue
            body = b""
            if t == QUERY_MSG:
                body = _query_part(chunk, s, e)
                hit = memo.get(body) if memo and e - s <= MEMO_MAX_MESSAGE else None
                if hit is not None and hit[0].kind == "query":
                    rec = None
                    if observed:
                        rec = self._record("query", hit[0].sql)
                        self.decided(rec, hit[1], True)
                    self.query_sent(rec, hit[1])
                    if self.blocked:
                        return self._stop_at(chunk, e, out, fwd)
                    continue
                stmt = Statement("query", m.parse_query(chunk, s, e))
            elif t == PARSE_MSG:
                body = chunk[s:e]
                hit = memo.get(body) if memo and e - s <= MEMO_MAX_MESSAGE else None
                if hit is not None and hit[0].kind == "parse":
                    rec = None
                    if observed:
                        rec = self._record("parse", hit[0].sql, hit[0].statement_name)
                        self.decided(rec, hit[1], True)
                    self.parse_sent(rec, hit[0].statement_name, hit[2])  # type: ignore[arg-type]
                    continue
                name, sql, types = m.parse_parse(body)
                stmt = Statement("parse", sql, statement_name=name, param_types=types)
            elif t == BIND_MSG:
                body = chunk[s:e]
                statements = self.info.statements
                if not (strict or self.inspect_binds) and (
                    not statements.checked
                    or not statements.checks_binds(name := bind_statement_name(chunk, s, e))
                    or (
                        # checked only for PII tokens to resolve, and none is in it
                        statements.checks_only_tokens(name) and chunk.find(b"tok_", s, e) < 0
                    )
                ):
                    queue.append((BIND, body, None, None))
                    self._batch_open = True
                    if self._limits:
                        self._note_portal_limit(body, None)
                    continue
                if not (strict or self.inspect_binds):
                    # A Bind its statement's Parse verdict can judge (a prepared read
                    # under a rows-per-window limit: capped afresh, values unread)
                    recheck = statements.recheck(name, self.sent_cycles + 1)
                    quick = None if recheck is None else self._quick(recheck, body)
                    if quick is not None:
                        self.bind_sent(None, quick, body)
                        continue
                stmt = self._bind_statement(body)
            elif t == CLOSE_MSG:
                self.close_sent(chunk[s:e])
                continue
            elif t == FUNCTION_MSG:
                if e - s < 4:
                    raise ClientProtocolError("FunctionCall message too short")
                stmt = Statement("function_call", "", function_oid=unpack_from("!I", chunk, s)[0])
            elif t in (COPY_DONE_MSG, COPY_FAIL_MSG):
                self.copy_end_sent()
                if self._measure is not None and self._measure.copying:
                    self._measure.copying = False
                    if not self._measure.batch:
                        # The end of a measured COPY's data: wait again for the decision
                        # (a batch waits at its Sync, which follows).
                        self.blocked = True
                        return self._stop_at(chunk, e, out, fwd)
                continue
            elif t == TERMINATE_MSG:
                self.terminating = True
                continue
            else:
                continue
            rec = self.received(stmt) if observed else None
            verdict = self._inspect(stmt)
            opened = False  # this message opens a measured batch
            if type(verdict) is Allow and (verdict.max_changes or verdict.opens_measurement):
                if (
                    t == QUERY_MSG
                    and verdict.max_changes
                    and self._measure is None
                    and not self._batch_open
                ):
                    if observed:
                        self.decided(rec, verdict)
                    if out is None:
                        out = []
                    if hdr > fwd:
                        out.append(chunk[fwd:hdr])
                    out.append(
                        self._measured_query(rec, verdict, rewritten_message(t, body, verdict))
                    )
                    return self._stop_at(chunk, e, out, e)
                setup, verdict = self._measured_extended(t, body, stmt.sql, verdict)
                if setup:
                    opened = True
                    if out is None:
                        out = []
                    if hdr > fwd:
                        out.append(chunk[fwd:hdr])
                    out.append(setup)
                    fwd = hdr
                    self._measure.client_message(t, chunk[hdr:e], 0)  # type: ignore[union-attr]
            if type(verdict) is Allow and (
                verdict.replace_sql is not None or verdict.replace_params is not None
            ):
                # Forwarded in a form of the gate's (tokens resolved): not byte for byte.
                if observed:
                    self.decided(rec, verdict)
                self._sent(t, rec, stmt, verdict, body)
                if out is None:
                    out = []
                if hdr > fwd:
                    out.append(chunk[fwd:hdr])
                out.append(rewritten_message(t, body, verdict))
                fwd = e
                if self.blocked:
                    return self._stop_at(chunk, e, out, fwd)
                if opened and not full:
                    return self._rest_in_order(chunk, e, out, fwd)
                continue
            if type(verdict) is Allow:
                if observed:
                    self.decided(rec, verdict)
                prepared = self._sent(t, rec, stmt, verdict, body)
                if verdict.repeatable and t != BIND_MSG and len(body) <= MEMO_MAX_MESSAGE:
                    if len(memo) >= MEMO_MAX_ENTRIES:
                        memo.clear()
                    memo[body] = (stmt, verdict, prepared)
                if self.blocked:
                    return self._stop_at(chunk, e, out, fwd)
                if opened and not full:
                    return self._rest_in_order(chunk, e, out, fwd)
                continue
            if out is None:
                out = []
            if hdr > fwd:
                out.append(chunk[fwd:hdr])
            fwd = e
            if isinstance(verdict, Refuse):
                self.decided(rec, verdict)
                out.append(self.refuse(rec, verdict, t))
                if self.skip_until_sync and not full:
                    # The rest of this read must now be seen message by message.
                    rest = chunk[e:]
                    if rest:
                        more = self.client_chunk(rest, split_frames(rest), True)
                        out.extend(more if more is not None else (rest,))
                    return out
                continue
            # An awaitable verdict: the relay parks this message and everything after.
            message = _query_part(chunk, hdr, e) if t == QUERY_MSG else chunk[hdr:e]
            self.waiting = Waiting(verdict, t, message, stmt, rec, body, chunk[e:])
            return out
        if len(queue) > MAX_IN_FLIGHT:
            raise LimitExceeded(
                f"more than {MAX_IN_FLIGHT} messages in flight without reading the answers"
            )
        if out is None:
            return None
        if fwd < len(chunk):
            out.append(chunk[fwd:])
        return out

    def _stop_at(self, chunk: bytes, e: int, out: list[bytes] | None, fwd: int) -> list[bytes]:
        """Forward up to ``e`` and park the rest: a limited statement is running.

        An Execute's results stay in the server's output buffer until a Sync or Flush
        (the client's Sync is among what waits), so a Flush goes after it; a Flush has
        no answer of its own."""
        if out is None:
            out = []
        if e > fwd:
            out.append(chunk[fwd:e])
        limit = self._limit
        if limit is not None and limit.entry[0] == EXECUTE:
            out.append(m.FLUSH)
        self.blocked_rest = chunk[e:]
        return out

    def _block(self, entry: Entry, verdict: Allow) -> None:
        self._limit = _Limit(entry, _over_limit(verdict))
        self.blocked = True

    # -- measured writes ------------------------------------------------------------
    def _note_portal_limit(self, body: bytes, verdict: Allow | None) -> None:
        """Which portals will run under a row limit, as the client sees them (the
        Execute that runs one must make the client wait)."""
        portal, stmt_name = bind_names(body)
        prepared = self._sent_stmts.get(name_key(stmt_name))
        if verdict is None:
            verdict = prepared.verdict if prepared is not None else None
        elif prepared is not None:
            verdict = _refined(prepared.verdict, verdict)
        if verdict is not None and verdict.max_rows:
            self._sent_limits[portal] = verdict
        else:
            self._sent_limits.pop(portal, None)
        self._sent_used.pop(portal, None)  # a new portal: none of its rows returned yet

    def _limited_execute(
        self, portal: str, rec: StatementRecord | None, verdict: Allow, chunk: bytes, e: int
    ) -> Entry:
        """The entry of an Execute of a portal under a row limit (client view): with its
        row count when it cannot reach the limit (its rows are counted, nothing
        waits), with None when it must be watched (the client waits meanwhile)."""
        fetch = unpack_from("!i", chunk, e - 4)[0]  # the Execute's last field
        used = self._sent_used.get(portal, 0)
        bound = _counted(verdict, fetch, used) if used >= 0 else None
        if bound is None:
            self._sent_used[portal] = -1
            return (EXECUTE, portal, rec, None)
        self._sent_used[portal] = used + bound
        return (EXECUTE, portal, rec, max(fetch, 0))

    def take_upstream(self) -> bytes:
        """Bytes the server side decided to send the server (failures of dbgate's)."""
        if not self._upstream:
            return b""
        data = b"".join(self._upstream)
        self._upstream.clear()
        return data

    def cancel_done(self) -> None:
        """The CancelRequest asked for by :attr:`cancel_requested` was delivered."""
        limit = self._limit
        if limit is not None:
            limit.cancel_pending = False
            self._maybe_release()

    def _maybe_release(self) -> None:
        limit = self._limit
        if limit is not None and limit.finished and not limit.silent and not limit.cancel_pending:
            self._limit = None
            self.blocked = False

    def resume(self, verdict: object) -> bytes:
        """The awaited verdict of :attr:`waiting` arrived (or the wait ended: pass the
        Refuse to send). Returns the bytes to send upstream in its place."""
        waiting = self.waiting
        assert waiting is not None
        self.waiting = None
        if not isinstance(verdict, (Allow, Refuse)):
            verdict = Refuse(
                sqlstate.INTERNAL_ERROR, "dbgate: inspector returned no verdict; statement not run"
            )
        self.decided(waiting.record, verdict)
        if self.skip_until_sync:
            # An earlier message of its batch failed meanwhile: the server would skip
            # this one, so it is not sent at all.
            if waiting.record is not None:
                self._finish(waiting.record, "", skipped=True)
            return b""
        setup = b""
        if isinstance(verdict, Allow) and (verdict.max_changes or verdict.opens_measurement):
            t = waiting.message_type
            if (
                t == QUERY_MSG
                and verdict.max_changes
                and self._measure is None
                and not self._batch_open
            ):
                message = rewritten_message(t, waiting.body, verdict)
                return self._measured_query(waiting.record, verdict, message)
            setup, unmeasured = self._measured_extended(
                t, waiting.body, waiting.statement.sql, verdict
            )
            if setup:
                self._measure.client_message(t, waiting.message, 0)  # type: ignore[union-attr]
            if not isinstance(unmeasured, (Allow, Refuse)):
                # decided by over_changes(-1), awaited in turn
                self.waiting = Waiting(unmeasured, *waiting[1:])
                return b""
            verdict = unmeasured
        if isinstance(verdict, Refuse):
            return self.refuse(waiting.record, verdict, waiting.message_type)
        self._sent(waiting.message_type, waiting.record, waiting.statement, verdict, waiting.body)
        if verdict.replace_sql is not None or verdict.replace_params is not None:
            return setup + rewritten_message(waiting.message_type, waiting.body, verdict)
        return setup + waiting.message if setup else waiting.message

    def _inspect(self, stmt: Statement) -> Allow | Refuse | Awaitable[Allow | Refuse]:
        try:
            return self.inspector.inspect(self.info, stmt)
        except Exception:
            log.exception("session %s: inspector failed; refusing", self.info.session_id)
            return Refuse(
                sqlstate.INTERNAL_ERROR,
                "dbgate: internal error while inspecting; statement not run",
            )

    def _quick(self, recheck: Callable[[SessionInfo, bytes], Any], body: bytes) -> Allow | None:
        """A Bind's verdict from its statement's quick judge (``Allow.recheck_bind``);
        None when the inspector must judge it (the judge says so, or fails)."""
        try:
            verdict = recheck(self.info, body)
        except Exception:
            log.exception("session %s: a quick Bind verdict failed", self.info.session_id)
            return None
        return verdict if type(verdict) is Allow else None

    def _bind_statement(self, body: bytes) -> Statement:
        """The inspector's view of a Bind whose decision depends on its values."""
        portal, name, formats, params, _ = m.parse_bind(body)
        cands = self.info.statements.candidates(name, self.sent_cycles + 1)
        if cands:
            sql, types = cands[-1].sql, cands[-1].param_types
        else:
            sent = self._sent_stmts.get(name_key(name))
            sql, types = ("", ()) if sent is None else (sent.sql, sent.param_types)
        return Statement(
            "bind",
            sql,
            statement_name=name,
            portal=portal,
            params=params,
            param_formats=expand_formats(formats, len(params)),
            param_types=types,
            candidates=cands,
        )

    def _sent(
        self, t: int, rec: StatementRecord | None, stmt: Statement, verdict: Allow, body: bytes
    ) -> _Prepared | None:
        """Account for an allowed message on its way upstream (returns what a
        remembered Parse hands the tracker again)."""
        if t == QUERY_MSG:
            self.query_sent(rec, verdict)
        elif t == PARSE_MSG:
            prepared = _Prepared(stmt.sql, verdict, stmt.param_types)
            self.parse_sent(rec, stmt.statement_name, prepared)
            return prepared
        elif t == BIND_MSG:
            self.bind_sent(rec, verdict, body)
        else:
            self.function_call_sent(rec)
        return None

    def bind_sent(self, rec: StatementRecord | None, verdict: Allow, body: bytes) -> None:
        """An inspected Bind was forwarded. Its own verdict is kept: it refines the
        statement the server holds once the Bind is answered (:meth:`_bind_done`); the
        client's view (the statement it sent last) decides whether its Execute must
        wait."""
        prepared = self._sent_stmts.get(name_key(bind_names(body)[1]))
        refined = _refined(prepared.verdict if prepared is not None else None, verdict)
        if refined.plan is not None:
            self._plans = self._watch = True
        if refined.max_rows:
            self._limits = self._watch = True
        self._queue.append((BIND, body, verdict, rec))
        self._batch_open = True
        if self._limits:
            self._note_portal_limit(body, verdict)
        if rec is not None:
            self._emit("statement_forwarded", rec)

    def query_sent(self, rec: StatementRecord | None, verdict: Allow) -> None:
        """An allowed Query was forwarded. ``verdict.changes``: SQL PREPARE/DEALLOCATE/
        DISCARD ALL in it, each confirmed by its own statement's command tag."""
        self.sent_cycles += 1
        self._batch_open = False
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
            if _counted(verdict, 0, 0) is None:
                self._block(entry, verdict)
        if rec is not None:
            self._emit("statement_forwarded", rec)

    def parse_sent(self, rec: StatementRecord | None, name: str, prepared: _Prepared) -> None:
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
        if not self._copy_in_open:
            self.sent_cycles += 1
            self._queue.append(SYNC_ENTRY)
            self._batch_open = False

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
        self._batch_open = True
        return out

    # ------------------------------------------------------------------ server side
    def server_chunk(self, chunk: bytes, frames: list[Frame], full: bool) -> list[bytes] | None:
        """Account for the server's messages in ``chunk``; ``frames`` are those the
        relay's mask selected (``full``: every message).

        Returns None when ``chunk`` goes to the client unchanged (the common case),
        else the pieces to write instead.
        """
        if self._measures:
            return self._measure_frames(chunk, frames, full)
        queue = self._queue
        if self._markers or self._watch or self.full or self._copy_in:
            return self._server_frames(chunk, frames, 0, full)
        # The lean loop: no plan was ever sent, nobody observes, nothing to rewrite.
        # The answers of ordinary statements only pop their entries here (no portal
        # can run under a plan yet, so there are no statements or portals to keep);
        # anything else goes to the general loop from that message on.
        info = self.info
        i = 0
        for t, s, _e in frames:
            if queue:
                head = queue[0]
                kind = head[0]
                if t == READY_MSG:
                    if kind == SYNC or (kind == QUERY and head[2] is None and head[3] is None):
                        queue.popleft()
                        self.done_cycles += 1
                        info.transaction_status = STATUS[chunk[s]]
                        i += 1
                        continue
                elif t == BIND_OK:
                    if kind == BIND and head[3] is None:
                        queue.popleft()
                        i += 1
                        continue
                elif t == CMD_COMPLETE:
                    if kind == EXECUTE and head[2] is None:
                        queue.popleft()
                        i += 1
                        continue
                    if kind == QUERY and head[2] is None and head[3] is None:
                        i += 1
                        continue
                elif t == ROW_DESC:
                    if kind == DESCRIBE_P:
                        queue.popleft()
                        i += 1
                        continue
                    if kind == QUERY:  # no plans: the verdict has none
                        i += 1
                        continue
                elif t == PARSE_OK:
                    if kind == PARSE and head[3] is None and head[4] is None:
                        queue.popleft()
                        i += 1
                        continue
                elif t == NO_DATA and kind in (DESCRIBE_P, DESCRIBE_S):
                    queue.popleft()
                    i += 1
                    continue
            return self._server_frames(chunk, frames, i, full)
        return None

    def _server_frames(
        self, chunk: bytes, frames: list[Frame], start: int, full: bool
    ) -> list[bytes] | None:
        """The general loop of :meth:`server_chunk`, from ``frames[start]`` on."""
        out: list[bytes] | None = None
        run = 0  # start of the unchanged run of chunk not yet copied to out
        queue = self._queue
        for t, s, e in frames[start:] if start else frames:
            # Fast paths for the answers of ordinary statements (no plan, no record,
            # no prepared-statement change, no marker ahead); the rest takes the
            # general path below.
            if self._dropping and t != READY_MSG:
                # The rest of a Query stopped at its row limit: not shown.
                if out is None:
                    out = []
                if s - 5 > run:
                    out.append(chunk[run : s - 5])
                run = e
                continue
            if queue and not self._markers and self._limit is None:
                head = queue[0]
                kind = head[0]
                if t == READY_MSG:
                    if kind == SYNC or (kind == QUERY and head[2] is None and head[3] is None):
                        queue.popleft()
                        self._ready(chunk[s])
                        if self.full and not full:
                            return self._rest_in_full(chunk, e, out, run)
                        continue
                elif t == CMD_COMPLETE:
                    if kind == EXECUTE and head[2] is None and self._counting is None:
                        queue.popleft()
                        if self._rewriter is not None:
                            self._end_result()
                        if self._watch and queue and queue[0][0] == EXECUTE:
                            self._start_execute(queue[0])
                            if self.full and not full:
                                return self._rest_in_full(chunk, e, out, run)
                        continue
                    if kind == QUERY and head[2] is None and head[3] is None:
                        if self._rewriter is not None:
                            self._end_result()
                        continue
                elif t == ROW_DESC:
                    if kind == DESCRIBE_P and not self._plans:
                        queue.popleft()
                        if self._watch and queue and queue[0][0] == EXECUTE:
                            self._start_execute(queue[0])
                            if self.full and not full:
                                return self._rest_in_full(chunk, e, out, run)
                        continue
                    if kind == QUERY and head[1].plan is None:
                        continue
                elif t == BIND_OK:
                    if kind == BIND and head[3] is None:
                        queue.popleft()
                        if self._watch:
                            self._bind_done(head, True)
                        if self._watch and queue and queue[0][0] == EXECUTE:
                            self._start_execute(queue[0])
                            if self.full and not full:
                                return self._rest_in_full(chunk, e, out, run)
                        continue
                elif t == PARSE_OK and kind == PARSE and head[3] is None and head[4] is None:
                    queue.popleft()
                    self._stmts[head[1]] = head[2]
                    continue
            if t == DATA_ROW_RUN:
                rw = self._rewriter
                if rw is None:
                    continue
                replacement = rewrite_run(rw, chunk, s - 5, e)
                if replacement is None:
                    continue
            elif t == DATA_ROW:
                rw = self._rewriter
                if rw is None:
                    continue
                body = chunk[s:e]
                new = rw.data_row(body)
                if new is body:
                    continue
                replacement = b"" if new is None else m.frame(t, new)
            elif t == READY_MSG:
                replacement = self._on_ready(chunk[s])
                if replacement is None:
                    continue
            elif t == COPY_DATA:
                rw = self._rewriter
                if rw is None or not self._copy_out:
                    continue
                body = chunk[s:e]
                new = rw.copy_data(body)
                if new is body:
                    continue
                replacement = b"" if new is None else m.frame(t, new)
            elif t in (NOTICE_MSG, NOTIFY_MSG):
                f = self.message_filter
                if f is None:
                    continue
                body = chunk[s:e]
                new = (
                    f.notice(self.info, body)
                    if t == NOTICE_MSG
                    else f.notification(self.info, body)
                )
                if new == body:
                    continue
                replacement = m.frame(t, new)
            else:
                replacement = self._on_message(t, chunk, s, e)
                if self.full and not full:
                    if replacement is not None:
                        if out is None:
                            out = []
                        if s - 5 > run:
                            out.append(chunk[run : s - 5])
                        out.append(replacement)
                        run = e
                    return self._rest_in_full(chunk, e, out, run)
                if replacement is None:
                    continue
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

    def _rest_in_full(self, chunk: bytes, e: int, out: list[bytes] | None, run: int) -> list[bytes]:
        """A rewriter started at the message ending at ``e``: the rows after it were
        not selected by the relay's mask. Go through the rest of the chunk message by
        message; ``out``/``run`` are what the loop produced so far."""
        if out is None:
            out = []
        if e > run:
            out.append(chunk[run:e])
        rest = chunk[e:]
        if rest:
            more = self._server_frames(rest, split_frames(rest, mask=ALL_TYPES_ROW_RUNS), 0, True)
            out.extend(more if more is not None else (rest,))
        return out

    def _head(self, t: int) -> Entry:
        """The entry the server answers next (markers of the client's order dropped)."""
        queue = self._queue
        if self._markers:
            while queue and queue[0][0] == COPY_END:
                queue.popleft()
                self._markers -= 1
        if not queue:
            raise TrackerDesync(f"server sent {chr(t)!r} with no message in flight")
        return queue[0]

    def _desync(self, t: int, entry: Entry) -> TrackerDesync:
        return TrackerDesync(
            f"server sent {chr(t)!r} while dbgate expected the answer to a {KIND_NAMES[entry[0]]}"
        )

    def _pop(self) -> None:
        """The head entry is answered; an Execute that comes next starts now."""
        queue = self._queue
        queue.popleft()
        if self._markers:
            while queue and queue[0][0] == COPY_END:
                queue.popleft()
                self._markers -= 1
        if self._watch and queue and queue[0][0] == EXECUTE:
            self._start_execute(queue[0])

    def _on_message(self, t: int, chunk: bytes, s: int, e: int) -> bytes | None:
        """One tracked server message; returns a replacement or None."""
        if t == ERROR_MSG:
            return self._on_error(chunk[s:e])
        if t == PARAM_STATUS_MSG:
            self._on_parameter_status_msg(chunk[s:e])
            return None
        entry = self._head(t)
        kind = entry[0]
        if t == PARSE_OK:
            if kind != PARSE:
                raise self._desync(t, entry)
            self._parse_done(entry, True)
        elif t == BIND_OK:
            if kind != BIND:
                raise self._desync(t, entry)
            self._bind_done(entry, True)
        elif t == CMD_COMPLETE:
            return self._on_command_complete(entry, chunk[s:e])
        elif t == ROW_DESC:
            self._on_row_description(entry, chunk[s:e])
            return None
        elif t == NO_DATA:
            if kind != DESCRIBE_S and kind != DESCRIBE_P:
                raise self._desync(t, entry)
        elif t == PARAM_DESC:
            if kind != DESCRIBE_S:
                raise self._desync(t, entry)
            self._on_parameter_description(entry, chunk[s:e])
            return None
        elif t == EMPTY_QUERY:
            if kind == QUERY:
                return None  # an empty query string
            if kind != EXECUTE:
                raise self._desync(t, entry)
            replacement = self._execute_done(entry, "")
            self._pop()
            return replacement
        elif t == SUSPENDED:
            if kind != EXECUTE:
                raise self._desync(t, entry)
            replacement = self._execute_done(entry, "suspended")
            self._pop()
            return replacement
        elif t == CLOSE_OK:
            if kind != CLOSE:
                raise self._desync(t, entry)
            self._close_done(entry)
        elif t == COPY_IN:
            if kind != QUERY and kind != EXECUTE:
                raise self._desync(t, entry)
            self._on_copy_in()
            return None
        elif t in (COPY_OUT, COPY_BOTH):
            if kind != QUERY and kind != EXECUTE:
                raise self._desync(t, entry)
            self._on_copy_out(entry, chunk[s:e])
            return None
        elif t == FUNC_RESULT:
            if kind != FUNCTION:
                raise self._desync(t, entry)
            return None
        else:
            limit = self._limit
            if t == COPY_DONE_SRV and limit is not None and limit.hit:
                return b""  # COPY TO STDOUT stopped at its row limit: it fails instead
            return None  # not an answer (CopyDone of a COPY TO STDOUT, ...)
        self._pop()
        return None

    # -- per message type -------------------------------------------------------------
    def _on_parameter_status_msg(self, body: bytes) -> None:
        name, value = m.parse_parameter_status(body)
        info = self.info
        info.server_params[name] = value
        info.params_version += 1
        self._memo.clear()  # verdicts may depend on it (application_name, ...)

    def _on_ready(self, status: int) -> bytes | None:
        entry = self._head(READY_MSG)
        kind = entry[0]
        if kind == PING:
            self._ping_done(status)
            return b""
        if kind not in ENDS_CYCLE:
            raise self._desync(READY_MSG, entry)
        replacement: bytes | None = None
        if kind != SYNC:
            rec = entry[2] if kind != FUNCTION else entry[1]
            if kind == QUERY and entry[3] is not None:
                for _, handle in entry[3][1]:
                    handle.resolve(False)  # statements after an error did not run
            if rec is not None:
                self._finish(rec, rec.sqlstate)
            limit = self._limit
            if limit is not None and (limit.entry is entry or kind == SILENT_QUERY):
                replacement = self._limited_query_ready(entry, status)
        self._queue.popleft()
        self._dropping = False
        self._ready(status)
        return replacement

    def _limited_query_ready(self, entry: Entry, status: int) -> bytes | None:
        """The ReadyForQuery that ends a Query under a row limit (or dbgate's failure
        after it). Over the limit inside a transaction block, the server must agree
        that the statement failed: its ReadyForQuery is held back and a failing Query
        of dbgate's follows, whose own ReadyForQuery (status E) the client gets."""
        limit = self._limit
        assert limit is not None
        if entry[0] == SILENT_QUERY:
            limit.silent = False
            self._maybe_release()
            return None
        limit.finished = True
        if limit.hit and status == 0x54:  # 'T'
            limit.silent = True
            self._inject_silent(SILENT_QUERY)
            return b""
        self._maybe_release()
        return None

    def _inject_silent(self, kind: int) -> None:
        """Make the server fail (inside the transaction or batch the client sees as
        failed) without the client seeing that error."""
        self._injection_seq += 1
        token = f"dbgate-limit-{NONCE}-{self._injection_seq}"
        if kind == SILENT_QUERY:
            tag = f"$dbgate_{NONCE}$"
            sql = f"DO {tag}BEGIN RAISE EXCEPTION '{token}'; END{tag}"
            self.sent_cycles += 1
            self._upstream.append(m.frame(ord("Q"), sql.encode() + b"\0"))
            self._queue.append((SILENT_QUERY, None, None, None))
            self._batch_open = False
        else:
            self._upstream.append(
                m.frame(ord("P"), f"dbgate_{NONCE}\0SELECT '{token}'::int4\0".encode() + b"\0\0")
            )
            self._queue.append((SILENT_PARSE, None, None, None))
            self._batch_open = True

    def _limit_error(self) -> bytes:
        r = self._limit.refusal  # type: ignore[union-attr]
        extra: dict[str, object] = {}
        if r.detail:
            extra["D"] = r.detail
        if r.hint:
            extra["H"] = r.hint
        return m.error_response(r.sqlstate, r.message, **extra)

    def _on_limit_hit(self, limiter: RowLimiter) -> None:
        limit = self._limit
        if limit is None:
            # A portal's verdict gained a limit the client's view did not know of (a
            # Parse the server rejected): the statement is stopped all the same.
            log.warning(
                "session %s: row limit hit outside a limited statement", self.info.session_id
            )
            return
        if not limit.hit:
            limit.hit = True
            limit.cancel_pending = True
            self.cancel_requested = True

    def _ready(self, status: int) -> None:
        """A cycle ended (its entry is already off the queue)."""
        self._counting = None
        if self._rewriter is not None or self._copy_in or self._copy_out:
            self._rewriter = None
            self._copy_out = self._copy_in = self._copy_in_open = False
            self.full = False
        self.done_cycles += 1
        self.info.transaction_status = STATUS[status]
        if status == 0x49 and self._portals:  # 'I': portals end with their transaction
            self._portals.clear()
            self._portal_state.clear()
        self._next_cycle()

    def _ping_done(self, status: int) -> None:
        """The ReadyForQuery of a ping: the server's timer is re-armed. Not shown and
        not a cycle; what the client pipelined after the ping starts as after any
        cycle."""
        self._queue.popleft()
        self.pinging = False
        self.info.transaction_status = STATUS[status]
        self._next_cycle()

    def _next_cycle(self) -> None:
        """A cycle ended: the client's COPY-end markers ahead are dropped, and an
        Execute that now heads the queue starts (its portal is what the server has)."""
        queue = self._queue
        if self._markers:
            while queue and queue[0][0] == COPY_END:
                queue.popleft()
                self._markers -= 1
        if self._watch and queue and queue[0][0] == EXECUTE:
            self._start_execute(queue[0])

    def _end_result(self) -> None:
        self._rewriter = None
        self._copy_out = False
        self.full = False

    def _on_error(self, body: bytes) -> bytes | None:
        if b"SFATAL\0" in body or b"SPANIC\0" in body:
            self.server_fatal = True
            f = self.message_filter
            self.fatal_error = body if f is None else f.error(self.info, body)
        queue = self._queue
        if len(queue) == self._markers:
            return self._filtered_error(body)  # e.g. a FATAL the server sends on its own
        entry = self._head(ERROR_MSG)
        kind = entry[0]
        replacement: bytes | None = None
        limit = self._limit
        counted = self._rewriter
        if type(counted) is RowLimiter and kind in (QUERY, EXECUTE) and entry[2] is not None:
            # rows it forwarded before it failed or was stopped (charged to its windows)
            entry[2].rows += counted.take_forwarded()
        elif self._counting is not None or (kind == QUERY and entry[1].max_rows):
            self._charge_counted(entry)
        if kind in (SILENT_QUERY, SILENT_PARSE):
            replacement = b""  # dbgate's own failure after a row limit: not shown
            code = sqlstate.PROGRAM_LIMIT_EXCEEDED
            if kind == SILENT_PARSE and limit is not None:
                limit.silent = False
        elif limit is not None and limit.entry is entry and limit.hit:
            limit.finished = True  # cancelled (or failed) after its limit: the limit's error
            replacement = self._limit_error()
            code = limit.refusal.sqlstate
        elif (kind in (INJECTED_QUERY, INJECTED_PARSE)) and entry[3] in body:
            r: Refuse = entry[1]
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
            code = sqlstate_of(body)
            replacement = self._filtered_error(body)
        self._rewriter = None
        self._copy_out = False
        if self._copy_in:
            self._copy_in = False
            self._copy_in_open = False  # the server left copy mode
        self.full = False
        if kind in (QUERY, INJECTED_QUERY, FUNCTION, SILENT_QUERY):
            # The query string stops here; ReadyForQuery follows.
            rec = entry[1] if kind == FUNCTION else entry[2]
            if rec is not None:
                rec.sqlstate = code
            if kind == QUERY and entry[3] is not None:
                self._resolve_query_changes(entry, failed=True)
            return replacement
        if kind in (SYNC, PING):
            return replacement  # an error after the batch (e.g. at commit)
        if limit is not None and limit.entry is entry:
            limit.finished = True
        # Extended protocol: this message failed, the server skips to the next Sync.
        queue.popleft()
        self._fail_entry(entry, code, skipped=False)
        while queue and queue[0][0] != SYNC:
            skipped = queue.popleft()
            if limit is not None and skipped is limit.entry:
                limit.finished = True  # skipped like the rest of its batch
            self._fail_entry(skipped, code, skipped=True)
        if not queue:
            # No Sync sent yet: whatever the client sends until its Sync, the server
            # skips. Not forwarding it keeps the queue equal to what will be answered.
            self.skip_until_sync = True
        if limit is not None:
            self._maybe_release()
        return replacement

    def _charge_counted(self, entry: Entry) -> None:
        """A counted statement failed: its rows were not watched, so it is charged the
        most it could have returned (never less than it did)."""
        bound = self._counting
        self._counting = None
        kind = entry[0]
        if kind == QUERY:
            bound = _counted(entry[1], 0, 0)
        if bound and kind in (QUERY, EXECUTE) and entry[2] is not None:
            entry[2].rows += bound

    def _filtered_error(self, body: bytes) -> bytes | None:
        f = self.message_filter
        if f is None:
            return None
        new = f.error(self.info, body)
        return None if new == body else m.frame(ERROR_MSG, new)

    def _fail_entry(self, entry: Entry, code: str, skipped: bool) -> None:
        """An entry the server failed, or skipped after an error (until Sync)."""
        kind = entry[0]
        rec: StatementRecord | None = None
        if kind == PING:  # pragma: no cover - nothing is ever sent ahead of a ping
            self.pinging = False
            return
        if kind in (MEASURE_SETUP, MEASURE_SILENT, MEASURE_COMMIT):
            self.done_cycles += 1  # a Query of dbgate's skipped in a failed batch
            self._measures -= 1
            if kind == MEASURE_SETUP:
                entry[1].failed = True
            return
        if kind == QUERY and self._measure is not None and entry is self._measure.entry:
            self._measure = None
            self._measures -= 1
            if self._limit is None:
                self.blocked = False
        if kind == PARSE:
            self._parse_done(entry, False, skipped)
            return
        if kind == BIND:
            self._bind_done(entry, False)
            return
        if kind == CLOSE:
            if entry[3] is not None:
                entry[3].resolve(False)
        elif kind == EXECUTE:
            rec = entry[2]
        elif kind == QUERY:
            # A Query slipped into a batch that failed: the server skips it entirely.
            self.done_cycles += 1  # it will never get its ReadyForQuery
            rec = entry[2]
            if entry[3] is not None:
                for _, handle in entry[3][1]:
                    handle.resolve(False)
        elif kind == FUNCTION:
            self.done_cycles += 1
            rec = entry[1]
        elif kind == INJECTED_PARSE:
            rec = entry[2]
        elif kind == COPY_END:
            self._markers -= 1
        if rec is not None:
            self._finish(rec, code, skipped)

    def _parse_done(self, entry: Entry, ok: bool, skipped: bool = False) -> None:
        _, key, prepared, handle, rec = entry
        if handle is not None:
            handle.resolve(ok)
        if ok:
            self._stmts[key] = prepared
        elif key == "" and not skipped:
            # An unnamed Parse that fails has dropped the old statement first; one the
            # server skipped (after an earlier error of its batch) leaves it in place,
            # and its portals still run under its verdict (plan, row limit).
            self._stmts.pop("", None)
        if not ok and self._sent_stmts.get(key) is prepared:
            # No later Parse of the name was sent: the client's next Bind of it meets
            # what the server holds (the older statement, or none).
            held = self._stmts.get(key)
            if held is None:
                self._sent_stmts.pop(key, None)
            else:
                self._sent_stmts[key] = held
        if rec is not None:
            self._finish(rec, "" if ok else sqlstate.INTERNAL_ERROR, not ok)

    def _bind_done(self, entry: Entry, ok: bool) -> None:
        _, body, verdict, rec = entry
        portal, stmt_name = bind_names(body)
        if ok:
            stmt = self._stmts.get(name_key(stmt_name))
            if verdict is not None and stmt is not None:
                verdict = _refined(stmt.verdict, verdict)
            self._portals[portal] = (stmt, verdict, body)
        else:
            self._portals.pop(portal, None)
        if self._portal_state:
            self._portal_state.pop(portal, None)  # a new portal: plan it afresh
        if rec is not None:
            self._finish(rec, "" if ok else sqlstate.INTERNAL_ERROR, not ok)

    def _close_done(self, entry: Entry) -> None:
        _, kind, name, handle = entry
        if kind == "S":
            if handle is not None:
                handle.resolve(True)
            self._stmts.pop(name, None)
        else:
            self._portals.pop(name, None)
            self._portal_state.pop(name, None)

    def _on_parameter_description(self, entry: Entry, body: bytes) -> None:
        n = U16.unpack_from(body)[0] if len(body) >= 2 else 0
        types = tuple(unpack_from(f"!{n}I", body, 2)) if n else ()
        stmt = self._stmts.get(entry[1])
        if stmt is not None:
            stmt.param_types = types
        self.info.statements.described(entry[1], types)

    def _on_row_description(self, entry: Entry, body: bytes) -> None:
        kind = entry[0]
        if kind == DESCRIBE_P:
            state = self._plan_state(entry[1])
            if state is not None:
                state.description = body
            self._pop()
        elif kind == DESCRIBE_S:
            stmt = self._stmts.get(entry[1])
            if stmt is not None:
                stmt.description = body
            self._pop()
        elif kind == QUERY:
            verdict: Allow = entry[1]
            plan = verdict.plan
            inner = None
            if plan is not None:
                inner = plan.rows(self.info, body, description_formats(body))
            self._set_rewriter(self._limited(entry, verdict, inner))
        else:
            raise self._desync(ROW_DESC, entry)

    def _plan_state(self, portal: str) -> _PortalState | None:
        """Per-portal state, for portals whose statement has a result plan."""
        state = self._portal_state.get(portal)
        if state is None:
            p = self._portals.get(portal)
            if p is None:
                return None
            verdict = p[1] if p[1] is not None else p[0].verdict if p[0] is not None else None
            if verdict is None or (verdict.plan is None and not verdict.max_rows):
                return None
            state = self._portal_state[portal] = _PortalState()
        return state

    def _on_command_complete(self, entry: Entry, body: bytes) -> bytes | None:
        kind = entry[0]
        if kind == EXECUTE:
            rec = entry[2]
            replacement = self._execute_done(
                entry,
                m.parse_command_complete(body)
                if rec is not None or self._counting is not None
                else "",
            )
            self._pop()
            return replacement
        if kind != QUERY:
            raise self._desync(CMD_COMPLETE, entry)
        if self._rewriter is not None:
            self._rewriter = None
            self._copy_out = False
            self.full = False
        rec = entry[2]
        if rec is not None:
            tag = m.parse_command_complete(body)
            rec.tags.append(tag)
            rec.rows += row_count(tag)
        if entry[3] is not None:
            self._resolve_query_changes(entry, failed=False)
        limit = self._limit
        if limit is not None and limit.entry is entry and limit.hit:
            # It finished before the cancel took effect: the client gets the limit's
            # error instead, and nothing more of this query string.
            if rec is not None:
                rec.sqlstate = limit.refusal.sqlstate
            self._dropping = True
            return self._limit_error()
        return None

    def _resolve_query_changes(self, entry: Entry, failed: bool) -> None:
        """A statement of a query string ended (its CommandComplete, or the error that
        stops the string): resolve the prepared-statement change it carried."""
        state = entry[3]
        done = state[0]
        rest = []
        for index, handle in state[1]:
            if index == done:
                handle.resolve(not failed)
            else:
                rest.append((index, handle))
        state[0] = done + 1
        state[1] = rest

    def _start_execute(self, entry: Entry) -> None:
        """An Execute reached the head: its portal is now exactly what the server has."""
        portal = entry[1]
        p = self._portals.get(portal)
        rec: StatementRecord | None = entry[2]
        if p is None:
            if rec is not None:
                self._emit("statement_decided", rec)
                self._emit("statement_forwarded", rec)
            return
        stmt, bind_verdict, body = p
        verdict = bind_verdict if bind_verdict is not None else stmt.verdict if stmt else None
        if rec is not None:
            rec.sql = stmt.sql if stmt is not None else ""
            rec.bound_by(body)
            rec.verdict = verdict
            rec.remembered = True
            self._emit("statement_decided", rec)
            self._emit("statement_forwarded", rec)
        if verdict is None or (verdict.plan is None and not verdict.max_rows):
            return
        fetch = entry[3]
        if fetch is not None:  # the client's view: it cannot reach the limit
            state = self._portal_state.get(portal)
            if state is None or state.rewriter is None:
                bound = _counted(verdict, fetch, state.rows if state is not None else 0)
                if bound is not None:
                    self._counting = bound  # its rows are counted at its end
                    return
        state = self._plan_state(portal)
        if state is None:  # pragma: no cover - a plan or a limit always has state
            return
        if state.rewriter is None:
            inner = None
            if verdict.plan is not None:
                description = state.description or (stmt.description if stmt else None)
                formats = m.parse_bind(body)[4]
                n = field_count(description)
                if n:
                    formats = expand_formats(formats, n)
                inner = verdict.plan.rows(self.info, description, formats)
            # One limiter per portal: the limit counts across row-limited Executes.
            state.rewriter = self._limited(entry, verdict, inner, state.rows)
        self._set_rewriter(state.rewriter)

    def _execute_done(self, entry: Entry, tag: str) -> bytes | None:
        """An Execute ended (CommandComplete, PortalSuspended, EmptyQueryResponse);
        returns what the client gets instead, when it went over its row limit."""
        counted = self._rewriter
        # rows forwarded by this Execute: its count when it has no tag (a suspended
        # portal, one stopped at its limit)
        forwarded = counted.take_forwarded() if type(counted) is RowLimiter else 0
        if self._counting is not None:
            self._counting = None
            forwarded = self._counted_rows(entry, tag)
        if counted is not None:
            self._rewriter = None
            self._copy_out = False
            self.full = False
        rec = entry[2]
        limit = self._limit
        if limit is not None and limit.entry is entry:
            limit.finished = True
            if limit.hit:
                # It finished before the cancel took effect: fail it for the client,
                # and make the server fail the batch too (its answer is not shown).
                if rec is not None:
                    rec.rows += forwarded
                    self._finish(rec, limit.refusal.sqlstate)
                limit.silent = True
                self._inject_silent(SILENT_PARSE)
                return self._limit_error()
            self._maybe_release()
        if rec is not None:
            if tag:
                rec.tags.append(tag)
            # a suspended portal's tag counts nothing: the rows it forwarded do
            rec.rows += max(row_count(tag) if tag else 0, forwarded)
            self._finish(rec)
        return None

    def _counted_rows(self, entry: Entry, tag: str) -> int:
        """The rows a counted Execute returned, from how it ended; a portal that goes on
        (suspended) keeps them, for the limit of its later Executes."""
        if tag == "suspended":
            rows = int(entry[3])  # PortalSuspended: exactly the Execute's row count
        elif tag:
            rows = row_count(tag)
        else:
            return 0  # EmptyQueryResponse
        state = self._portal_state.get(entry[1])
        if state is None and tag == "suspended":
            state = self._plan_state(entry[1])
        if state is not None:
            state.rows += rows
        return rows

    def _limited(
        self, entry: Entry, verdict: Allow | None, inner: RowRewriter | None, rows: int = 0
    ) -> RowRewriter | None:
        """``inner`` wrapped in a row counter when ``verdict`` has a row limit that
        this result may reach (``rows``: returned by the portal's earlier Executes)."""
        if verdict is None or not verdict.max_rows:
            return inner
        if entry[0] == QUERY and _counted(verdict, 0, 0) is not None:
            return inner  # counted from its command tags (see query_sent)
        return RowLimiter(inner, verdict.max_rows, self._on_limit_hit, rows)  # type: ignore[return-value]

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
        head = queue.popleft()
        kept: list[Entry] = []
        ended = False
        while queue:
            entry = queue.popleft()
            if entry[0] == COPY_END:
                kept.append(entry)
                kept.extend(queue)
                queue.clear()
                ended = True
                break
            if entry[0] == SYNC:
                self.sent_cycles -= 1
                continue
            kept.append(entry)
        queue.append(head)
        queue.extend(kept)
        self._copy_in_open = not ended

    def _on_copy_out(self, entry: Entry, body: bytes) -> None:
        verdict: Allow | None
        if entry[0] == QUERY:
            verdict = entry[1]
        else:
            p = self._portals.get(entry[1])
            verdict = None
            if p is not None:
                verdict = p[1] if p[1] is not None else p[0].verdict if p[0] else None
        if verdict is None:
            return
        inner = verdict.plan.copy_out(self.info, body) if verdict.plan is not None else None
        rewriter = inner if self._counting is not None else self._limited(entry, verdict, inner)
        if rewriter is not None:
            self._copy_out = True
            self._set_rewriter(rewriter)
