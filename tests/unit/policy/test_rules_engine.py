"""The rules engine, decided against hand-built classifications (no classifier).

Each table row is: a rule pack (YAML), an identity, a classification, and the
expected action and deciding rule. Reading down a table should explain the
semantics in docs/rules.md.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from dbgate.policy.model import (
    MAX_CACHED_SQL,
    Action,
    Category,
    Classification,
    Decision,
    Identity,
    Reason,
    StatementClass,
)
from dbgate.policy.rules import RuleSet, decide_bind, load_rules

C = Category


def stmt(
    *cats: Category,
    tables: tuple[str, ...] = (),
    functions: tuple[str, ...] = (),
    command: str = "SELECT",
    needs_bind: bool = False,
) -> StatementClass:
    return StatementClass(
        categories=frozenset(cats),
        reasons=tuple(Reason(c, f"test-{c.value}", f"test reason {c.value}") for c in cats),
        tables=frozenset(tables),
        functions=frozenset(functions),
        command=command,
        needs_bind=needs_bind,
    )


def cls(*stmts: StatementClass, parse_error: str | None = None) -> Classification:
    return Classification(statements=stmts, parse_error=parse_error)


def pack(tmp_path: Path, text: str, name: str = "rules.yaml") -> RuleSet:
    d = tmp_path / "rules"
    d.mkdir(exist_ok=True)
    (d / name).write_text(textwrap.dedent(text))
    return load_rules(d)


AGENT = Identity("agent")

BASIC = """
    rules:
      - name: deny-admin
        match: {categories: [admin]}
        action: deny
        message: no admin
      - name: hold-export
        match: {categories: [export]}
        action: hold
        approver_groups: [dba]
        approvals_needed: 1
        expires_after: 1h
      - name: hold-destructive
        match: {categories: [destructive]}
        action: hold
        approver_groups: [security]
        approvals_needed: 2
        expires_after: 15m
      - name: allow-read
        match: {categories: [read]}
        action: allow
      - name: allow-write
        match: {categories: [write]}
        action: allow
"""


@pytest.mark.parametrize(
    ("classification", "action", "rule"),
    [
        # one statement, one category
        (cls(stmt(C.READ)), Action.ALLOW, "allow-read"),
        (cls(stmt(C.WRITE)), Action.ALLOW, "allow-write"),
        (cls(stmt(C.EXPORT)), Action.HOLD, "hold-export"),
        (cls(stmt(C.ADMIN)), Action.DENY, "deny-admin"),
        # most restrictive unit wins within a statement
        (cls(stmt(C.READ, C.EXPORT)), Action.HOLD, "hold-export"),
        (cls(stmt(C.READ, C.EXPORT, C.ADMIN)), Action.DENY, "deny-admin"),
        # ... and across statements of a multi-statement string
        (cls(stmt(C.READ), stmt(C.EXPORT)), Action.HOLD, "hold-export"),
        (cls(stmt(C.READ), stmt(C.WRITE), stmt(C.ADMIN)), Action.DENY, "deny-admin"),
        # no rule for ddl -> the built-in default: hold
        (cls(stmt(C.DDL)), Action.HOLD, "default"),
        (cls(stmt(C.READ, C.DDL)), Action.HOLD, "default"),
        # a statement without categories is treated as opaque -> default hold, never allow
        (cls(stmt()), Action.HOLD, "default"),
        # parse errors are denied whatever the rules say
        (cls(parse_error='syntax error at or near "SELEC"'), Action.DENY, "parse-error"),
        (cls(stmt(C.READ), parse_error="boom"), Action.DENY, "parse-error"),
        # empty query string (only comments): nothing runs
        (cls(), Action.ALLOW, "empty-query"),
    ],
)
def test_basic_pack(
    tmp_path: Path, classification: Classification, action: Action, rule: str
) -> None:
    d = pack(tmp_path, BASIC).decide(AGENT, classification)
    assert (d.action, d.rule) == (action, rule)
    assert d.classification is classification


def test_parse_error_message_carries_parser_text(tmp_path: Path) -> None:
    d = pack(tmp_path, BASIC).decide(AGENT, cls(parse_error='syntax error at or near "SELEC"'))
    assert 'syntax error at or near "SELEC"' in d.message


def test_no_rule_can_allow_a_parse_error(tmp_path: Path) -> None:
    rs = pack(tmp_path, "rules:\n  - name: allow-all\n    action: allow\n")
    assert rs.decide(AGENT, cls(parse_error="x")).action is Action.DENY
    assert rs.decide(AGENT, cls(stmt(C.ADMIN))).action is Action.ALLOW  # explicit operator choice


def test_hold_combination_takes_strictest_terms(tmp_path: Path) -> None:
    """Two holding rules: first in pack order names the rule/approvers; max approvals, min expiry."""
    d = pack(tmp_path, BASIC).decide(AGENT, cls(stmt(C.DESTRUCTIVE), stmt(C.EXPORT)))
    assert d.action is Action.HOLD
    assert d.rule == "hold-export"
    assert d.approver_groups == ("dba",)
    assert d.approvals_needed == 2
    assert d.expires_after_seconds == 15 * 60
    assert "hold-export" in d.message and "hold-destructive" in d.message


def test_deny_message_is_rule_message(tmp_path: Path) -> None:
    d = pack(tmp_path, BASIC).decide(AGENT, cls(stmt(C.READ, C.ADMIN)))
    assert d.message == "no admin"


def test_default_message_names_rule_and_categories(tmp_path: Path) -> None:
    d = pack(tmp_path, BASIC).decide(AGENT, cls(stmt(C.EXPORT)))
    assert d.message == "rule 'hold-export' holds export statements"


ORDERED = """
    rules:
      - name: ops-bot-may-export
        match: {identities: [ops-bot], categories: [export]}
        action: allow
      - name: hold-export
        match: {categories: [export]}
        action: hold
      - name: allow-read
        match: {categories: [read]}
        action: allow
