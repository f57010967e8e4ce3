"""The prescan: linear classification of the inputs PostgreSQL's scanner reads in quadratic time.

The oracle for the comment rewrite is the classifier itself without it: every
statement here is classified twice — as shipped, and with the prescan switched off
(PostgreSQL's scanner on the original text, which at these sizes is fast) — and the
two results must be equal, down to parse-error positions and PREPARE bodies. Timing
belongs in bench/bench_classify.py; these tests only pin behaviour.
"""

from __future__ import annotations

import pickle
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbgate.policy import classify as classify_module
from dbgate.policy.classify import classification_cost, classify, clear_cache
from dbgate.policy.model import Category
from dbgate.policy.prescan import MAX_COMMENT_RESCAN, MAX_OPERATOR_RUN, Prepared, prepare


def _without_prescan(sql: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as m:
        m.setattr(classify_module, "prepare", lambda text: Prepared(text))
        clear_cache()
        result = classify(sql)
    clear_cache()
    return result


def _same(a: Any, b: Any) -> None:
    assert a.parse_error == b.parse_error
    assert a.parse_error_position == b.parse_error_position
    assert [(s.categories, s.reasons, s.prepared_effect) for s in a.statements] == [
        (s.categories, s.reasons, s.prepared_effect) for s in b.statements
    ]


COMMENTED = [
    "select 1 /* a /* nested */ still comment */ + 2",
    "select 1 as ux /*/*/*/**/*/*/*/",
    "select 1 /* a /*/ b */ c */",
    "select 1 /* ***/ + 2 /* x **/",
    "select '/* not a comment */' /* /* a */ b */",
    "select $x$ /* /* dollar */ $x$ /* /* c */ */",
    "select E'\\' /* /* still string */' /* /* c */ */ , 1",
    'select "a /* b" /* /* c */ */ from t',
    "select 1 -- /* line comment\n /* /* block */ */",
    "select 1+/* /* a */ */2",
    "select 1 */* /* x */ */ 2",
    "select pg_read_file('x') /* /* hide */ */",
    "select 1 /* /* unterminated */",
    "select 1 /* /* a */ */ fro x",
    "PREPARE p AS SELECT 1 /* /* in the body */ */ + 2 /* /* after */ */",
    "select 1; /* /* two */ */ delete from orders",
    "select 'é' /* /* ü */ */ fro x",
    "select U&'d\\0061t\\+000061' /* /* u */ */",
    "select $1 /* /* param */ */",
    "select a$b /* /* ident with dollar */ */ from t",
]


@pytest.mark.parametrize("sql", COMMENTED)
def test_rewriting_nested_comments_changes_nothing(
    sql: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clear_cache()
    _same(classify(sql), _without_prescan(sql, monkeypatch))


def test_the_rewrite_keeps_offsets_and_only_touches_comments() -> None:
    sql = "select '/*x*/' /* a /* b */ c */ , 2"
    p = prepare(sql)
    assert p.rewritten and len(p.text) == len(sql)
    assert p.text == "select '/*x*/' /* a    b    c */ , 2"
    assert prepare("select 1 /* plain */").rewritten is False  # nothing to do


def test_a_prepare_body_keeps_its_original_comments() -> None:
    c = classify("PREPARE q AS SELECT 1 /* /* x */ */ + 2")
    effect = c.statements[0].prepared_effect
    assert effect is not None and effect.body == "SELECT 1 /* /* x */ */ + 2"


def test_an_unterminated_comment_is_a_parse_error_at_its_start() -> None:
    c = classify("select 1 /* /* a */")
    # as PostgreSQL, but what it quotes (the rest of the text) masked
    assert c.parse_error == "unterminated /* comment at or near <comment>"
    assert c.parse_error_position == 10


@pytest.mark.parametrize(
    ("sql", "opaque"),
    [
        ("select 1, 1 " + "+" * (MAX_OPERATOR_RUN + 1) + " 1", True),
        ("select 1 " + "<>" * 40 + " 1", True),
        ("select 1, 1 " + "+" * MAX_OPERATOR_RUN + " 1", False),
        ("select '" + "+" * 1000 + "'", False),  # in a string
        ("select 1 /* " + "+" * 1000 + " */", False),  # in a comment
        ("select 1 -- " + "=" * 1000, False),
        ("select $$" + "-" * 1000 + "$$", False),
        ('select "' + "|" * 100 + '"', False),
    ],
)
def test_long_operator_runs_are_refused_without_parsing(sql: str, opaque: bool) -> None:
    clear_cache()
    c = classify(sql)
    codes = [r.code for r in c.reasons]
    assert ("operator-run" in codes) is opaque, codes
    if opaque:
        assert c.categories == {Category.OPAQUE}
        assert "operator characters" in c.reasons[0].message


def _openers(n: int) -> str:
    """A comment of ``n`` openers in a row, closed as often: PostgreSQL's scanner reads
    the rest of the run at each opener (about 2.5 n² characters in all)."""
    return "select 1 as ux " + "/*" * n + "*/" * n


@pytest.mark.parametrize(
    ("sql", "opaque"),
    [
        (_openers(1600), False),  # ~10⁷ characters read: a few ms of the server's time
        (_openers(16000), True),  # ~10⁹: seconds
        ("select 1 /*" + "*" * 100_000 + "*/", False),  # a banner: one opener, linear
        ("select 1 /* " + "/**/" * 3000 + " */", False),  # openers, but each run is short
        ("select 1 /* x " + "/**/" * 5000 + "*/", True),  # one run of 5,000 openers
        ("select 1 /* x */" + "+" * 1000 + " 1", True),  # a run going on after a comment
        ("select 1 /* x */" + "+" * MAX_OPERATOR_RUN + " 1", False),
        ("select '+' " + "+" * 10 + " '" + "+" * 100 + "'", False),
    ],
)
def test_runs_the_servers_scanner_reads_in_quadratic_time_are_refused(
    sql: str, opaque: bool
) -> None:
    assert MAX_COMMENT_RESCAN < 2.5 * 16000**2
    assert (prepare(sql).operator_run is not None) is opaque
    clear_cache()
    codes = [r.code for r in classify(sql).reasons]
    assert ("operator-run" in codes) is opaque, codes


def test_nested_sql_is_prescanned_too() -> None:
    c = classify("SELECT query_to_xml('select 1 " + "+" * 100 + " 1', true, false, '')")
    assert Category.OPAQUE in c.categories


_PIECES = st.sampled_from(
    ["/*", "*/", "*", "/", "'", "''", '"', "$$", "$a$", "--", "\n", " ", "x", "1", "+", "E'", "\\"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=25))
def test_any_text_classifies_as_without_the_rewrite(pieces: list[str]) -> None:
    """Random comment, quote and operator soup: the rewrite never changes the answer."""
    sql = "select 1 " + "".join(pieces)
    clear_cache()
    with_prescan = classify(sql)
    saved = classify_module.prepare
    classify_module.prepare = lambda text: Prepared(text)  # type: ignore[assignment]
    try:
        clear_cache()
        without = classify(sql)
    finally:
        classify_module.prepare = saved
        clear_cache()
    _same(with_prescan, without)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        "select 1 where " + " or ".join(["1 = 1"] * 500),
        "select count(*) from (values " + ",".join(f"({i})" for i in range(500)) + ") v(x)",
        "select 1 as ux " + "/*" * 500 + "*/" * 500,
    ],
)
def test_cost_estimate_is_linear_in_the_text(sql: str) -> None:
    one, two = classification_cost(sql), classification_cost(sql + "\n" + sql[7:] * 1)
    assert 0 < one < two <= 3 * one
    assert classification_cost(sql * 4) <= 5 * classification_cost(sql)


