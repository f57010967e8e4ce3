"""``wait_seconds``: how long a held statement waits, per rule, checked at file:line.

0 means approve-then-retry (the agent is answered at once); ``expires_after`` is the
older spelling of the same thing and may not be combined with it.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from dbgate.policy.classify import classify
from dbgate.policy.model import Action, Identity
from dbgate.policy.rules import RulesError, load_rules

AGENT = Identity("agent")


def pack(tmp_path: Path, text: str) -> Path:
    d = tmp_path / "rules"
    d.mkdir(exist_ok=True)
    (d / "pack.yaml").write_text(textwrap.dedent(text).lstrip("\n"))
    return d


def problems(d: Path) -> list[str]:
    with pytest.raises(RulesError) as info:
        load_rules(d)
    return [str(p).replace(str(d) + "/", "") for p in info.value.problems]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("0", 0.0), ("90", 90.0), ("2.5", 2.5), ("15m", 900.0), ("1h30m", 5400.0), ("'7d'", 604800.0)],
)
def test_wait_seconds_values(tmp_path: Path, value: str, seconds: float) -> None:
    d = pack(
        tmp_path,
        f"""
        rules:
          - name: h
            action: hold
            wait_seconds: {value}
        """,
    )
    rule = load_rules(d).rule("h")
    assert rule.wait_seconds == seconds
    assert rule.expires_after_seconds == seconds  # the older name reads the same value


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("-1", "int '-1'"),
        ("soon", "str 'soon'"),
        ("yes", "bool 'yes'"),
        (".inf", "float '.inf'"),
        ("8d", "str '8d'"),
        ("[1]", "a list"),
        ("", "nothing (null)"),
    ],
)
def test_bad_wait_seconds_name_the_line(tmp_path: Path, value: str, shown: str) -> None:
    d = pack(
        tmp_path,
        f"""
        rules:
          - name: h
            action: hold
            wait_seconds: {value}
        """,
    )
    assert problems(d) == [
        f"pack.yaml:4: bad 'wait_seconds' {shown}: a number of seconds from 0 to 604800 "
        "(0: answer at once and let the agent retry once approved) or a duration such as "
        "90s, 15m, 1h"
    ]


def test_wait_seconds_and_expires_after_together_are_refused(tmp_path: Path) -> None:
    d = pack(
        tmp_path,
        """
        rules:
          - name: h
            action: hold
            wait_seconds: 10
            expires_after: 1h
        """,
    )
    assert problems(d) == [
        "pack.yaml:5: 'expires_after' and 'wait_seconds' say the same thing; keep only "
        "'wait_seconds'"
    ]


def test_wait_seconds_only_applies_to_hold(tmp_path: Path) -> None:
    d = pack(
        tmp_path,
        """
        rules:
          - name: a
            action: allow
            wait_seconds: 0
        """,
    )
    assert problems(d) == [
        "pack.yaml:4: 'wait_seconds' only applies to 'action: hold' or to an allow rule "
        "with 'over_limit: hold' (rule 'a' has none)"
    ]


def test_the_decision_takes_the_shortest_wait_and_zero_wins(tmp_path: Path) -> None:
    d = pack(
        tmp_path,
        """
        rules:
          - name: retry-orders
            match: {categories: destructive, tables: orders}
            action: hold
            wait_seconds: 0
          - name: slow-ddl
            match: {categories: ddl}
            action: hold
            wait_seconds: 1h
          - name: plain
            action: hold
        """,
    )
    rules = load_rules(d)
    both = rules.decide(AGENT, classify("TRUNCATE orders; CREATE TABLE x (a int)"))
    assert (both.action, both.wait_seconds) == (Action.HOLD, 0.0)
    ddl = rules.decide(AGENT, classify("CREATE TABLE y (a int)"))
    assert ddl.wait_seconds == 3600.0
    plain = rules.decide(AGENT, classify("SELECT 1"))
    assert (plain.action, plain.rule, plain.wait_seconds) == (Action.HOLD, "plain", None)


def test_the_default_pack_says_how_long_it_waits() -> None:
    decision = load_rules().decide(AGENT, classify("DELETE FROM orders"))
    assert decision.action is Action.HOLD and decision.wait_seconds == 3600.0
