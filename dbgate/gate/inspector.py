"""The gate's inspector: classify, let the rules decide, and act on the decision.

What it adds to the pure policy package, for the relay:

* Parse of a statement whose decision depends on parameter values (``needs_bind``)
  is let through — nothing runs at Parse — with ``Allow(check_binds=True)`` so the
  relay shows this inspector every Bind of it; the decision is made at Bind with the
  actual values (text or binary, read by the type the server reads them as:
  :mod:`dbgate.wire.values`), against every statement the server may hold under
  that name (:mod:`dbgate.proxy.prepared`).
* Fast-path FunctionCall messages name a function by OID and bypass SQL entirely
  (libpq's large-object API uses them): refused.
* SQL the parser cannot read is refused with 42601 and the parser's position; a
  ``deny`` with 42501 and this statement's reasons; a ``hold`` waits for a human
  through the approval service (:mod:`dbgate.gate.holds`) or, without one, is
  refused (fail closed). In the extended protocol a held statement passes Parse
  and is held at each Bind: a prepared statement may run many times, and each
  approval covers one execution with its parameter values.

The hot path is one classifier lookup, one cached answer per (identity,
classification) and, for texts that repeat, a verdict the relay may remember.

One class, one module per job. :class:`Gate` (here) holds the state its parts share
and the entry the relay calls; the other modules each give it one mixin, because
every one of them is the same object's judgment (they call each other's methods and
read the same caches):

========================  ==============================================================
``inspector``             :class:`Gate`: its state and caches, reloads (``use_ruleset``,
                          ``generation``), the session's ``identity``, ``inspect``; the
                          waits before a judgment (audit room, catalogs, a catalog read
                          anew, a worker's classification); ``verdict``, ``_held`` and
                          ``_recorded``: what a decision that is not an allow becomes
``statement_verdicts``    a Query's or Parse's verdict (``_judge``), the answer it is
                          made from (``_answer``, ``_decided``), SQL cursors under
                          windows (``_cursor_reads``), which verdicts fresh literals
                          may reuse (``_same_for_the_shape``,
                          ``_windowed_for_the_shape``)
``bind_verdicts``         a Bind's verdict (``_inspect_bind``, ``_limited_bind``,
                          ``_bind_allowed``)
``run_limits``            what run-time limits make of an allowed verdict: row limits,
                          rows per window, measured changes (``_run_limited``,
                          ``_limited``, ``_bind_limited``, ``_checking_binds``,
                          ``windowed_bind_base``, ``_window_refused``, ``_has_limits``)
``approved_pii``          what PII makes of an awaited or approved verdict
========================  ==============================================================

The per-statement path is plain method calls on one object: no hop through a helper
object.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from dbgate.approvals.model import ApprovalRequest
from dbgate.audit.errors import AuditUnavailable
from dbgate.gate import refusals
from dbgate.gate.approved_pii import ApprovedPii
from dbgate.gate.audit import AuditTrail, raw_params
from dbgate.gate.bind_verdicts import BindVerdicts
from dbgate.gate.fresh_literals import FreshLiterals
from dbgate.gate.holds import HoldDesk
from dbgate.gate.keys import KeyCatalogs
from dbgate.gate.notes import GateNote
from dbgate.gate.pii import PiiGate
from dbgate.gate.prepared_effects import executed_texts, prepared_changes
from dbgate.gate.run_limits import RunLimits
from dbgate.gate.statement_verdicts import StatementVerdicts
from dbgate.gate.windows import windowed
from dbgate.policy.keys import KeyCatalog
from dbgate.policy.model import Action, Category, Decision, Identity
from dbgate.policy.rules import RuleSet
from dbgate.proxy.seams import ALLOW, ALLOW_CHECKING_BINDS, Allow, Refuse, Statement, Verdict
from dbgate.proxy.session_info import SessionInfo

if TYPE_CHECKING:
    from dbgate.gate.classify_pool import ClassifyPool
    from dbgate.gate.row_window import RowWindows
    from dbgate.gate.schema_peers import SchemaPeers

#: A simple Query that only ends the transaction block, undoing it: no comment, no
#: chain, nothing else in the string
_ENDS_TRANSACTION = re.compile(
    r"\s*(?:ROLLBACK|ABORT)(?:\s+(?:WORK|TRANSACTION))?\s*;?\s*", re.IGNORECASE | re.ASCII
)

log = logging.getLogger("dbgate.gate")

_ALLOW_ACTION = Action.ALLOW  # enum member lookups cost ~0.4 us each on Python 3.11
_HOLD_ACTION = Action.HOLD


async def _with_changes(held: Awaitable[Verdict], classification: Any) -> Verdict:
    """An approved Query's verdict with the prepared statements it makes or removes,
    so that the relay follows them (a protocol Bind of a name an approved ``PREPARE``
    made ran unjudged at every Bind)."""
    verdict = await held
    if type(verdict) is Allow:
        return dataclasses.replace(verdict, changes=prepared_changes(classification))
    return verdict


async def _room_for(audit: AuditTrail) -> Verdict:
    """An Execute's wait for room in the audit queue: ALLOW once there is, refused
    when the audit becomes unavailable meanwhile."""
    try:
        room = audit.admit()
        if room is not None:
            await room
    except AuditUnavailable:
        return refusals.AUDIT_UNAVAILABLE
    return ALLOW


def _at_binds(verdict: Allow) -> Allow:
    """The verdict of a Parse of DDL whose Binds are announced (``Gate._announced``):
    every Bind of it is shown to the gate, and the change of the schema begins at the
    Bind's verdict, not here (``GateNote.changes_at_binds``)."""
    note = verdict.note
    if isinstance(note, GateNote):
        note = dataclasses.replace(note, changes_at_binds=True)
    return dataclasses.replace(
        verdict, check_binds=True, check_only_tokens=False, recheck_bind=None, note=note
    )


