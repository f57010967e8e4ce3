"""The server's answers in the statement tracker: the half of
:class:`~dbgate.proxy.tracker.StatementTracker` that matches each message the server
sends to the client message that caused it (the head of the in-flight queue), and
makes the transitions its answers call for: a statement completed or failed, a
prepared statement or portal confirmed, rows counted, rewritten or stopped at a
limit, a cycle ended.

A mixin, like :mod:`dbgate.proxy.measured`, because it is the same object's
bookkeeping: it reads and changes the queue the client side fills. The client side
(what the client sends, judged and forwarded) stays in :mod:`dbgate.proxy.tracker`.
"""

from __future__ import annotations

import logging
import time
from struct import unpack_from

from dbgate.proxy.entries import (
    BIND,
    BIND_OK,
    CLOSE,
    CLOSE_OK,
    CMD_COMPLETE,
    COPY_BOTH,
    COPY_DATA,
    COPY_DONE_SRV,
    COPY_END,
    COPY_IN,
    COPY_OUT,
    DATA_ROW,
    DESCRIBE_P,
    DESCRIBE_S,
    EMPTY_QUERY,
    ENDS_CYCLE,
    ERROR_MSG,
    EXECUTE,
    FUNC_RESULT,
    FUNCTION,
    INJECTED_PARSE,
    INJECTED_QUERY,
    KIND_NAMES,
    MEASURE_COMMIT,
    MEASURE_SETUP,
    MEASURE_SILENT,
    NO_DATA,
    NONCE,
    NOTICE_MSG,
    NOTIFY_MSG,
    PARAM_DESC,
    PARAM_STATUS_MSG,
    PARSE,
    PARSE_OK,
    PING,
    QUERY,
    READY_MSG,
    ROW_DESC,
    SILENT_PARSE,
    SILENT_QUERY,
    STATUS,
    SUSPENDED,
    SYNC,
    U16,
    Entry,
    bind_names,
    command_tag,
    description_formats,
    expand_formats,
    field_count,
    row_count,
    sqlstate_of,
)
from dbgate.proxy.portals import PortalState, countable_rows, refined_verdict
from dbgate.proxy.prepared import name_key
from dbgate.proxy.row_limit import RowLimiter, rewrite_run
from dbgate.proxy.seams import (
    Allow,
    Refuse,
    RowRewriter,
    StatementRecord,
)
from dbgate.wire import messages as m
from dbgate.wire import sqlstate
from dbgate.wire.errors import ServerProtocolError
from dbgate.wire.framing import (
    ALL_TYPES_ROW_RUNS,
    DATA_ROW_RUN,
    Frame,
    split_frames,
)

log = logging.getLogger("dbgate.session")

#: The verdict told to the message filter for a Describe or Close (they read no data)
#: and for what the server says with nothing of the client's in flight.
NOTHING_RUN = Allow()

__all__ = ["ServerAnswers", "TrackerDesync"]


