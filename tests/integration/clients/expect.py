"""What a refusal through dbgate must look like, from the policy's own answer.

The real-client suite checks every refusal a client meets for its *class* (the
SQLSTATE: 42501 for a held or denied statement, 42601 for SQL that cannot be
parsed) and its *reason*: the message names this statement's own reasons — the
classifier's reason texts for the categories that decided it — and the HINT names
the rule (DESIGN.md, "Client-visible"). The expected answer is not written into
each test by hand: it is what ``dbgate classify --json`` reports for the statement
and the agent identity of the ``gate`` fixture, so a test states *which* statement
is refused and this module says what the refusal must carry.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from dbgate.policy.model import Identity
from tests.integration.conftest import AGENT

#: The identity the ``gate`` fixture's agent is decided as.
AGENT_IDENTITY = Identity(name=AGENT, groups=frozenset({"agents"}))
INSUFFICIENT_PRIVILEGE = "42501"
SYNTAX_ERROR = "42601"


@dataclass(frozen=True)
class Expected:
    """The policy's answer to one statement, as a client should see it."""

    sql: str
    action: str  # allow | hold | deny
    rule: str  # the deciding rule (named in the HINT)
    reasons: tuple[str, ...]  # reason texts of the categories that rule decided

    @property
    def refused(self) -> bool:
        return self.action != "allow"


@functools.cache
def _ruleset() -> Any:
    from dbgate.policy.rules import load_rules

    return load_rules()


def expected(sql: str, params: tuple[object, ...] | None = None) -> Expected:
    """What the shipped rule pack decides for ``sql`` (as ``dbgate classify --json``).

    With ``params``, the decision made at Bind with those values (as text).
    """
    from dbgate.policy.classify import classify, classify_bind
    from dbgate.policy.commands import classification_report

    classification = classify(sql)
    if params is not None:
        values = [None if p is None else str(p) for p in params]
        classification = classify_bind(classification, sql, values)
    report = classification_report(_ruleset(), AGENT_IDENTITY, classification)
    rule = report["rule"]
    if report["parse_error"] is not None:
        reasons: tuple[str, ...] = (report["parse_error"],)
    else:
        reasons = tuple(
            r["message"]
            for st in report["statements"]
            for r in st["reasons"]
            if st["units"].get(r["category"]) == rule
        )
    return Expected(sql, report["action"], rule, reasons)


@dataclass(frozen=True)
class SeenError:
    """The fields of an ErrorResponse as a client library exposes them."""

    sqlstate: str | None
    message: str
    hint: str | None = None
    position: str | None = None


def seen(error: BaseException) -> SeenError:
    """The error fields of a psycopg 3, asyncpg or SQLAlchemy/pandas-wrapped error."""
    cause: BaseException | None = error
    while cause is not None:
        diag = getattr(cause, "diag", None)
        if diag is not None and getattr(cause, "sqlstate", None):  # psycopg 3
            return SeenError(
                cause.sqlstate,  # type: ignore[attr-defined]
                diag.message_primary or "",
                diag.message_hint,
                diag.statement_position,
            )
        if hasattr(cause, "as_dict") and getattr(cause, "sqlstate", None):  # asyncpg
            fields = cause.as_dict()  # type: ignore[attr-defined]
            return SeenError(
                fields.get("sqlstate"),
                fields.get("message", ""),
                fields.get("hint"),
                fields.get("position"),
            )
        cause = getattr(cause, "orig", None) or cause.__cause__
    raise AssertionError(f"not a server error: {error!r}")


def assert_refused(
    error: BaseException, sql: str, params: tuple[object, ...] | None = None
) -> SeenError:
    """``error`` is dbgate's refusal of ``sql``: its class, and its rule in the HINT.

    The reason in the message is checked by :func:`assert_names_reasons` (a separate
    test: today's messages carry the rule's generic text, issue 7).
    """
    exp = expected(sql, params)
    assert exp.refused, f"the policy allows {sql!r} {params}; a refusal of it is a false hold"
    got = seen(error)
    assert (got.sqlstate, exp.rule in (got.hint or "")) == (INSUFFICIENT_PRIVILEGE, True), (
        f"refusal of {sql!r}: {got}; expected 42501 with rule {exp.rule} in the HINT"
    )
    assert got.message.startswith("dbgate: "), got
    return got


def assert_names_reasons(
    got: SeenError, sql: str, params: tuple[object, ...] | None = None
) -> None:
    """The message names this statement's own reasons, not only the rule's text."""
    exp = expected(sql, params)
    assert exp.reasons, f"the classifier gives no reason for {sql!r}"
    missing = [r for r in exp.reasons if r not in got.message]
    assert not missing, f"message {got.message!r} does not name {missing} (statement {sql!r})"
