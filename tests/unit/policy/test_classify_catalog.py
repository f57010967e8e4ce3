"""Hygiene of the function and settings catalogs the classifier relies on.

The catalogs are data; these tests keep the data honest: no dangerous function may
leak into the pure list, reviewed names must exist in PostgreSQL (a typo would
silently leave a function unreviewed), and the setting-value parsers must read
values the way PostgreSQL does.
"""

from __future__ import annotations

import pytest

from dbgate.policy import catalog_builtin as cat
from dbgate.policy import functions as fn
from dbgate.policy import vouch
from dbgate.policy.catalog_settings import (
    search_path_escapes,
    setting_effects,
    split_identifier_list,
)
from dbgate.policy.model import Category

#: Extension (non-core) functions we list on purpose: dblink, adminpack, postgres_fdw,
#: pg_stat_statements, pre-PG10 names kept for old servers, PG 17/18 stats writers.
EXTENSION_OR_LEGACY = {
    n
    for n in fn.EFFECTS
    if n.startswith(("dblink", "postgres_fdw", "pg_file_"))
    or n
    in {
        "pg_logdir_ls",
        "pg_stat_statements_reset",
        "pg_start_backup",
        "pg_stop_backup",
        "pg_switch_xlog",
        "pg_xlog_replay_pause",
        "pg_xlog_replay_resume",
        "pg_rotate_logfile_old",
        "pg_signal_backend",
        "pg_set_relation_stats",
        "pg_set_attribute_stats",
    }
}


def test_no_function_with_an_effect_is_pure() -> None:
    assert not (fn.PURE & set(fn.EFFECTS))
    assert not (fn.PURE & fn.SPECIAL)


@pytest.mark.parametrize(
    "name",
    [
        "table_to_xml",  # STABLE, returns a whole table
        "schema_to_xml",
        "database_to_xml",
        "query_to_xml",
        "pg_read_file",
        "pg_ls_dir",
        "lo_export",
        "lo_import",
        "set_config",
        "pg_notify",
        "setval",
        "nextval",
        "pg_terminate_backend",
        "pg_reload_conf",
        "pg_logical_slot_get_changes",
        "ts_stat",
        "ts_rewrite",
    ],
)
def test_dangerous_builtins_are_not_pure(name: str) -> None:
    assert name not in fn.PURE


@pytest.mark.parametrize(
    "name",
    [
        "lower",
        "format_type",
        "pg_get_expr",
        "pg_table_is_visible",
        "pg_get_indexdef",
        "has_table_privilege",
        "current_setting",
        "version",
        "current_database",
        "obj_description",
        "count",
        "row_number",
        "jsonb_build_object",
        "to_regclass",
        "regclass",
        "now",
        "random",
        "pg_advisory_xact_lock",
        "pg_advisory_unlock",
        "pg_current_logfile",
    ],
)
def test_everyday_builtins_are_pure(name: str) -> None:
    assert fn.is_pure(name, None)
    assert fn.is_pure(name, "pg_catalog")
    assert not fn.is_pure(name, "public")


def test_reviewed_names_exist_in_postgresql() -> None:
    builtin = cat.STABLE_OR_IMMUTABLE | cat.VOLATILE
    assert fn.REVIEWED_VOLATILE_PURE <= cat.VOLATILE, fn.REVIEWED_VOLATILE_PURE - cat.VOLATILE
    missing = set(fn.EFFECTS) - builtin - EXTENSION_OR_LEGACY
    assert not missing, f"EFFECTS names unknown to PostgreSQL (typo?): {sorted(missing)}"
    assert set(fn.SQL_STRING_FUNCTIONS) <= builtin
    assert fn.COLLECTING_AGGREGATES <= cat.AGGREGATES


def test_every_volatile_builtin_was_reviewed_or_stays_unknown() -> None:
    """A VOLATILE built-in is pure only if a human put it on the reviewed list."""
    volatile_only = cat.VOLATILE - cat.STABLE_OR_IMMUTABLE
    assert volatile_only & fn.PURE <= fn.REVIEWED_VOLATILE_PURE | cat.BUILTIN_TYPES


def test_information_schema_helpers_are_pure_only_when_qualified() -> None:
    assert fn.is_pure("_pg_expandarray", "information_schema")
    assert not fn.is_pure("_pg_expandarray", None)


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a, b", ["a", "b"]),
        ('"$user", public', ["$user", "public"]),
        ('Evil, "Mixed Case", "a,b"', ["evil", "Mixed Case", "a,b"]),
        ('"with ""quote"""', ['with "quote"']),
        ("", []),
        ("  pg_catalog  ", ["pg_catalog"]),
    ],
)
def test_split_identifier_list(text: str, expected: list[str]) -> None:
    assert split_identifier_list(text) == expected


@pytest.mark.parametrize(
    ("path", "escapes"),
    [
        (["public"], False),
        (["pg_catalog", "public"], False),
        (["pg_temp", "pg_catalog"], False),
        (["evil", "pg_catalog"], True),
        (["$user", "pg_catalog"], True),
        ([], False),
    ],
)
def test_search_path_escapes(path: list[str], escapes: bool) -> None:
    assert search_path_escapes(path) is escapes


