"""The key loader against a real server: which indexes prove a row unique, and which do not.

Every kind of unique index PostgreSQL has is created in a scratch database; the
loader query (``dbgate.policy.keys.KEYS_QUERY``) runs there, and for each kind the
test shows on the server why it is — or is not — a proof: an equality on a key the
catalog lists matches at most one row, and for every index the catalog leaves out
the server can be made to return two rows for one "key" value.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from dbgate.policy.classify import classify, clear_cache
from dbgate.policy.keys import KEYS_QUERY, KeyCatalog, key_catalog_from_rows

SCHEMA = """
CREATE TABLE pk (id int PRIMARY KEY, v text);
CREATE TABLE uq (id int, code text UNIQUE, v text);
CREATE TABLE composite (a int, b int, v text, UNIQUE (a, b));
CREATE TABLE nulls (k int UNIQUE, v text);
CREATE TABLE partial (id int, k int, v text);
CREATE UNIQUE INDEX partial_k ON partial (k) WHERE v = 'live';
CREATE TABLE expr (id int, email text);
CREATE UNIQUE INDEX expr_lower ON expr (lower(email));
CREATE TABLE deferred (k int UNIQUE DEFERRABLE INITIALLY DEFERRED, v text);
CREATE TABLE included (k int, extra int, v text);
CREATE UNIQUE INDEX included_k ON included (k) INCLUDE (extra);
CREATE TABLE parent (id int PRIMARY KEY, v text);
CREATE TABLE child () INHERITS (parent);
CREATE TABLE part (id int, region text, v text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE part_eu PARTITION OF part FOR VALUES IN ('eu');
CREATE TABLE part_us PARTITION OF part FOR VALUES IN ('us');
CREATE VIEW pk_view AS SELECT * FROM pk;
CREATE SCHEMA other;
CREATE TABLE other.pk (id int, v text);
CREATE MATERIALIZED VIEW mv AS SELECT id, v FROM pk;
CREATE UNIQUE INDEX mv_id ON mv (id);
INSERT INTO pk VALUES (1, 'a'), (2, 'b');
INSERT INTO uq VALUES (1, 'x', 'a'), (2, 'y', 'b');
INSERT INTO composite VALUES (1, 1, 'a'), (1, 2, 'b');
INSERT INTO nulls VALUES (NULL, 'a'), (NULL, 'b'), (1, 'c');
INSERT INTO partial VALUES (1, 7, 'live'), (2, 7, 'dead'), (3, 7, 'dead');
INSERT INTO expr VALUES (1, 'A@x'), (2, 'b@x');
INSERT INTO included VALUES (1, 1, 'a'), (2, 1, 'b');
INSERT INTO parent VALUES (1, 'parent');
INSERT INTO child VALUES (1, 'child');
INSERT INTO part VALUES (1, 'eu', 'a'), (1, 'us', 'b');
INSERT INTO other.pk VALUES (1, 'x'), (1, 'y');
REFRESH MATERIALIZED VIEW mv;
CREATE TABLE padded (k varchar(10) UNIQUE);
INSERT INTO padded VALUES ('x'), ('x '), ('x  ');
CREATE TABLE acct (id int PRIMARY KEY, code text UNIQUE, v text);
CREATE TABLE acct_item (id int PRIMARY KEY, acct_id int REFERENCES acct (id) ON DELETE CASCADE,
                        code text REFERENCES acct (code) ON UPDATE SET NULL);
CREATE TABLE acct_note (acct_id int REFERENCES acct (id));  -- NO ACTION: changes nothing
INSERT INTO acct VALUES (1, 'a', 'x'), (2, 'b', 'y');
INSERT INTO acct_item SELECT g, 1, 'a' FROM generate_series(1, 50) g;
CREATE TABLE part_note (id int, region text,
                        FOREIGN KEY (id, region) REFERENCES part_eu ON DELETE CASCADE);
CREATE TABLE ruled (id int PRIMARY KEY, v text);
CREATE TABLE ruled_log (id int);
CREATE RULE ruled_delete AS ON DELETE TO ruled DO ALSO DELETE FROM ruled_log;
INSERT INTO ruled VALUES (1, 'a'), (2, 'b');
INSERT INTO ruled_log SELECT g FROM generate_series(1, 50) g;
-- unique under another collation than the column's: equal under one may be several
-- under the other (with ICU, a case-insensitive column over a case-sensitive index)
CREATE TABLE collated (id int, code text COLLATE "C", plain text COLLATE "C" UNIQUE);
CREATE UNIQUE INDEX collated_code ON collated (code COLLATE "POSIX");
"""


@pytest.fixture(scope="module")
def keys_db(pg_server: Any) -> Iterator[str]:
    name = f"keys_{secrets.token_hex(4)}"
    with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    dsn = pg_server.dsn(name)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SCHEMA)  # type: ignore[arg-type]
        yield dsn
    finally:
        with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def catalog(keys_db: str) -> KeyCatalog:
    with psycopg.connect(keys_db) as conn:
        rows = conn.execute(KEYS_QUERY).fetchall()  # type: ignore[arg-type]
    return key_catalog_from_rows(rows, search_path=["$user", "public"], user="postgres")


def _rows(dsn: str, sql: str) -> int:
    with psycopg.connect(dsn) as conn:
        return len(conn.execute(sql).fetchall())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("relation", "keys"),
    [
        ("public.pk", {("id",)}),
        ("public.uq", {("code",)}),
        ("public.composite", {("a", "b")}),
        ("public.nulls", {("k",)}),
        ("public.partial", set()),
        ("public.expr", set()),
        ("public.deferred", set()),
        ("public.included", {("k",)}),
        ("public.part", {("id", "region")}),
        ("public.part_eu", {("id", "region")}),
        ("public.pk_view", set()),
        ("other.pk", set()),
        ("public.mv", {("id",)}),
        ("public.collated", {("plain",)}),
    ],
)
def test_loader_lists_exactly_the_keys_that_prove_uniqueness(
    catalog: KeyCatalog, relation: str, keys: set[tuple[str, ...]]
) -> None:
    schema, name = relation.split(".")
    assert {tuple(sorted(k)) for k in catalog.keys_of(schema, name)} == keys


def test_loader_lists_every_column_to_place_bare_names(catalog: KeyCatalog) -> None:
    assert catalog.columns_of("public", "composite") == frozenset({"a", "b", "v"})
    assert catalog.columns_of(None, "pk_view") == frozenset({"id", "v"})
    assert catalog.columns_of(None, "nowhere") == frozenset()


def test_loader_names_the_ancestors_whose_rows_a_partition_or_child_holds(
    catalog: KeyCatalog,
) -> None:
    for name, accounts in [
        ("part_eu", ("public.part",)),
        ("part_us", ("public.part",)),
        ("child", ("public.parent",)),
        ("part", ()),
        ("parent", ()),
        ("pk", ()),
    ]:
        rel = catalog.relation("public", name)
        assert rel is not None and rel.accounts == accounts, name


def test_inheritance_parent_keys_hold_only_with_only(catalog: KeyCatalog) -> None:
    assert catalog.keys_of(None, "parent") == ()
    assert catalog.keys_of(None, "parent", only=True) == (frozenset({"id"}),)


@pytest.mark.parametrize(
    ("sql", "bound"),
    [
        ("SELECT * FROM pk WHERE id = 1", 1),
        ("SELECT * FROM uq WHERE code = 'x'", 1),
        ("SELECT * FROM composite WHERE a = 1 AND b = 2", 1),
        ("SELECT * FROM nulls WHERE k = 1", 1),
        ("SELECT * FROM included WHERE k = 1", 1),
        ("SELECT * FROM part WHERE id = 1 AND region = 'eu'", 1),
        ("SELECT * FROM ONLY parent WHERE id = 1", 1),
        ("SELECT * FROM mv WHERE id = 2", 1),
    ],
)
def test_proven_statements_return_no_more_than_their_bound(
    keys_db: str, catalog: KeyCatalog, sql: str, bound: int
) -> None:
    assert classify(sql, keys=catalog).read_bound == bound
    assert 1 <= _rows(keys_db, sql) <= bound


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM partial WHERE k = 7",  # the partial index covers only live rows
        "SELECT * FROM expr WHERE email ILIKE 'a@x' OR email = 'b@x'",
        "SELECT * FROM parent WHERE id = 1",  # the child's row too
        "SELECT * FROM part WHERE id = 1",  # half of the composite key
        "SELECT * FROM other.pk WHERE id = 1",
        "SELECT * FROM nulls WHERE k IS NULL",
        "SELECT * FROM included WHERE extra = 1",  # INCLUDE columns are not unique
        "SELECT * FROM padded WHERE k = 'x'::char(3)",  # bpchar ignores trailing spaces
        "SELECT * FROM padded WHERE k = ANY('{x}'::bpchar[])",
    ],
)
def test_unproven_statements_can_return_several_rows(
    keys_db: str, catalog: KeyCatalog, sql: str
) -> None:
    assert classify(sql, keys=catalog).read_bound is None
    assert _rows(keys_db, sql) >= 2


def test_a_deferred_unique_constraint_holds_duplicates_inside_a_transaction(
    keys_db: str, catalog: KeyCatalog
) -> None:
    sql = "SELECT * FROM deferred WHERE k = 5"
    assert classify(sql, keys=catalog).read_bound is None
    with psycopg.connect(keys_db) as conn:
        conn.execute("INSERT INTO deferred VALUES (5, 'a'), (5, 'b')")
        assert len(conn.execute(sql).fetchall()) == 2  # type: ignore[arg-type]
        conn.rollback()


def test_transform_null_equals_makes_key_equals_null_match_every_null_key(
    keys_db: str, catalog: KeyCatalog
) -> None:
    """``k = NULL`` under transform_null_equals is ``k IS NULL``: several rows of a
    unique key that allows NULLs. The proof pins nothing with NULL, and the setting is
    ``escape``. (The normalized cache gives ``k = NULL`` the entry of ``k = 1``, which
    is right while the setting is off: then it matches no row.)"""
    sql = "SELECT * FROM nulls WHERE k = NULL"
    clear_cache()
    assert classify(sql, keys=catalog).read_bound is None
    assert "escape" in classify("SET transform_null_equals = on").categories
    with psycopg.connect(keys_db) as conn:
        conn.execute("SET transform_null_equals = on")
        assert len(conn.execute(sql).fetchall()) == 2  # type: ignore[arg-type]


def test_a_write_of_a_table_with_rules_runs_statements_its_tag_does_not_count(
    keys_db: str, catalog: KeyCatalog
) -> None:
    ruled = catalog.relation("public", "ruled")
    assert ruled is not None and ruled.has_rules
    view = catalog.relation("public", "pk_view")  # a view's own _RETURN rule is not one
    assert view is not None and not view.has_rules
    sql = "DELETE FROM ruled WHERE id = 1"
    c = classify(sql, keys=catalog)
    assert c.write_bound is None and not c.statements[0].writes_counted
    with psycopg.connect(keys_db) as conn:
        assert conn.execute(sql).rowcount == 1  # type: ignore[arg-type]
        assert conn.execute("SELECT count(*) FROM ruled_log").fetchone() == (0,)
        conn.rollback()


def test_loader_lists_the_foreign_keys_that_cascade(catalog: KeyCatalog) -> None:
    acct = catalog.relation("public", "acct")
    assert acct is not None and acct.cascades_delete
    assert acct.cascade_update_columns == frozenset({"code"})
    # a DELETE of the partitioned table deletes its partitions' rows: their keys count
    for name in ("part", "part_eu"):
        rel = catalog.relation("public", name)
        assert rel is not None and rel.cascades_delete, name
    for name in ("acct_item", "acct_note", "pk", "part_us"):
        rel = catalog.relation("public", name)
        assert rel is not None and not rel.cascades_delete and not rel.cascade_update_columns


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM acct WHERE id = 1",
        "UPDATE acct SET code = 'c' WHERE id = 1",
        "MERGE INTO acct a USING (VALUES (1)) v(id) ON a.id = v.id WHEN MATCHED THEN DELETE",
    ],
)
def test_a_write_that_cascades_changes_rows_its_tag_does_not_count(
    keys_db: str, catalog: KeyCatalog, sql: str
) -> None:
    """The tag says one row; the foreign keys change fifty more. Such a write has no
    proven bound and its tag does not count its changes: a change limit holds it."""
    c = classify(sql, keys=catalog)
    assert c.write_bound is None
    assert not c.statements[0].writes_counted
    with psycopg.connect(keys_db) as conn:
        before = conn.execute("SELECT count(*) FROM acct_item WHERE acct_id = 1 AND code = 'a'")
        assert before.fetchone() == (50,)
        cur = conn.execute(sql)  # type: ignore[arg-type]
        assert cur.rowcount == 1
        after = conn.execute("SELECT count(*) FROM acct_item WHERE acct_id = 1 AND code = 'a'")
        assert after.fetchone() == (0,)
        conn.rollback()


@pytest.mark.parametrize(
    "sql",
    ["UPDATE acct SET v = 'z' WHERE id = 1", "DELETE FROM acct_item WHERE id = 1"],
)
def test_writes_that_cascade_nothing_keep_their_proof(catalog: KeyCatalog, sql: str) -> None:
    c = classify(sql, keys=catalog)
    assert c.write_bound == 1
    assert c.statements[0].writes_counted