class TrackerDesync(ServerProtocolError):
    """The server sent something that does not answer the message dbgate expected.

    dbgate's picture of the session can no longer be trusted, so the session ends.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, sqlstate=sqlstate.PROTOCOL_VIOLATION)


class ServerAnswers:
    """What the server answers (see the module docstring)."""

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
                        if info.idle_waiters and chunk[s] == 0x49:
                            info.went_idle()
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

    def run_room(self) -> int:
        """How many more DataRows of the current result pass unchanged, whatever they
        hold: the relay's reader may then split a run of them across reads (see
        :class:`~dbgate.wire.framing.FrameReader`). Only a bare row limit leaves
        rows unchanged; 0 while a plan rewrites them, rows are dropped or measured."""
        rw = self._rewriter
        if (
            type(rw) is not RowLimiter
            or rw.inner is not None
            or rw.hit
            or self._dropping
            or self._measures
        ):
            return 0
        return rw.limit - rw.rows

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
                answered = False  # the head is answered: it goes, an Execute after it starts
                if t == READY_MSG:
                    if kind == SYNC or (kind == QUERY and head[2] is None and head[3] is None):
                        queue.popleft()
                        self._ready(chunk[s])
                        if self.full and not full:
                            return self._rest_in_full(chunk, e, out, run)
                        continue
                elif t == CMD_COMPLETE:
                    if kind == EXECUTE:
                        if head[2] is None and self._counting is None:
                            if self._rewriter is not None:
                                self._end_result()
                            answered = True
                        elif self._rewriter is None:
                            # An observed or counted Execute: _execute_done's work for
                            # one whose rows nothing watched (no limiter: nothing
                            # forwarded to add, no limit hit to report).
                            self._executed(head, chunk[s:e])
                            answered = True
                    elif (
                        kind == QUERY
                        and head[2] is None
                        and head[3] is None
                        and head[1].plan is None
                    ):
                        if self._rewriter is not None:
                            self._end_result()
                        continue
                elif t == ROW_DESC:
                    if kind == DESCRIBE_P and not self._plans:
                        answered = True
                    elif kind == QUERY and head[1].plan is None:
                        continue
                elif t == NO_DATA:
                    # libpq describes the portal of every prepared statement it runs:
                    # a write or BEGIN answers NoData
                    answered = kind in (DESCRIBE_P, DESCRIBE_S)
                elif t == BIND_OK:
                    if kind == BIND and head[3] is None:
                        if self._watch:
                            self._bind_done(head, True)
                        answered = True
                elif t == PARSE_OK and kind == PARSE and head[3] is None:
                    # what _parse_done does for a Parse the server took
                    self._stmts[head[1]] = head[2]
                    if head[4] is not None:
                        self._finish(head[4])
                    answered = True
                if answered:
                    queue.popleft()
                    # an Execute pipelined after it (its portal bound before) starts now
                    if self._watch and queue and queue[0][0] == EXECUTE:
                        self._start_execute(queue[0])
                        if self.full and not full:
                            return self._rest_in_full(chunk, e, out, run)
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
                if self.full and not full:
                    # An Execute pipelined after this cycle started under a limiter
                    # or a plan: its rows may follow in this read, which was split
                    # without them.
                    return self._replaced_then_in_full(chunk, s, e, out, run, replacement)
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
                    f.notice(self.info, body, self._verdict_of_head())
                    if t == NOTICE_MSG
                    else f.notification(self.info, body)
                )
                if new == body:
                    continue
                replacement = m.frame(t, new)
            else:
                replacement = self._on_message(t, chunk, s, e)
                if self.full and not full:
                    return self._replaced_then_in_full(chunk, s, e, out, run, replacement)
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

    def _replaced_then_in_full(
        self,
        chunk: bytes,
        s: int,
        e: int,
        out: list[bytes] | None,
        run: int,
        replacement: bytes | None,
    ) -> list[bytes]:
        """The message at ``s``..``e`` answered (``replacement`` in its place, when
        not None) turned rows on: the rest of the read goes through the full loop."""
        if replacement is not None:
            if out is None:
                out = []
            if s - 5 > run:
                out.append(chunk[run : s - 5])
            out.append(replacement)
            run = e
        return self._rest_in_full(chunk, e, out, run)

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
                # the record ends with its cycle: the observer sees the status after it
                # (a schema watch reloads once a COMMIT ended the transaction)
                self.info.transaction_status = STATUS[status]
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
        info = self.info
        info.transaction_status = STATUS[status]
        if status == 0x49:  # 'I': portals end with their transaction
            if self._portals:
                self._portals.clear()
                self._portal_state.clear()
            if info.idle_waiters:
                info.went_idle()
        self._next_cycle()

    def _ping_done(self, status: int) -> None:
        """The ReadyForQuery of a ping: the server's timer is re-armed. Not shown and
        not a cycle; what the client pipelined after the ping starts as after any
        cycle."""
        self._queue.popleft()
        self.pinging = False
        self.info.transaction_status = STATUS[status]
        if status == 0x49 and self.info.idle_waiters:
            self.info.went_idle()
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
            self.fatal_error = (
                body if f is None else f.error(self.info, body, self._verdict_of_head())
            )
        queue = self._queue
        if len(queue) == self._markers:
            # e.g. a FATAL the server sends on its own (idle-in-transaction timeout,
            # terminated by an administrator): about no statement of the client's
            return self._filtered_error(body, NOTHING_RUN)
        entry = self._head(ERROR_MSG)
        kind = entry[0]
        replacement: bytes | None = None
        limit = self._limit
        counted = self._rewriter
        if type(counted) is RowLimiter and kind in (QUERY, EXECUTE) and entry[2] is not None:
            # rows it forwarded before it failed or was stopped (charged to its windows)
            entry[2].rows += counted.take_forwarded()
        elif self._counting is not None or (kind == QUERY and entry[1].max_rows):
            self._chargecountable_rows(entry)
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
            replacement = self._filtered_error(body, self._verdict_of(entry))
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

    def _chargecountable_rows(self, entry: Entry) -> None:
        """A counted statement failed: its rows were not watched, so it is charged the
        most it could have returned (never less than it did)."""
        bound = self._counting
        self._counting = None
        kind = entry[0]
        if kind == QUERY:
            bound = countable_rows(entry[1], 0, 0)
        if bound and kind in (QUERY, EXECUTE) and entry[2] is not None:
            entry[2].rows += bound

    def _filtered_error(self, body: bytes, verdict: Allow | None = None) -> bytes | None:
        f = self.message_filter
        if f is None:
            return None
        new = f.error(self.info, body, verdict)
        return None if new == body else m.frame(ERROR_MSG, new)

    def _verdict_of_head(self) -> Allow | None:
        """:meth:`_verdict_of` the entry the server answers now; :data:`NOTHING_RUN`
        when the client has nothing in flight (the server speaks on its own)."""
        queue = self._queue
        if len(queue) == self._markers:
            return NOTHING_RUN
        for entry in queue:
            if entry[0] != COPY_END:
                return self._verdict_of(entry)
        return None

    def _verdict_of(self, entry: Entry) -> Allow | None:
        """The verdict the message ``entry`` runs under, for the message filter (what
        the server's errors and notices about it may echo); None when not known."""
        kind = entry[0]
        if kind == QUERY:
            return entry[1]  # type: ignore[no-any-return]
        if kind == PARSE:
            return entry[2].verdict  # type: ignore[no-any-return]
        if kind == EXECUTE:
            p = self._portals.get(entry[1])
            if p is None:
                return None
            stmt, bind_verdict, _body = p
            return bind_verdict if bind_verdict is not None else stmt.verdict if stmt else None
        if kind == BIND:
            key = entry[5] if len(entry) == 6 else name_key(bind_names(entry[1])[1])
            stmt = self._sent_stmts.get(key) or self._stmts.get(key)
            parsed = stmt.verdict if stmt is not None else None
            verdict = entry[2]
            if verdict is None:
                return parsed  # type: ignore[no-any-return]
            return verdict if parsed is None else refined_verdict(parsed, verdict)
        if kind in (DESCRIBE_S, DESCRIBE_P, CLOSE):
            return NOTHING_RUN  # names only: nothing of the data is read
        return None

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
        if len(entry) == 6:  # its names were read when it was sent
            _, body, verdict, rec, portal, key = entry
        else:
            _, body, verdict, rec = entry
            portal, stmt_name = bind_names(body)
            key = name_key(stmt_name)
        if ok:
            stmt = self._stmts.get(key)
            if verdict is not None and stmt is not None:
                verdict = refined_verdict(stmt.verdict, verdict)
            self._portals[portal] = (stmt, verdict, body)
            if self._portal_state:
                self._portal_state.pop(portal, None)  # a new portal: plan it afresh
            rebound = self._rebound.get(portal)
            if rebound is not None and rebound[1] is body:
                del self._rebound[portal]  # the client's view is right again
        # A failed (or skipped) Bind leaves the portal of that name as it was: a named
        # one already open makes it fail ("cursor already exists"), and the old
        # portal, its rows counted so far with it, runs on after ROLLBACK TO SAVEPOINT.
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
                # which statement of the string: one CommandComplete ended each before
                done = self._query_done if self._query_entry is entry else 0
                inner = plan.rows(self.info, body, description_formats(body), done)
            self._set_rewriter(self._limited(entry, verdict, inner))
        else:
            raise self._desync(ROW_DESC, entry)

    def _plan_state(self, portal: str) -> PortalState | None:
        """Per-portal state, for portals whose statement has a result plan."""
        state = self._portal_state.get(portal)
        if state is None:
            p = self._portals.get(portal)
            if p is None:
                return None
            verdict = p[1] if p[1] is not None else p[0].verdict if p[0] is not None else None
            if verdict is None or (verdict.plan is None and not verdict.max_rows):
                return None
            state = self._portal_state[portal] = PortalState()
        return state

    def _on_command_complete(self, entry: Entry, body: bytes) -> bytes | None:
        kind = entry[0]
        if kind == EXECUTE:
            rec = entry[2]
            replacement = self._execute_done(
                entry,
                command_tag(body)[0] if rec is not None or self._counting is not None else "",
            )
            self._pop()
            return replacement
        if kind != QUERY:
            raise self._desync(CMD_COMPLETE, entry)
        if self._rewriter is not None:
            self._rewriter = None
            self._copy_out = False
            self.full = False
        if entry[1].plan is not None:
            if self._query_entry is entry:
                self._query_done += 1
            else:
                self._query_entry, self._query_done = entry, 1
        rec = entry[2]
        if rec is not None:  # a session repeats a handful of tags: read once each
            tag, rows = command_tag(body)
            rec.tags.append(tag)
            rec.rows += rows
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
            if self._tell_started:  # only the events someone hears
                self._emit("statement_decided", rec)
                self._emit("statement_forwarded", rec)
        if verdict is None or (verdict.plan is None and not verdict.max_rows):
            return
        fetch = entry[3]
        if fetch is not None:  # the client's view: it cannot reach the limit
            state = self._portal_state.get(portal)
            if state is None or state.rewriter is None:
                bound = countable_rows(verdict, fetch, state.rows if state is not None else 0)
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

    def _executed(self, entry: Entry, body: bytes) -> None:
        """The CommandComplete ``body`` of the Execute at the head, when no row limiter
        watched its rows: what :meth:`_execute_done` does then, in one step (the answer
        of every observed prepared statement comes here); the caller pops it."""
        tag, rows = command_tag(body)
        if self._counting is not None:
            self._counting = None
            if self._portal_state:
                state = self._portal_state.get(entry[1])
                if state is not None:
                    state.rows += rows
        rec = entry[2]
        if rec is not None:
            if tag:
                rec.tags.append(tag)
            rec.rows += rows
            if not rec.finished_at:  # _finish(rec), inlined: once per followed Execute
                rec.finished_at = time.monotonic()
                tell = self._tell_completed
                if tell is not None:
                    try:
                        tell(self.info, rec)
                    except Exception:
                        log.exception(
                            "session %s: observer failed on statement_completed",
                            self.info.session_id,
                        )

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
        if entry[0] == QUERY and countable_rows(verdict, 0, 0) is not None:
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
