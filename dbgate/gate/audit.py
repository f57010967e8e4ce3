"""The audit trail at the gate: every statement and session, recorded where it happens.

Two paths into the audit writer (``dbgate.audit``):

* **durable**, before anything unsafe: a denied statement's record is committed before
  the client hears of the refusal; a held statement's before it waits, its approval's
  before it is forwarded, a rejection's before the client is told (the gate and the
  hold desk call :meth:`AuditTrail.durable` and fail closed when it cannot be done);
* **batched**, for everything else: the relay's observer seam (received, decided,
  forwarded, completed, failed — one place where a statement's whole life is visible)
  hands each finished statement and each session event to :meth:`AuditWriter.record`,
  which queues it for the next COPY.

Statement text is recorded with every literal replaced by ``$n`` (the classifier's
own literal mask: 0.2 µs, so it costs nothing on the hot path); Bind values go to the
writer as raw bytes, which it stores only as keyed hashes. No raw value is written.

What a record takes from the classification — the fingerprint (a full parse of the
text), the sorted categories, tables and columns — is worked out once per
classification and remembered (:class:`_Shape`): the classifier hands the same
object to every statement of one shape, whatever its literals.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from pglast import parser as pg

from dbgate.audit import SessionEvent, StatementEvent
from dbgate.audit.errors import AuditUnavailable
from dbgate.audit.events import statement_like, statement_like_plain
from dbgate.gate.declarations import declared
from dbgate.gate.notes import GateNote
from dbgate.pii.sql_mask import looks_like_pii, mask_every_literal, mask_text, slow_to_scan
from dbgate.policy.literals import fast_mask, mask, render_key, spans
from dbgate.proxy.entries import row_count
from dbgate.proxy.seams import Allow, QuietObserver, Refuse, StatementRecord
from dbgate.proxy.session_info import SessionInfo

if TYPE_CHECKING:
    from dbgate.approvals.model import ApprovalRequest
    from dbgate.audit import AuditWriter
    from dbgate.policy.model import Decision

log = logging.getLogger("dbgate.gate")

_MASK_CACHE = 20_000
_SHAPE_CACHE = 4_096
_MAX_TEXT = 64 * 1024
# A run of "/*" costs PostgreSQL's scanner the square of its length (4 s for 64 KB,
# twice per record, on the event loop): such a text is masked from there unscanned
# (dbgate.pii.sql_mask.slow_to_scan).
UNSCANNED_RUN = "<masked: a run of operator characters and comment openers was not scanned>"
_RECORDED = frozenset({"query", "execute", "function_call"})
#: Scanner tokens that are constants.
_LITERAL_TOKENS = frozenset({"SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST"})
#: Scanner tokens the quick mask copies: comments and quoted identifiers.
_SEARCHED_TOKENS = frozenset({"IDENT", "UIDENT", "C_COMMENT", "SQL_COMMENT"})
#: What a record and an approval request say instead of an ``application_name`` the
#: server reported that the client never gave (see :func:`client_gave`).
SERVER_SET_APPLICATION_NAME = "<set by the server>"
#: Statements of a session whose text and values a newly reported application name is
#: looked for in (an extended-protocol batch reports it at its Sync, after them all).
_RECENT = 16
#: Names a session gave that are remembered as its own (beyond, each is looked for
#: again among its recent statements).
_GIVEN_NAMES = 64
_ESCAPED_BYTE = re.compile(r"\\x[0-9a-fA-F]{2}")
_NOT_PRINTABLE = re.compile(rb"[^\x20-\x7e]")


def client_gave(value: str, texts: Any) -> bool:
    """Whether ``value``, an ``application_name`` the server reports, is one the client
    itself wrote: in the text or a value of one of ``texts`` ((sql, params) pairs).

    The server reports whatever the setting holds, and a statement can fill it from
    the data (``set_config('application_name', full_name, false)``, a ``DO`` block):
    recorded as reported, that value would be written raw into every later record of
    the session and shown to approvers, where masking by look finds no name, address
    or birth date. A name the client gave appears in what it sent (a ``SET``, a
    ``set_config`` literal or Bind value), possibly cut to 63 bytes, with non-ASCII
    bytes replaced (``?``, or ``\\xNN`` since PostgreSQL 16), or, unquoted, folded to
    lower case."""
    if not value:
        return True
    folded = value.lower()
    quoted = value.replace("'", "''")
    cleaned = _ESCAPED_BYTE.sub("?", value) if "\\x" in value else value
    for sql, params in texts:
        if len(sql) > _MAX_TEXT:  # a name is given in a short statement: not rescanned
            sql, params = "", ()
        if sql and (value in sql or quoted in sql or folded in sql.lower()):
            return True
        for p in params:
            if p is None or len(p) > _MAX_TEXT:
                continue
            raw = p if isinstance(p, bytes) else str(p).encode("utf-8", "surrogateescape")
            if value.encode("utf-8", "surrogateescape") in raw:
                return True
            if cleaned.encode("ascii", "replace") in _NOT_PRINTABLE.sub(b"?", raw):
                return True
        if sql and cleaned in _NOT_PRINTABLE.sub(b"?", sql.encode("utf-8", "replace")).decode():
            return True
    return False


def masked_text(sql: str, cache: dict[str, str], shapes: dict[str, str] | None = None) -> str:
    """``sql`` with every literal replaced by ``$n``, as PostgreSQL's normalize does.

    ``cache`` remembers texts as sent (drivers re-send the same Parse); ``shapes``, when
    given, the masked form of each literal mask, so that a client that inlines new
    values every time (pgbench -M simple, ORMs) pays for the mask, not the rendering.

    The quick literal mask is only used where PostgreSQL's scanner agrees with it (see
    :func:`_mask_agrees`, checked once per mask): it copies what it does not recognise
    verbatim (``5551234567``, ``123456789.``, ``555_123_4567``), which is fine for a
    cache key and not for a record. Everything else is masked by the scanner
    (:func:`dbgate.pii.sql_mask.mask_every_literal`): every literal, whatever its
    place.
    """
    hit = cache.get(sql)
    if hit is not None:
        return hit
    if len(sql) > _MAX_TEXT:
        # Scanning costs the event loop ~0.4 ms per KiB: the first 64 KiB are masked,
        # and the record says what was left out rather than end as if the statement
        # ended there (what acts may follow a long harmless head).
        return _masked_head(sql[:_MAX_TEXT]) + (
            f"<masked: the statement has {len(sql)} characters; after the first "
            f"{_MAX_TEXT}, {len(sql) - _MAX_TEXT} were not scanned>"
        )
    text = sql
    cut = slow_to_scan(text)
    if cut is not None:  # masked from there on, as text the scanner cannot read
        return mask_every_literal(text[:cut]) + UNSCANNED_RUN
    key = fast_mask(text)
    if key is None:
        masked = mask_every_literal(text)
    elif shapes is None:
        masked = render_key(key) if _mask_agrees(text, key) else mask_every_literal(text)
    else:
        masked = shapes.get(key)  # type: ignore[assignment]
        if masked is None:
            if len(shapes) >= _MASK_CACHE:
                shapes.clear()
            # "" marks a mask the scanner disagrees with: such texts are scanned
            masked = shapes[key] = render_key(key) if _mask_agrees(text, key) else ""
        if not masked:
            masked = mask_every_literal(text)
        if masked != sql:  # new literals: this very text will hardly come again
            return masked
    if len(cache) >= _MASK_CACHE:
        cache.clear()
    cache[sql] = masked
    return masked


def _masked_head(text: str) -> str:
    """The first part of a statement too long to scan whole, every literal masked
    (cut inside a literal or comment: masked from there on, as unscannable)."""
    cut = slow_to_scan(text)
    if cut is not None:
        return mask_every_literal(text[:cut]) + UNSCANNED_RUN
    return mask_every_literal(text)


def _mask_agrees(text: str, key: str) -> bool:
    """Whether the quick literal mask found exactly the constants PostgreSQL's scanner
    finds in ``text`` (a leading ``-`` it folds into a number aside). Then it does for
    every text with the same mask: the mask is injective and the text outside the
    literals is the same (see :mod:`dbgate.policy.literals`). A comment or quoted
    identifier that looks like PII (the same in every such text) also says no: the
    scanner's mask masks it."""
    found = spans(text)
    if found is None or mask(text) != key:  # the key as the compiled mask made it
        return False
    try:
        tokens = pg.scan(text)
    except pg.ParseError:
        return False
    scanned = [(t.start, t.end + 1) for t in tokens if t.name in _LITERAL_TOKENS]
    if any(
        t.name in _SEARCHED_TOKENS and looks_like_pii(text[t.start : t.end + 1]) for t in tokens
    ):
        return False
    quick = [(s + 1 if kind in "MG" else s, e) for s, e, kind in found]
    return scanned == quick