def test_classifications_cross_process_boundaries() -> None:
    c = classify("SELECT * FROM orders WHERE status = 'x' FOR UPDATE; SET statement_timeout = 0")
    copy = pickle.loads(pickle.dumps(c))
    assert copy == c
    assert copy.statements[1].guard_settings == c.statements[1].guard_settings


def test_threads_classify_alike() -> None:
    """Eight threads classifying and clearing the caches at once get the answers one
    thread gets (the caches' stores and evictions are under a lock)."""
    texts = [
        f"SELECT * FROM orders WHERE id = {i}" if i % 3 else f"DELETE FROM t{i % 7}"
        for i in range(300)
    ] + COMMENTED
    clear_cache()
    expected = {t: classify(t).categories for t in texts}
    errors: list[str] = []

    def work(offset: int) -> None:
        for n, t in enumerate(texts[offset:] + texts[:offset]):
            if n % 50 == 0:
                clear_cache()
            if classify(t).categories != expected[t]:
                errors.append(t)

    threads = [threading.Thread(target=work, args=(k * 37,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_the_garbage_collector_is_paused_only_while_a_large_text_is_classified() -> None:
    import gc

    big = "select count(*) from (values " + ",".join(f"({i})" for i in range(20000)) + ") v(x)"
    assert gc.isenabled()
    assert classify(big).categories == {Category.READ}
    assert gc.isenabled()
    gc.disable()
    try:
        classify(big)
        assert not gc.isenabled()  # it was off before: it stays off
    finally:
        gc.enable()
