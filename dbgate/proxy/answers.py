"""The server's answers in the statement tracker: the half of
:class:`~dbgate.proxy.tracker.StatementTracker` that matches each message the server
sends to the client message that caused it (the head of the in-flight queue), and
makes the transitions its answers call for: rows rewritten or stopped at a limit, a
cycle ended; how each message ended (failed, confirmed, completed, its rows counted)
is :mod:`dbgate.proxy.outcomes`.

A mixin, like :mod:`dbgate.proxy.measured`, because it is the same object's
bookkeeping: it reads and changes the queue the client side fills. The client side
(what the client sends, judged and forwarded) stays in :mod:`dbgate.proxy.tracker`.
"""

from __future__ import annotations

import logging

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
    KIND_NAMES,
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
    Entry,
)
from dbgate.proxy.outcomes import StatementOutcomes
from dbgate.proxy.row_limit import RowLimiter, rewrite_run
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

__all__ = ["ServerAnswers", "TrackerDesync"]


class TrackerDesync(ServerProtocolError):
    """The server sent something that does not answer the message dbgate expected.

    dbgate's picture of the session can no longer be trusted, so the session ends.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, sqlstate=sqlstate.PROTOCOL_VIOLATION)


class ServerAnswers(StatementOutcomes):
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
        epochs = self._epochs
        if (
            not self._watch
            and epochs is not None
            and epochs.schema_epoch != self._flight_epoch
            and len(queue) > self._markers
        ):
            # the schema or the PII catalog moved on while statements judged before it
            # are in flight: their portals are followed from here on, and their rows
            # run under the stale verdict (_start_execute); a portal bound before,
            # never followed, is refused at its next Execute (StatementTracker._untracked)
            self._watch = True
            if self._bound_since is None:
                self._bound_since = set()
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
                    # no plans: the verdict has none (and it is not stale: a schema
                    # epoch moved with statements in flight left this loop above)
                    if kind == QUERY:
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
                        epochs = self._epochs
                        if epochs is None or epochs.schema_epoch == self._flight_epoch:
                            continue
                        # the schema or the PII catalog moved on since it was judged:
                        # its rows under the stale verdict (_on_row_description)
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
                if new is None:
                    replacement = b""  # dropped by the filter
                elif new == body:
                    continue
                else:
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
            self._open_plan_portal = False
            if self._portals:
                self._portals.clear()
                self._portal_state.clear()
                self._portal_epochs.clear()
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
