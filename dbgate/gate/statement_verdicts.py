"""The verdict on a Query or a Parse (mixin of :class:`~dbgate.gate.inspector.Gate`):
classify it, read what the rules' decision means for the session's identity, and turn
that into what the relay does.

What a classification means for an identity is remembered while both live, as an
*answer* (:meth:`StatementVerdicts._answer`): the decision, and one of a few outcomes
(a plain allow, an allow under run-time limits, one that changes prepared statements
or reads session state, one decided at each Bind, one the rules must see each time),
with the verdicts of a plain or limited allow made once. The hot path of a text seen
before is one classifier lookup and one dict lookup of its answer.

A string that declares or fetches from SQL cursors under row windows is judged here
too (:meth:`StatementVerdicts._cursor_reads`). What run-time limits make of an allowed
verdict is :mod:`dbgate.gate.run_limits`; a Bind's verdict is
:mod:`dbgate.gate.bind_verdicts`.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from dbgate.gate import cursors, refusals
from dbgate.gate.limits import limited_verdict
from dbgate.gate.notes import GateNote, primary_category
from dbgate.gate.prepared_effects import PREPARED_COMMANDS, prepared_changes
from dbgate.policy.keys import KeyCatalog
from dbgate.policy.model import Action, Decision, Identity
from dbgate.proxy.seams import (
    ALLOW,
    ALLOW_CHECKING_BINDS,
    ALLOW_OPENING_MEASUREMENT,
    Allow,
    Statement,
    Verdict,
)
from dbgate.proxy.session_info import SessionInfo

if TYPE_CHECKING:
    from dbgate.gate.parts import GateParts as _GateParts
else:
    _GateParts = object

_ALLOW_ACTION = Action.ALLOW  # enum member lookups cost ~0.4 us each on Python 3.11
_HOLD_ACTION = Action.HOLD
# What a classification means for an identity (StatementVerdicts._answer):
_NEEDS_BIND = "needs-bind"  # decided at each Bind (a Parse); a Query is decided as usual
_DECIDE = "decide"  # not a plain allow: ask the rules (and log) each time
_ALLOW_SESSION = "allow-session"  # allowed, but read session state (EXECUTE)
_CURSOR_COMMANDS = frozenset({cursors.DECLARE, cursors.FETCH})
_ALLOW_PREPARES = "allow-prepares"  # allowed, and changes prepared statements
_ALLOW_DECLARES = "allow-declares"  # allowed, and declares dbgate.purpose/model
_ALLOW_PLAIN = "allow"
_ALLOW_LIMITED = "allow-limited"  # allowed under run-time limits (or clamped guards)
_ANSWERS_CACHE_SIZE = 8192


def reusable(classification: Any) -> bool:
    """Whether an answer about ``classification`` is worth remembering by its identity
    (:attr:`Classification.reused <dbgate.policy.model.Classification.reused>`)."""
    return getattr(classification, "reused", True)  # type: ignore[no-any-return]


#: Commands whose Bind may be measured (``max_rows_changed``).
_WRITE_COMMANDS = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE"})


class StatementVerdicts(_GateParts):
    """The verdict on a Query or a Parse (a mixin of ``Gate``, whose ``__init__``
    holds the state: ``_answers`` is the cache of answers)."""

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
                and (limited.max_rows or limited.max_changes or type(limited) is not Allow)
                and self._may_learn_keys(session, catalog, classification)
            ):  # a key may prove it narrow, or a foreign key make its changes uncounted
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
                # (EXECUTE of it is opaque, a Bind of it refused); one they remove
                # keeps being checked.
                for st in classification.statements:
                    effect = st.prepared_effect
                    if effect is not None and effect.kind == "add":
                        session.statements.sql_prepared(effect.name)
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
        if not session_dependent and reusable(classification):  # else: never asked again
            if len(self._answers) >= _ANSWERS_CACHE_SIZE:
                self._answers.clear()
            # The entry holds both objects, so their ids cannot be reused while it lives.
            self._answers[(id(identity), id(classification))] = answer
        return answer

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
