"""Measured writes in the statement tracker: the half of
:class:`~dbgate.proxy.tracker.StatementTracker` that runs a write under a savepoint of
dbgate's, holds its answers back, and keeps it or undoes it (see
:mod:`dbgate.proxy.measure` for the protocol, and what the client sees).

A mixin, because it is the same object's bookkeeping: it reads and changes the
tracker's queue, cycles and blocking like every other transition does. It keeps the
tracker's other half (the plain relay of statements) readable on its own.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from dbgate.proxy import measure
from dbgate.proxy.entries import (
    BIND,
    BIND_MSG,
    BIND_OK,
    CLOSE_MSG,
    CLOSE_OK,
    CMD_COMPLETE,
    COPY_DATA,
    COPY_END,
    COPY_IN,
    DATA_ROW,
    ERROR_MSG,
    EXECUTE,
    MEASURE_CLOSE,
    MEASURE_COMMIT,
    MEASURE_SETUP,
    MEASURE_SILENT,
    NOTICE_MSG,
    NOTIFY_MSG,
    PARAM_STATUS_MSG,
    PARSE,
    PARSE_MSG,
    PARSE_OK,
    QUERY,
    QUERY_MSG,
    READY_MSG,
    SAVEPOINT,
    STATUS,
    SUSPENDED,
    SYNC,
    SYNC_FRAME,
    Entry,
    bind_names,
)
from dbgate.proxy.seams import Allow, Refuse, StatementRecord
from dbgate.wire import messages as m
from dbgate.wire.framing import Frame, split_frames

if TYPE_CHECKING:
    from dbgate.proxy.session_info import SessionInfo

log = logging.getLogger("dbgate.session")


async def _settle_later(decision: Awaitable[object]) -> Allow | Refuse:
    return measure.settled(await decision)


class MeasuredWrites:
    """The measured-writes transitions of the statement tracker."""

    # The tracker's state these transitions share (set in its ``__init__``).
    info: SessionInfo
    observer: Any
    blocked: bool
    blocked_rest: bytes
    sent_cycles: int
    done_cycles: int
    measure_waiting: Awaitable[Allow | Refuse] | None
    replay_rest: bytes
    skip_until_sync: bool
    _queue: deque[Entry]
    _markers: int
    _measure: measure.Measurement | None
    _measures: int
    _pending_decision: measure.Measurement | None
    _approved: set[bytes]
    _upstream: list[bytes]
    _batch_open: bool
    _copy_in_open: bool
    _copy_in: bool
    _limit: Any
    _portals: dict[str, Any]
    _portal_state: dict[str, Any]
    _sent_limits: dict[str, Allow]
    _stmts: dict[str, Any]
    _sent_stmts: dict[str, Any]

    if TYPE_CHECKING:  # the tracker's own transitions these call

        def client_chunk(self, chunk: bytes, frames: list[Frame], full: bool) -> Any: ...
        def query_sent(self, rec: StatementRecord | None, verdict: Allow) -> None: ...
        def refuse(self, rec: StatementRecord | None, refusal: Refuse, t: int) -> bytes: ...
        def decided(self, rec: StatementRecord | None, verdict: Allow | Refuse) -> None: ...
        def take_upstream(self) -> bytes: ...
        def _record(self, kind: Any, sql: str) -> StatementRecord: ...
        def _stop_at(self, chunk: bytes, e: int, out: Any, fwd: int) -> list[bytes]: ...
        def _server_frames(self, chunk: bytes, frames: Any, start: int, full: bool) -> Any: ...
        def _filtered_error(self, body: bytes) -> bytes | None: ...

    def _measured_query(self, rec: StatementRecord | None, verdict: Allow, message: bytes) -> bytes:
        """The bytes to send for a Query allowed with ``max_changes``: dbgate's set-up
        and the Query, pipelined. The client's later messages wait for the decision."""
        m_ = measure.Measurement(verdict, message)
        m_.sql = rec.sql if rec is not None else ""
        self.sent_cycles += 1
        self._measures += 1
        self._queue.append((MEASURE_SETUP, m_))
        self.query_sent(rec, replace(verdict, max_rows=0, over_limit=None))
        m_.entry = self._queue[-1]
        self._measure = m_
        self._measures += 1
        self.blocked = True
        return measure.as_query(measure.setup_sql(SAVEPOINT)) + message

    def _measured_extended(
        self, t: int, body: bytes, sql: str, verdict: Allow
    ) -> tuple[bytes, Allow | Refuse | Awaitable[Allow | Refuse]]:
        """An extended-protocol message (or a Query while a batch is measured) allowed
        with ``max_changes`` or ``opens_measurement``: dbgate's set-up to send before
        it when it opens a measured batch (else ``b""``), and its verdict now."""
        if self._approved and body in self._approved:
            self._approved.discard(body)  # a batch approved past its limit, again
            return b"", measure.settled(verdict)
        setup = b""
        if verdict.opens_measurement or (t == BIND_MSG and verdict.max_changes):
            setup = self._open_measured_batch()
        return setup, self._joined(t, body, sql, verdict)

    def _open_measured_batch(self) -> bytes:
        """dbgate's set-up of a measured batch, to send before the client's message
        (a measured Bind, or a Parse that ``opens_measurement``), or ``b""`` when none
        can be opened here: only at the batch's first message, where a Query of
        dbgate's ends nothing of the client's (see :mod:`dbgate.proxy.measure`)."""
        if (
            self._measure is not None
            or self._batch_open
            or self.skip_until_sync
            or self._copy_in_open
            or self._copy_in
            or self.measure_waiting is not None
        ):
            return b""
        m_ = measure.Measurement(None, b"", batch=True)
        self.sent_cycles += 1
        self._measures += 2  # the set-up, and the batch until its ReadyForQuery
        self._queue.append((MEASURE_SETUP, m_))
        self._measure = m_
        return measure.as_batch(measure.setup_sql(SAVEPOINT), SAVEPOINT)

    def _joined(
        self, t: int, body: bytes, sql: str, verdict: Allow
    ) -> Allow | Refuse | Awaitable[Allow | Refuse]:
        """A message allowed with ``max_changes`` (or opening a measurement): a Bind
        in a measured batch is covered by it; anything else with a limit of its own
        is not measured, and decided before it runs."""
        m_ = self._measure
        if t == BIND_MSG and verdict.max_changes and m_ is not None and m_.open:
            m_.covers(verdict, sql)
            m_.portals.add(bind_names(body)[0])
            # Its rows are bounded by what the measurement may hold back.
            return replace(verdict, max_changes=0, over_changes=None, max_rows=0, over_limit=None)
        if verdict.max_changes:
            return self._unmeasurable(verdict)
        return verdict

    def _end_measured_batch(
        self, chunk: bytes, e: int, out: list[bytes] | None, fwd: int
    ) -> list[bytes]:
        """The client's Sync of a measured batch was forwarded: its later messages
        wait for the batch's decision."""
        self._measure.open = False  # type: ignore[union-attr]
        self.blocked = True
        return self._stop_at(chunk, e, out, fwd)

    def _rest_in_order(
        self, chunk: bytes, e: int, out: list[bytes] | None, fwd: int
    ) -> list[bytes]:
        """A measured batch opened at the message ending at ``e``: the rest of the
        read is seen message by message (a Flush in it matters now)."""
        if out is None:
            out = []
        if e > fwd:
            out.append(chunk[fwd:e])
        rest = chunk[e:]
        if rest:
            more = self.client_chunk(rest, split_frames(rest), True)
            out.extend(more if more is not None else (rest,))
        return out

    def _unmeasurable(self, verdict: Allow) -> Allow | Refuse | Awaitable[Allow | Refuse]:
        """A Parse, Bind or FunctionCall allowed with ``max_changes``: not measured, so
        decided before it runs by ``over_changes(-1)``."""
        decision = measure.ask(verdict, -1)
        if isinstance(decision, Awaitable):
            return _settle_later(decision)
        return measure.settled(decision)

    def _measure_inject(
        self, kind: int, statements: list[str], batch: bool, close: tuple[str, ...] = ()
    ) -> None:
        self._batch_open = False
        self.sent_cycles += 1
        self._measures += 1
        self._queue.append((kind,))
        self._upstream.append(
            measure.as_batch(statements, SAVEPOINT, close)
            if batch
            else measure.as_query(statements)
        )

    def _kept_portals(self, m_: measure.Measurement) -> tuple[str, ...]:
        """The portals a kept batch's measured Binds bound, which dbgate closes with
        its release: inside the client's block they would outlive the batch, and an
        Execute of one in a later batch (a write bound here, run there) would run
        unmeasured. Their Executes in the batch were measured; a later one fails as
        an Execute of a closed portal does."""
        if not m_.batch or not m_.portals:
            return ()
        for portal in m_.portals:
            self._portals.pop(portal, None)
            self._portal_state.pop(portal, None)
            self._sent_limits.pop(portal, None)
        return tuple(sorted(m_.portals))

    def measure_resume(self, verdict: object) -> bytes:
        """The awaited ``over_changes`` answered (:attr:`measure_waiting`): returns the
        bytes to send the server."""
        self.measure_waiting = None
        self._measure_decided(self._pending_decision, measure.settled(verdict))  # type: ignore[arg-type]
        return self.take_upstream()

    def _measure_decided(self, m_: measure.Measurement, verdict: Allow | Refuse) -> None:
        if isinstance(verdict, Allow) and m_.batch:
            if self._limit is None:
                self.blocked = False
            self._replay(m_)
            return
        if isinstance(verdict, Allow):
            # Approved: the client's Query again, unmeasured; its answers are the client's,
            # and its record the one of the statement that ran (under the approval).
            rec = self._record("query", m_.sql) if self.observer is not None else None
            if rec is not None:
                rec.verdict = verdict
                rec.remembered = True
            self.query_sent(rec, replace(m_.verdict, max_changes=0, over_changes=None))  # type: ignore[type-var]
            self._upstream.append(m_.message)
        else:
            self._upstream.append(self.refuse(None, verdict, QUERY_MSG))
        if self._limit is None:
            self.blocked = False

    def _forget_batch(self, m_: measure.Measurement) -> None:
        """An undone batch: its portals ended with the rollback; the named statements
        it prepared did not (prepared statements outlive a rollback), so dbgate closes
        them, silently: a refused batch then left nothing behind, and an approved one
        prepares them again as the client sent it."""
        for portal in m_.bound:
            self._portals.pop(portal, None)
            self._portal_state.pop(portal, None)
            self._sent_limits.pop(portal, None)
        to_close = m_.to_close
        if not to_close:
            return
        for key in to_close:
            handle = self.info.statements.close_sent(self.sent_cycles + 1, key)
            self._queue.append((MEASURE_CLOSE, key, handle))
            self._upstream.append(
                m.frame(CLOSE_MSG, b"S" + key.encode("utf-8", "surrogateescape") + b"\0")
            )
            self._measures += 1
            if self._sent_stmts.get(key) is self._stmts.get(key):
                self._sent_stmts.pop(key, None)
        self.sent_cycles += 1
        self._measures += 1
        self._queue.append((MEASURE_SILENT,))
        self._upstream.append(SYNC_FRAME)  # a Sync: ends the Closes' cycle

    def _replay(self, m_: measure.Measurement) -> None:
        """A measured batch approved past its limit: the client's messages again, as
        it sent them, judged again; its measured Binds (and the Parses that opened the
        measurement) pass once without a measurement."""
        data = m_.resent
        frames = split_frames(data)
        self._approved = {data[s:e] for t, s, e in frames if t in (PARSE_MSG, BIND_MSG)}
        self.blocked_rest = b""
        out = self.client_chunk(data, frames, True)
        self._upstream.extend(out if out is not None else (data,))
        if self.blocked and self.blocked_rest:
            self.replay_rest = self.blocked_rest  # parked ahead of the client's own
            self.blocked_rest = b""

    def _measure_frames(self, chunk: bytes, frames: list[Frame], full: bool) -> list[bytes]:
        """The server's answers while a measurement has entries in flight."""
        if not full:
            frames = split_frames(chunk)
        out: list[bytes] = []
        for t, s, e in frames:
            if not self._measures:
                rest = chunk[s - 5 :]
                more = self._server_frames(rest, split_frames(rest), 0, True)
                out.extend(more if more is not None else (rest,))
                break
            out.append(self._measure_message(t, chunk, s, e))
        return out

    def _one(self, t: int, frame: bytes) -> bytes:
        """One server message through the ordinary path: what the client would get."""
        got = self._server_frames(frame, [(t, 5, len(frame))], 0, True)
        return frame if got is None else b"".join(got)

    def _measure_message(self, t: int, chunk: bytes, s: int, e: int) -> bytes:
        frame = chunk[s - 5 : e]
        queue = self._queue
        if self._markers:
            while queue and queue[0][0] == COPY_END:
                queue.popleft()
                self._markers -= 1
        if not queue or t == PARAM_STATUS_MSG:
            return self._one(t, frame)
        head = queue[0]
        kind = head[0]
        if kind == MEASURE_SETUP:
            if t == NOTIFY_MSG:
                return self._one(t, frame)
            m_ = head[1]
            if t == NOTICE_MSG and b"C25001\0" in chunk[s:e]:
                m_.already = True  # BEGIN inside the client's block: only a warning
            elif t == ERROR_MSG:
                m_.failed = True  # a failed block: nothing is measured
            elif t == READY_MSG:
                queue.popleft()
                self._measures -= 1
                self.done_cycles += 1
                self.info.transaction_status = STATUS[chunk[s]]
                m_.opened = not (m_.already or m_.failed)
                m_.running = True  # what the server answers next is the measured one's
            return b""
        if kind == MEASURE_CLOSE:
            return self._measure_closed(t, chunk, s, e)
        if kind in (MEASURE_SILENT, MEASURE_COMMIT):
            if t == NOTIFY_MSG:
                return self._one(t, frame)
            if t == READY_MSG:
                queue.popleft()
                self._measures -= 1
                self.done_cycles += 1
                self.info.transaction_status = STATUS[chunk[s]]
                if chunk[s] == 0x49 and self.info.idle_waiters:
                    self.info.went_idle()
                if kind == MEASURE_COMMIT:
                    if self._limit is None:
                        self.blocked = False
                    return frame
                return b""
            if t == ERROR_MSG:
                if kind == MEASURE_COMMIT:  # e.g. a deferred constraint: the client's
                    return self._filtered_error(chunk[s:e]) or frame
                log.warning(
                    "session %s: dbgate's statement after a measured one failed: %s",
                    self.info.session_id,
                    m.decode_backend(t, chunk[s:e]),
                )
            return b""
        m_ = self._measure
        if m_ is None or not m_.running or (not m_.batch and head is not m_.entry):
            return self._one(t, frame)
        return self._measured_message(m_, t, chunk, s, e)

    def _measure_closed(self, t: int, chunk: bytes, s: int, e: int) -> bytes:
        """An answer to a Close of dbgate's (a measured batch undone): not shown."""
        queue = self._queue
        if t == CLOSE_OK:
            _, key, handle = queue.popleft()
            self._measures -= 1
            if handle is not None:
                handle.resolve(True)
            self._stmts.pop(key, None)
            return b""
        if t == ERROR_MSG:  # the server skips the other Closes to the Sync
            log.warning(
                "session %s: dbgate's Close after an undone batch failed: %s",
                self.info.session_id,
                m.decode_backend(t, chunk[s:e]),
            )
            while queue and queue[0][0] == MEASURE_CLOSE:
                _, key, handle = queue.popleft()
                self._measures -= 1
                if handle is not None:
                    handle.resolve(False)
        return b""

    def _measured_message(
        self, m_: measure.Measurement, t: int, chunk: bytes, s: int, e: int
    ) -> bytes:
        """One answer to the measured Query itself, or to a message of the measured
        batch."""
        frame = chunk[s - 5 : e]
        head = self._queue[0] if self._queue else None
        if t == READY_MSG and (not m_.batch or (head is not None and head[0] == SYNC)):
            status = chunk[s]
            ready = self._one(t, frame)  # ends the entry (record, transaction status)
            self._measures -= 1
            self._measure = None
            return self._measured_ready(m_, status, ready)
        if m_.failed:
            return self._one(t, frame)  # a failed block: passed as it comes
        if t == CMD_COMPLETE:
            if (
                not m_.batch
                or head is None
                or head[0] == QUERY
                or (head[0] == EXECUTE and head[1] in m_.portals)
            ):
                m_.count += measure.changed_rows(m.parse_command_complete(chunk[s:e]))
        elif t == ERROR_MSG:
            m_.errored = True
        elif t == SUSPENDED:
            if m_.batch and head is not None and head[0] == EXECUTE and head[1] in m_.portals:
                # An Execute with a row count of a measured write (RETURNING): the
                # server ran the whole write, but a suspended portal has no tag to
                # count its changes by. Not measurable: undone and decided as such.
                m_.overflow = True
                m_.buffer = [b for b in m_.buffer if b[:1] not in (b"D", b"d")]
        elif t == PARSE_OK:
            if m_.batch and head is not None and head[0] == PARSE and head[1]:
                m_.named.append(head[1])  # closed again if the batch is undone
        elif t == BIND_OK:
            if m_.batch and head is not None and head[0] == BIND:
                m_.bound.append(bind_names(head[1])[0])
        elif t == COPY_IN:
            # The server waits for the client's data: what is held goes out now and the
            # client may send until it ends the copy (then it waits again).
            piece = self._one(t, frame)
            held = b"".join(m_.buffer)
            m_.buffer.clear()
            m_.copying = True
            m_.delivering = True
            self.blocked = False
            return held + piece
        piece = self._one(t, frame)
        if t in (DATA_ROW, COPY_DATA):
            m_.rows += 1
            if m_.rows > m_.cap:
                if m_.verdict is None:
                    # Nothing measured has bound yet: the rows are not held back any
                    # longer (a measured Bind after them can then only be refused).
                    m_.delivering = True
                else:
                    m_.overflow = True
                    m_.buffer = [b for b in m_.buffer if b[:1] not in (b"D", b"d")]
            if m_.overflow:
                return b""
        if m_.delivering or m_.passing:
            if m_.buffer:
                piece = b"".join(m_.buffer) + piece
                m_.buffer.clear()
            return piece
        if piece:
            m_.buffer.append(piece)
        return b""

    def _measured_ready(self, m_: measure.Measurement, status: int, ready: bytes) -> bytes:
        """The measured Query ended: keep it, or undo it and ask ``over_changes``."""
        held = b"".join(m_.buffer)
        m_.buffer.clear()
        release = self._limit is None
        if m_.failed:
            if release:
                self.blocked = False
            return held + ready
        # Rows past what may be held back were dropped: what is held is no longer the
        # client's answer, even when the statement failed by itself, so it is undone
        # and decided like a statement over its limit (sent again if allowed).
        cut = m_.overflow and not m_.delivering
        if (m_.errored or status == 0x45) and not cut:  # 'E'
            if m_.opened:  # the client had no block: it sees its implicit one end
                self._measure_inject(MEASURE_SILENT, ["ROLLBACK"], m_.batch)
                self.info.transaction_status = "I"
                ready = m.ready_for_query("I")
            if release:
                self.blocked = False
            return held + ready
        if not m_.over:
            if m_.opened:
                # its ReadyForQuery is the client's
                self._measure_inject(MEASURE_COMMIT, ["COMMIT"], m_.batch)
                return held
            self._measure_inject(
                MEASURE_SILENT, measure.release_sql(SAVEPOINT), m_.batch, self._kept_portals(m_)
            )
            if release:
                self.blocked = False
            return held + ready
        # Over the limit: undone at once, then decided.
        self._measure_inject(MEASURE_SILENT, measure.undo_sql(SAVEPOINT, m_.opened), m_.batch)
        if m_.batch:
            self._forget_batch(m_)
        if m_.opened:
            self.info.transaction_status = "I"
        if m_.delivering:  # the client saw its answers: it cannot be held
            refusal = measure.delivered_refusal(m_)
            log.warning("session %s: %s", self.info.session_id, refusal.message)
            rec = self._record("query", m_.sql) if self.observer is not None else None
            self.decided(rec, refusal)  # recorded as a refusal of dbgate's
            self._upstream.append(self.refuse(rec, refusal, QUERY_MSG))
            if self._limit is None:
                self.blocked = False
            return held
        if m_.batch and len(m_.covered) > 1:
            decision = measure.ask_all(m_.covered, m_.measured)
        else:
            decision = measure.ask(m_.verdict, m_.measured)  # type: ignore[arg-type]
        if isinstance(decision, Awaitable):
            self._pending_decision = m_
            self.measure_waiting = decision  # type: ignore[assignment]
            return b""
        self._measure_decided(m_, measure.settled(decision))
        return b""
