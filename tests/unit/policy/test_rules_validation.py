"""Rule-pack validation: every problem names ``file:line`` and, for typos, the fix.

Each row is a broken rules file and the exact problem lines we expect. Exact
strings on purpose: these messages are the operator's interface.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from dbgate.policy.model import Action, Category, Identity
from dbgate.policy.rules import RULES_DIR_ENV, RulesError, default_rules_dir, load_rules
from dbgate.policy.rules_load import parse_duration

CATS = (
    "read, write, destructive, ddl, privilege, export, dump, admin, escape, opaque, control, lock"
)


def write(tmp_path: Path, text: str, name: str = "pack.yaml") -> Path:
    d = tmp_path / "rules"
    d.mkdir(exist_ok=True)
    (d / name).write_text(textwrap.dedent(text).lstrip("\n"))
    return d


def problems(directory: Path) -> list[str]:
    with pytest.raises(RulesError) as info:
        load_rules(directory)
    base = str(directory) + os.sep
    return [str(p).removeprefix(base) for p in info.value.problems]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            """
            rules:
              - name: a
                match:
                  catgories: [read]
                action: allow
            """,
            [
                "pack.yaml:4: unknown key 'catgories' in 'match'; did you mean 'categories'? "
                "(valid: categories, all_categories, tables, schemas, functions, identities, "
                "groups, application_names, statements)"
            ],
        ),
        (
            """
            rules:
              - name: a
                match: {categories: [reed, export]}
                action: allow
            """,
            [f"pack.yaml:3: unknown category 'reed'; did you mean 'read'? (valid: {CATS})"],
        ),
        (
            """
            rules:
              - name: a
                action: hodl
            """,
            ["pack.yaml:3: unknown action 'hodl'; did you mean 'hold'? (valid: allow, hold, deny)"],
        ),
        (
            """
            rules:
              - name: a
                acton: allow
            """,
            [
                "pack.yaml:2: rule 'a' is missing 'action' (valid: allow, hold, deny)",
                "pack.yaml:3: unknown key 'acton' in a rule; did you mean 'action'? (valid: name, "
                "description, match, action, message, approver_groups, approvals_needed, "
                "wait_seconds, expires_after, max_rows, max_rows_changed, max_rows_per_window, "
                "window, over_limit)",
            ],
        ),
        (
            """
            rulez:
              - name: a
                action: allow
            """,
            [
                "pack.yaml:1: unknown key 'rulez' in the top level; did you mean 'rules'? "
                "(valid: version, rules, session_guards)",
                "pack.yaml:1: missing key 'rules' (a list of rules)",
            ],
        ),
        (
            """
            rules:
              - name: a
                action: hold
                approvals_needed: 0
                expires_after: 10 minutes
            """,
            [
                "pack.yaml:4: 'approvals_needed' must be an integer >= 1, got int '0'",
                "pack.yaml:5: bad duration str '10 minutes' for 'expires_after'; "
                "use e.g. 90s, 15m, 1h, 1h30m, 2d",
            ],
        ),
        (
            """
            rules:
              - name: a
                action: allow
                approver_groups: [dba]
            """,
            [
                "pack.yaml:4: 'approver_groups' only applies to 'action: hold' or to an allow "
                "rule with 'over_limit: hold' (rule 'a' has none)"
            ],
        ),
        (
            """
            rules:
              - name: a
                action: deny
                approver_groups: [dba]
            """,
            ["pack.yaml:4: 'approver_groups' only applies to 'action: hold' (rule 'a' is 'deny')"],
        ),
        # -- run-time limits ------------------------------------------------------------
        (
            """
            rules:
              - name: a
                action: allow
                max_rows: 0
                max_rows_changed: lots
                max_rows_per_window: true
            """,
            [
                "pack.yaml:4: 'max_rows' must be an integer >= 1, got int '0'",
                "pack.yaml:5: 'max_rows_changed' must be an integer >= 1, got str 'lots'",
                "pack.yaml:6: 'max_rows_per_window' must be an integer >= 1, got bool 'true'",
            ],
        ),
        (
            """
            rules:
              - name: a
                action: hold
                max_rows: 10
                over_limit: refuse
            """,
            [
                "pack.yaml:4: 'max_rows' only applies to 'action: allow' (rule 'a' is 'hold'): "
                "a limit lets a statement run up to it",
                "pack.yaml:5: 'over_limit' only applies to 'action: allow' (rule 'a' is "
                "'hold'): a limit lets a statement run up to it",
            ],
        ),
        (
            """
            rules:
              - name: a
                action: allow
                max_rows: 10
                over_limit: stop
            """,
            [
                "pack.yaml:5: unknown over_limit 'stop' (valid: refuse, hold)",
            ],
        ),
        (
            """
            rules:
              - name: a
                action: allow
                over_limit: hold
                approver_groups: [dba]
            """,
            [
                "pack.yaml:4: 'over_limit' needs 'max_rows' or 'max_rows_changed' (what is past "
                "it?)",
            ],
        ),
        (
            """
            rules:
              - name: a
                action: allow
                window: 1h
                max_rows: 5
            """,
            ["pack.yaml:4: 'window' needs 'max_rows_per_window'"],
        ),
        (
            """
            rules:
              - name: a
                action: allow
                max_rows_per_window: 5
                window: soon
            """,
            ["pack.yaml:5: bad duration str 'soon' for 'window'; use e.g. 15m, 1h, 1d"],
        ),
        (
            """
            rules:
              - name: a
                match:
                  tables: ["public.[abc", "a.b.c"]
                  schemas: ["x.y"]
                action: deny
            """,
            [
                "pack.yaml:4: bad glob in 'tables': pattern 'public.[abc' has an unclosed '['",
                "pack.yaml:4: bad glob in 'tables': pattern 'a.b.c' has too many '.' parts "
                "(use 'schema.name' or 'name')",
                "pack.yaml:5: bad glob in 'schemas': pattern 'x.y' may not contain '.' "
                "(schema names only)",
            ],
        ),
        (
            """
            rules:
              - name: a
                match:
                  identities:
                    - ""
                    - 42
                action: deny
            """,
            [
                "pack.yaml:5: bad glob in 'identities': empty pattern",
                "pack.yaml:6: each entry of 'identities' must be a string, got int '42'",
            ],
        ),
        (
            """
            rules:
              - name: a
                action: hold
                approvals_needed: 2024-13-45
                expires_after: yes
            """,
            [
                "pack.yaml:4: 'approvals_needed' must be an integer >= 1, got timestamp '2024-13-45'",
                "pack.yaml:5: bad duration bool 'yes' for 'expires_after'; "
                "use e.g. 90s, 15m, 1h, 1h30m, 2d",
            ],
        ),
        (
            """
            rules:
              - name: a
                match: {categories: []}
                action: deny
            """,
            ["pack.yaml:3: 'categories' is an empty list, which matches nothing; remove the key"],
        ),
        (
            """
            rules:
              - name: same
                action: deny
              - name: same
                action: allow
            """,
            ["pack.yaml:4: duplicate rule name 'same' (first defined at {dir}pack.yaml:2)"],
        ),
        (
            """
            rules:
              - name: a
                action: deny
                action: allow
            """,
            ["pack.yaml:4: duplicate key 'action' in a rule (first on line 3)"],
        ),
        (
            """
            rules:
              - name: default
                action: allow
              - name: "has space"
                action: allow
              - action: allow
            """,
            [
                "pack.yaml:2: rule name 'default' is reserved for the engine; choose another",
                "pack.yaml:4: rule name 'has space' must be letters, digits, '-', '_' or '.'",
                "pack.yaml:6: rule is missing 'name'",
            ],
        ),
        (
            """
            rules:
              - name: a
                action: [allow]
                match: [read]
            """,
            [
                "pack.yaml:3: 'action' must be a string, got a list",
                "pack.yaml:4: 'match' must be a mapping, got a list",
            ],
        ),
        ("", ["pack.yaml:1: file is empty; expected a mapping with a 'rules' list"]),
        (
            "# only a comment\n",
            ["pack.yaml:1: file is empty; expected a mapping with a 'rules' list"],
        ),
        (
            "rules: []\n",
            ["pack.yaml:1: 'rules' is empty; a rules file must define at least one rule"],
        ),
        ("- name: a\n", ["pack.yaml:1: expected a mapping with a 'rules' list, got a list"]),
        (
            "version: 2\nrules:\n  - {name: a, action: allow}\n",
            ["pack.yaml:1: unsupported version int '2'; this dbgate reads version 1"],
        ),
        (
            """
            rules:
              - name: a
                action: allow
               bad: indent
            """,
            ["pack.yaml:4: invalid YAML: expected <block end>, but found '<block mapping start>'"],
        ),
        (
            """
            rules:
              - name: a
                action: deny
                match: {statements: ALTER SYSTEM, all_categories: reed}
            """,
            [f"pack.yaml:4: unknown category 'reed'; did you mean 'read'? (valid: {CATS})"],
        ),
    ],
)
def test_problem_messages(tmp_path: Path, text: str, expected: list[str]) -> None:
    d = write(tmp_path, text)
    want = [e.replace("{dir}", str(d) + os.sep) for e in expected]
    assert problems(d) == want


def test_problems_from_several_files_are_all_reported(tmp_path: Path) -> None:
    d = write(tmp_path, "rules:\n  - {name: a, action: allw}\n", "10-a.yaml")
    write(
        tmp_path, "rules:\n  - {name: a, action: allow}\n  - {name: b, action: deny}\n", "20-b.yml"
    )
    got = problems(d)
    assert got == [
        "10-a.yaml:2: unknown action 'allw'; did you mean 'allow'? (valid: allow, hold, deny)"
    ]
    # with the typo fixed, the duplicate across files is reported with both places
    write(tmp_path, "rules:\n  - {name: a, action: allow}\n", "10-a.yaml")
    assert problems(d) == [
        f"20-b.yml:2: duplicate rule name 'a' (first defined at {d / '10-a.yaml'}:2)"
    ]


def test_error_str_is_one_problem_per_line(tmp_path: Path) -> None:
    d = write(tmp_path, "rules:\n  - {name: a, action: x}\n  - {name: b, action: y}\n")
    with pytest.raises(RulesError) as info:
        load_rules(d)
    assert str(info.value).splitlines() == [str(p) for p in info.value.problems]
    assert len(info.value.problems) == 2
    assert all(p.line == 2 or p.line == 3 for p in info.value.problems)


def test_missing_and_empty_directories(tmp_path: Path) -> None:
    assert problems(tmp_path / "nope") == [f"{tmp_path / 'nope'}: rules directory does not exist"]
    (tmp_path / "empty").mkdir()
    assert problems(tmp_path / "empty") == [
        f"{tmp_path / 'empty'}: no *.yaml rule files in directory"
    ]


def test_single_file_can_be_loaded(tmp_path: Path) -> None:
    d = write(tmp_path, "rules:\n  - {name: a, action: deny}\n")
    rs = load_rules(d / "pack.yaml")
    assert [r.name for r in rs.rules] == ["a"]
    assert rs.rules[0].file == str(d / "pack.yaml") and rs.rules[0].line == 2


def test_valid_rule_fields_round_trip(tmp_path: Path) -> None:
    d = write(
        tmp_path,
        """
        version: 1
        rules:
          - name: hold-x
            description: why
            match:
              categories: export          # a single string is a one-element list
              tables: ["sales.*", orders]
              statements: ["copy", "ALTER   SYSTEM"]
            action: hold
            message: held
            approver_groups: [dba, security]
            approvals_needed: 2
            expires_after: 1h30m
          - name: short
            action: hold
            expires_after: 90
        """,
    )
    rs = load_rules(d)
    r = rs.rule("hold-x")
    assert r.action is Action.HOLD and r.description == "why" and r.message == "held"
    assert r.match.categories == frozenset({Category.EXPORT})
    assert [g.pattern for g in r.match.tables or ()] == ["sales.*", "orders"]
    assert [g.pattern for g in r.match.statements or ()] == ["COPY", "ALTERSYSTEM"]
    assert r.approver_groups == ("dba", "security")
    assert (r.approvals_needed, r.expires_after_seconds) == (2, 5400)
    assert rs.rule("short").expires_after_seconds == 90
    assert (r.file, r.line, r.index) == (str(d / "pack.yaml"), 3, 0)
    assert rs.rule("short").index == 1
    with pytest.raises(KeyError):
        rs.rule("nope")
    _ = Identity  # imported for symmetry with the engine tests


def test_limit_fields_round_trip(tmp_path: Path) -> None:
    d = write(
        tmp_path,
        """
        rules:
          - name: reads
            match: {categories: [read]}
            action: allow
            max_rows: 500
            max_rows_per_window: 9000
            window: 15m
          - name: writes
            match: {categories: [write]}
            action: allow
            max_rows_changed: 20
            over_limit: hold
            approver_groups: [dba]
            approvals_needed: 2
            expires_after: 30m
          - name: default-window
            match: {categories: [control]}
            action: allow
            max_rows_per_window: 10
        """,
    )
    rs = load_rules(d)
    reads, writes = rs.rule("reads"), rs.rule("writes")
    assert (reads.max_rows, reads.max_rows_per_window, reads.window_seconds) == (500, 9000, 900)
    assert reads.over_limit is Action.DENY  # refuse unless the rule says hold
    assert (writes.max_rows_changed, writes.over_limit) == (20, Action.HOLD)
    assert (writes.approver_groups, writes.approvals_needed) == (("dba",), 2)
    assert writes.expires_after_seconds == 1800
    assert rs.rule("default-window").window_seconds == 3600


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("1h", 3600), ("1h30m", 5400), ("2d", 172800), ("1d2h3m4s", 93784)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "1x", "h", "1.5h", "m1", "1h 30m", "-1h"])
def test_bad_durations(text: str) -> None:
    assert parse_duration(text) is None


def test_default_rules_dir_is_repo_rules_and_env_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(RULES_DIR_ENV, raising=False)
    assert default_rules_dir() == Path(__file__).resolve().parents[3] / "rules"
    assert (default_rules_dir() / "default.yaml").is_file()
    d = write(tmp_path, "rules:\n  - {name: only, action: deny}\n")
    monkeypatch.setenv(RULES_DIR_ENV, str(d))
    assert default_rules_dir() == d
    assert [r.name for r in load_rules().rules] == ["only"]


def test_shadowed_rules_are_warned_about(tmp_path: Path) -> None:
    d = write(
        tmp_path,
        """
        rules:
          - name: hold-read
            match: {categories: [read, dump]}
            action: hold
          - name: allow-analytics-reads
            match: {categories: [read], schemas: [analytics]}
            action: allow
          - name: allow-export
            match: {categories: [export]}
            action: allow
          - name: deny-dump
            match: {categories: [dump, read]}
            action: deny
          - name: safety-net
            action: hold
        """,
    )
    rs = load_rules(d)
    base = str(d) + os.sep
    assert [str(w).removeprefix(base) for w in rs.warnings] == [
        "pack.yaml:5: warning: rule 'allow-analytics-reads' can never match; every category "
        f"it covers is decided earlier by 'hold-read' ({base}pack.yaml:2)",
        "pack.yaml:11: warning: rule 'deny-dump' can never match; every category "
        f"it covers is decided earlier by 'hold-read' ({base}pack.yaml:2)",
    ]


def test_shipped_pack_has_no_warnings() -> None:
    assert load_rules(None).warnings == ()
