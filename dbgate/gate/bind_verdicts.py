"""The verdict on a Bind (mixin of :class:`~dbgate.gate.inspector.Gate`).

A Bind is judged again when a statement the server may hold under its name was
allowed at Parse with ``check_binds``: one decided on its parameter values
(``needs_bind``), one held (each execution is held with its values), one under
run-time limits (each execution is capped by what is left then), or one whose Binds
PII checks for tokens; any other was judged in full at its Parse. It is judged by
every statement the server may hold under that name (:mod:`dbgate.proxy.prepared`),
with its values read by each one's parameter types (:mod:`dbgate.wire.values`). What PII makes of an allowed or approved Bind is
:mod:`dbgate.gate.approved_pii`; its limits are :mod:`dbgate.gate.run_limits`.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from dbgate.gate import refusals
from dbgate.gate.limits import verdict_hold
from dbgate.gate.notes import GateNote, primary_category
from dbgate.gate.statement_verdicts import reusable
from dbgate.policy.keys import KeyCatalog
from dbgate.policy.model import Action, Decision, Identity
from dbgate.policy.rules import decide_bind
from dbgate.proxy.seams import ALLOW, Allow, Statement, Verdict
from dbgate.proxy.session_info import SessionInfo
from dbgate.wire.values import values_as_text

if TYPE_CHECKING:
    from dbgate.gate.parts import GateParts as _GateParts
else:
    _GateParts = object

_ALLOW_ACTION = Action.ALLOW  # enum member lookups cost ~0.4 us each on Python 3.11


class BindVerdicts(_GateParts):
    """The verdict on a Bind (a mixin of ``Gate``, whose ``__init__`` holds the
    state: ``_bind_allows`` is the cache of allowed Binds' verdicts)."""

    def _inspect_bind(
        self, session: SessionInfo, identity: Identity, statement: Statement
    ) -> Verdict | Awaitable[Verdict]:
        """Judge a Bind by every statement the server may hold under its name, with
        its values read by each statement's parameter types."""
        prepared = session.statements
        if any(c.sql_prepared for c in statement.candidates):
            return refusals.SQL_PREPARED_BIND
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
                    return self._bind_held(
                        costly, session, statement, candidate.sql, params, candidate.param_types
                    )
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
                return self._bind_held(
                    decision, session, statement, candidate.sql, params, candidate.param_types
                )
            if self._has_limits(decision):
                limited = (decision, classification, candidate)
        if limited is not None:
            return self._limited_bind(session, statement, catalog, *limited)
        return self._bind_allowed(classification)

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
                "bind",
                verdict,
                limits,
                session,
                candidate.sql,
                catalog,
                shown,
                candidate.param_types,
            )
        params = values_as_text(statement.params, statement.param_formats, candidate.param_types)
        if params is None:
            return refusals.UNREADABLE_VALUES_REFUSED
        if type(verdict) is Allow:  # a guard clamp: a Bind cannot rewrite its statement
            held = replace(verdict_hold(limits), classification=classification)
        else:
            held = verdict
        return self._bind_held(
            held, session, statement, candidate.sql, params, candidate.param_types
        )

    def _bind_allowed(self, classification: Any) -> Allow:
        """An allowed Bind's verdict: it replaces the Parse's for the portal, so it
        carries the statement's note (the observer and the audit read it)."""
        hit = self._bind_allows.get(id(classification))
        if hit is not None and hit[0] is classification:
            return hit[1]  # type: ignore[no-any-return]
        allow = Allow(note=GateNote(classification, "allow", primary_category(classification)))
        if not reusable(classification):
            return allow
        if len(self._bind_allows) >= 4096:
            self._bind_allows.clear()
        self._bind_allows[id(classification)] = (classification, allow)
        return allow