"""


@pytest.mark.parametrize(
    ("identity", "action", "rule"),
    [
        (Identity("ops-bot"), Action.ALLOW, "ops-bot-may-export"),
        (Identity("OPS-BOT"), Action.HOLD, "hold-export"),  # allow globs are case-sensitive
        (Identity("ops-bot-2"), Action.HOLD, "hold-export"),
        (Identity("agent"), Action.HOLD, "hold-export"),
    ],
)
def test_first_matching_rule_wins(
    tmp_path: Path, identity: Identity, action: Action, rule: str
) -> None:
    d = pack(tmp_path, ORDERED).decide(identity, cls(stmt(C.READ, C.EXPORT)))
    assert (d.action, d.rule) == (action, rule)


def test_files_are_read_in_lexical_order(tmp_path: Path) -> None:
    d = tmp_path / "rules"
    d.mkdir()
    (d / "20-base.yaml").write_text(
        "rules:\n  - name: hold-read\n    match: {categories: [read]}\n    action: hold\n"
    )
    (d / "10-team.yaml").write_text(
        "rules:\n  - name: allow-read\n    match: {categories: [read]}\n    action: allow\n"
    )
    (d / "README.md").write_text("not a rules file")
    rs = load_rules(d)
    assert [r.name for r in rs.rules] == ["allow-read", "hold-read"]
    assert [p.name for p in rs.files] == ["10-team.yaml", "20-base.yaml"]
    assert rs.decide(AGENT, cls(stmt(C.READ))).rule == "allow-read"


IDENTITY_PACK = """
    rules:
      - name: deny-untrusted-apps
        match: {application_names: ["psql*"], categories: [write]}
        action: deny
      - name: analysts-read
        match: {groups: [analysts], categories: [read]}
        action: allow
      - name: bots-write
        match: {identities: ["bot-*"], categories: [write]}
        action: allow
"""


@pytest.mark.parametrize(
    ("identity", "cats", "action", "rule"),
    [
        (Identity("x", groups=frozenset({"analysts"})), (C.READ,), Action.ALLOW, "analysts-read"),
        (Identity("x", groups=frozenset({"other"})), (C.READ,), Action.HOLD, "default"),
        (Identity("x"), (C.READ,), Action.HOLD, "default"),
        (Identity("bot-7"), (C.WRITE,), Action.ALLOW, "bots-write"),
        (
            Identity("bot-7", application_name="psql"),
            (C.WRITE,),
            Action.DENY,
            "deny-untrusted-apps",
        ),
        # deny globs are case-insensitive: restrictive rules match generously
        (
            Identity("bot-7", application_name="PSQL 16"),
            (C.WRITE,),
            Action.DENY,
            "deny-untrusted-apps",
        ),
        (Identity("bot-7", application_name="myapp"), (C.WRITE,), Action.ALLOW, "bots-write"),
        (Identity("robot"), (C.WRITE,), Action.HOLD, "default"),
    ],
)
def test_identity_groups_application_names(
    tmp_path: Path, identity: Identity, cats: tuple[Category, ...], action: Action, rule: str
) -> None:
    d = pack(tmp_path, IDENTITY_PACK).decide(identity, cls(stmt(*cats)))
    assert (d.action, d.rule) == (action, rule)


TABLE_PACK = """
    rules:
      - name: deny-secrets
        match: {tables: ["vault.*", "api_keys"]}
        action: deny
      - name: hold-customers
        match: {tables: [public.customers], categories: [read]}
        action: hold
      - name: allow-analytics
        match: {schemas: [analytics], categories: [read]}
        action: allow
      - name: allow-public
        match: {tables: ["public.*"], categories: [read]}
        action: allow
      - name: allow-catalog
        match: {schemas: [pg_catalog], categories: [read]}
        action: allow
      - name: allow-public-or-catalog
        match: {schemas: [public, pg_catalog], categories: [read]}
        action: allow
