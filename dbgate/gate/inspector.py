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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from dbgate.audit.errors import AuditUnavailable
from dbgate.gate import cursors, refusals
from dbgate.gate.approved_pii import ApprovedPii
from dbgate.gate.audit import AuditTrail
from dbgate.gate.fresh_literals import FreshLiterals
from dbgate.gate.holds import HoldDesk
from dbgate.gate.keys import KeyCatalogs
from dbgate.gate.limits import (
    limited_verdict,
    verdict_hold,
)
from dbgate.gate.notes import GateNote, primary_category
from dbgate.gate.pii import PiiGate
from dbgate.gate.prepared_effects import PREPARED_COMMANDS, prepared_changes
from dbgate.gate.run_limits import RunLimits
from dbgate.gate.windows import windowed
from dbgate.policy.keys import KeyCatalog
from dbgate.policy.model import Action, Decision, Identity
from dbgate.policy.rules import RuleSet, decide_bind
from dbgate.proxy.seams import (
    ALLOW,
    ALLOW_CHECKING_BINDS,
    ALLOW_OPENING_MEASUREMENT,
    Allow,
    Refuse,
    Statement,
    Verdict,
)
from dbgate.proxy.session_info import SessionInfo
from dbgate.wire.values import values_as_text

if TYPE_CHECKING:
    from dbgate.gate.classify_pool import ClassifyPool
    from dbgate.gate.row_window import RowWindows

log = logging.getLogger("dbgate.gate")

_ALLOW_ACTION = Action.ALLOW  # enum member lookups cost ~0.4 us each on Python 3.11
_HOLD_ACTION = Action.HOLD
# What a classification means for an identity (Gate._answer):
_NEEDS_BIND = "needs-bind"  # decided at each Bind (a Parse); a Query is decided as usual
_DECIDE = "decide"  # not a plain allow: ask the rules (and log) each time
_ALLOW_SESSION = "allow-session"  # allowed, but read session state (EXECUTE)
_CURSOR_COMMANDS = frozenset({cursors.DECLARE, cursors.FETCH})
_ALLOW_PREPARES = "allow-prepares"  # allowed, and changes prepared statements
_ALLOW_DECLARES = "allow-declares"  # allowed, and declares dbgate.purpose/model
_ALLOW_PLAIN = "allow"
_ALLOW_LIMITED = "allow-limited"  # allowed under run-time limits (or clamped guards)
_ANSWERS_CACHE_SIZE = 8192


def _reusable(classification: Any) -> bool:
    """Whether an answer about ``classification`` is worth remembering by its identity
    (:attr:`Classification.reused <dbgate.policy.model.Classification.reused>`)."""
    return getattr(classification, "reused", True)  # type: ignore[no-any-return]


#: Commands whose Bind may be measured (``max_rows_changed``).
_WRITE_COMMANDS = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE"})


