"""The seams the relay offers to the rest of dbgate, and the only ones.

``proxy/`` knows nothing of policy, approvals, PII or audit. It calls four kinds of
objects that the composition root (``dbgate.app``, through ``dbgate.gate``) hands it:

* an :class:`Inspector`, once per statement before it is forwarded, which returns a
  verdict (:class:`Allow` or :class:`Refuse`) or an awaitable of one. While an
  awaitable is pending the session keeps the client's later messages in order (and
  keeps reading, so a hang-up cancels the wait), and may send NoticeResponses; a
  CancelRequest ends the wait with 57014. This is how a statement waits for a human.
* a :class:`ResultPlan`, carried by an ``Allow``, for the results of *that* statement
  only: it sees the statement's RowDescription and result formats and returns a
  :class:`RowRewriter`, or None to leave the rows alone. Statements without a plan
  stay on the byte-for-byte fast path even in sessions where others are rewritten.
  A :class:`MessageFilter` sees every notice, error and notification of a session.
* an :class:`Observer`, told of each statement's life: received, decided (also when
  the verdict was remembered), forwarded, then completed (command tag, rows) or
  failed (SQLSTATE). :class:`StatementRecord` is the one object that follows a
  statement through the relay, so whatever needs the whole story (audit, metrics)
  attaches here and nowhere else.
* a :class:`SessionSetup`, once per arriving client, before its upstream session
  exists: what the client's startup parameters may set, and which settings dbgate
  itself sends in the upstream StartupMessage (the identity's session guards). Sent
  there, they are the session's *reset* values: ``RESET``, ``RESET ALL``,
  ``DISCARD ALL`` and ``SET ... TO DEFAULT`` come back to them, not to the server's
  defaults, and the client sees them only through ``SHOW``.

Verdicts may be returned synchronously (the common case costs one method call) or
as an awaitable.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, NamedTuple, Protocol

from dbgate.proxy.prepared import Candidate, PreparedChange
from dbgate.wire.codec import _c_bind_values as _bind_values
from dbgate.wire.codec import bind_params

if TYPE_CHECKING:
    from dbgate.proxy.session_info import SessionInfo

StatementKind = Literal["query", "parse", "bind", "function_call"]


class Statement(NamedTuple):
    """What a client asked the server to do, as the inspector sees it.

    A NamedTuple rather than a frozen dataclass: one is built per statement on the
    relay's hot path, and a frozen dataclass's ``__init__`` costs several times more.
    """

    kind: StatementKind
    sql: str  # the query text; for "bind", the text of the bound statement; "" for function_call
    statement_name: str = ""  # prepared statement name ("" is the unnamed statement)
    portal: str = ""
    params: tuple[bytes | None, ...] = ()  # Bind parameter values, as sent
    #: The format code of each parameter (0 text, 1 binary), already expanded from
    #: Bind's "none / one for all / one each" form.
    param_formats: tuple[int, ...] = ()
    function_oid: int = 0  # for "function_call" (the fast-path FunctionCall message)
    #: The type OID of each parameter as the server will read it: from Parse where the
    #: client named the type, else from the server's ParameterDescription for the
    #: statement when the client asked for one; 0 where neither is known.
    param_types: tuple[int, ...] = ()
    #: For "bind": every statement the server may bind under ``statement_name`` (while
    #: a Parse of that name is unanswered, the old one or the new one); ``sql`` and
    #: ``param_types`` are those of the newest.
    candidates: tuple[Candidate, ...] = ()


class RowRewriter(Protocol):
    """Rewrites the rows of one result (from its description to its completion)."""

    def data_row(self, body: bytes) -> bytes:
        """Return the new DataRow body (the column count must stay the same)."""
        ...

    def copy_data(self, body: bytes) -> bytes:
        """Return the new CopyData payload for COPY TO STDOUT output."""
        ...


class ResultPlan(Protocol):
    """What to do with the results of one statement, decided when it was allowed."""

    def rows(
        self,
        session: SessionInfo,
        description: bytes | None,
        formats: tuple[int, ...],
        statement: int | None = None,
    ) -> RowRewriter | None:
        """A rewriter for a result set, or None to pass its rows untouched.

        ``description`` is the RowDescription body the server sent for this result
        (None when the client executed a portal without ever describing it);
        ``formats`` is the format code of each column as the client receives it
        (from the RowDescription of a simple query, from Bind for a portal).
        ``statement``: in a simple Query, which of its statements (0-based) the result
        set belongs to, counted by the relay from the CommandCompletes before it; None
        for a portal (one statement).
        """
        ...

    def copy_out(self, session: SessionInfo, response: bytes) -> RowRewriter | None:
        """A rewriter for the CopyData of a COPY TO STDOUT (``response`` is the
        CopyOutResponse body), or None."""
        ...


class MessageFilter(Protocol):
    """Sees every NoticeResponse, ErrorResponse and NotificationResponse of a session
    (values echoed in errors, payloads of NOTIFY) and returns the body to send.

    ``verdict``: the verdict of the statement the server was running when it sent the
    notice or error (its result plan, its resolved tokens), or None when the relay
    cannot tell (an error after a Sync, a FunctionCall, nothing in flight).

    A filter may also have ``copy_in(session, data) -> str | None``: then the relay
    shows it the client's COPY FROM STDIN data (each CopyData with the end of the one
    before), and a reason it returns ends the COPY with a CopyFail carrying it
    (:mod:`dbgate.proxy.copy_in`).

    ``notice`` may return None: the NoticeResponse is not sent at all."""

    def notice(
        self, session: SessionInfo, body: bytes, verdict: Allow | None = None
    ) -> bytes | None: ...

    def error(self, session: SessionInfo, body: bytes, verdict: Allow | None = None) -> bytes: ...

    def notification(self, session: SessionInfo, body: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Allow:
    """Forward the statement unchanged.

    ``check_binds`` (for a Parse): show the inspector every Bind of this statement,
    because the decision depends on the parameter values. ``changes`` (for a simple
    Query): what the statement does to the session's prepared statements when it runs
    (SQL ``PREPARE``/``DEALLOCATE``/``DISCARD ALL``), which the relay cannot see itself.
    The relay records both only once the server confirms them; see
    :mod:`dbgate.proxy.prepared`.
    """

    check_binds: bool = False
    #: ``check_binds`` only to resolve PII tokens the agent may send as values: the
    #: relay shows the inspector only Binds whose bytes contain ``tok_`` (a Bind
    #: without one has nothing to resolve), and forwards the others under this verdict.
    check_only_tokens: bool = False
    #: (A Parse with ``check_binds``) a quick way to the verdict the inspector would
    #: give one Bind of this statement: called with the session and the Bind's body,
    #: it returns that Allow, or None when the inspector must see the Bind as usual.
    #: The relay asks it only when the Bind can mean no other statement (see
    #: :mod:`dbgate.proxy.prepared`); a prepared read under a rows-per-window limit is
    #: capped afresh at every Bind this way without its values being decoded.
    recheck_bind: Callable[[SessionInfo, bytes], Allow | None] | None = None
    changes: tuple[PreparedChange, ...] = ()
    #: The inspector promises that the very same message would be allowed again in
    #: this session, with no other effect, until the server reports a changed
    #: parameter (ParameterStatus) or ``SessionInfo.forget_verdicts()`` is called.
    #: The relay may then forward a byte-identical message without asking (the
    #: observer still hears of it, with this same verdict).
    repeatable: bool = False
    #: What to do with this statement's results; None keeps them byte for byte.
    plan: ResultPlan | None = None
    #: Opaque to the relay: handed to the observer with the statement's record.
    note: object = None
    #: Stop the statement once its result has more rows than this (0: no limit). The
    #: relay stops forwarding rows, cancels the statement upstream, and fails it with
    #: ``over_limit`` (default: 54000) so that client and server agree it failed.
    max_rows: int = 0
    over_limit: Refuse | None = None
    #: A proven bound on the rows the statement returns (a unique key pins the table
    #: rows it reads, and nothing in it repeats them: no FROM function, VALUES list,
    #: catalog, grouping sets or set-returning call), or None. As the rules lift
    #: ``max_rows`` for a statement proven to return fewer
    #: (docs/rules.md, "Run-time limits"), the relay does not watch the rows of an
    #: Execute one by one when this bound, or the Execute's own row count, fits in
    #: what is left of ``max_rows``: it counts them from the command tag (from the
    #: Execute's count at PortalSuspended) and lets the client's next messages go on.
    result_bound: int | None = None
    #: Forward this text instead of the client's (Query, Parse): PII tokens the agent
    #: sent back, resolved to the values they stand for. Never ``repeatable``.
    replace_sql: str | None = None
    #: Forward these Bind values instead of the client's (same formats), likewise.
    replace_params: tuple[bytes | None, ...] | None = None
    #: Measure the rows the statement changes (INSERT/UPDATE/DELETE/MERGE, from its
    #: CommandComplete): 0 = do not measure. Past it, the relay undoes the statement's
    #: effects (savepoint) and asks ``over_changes(count)`` what to do: an Allow runs
    #: the statement again unmeasured (an approval); a Refuse fails it for the client.
    #: See :mod:`dbgate.proxy.measure` for what is measured and what the client sees.
    max_changes: int = 0
    over_changes: Callable[[int], Verdict | Awaitable[Verdict]] | None = None
    #: (A Parse) a write whose Binds will be measured (``max_changes``): when this
    #: Parse is the first message of a batch, the relay sets the measurement up before
    #: it, since the Bind that follows in the same batch is past the point where it
    #: still could. A batch that binds nothing measured is kept as it ran.
    opens_measurement: bool = False


@dataclass(frozen=True, slots=True)
class Refuse:
    """Do not run the statement; the client gets an ErrorResponse with this code and text.

    ``position`` (1-based, in characters of the statement text) becomes the error's
    P field, so psql draws its caret under a syntax error.
    """

    sqlstate: str
    message: str
    detail: str = ""
    hint: str = ""
    position: int = 0
    note: object = None


@dataclass(frozen=True, slots=True)
class Notice:
    """A NoticeResponse to send the client right away (e.g. "held for approval #12")."""

    message: str
    detail: str = ""
    fields: dict[str, str] = field(default_factory=dict)


ALLOW = Allow()
ALLOW_CHECKING_BINDS = Allow(check_binds=True)
ALLOW_OPENING_MEASUREMENT = Allow(check_binds=True, opens_measurement=True)
ALLOW_REPEATABLE = Allow(repeatable=True)
Verdict = Allow | Refuse


class Inspector(Protocol):
    """Decides about each statement before it reaches the server.

    Bind messages are shown to the inspector when it sets ``inspects_binds = True``,
    or for statements whose Parse it allowed with ``Allow(check_binds=True)``
    (bind-time decisions on parameter values).

    An inspector may also have a ``strict`` attribute: while it is True, the relay
    shows it every Query, Parse and Bind — no remembered verdict is reused and no
    Bind is skipped — so that it can refuse statements that would otherwise run
    without asking (the gate sets it while the audit trail cannot be written, and
    while its queue is full). While strict, its ``execute_refusal`` (a Refuse, or
    None) refuses every Execute, so that not even a portal bound before is resumed;
    otherwise its ``execute_room()``, if it has one, returns None or an awaitable
    verdict that an Execute waits for before it is sent (room in the audit queue).

    And a ``generation`` attribute (an int): whenever it changes, every session
    forgets the verdicts it remembers (``Allow(repeatable=True)``) before its next
    message — the gate bumps it when its rules or the catalog snapshots its
    verdicts were taken from change.
    """

    def inspect(self, session: SessionInfo, statement: Statement) -> Verdict | Awaitable[Verdict]:
        """Return a verdict, or an awaitable of one to make the session wait.

        While waiting, the inspector may call ``session.notify_client(Notice(...))``.
        Implementations must not raise; if they do, the relay refuses the statement
        (fail closed) with SQLSTATE XX000.
        """
        ...


RecordKind = Literal["query", "execute", "parse", "bind", "function_call"]


class StatementRecord:
    """One statement's life in the relay, as the observer sees it.

    A simple Query is one record (all its statements; ``tags`` has one command tag
    each). In the extended protocol the record is an Execute of a portal, carrying the
    verdict given at its Parse (or at its Bind, when that was inspected); a Parse,
    Bind or FunctionCall that was refused is a record of its own. Fields fill in as
    the statement moves: treat the record as read-only.
    """

    __slots__ = (
        "_bind",
        "_params",
        "fetch",
        "finished_at",
        "id",
        "kind",
        "portal",
        "received_at",
        "remembered",
        "rows",
        "sql",
        "sqlstate",
        "statement_name",
        "tags",
        "verdict",
    )

    def __init__(
        self,
        id: int,
        kind: RecordKind,
        sql: str,
        received_at: float,
        statement_name: str = "",
        portal: str = "",
        params: tuple[bytes | None, ...] = (),
    ) -> None:
        self.id = id  # per session, increasing
        self.kind = kind
        self.sql = sql
        self.statement_name = statement_name
        self.portal = portal
        self._params: tuple[bytes | None, ...] | None = params
        self._bind = b""  # an Execute's Bind, read for its values only when asked
        self.received_at = received_at  # time.monotonic()
        self.verdict: Allow | Refuse | None = None
        self.remembered = False  # the verdict came from the session's memory
        self.tags: list[str] = []  # CommandComplete tags, in order
        self.rows = 0  # rows returned or affected (sum over tags that count rows)
        self.sqlstate = ""  # set when the statement failed
        self.finished_at = 0.0

    @property
    def params(self) -> tuple[bytes | None, ...]:
        """The statement's parameter values as sent (an Execute's: its Bind's)."""
        params = self._params
        if params is None:
            if _bind_values is not None:  # the compiled reader, without a hop
                try:
                    params = self._params = _bind_values(self._bind)
                    return params
                except ValueError:
                    pass  # malformed: bind_params says how
            params = self._params = bind_params(self._bind)
        return params

    @params.setter
    def params(self, values: tuple[bytes | None, ...]) -> None:
        self._params = values

    def bound_by(self, bind: bytes) -> None:
        """The Execute runs a portal bound by this Bind message body: its values are
        read from it if an observer asks (most never do)."""
        self._bind = bind
        self._params = None

    @property
    def note(self) -> object:
        """The inspector's note on the verdict (None before a decision)."""
        return None if self.verdict is None else self.verdict.note

    def __repr__(self) -> str:
        return f"<StatementRecord #{self.id} {self.kind} {self.sql[:40]!r}>"


