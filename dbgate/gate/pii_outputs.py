"""What the PII gate hands the relay for a statement it let through: the plan of its
results (:class:`PiiResultPlan`, a ``ResultPlan``), and the filter of the notices,
errors and notifications a session receives (:class:`PiiFilter`, a ``MessageFilter``),
with the watch of cursors that run their query at COMMIT (:class:`HeldCursorWatch`).

The relay calls these per row, per message and per statement; the gate that decides
(``dbgate.gate.pii.PiiGate``) only makes them.
"""

from __future__ import annotations

from typing import Any

from dbgate.pii.lineage.results import Analysis
from dbgate.pii.plans import StatementPlan
from dbgate.proxy.seams import Allow, QuietObserver, RowRewriter, StatementRecord
from dbgate.proxy.session_info import SessionInfo

__all__ = ["STATE_KEY", "HeldCursorWatch", "PiiFilter", "PiiResultPlan"]

#: Where a session keeps its PII state (``PiiSession``): its room and message filter
STATE_KEY = "pii"


class PiiResultPlan:
    """A :class:`~dbgate.proxy.seams.ResultPlan` for one statement's PII plan."""

    __slots__ = ("plan",)

    def __init__(self, plan: StatementPlan) -> None:
        self.plan = plan

    def _current(self) -> StatementPlan:
        plan = self.plan
        room = plan.room
        if plan.version != room.version or (  # the schema was reloaded since it was planned
            plan.unsettled is not None and not plan.unsettled()  # or read after a change
        ):
            fresh = room.plan(plan.sql)
            if plan.token_params or plan.runs_pii:
                # what the Bind resolved, and the cursor or prepared statement it runs,
                # are this statement's whatever the snapshot: its plan keeps them
                fresh = StatementPlan(
                    room,
                    plan.sql,
                    fresh.analysis,
                    plan.exemption,
                    plan.token_params,
                    plan.runs_pii or fresh.runs_pii,
                )
            plan = self.plan = fresh
        return plan

    def rows(
        self,
        session: SessionInfo,
        description: bytes | None,
        formats: tuple[int, ...],
        statement: int | None = None,
    ) -> RowRewriter | None:
        return self._current().rows(description, formats, statement)  # type: ignore[return-value]

    def copy_out(self, session: SessionInfo, response: bytes) -> RowRewriter | None:
        return self._current().copy_out(response)  # type: ignore[no-any-return]

    @property
    def tokenizes(self) -> bool:
        """Whether any output is tokenized (a plan may only mark a statement that reads
        PII where its rows are chosen, whose errors are withheld)."""
        return bool(self.plan.pii_outputs)


#: The session ran a statement whose code may run again when its transaction ends (a
#: cursor WITH HOLD over PII, a write that queued deferred triggers), in a
#: transaction not yet over
_HELD_CURSOR = "pii.held_cursor"


def _declares_held_cursor(verdict: Any) -> bool:
    """Whether the statement leaves code to run when its transaction ends: a cursor
    WITH HOLD over PII (its query runs at COMMIT), or a write to a relation whose own
    triggers or rules run (a constraint trigger ``DEFERRABLE INITIALLY DEFERRED``, or
    one ``SET CONSTRAINTS … DEFERRED`` made so, fires at COMMIT or at ``SET
    CONSTRAINTS … IMMEDIATE``; its ``RAISE`` may say what it read), or any cursor
    over PII: its query's executor ends when the cursor is closed (``CLOSE``, COMMIT,
    ROLLBACK), and what it says then (the plan ``auto_explain`` shows, with the values
    the text compared) is the message of that statement."""
    plan = getattr(verdict, "plan", None)
    if not isinstance(plan, PiiResultPlan):
        return False
    analysis = plan.plan.analysis
    return bool(analysis.hold_cursors or analysis.hidden_code or analysis.declares)


class HeldCursorWatch(QuietObserver):
    """An :class:`~dbgate.proxy.seams.Observer`: a cursor declared WITH HOLD runs its
    query when the transaction that declared it commits, so an error of that query
    (``current_setting(full_name)`` names the value) is the COMMIT's — a statement that
    names no PII. So does a deferred constraint trigger a write queued (``RAISE
    EXCEPTION 'bad name %', NEW.full_name`` is the COMMIT's error, or ``SET CONSTRAINTS
    ALL IMMEDIATE``'s). Once such a statement has completed in a transaction that is
    not over, every error and notice of the session is withheld (:class:`PiiFilter`)
    until the session is next idle: its transaction is over, the cursor or trigger has
    run or is gone. Marked when the server answered the statement, so a pipelined
    statement's idle status from before it does not end the mark."""

    ignores = frozenset({"statement_received", "statement_decided", "statement_forwarded"})
    executes_only = True

    def follows(self, session: SessionInfo, verdict: Allow) -> bool:
        return _declares_held_cursor(verdict)

    def statement_completed(self, session: SessionInfo, record: StatementRecord) -> None:
        if not _declares_held_cursor(record.verdict):
            return
        state = session.state
        if record.kind in ("query", "function_call") and session.transaction_status == "I":
            return  # its own transaction is over: an error of the cursor was the Query's
        if _HELD_CURSOR not in state:
            state[_HELD_CURSOR] = True
            session.when_idle(lambda: state.pop(_HELD_CURSOR, None))

    def statement_failed(self, session: SessionInfo, record: StatementRecord) -> None:
        pass  # the transaction is failed: it ends in a rollback, the cursor never runs


