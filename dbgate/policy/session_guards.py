"""Session guards: the timeouts dbgate gives each upstream session, and what statements may do to them.

An agent holding locks and going idle inside a transaction can block production
writers (and readers) indefinitely. dbgate therefore sets, on every upstream session
it opens for an identity, ``statement_timeout``, ``lock_timeout``,
``idle_in_transaction_session_timeout`` and ``transaction_timeout`` to that identity's
**ceilings** (``session_guards`` in the rule files, docs/rules.md "Session guards").
The agent may lower them; what it may not do without a human is raise one past its
ceiling. This module judges a classified statement against the ceilings:

* a guard set to a value above the ceiling, or to a value dbgate cannot know in
  advance (computed, a parameter, text the server would read differently) → held;
* a guard set to 0 ("no limit", what ``pg_dump`` and ``psql`` scripts send) → by
  default *clamped* (``Decision.guard_clamps``): the gate forwards a plain ``SET x =
  0`` as ``SET x = <ceiling>``, so the session keeps its limit (a ``set_config`` to 0
  cannot be rewritten so and is held) — or held, if the guard entry says
  ``set_to_zero: hold``;
* ``RESET`` / ``SET ... TO DEFAULT`` / ``RESET ALL`` / ``DISCARD ALL`` go back to the
  session's starting values, which are the ceilings dbgate set at startup: allowed;
* a constant ``pg_sleep`` longer than the statement-timeout ceiling would only be
  cancelled: refused up front with that reason.

Ceilings are first-match per setting: the first guard entry (pack order) that matches
the identity and names the setting gives its ceiling.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from dbgate.policy.model import (
    GUARD_SETTINGS,
    Action,
    Category,
    Classification,
    Decision,
    Identity,
    OverLimit,
    Reason,
)
from dbgate.policy.rules_match import Match, Rule

__all__ = ["GuardCeiling", "GuardEntry", "SessionGuards", "judge"]


@dataclass(frozen=True, slots=True)
class GuardEntry:
    """One ``session_guards`` entry of a rule file."""

    name: str
    ceilings_ms: Mapping[str, int]
    match: Match = field(default_factory=Match)
    set_to_zero: Action = Action.ALLOW  # ALLOW: clamp to the ceiling; HOLD: hold
    approver_groups: tuple[str, ...] = ()
    approvals_needed: int = 1
    expires_after_seconds: int | None = None
    file: str = ""
    line: int = 0

    def matches(self, identity: Identity) -> bool:
        return Rule(self.name, Action.ALLOW, self.match).matches_identity(identity)


@dataclass(frozen=True, slots=True)
class GuardCeiling:
    """The ceiling of one setting for one identity, and the entry it came from."""

    setting: str
    ms: int
    entry: GuardEntry


@dataclass(frozen=True, slots=True)
class SessionGuards:
    """An identity's ceilings: what the gate sets on its upstream sessions."""

    ceilings: Mapping[str, GuardCeiling] = field(default_factory=dict)

    def ceiling_ms(self, setting: str) -> int | None:
        c = self.ceilings.get(setting)
        return c.ms if c is not None else None

    def settings(self) -> dict[str, str]:
        """``{setting: value}`` to apply when the upstream session opens (startup
        parameters or SET before the first statement), values in milliseconds."""
        return {name: str(c.ms) for name, c in self.ceilings.items()}


def resolve(entries: tuple[GuardEntry, ...], identity: Identity) -> SessionGuards:
    """First matching entry per setting."""
    ceilings: dict[str, GuardCeiling] = {}
    for entry in entries:
        if not entry.matches(identity):
            continue
        for setting in GUARD_SETTINGS:
            if setting not in ceilings and setting in entry.ceilings_ms:
                ceilings[setting] = GuardCeiling(setting, entry.ceilings_ms[setting], entry)
    return SessionGuards(ceilings)


def _duration(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def judge(decision: Decision, guards: SessionGuards, classification: Classification) -> Decision:
    """``decision`` with the guards applied (a deny stays a deny)."""
    if decision.action is Action.DENY or not guards.ceilings:
        return decision
    held: list[tuple[Reason, GuardEntry]] = []
    clamps: dict[str, int] = {}
    clamping: list[GuardEntry] = []  # the entries of those ceilings
    for st in classification.statements:
        timeout = guards.ceilings.get("statement_timeout")
        if timeout is not None and st.sleep_ms is not None and st.sleep_ms > timeout.ms:
            reason = Reason(
                Category.CONTROL,
                "sleep-over-ceiling",
                f"sleeps for {_duration(st.sleep_ms)}, longer than this identity's "
                f"statement_timeout ({_duration(timeout.ms)}), which would cancel it",
            )
            return Decision(
                Action.DENY,
                timeout.entry.name,
                f"guard '{timeout.entry.name}' caps statements at {_duration(timeout.ms)}",
                classification=classification,
                reasons=(reason,),
            )
        for gs in st.guard_settings:
            ceiling = guards.ceilings.get(gs.name)
            if ceiling is None or gs.reset:
                continue
            limit = _duration(ceiling.ms)
            if gs.value_ms is None:
                held.append(
                    (
                        Reason(
                            Category.CONTROL,
                            "guard-value-unknown",
                            f"sets {gs.name} to a value dbgate cannot read in advance; this "
                            f"identity's ceiling is {limit}: set a constant at most that",
                        ),
                        ceiling.entry,
                    )
                )
            elif gs.value_ms == 0:
                if ceiling.entry.set_to_zero is Action.HOLD:
                    held.append(
                        (
                            Reason(
                                Category.CONTROL,
                                "guard-off",
                                f"turns {gs.name} off (0), which this identity may not: its "
                                f"ceiling is {limit}",
                            ),
                            ceiling.entry,
                        )
                    )
                else:
                    clamps[gs.name] = ceiling.ms
                    clamping.append(ceiling.entry)
            elif gs.value_ms > ceiling.ms:
                held.append(
                    (
                        Reason(
                            Category.CONTROL,
                            "guard-above-ceiling",
                            f"raises {gs.name} to {_duration(gs.value_ms)}, above this "
                            f"identity's ceiling of {limit}",
                        ),
                        ceiling.entry,
                    )
                )
    if held:
        reasons = tuple(r for r, _ in held)
        entry = held[0][1]
        if decision.action is Action.HOLD:
            return replace(decision, reasons=decision.reasons + reasons)
        expiries = [e.expires_after_seconds for _, e in held if e.expires_after_seconds is not None]
        return Decision(
            Action.HOLD,
            entry.name,
            f"guard '{entry.name}' keeps the session's timeouts at or below their ceilings",
            approver_groups=entry.approver_groups,
            approvals_needed=max(e.approvals_needed for _, e in held),
            wait_seconds=min(expiries) if expiries else None,  # 0: approve, then retry
            classification=classification,
            reasons=reasons,
        )
    if clamps and decision.action is Action.ALLOW:
        entry = clamping[0]
        return replace(
            decision,
            guard_clamps=tuple(sorted(clamps.items())),
            guard_hold=OverLimit(
                Action.HOLD,
                entry.name,
                entry.approver_groups,
                entry.approvals_needed,
                entry.expires_after_seconds,
            ),
        )
    return decision
