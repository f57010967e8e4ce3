"""The relay of one client session, after authentication.

Responsibilities, in the order bytes meet them:

client -> server
  * frame the read (``FrameReader``), decode only Query/Parse/Bind/FunctionCall/Close;
  * ask the inspector about each statement; forward allowed bytes in as few writes as
    possible; park the session (pause reading, keep later bytes in order) while an
    asynchronous verdict is pending;
  * turn a refusal into a *server-side* error (see :meth:`Session._inject_refusal`)
    so client and server keep agreeing on transaction state.
server -> client
  * fast path (no transformer, no pending refusal): one pass over the frame offsets
    to track ReadyForQuery status, ParameterStatus and fatal errors, then one write
    of the unchanged chunk;
  * slow path: hand RowDescription/DataRow/CopyData/notices/errors to the transformer
    and swap our marker errors for the refusal the client should see.

Cycles: every Query, FunctionCall and Sync the client sends is answered by one
ReadyForQuery, with two exceptions the relay must allow for. PostgreSQL ignores Sync
while it copies in (libpq's extended-protocol COPY sends one before the data and one
after), so those are taken back when the client ends the COPY. And after an error
inside an unfinished extended-protocol batch the server skips a Query or
FunctionCall the client slipped in before Sync; the relay then counts one cycle
more than the server answers. That costs liveness only (a draining session waits
for the grace period): what the prepared-statement tracking confirms never depends
on the count being exact (see :meth:`PreparedStatements.cycle_done`).

Why refusals go through the server: after an error PostgreSQL rolls back the implicit
transaction of an extended-protocol batch, marks an explicit transaction failed, and
discards messages up to Sync. Imitating all of that in the proxy is fragile; letting
the server raise the error (a simple Query becomes ``DO ... RAISE``; an extended-protocol
message or FunctionCall becomes a named Parse that fails parse analysis) at the exact
position of the refused message makes every one of those rules hold by construction. The marker text in that
error is replaced with the real refusal before the client sees it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from struct import unpack_from
from typing import TYPE_CHECKING

from dbgate.proxy.seams import Allow, Notice, Refuse, ResultTransformer, RowRewriter, Statement
from dbgate.wire import messages as m
from dbgate.wire.errors import ProtocolError
from dbgate.wire.framing import FrameReader, split_frames, type_mask

if TYPE_CHECKING:
    from dbgate.proxy.channel import Channel
    from dbgate.proxy.seams import Inspector
    from dbgate.proxy.session_info import SessionInfo

log = logging.getLogger("dbgate.session")

# Frontend message types
_Q, _P, _B, _F, _S, _C, _X, _H = (ord(c) for c in "QPBFSCXH")
# Backend message types
_Z, _PS, _E, _N, _A, _COPY_IN = (ord(c) for c in "ZSENAG")
_COPY_FAIL = ord("f")
_ROW_DESC, _DATA_ROW, _CMD_COMPLETE, _EMPTY, _SUSPENDED = (ord(c) for c in "TDCIs")
_COPY_OUT, _COPY_BOTH, _COPY_DATA, _COPY_DONE = (ord(c) for c in "HWdc")

# Message types each direction's fast path must see; all others pass as bytes.
# (CopyDone/CopyFail only for cycle accounting, see _client_frames.)
_CLIENT_TYPES = type_mask("QPBFSCXcf")
_SERVER_FAST_TYPES = type_mask("ZSEG")

_TERMINATE = b"X\x00\x00\x00\x04"
MEMO_MAX_ENTRIES = 128  # repeatable verdicts remembered per session
MEMO_MAX_MESSAGE = 2048  # bytes; longer messages are always inspected
_NONCE = secrets.token_hex(8)  # marks errors this process injected; unguessable by clients
_VALID_SQLSTATE = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _bind_statement_name(chunk: bytes, s: int, e: int) -> bytes:
    """The statement name of a Bind message, as raw bytes, without decoding the rest."""
    i = chunk.find(b"\0", s, e)
    j = chunk.find(b"\0", i + 1, e) if i >= 0 else -1
    if j < 0:
        raise ProtocolError("malformed Bind message")
    return chunk[i + 1 : j]


class _Injection:
    __slots__ = ("cycle", "refusal", "token")

    def __init__(self, token: str, refusal: Refuse, cycle: int) -> None:
        self.token = token.encode()
        self.refusal = refusal
        self.cycle = cycle


class Session:
    """Relays one authenticated client to its upstream connection."""

    def __init__(
        self,
        *,
        info: SessionInfo,
        client: Channel,
        upstream: Channel,
        inspector: Inspector,
        transformer: ResultTransformer | None,
        max_message_size: int,
        on_closed: Callable[[Session], None],
    ) -> None:
        self.info = info
        self.client = client
        self.upstream = upstream
        self.inspector = inspector
        self.transformer = transformer
        self.inspect_binds: bool = getattr(inspector, "inspects_binds", True)
        self._on_closed = on_closed
        self._c2s = FrameReader(max_message_size)
        self._s2c = FrameReader(max_message_size)
        # -- client side state
        self._waiting: asyncio.Task[None] | None = None
        self._queued: list[bytes] = []
        self._skip_until_sync = False
        self._read_pauses: set[str] = set()
        self._syncs_since_start = 0  # Syncs sent since the last Bind or Query
        self._copy_in = False  # the server is copying in (CopyInResponse seen)
        # Repeatable verdicts (Allow.repeatable), by message body: drivers re-send the
        # same Parse (unnamed, $n parameters) or BEGIN/COMMIT for every transaction,
        # and skipping the decode and the inspector for them is most of the relay's
        # per-statement work. Bounded in entries and message size; forgotten on any
        # ParameterStatus and by SessionInfo.forget_verdicts().
        self._memo: dict[bytes, Statement] = {}
        # -- cycles: one per Query/FunctionCall/Sync sent, closed by each ReadyForQuery
        self.sent_cycles = 0
        self.done_cycles = 0
        # -- server side state
        self._injections: deque[_Injection] = deque()
        self._injection_seq = 0
        self._rewriter: RowRewriter | None = None
        self._slow = transformer is not None
        self._server_fatal = False
        self._cycle_failed = False  # an ErrorResponse arrived since the last ReadyForQuery
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
        self.upstream.relay_to(self.on_server_data)
        self.client.relay_to(self.on_client_data)

    @property
    def idle(self) -> bool:
        """No statement in flight, none waiting, not inside a transaction."""
        return (
            self.sent_cycles == self.done_cycles
            and self._waiting is None
            and self.info.transaction_status == "I"
        )

    def drain(self) -> None:
        """Close as soon as the session is idle (graceful shutdown)."""
        self._draining = True
        if self.idle:
            self.terminate("57P01", "dbgate is shutting down; reconnect later")

    def terminate(self, sqlstate: str, message: str) -> None:
        """Tell the client why (FATAL), end the upstream session, close both."""
        if self._closed:
            return
        self.client.write(m.error_response(sqlstate, message, severity="FATAL"))
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
        self._on_closed(self)

    def _client_closed(self, exc: Exception | None) -> None:
        if not self._closed:
            if exc is not None:
                log.info("session %s: client connection lost: %s", self.info.session_id, exc)
            self.upstream.write(_TERMINATE)
            self._close()

    def _upstream_closed(self, exc: Exception | None) -> None:
        if self._closed:
            return
        if not self._server_fatal and not self._terminating:
            log.warning("session %s: upstream connection lost: %s", self.info.session_id, exc)
            self.client.write(
                m.error_response(
                    "08006", "dbgate: the upstream server closed the connection", severity="FATAL"
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
        code = fields.pop("C", "00000")
        if notice.detail:
            fields["D"] = notice.detail
        self.client.write(m.notice_response(notice.message, code=code, **fields))

    # -- client -> server ---------------------------------------------------------------
    def on_client_data(self, data: bytes) -> None:
        if self._waiting is not None:
            self._queued.append(data)
            return
        try:
            if self._skip_until_sync:  # every message matters: all but Sync/Flush dropped
                chunk, frames = self._c2s.feed(data)
                full = True
            else:
                chunk, frames = self._c2s.feed_select(data, _CLIENT_TYPES)
                full = False
            if chunk:
                self._client_frames(chunk, frames, full)
        except ProtocolError as e:
            log.info("session %s: protocol error from client: %s", self.info.session_id, e)
            self.terminate(e.sqlstate, f"dbgate: {e}")

    def _client_frames(self, chunk: bytes, frames: list[tuple[int, int, int]], full: bool) -> None:
        write = self.upstream.write
        memo = self._memo
        fwd = 0  # start of the range of chunk not yet forwarded
        for t, s, e in frames:
            hdr = s - 5
            if self._skip_until_sync:
                if t == _S:
                    self._skip_until_sync = False
                    self.sent_cycles += 1
                    self._syncs_since_start += 1
                elif t != _H:
                    if hdr > fwd:
                        write(chunk[fwd:hdr])
                    fwd = e
                continue
            if t == _S:
                self.sent_cycles += 1
                self._syncs_since_start += 1
                continue
            if t == _Q:
                self.sent_cycles += 1
                self._syncs_since_start = 0
                body = chunk[s:e]
                hit = memo.get(body) if memo else None
                if hit is not None and hit.kind == "query":
                    continue
                stmt = Statement("query", m.parse_query(body))
            elif t == _P:
                body = chunk[s:e]
                hit = memo.get(body) if memo else None
                if hit is not None and hit.kind == "parse":
                    self.info.statements.parse_sent(
                        self.sent_cycles + 1, hit.statement_name, hit.sql, False
                    )
                    continue
                name, sql, _ = m.parse_parse(body)
                stmt = Statement("parse", sql, statement_name=name)
            elif t == _B:
                self._syncs_since_start = 0
                if not self.inspect_binds:
                    statements = self.info.statements
                    if not statements.checked or not statements.checks_binds(
                        _bind_statement_name(chunk, s, e)
                    ):
                        continue
                portal, name, formats, params, _ = m.parse_bind(chunk[s:e])
                candidates = self.info.statements.candidates(name)
                stmt = Statement(
                    "bind",
                    candidates[-1].sql if candidates else "",
                    statement_name=name,
                    portal=portal,
                    params=params,
                    param_formats=formats,
                )
            elif t == _F:
                self.sent_cycles += 1
                if e - s < 4:
                    raise ProtocolError("FunctionCall message too short")
                stmt = Statement("function_call", "", function_oid=unpack_from("!I", chunk, s)[0])
            elif t in (_COPY_DONE, _COPY_FAIL):  # CopyDone is "c" both ways
                if self._copy_in:
                    # PostgreSQL ignores Sync (and Flush) while it copies in; libpq's
                    # extended-protocol COPY sends one before the data and one after.
                    # Only the second ends a cycle: take the swallowed ones back.
                    self.sent_cycles -= self._syncs_since_start
                    self._syncs_since_start = 0
                    self._copy_in = False
                continue
            elif t == _C:
                kind, name = m.parse_close(chunk[s:e])
                if kind == "S":
                    self.info.statements.close_sent(self.sent_cycles + 1, name)
                continue
            elif t == _X:
                self._terminating = True
                continue
            else:
                continue
            verdict = self._inspect(stmt)
            if type(verdict) is Allow:
                if verdict.repeatable and t in (_Q, _P) and len(body) <= MEMO_MAX_MESSAGE:
                    if len(memo) >= MEMO_MAX_ENTRIES:
                        memo.clear()
                    memo[body] = stmt
                if t == _P or verdict.changes:
                    self._allowed(t, stmt, verdict)  # repeated Parses hit the memo instead
                continue
            if hdr > fwd:
                write(chunk[fwd:hdr])
            fwd = e
            if isinstance(verdict, Refuse):
                self._refuse(verdict, t)
                if self._skip_until_sync and not full:
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
                self._await_verdict(verdict, t, chunk[hdr:e], stmt)  # type: ignore[arg-type]
            )
            return
        if fwd < len(chunk):
            write(chunk[fwd:] if fwd else chunk)

    def _inspect(self, stmt: Statement) -> Allow | Refuse | Awaitable[Allow | Refuse]:
        try:
            return self.inspector.inspect(self.info, stmt)
        except Exception:
            log.exception("session %s: inspector failed; refusing", self.info.session_id)
            return Refuse("XX000", "dbgate: internal error while inspecting; statement not run")

    def _allowed(self, t: int, stmt: Statement, verdict: Allow) -> None:
        """Record what a forwarded statement may change in the server's prepared statements.

        Called only once the message is on its way: a refused Parse never reaches the
        server, so it must not count (the statement the server holds stays in force).
        """
        statements = self.info.statements
        # A Query is a cycle of its own (already counted); a Parse belongs to the
        # cycle its Sync will end.
        cycle = self.sent_cycles if t == _Q else self.sent_cycles + 1
        if t == _P:
            statements.parse_sent(cycle, stmt.statement_name, stmt.sql, verdict.check_binds)
        for change in verdict.changes:
            statements.sent(cycle, change)

    async def _await_verdict(
        self, pending: Awaitable[Allow | Refuse], mtype: int, message: bytes, stmt: Statement
    ) -> None:
        try:
            verdict = await pending
        except asyncio.CancelledError:
            if self._closed:
                return
            verdict = Refuse("57014", "canceling statement due to user request")
        except Exception:
            log.exception("session %s: verdict failed; refusing", self.info.session_id)
            verdict = Refuse("XX000", "dbgate: internal error while deciding; statement not run")
        if self._closed:
            return
        if not isinstance(verdict, (Allow, Refuse)):
            verdict = Refuse("XX000", "dbgate: inspector returned no verdict; statement not run")
        if isinstance(verdict, Refuse):
            self._refuse(verdict, mtype)
        else:
            self.upstream.write(message)
            try:
                self._allowed(mtype, stmt, verdict)
            except ProtocolError as e:  # too much to keep track of
                self.terminate(e.sqlstate, f"dbgate: {e}")
                return
        self._waiting = None
        queued, self._queued = self._queued, []
        self._pause_client("waiting", False)
        for data in queued:
            self.on_client_data(data)

    def _refuse(self, refusal: Refuse, mtype: int) -> None:
        """Make the server fail in place of the refused message (see module docstring).

        In the extended protocol (and for FunctionCall) the failing message is a Parse
        of a *named* statement whose text fails parse analysis (an invalid integer
        literal carrying our token). A failed Parse creates nothing and, being named,
        leaves the client's unnamed statement and portal alone; a Parse of the unnamed
        statement, or a simple Query, would silently drop the client's unnamed
        statement (so a later ``Bind("")`` would bind our statement instead).
        """
        code = refusal.sqlstate
        if len(code) != 5 or not set(code) <= _VALID_SQLSTATE:
            code = "42501"
        self._injection_seq += 1
        token = f"dbgate-refusal-{_NONCE}-{self._injection_seq}"
        if mtype == _Q:
            tag = f"$dbgate_{_NONCE}$"
            sql = (
                f"DO {tag}BEGIN RAISE EXCEPTION USING ERRCODE = '{code}', "
                f"MESSAGE = '{token}'; END{tag}"
            )
            cycle = self.sent_cycles
            self.upstream.write(m.frame(_Q, sql.encode() + b"\0"))
        else:
            failing_parse = m.frame(
                _P, f"dbgate_{_NONCE}\0SELECT '{token}'::int4\0".encode() + b"\0\0"
            )
            if mtype == _F:
                # FunctionCall is a cycle of its own: our Sync ends it with one RFQ.
                cycle = self.sent_cycles
                self.upstream.write(failing_parse + m.frame(_S, b""))
            else:
                # Answered at the coming Sync; the rest of the batch is dropped meanwhile.
                cycle = self.sent_cycles + 1
                self.upstream.write(failing_parse)
                self._skip_until_sync = True
        self._injections.append(_Injection(token, refusal, cycle))
        self._slow = True

    # -- server -> client ---------------------------------------------------------------
    def on_server_data(self, data: bytes) -> None:
        slow = self._slow
        try:
            if slow:
                chunk, frames = self._s2c.feed(data)
            else:
                chunk, frames = self._s2c.feed_select(data, _SERVER_FAST_TYPES)
        except ProtocolError as e:
            log.error("session %s: protocol error from upstream: %s", self.info.session_id, e)
            self.terminate("08P01", "dbgate: the upstream server sent an invalid message")
            return
        if not chunk:
            return
        if slow:
            self._server_slow(chunk, frames)
            return
        for t, s, _e in frames:
            if t == _Z:
                self._ready(chunk[s])
            elif t == _COPY_IN:
                self._copy_in = True
            else:
                self._server_meta(t, chunk, s, _e)
        self.client.write(chunk)
        if self._draining and self.idle:
            self.terminate("57P01", "dbgate is shutting down; reconnect later")

    def _ready(self, status: int) -> None:
        self.done_cycles += 1
        info = self.info
        info.transaction_status = chr(status)
        if info.statements.pending:
            info.statements.cycle_done(self.done_cycles, self._cycle_failed)
        if self._cycle_failed:
            self._cycle_failed = False

    def _server_meta(self, t: int, chunk: bytes, s: int, e: int) -> None:
        if t == _PS:
            name, value = m.parse_parameter_status(chunk[s:e])
            self.info.server_params[name] = value
            self.info.params_version += 1
            self._memo.clear()  # verdicts may depend on it (application_name, ...)
            return
        self._cycle_failed = True  # the server skips the rest of the cycle
        if b"SFATAL\0" in chunk[s:e] or b"SPANIC\0" in chunk[s:e]:
            self._server_fatal = True

    def _server_slow(self, chunk: bytes, frames: list[tuple[int, int, int]]) -> None:
        out: list[bytes] = []
        run = 0  # start of the unchanged run of chunk not yet copied to out
        transformer = self.transformer
        for t, s, e in frames:
            hdr = s - 5
            replacement: bytes | None = None
            if t == _E and self._injections:
                ours = self._match_injection(chunk[s:e])
                if ours is not None:
                    r = ours.refusal
                    extra = {}
                    if r.detail:
                        extra["D"] = r.detail
                    if r.hint:
                        extra["H"] = r.hint
                    replacement = m.error_response(r.sqlstate, r.message, **extra)
            if t == _E:
                self._cycle_failed = True
            elif t == _COPY_IN:
                self._copy_in = True
            if t == _Z:
                self._ready(chunk[s])
                while self._injections and self._injections[0].cycle <= self.done_cycles:
                    self._injections.popleft()
                self._rewriter = None
            elif t == _PS or (t == _E and replacement is None):
                self._server_meta(t, chunk, s, e)
            if replacement is None and transformer is not None:
                replacement = self._transform(transformer, t, chunk[s:e])
            if replacement is not None:
                if hdr > run:
                    out.append(chunk[run:hdr])
                out.append(replacement)
                run = e
        if run < len(chunk):
            out.append(chunk[run:] if run else chunk)
        if out:
            self.client.transport.writelines(out)  # type: ignore[union-attr]
        if not self._injections and transformer is None:
            self._slow = False
        if self._draining and self.idle:
            self.terminate("57P01", "dbgate is shutting down; reconnect later")

    def _match_injection(self, body: bytes) -> _Injection | None:
        for inj in self._injections:
            if inj.token in body:
                self._injections.remove(inj)
                return inj
        return None

    def _transform(self, transformer: ResultTransformer, t: int, body: bytes) -> bytes | None:
        """Return a whole replacement message, or None to pass the original."""
        info = self.info
        rw = self._rewriter
        if t == _DATA_ROW:
            if rw is None:
                return None
            return m.frame(t, rw.data_row(body))
        if t == _COPY_DATA:
            if rw is None:
                return None
            return m.frame(t, rw.copy_data(body))
        if t == _ROW_DESC:
            self._rewriter = transformer.on_row_description(info, body)
            return None
        if t in (_COPY_OUT, _COPY_BOTH):
            self._rewriter = transformer.on_copy_out(info, body)
            return None
        if t in (_CMD_COMPLETE, _EMPTY, _SUSPENDED, _COPY_DONE):
            if t != _SUSPENDED:
                self._rewriter = None
            return None
        if t == _N:
            return m.frame(t, transformer.on_notice(info, body))
        if t == _E:
            self._rewriter = None
            return m.frame(t, transformer.on_error(info, body))
        if t == _A:
            return m.frame(t, transformer.on_notification(info, body))
        return None
