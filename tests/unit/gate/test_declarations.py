"""The agent's declared purpose and model: startup parameters, SET, leading comment.

Table tests, input -> what dbgate reads (no server): the classifier's view of
``SET dbgate.purpose``, the startup filter's view of ``options``, and how a held
statement's request combines them.
"""

from __future__ import annotations

import pytest

from dbgate.gate.declarations import MAX_CHARS, declared, leading_comment
from dbgate.policy.classify import classify
from dbgate.policy.model import Action, Category, Identity
from dbgate.policy.rules import load_rules
from dbgate.proxy.startup_params import (
    StartupParamError,
    filter_startup_params,
    split_options,
    startup_declarations,
)

AGENT = Identity("agent")


@pytest.mark.parametrize(
    ("sql", "declares"),
    [
        ("SET dbgate.purpose = 'clean up test orders'", (("purpose", "clean up test orders"),)),
        ("SET dbgate.model TO 'claude-x'", (("model", "claude-x"),)),
        ("set DBGATE.PURPOSE = 42", (("purpose", "42"),)),
        ("SET LOCAL dbgate.purpose = 'in this transaction'", (("purpose", "in this transaction"),)),
        ("RESET dbgate.model", (("model", ""),)),
        ("SET dbgate.purpose TO DEFAULT", (("purpose", ""),)),
        (
            "SET dbgate.purpose = 'a'; SELECT 1; SET dbgate.model = 'b'",
            (("purpose", "a"), ("model", "b")),
        ),
        ("SELECT 1", ()),
        ("SET work_mem = '64MB'", ()),
    ],
)
def test_the_classifier_reads_declarations(sql: str, declares: tuple[tuple[str, str], ...]) -> None:
    assert classify(sql).declares == declares


def test_literal_values_are_not_shared_through_the_cache() -> None:
    assert classify("SET dbgate.purpose = 'first'").declares == (("purpose", "first"),)
    assert classify("SET dbgate.purpose = 'second'").declares == (("purpose", "second"),)


@pytest.mark.parametrize(
    "sql",
    ["SET dbgate.purpose = 'x'", "SET dbgate.model = 'x'", "RESET dbgate.purpose"],
)
def test_the_default_pack_allows_declarations(sql: str) -> None:
    c = classify(sql)
    assert c.categories == {Category.CONTROL}
    assert load_rules().decide(AGENT, c).action is Action.ALLOW


@pytest.mark.parametrize(
    "sql",
    [
        "SET dbgate.other = 'x'",  # not a declaration: a custom setting RLS may read
        "SET dbgate.purpose FROM CURRENT",
        "ALTER ROLE agent SET dbgate.purpose = 'x'",
    ],
)
def test_other_custom_settings_stay_held(sql: str) -> None:
    c = classify(sql)
    assert c.declares == ()
    assert load_rules().decide(AGENT, c).action is Action.HOLD


@pytest.mark.parametrize(
    ("sql", "found"),
    [
        (
            "/* dbgate: purpose=clean up test orders model=gpt-5 */ DELETE FROM t",
            {"purpose": "clean up test orders", "model": "gpt-5"},
        ),
        (
            " /*dbgate:purpose=\"a b=c\" model='m 1'*/DELETE FROM t",
            {"purpose": "a b=c", "model": "m 1"},
        ),
        ("/* DBGATE: ticket=7 purpose=x */ TRUNCATE t", {"purpose": "x"}),
        ("DELETE FROM t /* dbgate: purpose=x */", {}),
        ("/* another */ /* dbgate: purpose=x */ DELETE FROM t", {}),
        ("-- dbgate: purpose=x\nDELETE FROM t", {}),
        ("DELETE FROM t", {}),
    ],
)
def test_leading_comment(sql: str, found: dict[str, str]) -> None:
    assert leading_comment(sql) == found


def test_the_request_takes_the_session_then_the_statement_then_its_comment() -> None:
    session = {"purpose": "from startup", "model": "m-startup"}
    assert declared(session, (), "DELETE FROM t") == session
    assert declared(session, (("purpose", "from SET"),), "DELETE FROM t") == {
        "purpose": "from SET",
        "model": "m-startup",
    }
    assert declared(session, (("purpose", "from SET"),), "/* dbgate: model=m2 */ DELETE") == {
        "purpose": "from SET",
        "model": "m2",
    }
    long = declared({"purpose": "x" * (MAX_CHARS + 50) + "\n\tend"}, (), "")
    assert len(long["purpose"]) == MAX_CHARS


@pytest.mark.parametrize(
    ("options", "args"),
    [
        (r"-c dbgate.purpose=clean\ up", ["-c", "dbgate.purpose=clean up"]),
        ("  -cdbgate.model=x   --dbgate.purpose=y ", ["-cdbgate.model=x", "--dbgate.purpose=y"]),
        (r"-c dbgate.purpose=a\\b", ["-c", r"dbgate.purpose=a\b"]),
        ("", []),
    ],
)
def test_options_split_as_postgresql_splits_them(options: str, args: list[str]) -> None:
    assert split_options(options) == args


def test_declarations_pass_the_startup_filter_as_their_own_parameters() -> None:
    params = {
        "user": "agent",
        "database": "d",
        "options": r"-c dbgate.purpose=clean\ up --DBGATE.MODEL=m1",
        "application_name": "app",
    }
    out = filter_startup_params(params)
    assert out == {"application_name": "app", "dbgate.purpose": "clean up", "dbgate.model": "m1"}
    assert startup_declarations(out) == {"purpose": "clean up", "model": "m1"}
    # A parameter of its own wins over options, as PostgreSQL applies options first.
    both = filter_startup_params({"options": "-c dbgate.model=a", "dbgate.model": "b"})
    assert startup_declarations(both) == {"model": "b"}


@pytest.mark.parametrize(
    "options",
    [
        "-c role=postgres",
        "-c dbgate.purpose=x -c search_path=evil,pg_catalog",
        "-c dbgate.purpose",
        "dbgate.purpose=x",
        "-c",
        "-c dbgate.other=x",
        "--dbgate-purpose=x",  # PostgreSQL reads that name as dbgate_purpose
    ],
)
def test_options_with_anything_else_are_refused(options: str) -> None:
    with pytest.raises(StartupParamError, match="'options' parameter is not allowed"):
        filter_startup_params({"options": options})
