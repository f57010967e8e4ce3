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
import re
from collections.abc import Callable

from dbgate.policy.model import Action, Decision, Identity
from dbgate.policy.rules import RuleSet, decide_bind
from dbgate.proxy.hooks import ALLOW, Refuse, Statement, Verdict
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


def track_sql_prepares(sql: str, prepared: dict[str, str]) -> None:
    """Record SQL-level PREPARE/DEALLOCATE/DISCARD ALL in the session's prepared map.

    SQL PREPARE and protocol-level Parse share one namespace in PostgreSQL, so a later
    ``EXECUTE name`` is classified by the body recorded here. A PREPARE we cannot read
    is simply not recorded: its EXECUTE then classifies as opaque (fail closed).
    """
    from pglast.parser import split

    try:
        parts = split(sql)
    except Exception:
        return
    for part in parts:
        if (mp := _PREPARE.match(part)) is not None:
            prepared.setdefault(_ident(mp.group(1)), mp.group(2))
        elif _DISCARD_ALL.match(part) is not None:
            prepared.clear()
        elif (md := _DEALLOCATE.match(part)) is not None:
            name = md.group(1)
            if name.lower() == "all":
                prepared.clear()
            else:
                prepared.pop(_ident(name), None)


INSUFFICIENT_PRIVILEGE = "42501"
_ALLOW_ACTION = Action.ALLOW  # enum member lookups cost ~0.4 us each on Python 3.11


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
        """The rules' view of the session; rebuilt only when application_name changes."""
        app = session.server_params.get("application_name", session.application_name)
        cached = session.policy_identity
        if cached is None or cached.application_name != app:
            cached = session.policy_identity = Identity(
                name=session.identity,
                application_name=app,
                client_addr=session.client_addr,
                groups=session.groups,
            )
        return cached  # type: ignore[no-any-return]

    def inspect(self, session: SessionInfo, statement: Statement) -> Verdict:
        kind = statement.kind
        if kind == "function_call":
            return Refuse(
                INSUFFICIENT_PRIVILEGE,
                "dbgate: fast-path function calls are not allowed; "
                "call the function from SQL so that it can be inspected",
            )
        server = session.server_params
        if server.get("standard_conforming_strings", "on") != "on" or server.get(
            "client_encoding", "UTF8"
        ) not in ("UTF8", "SQL_ASCII"):
            # The classifier parses SQL as the server does with these settings; with
            # others a string literal could hide a statement from it. Refuse everything.
            return Refuse(
                INSUFFICIENT_PRIVILEGE,
                "dbgate: this session's standard_conforming_strings/client_encoding "
                "differ from what dbgate can analyse (on/UTF8); statements are refused",
            )
        classification = self._classify(statement.sql, prepared=session.prepared)
        identity = self.identity(session)
        if kind == "bind":
            params = bind_values_as_text(statement.params)
            if params is None:
                return Refuse(
                    INSUFFICIENT_PRIVILEGE,
                    "dbgate: this statement is decided on its parameter values, "
                    "and a value could not be read as text",
                )
            decision = decide_bind(
                self.ruleset,
                identity,
                classification,
                statement.sql,
                params,  # type: ignore[arg-type]
            )
        else:
            statements = classification.statements  # type: ignore[attr-defined]
            if kind == "parse":
                if any(st.needs_bind for st in statements):
                    session.bind_checks.add(statement.statement_name)
                    return ALLOW  # nothing runs at Parse; decided at each Bind
                if not statement.statement_name:
                    session.bind_checks.discard("")
            decision = self.ruleset.decide(identity, classification)  # type: ignore[arg-type]
            if decision.action is _ALLOW_ACTION:
                if kind == "query":
                    for st in statements:
                        if st.command in _PREPARED_COMMANDS:
                            track_sql_prepares(statement.sql, session.prepared)
                            break
                return ALLOW
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
