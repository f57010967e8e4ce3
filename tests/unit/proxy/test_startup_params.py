"""The startup filter's own checks and its ``check`` hook, input -> what is forwarded.

A client's ``search_path`` is split exactly as the server splits it
(``SplitIdentifierString``, shared with the policy through :mod:`dbgate.identifiers`);
a naive split on commas reads ``'"pg_catalog,x", public, pg_catalog'`` as a path that
starts with pg_catalog, when the server searches ``public`` before the real one.
"""

from __future__ import annotations

import pytest

from dbgate.proxy.startup_params import (
    StartupParamError,
    filter_startup_params,
    search_path_problem,
)

SHADOWS = "puts a schema before pg_catalog"
INVALID = "not a valid list of schema names"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("public", None),
        ('"$user", public', None),
        ("pg_catalog, public", None),
        ("pg_temp, pg_catalog, public", None),  # pg_temp is never searched for functions
        ("", None),
        ("  ", None),
        ('"pg_catalog,x", public, pg_catalog', SHADOWS),  # one schema "pg_catalog,x"
        ("public, pg_catalog", SHADOWS),
        ("public, PG_CATALOG", SHADOWS),  # unquoted names are lower-cased
        ('"public",pg_catalog', SHADOWS),
        ('"PG_CATALOG", public', None),  # quoted: a schema named PG_CATALOG, not pg_catalog
        ('"pg_catalog", public', None),
        ("a,,b", INVALID),
        ("public pg_catalog", INVALID),  # white space is not a separator
        ('"unterminated', INVALID),
        ('"a"b', INVALID),
        (",public", INVALID),
    ],
)
def test_search_path_is_split_as_the_server_splits_it(value: str, problem: str | None) -> None:
    found = search_path_problem(value)
    if problem is None:
        assert found is None
        assert filter_startup_params({"search_path": value}) == {"search_path": value}
    else:
        assert found is not None and problem in found
        with pytest.raises(StartupParamError, match=problem):
            filter_startup_params({"search_path": value})


def test_the_check_sees_each_allowed_setting_and_may_replace_its_value() -> None:
    seen: list[tuple[str, str]] = []

    def check(name: str, value: str) -> tuple[str, str | None]:
        seen.append((name, value))
        return ("120000", None) if name.lower() == "statement_timeout" else (value, None)

    out = filter_startup_params(
        {"user": "u", "database": "d", "Statement_Timeout": "0", "application_name": "app"},
        check,
    )
    assert out == {"Statement_Timeout": "120000", "application_name": "app"}
    assert seen == [("Statement_Timeout", "0"), ("application_name", "app")]


def test_a_problem_from_the_check_refuses_the_connection() -> None:
    def check(name: str, value: str) -> tuple[str, str | None]:
        return value, f"dbgate: {name} has a value PostgreSQL would not accept"

    with pytest.raises(StartupParamError, match="lock_timeout has a value"):
        filter_startup_params({"lock_timeout": "1m"}, check)


def test_the_check_never_sees_what_is_refused_before_it() -> None:
    def check(name: str, value: str) -> tuple[str, str | None]:
        raise AssertionError(f"asked about {name}")

    with pytest.raises(StartupParamError, match="'role' is not allowed"):
        filter_startup_params({"role": "postgres"}, check)
    with pytest.raises(StartupParamError, match=SHADOWS):
        filter_startup_params({"search_path": "evil, pg_catalog"}, check)


@pytest.mark.parametrize(
    "name",
    [
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "transaction_timeout",
    ],
)
def test_every_session_guard_may_be_sent_at_startup(name: str) -> None:
    assert filter_startup_params({name: "5s"}) == {name: "5s"}
