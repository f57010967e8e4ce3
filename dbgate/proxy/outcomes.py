"""The outcomes of the client's messages in the statement tracker: the half of
:class:`~dbgate.proxy.answers.ServerAnswers` that, once a server message is matched to
the client message that caused it, closes that message's books — an error and the
batch it skips, a prepared statement, portal or Close confirmed, a description read, a
command's tag and rows counted, an Execute started and finished, a COPY begun.

A mixin, like :mod:`dbgate.proxy.answers` (which dispatches the server's messages
here and keeps the cycle's ends), because it is the same object's bookkeeping.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from struct import unpack_from
from typing import Any

from dbgate.proxy.entries import (
    BIND,
    BIND_MSG,
    CLOSE,
    CMD_COMPLETE,
    COPY_END,
    DESCRIBE_P,
    DESCRIBE_S,
    ERROR_MSG,
    EXECUTE,
    EXECUTE_MSG,
    FUNCTION,
    FUNCTION_MSG,
    INJECTED_PARSE,
    INJECTED_QUERY,
    MEASURE_COMMIT,
    MEASURE_SETUP,
    MEASURE_SILENT,
    PARSE,
    PARSE_MSG,
    PING,
    QUERY,
    QUERY_MSG,
    ROW_DESC,
    SILENT_PARSE,
    SILENT_QUERY,
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
from dbgate.proxy.row_limit import RowLimiter
from dbgate.proxy.seams import (
    Allow,
    Refuse,
    RowRewriter,
    StatementRecord,
)
from dbgate.wire import messages as m
from dbgate.wire import sqlstate
from dbgate.wire.errors import ProtocolError

log = logging.getLogger("dbgate.session")

#: The verdict told to the message filter for a Describe or Close (they read no data)
#: and for what the server says with nothing of the client's in flight.
NOTHING_RUN = Allow()
#: Types of the messages a client sends in a session (for ``unsent``)
_FRONTEND = frozenset(b"BCDEFHPQSXcdf")
#: The verdict recorded for a statement kept back when its session ended (unsent)
NOT_SENT = Refuse(
    sqlstate.CONNECTION_FAILURE,
    "dbgate: the session ended before this statement was judged; it was not sent",
)
#: The verdict recorded for a statement the client sent in a batch that had failed
#: already (a message of it refused, or failed by the server): dropped on the way to
#: the client's Sync, as the server would have skipped it
NOT_SENT_IN_FAILED_BATCH = Refuse(
    sqlstate.INTERNAL_ERROR,  # the record's outcome is the batch's SQLSTATE
    "dbgate: an earlier message of this statement's batch failed; like the server, "
    "dbgate skipped it up to the client's Sync: it was not sent",
)


class StatementOutcomes:
    """How each client message ended (see the module docstring)."""

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
        # What each portal of the batch was to bind (from its Bind, failed or skipped):
        # an Execute the server never started is recorded with that statement.
        bound: dict[str, tuple[object, object, bytes]] = {}
        self._fail_entry(entry, code, skipped=False, bound=bound)
        while queue and queue[0][0] != SYNC:
            skipped = queue.popleft()
            if limit is not None and skipped is limit.entry:
                limit.finished = True  # skipped like the rest of its batch
            self._fail_entry(skipped, code, skipped=True, bound=bound)
        if not queue:
            # No Sync sent yet: whatever the client sends until its Sync, the server
            # skips. Not forwarding it keeps the queue equal to what will be answered.
            self.skip_until_sync = True
            self._skip_code = code
            self._skipped.clear()
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

    def _stale_verdict(self) -> Allow | None:
        """The verdict for results and messages of statements in flight since a change
        of the schema began (DDL let through by another session or replica: the
        inspector's ``schema_epoch``): the server parses each statement of a Query string, and
        each one pipelined, only when its turn comes, so it may read what the DDL made
        — a view redefined to read ``email`` under a clean column's name — under the
        verdict of the old schema. The message filter's ``stale`` verdict (every column
        tokenized, errors and notices withheld), or None."""
        epochs = self._epochs
        if epochs is None or epochs.schema_epoch == self._flight_epoch:
            return None
        return self._made_stale_verdict()

    def _portal_stale(self, portal: str) -> Allow | None:
        """The stale verdict (:meth:`_stale_verdict`) for an Execute of ``portal`` when
        a change of the schema began, or the PII catalog was reloaded, since it was
        bound: a portal suspended by a row-limited Execute and resumed after a Sync
        would go on under its verdict, and a column the reload marked as PII, clean
        when the portal was bound, came back raw."""
        epochs = self._epochs
        if epochs is None:
            return None
        bound = self._portal_epochs.get(portal)
        if bound is None or bound == epochs.schema_epoch:
            return None
        return self._made_stale_verdict()

    def _made_stale_verdict(self) -> Allow | None:
        """The message filter's ``stale`` verdict for this session, made once until
        nothing is in flight again; None when the filter makes none."""
        stale = self._stale
        if stale is None:
            make = getattr(self.message_filter, "stale", None)
            if make is None:
                return None
            stale = self._stale = make(self.info)
        return stale

    def _filtered_error(self, body: bytes, verdict: Allow | None = None) -> bytes | None:
        f = self.message_filter
        if f is None:
            return None
        new = f.error(self.info, body, verdict)
        return None if new == body else m.frame(ERROR_MSG, new)

    def _verdict_of_head(self) -> Allow | None:
        """:meth:`_verdict_of` the entry the server answers now; :data:`NOTHING_RUN`
        when the client has nothing in flight (the server speaks on its own).

        None (unknown) while a portal bound under a plan is open: a notice may then
        be what its query said when the server dropped it — at the next Bind of its
        name, a Query, a Close, COMMIT or Sync, under that message's verdict (the
        plan ``auto_explain`` shows at ExecutorEnd, with the Bind's values)."""
        if self._open_plan_portal:
            return None
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
        if kind in (QUERY, EXECUTE):
            stale = self._stale_verdict()
            if stale is not None:
                return stale
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

    def abandon(self) -> None:
        """The session ended with these messages unanswered (the client went away,
        or the server did): each statement among them is recorded ``failed`` with
        08006, since the server may have run it but its answer never came."""
        queue = self._queue
        bound: dict[str, Any] = {}
        while queue:
            entry = queue.popleft()
            try:
                self._fail_entry(entry, sqlstate.CONNECTION_FAILURE, skipped=True, bound=bound)
            except Exception:  # pragma: no cover - the session is gone either way
                log.exception("session %s: an unanswered statement", self.info.session_id)

    def unsent(self, data: bytes, held: Any = None) -> None:
        """The session ended with ``data`` kept back: what the client sent behind a
        statement awaiting its verdict (an approval) or running under a row limit,
        never judged and never sent. Each statement among it (a Query, an Execute, a
        FunctionCall) reached dbgate and is recorded: refused, 08006, with the text
        its Parse and Bind (in ``data`` or before it) gave it.

        ``held`` is the statement that waited (a ``Statement``), whose own record
        says how its wait ended: the Execute of its portal is not recorded again."""
        if self.observer is None:
            return
        parsed: dict[str, str] = {}
        held_names: set[str] = set()
        #: portal -> (text, Bind body); None: the held statement's own portal
        bound: dict[str, tuple[str, bytes] | None] = {}
        if held is not None:
            if held.kind == "parse":
                held_names.add(name_key(held.statement_name))
            elif held.kind == "bind":
                bound[held.portal] = None
        i, n = 0, len(data)
        while n - i >= 5:
            t = data[i]
            (length,) = unpack_from("!I", data, i + 1)
            if t not in _FRONTEND or length < 4 or n - i < 1 + length:
                break  # a message the client never finished (or not one at all)
            body = data[i + 5 : i + 1 + length]
            i += 1 + length
            try:
                if t == PARSE_MSG:
                    name, text, _ = m.parse_parse(body)
                    parsed[name_key(name)] = text
                    held_names.discard(name_key(name))
                    continue
                if t == BIND_MSG:
                    portal, name = bind_names(body)
                    key = name_key(name)
                    if key in held_names:
                        bound[portal] = None
                        continue
                    text = parsed.get(key)
                    if text is None:
                        known = self._sent_stmts.get(key) or self._stmts.get(key)
                        text = known.sql if known is not None else ""
                    bound[portal] = (text, body)
                    continue
                if t == QUERY_MSG:
                    rec = self._record("query", m.parse_query(body))
                elif t == EXECUTE_MSG:
                    portal, _ = m.parse_execute(body)
                    if portal in bound:
                        binding = bound[portal]
                        if binding is None:
                            continue  # the held statement's: recorded with it
                        text, bind = binding
                    else:  # a portal bound before: the server holds it
                        p = self._portals.get(portal)
                        text = p[0].sql if p is not None and p[0] is not None else ""
                        bind = p[2] if p is not None else b""
                    rec = self._record("execute", text, portal=portal)
                    if bind:
                        rec.bound_by(bind)
                elif t == FUNCTION_MSG:
                    rec = self._record("function_call", "")
                else:
                    continue
            except ProtocolError:
                break  # the server would have refused it too: nothing after it ran
            rec.verdict = NOT_SENT
            self._finish(rec, sqlstate.CONNECTION_FAILURE, skipped=True)

    def _fail_entry(
        self, entry: Entry, code: str, skipped: bool, bound: dict[str, Any] | None = None
    ) -> None:
        """An entry the server failed, or skipped after an error (until Sync).

        ``bound`` collects, along one failed batch, the statement each Parse meant to
        prepare (``S`` + name key) and what each Bind meant to bind (``P`` + portal), so
        that an Execute the server never started still has its text and verdict."""
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
            if bound is not None:
                bound["S" + entry[1]] = entry[2]
            self._parse_done(entry, False, skipped)
            return
        if kind == BIND:
            if bound is not None:
                if len(entry) == 6:
                    portal, key = entry[4], entry[5]
                else:
                    portal, stmt_name = bind_names(entry[1])
                    key = name_key(stmt_name)
                stmt = bound.get("S" + key) or self._stmts.get(key)
                bound["P" + portal] = (stmt, entry[2], entry[1])
            self._bind_done(entry, False)
            return
        if kind == CLOSE:
            if entry[3] is not None:
                entry[3].resolve(False)
        elif kind == EXECUTE:
            rec = entry[2]
            if rec is not None and rec.verdict is None and bound is not None:
                # never started (its portal was not yet the server's): the statement
                # its Bind meant, or the portal the server already held
                portal = entry[1]
                p = bound.get("P" + portal) or self._portals.get(portal)
                if p is not None:
                    stmt, bind_verdict, body = p
                    rec.sql = stmt.sql if stmt is not None else ""
                    rec.bound_by(body)
                    rec.verdict = (
                        bind_verdict
                        if bind_verdict is not None
                        else stmt.verdict
                        if stmt is not None
                        else None
                    )
                    rec.remembered = True
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
            if self._epochs is not None:
                self._portal_epochs[portal] = self._flight_epoch
            v = verdict if verdict is not None else stmt.verdict if stmt is not None else None
            if v is not None and (v.plan is not None or v.replace_params or v.replace_sql):
                self._open_plan_portal = True
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
            self._portal_epochs.pop(name, None)

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
            if state is None and entry[1] in self._portals and self._stale_verdict() is not None:
                # no plan, but its rows will run under the stale verdict: by this
                state = self._portal_state[entry[1]] = PortalState()
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
            stale = self._stale_verdict()
            if stale is not None:
                inner = stale.plan.rows(self.info, body, description_formats(body))  # type: ignore[union-attr]
            elif plan is not None:
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
        limit = self._limit
        stopped = limit is not None and limit.entry is entry and limit.hit
        if rec is not None:  # a session repeats a handful of tags: read once each
            tag, rows = command_tag(body)
            if not stopped:  # the client gets the limit's error, not this answer
                rec.tags.append(tag)
            rec.rows += rows
        if entry[3] is not None:
            self._resolve_query_changes(entry, failed=False)
        if stopped:
            # It finished before the cancel took effect: the client gets the limit's
            # error instead, and nothing more of this query string.
            if rec is not None:
                rec.sqlstate = limit.refusal.sqlstate  # type: ignore[union-attr]
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
            stale = self._stale_verdict()
            if stale is not None and stale.plan is not None:
                # bound before the relay followed portals, judged before the schema
                # or the PII catalog moved on: no description to go by, so every
                # column of its rows is tokenized as text (a driver that reads them
                # as another type fails; it never sees the values)
                self._set_rewriter(stale.plan.rows(self.info, None, ()))
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
        stale = self._stale_verdict() or self._portal_stale(portal)
        if stale is not None:
            verdict = stale if verdict is None else replace(verdict, plan=stale.plan)
            self._portal_state.setdefault(portal, PortalState()).rewriter = None
        elif verdict is None or (verdict.plan is None and not verdict.max_rows):
            return
        fetch = entry[3]
        if fetch is not None:  # the client's view: it cannot reach the limit
            state = self._portal_state.get(portal)
            if state is None or state.rewriter is None:
                bound = countable_rows(verdict, fetch, state.rows if state is not None else 0)
                if bound is not None:
                    self._counting = bound  # its rows are counted at its end
                    return
        state = self._plan_state(portal) if stale is None else self._portal_state[portal]
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
            # a suspended portal's tag counts nothing: the rows it forwarded do, and
            # uncounted, its Execute's row count (the server suspends it only there)
            if tag == "suspended" and not forwarded:
                forwarded = getattr(rec, "fetch", 0)
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
        stale = self._stale_verdict()
        if stale is not None:
            verdict = stale if verdict is None else replace(verdict, plan=stale.plan)
        if verdict is None:
            return
        inner = verdict.plan.copy_out(self.info, body) if verdict.plan is not None else None
        rewriter = inner if self._counting is not None else self._limited(entry, verdict, inner)
        if rewriter is not None:
            self._copy_out = True
            self._set_rewriter(rewriter)
