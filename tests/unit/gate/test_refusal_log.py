"""The INFO line for a refused or held statement: values masked, hostile sizes not parsed."""

from __future__ import annotations

import logging

import pytest

from dbgate.gate.refusals import log_refusal
from dbgate.policy.model import Action, Decision
from dbgate.proxy.session_info import SessionInfo

SESSION = SessionInfo(7, "agent", "db", "psql", "127.0.0.1")
DECISION = Decision(Action.DENY, "deny-things")


def _line(caplog: pytest.LogCaptureFixture, sql: str) -> str:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dbgate"):
        log_refusal(SESSION, DECISION, sql)
    (record,) = [r for r in caplog.records if "by rule deny-things" in r.getMessage()]
    return record.getMessage()


def test_a_statement_is_logged_with_its_values_masked(caplog: pytest.LogCaptureFixture) -> None:
    line = _line(caplog, "select * from customers where email = 'ann@example.com'")
    assert "ann@example.com" not in line and "customers" in line


def test_a_huge_statement_is_logged_by_size_only(caplog: pytest.LogCaptureFixture) -> None:
    sql = "select 1 where email = '" + "ann@example.com " * 20_000 + "'"
    line = _line(caplog, sql)
    assert "ann@example.com" not in line
    assert f"a statement of {len(sql):,} characters, not shown" in line


@pytest.mark.parametrize(
    "sql",
    [
        "; select * from customers c where to_jsonb(c)->>'full_name' = 'Zelda Quist'",
        "select * from (select full_name as n from customers) x where n = 'Zelda Quist'",
        "select * from customers where full_name = 'Zelda Quist' and",  # a syntax error
        "execute p('Zelda Quist')",
    ],
)
def test_no_literal_is_logged_whatever_its_place(
    caplog: pytest.LogCaptureFixture, sql: str
) -> None:
    assert "Zelda" not in _line(caplog, sql)
