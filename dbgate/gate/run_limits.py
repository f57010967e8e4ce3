"""Run-time limits (mixin of :class:`~dbgate.gate.inspector.Gate`): what the limits a
rule sets make of an allowed verdict, enforced by the relay as the statement runs.

* **row limits** (``max_rows``) and clamped guards: :meth:`RunLimits._limited` (the
  rules' limited verdict, :func:`~dbgate.gate.limits.limited_verdict`), made once per
  decision and classification for a Bind (:meth:`RunLimits._bind_limited`);
* **rows per window** (``max_rows_per_window``, only with the shared accounts of
  :mod:`dbgate.gate.row_window`): the verdict capped by the rows the identity has
  left (:func:`~dbgate.gate.windows.windowed`), refused when none are
  (:meth:`RunLimits._window_refused`); a windowed Parse has each Bind checked, the
  quick way for a read (:meth:`RunLimits._checking_binds`,
  :class:`~dbgate.gate.windows.WindowedBinds`, which asks
  :meth:`RunLimits.windowed_bind_base` again after a reload);
* **changes measured as a write runs** (``max_rows_changed``): what the relay does
  past the limit (``over_changes``) in :meth:`RunLimits._run_limited`.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from dbgate.gate import refusals
from dbgate.gate.limits import (
    changes_refusal,
    has_limits,
    limited_verdict,
    over_changes_decision,
    unmeasured_hold,
)
from dbgate.gate.notes import GateNote, primary_category
from dbgate.gate.windows import WindowedBinds, charged_by_binds, windowed
from dbgate.policy.keys import KeyCatalog
from dbgate.policy.model import Action, Decision
from dbgate.proxy.seams import ALLOW_OPENING_MEASUREMENT, Allow, Refuse, Verdict
from dbgate.proxy.session_info import SessionInfo

if TYPE_CHECKING:
    from dbgate.gate.parts import GateParts as _GateParts
else:
    _GateParts = object

_ALLOW_ACTION = Action.ALLOW  # enum member lookups cost ~0.4 us each on Python 3.11
_HOLD_ACTION = Action.HOLD
#: Kinds of statement whose verdict lets a read run (a Parse's runs nothing).
_RUNS = frozenset({"query", "bind"})


class RunLimits(_GateParts):
    """Run-time limits of allowed verdicts (a mixin of ``Gate``, whose ``__init__``
    holds the state: ``_bind_limits`` and ``_bind_checked`` are their caches)."""

    def _has_limits(self, decision: Decision) -> bool:
        """Limits the relay enforces as the statement runs (the rows-per-window one
        only with the shared accounts)."""
        return has_limits(decision) or (
            decision.row_window is not None and self.windows is not None
        )

    def _limited(self, decision: Decision, classification: Any, sql: str) -> Allow | Decision:
        note = GateNote(classification, "allow", primary_category(classification), decision)
        return limited_verdict(decision, classification, sql, note)

    def _run_limited(
        self,
        kind: str,
        verdict: Allow,
        decision: Decision,
        session: SessionInfo,
        sql: str,
        catalog: KeyCatalog | None,
        params: tuple[str | None, ...] | None = (),
        param_types: tuple[int, ...] = (),
    ) -> Any:
        """A limited Allow as the relay gets it: capped by the rows the identity has
        left under its window (refused when none), and, for a write measured as it
        runs (a Query, or a Bind with its ``params``), given what to do past its
        limit. A Parse of such a write lets the relay open the measurement before it."""
        window = decision.row_window
        if window is not None and self.windows is not None:
            capped = windowed(
                verdict, window, self.windows, session.identity, catalog, runs=kind in _RUNS
            )
            if type(capped) is Refuse:
                return self._window_refused(session, sql, decision, capped)
            verdict = capped  # type: ignore[assignment]
            if kind == "parse":  # each execution is capped by what is left then
                verdict = self._checking_binds(verdict, decision, sql)
        if not verdict.max_changes:
            return verdict
        classification = decision.classification
        if kind == "parse":
            # Nothing runs at Parse: each Bind is measured, in a batch the relay sets up
            # before this Parse when it is the batch's first message.
            return ALLOW_OPENING_MEASUREMENT
        if kind not in ("query", "bind"):
            return self._held(kind, unmeasured_hold(decision, classification), session, sql)  # type: ignore[arg-type]

        def over_changes(count: int) -> Verdict | Awaitable[Verdict]:
            over = over_changes_decision(decision, classification, count)  # type: ignore[arg-type]
            if over.action is _HOLD_ACTION:
                if params is None:  # approvers could not be shown its values
                    return refusals.UNREADABLE_VALUES_REFUSED
                return self.verdict(over, session, sql, params, param_types)
            refusals.log_refusal(session, over, sql)
            return changes_refusal(over)

        return replace(verdict, over_changes=over_changes, repeatable=False)

    def _window_refused(
        self, session: SessionInfo, sql: str, decision: Decision, refusal: Refuse
    ) -> Verdict | Awaitable[Verdict]:
        """A read with no rows left under its window: refused before it runs (and
        recorded like any refusal)."""
        refused = replace(decision, action=Action.DENY, message=refusal.message)
        refusals.log_refusal(session, refused, sql)
        if self.audit is None:
            return refusal
        return self._recorded(session, sql, (), refused, refusal)

    def _checking_binds(self, verdict: Allow, decision: Decision, sql: str) -> Allow:
        """``verdict`` with ``check_binds``: a windowed Parse's, the same for every
        Parse of one statement while its capped verdict is (gate/windows.py). A read's
        carries the quick way to its Binds' verdicts (``WindowedBinds``), and is then
        remembered by the relay (``repeatable``: its Binds are all judged)."""
        hit = self._bind_checked.get(id(verdict))
        if hit is not None and hit[0] is verdict:
            recheck = hit[1].recheck_bind
            if recheck is None or recheck.generation == self.generation:  # type: ignore[attr-defined]
                return hit[1]
        classification = decision.classification
        base = (
            None
            if classification is None or classification.needs_bind or verdict.max_changes
            else self._bind_limited(decision, classification, sql)
        )
        if (
            type(base) is Allow
            and base.replace_sql is None
            and not base.max_changes
            and decision.row_window is not None
        ):
            checked = replace(
                verdict,
                check_binds=True,
                repeatable=True,
                recheck_bind=WindowedBinds(self, sql, base, decision.row_window),
            )
        else:
            checked = replace(verdict, check_binds=True)
        checked = charged_by_binds(checked)
        if len(self._bind_checked) >= 4096:
            self._bind_checked.clear()
        self._bind_checked[id(verdict)] = (verdict, checked)  # keeps the verdict alive
        return checked

    def _bind_limited(self, decision: Decision, classification: Any, sql: str) -> Allow | Decision:
        """:meth:`_limited` for a Bind, made once per decision and classification
        (the window's cap of it is then made once too, see gate/windows.py) unless it
        rewrites the text (a guard clamp, which depends on the text itself)."""
        if decision.guard_clamps:
            return self._limited(decision, classification, sql)
        key = (id(decision), id(classification))
        hit = self._bind_limits.get(key)
        if hit is not None and hit[0] is decision and hit[1] is classification:
            return hit[2]
        verdict = self._limited(decision, classification, sql)
        if len(self._bind_limits) >= 4096:
            self._bind_limits.clear()
        # The entry holds both objects, so their ids cannot be reused while it lives.
        self._bind_limits[key] = (decision, classification, verdict)
        return verdict

    def windowed_bind_base(self, session: SessionInfo, sql: str) -> Allow | None:
        """The verdict :class:`~dbgate.gate.windows.WindowedBinds` caps at each Bind of
        ``sql`` in ``session``, as the gate would start from it now; None when that
        would take more than cached lookups (the text's classification is not
        cached) or the Bind needs more than a cap."""
        identity = self.identity(session)
        if identity is None:
            return None
        catalog = self.keys.for_session(session) if self.keys is not None else None
        cached = self._repeats(sql, keys=catalog) if catalog is not None else self._repeats(sql)
        if not cached:
            return None
        classification = self._classified(sql, session.statements.texts, catalog)
        if classification.needs_bind:
            return None
        decision = self._decided(identity, classification)
        if decision.action is not _ALLOW_ACTION or decision.row_window is None:
            return None
        base = self._bind_limited(decision, classification, sql)
        return base if type(base) is Allow else None
