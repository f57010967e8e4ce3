"""Cache, Bind-time and fail-closed behaviour of the classifier's public API.

The cache must make repeated work cheap *without* ever letting one statement
inherit another's classification: literal values that decide a category
(settings, ``set_config`` names, LIMITs) and session state (prepared statements)
must never share an entry.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pglast import parser

from dbgate.policy import classify as classify_mod
from dbgate.policy import walk
from dbgate.policy.classify import cache_info, classify, classify_bind, clear_cache
from dbgate.policy.model import Category

R, W, D, A, P, ESC, OPQ, C, L = (
    Category.READ,
    Category.WRITE,
    Category.DUMP,
    Category.ADMIN,
    Category.PRIVILEGE,
    Category.ESCAPE,
    Category.OPAQUE,
    Category.CONTROL,
    Category.LOCK,
)


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    clear_cache()
    yield
    clear_cache()


# ----------------------------------------------------------------------------- cache


def test_same_text_hits_exact_cache_and_returns_same_object() -> None:
    first = classify("SELECT * FROM orders WHERE id = 1")
    again = classify("SELECT * FROM orders WHERE id = 1")
    assert again is first
    assert cache_info()["exact"] == 1


def test_different_literals_share_the_masked_entry() -> None:
    first = classify("SELECT * FROM orders WHERE id = 1")
    other = classify("SELECT * FROM orders WHERE id = 2")
    assert other is first
    assert cache_info()["masked"] == 1
    assert cache_info()["cold"] == 1


def test_literals_the_mask_cannot_read_share_the_normalized_entry() -> None:
    first = classify("SELECT * FROM orders WHERE note = E'a\\n'")  # E'' strings: no mask
    other = classify("SELECT * FROM orders WHERE note = E'b'")
    assert other is first
    assert cache_info()["normalized"] == 1
    assert cache_info()["masked"] == 0
    assert cache_info()["cold"] == 1


def test_a_mask_that_disagrees_with_normalize_is_never_trusted() -> None:
    # normalize keeps ORDER BY ordinals (column positions); the mask would hide them,
    # so this shape never gets a masked entry and ORDER BY 1 / 2 stay apart.
    a = classify("SELECT a, b FROM orders WHERE id = 5 ORDER BY 1")
    b = classify("SELECT a, b FROM orders WHERE id = 6 ORDER BY 2")
    assert cache_info()["masked_size"] == 0
    assert a is not b


def test_fingerprint_ignores_literals_that_matter() -> None:
    """Why the cache cannot be keyed on the fingerprint alone."""
    a, b = "SET standard_conforming_strings = on", "SET standard_conforming_strings = off"
    assert parser.fingerprint(a) == parser.fingerprint(b)
    assert classify(a).categories == {C}
    assert classify(b).categories == {ESC}


@pytest.mark.parametrize(
    ("benign", "benign_cats", "dangerous", "dangerous_cats"),
    [
        (
            "SET standard_conforming_strings = on",
            {C},
            "SET standard_conforming_strings = off",
            {ESC},
        ),
        (
            "SELECT set_config('application_name', 'x', false)",
            {R, C},
            "SELECT set_config('role', 'x', false)",
            {R, P},
        ),
        (
            "SELECT set_config('search_path', 'pg_catalog, public', false)",
            {R, C},
            "SELECT set_config('search_path', 'public, pg_catalog', false)",
            {R, ESC},
        ),
        ("SELECT * FROM customers LIMIT 5", {R}, "SELECT * FROM customers LIMIT 50000", {R, D}),
        ("SET search_path = public", {C}, "SET search_path = evil, pg_catalog", {ESC}),
        (
            "SELECT * FROM customers WHERE id IN (SELECT id FROM customers LIMIT 10)",
            {R},
            "SELECT * FROM customers WHERE id IN (SELECT id FROM customers LIMIT 10000)",
            {R, D},
        ),
        (
            "DELETE FROM orders WHERE id IN (SELECT id FROM orders LIMIT 5)",
            {W, R},
            "DELETE FROM orders WHERE id IN (SELECT id FROM orders LIMIT 5000)",
            {Category.DESTRUCTIVE, R},
        ),
        (
            "SELECT 1 FROM t WHERE id = 1; SET ROLE NONE",
            {R, P},
            "SELECT 1 FROM t WHERE id = 1; SET standard_conforming_strings = 'off'",
            {R, ESC},
        ),
        ("SET transaction_read_only = on", {C}, "SET transaction_read_only = off", {ESC}),
        ("SET client_encoding = 'UTF8'", {C}, "SET client_encoding = 'SJIS'", {ESC}),
        (
            "EXPLAIN (ANALYZE off) DELETE FROM t",
            {R},
            "EXPLAIN (ANALYZE on) DELETE FROM t",
            {Category.DESTRUCTIVE},
        ),
        (
            "SELECT query_to_xml('select 1', true, false, '')",
            {R, D},
            "SELECT query_to_xml('select pg_read_file(''x'')', true, false, '')",
            {R, D, A},
        ),
        (
            "SELECT pg_notify('c', 'x')",
            {R, W},
            "SELECT pg_notify('c', 'x' || current_user)",
            {R, Category.EXPORT},
        ),
        (
            "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'work_mem'",
            {R, C},
            "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'role'",
            {R, P},
        ),
        (
            "LOCK TABLE orders IN ACCESS SHARE MODE",
            {R},
            "LOCK TABLE orders IN ACCESS EXCLUSIVE MODE",
            {L},
        ),
    ],
)
def test_security_relevant_literals_do_not_share_cache_entries(
    benign: str, benign_cats: set[Category], dangerous: str, dangerous_cats: set[Category]
) -> None:
    assert classify(benign).categories == benign_cats
    assert classify(dangerous).categories == dangerous_cats
    # and the other way round, from a cold cache
    clear_cache()
    assert classify(dangerous).categories == dangerous_cats
    assert classify(benign).categories == benign_cats


def test_prepared_statements_are_never_cached() -> None:
    assert classify("EXECUTE p", prepared={"p": "SELECT 1"}).categories == {R}
    assert classify("EXECUTE p", prepared={"p": "DELETE FROM orders"}).categories == {
        Category.DESTRUCTIVE
    }
    assert classify("EXECUTE p").categories == {OPQ}


def test_extra_pure_functions_are_part_of_the_key() -> None:
    assert OPQ in classify("SELECT app.fmt(1)").categories
    assert classify(
        "SELECT app.fmt(1)", extra_pure_functions=frozenset({"app.fmt"})
    ).categories == {R}
    assert OPQ in classify("SELECT app.fmt(1)").categories


def test_extra_pure_unqualified_name_does_not_cover_other_schemas() -> None:
    extra = frozenset({"fmt"})
    assert classify("SELECT fmt(1)", extra_pure_functions=extra).categories == {R}
    assert OPQ in classify("SELECT evil.fmt(1)", extra_pure_functions=extra).categories


def test_a_vouched_type_may_be_cast_to_and_others_stay_opaque() -> None:
    """A cast runs its type's code (a domain's checks): opaque unless vouched."""
    assert OPQ in classify("SELECT '[1,2]'::vector").categories
    extra = frozenset({"vector"})
    assert classify("SELECT '[1,2]'::vector", extra_pure_functions=extra).categories == {R}
    assert OPQ in classify("SELECT '[1,2]'::evil.vector", extra_pure_functions=extra).categories


def test_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(classify_mod, "CACHE_SIZE", 50)
    for i in range(200):
        classify(f"SELECT {i} AS c{i}")
    info = cache_info()
    assert info["exact_size"] <= 50
    assert info["normalized_size"] <= 50


def test_cache_is_bounded_by_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(classify_mod, "CACHE_CHARS", 5_000)
    for i in range(100):
        classify(f"SELECT {i} AS c{i}, '{'x' * 200}' AS pad")
    info = cache_info()
    assert info["exact_chars"] <= 5_000
    assert info["normalized_chars"] <= 5_000
    assert info["exact_size"] >= 10  # still caching


def test_huge_statements_are_not_cached() -> None:
    sql = "SELECT 1 WHERE 'x' = '" + "a" * (classify_mod.MAX_CACHED_SQL + 10) + "'"
    assert classify(sql).categories == {R}
    info = cache_info()
    assert info["exact_size"] == 0 and info["normalized_size"] == 0


# ----------------------------------------------------------------------------- bind


def test_set_config_with_parameters_needs_bind() -> None:
    sql = "SELECT set_config($1, $2, false)"
    c = classify(sql)
    assert c.needs_bind
    assert OPQ in c.categories  # fail closed until the values are known
    assert classify_bind(c, sql, ["role", "postgres"]).categories == {R, P}
    assert classify_bind(c, sql, [b"application_name", b"x"]).categories == {R, C}
    assert classify_bind(c, sql, [b"standard_conforming_strings", b"off"]).categories == {R, ESC}
    assert classify_bind(c, sql, ["search_path", "evil, pg_catalog"]).categories == {R, ESC}
    assert classify_bind(c, sql, [b"\xff\xfe", b"x"]).categories == {R, OPQ}  # undecodable


def test_set_config_role_needs_no_bind() -> None:
    c = classify("SELECT set_config('role', $1, false)")
    assert not c.needs_bind
    assert c.categories == {R, P}


def test_setting_value_parameter_needs_bind_only_when_value_matters() -> None:
    assert not classify("SELECT set_config('application_name', $1, false)").needs_bind
    sql = "SELECT set_config('standard_conforming_strings', $1, false)"
    c = classify(sql)
    assert c.needs_bind
    assert classify_bind(c, sql, ["on"]).categories == {R, C}
    assert classify_bind(c, sql, ["off"]).categories == {R, ESC}


def test_limit_parameter_decides_dump_at_bind() -> None:
    sql = "SELECT * FROM customers LIMIT $1"
    c = classify(sql)
    assert c.needs_bind
    assert classify_bind(c, sql, ["10"]).categories == {R}
    assert classify_bind(c, sql, ["100000"]).categories == {R, D}
    assert classify_bind(c, sql, [None]).categories == {R, D}  # LIMIT NULL = no limit
    binary_int8 = (10).to_bytes(8, "big")
    assert classify_bind(c, sql, [binary_int8]).categories == {R, D}  # unreadable: fail closed


def test_restricted_query_with_limit_parameter_needs_no_bind() -> None:
    assert not classify("SELECT * FROM customers WHERE id = $1 LIMIT $2").needs_bind


def test_limit_parameter_inside_in_subselect_is_decided_at_bind() -> None:
    sql = "SELECT * FROM customers WHERE id IN (SELECT id FROM customers LIMIT $1)"
    c = classify(sql)
    assert c.needs_bind
    assert c.categories == {R, D}  # fail closed until Bind
    assert classify_bind(c, sql, ["5"]).categories == {R}
    assert classify_bind(c, sql, ["50000"]).categories == {R, D}


#: What SQLAlchemy's ``joinedload`` sends for ``select(Customer).limit(3)`` with a
#: driver that binds on the server (psycopg 3, pg8000): the limited query becomes a
#: FROM sub-select, and the collection is joined to its rows.
JOINEDLOAD_LIMIT = (
    "SELECT anon_1.id, anon_1.email, orders_1.id AS id_1, orders_1.total "
    "FROM (SELECT customers.id AS id, customers.email AS email FROM customers "
    "ORDER BY customers.id LIMIT $1::INTEGER) AS anon_1 "
    "LEFT OUTER JOIN orders AS orders_1 ON anon_1.id = orders_1.customer_id "
    "ORDER BY anon_1.id, orders_1.id"
)


@pytest.mark.parametrize(
    "sql",
    [
        JOINEDLOAD_LIMIT,
        JOINEDLOAD_LIMIT.replace("$1::INTEGER", "$1"),
        # subqueryload: the ids of the limited parents, joined to the children
        "SELECT orders.id, anon_1.customers_id FROM (SELECT customers.id AS customers_id "
        "FROM customers ORDER BY customers.id LIMIT $1::INTEGER) AS anon_1 "
        "JOIN orders ON anon_1.customers_id = orders.customer_id ORDER BY orders.id",
    ],
)
def test_limit_parameter_of_a_joined_subselect_bounds_the_join_at_bind(sql: str) -> None:
    """A sub-select's ``LIMIT $1`` bounds what is joined to it as ``LIMIT 3`` does."""
    literal = classify(sql.replace("$1::INTEGER", "3").replace("$1", "3"))
    assert literal.categories == {R}
    c = classify(sql)
    assert c.needs_bind
    assert D in c.categories  # fail closed until Bind
    assert classify_bind(c, sql, ["3"]).categories == {R}
    assert classify_bind(c, sql, ["50000"]).categories == {R, D}
    assert classify_bind(c, sql, [None]).categories == {R, D}
    assert classify_bind(c, sql, ["x"]).categories == {R, D}


