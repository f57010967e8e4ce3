"""The relay of one client session, after authentication: the I/O shell.

What it does, in the order bytes meet it:

client -> server
  * frame each read (``FrameReader``), decode only the message types that matter;
  * ask the inspector about each statement (Query, Parse, FunctionCall, and Binds
    whose decision depends on their values); forward allowed bytes in as few writes
    as possible; park the session (pause reading, keep later bytes in order) while
    an asynchronous verdict is pending;
  * a refused message is replaced by what :meth:`StatementTracker.refuse` returns,
    so the server itself raises the error and keeps transaction state right.
server -> client
  * hand the tracked messages to the :class:`~dbgate.proxy.tracker.StatementTracker`
    and write the chunk unchanged, or the pieces it returns when something was
    rewritten (a row under a result plan, a refusal swapped in for our marker).

Every protocol rule (cycles, copy-in, skip to Sync, which answer belongs to which
message) lives in the tracker; this module owns only sockets, pauses, the verdict
memory and the waiting for awaitable verdicts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from struct import unpack_from
from typing import TYPE_CHECKING

from dbgate.proxy.seams import (
    Allow,
    MessageFilter,
    Notice,
    Observer,
    Refuse,
    Statement,
    StatementRecord,
)
from dbgate.proxy.tracker import StatementTracker
from dbgate.wire import messages as m
from dbgate.wire import sqlstate
from dbgate.wire.errors import ProtocolError
from dbgate.wire.framing import FrameReader, split_frames, type_mask

if TYPE_CHECKING:
    from dbgate.proxy.channel import Channel
    from dbgate.proxy.seams import Inspector
    from dbgate.proxy.session_info import SessionInfo

log = logging.getLogger("dbgate.session")

# Frontend message types
_Q, _P, _B, _F, _S, _C, _X, _H = (ord(c) for c in "QPBFSCXH")
_EXECUTE, _DESCRIBE = ord("E"), ord("D")
_COPY_DONE, _COPY_FAIL = ord("c"), ord("f")

# Message types the client side must see; all others pass as bytes.
_CLIENT_TYPES = type_mask("QPBFSCXEDcf")

_TERMINATE = b"X\x00\x00\x00\x04"
MEMO_MAX_ENTRIES = 128  # repeatable verdicts remembered per session
MEMO_MAX_MESSAGE = 2048  # bytes; longer messages are always inspected


def _bind_statement_name(chunk: bytes, s: int, e: int) -> bytes:
    """The statement name of a Bind message, as raw bytes, without decoding the rest."""
    i = chunk.find(b"\0", s, e)
    j = chunk.find(b"\0", i + 1, e) if i >= 0 else -1
    if j < 0:
        raise ProtocolError("malformed Bind message")
    return chunk[i + 1 : j]


def _expand(formats: tuple[int, ...], n: int) -> tuple[int, ...]:
    if not formats:
        return (0,) * n
    if len(formats) == 1:
        return formats * n
    return formats


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
        observer: Observer | None = None,
        message_filter: MessageFilter | None = None,
    ) -> None:
        self.info = info
        self.client = client
        self.upstream = upstream
        self.inspector = inspector
        self.observer = observer
        self.inspect_binds: bool = getattr(inspector, "inspects_binds", True)
        self._on_closed = on_closed
        self._c2s = FrameReader(max_message_size)
        self._s2c = FrameReader(max_message_size)
        # Repeatable verdicts (Allow.repeatable), by message body: drivers re-send the
        # same Parse (unnamed, $n parameters) or BEGIN/COMMIT for every transaction,
        # and skipping the decode and the inspector for them is most of the relay's
        # per-statement work. Bounded in entries and message size; forgotten on any
        # ParameterStatus and by SessionInfo.forget_verdicts().
        self._memo: dict[bytes, tuple[Statement, Allow]] = {}
        self.tracker = StatementTracker(
            info, observer, message_filter, on_parameter_status=self._memo.clear
        )
        self._waiting: asyncio.Task[None] | None = None
        self._queued: list[bytes] = []
        self._read_pauses: set[str] = set()
        self._terminating = False
        self._draining = False
        self._closed = False
        info._notify = self.send_notice
        info._forget = self._memo.clear

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self.client.on_close = self._client_closed
        self.upstream.on_close = self._upstream_closed
        self.client.on_pause_writing = lambda: self._pause_upstream(True)
        self.client.on_resume_writing = lambda: self._pause_upstream(False)
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
    def running_upstream(self) -> bool:
        """The server may still be working on something this session sent."""
        return not self.tracker.idle

    def drain(self) -> None:
        """Close as soon as the session is idle (graceful shutdown)."""
        self._draining = True
        if self.idle:
            self.terminate(sqlstate.ADMIN_SHUTDOWN, "dbgate is shutting down; reconnect later")

    def terminate(self, code: str, message: str) -> None:
        """Tell the client why (FATAL), end the upstream session, close both."""
        if self._closed:
            return
        self.client.write(m.error_response(code, message, severity="FATAL"))
        self.upstream.write(_TERMINATE)
        self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._waiting is not None:
            self._waiting.cancel()
        self.client.close()
        self.upstream.close()
        if self.observer is not None:
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
        if not self.tracker.server_fatal and not self._terminating:
            log.warning("session %s: upstream connection lost: %s", self.info.session_id, exc)
            self.client.write(
                m.error_response(
                    sqlstate.CONNECTION_FAILURE,
                    "dbgate: the upstream server closed the connection",
                    severity="FATAL",
                )
            )
        self._close()

    def cancel_wait(self) -> bool:
        """A CancelRequest arrived while a statement waits for a verdict: stop waiting."""
        if self._waiting is not None:
            self._waiting.cancel()
            return True
        return False

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

    def _pause_upstream(self, pause: bool) -> None:
        transport = self.upstream.transport
        if transport is None:
            return
        if pause:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def send_notice(self, notice: Notice) -> None:
        fields = {k: v for k, v in notice.fields.items() if k not in ("S", "V", "M")}
        code = fields.pop("C", sqlstate.SUCCESSFUL_COMPLETION)
        if notice.detail:
            fields["D"] = notice.detail
        self.client.write(m.notice_response(notice.message, code=code, **fields))

    def _fail(self, e: ProtocolError, side: str) -> None:
        log.info("session %s: protocol error %s: %s", self.info.session_id, side, e)
        self.terminate(e.sqlstate, f"dbgate: {e}")

    # -- client -> server ---------------------------------------------------------------
    def on_client_data(self, data: bytes) -> None:
        if self._waiting is not None:
            self._queued.append(data)
            return
        try:
            if self.tracker.skip_until_sync:  # every message matters: all but Sync dropped
                chunk, frames = self._c2s.feed(data)
                full = True
            else:
                chunk, frames = self._c2s.feed_select(data, _CLIENT_TYPES)
                full = False
            if chunk:
                self._client_frames(chunk, frames, full)
        except ProtocolError as e:
            self._fail(e, "from client")

    def _client_frames(self, chunk: bytes, frames: list[tuple[int, int, int]], full: bool) -> None:
        write = self.upstream.write
        tracker = self.tracker
        memo = self._memo
        fwd = 0  # start of the range of chunk not yet forwarded
        for t, s, e in frames:
            hdr = s - 5
            if tracker.skip_until_sync:
                if t == _S:
                    tracker.sync_sent()
                elif t != _H:
                    if hdr > fwd:
                        write(chunk[fwd:hdr])
                    fwd = e
                continue
            if t == _S:
                tracker.sync_sent()
                continue
            if t == _EXECUTE:
                tracker.execute_sent(chunk[s:e])
                continue
            if t == _DESCRIBE:
                tracker.describe_sent(chunk[s:e])
                continue
            body = b""
            if t == _Q:
                body = chunk[s:e]
                hit = memo.get(body) if memo else None
                if hit is not None and hit[0].kind == "query":
                    rec = tracker.received(hit[0])
                    tracker.decided(rec, hit[1], True)
                    tracker.query_sent(rec, hit[1])
                    continue
                stmt = Statement("query", m.parse_query(body))
            elif t == _P:
                body = chunk[s:e]
                hit = memo.get(body) if memo else None
                if hit is not None and hit[0].kind == "parse":
                    hs = hit[0]
                    rec = tracker.received(hs)
                    tracker.decided(rec, hit[1], True)
                    tracker.parse_sent(rec, hs.statement_name, hs.sql, hs.param_types, hit[1])
                    continue
                name, sql, types = m.parse_parse(body)
                stmt = Statement("parse", sql, statement_name=name, param_types=types)
            elif t == _B:
                body = chunk[s:e]
                statements = self.info.statements
                if not self.inspect_binds and (
                    not statements.checked
                    or not statements.checks_binds(_bind_statement_name(chunk, s, e))
                ):
                    tracker.bind_sent(None, body)
                    continue
                portal, name, formats, params, _ = m.parse_bind(body)
                cands = statements.candidates(name, tracker.sent_cycles + 1)
                if cands:
                    sql, types = cands[-1].sql, cands[-1].param_types
                else:
                    sql, types = tracker.sent_statement(name)
                stmt = Statement(
                    "bind",
                    sql,
                    statement_name=name,
                    portal=portal,
                    params=params,
                    param_formats=_expand(formats, len(params)),
                    param_types=types,
                    candidates=cands,
                )
            elif t == _C:
                tracker.close_sent(chunk[s:e])
                continue
            elif t == _F:
                if e - s < 4:
                    raise ProtocolError("FunctionCall message too short")
                stmt = Statement("function_call", "", function_oid=unpack_from("!I", chunk, s)[0])
            elif t in (_COPY_DONE, _COPY_FAIL):  # CopyDone is "c" both ways
                tracker.copy_end_sent()
                continue
            elif t == _X:
                self._terminating = True
                continue
            else:
                continue
            rec = tracker.received(stmt)
            verdict = self._inspect(stmt)
            if type(verdict) is Allow:
                tracker.decided(rec, verdict)
                if verdict.repeatable and t in (_Q, _P) and len(body) <= MEMO_MAX_MESSAGE:
                    if len(memo) >= MEMO_MAX_ENTRIES:
                        memo.clear()
                    memo[body] = (stmt, verdict)
                self._sent(t, rec, stmt, verdict, body)
                continue
            if hdr > fwd:
                write(chunk[fwd:hdr])
            fwd = e
            if isinstance(verdict, Refuse):
                tracker.decided(rec, verdict)
                write(tracker.refuse(rec, verdict, t))
                if tracker.skip_until_sync and not full:
                    # The rest of this read must now be seen message by message.
                    rest = chunk[e:]
                    if rest:
                        self._client_frames(rest, split_frames(rest), True)
                    return
                continue
            # An awaitable verdict: park this message and everything after it.
            rest = chunk[e:] + self._c2s.take_pending()
            if rest:
                self._queued.insert(0, rest)
            self._pause_client("waiting", True)
            self._waiting = asyncio.ensure_future(
                self._await_verdict(verdict, t, chunk[hdr:e], stmt, rec, body)  # type: ignore[arg-type]
            )
            return
        if fwd < len(chunk):
            write(chunk[fwd:] if fwd else chunk)

    def _inspect(self, stmt: Statement) -> Allow | Refuse | Awaitable[Allow | Refuse]:
        try:
            return self.inspector.inspect(self.info, stmt)
        except Exception:
            log.exception("session %s: inspector failed; refusing", self.info.session_id)
            return Refuse(
                sqlstate.INTERNAL_ERROR,
                "dbgate: internal error while inspecting; statement not run",
            )

    def _sent(
        self, t: int, rec: StatementRecord | None, stmt: Statement, verdict: Allow, body: bytes
    ) -> None:
        """Account for an allowed message on its way to the server."""
        tracker = self.tracker
        if t == _Q:
            tracker.query_sent(rec, verdict)
        elif t == _P:
            tracker.parse_sent(rec, stmt.statement_name, stmt.sql, stmt.param_types, verdict)
        elif t == _B:
            tracker.bind_sent(rec, body, verdict)
        else:
            tracker.function_call_sent(rec)

    async def _await_verdict(
        self,
        pending: Awaitable[Allow | Refuse],
        mtype: int,
        message: bytes,
        stmt: Statement,
        rec: StatementRecord | None,
        body: bytes,
    ) -> None:
        try:
            verdict = await pending
        except asyncio.CancelledError:
            if self._closed:
                return
            verdict = Refuse(sqlstate.QUERY_CANCELED, "canceling statement due to user request")
        except Exception:
            log.exception("session %s: verdict failed; refusing", self.info.session_id)
            verdict = Refuse(
                sqlstate.INTERNAL_ERROR, "dbgate: internal error while deciding; statement not run"
            )
        if self._closed:
            return
        if not isinstance(verdict, (Allow, Refuse)):
            verdict = Refuse(
                sqlstate.INTERNAL_ERROR, "dbgate: inspector returned no verdict; statement not run"
            )
        tracker = self.tracker
        tracker.decided(rec, verdict)
        try:
            if isinstance(verdict, Refuse):
                self.upstream.write(tracker.refuse(rec, verdict, mtype))
            else:
                self.upstream.write(message)
                self._sent(mtype, rec, stmt, verdict, body)
        except ProtocolError as e:  # too much to keep track of
            self._fail(e, "after a decision")
            return
        self._waiting = None
        queued, self._queued = self._queued, []
        self._pause_client("waiting", False)
        for data in queued:
            self.on_client_data(data)

    # -- server -> client ---------------------------------------------------------------
    def on_server_data(self, data: bytes) -> None:
        tracker = self.tracker
        full = tracker.full
        try:
            chunk, frames = self._s2c.feed_select(data, tracker.mask)
        except ProtocolError as e:
            log.error("session %s: protocol error from upstream: %s", self.info.session_id, e)
            self.terminate(
                sqlstate.PROTOCOL_VIOLATION, "dbgate: the upstream server sent an invalid message"
            )
            return
        if not chunk:
            return
        try:
            out = tracker.server_chunk(chunk, frames, full)
        except ProtocolError as e:
            log.error("session %s: %s", self.info.session_id, e)
            self.terminate(e.sqlstate, f"dbgate: {e}")
            return
        if out is None:
            self.client.write(chunk)
        else:
            self.client.transport.writelines(out)  # type: ignore[union-attr]
        if self._draining and self.idle:
            self.terminate(sqlstate.ADMIN_SHUTDOWN, "dbgate is shutting down; reconnect later")
