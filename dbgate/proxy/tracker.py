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

One object, one module per job; each of the others gives it one mixin, since they all
work on the same queue and books:

=======================  ===============================================================
``tracker``              :class:`StatementTracker`: its state, the client's chunks
                         (``client_chunk``: judge, remember, park, forward), what waits
                         for a verdict (``resume``), the inspector and quick Bind judges
``client_messages``      an allowed message on its way upstream (the ``*_sent``
                         transitions), pings, injected refusals (``refuse``), portals'
                         row limits as the client sees them
``answers``              the server's answers, one ``_on_*`` per message type
``measured``             measured writes (``Allow.max_changes``)
``statement_events``     statement records and the observer's events
=======================  ===============================================================

What both sides ask of a portal's verdict is in :mod:`dbgate.proxy.portals`, the
message types and entry kinds they use in :mod:`dbgate.proxy.entries`. Nothing here
does I/O: the relay writes what :meth:`refuse` returns and what :meth:`server_chunk`
returns.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from struct import unpack_from
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from dbgate.proxy import measure
from dbgate.proxy.answers import ServerAnswers, TrackerDesync
from dbgate.proxy.client_messages import ClientMessages, KnownStatement
from dbgate.proxy.copy_in import CopyInCheck
from dbgate.proxy.entries import (
    BIND,
    BIND_MSG,
    CLIENT_TYPES,
    CLIENT_TYPES_COPY,
    CLOSE_MSG,
    COPY_DATA,
    COPY_DONE_MSG,
    COPY_FAIL_MSG,
    DESCRIBE_MSG,
    DESCRIBE_P,
    DESCRIBE_S,
    DESCRIBE_UNNAMED_PORTAL,
    EXECUTE,
    EXECUTE_MSG,
    FLUSH_MSG,
    FUNCTION_MSG,
    MAX_IN_FLIGHT,
    MEMO_MAX_AGE_SECONDS,
    MEMO_MAX_ENTRIES,
    MEMO_MAX_MESSAGE,
    PARSE_MSG,
    QUERY_MSG,
    SYNC_ENTRY,
    SYNC_MSG,
    TERMINATE_MSG,
    TRACK_TYPES,
    TRACK_WITH_MESSAGES,
    Entry,
    bind_names,
    expand_formats,
    rewritten_message,
)
from dbgate.proxy.measured import MeasuredWrites
from dbgate.proxy.outcomes import NOT_SENT_IN_FAILED_BATCH
from dbgate.proxy.portals import (
    PortalState,
    declared_cursors,
    for_every_candidate,
)
from dbgate.proxy.prepared import name_key
from dbgate.proxy.seams import (
    STATEMENT_EVENTS,
    Allow,
    AllowAll,
    Inspector,
    MessageFilter,
    Observer,
    Refuse,
    RowRewriter,
    Statement,
    StatementRecord,
)
from dbgate.proxy.statement_events import StatementEvents
from dbgate.wire import messages as m
from dbgate.wire import sqlstate
from dbgate.wire.errors import ClientProtocolError, LimitExceeded, ProtocolError
from dbgate.wire.framing import (
    ALL_TYPES,
    ALL_TYPES_ROW_RUNS,
    LARGE_MESSAGE,
    Frame,
    split_frames,
)

if TYPE_CHECKING:
    from dbgate.proxy.session_info import SessionInfo

log = logging.getLogger("dbgate.session")

__all__ = ["StatementTracker", "TrackerDesync", "Waiting"]


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


#: An Execute of a portal the client never bound (an SQL cursor, a cursor a function
#: opened): see StatementTracker._foreign_portal
FOREIGN_PORTAL = Refuse(
    sqlstate.FEATURE_NOT_SUPPORTED,
    "dbgate: Execute runs only portals bound with Bind in this session; an SQL cursor "
    "(DECLARE) is read with FETCH",
)
UNTRACKED_PORTAL = Refuse(
    sqlstate.INSUFFICIENT_PRIVILEGE,
    "dbgate: this portal was bound before the schema or the PII catalog changed, and "
    "what it returns can no longer be judged; bind it again (or end the transaction)",
)
#: Named portals and cursor names remembered per session
MAX_BOUND_PORTALS = 10_000
#: Names a failed batch's dropped Parses and Binds may leave, up to its Sync (an
#: Execute of a name past them is recorded with its text unknown)
MAX_SKIPPED = 1_000
#: PostgreSQL compares portal names by their first NAMEDATALEN - 1 bytes
NAME_BYTES = 63
_DECLARE = re.compile(rb"declare", re.IGNORECASE)