def test_admin_function_is_admin_regardless_of_parameter() -> None:
    c = classify("SELECT pg_read_file($1)")
    assert not c.needs_bind
    assert c.categories == {R, A}


def test_query_to_xml_parameter_is_classified_at_bind() -> None:
    sql = "SELECT query_to_xml($1, true, false, '')"
    c = classify(sql)
    assert c.needs_bind
    assert classify_bind(c, sql, ["select 1"]).categories == {R, D}
    assert A in classify_bind(c, sql, ["select pg_read_file('x')"]).categories


def test_classify_bind_returns_parse_time_result_when_not_needed() -> None:
    sql = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
    c = classify(sql)
    assert classify_bind(c, sql, ["1"]) is c


def test_classify_with_params_bypasses_cache() -> None:
    sql = "SELECT set_config($1, $2, false)"
    assert classify(sql, ["role", "x"]).categories == {R, P}
    assert classify(sql, ["application_name", "x"]).categories == {R, C}
    assert classify(sql).needs_bind


def test_execute_passes_its_arguments_to_the_prepared_body() -> None:
    prepared = {"p": "PREPARE p(text) AS SELECT set_config($1, 'off', false)"}
    c = classify("EXECUTE p('standard_conforming_strings')", prepared=prepared)
    assert c.categories == {R, ESC}
    c = classify("EXECUTE p('application_name')", prepared=prepared)
    assert c.categories == {R, C}