"""


@pytest.mark.parametrize(
    ("tables", "action", "rule"),
    [
        (("vault.tokens",), Action.DENY, "deny-secrets"),
        (("VAULT.tokens",), Action.DENY, "deny-secrets"),  # deny matches case-insensitively
        # a bare pattern matches the name in every schema
        (("api_keys",), Action.DENY, "deny-secrets"),
        (("billing.api_keys",), Action.DENY, "deny-secrets"),
        # unqualified names are public.<name>
        (("customers",), Action.HOLD, "hold-customers"),
        (("public.customers",), Action.HOLD, "hold-customers"),
        (("crm.customers",), Action.HOLD, "default"),
        (("orders",), Action.ALLOW, "allow-public"),
        (("analytics.daily",), Action.ALLOW, "allow-analytics"),
        # restrictive rules: any table suffices
        (("orders", "vault.tokens"), Action.DENY, "deny-secrets"),
        (("orders", "customers"), Action.HOLD, "hold-customers"),
        # allow rules must cover every table: analytics + crm is not all-analytics
        (("analytics.daily", "crm.leads"), Action.HOLD, "default"),
        (("analytics.daily", "orders"), Action.HOLD, "default"),
        (("orders", "public.payments"), Action.ALLOW, "allow-public"),
        # allow rules are case-sensitive
        (("Orders",), Action.ALLOW, "allow-public"),  # bare name is still public.Orders
        (("PUBLIC.orders",), Action.HOLD, "default"),
        # an allow with tables never covers a statement that touches no table
        ((), Action.HOLD, "default"),
        # unqualified catalog relations resolve to pg_catalog (searched first)
        (("pg_class",), Action.ALLOW, "allow-catalog"),
        (("pg_catalog.pg_class", "pg_namespace"), Action.ALLOW, "allow-catalog"),
        (("pg_class", "orders"), Action.ALLOW, "allow-public-or-catalog"),
    ],
)
def test_table_and_schema_globs(
    tmp_path: Path, tables: tuple[str, ...], action: Action, rule: str
) -> None:
    d = pack(tmp_path, TABLE_PACK).decide(AGENT, cls(stmt(C.READ, tables=tables)))
    assert (d.action, d.rule) == (action, rule)


FUNCTION_PACK = """
    rules:
      - name: deny-file-readers
        match: {functions: ["pg_catalog.pg_read_*", "pg_ls_dir"]}
        action: deny
      - name: trust-myapp
        match: {functions: ["myapp.*"], categories: [opaque]}
        action: allow
      - name: allow-read
        match: {categories: [read]}
        action: allow
"""


@pytest.mark.parametrize(
    ("functions", "cats", "action", "rule"),
    [
        (("pg_read_file",), (C.READ, C.ADMIN), Action.DENY, "deny-file-readers"),
        (("pg_catalog.pg_read_binary_file",), (C.ADMIN,), Action.DENY, "deny-file-readers"),
        (("PG_CATALOG.PG_LS_DIR",), (C.ADMIN,), Action.DENY, "deny-file-readers"),
        (("other.pg_read_file",), (C.ADMIN,), Action.HOLD, "default"),
        (("myapp.score",), (C.READ, C.OPAQUE), Action.ALLOW, "trust-myapp"),
        (("myapp.score", "evil"), (C.READ, C.OPAQUE), Action.HOLD, "default"),
        # known-pure built-ins need not be listed in an allow rule's functions
        (
            ("myapp.score", "lower", "pg_catalog.count"),
            (C.READ, C.OPAQUE),
            Action.ALLOW,
            "trust-myapp",
        ),
        # ... but a user function that shadows a built-in name is not pure
        (("myapp.score", "public.lower"), (C.READ, C.OPAQUE), Action.HOLD, "default"),
        # and an allow rule's functions must match at least one called function
        (("lower",), (C.READ, C.OPAQUE), Action.HOLD, "default"),
        ((), (C.OPAQUE,), Action.HOLD, "default"),
    ],
)
def test_function_globs(
    tmp_path: Path,
    functions: tuple[str, ...],
    cats: tuple[Category, ...],
    action: Action,
    rule: str,
) -> None:
    d = pack(tmp_path, FUNCTION_PACK).decide(AGENT, cls(stmt(*cats, functions=functions)))
    assert (d.action, d.rule) == (action, rule)


CATEGORY_PACK = """
    rules:
      - name: deny-read-export
        match: {all_categories: [read, export]}
        action: deny
      - name: allow-read-write-combo
        match: {all_categories: [read, write]}
        action: allow
      - name: hold-copy
        match: {statements: ["copy", "ALTER SYSTEM", "create_extension"]}
        action: hold
      - name: allow-anything-else-read
        match: {categories: [read, control]}
        action: allow
