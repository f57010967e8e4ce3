"""What PII makes of a verdict the gate awaited or a human approved: the half of
:class:`~dbgate.gate.inspector.Gate` that runs an approved statement under its PII plan.

An approval is no exemption from PII. A Query the rules held, a Bind held with its
values, and a statement the classification pool could not classify all come back from
the hold desk as a bare ``Allow``; here each is given what an allowed one of its kind
gets: its results tokenized and the tokens in it resolved (``PiiGate.verdict`` /
``PiiGate.bind_verdict``), or, unclassified, every column it cannot place tokenized
(``PiiGate.unclassified``). A mixin, because it is the same object's judgment: it calls
the gate's ``verdict`` and ``_held`` and reads its ``pii``.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from dbgate.gate import refusals
from dbgate.policy.model import Decision
from dbgate.proxy.seams import Allow, Statement, Verdict
from dbgate.proxy.session_info import SessionInfo
from dbgate.wire.values import values_as_text

if TYPE_CHECKING:
    from dbgate.gate.parts import GateParts as _GateParts
else:
    _GateParts = object


class ApprovedPii(_GateParts):
    """PII after an awaited or approved verdict (a mixin of ``Gate``)."""

    def _pii_changed(
        self, session: SessionInfo, statement: Statement, verdict: Allow, classification: Any
    ) -> Verdict | Awaitable[Verdict] | None:
        """What PII changes about an allowed Query or Parse (``PiiGate.verdict``): None,
        or the verdict to use; a statement PII must hold is held through the gate (a
        Parse at each of its Binds)."""
        assert self.pii is not None
        return self.pii.verdict(  # type: ignore[no-any-return]
            session,
            statement,
            verdict,
            classification,
            lambda decision: self._held(statement.kind, decision, session, statement.sql),
        )

    async def _pii_after_hold(
        self,
        held: Awaitable[Verdict],
        session: SessionInfo,
        statement: Statement,
        classification: Any,
    ) -> Verdict:
        """An awaited verdict of a Query the gate classified (a hold, or a judgment
        after the key catalog was read anew), then what PII changes about it."""
        verdict = await held
        if self.pii is None or type(verdict) is not Allow:
            return verdict
        changed = self._pii_changed(session, statement, verdict, classification)
        if isinstance(changed, Awaitable):
            changed = await changed
        return verdict if changed is None else changed

    def _bind_pii(
        self, session: SessionInfo, statement: Statement, verdict: Allow
    ) -> Verdict | Awaitable[Verdict]:
        """An allowed (or approved) Bind's verdict after PII: the tokens among its
        values resolved, its results under its plan."""
        assert self.pii is not None
        changed = self.pii.bind_verdict(
            session,
            statement,
            statement.sql,
            lambda decision: (
                refusals.AMBIGUOUS_HOLD
                if refusals.ambiguous_hold(decision, statement)
                else self.verdict(
                    self._classifying(decision, session, statement.sql),
                    session,
                    statement.sql,
                    values_as_text(statement.params, statement.param_formats, statement.param_types)
                    or (),
                    statement.param_types,
                )
            ),
        )
        if isinstance(changed, Awaitable):  # traced in a worker first
            return self._bind_changed_later(verdict, changed)
        return _bind_changed(verdict, changed)

    def _classifying(self, decision: Decision, session: SessionInfo, sql: str) -> Decision:
        """``decision`` with the classification of ``sql`` (what approvers are shown),
        when the PII gate, which does not classify, made it."""
        if decision.classification is not None:
            return decision
        catalog = self.keys.for_session(session) if self.keys is not None else None
        return replace(
            decision, classification=self._classified(sql, session.statements.texts, catalog)
        )

    def _bind_held(
        self,
        decision: Decision,
        session: SessionInfo,
        statement: Statement,
        sql: str,
        params: tuple[str | None, ...] | list[str | None],
        param_types: tuple[int, ...] | None = None,
    ) -> Verdict | Awaitable[Verdict]:
        """The verdict of a Bind the rules hold: once approved, its values' tokens are
        resolved and its results tokenized like any allowed Bind's (an approval is no
        exemption from PII). ``param_types``: those of the statement ``sql`` is (the
        Bind's newest by default)."""
        if refusals.ambiguous_hold(decision, statement):
            return refusals.AMBIGUOUS_HOLD
        types = statement.param_types if param_types is None else param_types
        held = self.verdict(decision, session, sql, params, types)
        if self.pii is None or not isinstance(held, Awaitable):
            return held
        return self._bind_pii_after_hold(held, session, statement)

    async def _bind_pii_after_hold(
        self, held: Awaitable[Verdict], session: SessionInfo, statement: Statement
    ) -> Verdict:
        verdict = await held
        if type(verdict) is not Allow:
            return verdict
        changed = self._bind_pii(session, statement, verdict)
        return await changed if isinstance(changed, Awaitable) else changed

    @staticmethod
    async def _bind_changed_later(verdict: Allow, changed: Awaitable[Any]) -> Verdict:
        return _bind_changed(verdict, await changed)

    async def _unclassified(
        self,
        decision: Decision,
        session: SessionInfo,
        statement: Statement,
        sql: str,
        params: tuple[str | None, ...] | list[str | None] = (),
    ) -> Verdict:
        """The pool's decision (a hold or a refusal) on a statement it could not
        classify. Approved, a Query or a Bind of it runs with every column of its
        results tokenized: nothing is known of them (``PiiGate.unclassified``)."""
        kind = statement.kind
        if kind == "bind":
            if refusals.ambiguous_hold(decision, statement):
                return refusals.AMBIGUOUS_HOLD
            held = self.verdict(decision, session, sql, params, statement.param_types)
        else:
            held = self._held(kind, decision, session, sql)
        verdict = await held if isinstance(held, Awaitable) else held
        if self.pii is not None and type(verdict) is Allow and kind in ("query", "bind"):
            return self.pii.unclassified(session, verdict, sql)  # type: ignore[no-any-return]
        return verdict  # type: ignore[no-any-return]


def _bind_changed(verdict: Allow, changed: Verdict | None) -> Verdict:
    """A Bind's verdict after PII: the policy's (``verdict``) when PII changes nothing,
    else PII's, which keeps the policy's note, row limit — with its proven read
    bound, so that the relay still counts the rows from the command tag instead of
    watching each one (``Allow.result_bound``) — and change limit: a write to a table
    with PII, whose Binds PII judges for tokens, is measured as any other."""
    if changed is None:
        return verdict
    if type(changed) is Allow:
        if changed.note is None:  # the Execute's record reads it
            changed = replace(changed, note=verdict.note)
        if verdict.max_rows and not changed.max_rows:
            changed = replace(
                changed,
                max_rows=verdict.max_rows,
                over_limit=verdict.over_limit,
                result_bound=verdict.result_bound,
            )
        if verdict.max_changes and not changed.max_changes:
            changed = replace(
                changed, max_changes=verdict.max_changes, over_changes=verdict.over_changes
            )
    return changed