def test_execute_with_bind_parameter_arguments() -> None:
    prepared = {"p": "SELECT set_config($1, 'off', false)"}
    sql = "EXECUTE p($1)"
    c = classify(sql, prepared=prepared)
    assert c.needs_bind
    assert OPQ in c.categories
    got = classify_bind(c, sql, ["standard_conforming_strings"], prepared=prepared)
    assert got.categories == {R, ESC}


# ----------------------------------------------------------------------------- fail closed


def test_internal_error_is_opaque(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(classify_mod, "statement", boom)
    c = classify("SELECT 1")
    assert c.categories == {OPQ}
    assert [r.code for r in c.reasons] == ["internal-error"]


def test_deeply_nested_input_does_not_raise() -> None:
    sql = "SELECT " + "(" * 5000 + "1" + ")" * 5000
    c = classify(sql)
    assert c.categories  # opaque (parser/stack limit) or read, never an exception


def test_nested_sql_depth_is_bounded() -> None:
    sql = "select 1"
    for _ in range(walk.MAX_NESTING + 2):
        sql = "select query_to_xml('" + sql.replace("'", "''") + "', true, false, '')"
    c = classify(sql)
    assert OPQ in c.categories
    assert "nesting-too-deep" in {r.code for r in c.reasons}


def test_parse_error_reports_message_and_is_opaque() -> None:
    c = classify("SELEC * FROM t")
    assert c.parse_error is not None and "syntax error" in c.parse_error
    assert c.categories == {OPQ}
    assert len(c.statements) == 1


def test_embedded_nul_fails_closed_even_after_a_cached_prefix() -> None:
    assert classify("SELECT 1").categories == {R}
    c = classify("SELECT 1\x00; DROP TABLE orders")
    assert c.categories == {OPQ}
    assert c.parse_error


def test_unencodable_text_fails_closed() -> None:
    assert classify("SELECT 1 \udcff").categories == {OPQ}


@pytest.mark.parametrize(
    ("sql", "secret"),
    [
        ("SELECT * FROM customers WHERE ssn = '123-45-6789", "123-45-6789"),
        ("SELECT * FROM customers WHERE ssn = E'123-45-6789", "123-45-6789"),
        ("SELECT 123456789abc", "123456789"),
        ("SELECT $$secret", "secret"),
        ("SELECT 1 FROM t WHERE ssn = '1' '987-65-4321'", "987-65-4321"),
        ("SELECT query_to_xml('select ''4111111111111111', true, false, '')", "4111111111111111"),
    ],
)
def test_parse_errors_do_not_echo_literals(sql: str, secret: str) -> None:
    c = classify(sql)
    assert OPQ in c.categories
    assert secret not in (c.parse_error or "")
    assert all(secret not in r.message for r in c.reasons)


def test_parse_errors_keep_keywords() -> None:
    assert 'at or near "SELEC"' in (classify("SELEC * FROM t").parse_error or "")


def test_multi_statement_reports_each_statement() -> None:
    c = classify("SELECT 1; DELETE FROM orders; SET ROLE x")
    assert [s.command for s in c.statements] == ["SELECT", "DELETE", "SET"]
    assert c.statements[1].categories == {Category.DESTRUCTIVE}
    assert c.statements[2].categories == {P}


def test_tables_columns_functions_are_reported() -> None:
    c = classify(
        "SELECT o.id, c.email, lower(c.full_name) FROM orders o JOIN app.customers c "
        "ON c.id = o.customer_id WHERE o.id = 1"
    )
    assert c.tables == {"orders", "app.customers"}
    assert c.statements[0].columns == {
        "orders.id",
        "app.customers.email",
        "app.customers.full_name",
        "app.customers.id",
        "orders.customer_id",
    }
    assert c.functions == {"lower"}
    assert c.fingerprint


def test_written_columns_are_reported() -> None:
    c = classify("UPDATE customers SET email = $1, phone = $2 WHERE id = $3")
    assert c.statements[0].columns == {"customers.email", "customers.phone", "customers.id"}
    c = classify("INSERT INTO app.customers (email, ssn) VALUES ($1, $2)")
    assert {"app.customers.email", "app.customers.ssn"} <= c.statements[0].columns


def test_cte_names_are_not_tables() -> None:
    c = classify("WITH x AS (SELECT id FROM orders WHERE id = 1) SELECT * FROM x")
    assert c.tables == {"orders"}


# ----------------------------------------------------------------------------- invariant

_STRINGS = ("'off'", "'role'", "'evil, pg_catalog'", "'select * from customers'", "'on'")
_NUMBERS = ("0", "100000", "1", "5")


def _siblings(sql: str) -> list[str]:
    """Variants of ``sql`` with every literal replaced: same normalized text, new values."""
    try:
        tokens = [t for t in parser.scan(sql) if t.name in ("SCONST", "ICONST", "FCONST")]
    except Exception:
        return []
    out = []
    for i in range(max(len(_STRINGS), len(_NUMBERS))):
        text = sql
        for t in reversed(tokens):
            lit = _STRINGS[i % len(_STRINGS)] if t.name == "SCONST" else _NUMBERS[i % len(_NUMBERS)]
            text = text[: t.start] + lit + text[t.end + 1 :]
        out.append(text)
    return out


def _table_sql() -> list[str]:
    from tests.unit.policy.test_classify_table import ALL

    return [p.values[0] for p in ALL if p.values[0].isascii()]


@pytest.mark.parametrize("sql", _table_sql())
def test_warm_cache_never_changes_an_answer(sql: str) -> None:
    """Whatever siblings warmed the cache, a statement classifies as it does cold."""
    cold = classify(sql).categories
    for sibling in _siblings(sql):
        clear_cache()
        classify(sibling)
        assert classify(sql).categories == cold, f"warmed with {sibling!r}"


def test_execute_arguments_are_expressions_and_are_classified() -> None:
    prepared = {"p": "SELECT $1, $2"}
    sql = "EXECUTE p(set_config('role', 'postgres', false), pg_read_file('/etc/passwd'))"
    assert {P, A} <= classify(sql, prepared=prepared).categories
    assert classify("EXECUTE p(1, 'x')", prepared=prepared).categories == {R}


def test_execute_of_a_name_that_may_hold_several_statements_takes_them_all() -> None:
    prepared = {"p": ("SELECT 1", "DELETE FROM orders")}
    assert Category.DESTRUCTIVE in classify("EXECUTE p", prepared=prepared).categories
    assert OPQ in classify("EXECUTE p", prepared={"p": ()}).categories  # lost track


def test_cached_shape_answers_a_fresh_text_of_a_cached_shape_only() -> None:
    """What the gate's fresh-literals path asks: the masked cache's classification for
    a text of a known shape that is not itself cached; never for a text whose literal
    values decide its category (those shapes are not in the masked cache)."""
    from dbgate.policy.classify import cached_shape
    from dbgate.policy.literals import fast_mask

    clear_cache()
    first = "SELECT v FROM shaped WHERE id = 1"
    c = classify(first)
    assert cached_shape(first, fast_mask(first)) is None  # cached verbatim: it repeats
    second = "SELECT v FROM shaped WHERE id = 2"
    assert cached_shape(second, fast_mask(second)) is c
    assert classify(second) is c
    other = "SELECT w FROM shaped WHERE id = 2"
    assert cached_shape(other, fast_mask(other)) is None
    for sql in ("SELECT set_config('a.b', 'x', false)", "SELECT set_config('a.c', 'y', false)"):
        classify(sql)
    fresh = "SELECT set_config('role', 'z', false)"
    assert cached_shape(fresh, fast_mask(fresh)) is None


def test_a_null_key_value_does_not_share_the_normalized_entry_of_a_value() -> None:
    """``email = NULL`` pins nothing (transform_null_equals would read it as IS NULL)
    while ``email = 'x'`` pins one row; both normalize to ``email = $1``. Classified
    first, the NULL form must not leave its entry for every value."""
    from dbgate.policy.keys import KeyCatalog, Relation

    keys = KeyCatalog({"public.customers": Relation((frozenset({"email"}),))}, ("public",))
    clear_cache()
    assert classify("SELECT * FROM customers WHERE email = NULL", keys=keys).read_bound is None
    assert classify("SELECT * FROM customers WHERE email = 'x'", keys=keys).read_bound == 1
    assert classify("DELETE FROM customers WHERE email = 'y'", keys=keys).write_bound == 1
    clear_cache()
    assert classify("DELETE FROM customers WHERE email = NULL", keys=keys).write_bound is None
    assert classify("DELETE FROM customers WHERE email = 'y'", keys=keys).write_bound == 1


def test_limit_parameter_of_a_narrowed_joined_subselect_is_decided_at_bind() -> None:
    """``joinedload`` + ``.where(...)`` + ``.limit(n)``: the sub-select is narrowed by
    its WHERE (no dump of its own), but its LIMIT still bounds the joined rows."""
    sql = (
        "SELECT anon_1.id, orders_1.id FROM (SELECT customers.id AS id FROM customers "
        "WHERE customers.email LIKE $1::VARCHAR ORDER BY customers.id "
        "LIMIT $2::INTEGER) AS anon_1 "
        "LEFT OUTER JOIN orders AS orders_1 ON anon_1.id = orders_1.customer_id"
    )
    c = classify(sql)
    assert c.needs_bind
    assert D in c.categories  # fail closed until Bind
    assert classify_bind(c, sql, ["%@gmail.com", "3"]).categories == {R}
    assert classify_bind(c, sql, ["%@gmail.com", "50000"]).categories == {R, D}