"""


@pytest.mark.parametrize(
    ("classification", "action", "rule"),
    [
        (cls(stmt(C.READ, C.EXPORT)), Action.DENY, "deny-read-export"),
        (cls(stmt(C.EXPORT)), Action.HOLD, "default"),
        (cls(stmt(C.READ, C.WRITE)), Action.ALLOW, "allow-read-write-combo"),
        # all_categories scopes an allow rule to its own categories: the destructive
        # unit of a read+write+destructive statement is not allowed by it
        (cls(stmt(C.READ, C.WRITE, C.DESTRUCTIVE)), Action.HOLD, "default"),
        (cls(stmt(C.READ, command="COPY")), Action.HOLD, "hold-copy"),
        # command names compare ignoring case, spaces and underscores
        (cls(stmt(C.READ, command="AlterSystem")), Action.HOLD, "hold-copy"),
        (cls(stmt(C.READ, command="alter  system")), Action.HOLD, "hold-copy"),
        (cls(stmt(C.READ, command="CreateExtension")), Action.HOLD, "hold-copy"),
        (cls(stmt(C.READ, command="ALTER TABLE")), Action.ALLOW, "allow-anything-else-read"),
        (cls(stmt(C.CONTROL, command="BEGIN")), Action.ALLOW, "allow-anything-else-read"),
    ],
)
def test_category_and_statement_matching(
    tmp_path: Path, classification: Classification, action: Action, rule: str
) -> None:
    d = pack(tmp_path, CATEGORY_PACK).decide(AGENT, classification)
    assert (d.action, d.rule) == (action, rule)


def test_explain_reports_each_unit(tmp_path: Path) -> None:
    rs = pack(tmp_path, BASIC)
    (s1, s2) = rs.explain(AGENT, cls(stmt(C.READ, C.EXPORT), stmt(C.WRITE)))
    assert {u.category: u.rule.name for u in s1.units} == {
        C.READ: "allow-read",
        C.EXPORT: "hold-export",
    }
    assert s1.action is Action.HOLD and s1.rule.name == "hold-export"
    assert s2.action is Action.ALLOW and s2.rule.name == "allow-write"


def test_internal_error_denies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rs = pack(tmp_path, "rules:\n  - name: allow-all\n    action: allow\n")

    def boom(*_a: object, **_k: object) -> bool:
        raise RuntimeError("bug")

    monkeypatch.setattr(type(rs.rules[0]), "matches_identity", boom)
    d = rs.decide(AGENT, cls(stmt(C.READ)))
    assert (d.action, d.rule) == (Action.DENY, "internal-error")
    assert "RuntimeError" in d.message


def test_internal_error_on_malformed_classification(tmp_path: Path) -> None:
    rs = pack(tmp_path, "rules:\n  - name: allow-all\n    action: allow\n")
    bad = Classification(statements=(None,))  # type: ignore[arg-type]
    assert rs.decide(AGENT, bad).rule == "internal-error"
    assert rs.decide(AGENT, bad).action is Action.DENY


def test_unhashable_identity_is_internal_error(tmp_path: Path) -> None:
    rs = pack(tmp_path, "rules:\n  - name: allow-all\n    action: allow\n")
    bad = Identity("x", groups={"g"})  # type: ignore[arg-type]  # a set, not a frozenset
    assert rs.decide(bad, cls(stmt(C.READ))).rule == "internal-error"


def test_decisions_are_remembered_per_classification_object(tmp_path: Path) -> None:
    rs = pack(tmp_path, BASIC)
    c = cls(stmt(C.READ, C.EXPORT))
    first = rs.decide(AGENT, c)
    assert rs.decide(AGENT, c) is first
    # an equal but distinct object is decided afresh (and identically)
    again = rs.decide(AGENT, cls(stmt(C.READ, C.EXPORT)))
    assert again is not first and again == first
    # another identity has its own entry
    assert rs.decide(Identity("other"), c) is not first


def test_a_classification_that_cannot_come_back_is_not_remembered(tmp_path: Path) -> None:
    """The classifier caches no text over MAX_CACHED_SQL: such a classification is a
    new object every time, and an entry for it would keep its text alive."""
    rs = pack(tmp_path, BASIC)
    long = Classification(statements=(stmt(C.READ),), fingerprint_source="x" * (MAX_CACHED_SQL + 1))
    short = Classification(statements=(stmt(C.READ),), fingerprint_source="select 1")
    assert not long.reused and short.reused
    assert rs.decide(AGENT, long) == rs.decide(AGENT, short)
    assert [c for _, c in rs._decisions] == [id(short)]


def test_catch_all_rule_without_match(tmp_path: Path) -> None:
    rs = pack(
        tmp_path,
        """
        rules:
          - name: allow-read
            match: {categories: [read]}
            action: allow
          - name: catch-all
            action: deny
            message: not covered
        """,
    )
    assert rs.decide(AGENT, cls(stmt(C.READ))).action is Action.ALLOW
    d = rs.decide(AGENT, cls(stmt(C.READ, C.DDL)))
    assert (d.action, d.rule, d.message) == (Action.DENY, "catch-all", "not covered")


def test_decide_bind_without_needs_bind_is_parse_time_decision(tmp_path: Path) -> None:
    rs = pack(tmp_path, BASIC)
    c = cls(stmt(C.READ))
    assert decide_bind(rs, AGENT, c, "SELECT 1", []) == rs.decide(AGENT, c)


def test_decide_bind_classifier_failure_denies(tmp_path: Path) -> None:
    def boom(*_a: object, **_k: object) -> Classification:
        raise ValueError("nope")

    rs = pack(tmp_path, BASIC)
    d: Decision = decide_bind(
        rs,
        AGENT,
        cls(stmt(C.READ, needs_bind=True)),
        "SELECT set_config($1, $2, false)",
        ["a"],
        bind_classifier=boom,
    )
    assert (d.action, d.rule) == (Action.DENY, "internal-error")


def test_decide_bind_decides_on_the_bound_classification(tmp_path: Path) -> None:
    seen: list[object] = []

    def bind(c: Classification, sql: str, params: object) -> Classification:
        seen.append((sql, params))
        return cls(stmt(C.READ, C.ADMIN))

    rs = pack(tmp_path, BASIC)
    parse_time = cls(stmt(C.READ, needs_bind=True))
    d = decide_bind(rs, AGENT, parse_time, "SELECT f($1)", ("x",), bind_classifier=bind)
    assert (d.action, d.rule) == (Action.DENY, "deny-admin")
    assert seen == [("SELECT f($1)", ["x"])]


def test_decide_is_fast() -> None:
    """The proxy decides on every uncached statement: keep it in the low microseconds.

    Best of several batches, so a busy CI machine does not make this flaky; the
    bound is generous (typical: 5-10 µs) and catches accidental O(rules) walks
    with allocation, not noise.
    """
    import time

    rs = load_rules(None)
    c = cls(stmt(C.READ, tables=("public.orders",), functions=("count",)))
    n = 5000
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            rs.decide(AGENT, c)
        best = min(best, (time.perf_counter() - t0) / n)
    assert best < 50e-6, f"{best * 1e6:.1f} µs per decision"


def test_rules_built_in_code_get_pack_order() -> None:
    from dbgate.policy.rules import Match, Rule, RuleSet, ruleset_from_rules

    hold = Rule("hold-read", Action.HOLD, Match(categories=frozenset({C.READ})))
    deny = Rule("deny-export", Action.DENY, Match(categories=frozenset({C.EXPORT})))
    for rs in (RuleSet((hold, deny)), ruleset_from_rules([hold, deny])):
        assert [r.index for r in rs.rules] == [0, 1]
        assert rs.default.index > 1
        d = rs.decide(AGENT, cls(stmt(C.READ), stmt(C.EXPORT), stmt(C.DDL)))
        assert (d.action, d.rule) == (Action.DENY, "deny-export")
        d = rs.decide(AGENT, cls(stmt(C.READ, C.DDL)))
        assert (d.action, d.rule) == (Action.HOLD, "hold-read")
        assert d.message == "rule 'hold-read' holds read statements; " + rs.default.message
