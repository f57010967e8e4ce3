"""Session guards: the timeouts dbgate sets, what statements may do to them, startup values.

The classifier reports each change to a guard with its value read exactly as the
server reads it (checked against a real server in
tests/integration/test_policy_guards.py); the rules compare it with the identity's
ceiling. The shipped pack's ceilings: statement_timeout 2min, lock_timeout 10s,
idle_in_transaction_session_timeout 1min, transaction_timeout 10min.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from dbgate.policy.classify import classify
from dbgate.policy.model import Action, GuardSetting, Identity
from dbgate.policy.rules import RulesError, RuleSet, load_rules
from dbgate.policy.startup import startup_setting

AGENT = Identity("agent")
MS = {"s": 1000, "min": 60_000, "h": 3_600_000}


@pytest.fixture(scope="module")
def pack() -> RuleSet:
    return load_rules()


@pytest.mark.parametrize(
    ("sql", "settings"),
    [
        ("SET statement_timeout = 0", [GuardSetting("statement_timeout", 0)]),
        ("SET statement_timeout = '5s'", [GuardSetting("statement_timeout", 5000)]),
        ("SET statement_timeout TO 5000", [GuardSetting("statement_timeout", 5000)]),
        ("SET statement_timeout = 1.5", [GuardSetting("statement_timeout", 2)]),
        ("SET statement_timeout = '0x10'", [GuardSetting("statement_timeout", 16)]),
        ("SET statement_timeout = '1m'", [GuardSetting("statement_timeout", None)]),
        ("SET LOCAL lock_timeout = '1min'", [GuardSetting("lock_timeout", 60000, local=True)]),
        ("SET SESSION transaction_timeout = '2h'", [GuardSetting("transaction_timeout", 7200000)]),
        ("RESET statement_timeout", [GuardSetting("statement_timeout", None, reset=True)]),
        (
            "SET idle_in_transaction_session_timeout TO DEFAULT",
            [GuardSetting("idle_in_transaction_session_timeout", None, reset=True)],
        ),
        (
            "SELECT set_config('statement_timeout', '0', false)",
            [GuardSetting("statement_timeout", 0)],
        ),
        (
            "SELECT set_config('lock_timeout', '20s', true)",
            [GuardSetting("lock_timeout", 20000, local=True)],
        ),
        (
            "SELECT set_config('statement_timeout', current_setting('work_mem'), false)",
            [GuardSetting("statement_timeout", None)],
        ),
        ("SET work_mem = '64MB'", []),
        ("ALTER ROLE agent SET statement_timeout = 0", []),  # not this session: privilege
    ],
)
def test_guard_changes_are_reported_as_the_server_reads_them(
    sql: str, settings: list[GuardSetting]
) -> None:
    assert list(classify(sql).statements[0].guard_settings) == settings


def test_a_guard_value_given_at_bind_is_judged_at_bind() -> None:
    sql = "SELECT set_config('statement_timeout', $1, false)"
    c = classify(sql)
    assert c.needs_bind
    from dbgate.policy.classify import classify_bind

    bound = classify_bind(c, sql, ["0"])
    assert bound.statements[0].guard_settings == (GuardSetting("statement_timeout", 0),)


@pytest.mark.parametrize(
    ("sql", "action", "clamps", "codes"),
    [
        ("SET statement_timeout = '30s'", Action.ALLOW, (), []),
        ("SET statement_timeout = '2min'", Action.ALLOW, (), []),
        ("SET statement_timeout = '121s'", Action.HOLD, (), ["guard-above-ceiling"]),
        ("SET statement_timeout = 0", Action.ALLOW, (("statement_timeout", 120000),), []),
        ("SET LOCAL lock_timeout = 0", Action.ALLOW, (("lock_timeout", 10000),), []),
        ("SET lock_timeout = '1h'", Action.HOLD, (), ["guard-above-ceiling"]),
        (
            "SET idle_in_transaction_session_timeout = '1d'",
            Action.HOLD,
            (),
            ["guard-above-ceiling"],
        ),
        ("SET transaction_timeout = '5min'", Action.ALLOW, (), []),
        ("RESET statement_timeout", Action.ALLOW, (), []),
        ("RESET ALL", Action.ALLOW, (), []),
        ("DISCARD ALL", Action.ALLOW, (), []),
        ("SET statement_timeout = 'soon'", Action.HOLD, (), ["guard-value-unknown"]),
        (
            "SELECT set_config('statement_timeout', '1h', false)",
            Action.HOLD,
            (),
            ["guard-above-ceiling"],
        ),
        (
            "SELECT set_config('statement_timeout', current_setting('work_mem'), false)",
            Action.HOLD,
            (),
            ["guard-value-unknown", "setting-carries-data"],
        ),
        ("SELECT pg_sleep(10)", Action.ALLOW, (), []),
        ("SELECT pg_sleep(121)", Action.DENY, (), ["sleep-over-ceiling"]),
        ("SELECT pg_sleep_for('5 minutes')", Action.DENY, (), ["sleep-over-ceiling"]),
        ("SELECT pg_sleep_for('00:01:00')", Action.ALLOW, (), []),
        ("SELECT pg_sleep_until(now() + interval '1 day')", Action.ALLOW, (), []),
        ("SELECT pg_sleep($1)", Action.ALLOW, (), []),
        (
            "SET statement_timeout = 0; SET lock_timeout = '1h'",
            Action.HOLD,
            (),
            ["guard-above-ceiling"],
        ),
    ],
)
def test_shipped_pack_ceilings(
    pack: RuleSet, sql: str, action: Action, clamps: tuple[Any, ...], codes: list[str]
) -> None:
    decision = pack.decide(AGENT, classify(sql))
    assert decision.action is action, decision.reasons
    assert decision.guard_clamps == clamps
    if action is not Action.ALLOW:
        assert sorted(r.code for r in decision.reasons) == sorted(codes)
        assert decision.rule in ("default-guards", "hold-export")


def test_an_over_ceiling_sleep_says_why(pack: RuleSet) -> None:
    d = pack.decide(AGENT, classify("SELECT pg_sleep(600)"))
    assert (d.action, d.rule) == (Action.DENY, "default-guards")
    assert d.reasons[0].message == (
        "sleeps for 10min, longer than this identity's statement_timeout (2min), which would "
        "cancel it"
    )


def test_a_raised_guard_is_held_for_the_guards_approvers(pack: RuleSet) -> None:
    d = pack.decide(AGENT, classify("SET statement_timeout = '1h'"))
    assert (d.action, d.rule, d.approver_groups, d.expires_after_seconds) == (
        Action.HOLD,
        "default-guards",
        ("dba",),
        3600,
    )
    assert d.reasons[0].message == (
        "raises statement_timeout to 1h, above this identity's ceiling of 2min"
    )


def test_shipped_pack_settings(pack: RuleSet) -> None:
    assert pack.session_guards(AGENT).settings() == {
        "statement_timeout": "120000",
        "lock_timeout": "10000",
        "idle_in_transaction_session_timeout": "60000",
        "transaction_timeout": "600000",
    }


def _pack(tmp_path: Path, text: str) -> RuleSet:
    d = tmp_path / "rules"
    d.mkdir(exist_ok=True)
    (d / "pack.yaml").write_text(textwrap.dedent(text).lstrip("\n"))
    return load_rules(d)


def test_ceilings_are_first_match_per_setting_and_per_identity(tmp_path: Path) -> None:
    pack = _pack(
        tmp_path,
        """
        session_guards:
          - name: etl
            match: {identities: [etl-*]}
            statement_timeout: 1h
            set_to_zero: hold
          - name: everyone
            statement_timeout: 30s
            lock_timeout: 5s
        rules:
          - name: all
            action: allow
        """,
    )
    etl, agent = Identity("etl-nightly"), Identity("agent")
    assert pack.session_guards(etl).settings() == {
        "statement_timeout": "3600000",
        "lock_timeout": "5000",
    }
    assert pack.session_guards(agent).settings() == {
        "statement_timeout": "30000",
        "lock_timeout": "5000",
    }
    assert pack.decide(etl, classify("SET statement_timeout = '45min'")).action is Action.ALLOW
    assert pack.decide(agent, classify("SET statement_timeout = '45min'")).action is Action.HOLD
    held = pack.decide(etl, classify("SET statement_timeout = 0"))
    assert (held.action, held.rule, [r.code for r in held.reasons]) == (
        Action.HOLD,
        "etl",
        ["guard-off"],
    )
    clamped = pack.decide(etl, classify("SET lock_timeout = 0"))  # from 'everyone': clamp
    assert clamped.guard_clamps == (("lock_timeout", 5000),)
    # no ceiling for a setting: any value runs
    free = pack.decide(agent, classify("SET transaction_timeout = 0"))
    assert (free.action, free.guard_clamps) == (Action.ALLOW, ())


def test_a_guards_wait_is_its_own_zero_included(tmp_path: Path) -> None:
    """``wait_seconds: 0`` (approve, then retry) is a wait like any other, not "unset"."""
    pack = _pack(
        tmp_path,
        """
        session_guards:
          - name: retry
            match: {application_names: [retry]}
            statement_timeout: 30s
            wait_seconds: 0
          - name: wait
            statement_timeout: 30s
            wait_seconds: 90
        rules:
          - name: all
            action: allow
        """,
    )
    raise_it = classify("SET statement_timeout = '1h'")
    assert pack.decide(Identity("agent", application_name="retry"), raise_it).wait_seconds == 0
    assert pack.decide(AGENT, raise_it).wait_seconds == 90


def test_a_pack_without_guards_sets_none(tmp_path: Path) -> None:
    pack = _pack(tmp_path, "rules:\n  - name: all\n    action: allow\n")
    assert pack.session_guards(AGENT).settings() == {}
    assert pack.decide(AGENT, classify("SET statement_timeout = 0")).guard_clamps == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            """
            session_guards:
              - name: g
                statement_timeout: 5
                lock_timeout: 0s
            rules: [{name: r, action: allow}]
            """,
            [
                "pack.yaml:3: 'statement_timeout' must be a time with a unit, as PostgreSQL "
                "writes it (e.g. 500ms, 30s, 5min, 1h), above 0; got int '5'",
                "pack.yaml:4: 'lock_timeout' must be a time with a unit, as PostgreSQL writes "
                "it (e.g. 500ms, 30s, 5min, 1h), above 0; got str '0s'",
            ],
        ),
        (
            """
            session_guards:
              - name: g
                statement_timeout: 5m
            rules: [{name: r, action: allow}]
            """,
            [
                "pack.yaml:3: 'statement_timeout' must be a time with a unit, as PostgreSQL "
                "writes it (e.g. 500ms, 30s, 5min, 1h), above 0; got str '5m'",
            ],
        ),
        (
            """
            session_guards:
              - name: g
                match: {categories: [read]}
                statment_timeout: 5s
                set_to_zero: allow
            rules: [{name: r, action: allow}]
            """,
            [
                "pack.yaml:3: a session guard matches only who is asking: identities, groups, "
                "application_names",
                "pack.yaml:4: unknown key 'statment_timeout' in a session guard; did you mean "
                "'statement_timeout'? (valid: name, description, match, statement_timeout, "
                "lock_timeout, idle_in_transaction_session_timeout, transaction_timeout, "
                "set_to_zero, approver_groups, approvals_needed, wait_seconds, expires_after)",
                "pack.yaml:5: unknown set_to_zero 'allow' (valid: clamp, hold)",
            ],
        ),
        (
            """
            session_guards:
              - name: g
                description: nothing else
            rules: [{name: r, action: allow}]
            """,
            [
                "pack.yaml:2: session guard sets no ceiling; give at least one of "
                "statement_timeout, lock_timeout, idle_in_transaction_session_timeout, "
                "transaction_timeout",
            ],
        ),
        (
            """
            session_guards: {name: g}
            rules: [{name: r, action: allow}]
            """,
            ["pack.yaml:1: 'session_guards' must be a non-empty list of entries, got a mapping"],
        ),
    ],
)
def test_guard_entries_are_validated_with_file_and_line(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    d = tmp_path / "rules"
    d.mkdir()
    (d / "pack.yaml").write_text(textwrap.dedent(text).lstrip("\n"))
    with pytest.raises(RulesError) as info:
        load_rules(d)
    got = sorted(str(p).removeprefix(str(d) + "/") for p in info.value.problems)
    assert got == sorted(expected)


@pytest.mark.parametrize(
    ("name", "value", "forwarded", "refused"),
    [
        ("search_path", "public", "public", False),
        ("search_path", '"$user", public', '"$user", public', False),
        ("search_path", "pg_catalog, public", "pg_catalog, public", False),
        ("search_path", '"pg_catalog,x", public, pg_catalog', None, True),
        ("search_path", "public, pg_catalog", None, True),
        ("search_path", "pg_temp, pg_catalog", "pg_temp, pg_catalog", False),
        ("search_path", 'public, "PG_CATALOG"', 'public, "PG_CATALOG"', False),
        ("search_path", "public,, pg_catalog", None, True),  # the server refuses the list
        ("search_path", "a b, pg_catalog", None, True),
        ("statement_timeout", "30s", "30s", False),
        ("statement_timeout", "0", "120000", False),  # no limit: the ceiling instead
        ("statement_timeout", "1h", "120000", False),
        ("Lock_Timeout", "5000", "5000", False),
        ("statement_timeout", "1m", None, True),  # the server would refuse it
        ("application_name", "psql", "psql", False),
    ],
)
def test_startup_settings_are_read_as_the_server_reads_them(
    pack: RuleSet, name: str, value: str, forwarded: str | None, refused: bool
) -> None:
    verdict = startup_setting(name, value, pack.session_guards(AGENT))
    assert (verdict.problem is not None) is refused, verdict.problem
    if not refused:
        assert verdict.value == forwarded


def test_guard_and_rule_names_share_one_namespace(tmp_path: Path) -> None:
    """Decision.rule names either; one name must mean one thing."""
    d = tmp_path / "rules"
    d.mkdir()
    (d / "pack.yaml").write_text(
        "session_guards:\n  - name: r\n    statement_timeout: 5s\n"
        "rules:\n  - name: r\n    action: allow\n"
    )
    with pytest.raises(RulesError) as info:
        load_rules(d)
    (problem,) = info.value.problems
    assert (problem.line, problem.message.split(" (")[0]) == (5, "duplicate rule name 'r'")