#: The statement events of :class:`Observer`, the ones it may declare it ``ignores``.
STATEMENT_EVENTS = (
    "statement_received",
    "statement_decided",
    "statement_forwarded",
    "statement_completed",
    "statement_failed",
)


class Observer(Protocol):
    """Told of every statement's life and of sessions starting and ending.

    Called on the relay's hot path, synchronously: implementations must be quick
    (append to a queue) and must not raise; an exception is logged and ignored.

    An observer may name, in a class attribute ``ignores`` (a frozenset of method
    names), the statement events it does nothing with: the relay then does not call
    them (a statement's life is four or five events, and most observers want one).

    An observer may also have a ``follows(session, verdict) -> bool`` method (or a
    ``follows`` attribute of None: every statement): whether it wants the events of an
    allowed statement after ``statement_decided``. The relay may then skip the later
    events of statements it does not follow (an observer must still accept them: they
    come for the Executes of a session that prepared a followed statement). Not
    following a statement keeps the relay's lean path for its answers: an observer
    that hears only decisions (metrics) or a few kinds of statements (DDL) says so.
    Its answer may depend on the session's state only through statements it follows:
    the relay does not ask again for a verdict given again until it followed one.

    An observer that only counts decisions may instead have a ``verdict_given(session,
    kind, verdict, remembered)`` method: told of every Query, Parse, Bind and
    FunctionCall decided (and of a remembered one again), with no record made for it.

    An observer with a true class attribute ``executes_only`` needs no record of an
    allowed Parse or Bind: what runs is recorded by the Executes of the statements
    they prepare (and a refused one is still recorded). Drivers send a Parse and a
    Bind with almost every Execute, so this is a third of the records.
    """

    def session_started(self, session: SessionInfo) -> None: ...

    def session_ended(self, session: SessionInfo) -> None: ...

    def session_refused(
        self, user: str, database: str, client_addr: str, sqlstate: str, message: str
    ) -> None:
        """A client was turned away during startup (bad password, unknown database,
        refused startup parameter, capacity), before any session existed."""
        ...

    def statement_received(self, session: SessionInfo, record: StatementRecord) -> None: ...

    def statement_decided(self, session: SessionInfo, record: StatementRecord) -> None: ...

    def statement_forwarded(self, session: SessionInfo, record: StatementRecord) -> None: ...

    def statement_completed(self, session: SessionInfo, record: StatementRecord) -> None: ...

    def statement_failed(self, session: SessionInfo, record: StatementRecord) -> None: ...


