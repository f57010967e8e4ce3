"""The Inspector that applies dbgate's policy: classify, then let the rules decide.

This is the glue between the pure policy package and the relay. What it adds:

* Parse of a statement whose decision depends on parameter values
  (``needs_bind``) is let through — nothing runs at Parse — with
  ``Allow(check_binds=True)`` so the relay shows this inspector every Bind of it;
  the decision is made at Bind with the actual values, against every statement the
  server may hold under that name (:mod:`dbgate.proxy.prepared`). Text format only:
  binary values of such statements are refused, since we would have to guess their
  meaning.
* Fast-path FunctionCall messages name a function by OID and bypass SQL entirely
  (libpq's large-object API uses them): refused.
* Until an approval service is configured, ``hold`` cannot be satisfied, so the
  statement is refused (fail closed) with a message that says it needed approval.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from dbgate.policy.model import Action, Decision, Identity
from dbgate.policy.rules import RuleSet, decide_bind
from dbgate.proxy.prepared import PreparedChange
from dbgate.proxy.seams import (
    ALLOW,
    ALLOW_CHECKING_BINDS,
    ALLOW_REPEATABLE,
    Allow,
    Refuse,
    Statement,
    Verdict,
)
from dbgate.proxy.session_info import SessionInfo

log = logging.getLogger("dbgate.policy")

_PREPARED_COMMANDS = frozenset({"PREPARE", "DEALLOCATE", "DISCARD"})
_DISCARD_ALL = re.compile(r"^\s*DISCARD\s+ALL\s*;?\s*$", re.IGNORECASE)
_PREPARE = re.compile(
    r'^\s*PREPARE\s+("(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)\s*(?:\([^)]*\))?\s*AS\s+(.+?)\s*;?\s*$',
    re.IGNORECASE | re.DOTALL,
)
_DEALLOCATE = re.compile(
    r'^\s*DEALLOCATE\s+(?:PREPARE\s+)?("(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)\s*;?\s*$',
    re.IGNORECASE,
)


def bind_values_as_text(values: tuple[bytes | None, ...]) -> list[str | None] | None:
    """Bind values as text, or None when one cannot be read as UTF-8 text.

    Only the text-typed arguments (setting names, file paths ...) matter to the
    decisions made at Bind, and the binary format of text types is their UTF-8 bytes,
    so both formats read the same. A value that is not valid text makes the caller
    refuse rather than guess.
    """
    out: list[str | None] = []
    for v in values:
        if v is None:
            out.append(None)
            continue
        try:
            out.append(v.decode("utf-8"))
        except UnicodeDecodeError:
            return None
    return out


def _ident(token: str) -> str:
    if token.startswith('"'):
        return token[1:-1].replace('""', '"')
    return token.lower()


def sql_prepare_changes(sql: str) -> tuple[PreparedChange, ...]:
    """What SQL-level PREPARE/DEALLOCATE/DISCARD ALL in ``sql`` do to prepared statements.

    SQL PREPARE and protocol-level Parse share one namespace in PostgreSQL, so a later
    ``EXECUTE name`` (or a Bind of ``name``) is judged by the body recorded here. A
    PREPARE we cannot read is simply not recorded: its EXECUTE then classifies as
    opaque (fail closed). The relay applies these once the server confirms them.
    """
    from pglast.parser import split

    from dbgate.policy.classify import classify

    try:
        parts = split(sql)
    except Exception:
        return ()
    changes: list[PreparedChange] = []
    for index, part in enumerate(parts):
        if (mp := _PREPARE.match(part)) is not None:
            body = mp.group(2)
            changes.append(
                PreparedChange(
                    "add", _ident(mp.group(1)), body, classify(body).needs_bind, statement=index
                )
            )
        elif _DISCARD_ALL.match(part) is not None:
            changes.append(PreparedChange("clear", statement=index))
        elif (md := _DEALLOCATE.match(part)) is not None:
            name = md.group(1)
            if name.lower() == "all":
                changes.append(PreparedChange("clear", statement=index))
            else:
                changes.append(PreparedChange("remove", _ident(name), statement=index))
    return tuple(changes)


INSUFFICIENT_PRIVILEGE = "42501"
_ALLOW_ACTION = Action.ALLOW  # enum member lookups cost ~0.4 us each on Python 3.11
_FUNCTION_CALL_REFUSED = Refuse(
    INSUFFICIENT_PRIVILEGE,
    "dbgate: fast-path function calls are not allowed; "
    "call the function from SQL so that it can be inspected",
)
_EXECUTE_IN_PARSE_REFUSED = Refuse(
    INSUFFICIENT_PRIVILEGE,
    "dbgate: EXECUTE of a prepared statement is accepted only as a simple query: "
    "through Parse/Bind/Execute it would run whatever the name means when it is "
    "executed, not what dbgate checked",
)
_SETTINGS_REFUSED = Refuse(
    INSUFFICIENT_PRIVILEGE,
    "dbgate: this session's standard_conforming_strings/client_encoding "
    "differ from what dbgate can analyse (on/UTF8); statements are refused",
)
# What a classification means for an identity (PolicyInspector._answer):
_NEEDS_BIND = "needs-bind"  # decided at each Bind (a Parse); a Query is decided as usual
_DECIDE = "decide"  # not a plain allow: ask the rules (and log) each time
_ALLOW_SESSION = "allow-session"  # allowed, but read session state (EXECUTE)
_ALLOW_PREPARES = "allow-prepares"  # allowed, and changes prepared statements
_ALLOW_PLAIN = "allow"
_ANSWERS_CACHE_SIZE = 8192


class PolicyInspector:
    """Inspector backed by the classifier and a RuleSet."""

    inspects_binds = False  # only Binds of statements allowed with check_binds

    def __init__(self, ruleset: RuleSet, classify: Callable[..., object] | None = None) -> None:
        self._repeats: Callable[[str], bool] = lambda _sql: False
        if classify is None:
            from dbgate.policy.classify import classify, seen_exactly

            self._repeats = seen_exactly
        self._classify = classify
        self._ruleset = ruleset
        self._answers: dict[tuple[int, int], tuple[Identity, Any, object]] = {}

    @property
    def ruleset(self) -> RuleSet:
        """Read-only: a new rule set needs a new inspector (and sessions to forget
        their remembered verdicts), or cached answers would outlive the rules."""
        return self._ruleset

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

    def inspect(self, session: SessionInfo, statement: Statement) -> Verdict:
        kind = statement.kind
        if kind == "function_call":
            return _FUNCTION_CALL_REFUSED
        identity = self.identity(session)
        if identity is None:
            # The classifier parses SQL as the server does with standard strings and a
            # UTF-8 encoding; with others a string literal could hide a statement from
            # it. Refuse everything.
            return _SETTINGS_REFUSED
        if kind == "bind":
            return self._inspect_bind(session, identity, statement)
        sql = statement.sql
        repeats = self._repeats(sql)  # asked first: classifying stores a new text
        classification = self._classify(sql, prepared=session.statements.texts)
        answer = self._answers.get((id(identity), id(classification)))
        if answer is None or answer[0] is not identity or answer[1] is not classification:
            answer = self._answer(identity, classification)
        outcome = answer[2]
        if outcome is _ALLOW_PLAIN:
            # Same text, same identity (application_name comes from ParameterStatus,
            # on which the relay forgets), same rules: same decision. Worth
            # remembering only for texts that do repeat (drivers' Parse, BEGIN/COMMIT),
            # not for fresh literals.
            return ALLOW_REPEATABLE if repeats else ALLOW
        if kind == "parse":
            if outcome is _NEEDS_BIND:
                return ALLOW_CHECKING_BINDS  # nothing runs at Parse; decided at each Bind
            if outcome is _ALLOW_SESSION:
                return _EXECUTE_IN_PARSE_REFUSED
            if outcome is _ALLOW_PREPARES:
                # SQL PREPARE/DEALLOCATE through the extended protocol run at Execute,
                # any number of times: not recorded. A name they create is unknown
                # (EXECUTE of it is opaque); one they remove keeps being checked.
                return ALLOW
        elif outcome is _ALLOW_SESSION:
            return ALLOW  # read session state (EXECUTE): may differ next time
        elif outcome is _ALLOW_PREPARES:
            return Allow(changes=sql_prepare_changes(sql))
        # Not a plain allow, or a Query whose statements would need Bind values.
        decision = self.ruleset.decide(identity, classification)  # type: ignore[arg-type]
        if decision.action is not _ALLOW_ACTION:
            return self.verdict(decision, session)
        if kind == "query" and any(
            st.command in _PREPARED_COMMANDS
            for st in classification.statements  # type: ignore[attr-defined]
        ):
            return Allow(changes=sql_prepare_changes(sql))
        return ALLOW

    def _answer(self, identity: Identity, classification: Any) -> tuple[Identity, Any, object]:
        """What a classification means for an identity, remembered while both live."""
        statements = classification.statements
        session_dependent = getattr(classification, "session_dependent", True)
        if any(st.needs_bind for st in statements):
            outcome = _NEEDS_BIND
        elif self.ruleset.decide(identity, classification).action is not _ALLOW_ACTION:
            outcome = _DECIDE
        elif any(st.command in _PREPARED_COMMANDS for st in statements):
            outcome = _ALLOW_PREPARES  # checked before EXECUTE: the changes must be kept
        elif session_dependent:
            outcome = _ALLOW_SESSION
        else:
            outcome = _ALLOW_PLAIN
        answer = (identity, classification, outcome)
        if not session_dependent:  # those are classified afresh each time: never reused
            if len(self._answers) >= _ANSWERS_CACHE_SIZE:
                self._answers.clear()
            # The entry holds both objects, so their ids cannot be reused while it lives.
            self._answers[(id(identity), id(classification))] = answer
        return answer

    def _inspect_bind(
        self, session: SessionInfo, identity: Identity, statement: Statement
    ) -> Verdict:
        """Judge a Bind by every statement the server may hold under its name."""
        prepared = session.statements
        checked = [c for c in statement.candidates if c.check_binds]
        if not checked:
            return ALLOW  # judged in full at its Parse
        params = bind_values_as_text(statement.params)
        if params is None:
            return Refuse(
                INSUFFICIENT_PRIVILEGE,
                "dbgate: this statement is decided on its parameter values, "
                "and a value could not be read as text",
            )
        for candidate in checked:
            if candidate.lost:
                return Refuse(
                    INSUFFICIENT_PRIVILEGE,
                    f"dbgate: lost track of prepared statement {statement.statement_name!r} "
                    "after repeated errors; close it and prepare it again",
                )
            classification = self._classify(candidate.sql, prepared=prepared.texts)
            decision = decide_bind(
                self.ruleset,
                identity,
                classification,  # type: ignore[arg-type]
                candidate.sql,
                params,
                prepared=prepared.texts,
            )
            if decision.action is not _ALLOW_ACTION:
                return self.verdict(decision, session)
        return ALLOW

    @staticmethod
    def verdict(decision: Decision, session: SessionInfo) -> Verdict:
        if decision.action is Action.ALLOW:
            return ALLOW
        log.info(
            "session %s (%s): %s by rule %s",
            session.session_id,
            session.identity,
            decision.action.value,
            decision.rule,
        )
        if decision.action is Action.DENY:
            return Refuse(
                INSUFFICIENT_PRIVILEGE,
                f"dbgate: denied: {decision.message}",
                hint=f"rule: {decision.rule}",
            )
        return Refuse(
            INSUFFICIENT_PRIVILEGE,
            f"dbgate: this statement needs approval ({decision.message}) "
            "and no approval service is configured, so it was not run",
            hint=f"rule: {decision.rule}",
        )