class Gate(StatementVerdicts, BindVerdicts, RunLimits, ApprovedPii):
    """The relay's inspector, backed by the classifier, a RuleSet and (optionally)
    the approval service."""

    inspects_binds = False  # only Binds of statements allowed with check_binds

    def __init__(
        self,
        ruleset: RuleSet,
        classify: Callable[..., object] | None = None,
        *,
        holds: HoldDesk | None = None,
        pii: PiiGate | None = None,
        audit: AuditTrail | None = None,
        keys: KeyCatalogs | None = None,
        offload: ClassifyPool | None = None,
        windows: RowWindows | None = None,
    ) -> None:
        self.holds = holds
        #: The shared rows-per-window accounts; None: ``max_rows_per_window`` is not
        #: enforced (no state database).
        self.windows = windows
        self.pii = pii
        self.audit = audit
        self.keys = keys
        #: the other processes serving the same databases, told of DDL before it runs
        #: (``schema_peers.SchemaPeers``, through the state database or the workers'
        #: sockets); None: nobody to tell
        self.peers: SchemaPeers | None = None
        #: other worker processes serve the same databases and nothing carries word
        #: of DDL between them (an App started with ``reuse_port`` and neither a state
        #: database nor sibling sockets): DDL the rules allow is refused, since their
        #: snapshots would go on describing the old schema
        self.siblings_unheard = False
        self._bind_allows: dict[int, tuple[Any, Allow]] = {}
        #: (decision, classification) -> the limited verdict of its Binds: a prepared
        #: statement under limits is judged at every Bind, by the same decision
        self._bind_limits: dict[tuple[int, int], tuple[Decision, Any, Allow | Decision]] = {}
        #: capped verdict -> the same checking Binds (see _checking_binds)
        self._bind_checked: dict[int, tuple[Allow, Allow]] = {}
        #: Read by the relay (see Inspector in seams.py): while the audit trail cannot
        #: be written, every statement comes here, to be refused; while its queue is
        #: full, every statement comes here, to wait for room (backpressure).
        self.strict = False
        self._audit_down = False
        self._audit_full = False
        #: Read by the relay while strict: the refusal of an Execute (the resumption
        #: of a portal runs a statement the trail records too), None to let it run
        self.execute_refusal: Refuse | None = None
        if audit is not None:
            self._audit_down = not audit.writer.available
            self.strict = self._audit_down
            self.execute_refusal = refusals.AUDIT_UNAVAILABLE if self._audit_down else None
            audit.writer.on_available = self._audit_available
            audit.writer.on_full = self._audit_queue_full
        self._repeats: Callable[..., bool] = lambda _sql, **_: False
        if classify is None:
            from dbgate.policy.classify import classify, seen_exactly

            self._repeats = seen_exactly
        #: Classifies expensive statements in worker processes (classify_pool.py).
        self.offload = offload
        self._classify = classify if offload is None else offload.wrap(classify)
        if pii is not None and offload is not None:  # PII lineage too is traced there
            pii.offload = offload
        self._ruleset = ruleset
        # (identity, classification, outcome, Allow with its note, repeatable Allow)
        self._answers: dict[tuple[int, int], tuple[Any, ...]] = {}
        #: plain reads sent again with fresh literals (gate/fresh_literals.py)
        self._fresh = FreshLiterals(pii)
        #: Read by the relay (see Inspector in seams.py): bumped when the rules or a
        #: catalog snapshot (keys, PII schema) change, so every session forgets the
        #: verdicts it remembers — one proven narrow by a key that was dropped, or
        #: planned for PII on a schema that gained a PII column, is taken again.
        self.generation = 0
        #: Read by the relay too: bumped when a change of the schema begins (DDL let
        #: through here or by another replica), so results of statements judged before
        #: it that arrive after it are tokenized whole (``StatementOutcomes``).
        self.schema_epoch = 0
        for loads in (keys.loads if keys is not None else None, pii.loads if pii else None):
            if loads is not None:
                loads.on_change.append(self._snapshot_changed)
                loads.on_began.append(self._schema_began)

    def _snapshot_changed(self) -> None:
        self.generation += 1

    def _schema_began(self) -> None:
        self.schema_epoch += 1

    def _audit_available(self, available: bool) -> None:
        self._audit_down = not available
        self.strict = self._audit_down or self._audit_full
        self.execute_refusal = None if available else refusals.AUDIT_UNAVAILABLE

    def _audit_queue_full(self, full: bool) -> None:
        self._audit_full = full
        self.strict = self._audit_down or self._audit_full

    def execute_room(self) -> Awaitable[Verdict] | None:
        """Read by the relay while strict, for an Execute (a portal's next rows, which
        are recorded too): None to send it now, else the wait for room in the audit
        queue that new statements wait for (``admit``)."""
        audit = self.audit
        if audit is None or audit.admits_now():
            return None
        return _room_for(audit)

    @property
    def ruleset(self) -> RuleSet:
        """Read-only: change it with :meth:`use_ruleset`, which drops the answers
        cached for the old rules."""
        return self._ruleset

    def use_ruleset(self, ruleset: RuleSet) -> None:
        """Decide from now on by ``ruleset`` (a reload). Sessions must also forget the
        verdicts they remember (``SessionInfo.forget_verdicts``); a statement already
        waiting for approval keeps the decision that held it."""
        self._ruleset = ruleset
        self._answers.clear()
        self._bind_allows.clear()
        self._bind_limits.clear()
        self._bind_checked.clear()
        self.generation += 1
        if self.windows is not None:
            from dbgate.gate.windows import window_lengths

            self.windows.watch(window_lengths(ruleset))

    @staticmethod
    def identity(session: SessionInfo) -> Identity | None:
        """The rules' view of the session, or None when its settings forbid analysis.

        Derived from ``server_params`` and cached until the relay bumps
        ``params_version`` (any ParameterStatus), so the hot path reads one attribute.
        """
        state = session.policy_state
        if state is not None and state[0] == session.params_version:
            return state[1]  # type: ignore[no-any-return]
        server = session.server_params
        identity: Identity | None = None
        if server.get("standard_conforming_strings", "on") == "on" and server.get(
            "client_encoding", "UTF8"
        ) in ("UTF8", "SQL_ASCII"):
            identity = Identity(
                name=session.identity,
                application_name=server.get("application_name", session.application_name),
                client_addr=session.client_addr,
                groups=session.groups,
            )
        session.policy_state = (session.params_version, identity)
        return identity

    def inspect(self, session: SessionInfo, statement: Statement) -> Verdict | Awaitable[Verdict]:
        kind = statement.kind
        if kind == "function_call":
            return refusals.FUNCTION_CALL_REFUSED
        identity = self.identity(session)
        if identity is None:
            # The classifier parses SQL as the server does with standard strings and a
            # UTF-8 encoding; with others a string literal could hide a statement from
            # it. Refuse everything.
            return refusals.SETTINGS_REFUSED
        audit = self.audit
        if audit is not None:
            try:
                room = audit.admit()
            except AuditUnavailable:
                if not (
                    kind == "query"
                    and _ENDS_TRANSACTION.fullmatch(statement.sql)
                    and audit.writer.has_room
                ):
                    return refusals.AUDIT_UNAVAILABLE
                # A ROLLBACK alone runs while the queue has room for its record: it
                # reads and changes nothing, and ends a transaction (its locks) that
                # the session could otherwise end only by leaving.
                room = None
            if room is not None:  # the audit queue is full: wait for room first
                return self._after(room, session, statement)
        pii = self.pii
        if (pii is not None and pii.session(session) is None) or (
            self.keys is not None and session.database not in self.keys.loads.loaded
        ):
            return self._after_schema(session, statement)
        if kind == "bind":
            verdict = self._inspect_bind(session, identity, statement)
            if pii is not None and type(verdict) is Allow:
                verdict = self._bind_pii(session, statement, verdict)
            if self.peers is None or type(verdict) is Refuse:
                return verdict
            return self._bind_announcing(session, statement, verdict)
        catalog = None
        if kind == "query":
            catalog = self.keys.for_session(session) if self.keys is not None else None
            fresh = self._fresh.lookup(session, identity, catalog, self.generation, statement.sql)
            if fresh is not None:
                remembered, window = fresh
                if window is None:
                    return remembered
                if self.windows is not None:
                    capped = windowed(
                        remembered, window, self.windows, session.identity, catalog, runs=True
                    )
                    if type(capped) is Allow:
                        return capped
                # nothing left: the long way, which records the refusal
        verdict, classification = self._judge(session, identity, statement)
        if (
            (self.peers is not None or self.siblings_unheard)
            and classification is not None
            and Category.DDL in classification.categories
        ):
            return self._announced(session, statement, verdict, classification)
        if type(verdict) is not Allow:
            if pii is not None and classification is not None and isinstance(verdict, Awaitable):
                # a hold: once approved, the statement's results are tokenized and its
                # tokens resolved like any allowed statement's (an approval is no
                # exemption from PII). Without a classification the awaitable is the
                # classification pool's, which judges PII itself (_offloaded).
                return self._pii_after_hold(verdict, session, statement, classification)
            return verdict
        if pii is not None:
            changed = self._pii_changed(session, statement, verdict, classification)
            if changed is not None:
                return changed
        if kind == "query":
            answer = self._answers.get((id(identity), id(classification)))
            shaped: tuple[Allow, Any] | None = None  # (the verdict before a cap, window)
            if answer is not None:
                if self._same_for_the_shape(answer, verdict):
                    shaped = (verdict, None)  # type: ignore[assignment]
                elif self._windowed_for_the_shape(answer):
                    shaped = (answer[5], answer[6].row_window)
            if shaped is not None:
                self._fresh.remember(
                    session,
                    identity,
                    catalog,
                    self.generation,
                    statement.sql,
                    shaped[0],
                    classification,
                    shaped[1],
                )
        return verdict

    async def _announced(
        self,
        session: SessionInfo,
        statement: Statement,
        verdict: Verdict | Awaitable[Verdict],
        classification: Any,
    ) -> Verdict:
        """The verdict of a statement that may change the schema, let through only once
        the other processes sharing the state database were told (``SchemaPeers``):
        their snapshots, which would go on describing the old schema, are in flux from
        then on. A Parse runs nothing: its Binds are announced (``_bind_announcing``)."""
        if isinstance(verdict, Awaitable):
            if self.pii is not None:
                verdict = await self._pii_after_hold(verdict, session, statement, classification)
            else:
                verdict = await verdict
        elif type(verdict) is Allow and self.pii is not None:
            changed = self._pii_changed(session, statement, verdict, classification)
            if changed is not None:
                verdict = await changed if isinstance(changed, Awaitable) else changed
        if type(verdict) is not Allow:
            return verdict
        if self.peers is None:  # siblings_unheard
            return refusals.SCHEMA_SIBLINGS_UNHEARD
        if statement.kind == "parse":
            # Nothing runs at a Parse, and its Bind may be held and never approved, or
            # never sent: announced here, the other processes tokenized the database
            # whole for EXPIRE_SECONDS for nothing. Each Bind is announced instead.
            return _at_binds(verdict)
        if not await self.peers.opening(session.database):
            return refusals.SCHEMA_PEERS_UNAVAILABLE
        return verdict

    def _bind_announcing(
        self, session: SessionInfo, statement: Statement, verdict: Verdict | Awaitable[Verdict]
    ) -> Verdict | Awaitable[Verdict]:
        """A Bind's verdict, once the other processes were told when it lets DDL run
        (its Parse was let through without telling them: ``_at_binds``)."""
        if type(verdict) is Allow:
            if self._binds_ddl(session, statement, verdict):
                return self._bind_announced(session, verdict)
            return verdict
        if isinstance(verdict, Awaitable):
            return self._bind_announced_later(session, statement, verdict)
        return verdict

    async def _bind_announced_later(
        self, session: SessionInfo, statement: Statement, ready: Awaitable[Verdict]
    ) -> Verdict:
        verdict = await ready
        if type(verdict) is not Allow or not self._binds_ddl(session, statement, verdict):
            return verdict
        return await self._bind_announced(session, verdict)

    async def _bind_announced(self, session: SessionInfo, verdict: Allow) -> Verdict:
        assert self.peers is not None
        if not await self.peers.opening(session.database):
            return refusals.SCHEMA_PEERS_UNAVAILABLE
        return verdict

    def _binds_ddl(self, session: SessionInfo, statement: Statement, verdict: Allow) -> bool:
        """Whether an allowed Bind runs DDL: its verdict's statement does, or (a name
        the server may hold several statements under) one of the others may."""
        classification = getattr(verdict.note, "classification", None)
        if classification is not None and Category.DDL in classification.categories:
            return True
        candidates = statement.candidates
        if len(candidates) < 2:
            return False
        catalog = self.keys.for_session(session) if self.keys is not None else None
        return any(
            c.check_binds
            and not c.lost
            and not c.sql_prepared
            and Category.DDL
            in self._classified(c.sql, session.statements.texts, catalog).categories
            for c in candidates
        )

    async def _after(
        self, ready: Awaitable[None], session: SessionInfo, statement: Statement
    ) -> Verdict:
        await ready
        verdict = self.inspect(session, statement)
        if isinstance(verdict, Awaitable):
            return await verdict
        return verdict

    async def _after_schema(self, session: SessionInfo, statement: Statement) -> Verdict:
        """The first statement on a database: its schema (for PII) and its unique keys
        (for the classifier's proofs) are loaded first."""
        try:
            if self.pii is not None:
                await self.pii.ensure(session.database)
            if self.keys is not None:
                await self.keys.ensure(session.database)
        except Exception as e:
            log.error("cannot load the catalog of %s: %s", session.database, e)
            return refusals.PII_SCHEMA_UNAVAILABLE
        verdict = self.inspect(session, statement)
        if isinstance(verdict, Awaitable):
            return await verdict
        return verdict

    def _held(self, kind: str, decision: Decision, session: SessionInfo, sql: str) -> Any:
        """The verdict for a decision that is not an allow."""
        if kind == "parse" and decision.action is _HOLD_ACTION and self.holds is not None:
            # Nothing runs at Parse, and a prepared statement may be executed any
            # number of times: an approval given here would cover every later Bind of
            # it. So a held statement is let through Parse and held at each Bind, and
            # each approval covers one execution with its values.
            return ALLOW_CHECKING_BINDS
        held = self.verdict(decision, session, sql, ())
        classification = decision.classification
        if (
            kind == "query"
            and isinstance(held, Awaitable)
            and classification is not None
            and any(st.prepared_effect is not None for st in classification.statements)
        ):
            return _with_changes(held, classification)
        return held

    def _classified(self, sql: str, prepared: Any, catalog: KeyCatalog | None) -> Any:
        if catalog is None:
            return self._classify(sql, prepared=prepared)
        return self._classify(sql, prepared=prepared, keys=catalog)

    def _may_learn_keys(
        self, session: SessionInfo, catalog: KeyCatalog, classification: Any
    ) -> bool:
        """The statement is limited because a table it names is unknown to the key
        catalog: perhaps created since it was loaded."""
        assert self.keys is not None
        unknown = self.keys.unknown(catalog, classification.tables)
        return bool(unknown) and self.keys.loads.may_be_new(session.database, unknown)

    async def _after_keys(self, session: SessionInfo, statement: Statement) -> Verdict:
        """Judged again after the key catalog was read anew (shared, rate-limited)."""
        assert self.keys is not None
        loads = self.keys.loads
        await loads.reload_since(session.database, time.monotonic())
        catalog = self.keys.for_session(session)
        if catalog is not None and self.offload is not None:
            # a new catalog is a new cache key: an expensive text is classified again
            # in a worker, not here
            ready = self.offload.ahead(statement.sql, session.statements.texts, catalog)
            unclassified = None if ready is None else await ready
            if unclassified is not None:  # it could not be: the pool's hold or refusal
                return await self._unclassified(unclassified, session, statement, statement.sql)
        if catalog is not None:
            classification = self._classified(statement.sql, session.statements.texts, catalog)
            loads.still_unknown(session.database, self.keys.unknown(catalog, classification.tables))
        verdict = self.inspect(session, statement)
        if isinstance(verdict, Awaitable):
            return await verdict
        return verdict

    async def _offloaded(
        self,
        ready: Awaitable[Decision | None],
        session: SessionInfo,
        statement: Statement,
        sql: str,
        params: tuple[str | None, ...] | list[str | None] = (),
    ) -> Verdict:
        """Judged once a worker has classified the statement, or by the pool's decision
        (a hold or a refusal) when it could not be (see classify_pool.py)."""
        unclassified = await ready
        if unclassified is not None:
            return await self._unclassified(unclassified, session, statement, sql, params)
        verdict = self.inspect(session, statement)
        if isinstance(verdict, Awaitable):
            return await verdict
        return verdict

    def verdict(
        self,
        decision: Decision,
        session: SessionInfo,
        sql: str,
        params: tuple[str | None, ...] | list[str | None],
        param_types: tuple[int, ...] = (),
    ) -> Verdict | Awaitable[Verdict]:
        """What the relay does with a decision that is not a plain allow (a Bind's
        ``param_types``: what its values are read as, part of what an approval covers)."""
        if decision.action is _ALLOW_ACTION:
            return ALLOW
        classification = decision.classification
        if classification is not None and classification.parse_error is not None:
            refusal = refusals.syntax_error(decision, classification)
        else:
            refusals.log_refusal(session, decision, sql)
            if (
                decision.action is _HOLD_ACTION
                and self.holds is not None
                and classification is not None
            ):
                if self.pii is not None:
                    return self._held_with_catalog(
                        session, sql, params, decision, classification, param_types
                    )
                request = self._request(
                    session, sql, params, decision, classification, param_types=param_types
                )
                return self.holds.wait(session, request, decision)
            refusal = refusals.refusal(decision, approvals=False)
        if self.audit is None:
            return refusal
        return self._recorded(session, sql, params, decision, refusal)

    async def _held_with_catalog(
        self,
        session: SessionInfo,
        sql: str,
        params: tuple[str | None, ...] | list[str | None],
        decision: Decision,
        classification: Any,
        param_types: tuple[int, ...] = (),
    ) -> Verdict:
        """A hold whose request names the columns the PII catalog marks in the tables
        it touches, so that the approver sees their values masked."""
        assert self.pii is not None and self.holds is not None
        # code the classifier does not read tables from (a DO block, a function's
        # body) may write any PII column of the database: all of them are masked there
        opaque = Category.OPAQUE in classification.categories
        try:
            pii_columns = await self.pii.pii_columns_for(
                session.database, None if opaque else classification.tables
            )
        except Exception:  # no schema: masking by name still applies
            log.exception("session %s: PII columns for an approval unknown", session.session_id)
            pii_columns = ()
        request = self._request(
            session, sql, params, decision, classification, pii_columns, param_types
        )
        return await self.holds.wait(session, request, decision)

    def _request(
        self,
        session: SessionInfo,
        sql: str,
        params: tuple[str | None, ...] | list[str | None],
        decision: Decision,
        classification: Any,
        pii_columns: tuple[str, ...] = (),
        param_types: tuple[int, ...] = (),
    ) -> ApprovalRequest:
        """The approval request of a hold, with the prepared statements it runs (an
        approval of ``EXECUTE p`` covers what ``p`` was then, not what it is later)."""
        assert self.holds is not None
        request = self.holds.request(
            session, sql, params, decision, classification, pii_columns, param_types
        )
        executed = executed_texts(sql, session.statements.texts)
        return dataclasses.replace(request, prepared=executed) if executed else request

    async def _recorded(
        self,
        session: SessionInfo,
        sql: str,
        params: tuple[str | None, ...] | list[str | None],
        decision: Decision,
        refusal: Refuse,
    ) -> Verdict:
        """A refusal is recorded, durably, before the client hears of it."""
        assert self.audit is not None
        note = refusal.note if isinstance(refusal.note, GateNote) else None
        event = self.audit.statement(
            session,
            "refused",
            "deny" if decision.action is Action.DENY else "refused",
            sql,
            note,
            params=raw_params(params),
            outcome=refusal.sqlstate,
            reason=refusal.message,
        )
        await self.audit.durable(event)  # refused either way
        return refusal
