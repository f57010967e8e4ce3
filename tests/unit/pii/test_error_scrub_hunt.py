"""Errors of statements that involve PII: their text is withheld (fail closed)."""

from __future__ import annotations

from dataclasses import replace

from dbgate.gate.pii_outputs import PiiResultPlan, _involves_pii, _positions
from dbgate.pii.filters import MessageFilter, _encode_fields
from dbgate.proxy.seams import Allow
from dbgate.wire.messages import parse_error_fields


def _filter() -> MessageFilter:
    return MessageFilter(
        lambda entity, value: f"tok_{entity}_h{'0' * 32}",
        lambda schema, table, column: "email" if column == "email" else None,
        lambda schema, table: table == "customers",
    )


def _body(**fields: str) -> bytes:
    return _encode_fields(fields)


def _all_text(body: bytes) -> str:
    return " ".join(parse_error_fields(body, "ErrorResponse").values())


LEAKS = [
    {"C": "42704", "M": 'unrecognized configuration parameter "Matthew Smith"'},
    {"C": "42P01", "M": 'relation "Matthew Smith" does not exist', "P": "8"},
    {"C": "42601", "M": 'syntax error in tsquery: "Matthew Smith &"'},
    {
        "C": "22P02",
        "M": "invalid input syntax for type json",
        "D": 'Token "x" is invalid.',
        "W": 'JSON data, line 1: ["Matthew Smith" x',
    },
    {"C": "22008", "M": "date field value out of range: 1991-08-54"},
    {"C": "54000", "M": "requested character too large for encoding: 2077097"},
    {"C": "42601", "M": 'syntax error at or near ".77" of jsonpath input'},
    {"C": "22P02", "M": "x", "W": 'invalid type name "Matthew Smith"', "q": "Matthew Smith"},
]


def test_withheld_for_a_statement_involving_pii() -> None:
    f = _filter()
    for fields in LEAKS:
        body = _body(S="ERROR", V="ERROR", **fields)
        out = f.error(body, involves_pii=True)
        text = _all_text(out)
        for needle in ("Matthew", "Smith", "1991-08-54", "2077097", ".77"):
            assert needle not in text, (fields, text)
        got = parse_error_fields(out, "ErrorResponse")
        assert got["C"] == fields["C"] and fields["C"] in got["M"] and "withheld" in got["M"]
        assert "P" not in got  # a position can point into a value (see below)


def test_positions_of_a_withheld_message_are_dropped() -> None:
    """``(repeat('a', ascii(substr(email, 1, 1)) * 128 + ...) || ' @')::regtype``
    fails in the type-name parser with a position inside the value it parsed: the
    position would spell two characters of the e-mail per statement."""
    body = _body(S="ERROR", C="42601", M='syntax error at or near "@"', P="14051", p="3")
    out = parse_error_fields(_filter().error(body, involves_pii=True), "ErrorResponse")
    assert "P" not in out and "p" not in out and out["C"] == "42601"


def test_positions_dropped_when_the_text_was_rewritten() -> None:
    body = _body(S="ERROR", C="42601", M='syntax error at or near "Smith"', P="30")
    out = parse_error_fields(
        _filter().error(body, involves_pii=True, positions=False), "ErrorResponse"
    )
    assert "P" not in out


def test_names_fields_are_kept() -> None:
    body = _body(S="ERROR", C="23502", M="Matthew Smith", s="public", t="customers", c="email")
    out = parse_error_fields(_filter().error(body, involves_pii=True), "ErrorResponse")
    assert (out["s"], out["t"], out["c"]) == ("public", "customers", "email")
    assert "Matthew" not in out["M"]


def test_integrity_violation_keeps_its_tokenized_text() -> None:
    body = _body(
        S="ERROR",
        C="23505",
        M='duplicate key value violates unique constraint "customers_email_key"',
        D="Key (email)=(ann@example.com) already exists.",
        t="customers",
    )
    out = parse_error_fields(_filter().error(body, involves_pii=True), "ErrorResponse")
    assert out["M"].startswith("duplicate key value")
    assert "ann@example.com" not in out["D"] and out["D"].startswith("Key (email)=(tok_")


def test_raise_with_an_integrity_sqlstate_is_withheld() -> None:
    body = _body(
        S="ERROR",
        C="23505",
        M='duplicate key value violates unique constraint "Matthew Smith"',
        R="exec_stmt_raise",
    )
    out = parse_error_fields(_filter().error(body, involves_pii=True), "ErrorResponse")
    assert "Matthew" not in out["M"]


def test_unreadable_body_of_a_pii_statement_is_replaced() -> None:
    out = _filter().error(b"MMatthew Smith", involves_pii=True)
    assert b"Matthew" not in out


def test_statements_without_pii_keep_the_message() -> None:
    body = _body(S="ERROR", C="22012", M="division by zero")
    assert _filter().error(body) == body
    assert _filter().error(body, involves_pii=False) == body


class _Plan:
    pass


def test_which_verdicts_involve_pii() -> None:
    assert _involves_pii(None)  # unknown: fail closed
    assert not _involves_pii(Allow())
    assert _involves_pii(Allow(plan=PiiResultPlan(_Plan())))  # type: ignore[arg-type]
    assert _involves_pii(Allow(replace_sql="select 1"))
    assert _involves_pii(Allow(replace_params=(b"x",)))
    assert _positions(Allow()) and not _positions(replace(Allow(), replace_sql="x"))
    assert not _positions(None)


def test_gate_filter_still_filters_notifications() -> None:
    from dbgate.gate.pii_outputs import PiiFilter

    assert callable(getattr(PiiFilter, "notification", None))