@pytest.mark.parametrize(
    ("name", "value", "category"),
    [
        ("standard_conforming_strings", "on", Category.CONTROL),
        ("standard_conforming_strings", "OFF", Category.ESCAPE),
        ("standard_conforming_strings", "maybe", Category.ESCAPE),  # unclear: fail closed
        ("default_transaction_read_only", "true", Category.CONTROL),
        ("default_transaction_read_only", "0", Category.ESCAPE),
        ("client_encoding", "utf8", Category.CONTROL),
        ("client_encoding", "UTF-8", Category.CONTROL),
        ("client_encoding", "BIG5", Category.ESCAPE),
        ("backslash_quote", "safe_encoding", Category.CONTROL),
        ("backslash_quote", "on", Category.ESCAPE),
        ("session_replication_role", "origin", Category.CONTROL),
        ("session_replication_role", "local", Category.ESCAPE),
        ("row_security", "on", Category.CONTROL),
        ("role", "anything", Category.PRIVILEGE),
        ("log_statement", "none", Category.ADMIN),
        ("local_preload_libraries", "x", Category.ADMIN),
        ("zero_damaged_pages", "on", Category.ADMIN),
        ("myapp.tenant", "1", Category.PRIVILEGE),
        ("no_such_setting", "1", Category.OPAQUE),
        ("work_mem", "1GB", Category.CONTROL),
        ("DateStyle", "ISO", Category.CONTROL),
    ],
)
def test_setting_effects(name: str, value: str, category: Category) -> None:
    effects, _ = setting_effects(name, [value])
    assert {c for c, _, _ in effects} == {category}


def test_unknown_value_of_a_value_sensitive_setting_is_opaque_and_needed() -> None:
    effects, needed = setting_effects("search_path", None)
    assert needed
    assert {c for c, _, _ in effects} == {Category.OPAQUE}
    effects, needed = setting_effects("application_name", None)
    assert not needed


# ----------------------------------------------------------------------------- vouching


def _f(name: str, body: str, **kw: object) -> vouch.CatalogFunction:
    base: dict[str, object] = {
        "schema": "app",
        "name": name,
        "volatility": "s",
        "security_definer": False,
        "language": "sql",
        "body": body,
    }
    base.update(kw)
    return vouch.CatalogFunction(**base)  # type: ignore[arg-type]


def test_vouch_for_accepts_only_harmless_sql_functions() -> None:
    rows = [
        _f("fmt", "SELECT upper($1) || '!'"),
        _f("order_total", "SELECT sum(total) FROM orders WHERE customer_id = $1"),
        _f("all_emails", "SELECT string_agg(email, ',') FROM customers"),  # dump
        _f("leak", "SELECT pg_read_file('/etc/passwd')"),  # admin
        _f("definer", "SELECT 1", security_definer=True),
        _f("volatile", "SELECT 1", volatility="v"),
        _f("plpgsql", "BEGIN RETURN 1; END", language="plpgsql"),
        _f("as_admin", "SELECT 1", config=("role=postgres",)),
        _f("pinned_path", "SELECT 1", config=("search_path=pg_catalog, app",)),
        _f("shadow_path", "SELECT 1", config=("search_path=evil, pg_catalog",)),
        _f("calls_unknown", "SELECT app.mystery($1)"),
        _f("calls_vouched", "SELECT app.fmt($1)"),
        _f("agg", "SELECT 1", kind="a"),
        _f("std_return", "CREATE FUNCTION app.std_return(a int) RETURNS int RETURN a + 1"),
        _f(
            "std_atomic",
            "CREATE FUNCTION app.std_atomic(a int) RETURNS int BEGIN ATOMIC "
            "SELECT count(*) FROM orders WHERE id = a; END",
        ),
        _f(
            "std_leak",
            "CREATE FUNCTION app.std_leak() RETURNS text RETURN pg_read_file('x')",
        ),
        _f(
            "std_writes",
            "CREATE FUNCTION app.std_writes() RETURNS void BEGIN ATOMIC DELETE FROM orders; END",
        ),
    ]
    got = vouch.vouch_for(rows)
    assert got == {
        "app.fmt",
        "app.order_total",
        "app.pinned_path",
        "app.calls_vouched",
        "app.std_return",
        "app.std_atomic",
    }


def test_vouch_for_rejects_a_name_with_any_unsafe_overload() -> None:
    rows = [_f("f", "SELECT $1"), _f("f", "SELECT pg_ls_dir($1)")]
    assert vouch.vouch_for(rows) == frozenset()


def test_vouch_for_bare_names_only_for_first_schema_and_not_builtins() -> None:
    rows = [_f("fmt", "SELECT $1"), _f("lower", "SELECT $1")]
    got = vouch.vouch_for(rows, search_path_first="app")
    assert "fmt" in got and "app.fmt" in got
    assert "lower" not in got  # unqualified lower() is pg_catalog.lower


def test_vouched_names_make_calls_pure() -> None:
    from dbgate.policy.classify import classify

    extra = vouch.vouch_for([_f("fmt", "SELECT upper($1)")])
    assert classify(
        "SELECT app.fmt(name) FROM t WHERE id = 1", extra_pure_functions=extra
    ).categories == {Category.READ}