def recorded_application_name(session: SessionInfo, texts: Any = ()) -> str:
    """The ``application_name`` a record or an approval request carries: the one the
    session started with, or one the server reported since that the client gave in
    ``texts`` (:func:`client_gave`); anything else is :data:`SERVER_SET_APPLICATION_NAME`."""
    value = session.server_params.get("application_name", session.application_name)
    if value == session.application_name or client_gave(value, texts):
        return value
    return SERVER_SET_APPLICATION_NAME


def masked_names(names: Any) -> tuple[str, ...]:
    """Table or column names, sorted, with what looks like PII masked by look: a name
    is whatever the agent quoted (``FROM "ann@example.com"``), and the writer does not
    scrub names."""
    return tuple(sorted({mask_text(n) for n in names}))


def raw_params(params: Any) -> tuple[bytes | None, ...]:
    """Bind values as the writer hashes them: bytes (text values in UTF-8, as a client
    sends them in text format, so they hash as on the allowed path). The writer stores
    a ``str`` parameter as text, scrubbed only by look: a decoded value handed on as it
    is — a held or refused statement's — would be recorded as typed."""
    return tuple(p.encode("utf-8", "surrogateescape") if isinstance(p, str) else p for p in params)


class _Shape:
    """The parts of a record that depend only on the classification."""

    __slots__ = ("categories", "classification", "columns", "declares", "fingerprint", "tables")

    def __init__(self, c: Any) -> None:
        self.classification = c  # kept alive: its id() keys the cache
        self.fingerprint: str = c.fingerprint if c is not None else ""
        self.categories: tuple[str, ...] = ()
        self.tables: tuple[str, ...] = ()
        self.columns: tuple[str, ...] = ()
        #: what the statement declares (SET dbgate.purpose ...): a property walked anew
        #: at every read
        self.declares: tuple[tuple[str, str], ...] = getattr(c, "declares", ()) or ()
        if c is not None:
            self.categories = tuple(sorted(x.value for x in c.categories))
            # names the agent typed: a quoted identifier may hold anything
            self.tables = masked_names(c.tables)
            self.columns = masked_names({x for s in c.statements for x in s.columns})


