"""StartupGuards: the rule pack's answers at session start, for the relay's seam.

What the relay sends in each upstream StartupMessage (the identity's ceilings) and
what a client's own startup parameters become, per arriving client: its identity,
groups and application_name select the ``session_guards`` entry per setting.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from dbgate.policy.rules import RuleSet, load_rules
from dbgate.policy.startup import StartupGuards
from dbgate.proxy.seams import Arrival

PACK = """
session_guards:
  - name: batch-guards
    match:
      groups: [batch]
    statement_timeout: 30min
  - name: nightly-guards
    match:
      application_names: [nightly-*]
    lock_timeout: 1min
  - name: default-guards
    statement_timeout: 2min
    lock_timeout: 10s
    idle_in_transaction_session_timeout: 1min
rules:
  - name: allow-all
    action: allow
"""


@pytest.fixture(scope="module")
def guards(tmp_path_factory: pytest.TempPathFactory) -> StartupGuards:
    d: Path = tmp_path_factory.mktemp("rules")
    (d / "pack.yaml").write_text(textwrap.dedent(PACK))
    return StartupGuards(load_rules(d))


def arrival(groups: tuple[str, ...] = (), app: str = "") -> Arrival:
    return Arrival("agent", frozenset(groups), app, "127.0.0.1:5000")


@pytest.mark.parametrize(
    ("who", "settings"),
    [
        (
            arrival(),
            {
                "statement_timeout": "120000",
                "lock_timeout": "10000",
                "idle_in_transaction_session_timeout": "60000",
            },
        ),
        (
            arrival(("batch",)),
            {
                "statement_timeout": "1800000",
                "lock_timeout": "10000",
                "idle_in_transaction_session_timeout": "60000",
            },
        ),
        (
            arrival(app="nightly-report"),
            {
                "statement_timeout": "120000",
                "lock_timeout": "60000",
                "idle_in_transaction_session_timeout": "60000",
            },
        ),
    ],
)
def test_each_setting_comes_from_the_first_matching_entry(
    guards: StartupGuards, who: Arrival, settings: dict[str, str]
) -> None:
    assert guards.upstream_settings(who) == settings


@pytest.mark.parametrize(
    ("who", "name", "value", "answer"),
    [
        (arrival(), "statement_timeout", "30s", ("30s", None)),
        (arrival(), "statement_timeout", "1h", ("120000", None)),
        (arrival(), "STATEMENT_TIMEOUT", "0", ("120000", None)),
        (arrival(("batch",)), "statement_timeout", "1h", ("1800000", None)),
        (arrival(), "transaction_timeout", "0", ("0", None)),  # no ceiling in this pack
        (arrival(), "application_name", "x", ("x", None)),
    ],
)
def test_client_startup_values_are_held_to_the_ceiling(
    guards: StartupGuards, who: Arrival, name: str, value: str, answer: tuple[str, None]
) -> None:
    assert guards.startup_setting(who, name, value) == answer


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("lock_timeout", "1m", "lock_timeout has a value PostgreSQL would not accept"),
        ("search_path", '"pg_catalog,x", public, pg_catalog', "puts a schema before pg_catalog"),
        ("search_path", "a,,b", "not a valid list"),
    ],
)
def test_values_the_server_would_read_otherwise_are_refused(
    guards: StartupGuards, name: str, value: str, problem: str
) -> None:
    _, found = guards.startup_setting(arrival(), name, value)
    assert found is not None and problem in found


def test_the_shipped_pack_guards_every_agent() -> None:
    shipped: RuleSet = load_rules()
    assert StartupGuards(shipped).upstream_settings(arrival()) == {
        "statement_timeout": "120000",
        "lock_timeout": "10000",
        "idle_in_transaction_session_timeout": "60000",
        "transaction_timeout": "600000",
    }
