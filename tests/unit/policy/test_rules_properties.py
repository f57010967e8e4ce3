"""Fail-closed properties of the engine, checked on generated classifications.

Table tests show the cases we thought of; these show the invariants hold for the
ones we did not: the engine never raises, its answer is the strictest unit
answer, and with the default pack more work in a query string can never make
the decision more permissive.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbgate.policy.model import Action, Category, Classification, Identity, Reason, StatementClass
from dbgate.policy.rules import RulesError, RuleSet, load_rules
from dbgate.policy.rules_match import SEVERITY

PACK: RuleSet = load_rules(None)

names = st.sampled_from(
    ["orders", "public.customers", "vault.tokens", "analytics.daily", "Weird Name", "a.b"]
)
functions = st.sampled_from(["lower", "count", "pg_read_file", "app.score", "public.lower", "x"])
commands = st.sampled_from(["SELECT", "COPY", "AlterSystem", "VACUUM", "DO", "", "TRANSACTION"])


@st.composite
def statements(draw: st.DrawFn) -> StatementClass:
    cats = draw(st.frozensets(st.sampled_from(list(Category)), max_size=4))
    return StatementClass(
        categories=cats,
        reasons=tuple(Reason(c, "gen", "generated") for c in cats),
        tables=draw(st.frozensets(names, max_size=3)),
        functions=draw(st.frozensets(functions, max_size=3)),
        command=draw(commands),
        needs_bind=draw(st.booleans()),
    )


classifications = st.builds(
    Classification, statements=st.lists(statements(), max_size=4).map(tuple)
)
identities = st.builds(
    Identity,
    name=st.sampled_from(["agent", "reporting-bot", "ops", ""]),
    application_name=st.sampled_from(["", "psql", "myapp"]),
    groups=st.frozensets(st.sampled_from(["dba", "analysts"]), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(identities, classifications)
def test_decide_never_raises_and_matches_explain(ident: Identity, c: Classification) -> None:
    d = PACK.decide(ident, c)
    assert d.action in Action
    if not c.statements:
        assert d.rule == "empty-query"
        return
    assert d.rule != "internal-error"
    explained = PACK.explain(ident, c)
    strictest = max((s.action for s in explained), key=SEVERITY.__getitem__)
    assert d.action is strictest
    # every category of every statement was decided by some rule
    for s, e in zip(c.statements, explained, strict=True):
        assert {u.category for u in e.units} == (s.categories or {Category.OPAQUE})


@settings(max_examples=300, deadline=None)
@given(identities, classifications, statements())
def test_more_work_is_never_more_permissive(
    ident: Identity, c: Classification, extra: StatementClass
) -> None:
    if not c.statements:
        return
    before = PACK.decide(ident, c).action
    after = PACK.decide(ident, Classification((*c.statements, extra))).action
    assert SEVERITY[after] >= SEVERITY[before]


@settings(max_examples=300, deadline=None)
@given(identities, statements(), st.sampled_from(list(Category)))
def test_an_extra_category_is_never_more_permissive(
    ident: Identity, s: StatementClass, cat: Category
) -> None:
    if not s.categories:
        return
    wider = StatementClass(
        categories=s.categories | {cat},
        reasons=s.reasons,
        tables=s.tables,
        functions=s.functions,
        command=s.command,
    )
    before = PACK.decide(ident, Classification((s,))).action
    after = PACK.decide(ident, Classification((wider,))).action
    assert SEVERITY[after] >= SEVERITY[before]


@settings(max_examples=200, deadline=None)
@given(identities, classifications, st.text(max_size=30))
def test_parse_errors_are_always_denied(ident: Identity, c: Classification, err: str) -> None:
    d = PACK.decide(ident, Classification(c.statements, parse_error=err))
    assert (d.action, d.rule) == (Action.DENY, "parse-error")


@settings(max_examples=200, deadline=None)
@given(identities, classifications)
def test_allow_only_when_every_category_is_allowed_by_the_pack(
    ident: Identity, c: Classification
) -> None:
    allowed = {Category.READ, Category.WRITE, Category.CONTROL}
    d = PACK.decide(ident, c)
    cats = set().union(*(s.categories or {Category.OPAQUE} for s in c.statements))
    if c.statements:
        assert (d.action is Action.ALLOW) == (cats <= allowed)


yaml_fragments = st.sampled_from(
    [
        "rules:",
        "  - name: a",
        "  - name: b",
        "    action: allow",
        "    action: hold",
        "    action: nope",
        "    match:",
        "      categories: [read, nope]",
        "      tables: ['[x', a.b.c]",
        "    expires_after: 1h",
        "    expires_after: never",
        "    approvals_needed: 0",
        "version: 1",
        "- x",
        "  : :",
        "{",
        "'",
        "&a [*a]",
        "!!python/object:os.system ls",
        "",
    ]
)


@settings(max_examples=100, deadline=None)
@given(st.lists(yaml_fragments, max_size=12))
def test_loader_never_crashes(tmp_path_factory: pytest.TempPathFactory, lines: list[str]) -> None:
    """Whatever is in the file: a RuleSet or a RulesError naming lines of that file."""
    d = tmp_path_factory.mktemp("fuzz")
    text = "\n".join(lines) + "\n"
    (d / "f.yaml").write_text(text)
    try:
        rs = load_rules(d)
    except RulesError as e:
        assert e.problems
        for p in e.problems:
            assert 0 <= p.line <= len(lines) + 1, (p, text)
            assert p.file == str(d / "f.yaml")
    else:
        assert rs.rules