_NO_SHAPE = _Shape(None)


class AuditTrail(QuietObserver):
    """The gate's side of the audit: events built from what the relay and gate know."""

    #: A statement is recorded when it ends (see Observer): the relay need not tell the
    #: rest of its life.
    ignores = frozenset({"statement_received", "statement_decided", "statement_forwarded"})
    #: An allowed Parse or Bind is not recorded (see ``_finished``): its Executes are.
    executes_only = True

    def __init__(self, writer: AuditWriter) -> None:
        self.writer = writer
        # asked before every statement: the writer's own methods, without a hop here
        self.admit = writer.admit  # type: ignore[method-assign]
        self.admits_now = writer.admits_now  # type: ignore[method-assign]
        #: id(note) -> what an allowed statement's record takes from its note (see
        #: _of_note): the statements of one shape share a note
        self._allowed: dict[int, tuple[Any, ...]] = {}
        self._masked_shapes: dict[str, str] = {}
        self._shapes: dict[int, _Shape] = {}
        #: id(note) -> (note, its shape, its rule): a prepared statement's executions
        #: share their Parse's note
        self._notes: dict[int, tuple[GateNote, _Shape, str]] = {}
        #: text as sent -> (masked, whether it opens with a comment that may declare)
        self._texts: dict[str, tuple[str, bool]] = {}
        self._started: dict[int, float] = {}  # session id -> monotonic start
        #: session id -> (application_name as the server reports it, as recorded): a
        #: name the client did not give is not recorded (see client_gave)
        self._apps: dict[int, tuple[str, str]] = {}
        #: session id -> the names it began with or gave since (a SET rolled back
        #: reports the one before again, maybe long after it was sent)
        self._given: dict[int, set[str]] = {}
        #: session id -> (text, values) of its last statements, where a newly reported
        #: application_name is looked for
        self._recent: dict[int, deque[tuple[str, Any]]] = {}
        #: session id -> id(note) -> (note, masked text, application name, session,
        #: the event it was made for or None, the text as sent): an allowed statement's record is a copy
        #: of its shape's last one in the session, its varying fields replaced (see
        #: _finished); None when its intent is read anew each time (declarations)
        self._protos: dict[int, dict[int, tuple[Any, ...]]] = {}

    # -- admission and durability ---------------------------------------------------------
    def admit(self) -> Awaitable[None] | None:
        """Before a statement is judged: None to go ahead, an awaitable to wait for
        room in the queue; raises :class:`AuditUnavailable` when statements must be
        refused (``audit.on_failure: refuse`` and the state database is away)."""
        return self.writer.admit()

    def admits_now(self) -> bool:
        """Whether :meth:`admit` would let a statement go ahead at once."""
        return self.writer.admits_now()

    def application_name(self, session: SessionInfo, sql: str = "", params: Any = ()) -> str:
        """The session's ``application_name`` as its records (and approval requests)
        carry it: as the session began, or as the server reports it since when the
        client gave that name in a statement (``sql``/``params`` the one now recorded,
        also noted among the session's recent ones); otherwise
        :data:`SERVER_SET_APPLICATION_NAME` — a value the server filled from the data
        is not written raw."""
        sid = session.session_id
        recent = self._recent.get(sid)
        if recent is None:
            recent = self._recent[sid] = deque(maxlen=_RECENT)
        if sql or params:
            recent.append((sql, params))
        value = session.server_params.get("application_name", session.application_name)
        known = self._apps.get(sid)
        if known is not None and known[0] == value:
            return known[1]
        given = self._given.get(sid)
        if given is None:
            given = self._given[sid] = {session.application_name}
        if value in given:
            recorded = value
        elif client_gave(
            value,
            [(t, p.params if type(p) is StatementRecord else p) for t, p in recent],
        ):
            recorded = value
            if len(given) < _GIVEN_NAMES:
                given.add(value)
        else:
            recorded = SERVER_SET_APPLICATION_NAME
        self._apps[sid] = (value, recorded)
        return recorded

    async def durable(self, event: StatementEvent) -> bool:
        """Commit ``event`` now; False when it cannot be (the caller fails closed)."""
        try:
            await self.writer.record_durable(event)
        except AuditUnavailable as e:
            log.error("audit: a record could not be made durable (%s)", e)
            return False
        return True

    def statement(
        self,
        session: SessionInfo,
        stage: str,
        decision: str,
        sql: str,
        note: GateNote | None,
        params: tuple[Any, ...] = (),
        approval_id: str = "",
        outcome: str = "",
        reason: str = "",
        rows: int | None = None,
        duration_us: int | None = None,
        tokenized: bool | None = None,
    ) -> StatementEvent:
        """A statement's event. The relay's observer calls it for every statement
        that ends, positionally (keywords cost a third of building the event)."""
        if note is None:
            shape, rule = _NO_SHAPE, ""
        else:
            known = self._notes.get(id(note))
            if known is None or known[0] is not note:
                if len(self._notes) >= _SHAPE_CACHE:
                    self._notes.clear()
                known = self._notes[id(note)] = (note, self._shape(note.classification), note.rule)
            shape, rule = known[1], known[2]
        text = self._texts.get(sql) or self._text(sql)
        statement_declares = shape.declares
        intent: dict[str, str] = {}
        if session.declared or statement_declares or text[1]:
            intent = declared(session.declared, statement_declares, sql)
        # Positional, in the order of the dataclass's fields: once per statement, and
        # a third of the cost of keywords. A reordered field fails
        # test_every_field_of_a_statement_event_comes_from_its_own_source.
        return StatementEvent(
            stage,  # type: ignore[arg-type]
            text[0],
            decision,
            time.time(),  # as StatementEvent's own default
            session.identity,
            session.session_id,
            self.application_name(session, sql, params),
            session.client_addr,
            session.database,
            mask_text(intent["purpose"]) if "purpose" in intent else "",
            mask_text(intent["model"]) if "model" in intent else "",
            params,
            shape.fingerprint,
            shape.categories,
            shape.tables,
            shape.columns,
            rule,
            approval_id,
            outcome,
            rows,
            duration_us,
            tokenized,
            reason,
        )

    def _of_note(self, note: Any) -> tuple[Any, ...]:
        """What the record of a statement allowed with ``note`` takes from it, as
        statement() and _finished() work it out: (note, shape, rule, decision,
        approval id)."""
        if isinstance(note, GateNote):
            approval = note.approval
            known: tuple[Any, ...] = (
                note,
                self._shape(note.classification),
                note.rule,
                "approved" if approval is not None else "allow",
                approval.request_id if approval is not None else "",
            )
        else:
            known = (note, _NO_SHAPE, "", "allow", "")
        if len(self._allowed) >= _SHAPE_CACHE:
            self._allowed.clear()
        self._allowed[id(note)] = known
        return known

    def _proto(
        self, session: SessionInfo, note: Any, sql: str, text: tuple[str, bool], app: str
    ) -> tuple[Any, ...]:
        """(note, masked text, application name, session, event, text as sent): what
        _finished copies the records of an allowed statement with ``note`` from, in
        ``session``; the event is None when the statement's text or note may declare intent (read anew
        for each record, with the session's declarations)."""
        allowed = self._allowed.get(id(note))
        if allowed is None or allowed[0] is not note:
            allowed = self._of_note(note)
        _, shape, rule, decision, approval_id = allowed
        proto = None
        if not (shape.declares or text[1]):
            proto = StatementEvent(
                "completed",
                text[0],
                decision,
                0.0,
                session.identity,
                session.session_id,
                app,
                session.client_addr,
                session.database,
                "",
                "",
                (),
                shape.fingerprint,
                shape.categories,
                shape.tables,
                shape.columns,
                rule,
                approval_id,
                "",
                None,
                None,
                None,
                "",
            )
        protos = self._protos.get(session.session_id)
        if protos is None:
            if len(self._protos) >= _SHAPE_CACHE:
                self._protos.clear()
            protos = self._protos[session.session_id] = {}
        elif len(protos) >= _SHAPE_CACHE:
            protos.clear()
        known = protos[id(note)] = (note, text[0], app, session, proto, sql)
        return known

    def _text(self, sql: str) -> tuple[str, bool]:
        """``sql`` masked, and whether it opens with a comment (that may declare
        intent); kept when :func:`masked_text` would keep it (a text that comes again,
        not one with fresh literals)."""
        kept: dict[str, str] = {}
        masked = masked_text(sql, kept, self._masked_shapes)
        text = (
            masked,
            sql.startswith("/*") or (sql[:1].isspace() and sql[:64].lstrip().startswith("/*")),
        )
        if kept:
            if len(self._texts) >= _MASK_CACHE:
                self._texts.clear()
            self._texts[sql] = text
        return text

    def _shape(self, c: Any) -> _Shape:
        if c is None:
            return _NO_SHAPE
        shape = self._shapes.get(id(c))
        if shape is None or shape.classification is not c:
            if len(self._shapes) >= _SHAPE_CACHE:
                self._shapes.clear()
            shape = self._shapes[id(c)] = _Shape(c)
        return shape

    def held(
        self,
        session: SessionInfo,
        request: ApprovalRequest,
        decision: Decision,
        stage: str,
        verdict: str,
        *,
        approval_id: str = "",
        outcome: str = "",
        reason: str = "",
    ) -> StatementEvent:
        """A held statement's record, from its approval request (who, what, why)."""
        who = request.requester
        return StatementEvent(
            event=stage,  # type: ignore[arg-type]
            statement=(self._texts.get(request.sql) or self._text(request.sql))[0],
            decision=verdict,
            identity=who.identity,
            session_id=who.session_id,
            application_name=mask_text(who.application_name),
            client_addr=who.client_addr,
            database=who.database,
            purpose=mask_text(who.purpose),  # as statement() masks them
            model=mask_text(who.model),
            params=raw_params(request.params),
            fingerprint=request.fingerprint,
            categories=request.categories,
            tables=masked_names(request.tables),
            columns=masked_names(request.columns),
            rule=decision.rule,
            approval_id=approval_id,
            outcome=outcome,
            reason=reason or decision.message,
        )

    # -- the relay's observer -------------------------------------------------------------
    def session_started(self, session: SessionInfo) -> None:
        self._started[session.session_id] = time.monotonic()
        # the name the session logged in with (its startup packet's, else the role's
        # or database's default): not filled from the data
        first = session.server_params.get("application_name", session.application_name)
        self._apps[session.session_id] = (first, first)
        self._given[session.session_id] = {first, session.application_name}
        self._recent[session.session_id] = deque(maxlen=_RECENT)
        self.writer.record(_session_event("connect", session))

    def session_exempt(self, session: SessionInfo, reason: str) -> None:
        """The session sees raw values (``pii.exempt_identities``/``exempt_groups``):
        recorded once, before its first statement runs, with the reason."""
        self.writer.record(_session_event("pii_exempt", session, reason=reason))

    def session_ended(self, session: SessionInfo) -> None:
        started = self._started.pop(session.session_id, None)
        self._protos.pop(session.session_id, None)
        self._apps.pop(session.session_id, None)
        self._given.pop(session.session_id, None)
        self._recent.pop(session.session_id, None)
        self.writer.record(
            _session_event(
                "disconnect",
                session,
                duration_us=int((time.monotonic() - started) * 1e6) if started else None,
                # "" when the client ended it; the server's SQLSTATE (25P03, 25P04, ...)
                # when the server did
                outcome=session.ended_sqlstate,
                reason=session.ended_message,
            )
        )

    def session_refused(
        self, user: str, database: str, client_addr: str, sqlstate: str, message: str
    ) -> None:
        self.writer.record(
            SessionEvent(
                "auth_failed",
                identity=user,
                client_addr=client_addr,
                database=database,
                outcome=sqlstate,
                reason=message,
            )
        )

    def statement_failed(self, session: SessionInfo, record: StatementRecord) -> None:
        self._finished(session, record, "failed")

    def _finished(
        self, session: SessionInfo, record: StatementRecord, stage: str = "completed"
    ) -> None:
        verdict = record.verdict
        if type(verdict) is Allow:
            if record.kind not in _RECORDED:
                return  # a Parse or Bind: its Execute is the statement that runs
            # What nearly every record is: an allowed statement that ran. Its record
            # is a copy of the one its note (one per statement shape) last gave in this
            # session, with the fields in which executions differ replaced: every other
            # field comes from the note, the text and the session, checked unchanged
            # (the application name may be SET; the text is the note's statement's).
            note = verdict.note
            sql = record.sql
            sid = session.session_id
            recent = self._recent.get(sid)
            if recent is not None:
                # the session's statements are noted for a name the server reports
                # later (``application_name``); unchanged since, the name is known
                recent.append((sql, record))  # its values read only if a name is looked for
                reported = self._apps[sid]
                app = (
                    reported[1]
                    if reported[0]
                    == session.server_params.get("application_name", session.application_name)
                    else self.application_name(session)
                )
            else:
                app = self.application_name(session, sql, record.params)
            protos = self._protos.get(session.session_id)
            known = protos.get(id(note)) if protos is not None else None
            text: tuple[str, bool] | None = None
            if (
                known is None
                or known[0] is not note
                or known[5] is not sql  # a prepared statement's text: the same str
                or known[2] != app
                or known[3] is not session
            ):
                text = self._texts.get(sql) or self._text(sql)
                if (
                    known is None
                    or known[0] is not note
                    or known[1] is not text[0]  # fresh literals, the same masked text
                    or known[2] != app
                    or known[3] is not session
                ):
                    known = self._proto(session, note, sql, text, app)
            plan = verdict.plan
            reason = ""
            if stage == "completed":
                tags = record.tags
                outcome = tags[0] if len(tags) == 1 else ", ".join(tags)
                rows: int | None = record.rows
            else:
                outcome, rows = record.sqlstate, None
                if record.tags:
                    reason, rows = completed_before(record.tags)
            proto = known[4]
            if proto is not None and not session.declared and not reason:
                at = time.time()
                params = record.params
                duration = int((record.finished_at - record.received_at) * 1e6)
                tokenized = plan is not None and getattr(plan, "tokenizes", True)
                try:
                    event = statement_like(
                        proto, stage, at, params, outcome, rows, duration, tokenized
                    )
                except TypeError:  # the compiled copy cannot read the class: field by field
                    event = statement_like_plain(
                        proto, stage, at, params, outcome, rows, duration, tokenized
                    )
                self.writer.record(event)
                return
            if text is None:
                text = self._texts.get(sql) or self._text(sql)
            allowed = self._allowed.get(id(note))
            if allowed is None or allowed[0] is not note:
                allowed = self._of_note(note)
            _, shape, rule, decision, approval_id = allowed
            if session.declared or shape.declares or text[1]:
                intent = declared(session.declared, shape.declares, sql)
                purpose = mask_text(intent["purpose"]) if "purpose" in intent else ""
                model = mask_text(intent["model"]) if "model" in intent else ""
            else:
                purpose = model = ""
            # positional, in the order of the dataclass's fields (see statement())
            self.writer.record(
                StatementEvent(
                    stage,  # type: ignore[arg-type]
                    text[0],
                    decision,
                    time.time(),
                    session.identity,
                    session.session_id,
                    app,
                    session.client_addr,
                    session.database,
                    purpose,
                    model,
                    record.params,
                    shape.fingerprint,
                    shape.categories,
                    shape.tables,
                    shape.columns,
                    rule,
                    approval_id,
                    outcome,
                    rows,
                    int((record.finished_at - record.received_at) * 1e6),
                    plan is not None and getattr(plan, "tokenizes", True),
                    reason,
                )
            )
            return
        note = verdict.note if verdict is not None else None
        if not isinstance(note, GateNote):
            note = None
        reason = ""
        if isinstance(verdict, Refuse):
            if note is not None:
                return  # the gate recorded this refusal durably before it was sent
            stage, decision, reason = "refused", "refused", verdict.message
        elif record.kind not in _RECORDED:
            return  # a Parse or Bind: its Execute is the statement that runs
        elif note is not None and note.approval is not None:
            decision = "approved"
        else:
            decision = "allow"
        duration = int((record.finished_at - record.received_at) * 1e6)
        tags = record.tags
        rows = record.rows if stage == "completed" else None
        if stage != "completed":
            outcome = record.sqlstate
            if tags and not reason:
                reason, rows = completed_before(tags)
        else:
            outcome = tags[0] if len(tags) == 1 else ", ".join(tags)
        self.writer.record(
            self.statement(
                session,
                stage,
                decision,
                record.sql,
                note,
                record.params,
                note.approval.request_id if note and note.approval else "",
                outcome,
                reason,
                rows,
                duration,
                isinstance(verdict, Allow)
                and verdict.plan is not None
                and getattr(verdict.plan, "tokenizes", True),
            )
        )

    #: The relay's observer hears a statement's end here, without a hop (once per
    #: statement): _finished with its default stage.
    statement_completed = _finished


def completed_before(tags: list[str]) -> tuple[str, int]:
    """The ``reason`` and ``rows`` of a failed simple-query string whose first
    statements the server completed before the error (``INSERT …; COMMIT; SELECT
    1/0``): their command tags, and the rows their tags count. What a ``COMMIT`` among
    them committed stays, whatever the record's ``failed`` says of the string."""
    return (
        "the server completed, before the error: " + ", ".join(tags),
        sum(row_count(t) for t in tags),
    )


def _session_event(kind: str, session: SessionInfo, **fields: Any) -> SessionEvent:
    """A session's event with the fields every one of its records carries."""
    return SessionEvent(
        kind,
        identity=session.identity,
        session_id=session.session_id,
        application_name=session.application_name,
        client_addr=session.client_addr,
        database=session.database,
        **fields,
    )
