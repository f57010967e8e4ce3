"""The relay of one client session, after authentication: the I/O shell.

What it does, in the order bytes meet it:

client -> server
  * frame each read (``FrameReader``), decode only the message types that matter;
  * ask the inspector about each statement (Query, Parse, FunctionCall, and Binds
    whose decision depends on their values); forward allowed bytes in as few writes
    as possible; park the session (keep later bytes in order, still reading so a
    hang-up is seen) while an asynchronous verdict is pending;
  * a refused message is replaced by what :meth:`StatementTracker.refuse` returns,
    so the server itself raises the error and keeps transaction state right.
server -> client
  * hand the tracked messages to the :class:`~dbgate.proxy.tracker.StatementTracker`
    and write the chunk unchanged, or the pieces it returns when something was
    rewritten (a row under a result plan, a refusal swapped in for our marker).

Every protocol rule (cycles, copy-in, skip to Sync, which answer belongs to which
message) lives in the tracker; this module owns only sockets, pauses, the verdict
memory and the waiting for awaitable verdicts — during which it asks the tracker,
at an interval, for a ping that keeps the server's idle-in-transaction guard from
ending the session while a human decides (:mod:`dbgate.proxy.hold_ping`).

A bug (an exception the relay did not expect, on either side, in a decision's
aftermath or in a ping) fails closed and only this session: it is logged with the
session id, the client gets FATAL XX000 (unless it is in the middle of a message
dbgate streamed to it, which an ErrorResponse would corrupt), the upstream backend is
sent Terminate and a CancelRequest (whatever it runs stops), and both sides close.

Memory: long messages are streamed through when nothing needs to see them whole, and
collected (held once, in one buffer of their size) when something does
(:class:`~dbgate.wire.framing.FrameReader`). Each collection, a long statement waiting
for its verdict, and whatever the client sends meanwhile, is counted in the proxy's
:class:`~dbgate.proxy.budget.MemoryBudget`; while the budget has no room for a
message, the session stops reading that side (backpressure). Everything a session
held is dropped when it closes.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from dbgate.proxy.budget import MemoryBudget, Reservation
from dbgate.proxy.hold_ping import MAX_INTERVAL, HoldPinger
from dbgate.proxy.seams import Allow, MessageFilter, Notice, Observer, Refuse
from dbgate.proxy.tracker import StatementTracker
from dbgate.proxy.upstream import CancelNotConfirmed
from dbgate.wire import messages as m
from dbgate.wire import sqlstate
from dbgate.wire.errors import LimitExceeded, ProtocolError
from dbgate.wire.framing import LARGE_MESSAGE, FrameReader

if TYPE_CHECKING:
    from dbgate.proxy.channel import Channel
    from dbgate.proxy.seams import Inspector
    from dbgate.proxy.session_info import SessionInfo
    from dbgate.proxy.tracker import Waiting

log = logging.getLogger("dbgate.session")
#: idle_in_transaction_session_timeout, transaction_timeout
_GUARD_ENDINGS = frozenset({"25P03", "25P04"})

_TERMINATE = b"X\x00\x00\x00\x04"
#: Bytes a client may send while one of its statements waits for a verdict before
#: the session stops reading from it. Reading goes on below that on purpose: a
#: paused transport would not notice the client hanging up, and a held statement
#: whose client is gone must end (withdrawn) at once, not when someone decides.
WAIT_BUFFER = 1 << 20
#: What the client of a session that hit a bug in dbgate is told (FATAL XX000).
INTERNAL_ERROR_MESSAGE = (
    "dbgate hit an internal error and closed this session; nothing more of it runs "
    "(dbgate's log names session {session})"
)


class Session:
    """Relays one authenticated client to its upstream connection."""

    def __init__(
        self,
        *,
        info: SessionInfo,
        client: Channel,
        upstream: Channel,
        inspector: Inspector,
        max_message_size: int,
        on_closed: Callable[[Session], None],
        budget: MemoryBudget | None = None,
        observer: Observer | None = None,
        message_filter: MessageFilter | None = None,
        cancel_upstream: Callable[[], Awaitable[None]] | None = None,
        ping_interval: float = MAX_INTERVAL,
    ) -> None:
        self.info = info
        self.client = client
        self.upstream = upstream
        self.observer = observer
        self._on_closed = on_closed
        self._cancel_upstream = cancel_upstream
        self._background: set[asyncio.Task[None]] = set()
        self.budget = budget if budget is not None else MemoryBudget(4 * max_message_size)
        self._held: dict[str, Reservation] = {}  # side -> the long message it collects
        self._c2s = FrameReader(max_message_size, on_collect=self._client_collects)
        # The server's long values pass through unless a plan needs the row whole.
        self._s2c = FrameReader(
            max_message_size, limit_streamed=False, on_collect=self._server_collects
        )
        self.tracker = StatementTracker(info, inspector, observer, message_filter)
        self._s2c.run_room = self.tracker.run_room
        self._waiting: asyncio.Task[None] | None = None
        self._deciding: asyncio.Future[None] | None = None  # over_changes awaited
        self._queued: list[bytes] = []
        #: CancelRequests of the client's on their way upstream: its later bytes wait.
        self._cancelling = 0
        self._queued_bytes = 0
        self._waiting_bytes = 0  # a long statement waiting for its verdict (_held_waiting)
        self._read_pauses: set[str] = set()
        self._upstream_pauses: set[str] = set()
        self._terminating = False
        self._draining = False
        self._closed = False
        #: The session ended on a bug of dbgate's: its upstream state is not trusted.
        self._failed = False
        #: what :attr:`running_upstream` said when the session closed, before the
        #: tracker's unanswered statements were recorded and taken off its queue
        self._left_running = False
        # Whether the client / the server is in the middle of a message dbgate relayed
        # (a long one streamed through in pieces): nothing of dbgate's may go between.
        self._client_cut = False
        self._upstream_cut = False
        self._pinger = HoldPinger(ping_interval, self._ping)
        info._notify = self.send_notice

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self.client.on_close = self._client_closed
        self.upstream.on_close = self._upstream_closed
        self.client.on_pause_writing = lambda: self._pause_upstream("backpressure", True)
        self.client.on_resume_writing = lambda: self._pause_upstream("backpressure", False)
        self.upstream.on_pause_writing = lambda: self._pause_client("backpressure", True)
        self.upstream.on_resume_writing = lambda: self._pause_client("backpressure", False)
        if self.observer is not None:
            try:
                self.observer.session_started(self.info)
            except Exception:
                log.exception("session %s: observer failed", self.info.session_id)
        self.upstream.relay_to(self.on_server_data)
        self.client.relay_to(self.on_client_data)

    @property
    def idle(self) -> bool:
        """No statement in flight, none waiting, not inside a transaction."""
        return self.tracker.idle and self._waiting is None and self.info.transaction_status == "I"

    @property
    def parked_bytes(self) -> int:
        """How much the client sent that dbgate keeps back for now: behind a statement
        awaiting its verdict, a row-limited statement, or a cancel on its way upstream."""
        return self._queued_bytes

    @property
    def running_upstream(self) -> bool:
        """The server may still be working on something this session sent (a ping
        alone is answered at once; after a bug of dbgate's, anything may run)."""
        tracker = self.tracker
        if self._failed or self._left_running:
            return True
        return not tracker.idle and not (tracker.pinging and tracker.in_flight == 1)

    def drain(self) -> None:
        """Close as soon as the session is idle (graceful shutdown)."""
        self._draining = True
        if self.idle:
            self.terminate(sqlstate.ADMIN_SHUTDOWN, "dbgate is shutting down; reconnect later")

    def terminate(self, code: str, message: str) -> None:
        """Tell the client why (FATAL), end the upstream session, close both.

        Neither message goes into the middle of one dbgate is streaming to that side
        (a long row or COPY data): that side then only sees the connection close."""
        if self._closed:
            return
        self.info.ended_sqlstate, self.info.ended_message = code, message
        try:
            if not self._client_cut:
                self.client.write(m.error_response(code, message, severity="FATAL"))
            if not self._upstream_cut:
                self.upstream.write(_TERMINATE)
        finally:
            self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pinger.stop()
        if self._waiting is not None:
            self._waiting.cancel()
        if self._deciding is not None:
            self._deciding.cancel()
        self.client.close()
        self.upstream.close()
        # what the client sent that was kept back, in the order it was sent: the
        # start of a message the reader holds, then the reads queued behind it (the
        # first bytes of which may end a message streamed on already)
        kept = self._queued
        if kept:
            streamed = self._c2s.streaming
            kept = [self._c2s.take_pending(), *kept]
            if streamed:
                kept = [b"".join(kept)[streamed:]]
        self._release_memory()
        if self.observer is not None:
            # what ran or waited upstream still gets its record; the server's cancel
            # of what still runs (Server._session_closed) asks running_upstream after
            self._left_running = self.running_upstream
            self.tracker.abandon()
            if kept:  # and what the client sent behind it, kept back, never sent
                try:
                    waiting = self.tracker.waiting
                    held = waiting.statement if waiting is not None else None
                    self.tracker.unsent(b"".join(kept), held)
                except Exception:
                    log.exception("session %s: statements kept back", self.info.session_id)
            try:
                self.observer.session_ended(self.info)
            except Exception:
                log.exception("session %s: observer failed", self.info.session_id)
        self._on_closed(self)

    def _client_closed(self, exc: Exception | None) -> None:
        if not self._closed:
            if exc is not None:
                log.debug("session %s: client connection lost: %s", self.info.session_id, exc)
            self.upstream.write(_TERMINATE)
            self._close()

    def _upstream_closed(self, exc: Exception | None) -> None:
        if self._closed:
            return
        info = self.info
        if self.tracker.server_fatal:
            # The server ended the session itself and the client has its FATAL: an
            # idle-in-transaction or transaction timeout (the session guards), a
            # terminated backend. Its transaction is rolled back and its locks gone.
            try:
                fields = m.parse_error_fields(self.tracker.fatal_error)
            except ProtocolError:
                fields = {}
            info.ended_sqlstate = fields.get("C", "")
            info.ended_message = fields.get("M", "")
            # A guard that fired (idle or transaction timeout) is an operator's event;
            # anything else the server ends (a client's protocol error) is connection
            # noise, at DEBUG like the other connection events.
            log.log(
                logging.INFO if info.ended_sqlstate in _GUARD_ENDINGS else logging.DEBUG,
                "session %s: the server ended it: %s %s",
                info.session_id,
                info.ended_sqlstate,
                info.ended_message,
            )
        elif not self._terminating:
            log.warning("session %s: upstream connection lost: %s", info.session_id, exc)
            message = "dbgate: the upstream server closed the connection"
            info.ended_sqlstate, info.ended_message = sqlstate.CONNECTION_FAILURE, message
            self.client.write(
                m.error_response(sqlstate.CONNECTION_FAILURE, message, severity="FATAL")
            )
        self._close()

    def cancel_wait(self) -> bool:
        """A CancelRequest arrived while a statement waits for a verdict: stop waiting."""
        if self._waiting is not None:
            self._waiting.cancel()
            return True
        if self._deciding is not None:
            self._deciding.cancel()
            return True
        return False

    async def cancel(self) -> None:
        """Answer the client's CancelRequest: end a wait in dbgate, or cancel upstream.

        A PostgreSQL cancel is not bound to a statement: it interrupts whatever the
        backend runs when the signal arrives. So that it can only hit what the client
        had sent before asking: no cancel goes upstream when nothing of this session
        runs there (the server would ignore it; arriving late it could only hit a
        later statement), and while one is on its way nothing the client sends is
        forwarded, until the server confirms it (closes the cancel connection: the
        backend has been signalled). A cancel the server does not confirm in time
        may still land at any moment, so the session is ended rather than go on.

        Everything before the first suspension runs synchronously when this is
        awaited: the worker relay (:mod:`dbgate.workers_cancel`) checks that the
        worker which received the request still waits for it right before, and the
        hold must be in place in that same step.
        """
        if self._closed or self.cancel_wait():
            return
        if self._cancel_upstream is None or self.tracker.idle:
            return
        self._cancelling += 1
        try:
            await self._cancel_upstream()
        except CancelNotConfirmed as e:
            self._cancel_unconfirmed(e)
        except (TimeoutError, OSError) as e:
            log.warning(
                "session %s: could not forward a cancel request: %s", self.info.session_id, e
            )
        finally:
            self._cancelling -= 1
        if not self._closed and not self._cancelling and self._waiting is None:
            for data in self._take_queued():
                self.on_client_data(data)

    def _cancel_unconfirmed(self, e: CancelNotConfirmed) -> None:
        log.warning("session %s: %s; closing the session", self.info.session_id, e)
        self.terminate(
            sqlstate.CONNECTION_FAILURE,
            f"dbgate: {e}; the session is closed so that the cancel cannot interrupt a "
            "later statement",
        )

    def _pause_client(self, reason: str, pause: bool) -> None:
        transport = self.client.transport
        if transport is None:
            return
        was_paused = bool(self._read_pauses)
        if pause:
            self._read_pauses.add(reason)
        else:
            self._read_pauses.discard(reason)
        if self._read_pauses and not was_paused:
            transport.pause_reading()
        elif not self._read_pauses and was_paused:
            transport.resume_reading()

    def _pause_upstream(self, reason: str, pause: bool) -> None:
        transport = self.upstream.transport
        if transport is None:
            return
        was_paused = bool(self._upstream_pauses)
        if pause:
            self._upstream_pauses.add(reason)
        else:
            self._upstream_pauses.discard(reason)
        if self._upstream_pauses and not was_paused:
            transport.pause_reading()
        elif not self._upstream_pauses and was_paused:
            transport.resume_reading()

    # -- memory -------------------------------------------------------------------------
    def _client_collects(self, size: int) -> None:
        self._collects("client", size, self._pause_client)

    def _server_collects(self, size: int) -> None:
        self._collects("server", size, self._pause_upstream)

    def _collects(self, side: str, size: int, pause: Callable[[str, bool], None]) -> None:
        """A reader starts (``size``) or ends (0) holding one long message: reserve its
        room in the budget, and stop reading that side until the room is granted."""
        held = self._held.pop(side, None)
        if held is not None:
            held.release()
            pause("memory", False)
        if size and not self._closed:
            reservation = self.budget.reserve(size, lambda: pause("memory", False))
            self._held[side] = reservation
            if not reservation.granted:
                pause("memory", True)

    def _queue(self, data: bytes, first: bool = False) -> None:
        """Keep ``data`` until the statement ahead of it is decided (``first``: the
        rest of the read that held that statement, ahead of anything queued)."""
        if first:
            self._queued.insert(0, data)
        else:
            self._queued.append(data)
        self._queued_bytes += len(data)
        self.budget.charge(len(data))
        if self._queued_bytes > WAIT_BUFFER:
            self._pause_client("waiting", True)

    def _take_queued(self) -> list[bytes]:
        queued, self._queued = self._queued, []
        self.budget.discharge(self._queued_bytes)
        self._queued_bytes = 0
        self._pause_client("waiting", False)
        return queued

    def _release_memory(self) -> None:
        """The session ended: give back what it held, now."""
        self._c2s.reset()
        self._s2c.reset()
        for held in self._held.values():
            held.release()
        self._held.clear()
        self._queued = []
        self.budget.discharge(self._queued_bytes)
        self._queued_bytes = 0
        self._held_waiting(0)

    def send_notice(self, notice: Notice) -> None:
        fields = {k: v for k, v in notice.fields.items() if k not in ("S", "V", "M")}
        code = fields.pop("C", sqlstate.SUCCESSFUL_COMPLETION)
        if notice.detail:
            fields["D"] = notice.detail
        self.client.write(m.notice_response(notice.message, code=code, **fields))

    def _fail(self, e: ProtocolError | LimitExceeded, side: str) -> None:
        log.debug("session %s: protocol error %s: %s", self.info.session_id, side, e)
        hint = " (limits.max_message_size)" if isinstance(e, LimitExceeded) else ""
        self.terminate(e.sqlstate, f"dbgate: {e}{hint}")

    def _internal_error(self, where: str) -> None:
        """A bug: an exception the relay did not expect while ``where``. Called from an
        ``except`` block (the traceback is logged). Only this session ends: the client
        is told (FATAL XX000) where the protocol allows, the upstream backend is sent
        Terminate and, once closed, a CancelRequest (:attr:`running_upstream`)."""
        sid = self.info.session_id
        log.exception("session %s: internal error %s; closing the session", sid, where)
        if self._closed:
            return
        self._failed = True
        self.terminate(sqlstate.INTERNAL_ERROR, INTERNAL_ERROR_MESSAGE.format(session=sid))

    # -- client -> server ---------------------------------------------------------------
    def on_client_data(self, data: bytes) -> None:
        if self._closed:  # reads replayed after the session ended
            return
        tracker = self.tracker
        try:
            if self._waiting is not None or tracker.blocked or self._cancelling:
                self._queue(data)
                return
            if tracker.sees_every_message:  # skipping to Sync, or a measured batch
                chunk, frames = self._c2s.feed(data)
                full = True
            else:
                chunk, frames = self._c2s.feed_select(data, tracker.client_types)
                full = False
            if not chunk:
                return
            out = tracker.client_chunk(chunk, frames, full)
            if tracker.terminating:
                self._terminating = True
            if out is None:
                self.upstream.write(chunk)
                self._upstream_cut = self._c2s.streaming != 0
                return
            if out:
                self.upstream.writelines(out)
                self._upstream_cut = self._c2s.streaming != 0
            waiting = tracker.waiting
            if waiting is not None:
                # Park the rest of this read (and any partial message) until the verdict.
                rest = waiting.rest + self._c2s.take_pending()
                if rest:
                    self._queue(rest, first=True)
                self._wait_for(waiting)
            elif tracker.blocked:
                self._park(tracker.blocked_rest)
        except (ProtocolError, LimitExceeded) as e:
            self._fail(e, "from client")
        except Exception:
            self._internal_error("relaying the client's messages")

    def _park(self, rest: bytes) -> None:
        """A statement under a row limit runs: keep the client's later bytes until it
        ends (the tracker unblocks), so nothing else reaches the server meanwhile."""
        rest += self._c2s.take_pending()
        if rest:
            self._queue(rest, first=True)
        self._pause_client("limit", True)

    def _unpark(self) -> None:
        self._pause_client("limit", False)
        for data in self._take_queued():
            self.on_client_data(data)

    def _start_cancel(self) -> None:
        """The tracker asks for the running statement to be cancelled upstream."""

        async def cancel() -> None:
            try:
                if self._cancel_upstream is not None:
                    await self._cancel_upstream()
            except CancelNotConfirmed as e:
                self._cancel_unconfirmed(e)
            except Exception:
                log.warning("session %s: could not cancel upstream", self.info.session_id)
            if self._closed:
                return
            tracker = self.tracker
            try:
                was_blocked = tracker.blocked
                tracker.cancel_done()
                if was_blocked and not tracker.blocked and self._waiting is None:
                    self._unpark()
            except Exception:
                self._internal_error("after cancelling a statement over its row limit")

        task = asyncio.ensure_future(cancel())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _after_replay(self) -> None:
        """A measured batch approved past its limit was sent again: what of it did
        not go (a statement in it waits for a verdict, or runs under a row limit)
        waits ahead of the client's later messages."""
        tracker = self.tracker
        waiting = tracker.waiting
        if waiting is not None and self._waiting is None:
            if waiting.rest:
                self._queue(waiting.rest, first=True)
            self._wait_for(waiting)
        elif tracker.replay_rest:
            self._queue(tracker.replay_rest, first=True)
            tracker.replay_rest = b""

    def _await_over_changes(self, pending: Awaitable[Allow | Refuse]) -> None:
        """A measured statement went over its limit and was undone; its fate is
        awaited (an approval). The client's later messages wait meanwhile."""
        self.tracker.measure_waiting = None
        # Keep reading meanwhile (later bytes are queued), so that a hang-up is seen.
        self._pause_client("limit", False)

        async def decide() -> None:
            verdict = await self._settled(pending, "over_changes")
            self._deciding = None
            if self._closed:
                return
            tracker = self.tracker
            try:
                self.upstream.write(tracker.measure_resume(verdict))
                self._after_replay()
                if not tracker.blocked and self._waiting is None:
                    self._unpark()
            except Exception:
                self._internal_error("after deciding a statement over its change limit")

        self._deciding = asyncio.ensure_future(decide())
        self._pinger.start()

    async def _settled(self, pending: Awaitable[object], what: str) -> object:
        """What an awaited decision came to: a cancel (the client's CancelRequest) is
        57014 and a failure an internal error, so a statement waiting for it is never
        run by accident. After the session closed, what it came to no longer matters."""
        try:
            return await pending
        except asyncio.CancelledError:
            return Refuse(sqlstate.QUERY_CANCELED, "canceling statement due to user request")
        except Exception:
            log.exception("session %s: %s failed; refusing", self.info.session_id, what)
            return Refuse(
                sqlstate.INTERNAL_ERROR, "dbgate: internal error while deciding; statement not run"
            )

    def _wait_for(self, waiting: Waiting) -> None:
        """Await the verdict on the statement the tracker parked."""
        if len(waiting.message) > LARGE_MESSAGE:
            self._held_waiting(len(waiting.message) + sys.getsizeof(waiting.statement.sql))
        self._waiting = asyncio.ensure_future(self._await_verdict(waiting.verdict))
        self._pinger.start()

    def _held_waiting(self, size: int) -> None:
        """A long statement that waits for its verdict stays in memory meanwhile, its
        message and its text, for as long as a worker classifies it or an approver
        decides (hours): charged to the budget until then (0: no longer), so that
        such statements cannot add up past it. Its reservation ended when it was
        read whole."""
        self.budget.discharge(self._waiting_bytes)
        self._waiting_bytes = size
        self.budget.charge(size)

    async def _await_verdict(self, pending: Awaitable[Allow | Refuse]) -> None:
        verdict = await self._settled(pending, "verdict")
        if self._closed:
            return
        try:
            self._decided(verdict)
        except (ProtocolError, LimitExceeded) as e:  # too much to keep track of
            self._fail(e, "after a decision")
        except Exception:
            self._internal_error("after a decision")

    def _decided(self, verdict: object) -> None:
        """The awaited verdict arrived: send what it means, then what the client
        sent meanwhile."""
        self.upstream.write(self.tracker.resume(verdict))
        self._waiting = None
        self._held_waiting(0)
        if self.tracker.waiting is not None:  # decided by over_changes(-1): awaited too
            self._wait_for(self.tracker.waiting)
            return
        if self.tracker.blocked:  # the statement just sent runs under a row limit
            self._pause_client("waiting", False)
            self._park(b"")
            return
        for data in self._take_queued():
            self.on_client_data(data)

    def _ping(self) -> bool:
        """The pinger's tick: send the tracker's ping, if it may be sent now. False
        once nothing waits any more (the pinger stops)."""
        if self._closed or (self._waiting is None and self._deciding is None):
            return False
        try:
            ping = self.tracker.ping()
            if ping:
                self.upstream.write(ping)
        except Exception:
            self._internal_error("while keeping a held statement's transaction open")
            return False
        return True

    # -- server -> client ---------------------------------------------------------------
    def on_server_data(self, data: bytes) -> None:
        tracker = self.tracker
        try:
            full = tracker.full
            try:
                chunk, frames = self._s2c.feed_select(data, tracker.mask)
            except LimitExceeded as e:  # a row a plan must see whole is over the limit
                log.warning("session %s: result from upstream: %s", self.info.session_id, e)
                self.terminate(
                    e.sqlstate,
                    f"dbgate: a result message is too long to inspect: {e} "
                    "(limits.max_message_size)",
                )
                return
            except ProtocolError as e:
                log.error("session %s: protocol error from upstream: %s", self.info.session_id, e)
                self.terminate(
                    sqlstate.PROTOCOL_VIOLATION,
                    "dbgate: the upstream server sent an invalid message",
                )
                return
            if not chunk:
                return
            was_blocked = tracker.blocked
            try:
                out = tracker.server_chunk(chunk, frames, full)
            except (ProtocolError, LimitExceeded) as e:
                log.error("session %s: %s", self.info.session_id, e)
                self.terminate(e.sqlstate, f"dbgate: {e}")
                return
            if out is None:
                self.client.write(chunk)
            else:
                self.client.transport.writelines(out)  # type: ignore[union-attr]
            self._client_cut = self._s2c.streaming != 0
            if was_blocked:
                upstream = tracker.take_upstream()
                if upstream:
                    self.upstream.write(upstream)
                if tracker.cancel_requested:
                    tracker.cancel_requested = False
                    self._start_cancel()
                self._after_replay()
                if tracker.measure_waiting is not None:
                    self._await_over_changes(tracker.measure_waiting)
                elif not tracker.blocked and self._waiting is None:
                    self._unpark()
            if self._draining and self.idle:
                self.terminate(sqlstate.ADMIN_SHUTDOWN, "dbgate is shutting down; reconnect later")
        except Exception:
            self._internal_error("relaying the server's messages")