class QuietObserver:
    """An :class:`Observer` that does nothing with any event: a subclass defines the
    events it hears (and names the others in ``ignores``, so the relay skips them)."""

    def session_started(self, session: SessionInfo) -> None:
        pass

    def session_ended(self, session: SessionInfo) -> None:
        pass

    def session_refused(
        self, user: str, database: str, client_addr: str, sqlstate: str, message: str
    ) -> None:
        pass

    def statement_received(self, session: SessionInfo, record: StatementRecord) -> None:
        pass

    def statement_decided(self, session: SessionInfo, record: StatementRecord) -> None:
        pass

    def statement_forwarded(self, session: SessionInfo, record: StatementRecord) -> None:
        pass

    def statement_completed(self, session: SessionInfo, record: StatementRecord) -> None:
        pass

    def statement_failed(self, session: SessionInfo, record: StatementRecord) -> None:
        pass


class AllowAll:
    """The inspector used until policy is configured: every statement is forwarded."""

    inspects_binds = False

    def inspect(self, session: SessionInfo, statement: Statement) -> Verdict:
        return ALLOW


class Arrival(NamedTuple):
    """A client that has authenticated and has no upstream session yet: what
    :class:`SessionSetup` decides by."""

    identity: str
    groups: frozenset[str]
    application_name: str  # as the client sent it in its StartupMessage ("" if not)
    client_addr: str


class SessionSetup(Protocol):
    """How the upstream session of an arriving client starts.

    Implementations must be quick and must not raise; if they do, the client is
    refused (fail closed) with an internal error.
    """

    def upstream_settings(self, arrival: Arrival) -> Mapping[str, str]:
        """Settings (name -> value, as PostgreSQL reads a setting's text) to send in
        the upstream StartupMessage, unless the client's own startup parameters name
        them. A setting the server's version does not know is left out."""
        ...

    def startup_setting(self, arrival: Arrival, name: str, value: str) -> tuple[str, str | None]:
        """One startup parameter the client sent that the relay would forward: the
        value to forward instead (often ``value`` itself), and None; or a message
        for the client (the connection is refused with 42501)."""
        ...
