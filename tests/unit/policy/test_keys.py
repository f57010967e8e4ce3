"""The key catalog: rows of the loader query in, unique keys by relation out.

The loader query itself runs against a real server in
tests/integration/test_policy_keys.py; these tests pin the pure half.
"""

from __future__ import annotations

import pickle

import pytest

from dbgate.policy.keys import KeyCatalog, Relation, key_catalog_from_rows

ROWS = [
    ("public", "customers", "r", False, ["id"]),
    ("public", "customers", "r", False, ["email"]),
    ("public", "customers", "r", False, None),
    ("public", "items", "r", False, ["order_id", "line"]),
    ("public", "items", "r", False, None),
    ("public", "parent", "r", True, ["id"]),
    ("public", "parent", "r", True, None),
    ("public", "report", "v", False, None),
    ("app", "customers", "r", False, None),
    ("Mixed Case", "T", "r", False, ["Id"]),
]


@pytest.fixture
def catalog() -> KeyCatalog:
    return key_catalog_from_rows(ROWS, search_path=["$user", "public"], user="agent", version=7)


@pytest.mark.parametrize(
    ("schema", "name", "only", "keys"),
    [
        ("public", "customers", False, {frozenset({"id"}), frozenset({"email"})}),
        (None, "customers", False, {frozenset({"id"}), frozenset({"email"})}),
        (None, "items", False, {frozenset({"order_id", "line"})}),
        (None, "parent", False, set()),  # children's rows are not covered
        (None, "parent", True, {frozenset({"id"})}),  # FROM ONLY parent
        (None, "report", False, set()),  # a view has no keys
        ("app", "customers", False, set()),
        ("Mixed Case", "T", False, {frozenset({"Id"})}),
        (None, "nowhere", False, set()),
        ("pg_catalog", "pg_class", False, set()),
    ],
)
def test_keys_of(
    catalog: KeyCatalog, schema: str | None, name: str, only: bool, keys: set[frozenset[str]]
) -> None:
    assert set(catalog.keys_of(schema, name, only=only)) == keys


def test_unqualified_names_resolve_through_the_search_path(catalog: KeyCatalog) -> None:
    app_first = catalog.with_search_path(["app", "public"])
    assert app_first.keys_of(None, "customers") == ()  # app.customers hides public's
    assert app_first.keys_of(None, "items") != ()  # only public has items
    assert catalog.with_search_path([]).keys_of(None, "customers") == ()


def test_dollar_user_is_the_session_user() -> None:
    rows = [("agent", "t", "r", False, ["id"]), ("public", "t", "r", False, None)]
    as_agent = key_catalog_from_rows(rows, search_path=["$user", "public"], user="agent")
    as_other = key_catalog_from_rows(rows, search_path=["$user", "public"], user="other")
    assert as_agent.keys_of(None, "t") == (frozenset({"id"}),)
    assert as_other.keys_of(None, "t") == ()
    assert as_agent.search_path == ("agent", "public")


def test_rows_may_be_mappings() -> None:
    rows = [
        {
            "schema": "s",
            "relation": "t",
            "relkind": "r",
            "has_children": False,
            "key_columns": ["a"],
        }
    ]
    assert key_catalog_from_rows(rows, search_path=["s"]).keys_of(None, "t") == (frozenset({"a"}),)


def test_columns_come_with_the_rows() -> None:
    rows = [
        ("s", "t", "r", False, ["id"], ["id", "name"]),
        ("s", "t", "r", False, None, ["id", "name"]),
        {
            "schema": "s",
            "relation": "u",
            "relkind": "v",
            "has_children": False,
            "key_columns": None,
            "columns": ["x"],
        },
    ]
    catalog = key_catalog_from_rows(rows, search_path=["s"])
    assert catalog.columns_of(None, "t") == frozenset({"id", "name"})
    assert catalog.columns_of("s", "u") == frozenset({"x"})
    assert catalog.columns_of(None, "nowhere") == frozenset()
    with pytest.raises(ValueError, match="column name that is not text"):
        key_catalog_from_rows([("s", "t", "r", False, None, [1])])


def test_cascading_foreign_keys_come_with_the_rows() -> None:
    rows = [
        ("s", "t", "r", False, ["id"], ["id", "code"], True, ["code"]),
        ("s", "t", "r", False, None, ["id", "code"], True, ["code"]),
        ("s", "u", "r", False, None, ["x"], False, []),
        {"schema": "s", "relation": "v", "has_children": False, "key_columns": None},
    ]
    catalog = key_catalog_from_rows(rows, search_path=["s"])
    t = catalog.relation(None, "t")
    assert t is not None and t.cascades_delete and t.cascade_update_columns == {"code"}
    for name in ("u", "v"):
        rel = catalog.relation(None, name)
        assert rel is not None and not rel.cascades_delete and not rel.cascade_update_columns
    with pytest.raises(ValueError, match="column name that is not text"):
        key_catalog_from_rows([("s", "t", "r", False, None, [], False, [1])])
    ruled = key_catalog_from_rows([("s", "r", "r", False, ["id"], ["id"], False, [], True)])
    r = ruled.relation("s", "r")
    assert r is not None and r.has_rules and not r.cascades_delete
    assert r.keys == (frozenset({"id"}),)


def test_duplicate_keys_are_kept_once() -> None:
    rows = [("s", "t", "r", False, ["a", "b"]), ("s", "t", "r", False, ["b", "a"])]
    assert key_catalog_from_rows(rows).keys_of("s", "t") == (frozenset({"a", "b"}),)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("s", "t")], "row 0 of the key query has the wrong shape"),
        ([{"schema": "s"}], "row 0 of the key query has the wrong shape"),
        ([(None, "t", "r", False, None)], "row 0 of the key query has no schema or relation"),
        ([("s", "t", "r", False, [1])], "row 0 of the key query has a key column that is not text"),
    ],
)
def test_bad_rows_are_refused_with_the_row(rows: list[object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        key_catalog_from_rows(rows)  # type: ignore[arg-type]


def test_cache_token_names_the_snapshot_and_path(catalog: KeyCatalog) -> None:
    assert catalog.cache_token == (7, ("agent", "public"))
    assert catalog.with_search_path(["public"]).cache_token == (7, ("public",))


def test_a_catalog_crosses_process_boundaries(catalog: KeyCatalog) -> None:
    """Classification may run in a worker process, which receives the catalog."""
    copy = pickle.loads(pickle.dumps(catalog))
    assert copy.keys_of(None, "customers") == catalog.keys_of(None, "customers")
    assert copy.cache_token == catalog.cache_token
    assert Relation((frozenset({"id"}),)) == pickle.loads(
        pickle.dumps(Relation((frozenset({"id"}),)))
    )