class PiiFilter:
    """The proxy's :class:`~dbgate.proxy.seams.MessageFilter`: each session's room."""

    def _filter(self, session: SessionInfo) -> Any:
        s = session.state.get(STATE_KEY)
        return None if s is None else s.filter

    def notice(
        self, session: SessionInfo, body: bytes, verdict: Allow | None = None
    ) -> bytes | None:
        """A notice of a statement that involves PII is withheld, and only its first is
        sent: how many it raised may be a value (``count(to_tsquery('english',
        left('the' || g, 3)))`` over ``generate_series(1, ascii(substr(email, 1, 1)))``
        raised one NOTICE per row, 109 of them for an ``m``)."""
        f = self._filter(session)
        if f is None:
            return body
        involves = _involves_pii(verdict) or _HELD_CURSOR in session.state or _server_log_line(body)
        if involves and not _first_notice(session, verdict):
            return None
        return f.notice(body, involves_pii=involves, positions=_positions(verdict))

    def error(self, session: SessionInfo, body: bytes, verdict: Allow | None = None) -> bytes:
        f = self._filter(session)
        if f is None:
            return body
        involves = _involves_pii(verdict) or _HELD_CURSOR in session.state
        return f.error(body, involves_pii=involves, positions=_positions(verdict))

    def stale(self, session: SessionInfo) -> Allow | None:
        """The verdict the relay runs a statement's results and messages under when
        they arrive after the schema snapshot moved on since it was judged (DDL of
        another session or replica, its verdict the old schema's): every column
        tokenized (fresh), errors and notices withheld. None: the session sees raw
        values (an exemption) or has no room yet."""
        s = session.state.get(STATE_KEY)
        if s is None or s.exemption is not None:
            return None
        return Allow(plan=PiiResultPlan(StatementPlan(s.room, "", Analysis(), distrust=True)))

    def notification(self, session: SessionInfo, body: bytes) -> bytes:
        f = self._filter(session)
        return body if f is None else f.notification(body)

    def copy_in(self, session: SessionInfo, data: bytes) -> str | None:
        """Why the client's COPY FROM STDIN data must not be stored (a token in it), or
        None (see :mod:`dbgate.proxy.copy_in`)."""
        f = self._filter(session)
        return None if f is None else f.copy_data(data)  # type: ignore[no-any-return]


#: The verdict of the statement whose first withheld notice was sent, until the session
#: is next idle (``PiiFilter.notice``)
_NOTICED = "pii.noticed"


def _first_notice(session: SessionInfo, verdict: Allow | None) -> bool:
    """Whether this is the first withheld notice of the statement running under
    ``verdict`` (the same object for every message of one statement; None, for what
    the relay cannot tell, counts as one statement until the session is idle)."""
    state = session.state
    noticed = state.get(_NOTICED)
    if noticed is not None and noticed[0] is verdict:
        return False
    if noticed is None:
        session.when_idle(lambda: state.pop(_NOTICED, None))
    state[_NOTICED] = (verdict,)
    return True


def _involves_pii(verdict: Allow | None) -> bool:
    """Whether the statement a notice or error is about involves PII (fail closed:
    unknown counts): its verdict carries this gate's result plan (PII outputs, or PII
    read anywhere, see ``StatementPlan.involves_pii``), or tokens were resolved into
    its text or its Bind's values."""
    if verdict is None:
        return True
    return (
        isinstance(verdict.plan, PiiResultPlan)
        or verdict.replace_sql is not None
        or verdict.replace_params is not None
    )


def _server_log_line(body: bytes) -> bool:
    """Whether a NoticeResponse is a line of the server's log (severity LOG or DEBUG),
    sent only because the session lowered ``client_min_messages``: such a line says
    what the server logged — ``log_min_duration_statement``'s ``duration: … execute
    <unnamed>: …`` with its ``Parameters: $1 = '…'``, the text dbgate forwarded — and
    is sent after the message it is about has completed, when the next one in a
    pipeline (perhaps without PII) is the one the relay sees running. Unreadable:
    taken as one."""
    pos, n = 0, len(body)
    severity = b""
    while pos < n and body[pos] != 0:
        end = body.find(b"\0", pos + 1)
        if end < 0:
            return True
        code = body[pos]
        if code == 0x56:  # V: the severity, never localized
            return body[pos + 1 : end] in (b"LOG", b"DEBUG")
        if code == 0x53:  # S: localized (a server before 9.6 sends no V)
            severity = body[pos + 1 : end]
        pos = end + 1
    return severity in (b"LOG", b"DEBUG")


def _positions(verdict: Allow | None) -> bool:
    """Whether the server's positions are in the client's text (not when dbgate
    forwarded another: tokens resolved into it)."""
    return verdict is not None and verdict.replace_sql is None