#: A message of an open measured batch that could take its changes out of the
#: measurement (see StatementTracker._outside_measurement)
OUTSIDE_MEASUREMENT = Refuse(
    sqlstate.FEATURE_NOT_SUPPORTED,
    "dbgate: this batch runs a write measured against its change limit; a statement "
    "that ends or acts on the transaction (COMMIT, ROLLBACK, SAVEPOINT ...), a simple "
    "Query, or an Execute of a portal bound before the batch cannot run inside it",
    hint="send it in a batch of its own, after this one's Sync",
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


def _no_room() -> None:
    return None


class Waiting(NamedTuple):
    """A statement whose verdict is awaited, and what the relay must keep meanwhile."""

    verdict: Awaitable[Allow | Refuse]
    message_type: int
    message: bytes  # the whole message, to forward if allowed
    statement: Statement
    record: StatementRecord | None
    body: bytes
    rest: bytes  # what followed it in the same read


class StatementTracker(ServerAnswers, MeasuredWrites, ClientMessages, StatementEvents):
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
        # While strict, an Execute waits for what this returns, when not None (the
        # audit queue is full: see Inspector in seams.py).
        self._execute_room: Callable[[], Awaitable[Allow | Refuse] | None] = getattr(
            self.inspector, "execute_room", _no_room
        )
        self.observer = observer
        # The observer's method per statement event it hears (``Observer.ignores``: the
        # events it does nothing with are not called at all); a fan-out names the one
        # observer that hears an event, when only one does (FanOut.listener).
        ignored: frozenset[str] = getattr(observer, "ignores", frozenset())
        listener = getattr(observer, "listener", None)
        self._hearing: dict[str, Callable[[SessionInfo, StatementRecord], None]] = (
            {}
            if observer is None
            else {
                e: listener(e) if listener is not None else getattr(observer, e)
                for e in STATEMENT_EVENTS
                if e not in ignored
            }
        )
        #: What a followed statement's answer tells, found once (once per statement):
        #: the observer's listener of its end, and whether anyone hears an Execute's
        #: record received, or decided and forwarded when its portal is known.
        self._tell_completed = self._hearing.get("statement_completed")
        self._tell_received = "statement_received" in self._hearing
        self._tell_started = (
            "statement_decided" in self._hearing or "statement_forwarded" in self._hearing
        )
        #: ``Observer.follows``: which statements the observer wants told of past their
        #: decision (None: every statement). The others' records end at their decision,
        #: and an Execute is recorded only once a followed statement was prepared, so a
        #: session whose statements nobody follows keeps the lean answer loop.
        self._follows: Callable[[SessionInfo, Allow], bool] | None = getattr(
            observer, "follows", None
        )
        #: Executes get records (their statements may be followed)
        self._exec_records = observer is not None and self._follows is None
        #: ``Observer.executes_only``: an allowed Parse or Bind gets no record of its
        #: own (what runs is recorded by its Executes).
        self._executes_only = bool(getattr(observer, "executes_only", False))
        #: A statement's record starts when it is received (else at its decision, and
        #: only when it is followed): someone hears it received or decided.
        self._early = observer is not None and (
            (self._follows is None and not self._executes_only)
            or "statement_received" in self._hearing
            or "statement_decided" in self._hearing
        )
        #: ``Observer.verdict_given``: told of each decision without a record
        self._verdict_given: Callable[[SessionInfo, str, Allow | Refuse, bool], None] | None = (
            getattr(observer, "verdict_given", None)
        )
        self.message_filter = message_filter
        #: The filter's look at the client's COPY FROM STDIN data, if it has one: the
        #: relay then hands this tracker every CopyData (:attr:`client_types`).
        copy_in = getattr(message_filter, "copy_in", None)
        self._copy_check: CopyInCheck | None = (
            None if copy_in is None else CopyInCheck(lambda data: copy_in(info, data))
        )
        #: The message types the relay must hand :meth:`client_chunk`.
        self.client_types = CLIENT_TYPES if self._copy_check is None else CLIENT_TYPES_COPY
        # Repeatable verdicts (Allow.repeatable), by message body: drivers re-send the
        # same Parse (unnamed, $n parameters) or BEGIN/COMMIT for every transaction,
        # and skipping the decode and the inspector for them is most of the relay's
        # per-statement work. Bounded in entries, message size and age; forgotten on any
        # ParameterStatus, by SessionInfo.forget_verdicts() and when the inspector's
        # ``generation`` changes (see Inspector in seams.py).
        self._memo: dict[bytes, tuple[Statement, Allow, KnownStatement | None]] = {}
        self._memo_since = 0.0  # when the oldest verdict remembered was (MEMO_MAX_AGE_SECONDS)
        info._forget = self._memo.clear
        info._catch_up = self._catch_up
        self._generations = self.inspector if hasattr(self.inspector, "generation") else None
        self._memo_generation = getattr(self.inspector, "generation", 0)
        #: The inspector's ``schema_epoch`` (changes of the schema begun) when the
        #: oldest statement in flight was judged: a result that arrives once it moved
        #: on may be of a statement the server parsed after a change its verdict knew
        #: nothing of (``_stale_verdict``)
        self._epochs = self.inspector if hasattr(self.inspector, "schema_epoch") else None
        self._flight_epoch = getattr(self.inspector, "schema_epoch", 0)
        self._stale: Allow | None = None
        #: A statement waits for an awaitable verdict (see :meth:`client_chunk`).
        self.waiting: Waiting | None = None
        #: The refusal of the next Execute: its wait for room ended in one (resume).
        self._halt_once: Refuse | None = None
        #: The client sent Terminate.
        self.terminating = False
        self._queue: deque[Entry] = deque()
        self._markers = 0  # COPY_END entries in the queue
        self.sent_cycles = 0  # Query/FunctionCall/Sync sent that the server will answer
        self.done_cycles = 0  # ReadyForQuery received
        #: The client's messages are dropped until its next Sync (after a refusal).
        self.skip_until_sync = False
        #: The SQLSTATE of the batch that failed, while its messages are dropped
        self._skip_code = ""
        #: What the dropped Parses and Binds of that batch meant to prepare ("S" + name
        #: key: text) and bind ("P" + portal: text and Bind body); None for those of
        #: the refused message itself (its record is the statement's)
        self._skipped: dict[str, Any] = {}
        self._skipped_records = 0  # statements of that batch recorded as not sent
        self._copy_in_open = False  # the server copies in and the client has not ended
        self._copy_in = False  # the server is in copy-in mode (since CopyInResponse)
        # Statements and portals as the server confirmed them (ParseComplete,
        # BindComplete): they decide the plan an Execute runs under.
        self._stmts: dict[str, KnownStatement] = {}
        self._portals: dict[str, tuple[KnownStatement | None, Allow | None, bytes]] = {}
        self._portal_state: dict[str, PortalState] = {}  # only portals with a plan
        #: The inspector's ``schema_epoch`` when each portal was bound: an Execute
        #: after it moved on (DDL, a PII catalog reload) resumes a portal whose verdict
        #: was the old catalog's and schema's (:meth:`_portal_stale`)
        self._portal_epochs: dict[str, int] = {}
        #: While not None: the portals bound since (names) in a transaction during
        #: which the schema or the PII catalog moved on, portals the relay did not
        #: follow when they were bound (``_untracked``)
        self._bound_since: set[bytes] | None = None
        #: A portal bound under a verdict with a plan or tokens resolved is open in
        #: the server's transaction: what its query says when it is dropped (a plan
        #: auto_explain shows at ExecutorEnd) comes under a later message (the next
        #: Bind of its name, a Query, Close, COMMIT, Sync), so notices are told no
        #: verdict until the session is idle (:meth:`_verdict_of_head`)
        self._open_plan_portal = False
        # what the client prepared last under each name (the text a Bind refers to)
        self._sent_stmts: dict[str, KnownStatement] = {}
        #: A verdict with a result plan was sent in this session: from then on the
        #: relay keeps its portals' statements and descriptions (before, no portal
        #: can run under a plan, so there is nothing to keep).
        self._plans = False
        # Whether Executes need their portal looked up (plans or records)
        self._watch = self._exec_records
        #: Verdicts the observer did not follow (by id): not asked again when a
        #: remembered verdict (or a Bind's quick judge) gives one again, until the
        #: observer follows a statement (which may change its answer: the schema
        #: watch follows everything after DDL until the transaction ends)
        self._unfollowed: dict[int, Allow] = {}
        self._rewriter: RowRewriter | None = None  # for the result now arriving
        self._copy_out = False
        #: The Query with a result plan whose statements are being answered, and how
        #: many of them have completed: which statement a RowDescription is of.
        self._query_entry: Entry | None = None
        self._query_done = 0
        # -- row limits (Allow.max_rows)
        self._limits = False  # a verdict with a row limit was sent in this session
        self._sent_limits: dict[str, Allow] = {}  # portal -> its limited verdict (client view)
        #: portal -> the most rows its Executes sent so far can return (client view);
        #: -1 once one had to be watched row by row (then every later one is)
        self._sent_used: dict[str, int] = {}
        #: portal -> (batch, Bind body, the old portal's limited verdict) of a Bind of
        #: a portal the client view already had, not yet confirmed by the server
        self._rebound: dict[str, tuple[int, bytes, Allow | None]] = {}
        #: Named portals the client bound (their first 63 bytes, as the server compares
        #: them), and the names of SQL cursors it may have declared: an Execute runs
        #: only a portal of the client's own Bind (see :meth:`_foreign_portal`).
        self._bound_portals: set[bytes] = info.portal_names
        self._sql_cursors: set[bytes] = set()
        #: The Execute now answered is counted, not watched: the most rows it can return
        self._counting: int | None = None
        self._limit: _Limit | None = None  # the limited statement in progress
        self._dropping = False  # drop the server's messages until ReadyForQuery
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
        #: An Execute was sent in the open batch. A batch that only prepared (Parse,
        #: Describe, Close: asyncpg's prepare ends with a Flush, not a Sync) changed
        #: nothing a measured Query's set-up could commit or undo with it.
        self._batch_ran = False
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
        # while strict, an Execute too may have to be refused (the audit unavailable):
        # resuming a portal bound before runs a statement of its own
        halt = getattr(strictness, "execute_refusal", None) if strict else None
        # an Execute that waited for room and whose wait ended in a refusal (resume)
        halt_once = self._halt_once
        generations = self._generations
        if generations is not None and generations.generation != self._memo_generation:  # type: ignore[attr-defined]
            self._catch_up()
        epochs = self._epochs
        if epochs is not None:
            epoch = epochs.schema_epoch  # type: ignore[attr-defined]
            idle = len(queue) == self._markers  # nothing in flight
            if self._bound_since is not None or (epoch != self._flight_epoch and not self._watch):
                self._untracked(epoch, idle)
            if idle:
                self._flight_epoch = epoch
                self._stale = None
        if memo and time.monotonic() - self._memo_since > MEMO_MAX_AGE_SECONDS:
            memo.clear()
        observed = self.observer is not None
        early = self._early
        for t, s, e in frames:
            hdr = s - 5
            if self._measure is not None and self._measure.open:
                self._measure.client_message(t, chunk[hdr:e], self.in_flight)
                if self._measure.batch and not self.skip_until_sync:
                    refusal = self._outside_measurement(t, chunk, s, e)
                    if refusal is not None:
                        kind = "query" if t == QUERY_MSG else "parse"
                        out = self._refused_here(out, chunk, fwd, hdr, kind, refusal, t)
                        fwd = e
                        if t != QUERY_MSG and not full:
                            return self._rest_message_by_message(chunk, e, out)
                        continue
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
                    if observed:
                        self._not_sent(t, chunk, s, e)
                continue
            if t == SYNC_MSG:
                self.skip_until_sync = False
                if not self._copy_in_open:
                    self.sent_cycles += 1
                    queue.append(SYNC_ENTRY)
                    self._batch_open = self._batch_ran = False
                if self._approved:
                    self._approved.clear()  # a re-sent batch ends here
                if self._measure is not None and self._measure.batch:
                    return self._end_measured_batch(chunk, e, out, fwd)
                continue
            if t == EXECUTE_MSG:
                if chunk[s] and self._foreign_portal(chunk, s, e):
                    out = self._refused_here(out, chunk, fwd, hdr, "execute", FOREIGN_PORTAL, t)
                    fwd = e
                    if not full:
                        return self._rest_message_by_message(chunk, e, out)
                    continue
                if self._bound_since is not None and self._unfollowed_portal(
                    chunk[s : chunk.find(b"\0", s, e)]
                ):
                    out = self._refused_here(out, chunk, fwd, hdr, "execute", UNTRACKED_PORTAL, t)
                    fwd = e
                    if not full:
                        return self._rest_message_by_message(chunk, e, out)
                    continue
                if halt is not None or halt_once is not None:
                    refusal = halt_once if halt_once is not None else halt
                    self._halt_once = halt_once = None
                    name = m.parse_execute(chunk[s:e])[0]
                    held = self._portals.get(name)
                    sql = held[0].sql if held is not None and held[0] is not None else ""
                    out = self._refused_here(out, chunk, fwd, hdr, "execute", refusal, t, sql)  # type: ignore[arg-type]
                    fwd = e
                    if not full:
                        return self._rest_message_by_message(chunk, e, out)
                    continue
                # (not inside a measured batch, which has read this message already)
                if strict and (self._measure is None or not self._measure.open):
                    room = self._execute_room()
                    if room is not None:
                        # The audit queue is full: a portal's next rows wait for room
                        # too. The Execute is parked with what follows it, and read
                        # again from the client's stream once there is room (resume).
                        if out is None:
                            out = []
                        if hdr > fwd:
                            out.append(chunk[fwd:hdr])
                        name = m.parse_execute(chunk[s:e])[0]
                        held = self._portals.get(name)
                        sql = held[0].sql if held is not None and held[0] is not None else ""
                        waited = Statement("execute", sql, portal=name)  # type: ignore[arg-type]
                        self.waiting = Waiting(room, t, b"", waited, None, b"", chunk[hdr:])
                        return out
                self._batch_open = self._batch_ran = True
                portal = "" if e - s == 5 and chunk[s] == 0 else m.parse_execute(chunk[s:e])[0]
                rec = self._record("execute", "", portal=portal) if self._exec_records else None
                if rec is not None:  # its row count: what a PortalSuspended returned
                    rec.fetch = unpack_from("!i", chunk, e - 4)[0]
                if self._rebound and portal in self._rebound:
                    self._ambiguous_portal(portal)
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
                if _DECLARE.search(chunk, s, e) is not None:
                    self._declared(m.parse_query(chunk, s, e))
                body = _query_part(chunk, s, e)
                hit = memo.get(body) if memo and e - s <= MEMO_MAX_MESSAGE else None
                if hit is not None and hit[0].kind == "query":
                    rec = None
                    if observed:
                        if early:
                            rec = self._record("query", hit[0].sql)
                        rec = self._decision(t, hit[0], rec, hit[1], True)
                    self.query_sent(rec, hit[1])
                    if self.blocked:
                        return self._stop_at(chunk, e, out, fwd)
                    continue
                stmt = Statement("query", m.parse_query(chunk, s, e))
            elif t == PARSE_MSG:
                body = chunk[s:e]
                if _DECLARE.search(chunk, s, e) is not None:
                    self._declared(m.parse_parse(body)[1])
                hit = memo.get(body) if memo and e - s <= MEMO_MAX_MESSAGE else None
                if hit is not None and hit[0].kind == "parse":
                    rec = None
                    if observed:
                        if early:
                            rec = self._record("parse", hit[0].sql, hit[0].statement_name)
                        rec = self._decision(t, hit[0], rec, hit[1], True)
                    self.parse_sent(rec, hit[0].statement_name, hit[2])  # type: ignore[arg-type]
                    continue
                name, sql, types = m.parse_parse(body)
                stmt = Statement("parse", sql, statement_name=name, param_types=types)
            elif t == BIND_MSG:
                body = chunk[s:e]
                if chunk[s]:  # a named portal (the unnamed one is b"")
                    self._bound(chunk, s, e)
                if self._bound_since is not None:
                    self._bound_since.add(chunk[s : chunk.find(b"\0", s, e)][:NAME_BYTES])
                if not (strict or self.inspect_binds):
                    statements = self.info.statements
                    checked = statements.checked  # keys
                    if not checked and not self._limits:
                        # nothing to check or limit: its names are not even read
                        queue.append((BIND, body, None, None))
                        self._batch_open = True
                        continue
                    portal, name = bind_names(body)  # read once: checks, limit, verdict
                    name = name_key(name)
                    if (
                        name not in checked
                        # checked only for PII tokens to resolve, and none is in it
                        or (
                            body.find(b"tok_") < 0
                            and (
                                name in statements.tokens_only
                                or statements.tokens_only_in(name, self.sent_cycles + 1)
                            )
                        )
                    ):
                        if self._limits:
                            self._note_portal_limit(portal, name, body)
                            # its names go with it (see _bind_done)
                            queue.append((BIND, body, None, None, portal, name))
                        else:
                            queue.append((BIND, body, None, None))
                        self._batch_open = True
                        continue
                    # A Bind its statement's Parse verdict can judge (a prepared read
                    # under a rows-per-window limit: capped afresh, values unread)
                    recheck = statements.recheck(name, self.sent_cycles + 1)
                    quick = None if recheck is None else self._quick(recheck, body)
                    if quick is not None:
                        if (
                            not self._exec_records
                            and self._follows is not None
                            and self._unfollowed.get(id(quick)) is not quick
                        ):
                            self._quick_followed(quick)
                        self.bind_sent(None, quick, body, (portal, name))
                        continue
                stmt = self._bind_statement(body)
            elif t == CLOSE_MSG:
                self.close_sent(chunk[s:e])
                continue
            elif t == FUNCTION_MSG:
                if e - s < 4:
                    raise ClientProtocolError("FunctionCall message too short")
                stmt = Statement("function_call", "", function_oid=unpack_from("!I", chunk, s)[0])
            elif t == COPY_DATA:
                check = self._copy_check
                if check is None:
                    continue
                refusal = check.data(chunk[s:e])
                if refusal is None:
                    continue
                # Sent instead of this CopyData: the server ends the COPY (its error
                # quotes the reason); what the client sends after it, it ignores.
                if out is None:
                    out = []
                if hdr > fwd:
                    out.append(chunk[fwd:hdr])
                out.append(refusal)
                fwd = e
                if self._measure is not None and self._measure.open:
                    self._measure.client_message(COPY_FAIL_MSG, refusal, self.in_flight)
                if self._copy_ended():
                    return self._stop_at(chunk, e, out, fwd)
                continue
            elif t in (COPY_DONE_MSG, COPY_FAIL_MSG):
                if self._copy_check is not None:
                    self._copy_check.ended()
                if self._copy_ended():
                    return self._stop_at(chunk, e, out, fwd)
                continue
            elif t == TERMINATE_MSG:
                self.terminating = True
                continue
            else:
                continue
            rec = self.received(stmt) if early else None
            verdict = self._inspect(stmt)
            opened = False  # this message opens a measured batch
            if type(verdict) is Allow and (verdict.max_changes or verdict.opens_measurement):
                # A Query is measured at a cycle's start, or after a batch that only
                # prepared (asyncpg: Parse/Describe/Flush, then the Query, no Sync).
                if (
                    t == QUERY_MSG
                    and verdict.max_changes
                    and self._measure is None
                    and not (self._batch_open and self._batch_ran)
                ):
                    if observed:
                        rec = self._decision(t, stmt, rec, verdict)
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
                    rec = self._decision(t, stmt, rec, verdict)
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
                    rec = self._decision(t, stmt, rec, verdict)
                prepared = self._sent(t, rec, stmt, verdict, body)
                if verdict.repeatable and t != BIND_MSG and len(body) <= MEMO_MAX_MESSAGE:
                    if len(memo) >= MEMO_MAX_ENTRIES:
                        memo.clear()
                    if not memo:
                        self._memo_since = time.monotonic()
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
                if observed:
                    rec = self._decision(t, stmt, rec, verdict)
                out.append(self.refuse(rec, verdict, t))
                if self.skip_until_sync and not full:
                    return self._rest_message_by_message(chunk, e, out)
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

    def _catch_up(self) -> None:
        """The inspector's snapshot moved on: the verdicts of statements prepared before
        are the old snapshot's too. The server plans them again when what they read
        changes (a view redefined, a column marked PII), so their Binds are judged
        again, on the new one."""
        generations = self._generations
        if generations is not None and generations.generation != self._memo_generation:  # type: ignore[attr-defined]
            self.info.forget_verdicts()
            self._memo_generation = generations.generation  # type: ignore[attr-defined]

    def _copy_ended(self) -> bool:
        """The COPY's data ended (the client's CopyDone or CopyFail, or dbgate's
        CopyFail); True when a measured COPY must now wait again for its decision (a
        batch waits at its Sync, which follows)."""
        self.copy_end_sent()
        measured = self._measure
        if measured is not None and measured.copying:
            measured.copying = False
            if not measured.batch:
                self.blocked = True
                return True
        return False

    def _untracked(self, epoch: int, idle: bool) -> None:
        """Asked at each client chunk while the relay does not follow portals (no
        verdict so far needed it: no plan, no limit, no record). When the schema or the
        PII catalog moved on since the last time nothing was in flight, a portal bound
        before that may be open in the transaction, and resumed it would run under a
        verdict taken on what no longer holds — a column marked since came back raw —
        with no description to tokenize its rows by: its Executes are refused
        (:data:`UNTRACKED_PORTAL`) until the transaction is over; portals bound from
        then on run as ever."""
        if self._bound_since is not None:
            if idle and self.info.transaction_status == "I":
                self._bound_since = None  # its portals ended with it
            return
        if epoch != self._flight_epoch and not (idle and self.info.transaction_status == "I"):
            self._bound_since = set()

    def _unfollowed_portal(self, name: bytes) -> bool:
        """Whether an Execute's portal ``name`` may be one bound while the relay did
        not follow portals: neither bound since (``_bound_since``) nor followed."""
        assert self._bound_since is not None
        return (
            name[:NAME_BYTES] not in self._bound_since
            and name.decode("utf-8", "surrogateescape") not in self._portals
        )

    def _bound(self, chunk: bytes, s: int, e: int) -> None:
        """A Bind of a named portal (``chunk[s:e]`` is its body)."""
        i = chunk.find(b"\0", s, e)
        if i > s:
            names = self._bound_portals
            if len(names) >= MAX_BOUND_PORTALS:
                names.clear()  # their Executes are refused: stricter, never wider
                self.info.portals_lost = True  # and any FETCH may run one
            names.add(chunk[s:i][:NAME_BYTES])

    def _declared(self, sql: str) -> None:
        """A Query or Parse whose text may declare SQL cursors: their names."""
        names = self._sql_cursors
        if len(names) >= MAX_BOUND_PORTALS:
            names.clear()
        names.update(n.encode("utf-8")[:NAME_BYTES] for n in declared_cursors(sql))

    def _refused_here(
        self,
        out: list[bytes] | None,
        chunk: bytes,
        fwd: int,
        hdr: int,
        kind: str,
        refusal: Refuse,
        t: int,
        sql: str = "",
    ) -> list[bytes]:
        """A message refused in the middle of a read: what came before it is
        forwarded, the message itself is replaced by its refusal (recorded for the
        observers, with ``sql`` when known). The caller moves its forwarding mark
        past the message."""
        if out is None:
            out = []
        if hdr > fwd:
            out.append(chunk[fwd:hdr])
        rec = None
        if self.observer is not None:
            rec = self._record(kind, sql)  # type: ignore[arg-type]
            self.decided(rec, refusal)
        out.append(self.refuse(rec, refusal, t))
        return out

    def _foreign_portal(self, chunk: bytes, s: int, e: int) -> bool:
        """Whether an Execute names a portal the client did not bind: an SQL cursor
        (``DECLARE c CURSOR ...``) or one a function opened. SQL cursors and protocol
        portals share one namespace, so ``Execute "c"`` would run a cursor the gate
        judged only for its ``FETCH``es: outside their row limits, their windows and
        the PII plan of its results."""
        i = chunk.find(b"\0", s, e)
        if i < 0:
            return True
        name = chunk[s:i][:NAME_BYTES]
        return name not in self._bound_portals or name in self._sql_cursors

    def _outside_measurement(self, t: int, chunk: bytes, s: int, e: int) -> Refuse | None:
        """A message of an open measured batch that could take its changes out of
        dbgate's hands, refused before it runs: a statement that ends or acts on the
        transaction block (``COMMIT`` would keep the changes before they are counted,
        ``ROLLBACK`` end the block dbgate undoes them in) — parsed, bound or run
        through a portal bound before the batch — and any simple Query (a string of
        any statements, amid the batch). See :mod:`dbgate.proxy.measure`."""
        if t == QUERY_MSG:
            return OUTSIDE_MEASUREMENT
        if t == PARSE_MSG:
            i = chunk.find(b"\0", s, e)
            j = chunk.find(b"\0", i + 1, e) if i >= 0 else -1
            if j < 0 or measure.acts_on_block(chunk[i + 1 : j]):
                return OUTSIDE_MEASUREMENT
            return None
        if t == BIND_MSG:
            _portal, name = bind_names(chunk[s:e])
            cands = self.info.statements.candidates(name, self.sent_cycles + 1)
            if any(c.lost or measure.acts_on_block(c.sql) for c in cands):
                return OUTSIDE_MEASUREMENT
            sent = self._sent_stmts.get(name_key(name))
            if sent is not None and measure.acts_on_block(sent.sql):
                return OUTSIDE_MEASUREMENT
            return None
        if t == EXECUTE_MSG:
            i = chunk.find(b"\0", s, e)
            if i < 0 or chunk[s:i] not in self._measure.bound_here:  # type: ignore[union-attr]
                return OUTSIDE_MEASUREMENT
        return None

    def _rest_message_by_message(self, chunk: bytes, e: int, out: list[bytes]) -> list[bytes]:
        """After a refusal that makes the server skip to Sync: the rest of this read
        (from ``e``), split message by message, follows ``out``."""
        rest = chunk[e:]
        if rest:
            more = self.client_chunk(rest, split_frames(rest), True)
            out.extend(more if more is not None else (rest,))
        return out

    def _not_sent(self, t: int, chunk: bytes, s: int, e: int) -> None:
        """A message of a batch that failed (refused, or failed by the server before
        the client sent it), dropped on the way to the client's Sync — the server would
        skip it. A statement among them (an Execute, a Query, a FunctionCall) reached
        dbgate and never ran: it is recorded refused, with the text its Parse and Bind
        meant and the batch's SQLSTATE. What the refused message itself prepared or
        bound has the refusal's record already."""
        skipped = self._skipped
        try:
            if t == PARSE_MSG:
                name, sql, _types = m.parse_parse(chunk[s:e])
                if len(skipped) < MAX_SKIPPED:
                    skipped["S" + name_key(name)] = sql
                return
            if t == BIND_MSG:
                body = chunk[s:e]
                portal, name = bind_names(body)
                key = "S" + name_key(name)
                if key in skipped:
                    sql = skipped[key]
                else:
                    known = self._stmts.get(name_key(name))
                    sql = known.sql if known is not None else ""
                if len(skipped) < MAX_SKIPPED:
                    skipped["P" + portal] = None if sql is None else (sql, body)
                return
            if t == EXECUTE_MSG:
                if not self._exec_records:
                    return
                portal = m.parse_execute(chunk[s:e])[0]
                key = "P" + portal
                if key in skipped:
                    bound = skipped[key]
                    if bound is None:
                        return  # a portal of the refused message's: recorded with it
                    sql, bind = bound
                else:
                    held = self._portals.get(portal)
                    sql = held[0].sql if held is not None and held[0] is not None else ""
                    bind = held[2] if held is not None else b""
                rec = self._record("execute", sql, portal=portal)
                if bind:
                    rec.bound_by(bind)
            elif t == QUERY_MSG:
                rec = self._record("query", m.parse_query(chunk, s, e))
            elif t == FUNCTION_MSG:
                rec = self._record("function_call", "")
            else:
                return
        except ProtocolError:
            return  # malformed: the server would not have read it either
        self._skipped_records += 1
        if self._skipped_records > MAX_IN_FLIGHT:
            # as many as may be in flight: each has a record, kept in memory until
            # the audit writes it, so no more than pipelining may leave
            raise LimitExceeded(
                f"more than {MAX_IN_FLIGHT} statements sent after their batch failed, "
                "without a Sync"
            )
        rec.verdict = NOT_SENT_IN_FAILED_BATCH
        self._finish(rec, self._skip_code, skipped=True)

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
        if waiting.message_type == EXECUTE_MSG:
            # An Execute that waited for room in the audit queue: it leads what the
            # client sent after it, read again now; refused if its wait was (unless
            # the server skips it anyway: an earlier message of its batch failed).
            if type(verdict) is not Allow and not self.skip_until_sync:
                self._halt_once = (
                    verdict
                    if isinstance(verdict, Refuse)
                    else Refuse(
                        sqlstate.INTERNAL_ERROR,
                        "dbgate: inspector returned no verdict; statement not run",
                    )
                )
            return b""
        epochs = self._epochs
        if epochs is not None and len(self._queue) == self._markers:
            # judged just now (after a reload it waited for, or an approval): the
            # oldest statement in flight from here on
            self._flight_epoch = epochs.schema_epoch  # type: ignore[attr-defined]
            self._stale = None
        if not isinstance(verdict, (Allow, Refuse)):
            verdict = Refuse(
                sqlstate.INTERNAL_ERROR, "dbgate: inspector returned no verdict; statement not run"
            )
        rec = waiting.record
        if self.observer is not None:
            rec = self._decision(waiting.message_type, waiting.statement, rec, verdict)
        if self.skip_until_sync:
            # An earlier message of its batch failed meanwhile: the server would skip
            # this one, so it is not sent at all.
            if rec is not None:
                self._finish(rec, "", skipped=True)
            return b""
        setup = b""
        if isinstance(verdict, Allow) and (verdict.max_changes or verdict.opens_measurement):
            t = waiting.message_type
            if (
                t == QUERY_MSG
                and verdict.max_changes
                and self._measure is None
                and not (self._batch_open and self._batch_ran)
            ):
                message = rewritten_message(t, waiting.body, verdict)
                return self._measured_query(rec, verdict, message)
            setup, unmeasured = self._measured_extended(
                t, waiting.body, waiting.statement.sql, verdict
            )
            if setup:
                self._measure.client_message(t, waiting.message, 0)  # type: ignore[union-attr]
            if not isinstance(unmeasured, (Allow, Refuse)):
                # decided by over_changes(-1), awaited in turn
                self.waiting = waiting._replace(verdict=unmeasured, record=rec)
                return b""
            verdict = unmeasured
        if isinstance(verdict, Refuse):
            return self.refuse(rec, verdict, waiting.message_type)
        self._sent(waiting.message_type, rec, waiting.statement, verdict, waiting.body)
        if verdict.replace_sql is not None or verdict.replace_params is not None:
            return setup + rewritten_message(waiting.message_type, waiting.body, verdict)
        return setup + waiting.message if setup else waiting.message

    def _inspect(self, stmt: Statement) -> Allow | Refuse | Awaitable[Allow | Refuse]:
        try:
            verdict = self.inspector.inspect(self.info, stmt)
            if stmt.candidates:
                return for_every_candidate(stmt, verdict)
            return verdict
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

    def _quick_followed(self, verdict: Allow) -> None:
        """A Bind judged quickly gets no record, but its Executes do when the observer
        follows its verdict (as for a Bind the inspector judged)."""
        try:
            followed = self._follows(self.info, verdict)  # type: ignore[misc]
        except Exception:
            log.exception("session %s: observer failed on follows", self.info.session_id)
            followed = True  # told too much rather than too little
        if followed:
            self._exec_records = self._watch = True
            self._unfollowed.clear()
        else:
            self._not_followed(verdict)  # a quick judge often gives the same one again

    def _not_followed(self, verdict: Allow) -> None:
        unfollowed = self._unfollowed
        if len(unfollowed) >= 16:
            unfollowed.clear()
        unfollowed[id(verdict)] = verdict  # kept alive: its id stays its own

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
