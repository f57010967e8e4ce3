"""What the agent is told when dbgate does not run its statement.

Clients and agents act on the class of an error, so each refusal has the SQLSTATE
that says what to do: ``42601`` fix the SQL (with the parser's position, so psql
draws its caret), ``42501`` ask for permission (this statement's own reasons in the
message, the rule in the HINT), ``57014`` the wait ended. The operator's log gets
one line per refusal with the identity, the rule and the statement with its literal
values masked — never the values themselves.
"""

from __future__ import annotations

import logging

from dbgate.gate.notes import note_for
from dbgate.pii.sql_mask import mask_every_literal
from dbgate.policy.model import Action, Classification, Decision
from dbgate.proxy.seams import Refuse, Statement
from dbgate.proxy.session_info import SessionInfo
from dbgate.wire import sqlstate

log = logging.getLogger("dbgate.policy")

FUNCTION_CALL_REFUSED = Refuse(
    sqlstate.INSUFFICIENT_PRIVILEGE,
    "dbgate: fast-path function calls are not allowed; "
    "call the function from SQL so that it can be inspected",
)
EXECUTE_IN_PARSE_REFUSED = Refuse(
    sqlstate.INSUFFICIENT_PRIVILEGE,
    "dbgate: EXECUTE of a prepared statement is accepted only as a simple query: "
    "through Parse/Bind/Execute it would run whatever the name means when it is "
    "executed, not what dbgate checked",
)
SETTINGS_REFUSED = Refuse(
    sqlstate.INSUFFICIENT_PRIVILEGE,
    "dbgate: this session's standard_conforming_strings/client_encoding "
    "differ from what dbgate can analyse (on/UTF8); statements are refused",
)
AUDIT_UNAVAILABLE = Refuse(
    sqlstate.INSUFFICIENT_PRIVILEGE,
    "dbgate: the audit trail cannot be written (the state database is unreachable), so "
    "statements are refused until it can (audit.on_failure: refuse)",
)
PII_SCHEMA_UNAVAILABLE = Refuse(
    sqlstate.INSUFFICIENT_PRIVILEGE,
    "dbgate: the database's schema could not be read, so dbgate cannot tell which "
    "results carry PII; statements are refused until it can (see the operator log)",
)
SCHEMA_PEERS_UNAVAILABLE = Refuse(
    sqlstate.INSUFFICIENT_PRIVILEGE,
    "dbgate: this statement may change the schema, and the other replicas cannot be told "
    "of it (the state database is unreachable), so it is refused until they can",
)
SCHEMA_SIBLINGS_UNHEARD = Refuse(
    sqlstate.INSUFFICIENT_PRIVILEGE,
    "dbgate: this statement may change the schema, and the other worker processes "
    "cannot be told of it without a state database, so it is refused",
    hint="configure state.dsn, or run dbgate serve with --workers 1",
)
UNREADABLE_VALUES_REFUSED = Refuse(
    sqlstate.INSUFFICIENT_PRIVILEGE,
    "dbgate: this statement is decided on its parameter values, and a value could "
    "not be read (a binary value of a type dbgate does not decode, or of a type the "
    "server has not reported); send it in text format or describe the statement first",
)


#: A protocol Bind of a statement made by SQL PREPARE (see Candidate.sql_prepared)
SQL_PREPARED_BIND = Refuse(
    sqlstate.FEATURE_NOT_SUPPORTED,
    "dbgate: a statement prepared with SQL PREPARE is run with EXECUTE, not bound "
    "through the extended protocol (dbgate judges it at each EXECUTE)",
)


#: A held Bind that may bind either of two statements: an approval would show the
#: approver one of them while the server may run the other.
AMBIGUOUS_HOLD = Refuse(
    sqlstate.INSUFFICIENT_PRIVILEGE,
    "dbgate: this Bind needs approval and may bind either of two statements (a Parse "
    "of its name is not answered yet), so no approval can say which one runs; wait "
    "for the answer (Sync) before binding",
)


def ambiguous_hold(decision: Decision, statement: Statement) -> bool:
    """Whether ``decision`` holds a Bind that may bind either of two different texts,
    or one text with other parameter types (binary values read otherwise), while a
    Parse of its name is not answered yet. An approval is asked for one text: the
    approver would see that one while the server runs the other, so such a Bind is
    refused (:data:`AMBIGUOUS_HOLD`), never held."""
    return (
        decision.action is Action.HOLD
        and len({(c.sql, c.param_types) for c in statement.candidates}) > 1
    )


def lost_track(name: str) -> Refuse:
    return Refuse(
        sqlstate.INSUFFICIENT_PRIVILEGE,
        f"dbgate: lost track of prepared statement {name!r} (too many versions of it in "
        "flight); wait for the answers, or close it and prepare it again",
    )


def reasons_text(decision: Decision) -> str:
    """This statement's own reasons for the decision, as one sentence or several."""
    texts: list[str] = []
    for r in decision.reasons:
        if r.message not in texts:
            texts.append(r.message)
    return "; ".join(texts) if texts else decision.message


def rule_hint(decision: Decision) -> str:
    """The HINT names the deciding rule (operators look it up in their pack)."""
    return f"rule: {decision.rule}"


#: Longer statements are logged by size only.
_LOGGED_SQL_CHARS = 4096


def log_refusal(session: SessionInfo, decision: Decision, sql: str) -> None:
    """One INFO line per refused or held statement, every literal masked (masking by
    place cannot place a literal behind an alias, a JSON key or a syntax error)."""
    if not log.isEnabledFor(logging.INFO):
        return
    if len(sql) > _LOGGED_SQL_CHARS:
        # Masking parses the whole text on the event loop: too costly for a hostile
        # megabyte, and a cut-off prefix could end inside a literal it cannot mask.
        masked = f"<a statement of {len(sql):,} characters, not shown>"
    else:
        masked = mask_every_literal(sql)
    log.info(
        "session %s identity=%s %s by rule %s: %s",
        session.session_id,
        session.identity,
        decision.action.value,
        decision.rule,
        masked[:500],
    )


def syntax_error(decision: Decision, classification: Classification) -> Refuse:
    """The parser could not read the statement: 42601 with its message and position."""
    message = classification.parse_error or "syntax error"
    return Refuse(
        sqlstate.SYNTAX_ERROR,
        message,
        position=classification.parse_error_position or 0,
        note=note_for(decision),
    )


def refusal(decision: Decision, *, approvals: bool) -> Refuse:
    """The error for a statement the rules do not allow (``approvals``: whether a
    hold could have waited for a human, i.e. this is the fail-closed path)."""
    hint = rule_hint(decision)
    note = note_for(decision)
    if decision.action is Action.DENY:
        return Refuse(
            sqlstate.INSUFFICIENT_PRIVILEGE,
            f"dbgate: denied: {reasons_text(decision)}",
            hint=hint,
            note=note,
        )
    why = (
        "the approval service is unavailable" if approvals else "no approval service is configured"
    )
    return Refuse(
        sqlstate.INSUFFICIENT_PRIVILEGE,
        f"dbgate: this statement needs approval ({reasons_text(decision)}); {why}, "
        "so it was not run",
        hint=hint,
        note=note,
    )
