"""Parse errors: the message and position PostgreSQL itself reports.

The gate refuses what it cannot parse with SQLSTATE 42601, the parser's message and
its position, so the position must be PostgreSQL's: 1-based, counted in characters
of the query string. The table is checked against pglast, and the same table against
a real server through libpq's simple query protocol.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import pq

from dbgate.policy.classify import classify, clear_cache
from dbgate.policy.parse_errors import safe_parse_message


def row(sql: str, message: str, position: int | None, id: str | None = None) -> Any:
    return pytest.param(sql, message, position, id=id or sql[:40])


TABLE = [
    row("SELEC 1", 'syntax error at or near "SELEC"', 1),
    row("SELECT * FRO orders", 'syntax error at or near "FRO"', 10),
    row("SELECT 'ééé', 1 FRO x", 'syntax error at or near "x"', 21, id="counted-in-characters"),
    row("SELECT '🙂🙂' FRO x", 'syntax error at or near "x"', 17, id="four-byte-characters"),
    row("SELECT 1; SELECT é FROM WHERE", 'syntax error at or near "WHERE"', 25, id="second-stmt"),
    row("SELECT (1", "syntax error at end of input", 10, id="end-of-input"),
    row("SELECT ü +", "syntax error at end of input", 11, id="end-of-input-after-unicode"),
    row("SELECT 1 -- comment\nFROM WHERE", 'syntax error at or near "WHERE"', 26, id="newline"),
    row("SELECT 'abc", "unterminated quoted string at or near <literal>", 8, id="literal-masked"),
    row(
        "SELECT 1 /* Ann Lee, 1 Main St",
        "unterminated /* comment at or near <comment>",
        10,
        id="comment-masked",
    ),
    row(
        "SELECT 1 /* a /* b */ c",
        "unterminated /* comment at or near <comment>",
        10,
        id="nested-comment-parsed-flattened",
    ),
    row(
        'SELECT 1 FROM t WHERE "Ann Lee" "Bo Li"',
        "syntax error at or near <identifier>",
        33,
        id="quoted-identifier-masked",
    ),
    row('SELECT "Ann Lee', "unterminated quoted identifier at or near <identifier>", 8),
    row("\tSELECT\t1\tWHERE", "syntax error at end of input", 16, id="tabs"),
]


@pytest.mark.parametrize(("sql", "message", "position"), TABLE)
def test_classifier_reports_message_and_position(
    sql: str, message: str, position: int | None
) -> None:
    clear_cache()
    c = classify(sql)
    assert (c.parse_error, c.parse_error_position) == (message, position)
    assert classify(sql).parse_error_position == position  # cached alike


def test_parsed_statements_have_no_error_position() -> None:
    assert classify("SELECT 1").parse_error_position is None


def test_a_nul_character_has_no_position() -> None:
    c = classify("SELECT 1\x00; DROP TABLE t")
    assert c.parse_error is not None and c.parse_error_position is None


@pytest.mark.parametrize(("sql", "message", "position"), TABLE)
def test_postgresql_reports_the_same(
    pg_dsn: str, sql: str, message: str, position: int | None
) -> None:
    with psycopg.connect(pg_dsn) as conn:
        res = conn.pgconn.exec_(sql.encode())  # the simple query protocol, as psql sends it
        assert res.status == pq.ExecStatus.FATAL_ERROR
        assert res.error_field(pq.DiagnosticField.SQLSTATE) == b"42601"
        server_message = (res.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) or b"").decode()
        server_position = res.error_field(pq.DiagnosticField.STATEMENT_POSITION)
    assert safe_parse_message(server_message) == message
    assert (int(server_position) if server_position else None) == position


@pytest.mark.parametrize(("sql", "message", "position"), TABLE)
def test_the_rules_keep_the_parse_error_decision_with_the_parsers_message(
    sql: str, message: str, position: int | None
) -> None:
    """Deny without consulting any rule, saying what the parser said and nothing else:
    the gate turns it into SQLSTATE 42601, which is not a permission problem."""
    from dbgate.policy import Identity, load_rules

    c = classify(sql)
    d = load_rules().decide(Identity("agent"), c)
    assert (d.action.value, d.rule, d.message) == ("deny", "parse-error", message)
    assert d.classification is c and c.parse_error_position == position