class Gate(RunLimits, ApprovedPii):
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
        self._bind_allows: dict[int, tuple[Any, Allow]] = {}
        #: (decision, classification) -> the limited verdict of its Binds: a prepared
        #: statement under limits is judged at every Bind, by the same decision
        self._bind_limits: dict[tuple[int, int], tuple[Decision, Any, Allow | Decision]] = {}
        #: capped verdict -> the same checking Binds (see _checking_binds)
        self._bind_checked: dict[int, tuple[Allow, Allow]] = {}
        #: Read by the relay (see Inspector in seams.py): while the audit trail cannot
        #: be written, every statement comes here, to be refused.
        self.strict = False
        if audit is not None:
            self.strict = not audit.writer.available
            audit.writer.on_available = self._audit_available
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
        for loads in (keys.loads if keys is not None else None, pii.loads if pii else None):
            if loads is not None:
                loads.on_change.append(self._snapshot_changed)

    def _snapshot_changed(self) -> None:
        self.generation += 1

    def _audit_available(self, available: bool) -> None:
        self.strict = not available

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
                return refusals.AUDIT_UNAVAILABLE
            if room is not None:  # the audit queue is full: wait for room first
                return self._after(room, session, statement)
        pii = self.pii
        if (pii is not None and pii.session(session) is None) or (
            self.keys is not None and session.database not in self.keys.loads.loaded
        ):
            return self._after_schema(session, statement)
        if kind == "bind":
            verdict = self._inspect_bind(session, identity, statement)
            if pii is None or type(verdict) is not Allow:
                return verdict
            return self._bind_pii(session, statement, verdict)
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

    def _same_for_the_shape(self, answer: tuple[Any, ...], verdict: Verdict) -> bool:
        """Whether ``verdict`` is the policy's answer for every text of its
        classification: its plain allow, or the allow of a statement the catalog
        proves bounded (no row limit, no measurement, no window, no clamp: nothing
        counted or rewritten per text)."""
        outcome = answer[2]
        if outcome is _ALLOW_PLAIN:
            return verdict is answer[3]
        if outcome is not _ALLOW_LIMITED:
            return False
        limited = answer[5]
        return (
            verdict is limited
            and limited is not answer[3]  # a clamp: the text is rewritten per statement
            and type(limited) is Allow
            and not limited.max_rows
            and not limited.max_changes
            and (answer[6].row_window is None or self.windows is None)
        )

    def _windowed_for_the_shape(self, answer: tuple[Any, ...]) -> bool:
        """Whether the policy's answer is, for every text of its classification, one
        allow capped by a rows-per-window limit and nothing else per text (no row
        limit, no measurement, no clamp): the verdict the gate gave this text, before
        its cap."""
        if answer[2] is not _ALLOW_LIMITED or self.windows is None:
            return False
        limited = answer[5]
        return (
            type(limited) is Allow
            and limited is not answer[3]  # a clamp: the text is rewritten per statement
            and not limited.max_rows
            and not limited.max_changes
            and answer[6].row_window is not None
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

    def _judge(
        self, session: SessionInfo, identity: Identity, statement: Statement
    ) -> tuple[Verdict | Awaitable[Verdict], Any]:
        """The policy's verdict on a Query or Parse, and the classification."""
        kind = statement.kind
        sql = statement.sql
        catalog = self.keys.for_session(session) if self.keys is not None else None
        # asked first: classifying stores a new text
        repeats = self._repeats(sql, keys=catalog) if catalog is not None else self._repeats(sql)
        if self.offload is not None:
            ready = self.offload.ahead(sql, session.statements.texts, catalog)
            if ready is not None:
                return self._offloaded(ready, session, statement, sql), None
        classification = self._classified(sql, session.statements.texts, catalog)
        if self.windows is not None and any(
            st.command in _CURSOR_COMMANDS for st in classification.statements
        ):
            fetched = self._cursor_reads(session, identity, statement, classification, catalog)
            if fetched is not None:
                return fetched, classification
        answer = self._answers.get((id(identity), id(classification)))
        if answer is None or answer[0] is not identity or answer[1] is not classification:
            answer = self._answer(identity, classification)
        outcome = answer[2]
        if outcome is _ALLOW_PLAIN:
            # Same text, same identity (application_name comes from ParameterStatus,
            # on which the relay forgets), same rules: same decision. Worth
            # remembering only for texts that do repeat (drivers' Parse, BEGIN/COMMIT),
            # not for fresh literals.
            return (answer[4] if repeats else answer[3]), classification
        if outcome is _ALLOW_LIMITED:
            limited = answer[5]
            if (
                catalog is not None
                and (limited.max_rows or type(limited) is not Allow)
                and self._may_learn_keys(session, catalog, classification)
            ):
                return self._after_keys(session, statement), classification
            if limited is answer[3]:  # a clamp: the text is rewritten per statement
                verdict = self._limited(answer[6], classification, sql)
                if type(verdict) is not Allow:
                    return self._held(kind, verdict, session, sql), classification
                return self._run_limited(kind, verdict, answer[6], session, sql, catalog), (
                    classification
                )
            if type(limited) is Allow:
                if limited.max_changes or (
                    answer[6].row_window is not None and self.windows is not None
                ):
                    return self._run_limited(kind, limited, answer[6], session, sql, catalog), (
                        classification
                    )
                return (answer[4] if repeats else limited), classification
            return self._held(kind, limited, session, sql), classification
        if outcome is _ALLOW_DECLARES:
            # SET dbgate.purpose / dbgate.model: the server does not report custom
            # settings, so the gate keeps them for the approval requests of this
            # session. Never remembered by the relay: each one must be seen.
            session.declared.update(classification.declares)  # type: ignore[attr-defined]
            return answer[3], classification
        if kind == "parse":
            if outcome is _NEEDS_BIND:
                # nothing runs at Parse; decided at each Bind (a write's Bind may be
                # measured: the relay may open the measurement before this Parse)
                if any(st.command in _WRITE_COMMANDS for st in classification.statements):
                    return ALLOW_OPENING_MEASUREMENT, classification
                return ALLOW_CHECKING_BINDS, classification
            if outcome is _ALLOW_SESSION:
                return refusals.EXECUTE_IN_PARSE_REFUSED, classification
            if outcome is _ALLOW_PREPARES:
                # SQL PREPARE/DEALLOCATE through the extended protocol run at Execute,
                # any number of times: not recorded. A name they create is unknown
                # (EXECUTE of it is opaque); one they remove keeps being checked.
                return ALLOW, classification
        elif (outcome is _ALLOW_SESSION or outcome is _ALLOW_PREPARES) and (
            not self._has_limits(answer[6])
            or (
                outcome is _ALLOW_PREPARES
                and all(st.command in PREPARED_COMMANDS for st in classification.statements)
            )
        ):
            # EXECUTE reads session state (never remembered); PREPARE/DEALLOCATE
            # change it. The rule's limits still hold for whatever else the string
            # runs (an EXECUTE, a statement beside a PREPARE): then it takes the
            # general path below. A PREPARE alone runs nothing (its EXECUTE is judged).
            if outcome is _ALLOW_SESSION:
                return ALLOW, classification
            return Allow(changes=prepared_changes(classification)), classification
        # Not a plain allow, or a Query whose statements would need Bind values.
        decision = self.ruleset.decide(identity, classification)
        if decision.action is not _ALLOW_ACTION:
            if (
                decision.action is _HOLD_ACTION
                and catalog is not None
                and self._may_learn_keys(session, catalog, classification)
            ):  # perhaps a key of a table created since the catalog was read proves it
                return self._after_keys(session, statement), classification
            return self._held(kind, decision, session, sql), classification
        prepares = kind == "query" and any(
            st.command in PREPARED_COMMANDS for st in classification.statements
        )
        if self._has_limits(decision):
            verdict = self._limited(decision, classification, sql)
            if type(verdict) is not Allow:
                return self._held(kind, verdict, session, sql), classification
            limited = self._run_limited(kind, verdict, decision, session, sql, catalog)
            if prepares and type(limited) is Allow:  # the relay learns what it prepares
                limited = replace(limited, changes=prepared_changes(classification))
            return limited, classification
        if prepares:
            return Allow(changes=prepared_changes(classification)), classification
        return ALLOW, classification

    def _cursor_reads(
        self,
        session: SessionInfo,
        identity: Identity,
        statement: Statement,
        classification: Any,
        catalog: KeyCatalog | None,
    ) -> Verdict | None:
        """A string that declares or fetches from SQL cursors, under row windows
        (gate/cursors.py): the tables each DECLARE reads are remembered, and a FETCH
        of a cursor this session declared is judged as a read of them — capped by what
        the identity has left and charged to them, never remembered by the relay (the
        name may be declared again over other tables). None: judge it as usual."""
        sql = statement.sql
        if any(st.command == cursors.DECLARE for st in classification.statements):
            cursors.remember_declared(session, sql, classification)
        fetching = cursors.with_cursor_tables(session, sql, classification)
        if fetching is None:
            return None
        kind = statement.kind
        decision = self.ruleset.decide(identity, fetching)
        if decision.action is not _ALLOW_ACTION:
            return self._held(kind, decision, session, sql)  # type: ignore[no-any-return]
        if not self._has_limits(decision):
            return ALLOW
        verdict = self._limited(decision, fetching, sql)
        if type(verdict) is not Allow:
            return self._held(kind, verdict, session, sql)  # type: ignore[no-any-return]
        limited = self._run_limited(kind, verdict, decision, session, sql, catalog)
        if type(limited) is Allow and limited.repeatable:
            limited = replace(limited, repeatable=False)
        return limited  # type: ignore[no-any-return]

    def _held(self, kind: str, decision: Decision, session: SessionInfo, sql: str) -> Any:
        """The verdict for a decision that is not an allow."""
        if kind == "parse" and decision.action is _HOLD_ACTION and self.holds is not None:
            # Nothing runs at Parse, and a prepared statement may be executed any
            # number of times: an approval given here would cover every later Bind of
            # it. So a held statement is let through Parse and held at each Bind, and
            # each approval covers one execution with its values.
            return ALLOW_CHECKING_BINDS
        return self.verdict(decision, session, sql, ())

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

    def _answer(self, identity: Identity, classification: Any) -> tuple[Any, ...]:
        """What a classification means for an identity, remembered while both live."""
        statements = classification.statements
        session_dependent = getattr(classification, "session_dependent", True)
        decision = None
        if any(st.needs_bind for st in statements):
            outcome = _NEEDS_BIND
        elif (
            decision := self.ruleset.decide(identity, classification)
        ).action is not _ALLOW_ACTION:
            outcome = _DECIDE
        elif any(st.command in PREPARED_COMMANDS for st in statements):
            outcome = _ALLOW_PREPARES  # checked before EXECUTE: the changes must be kept
        elif session_dependent:
            outcome = _ALLOW_SESSION
        elif any(getattr(st, "declares", ()) for st in statements):
            outcome = _ALLOW_DECLARES
        elif self._has_limits(decision):  # type: ignore[arg-type]
            outcome = _ALLOW_LIMITED
        else:
            outcome = _ALLOW_PLAIN
        note = GateNote(classification, "allow", primary_category(classification), decision)
        plain = Allow(note=note)
        repeatable = Allow(repeatable=True, note=note)
        limited: Any = None
        if outcome is _ALLOW_LIMITED:
            assert decision is not None
            if decision.guard_clamps:
                limited = plain  # rewritten per text (see _judge); marks "not cached"
            else:
                limited = limited_verdict(decision, classification, "", note)
                if type(limited) is Allow and not limited.max_changes:
                    repeatable = replace(limited, repeatable=True)
        answer = (identity, classification, outcome, plain, repeatable, limited, decision)
        if not session_dependent and _reusable(classification):  # else: never asked again
            if len(self._answers) >= _ANSWERS_CACHE_SIZE:
                self._answers.clear()
            # The entry holds both objects, so their ids cannot be reused while it lives.
            self._answers[(id(identity), id(classification))] = answer
        return answer

    def _inspect_bind(
        self, session: SessionInfo, identity: Identity, statement: Statement
    ) -> Verdict | Awaitable[Verdict]:
        """Judge a Bind by every statement the server may hold under its name, with
        its values read by each statement's parameter types."""
        prepared = session.statements
        checked = [c for c in statement.candidates if c.check_binds]
        if not checked:
            return ALLOW  # judged in full at its Parse
        catalog = self.keys.for_session(session) if self.keys is not None else None
        for candidate in checked if self.offload is not None else ():
            ready = self.offload.ahead(candidate.sql, prepared.texts, catalog)  # type: ignore[union-attr]
            if ready is not None:
                params = values_as_text(
                    statement.params, statement.param_formats, candidate.param_types
                )
                return self._offloaded(ready, session, statement, candidate.sql, params or ())
        limited: tuple[Decision, Any, Any] | None = None  # (decision, classification, candidate)
        for candidate in checked:
            if candidate.lost:
                return refusals.lost_track(statement.statement_name)
            classification = self._classified(candidate.sql, prepared.texts, catalog)
            if classification.needs_bind:
                decision = None
            else:
                # Checked at Bind for PII tokens (policy allowed it at Parse), held (a
                # held statement is held at each execution, with its values), or under
                # a window (capped by what is left at each execution).
                decision = self._decided(identity, classification)
                if decision.action is _ALLOW_ACTION:
                    if self._has_limits(decision):  # the Bind's verdict replaces the Parse's
                        limited = (decision, classification, candidate)
                    continue
            params = values_as_text(
                statement.params, statement.param_formats, candidate.param_types
            )
            if params is None:
                return refusals.UNREADABLE_VALUES_REFUSED
            if decision is None and self.offload is not None:
                costly = self.offload.bind_verdict(candidate.sql, params)
                if costly is not None:  # not parsed again on the event loop
                    return self._bind_held(costly, session, statement, candidate.sql, params)
            if decision is None:
                decision = decide_bind(
                    self.ruleset,
                    identity,
                    classification,  # type: ignore[arg-type]
                    candidate.sql,
                    params,
                    prepared=prepared.texts,
                    keys=catalog,
                )
            if decision.action is not _ALLOW_ACTION:
                return self._bind_held(decision, session, statement, candidate.sql, params)
            if self._has_limits(decision):
                limited = (decision, classification, candidate)
        if limited is not None:
            return self._limited_bind(session, statement, catalog, *limited)
        return self._bind_allowed(classification)

    def _decided(self, identity: Identity, classification: Any) -> Decision:
        """The rules' decision, from the answer remembered at Parse when there is one
        (a prepared statement's every Bind asks again)."""
        answer = self._answers.get((id(identity), id(classification)))
        if (
            answer is not None
            and answer[0] is identity
            and answer[1] is classification
            and answer[6] is not None
        ):
            return answer[6]  # type: ignore[no-any-return]
        return self.ruleset.decide(identity, classification)

    def _limited_bind(
        self,
        session: SessionInfo,
        statement: Statement,
        catalog: KeyCatalog | None,
        limits: Decision,
        classification: Any,
        candidate: Any,
    ) -> Verdict | Awaitable[Verdict]:
        """A Bind allowed under run-time limits: its verdict carries them (row limits,
        the rows left under its window, the change limit the relay measures), or it is
        held when a limit needs what a Bind cannot do (rewrite its text)."""
        verdict = self._bind_limited(limits, classification, candidate.sql)
        if type(verdict) is Allow and verdict.replace_sql is None:
            # the values are shown to approvers only if a measured write goes past its limit
            shown = (
                values_as_text(statement.params, statement.param_formats, candidate.param_types)
                if verdict.max_changes
                else ()
            )
            return self._run_limited(
                "bind", verdict, limits, session, candidate.sql, catalog, shown
            )
        params = values_as_text(statement.params, statement.param_formats, candidate.param_types)
        if params is None:
            return refusals.UNREADABLE_VALUES_REFUSED
        if type(verdict) is Allow:  # a guard clamp: a Bind cannot rewrite its statement
            held = replace(verdict_hold(limits), classification=classification)
        else:
            held = verdict
        return self._bind_held(held, session, statement, candidate.sql, params)

    def _bind_allowed(self, classification: Any) -> Allow:
        """An allowed Bind's verdict: it replaces the Parse's for the portal, so it
        carries the statement's note (the observer and the audit read it)."""
        hit = self._bind_allows.get(id(classification))
        if hit is not None and hit[0] is classification:
            return hit[1]  # type: ignore[no-any-return]
        allow = Allow(note=GateNote(classification, "allow", primary_category(classification)))
        if not _reusable(classification):
            return allow
        if len(self._bind_allows) >= 4096:
            self._bind_allows.clear()
        self._bind_allows[id(classification)] = (classification, allow)
        return allow

    def verdict(
        self,
        decision: Decision,
        session: SessionInfo,
        sql: str,
        params: tuple[str | None, ...] | list[str | None],
    ) -> Verdict | Awaitable[Verdict]:
        """What the relay does with a decision that is not a plain allow."""
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
                request = self.holds.request(session, sql, params, decision, classification)
                return self.holds.wait(session, request, decision)
            refusal = refusals.refusal(decision, approvals=False)
        if self.audit is None:
            return refusal
        return self._recorded(session, sql, params, decision, refusal)

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
            params=tuple(params),
            outcome=refusal.sqlstate,
            reason=refusal.message,
        )
        await self.audit.durable(event)  # refused either way
        return refusal
