"""The Inspector that applies dbgate's policy: classify, then let the rules decide.

This is the glue between the pure policy package and the relay. What it adds:

* Parse of a statement whose decision depends on parameter values
  (``needs_bind``) is let through — nothing runs at Parse — and the statement name
  is registered so the relay shows this inspector every Bind of it; the decision is
  made at Bind with the actual values (text format only: binary values of such
  statements are refused, since we would have to guess their meaning).
* Fast-path FunctionCall messages name a function by OID and bypass SQL entirely
  (libpq's large-object API uses them): refused.
* Until an approval service is configured, ``hold`` cannot be satisfied, so the
  statement is refused (fail closed) with a message that says it needed approval.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dbgate.policy.model import Action, Decision, Identity
from dbgate.policy.rules import RuleSet, decide_bind
from dbgate.proxy.hooks import ALLOW, Refuse, Statement, Verdict
from dbgate.proxy.session_info import SessionInfo

log = logging.getLogger("dbgate.policy")

INSUFFICIENT_PRIVILEGE = "42501"


class PolicyInspector:
    """Inspector backed by the classifier and a RuleSet."""

    inspects_binds = False  # only statements registered in session.bind_checks

    def __init__(self, ruleset: RuleSet, classify: Callable[..., object] | None = None) -> None:
        if classify is None:
            from dbgate.policy.classify import classify
        self._classify = classify
        self.ruleset = ruleset

    @staticmethod
    def identity(session: SessionInfo) -> Identity:
        return Identity(
            name=session.identity,
            application_name=session.application_name,
            client_addr=session.client_addr,
            groups=session.groups,
        )

    def inspect(self, session: SessionInfo, statement: Statement) -> Verdict:
        kind = statement.kind
        if kind == "function_call":
            return Refuse(
                INSUFFICIENT_PRIVILEGE,
                "dbgate: fast-path function calls are not allowed; "
                "call the function from SQL so that it can be inspected",
            )
        classification = self._classify(statement.sql)
        identity = self.identity(session)
        if kind == "bind":
            if 1 in statement.param_formats:
                return Refuse(
                    INSUFFICIENT_PRIVILEGE,
                    "dbgate: this statement is decided on its parameter values, "
                    "which must be sent in text format",
                )
            params = [None if p is None else p.decode("utf-8", "replace") for p in statement.params]
            decision = decide_bind(
                self.ruleset,
                identity,
                classification,
                statement.sql,
                params,  # type: ignore[arg-type]
            )
        else:
            if classification.needs_bind:  # type: ignore[attr-defined]
                if kind == "parse":
                    session.bind_checks.add(statement.statement_name)
                    return ALLOW
            elif kind == "parse" and not statement.statement_name:
                session.bind_checks.discard("")
            decision = self.ruleset.decide(identity, classification)  # type: ignore[arg-type]
        return self.verdict(decision, session)

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
