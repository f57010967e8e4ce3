"""The PII catalog file: validation with file:line, precedence, name defaults, comments."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dbgate.pii.catalog import Catalog, entity_from_comment
from dbgate.pii.catalog_load import CatalogError, load_catalog, parse_catalog
from dbgate.pii.coverage import Coverage
from dbgate.pii.schema import SchemaSnapshot


def problems(text: str) -> list[str]:
    with pytest.raises(CatalogError) as e:
        parse_catalog(text, "pii.yaml")
    return [str(p) for p in e.value.problems]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "pii.yaml:1: file is empty"),
        ("- a\n", "pii.yaml:1: the top level must be a mapping"),
        ("version: 2\n", "pii.yaml:1: unsupported version int '2'"),
        ("colums: {}\n", "pii.yaml:1: unknown key 'colums'; did you mean 'columns'?"),
        (
            "columns:\n  public.t.c: e-mail\n",
            "pii.yaml:2: columns 'public.t.c': bad entity name 'e-mail'",
        ),
        (
            "columns:\n  public.t.c: " + "a" * 64 + "\n",
            "pii.yaml:2: columns 'public.t.c': bad entity name '" + "a" * 64 + "'",
        ),
        (
            "columns:\n  c: email\n",
            "pii.yaml:2: bad column glob in 'columns': pattern 'c' has 1 part(s)",
        ),
        ("columns:\n  a.b.c.d: email\n", "has 4 part(s)"),
        (
            "columns:\n  a.b.c: email\n  A.B.C: phone\n",
            "pii.yaml:3: duplicate pattern 'A.B.C' in 'columns' (first on line 2)",
        ),
        ("columns:\n  'a.\"b\".c': email\n", "contains quotes"),
        ("columns:\n  a.b[.c: email\n", "unclosed '['"),
        ("names:\n  '*_x': none\n", "pii.yaml:2: names '*_x': 'none' is for 'columns' entries"),
        ("names:\n  a.b: email\n", "bad column-name glob in 'names'"),
        ("name_defaults: maybe\n", "pii.yaml:1: 'name_defaults' must be true or false"),
        ("columns: [a]\n", "pii.yaml:1: 'columns' must be a mapping of pattern: entity"),
        (
            "columns:\n  a.b.c: [email]\n",
            "pii.yaml:2: columns 'a.b.c': the entity must be a string",
        ),
        ("columns: {a.b.c: email\n", "invalid YAML"),
    ],
)
def test_bad_catalogs_name_file_and_line(text: str, expected: str) -> None:
    found = problems(text)
    assert any(expected in p for p in found), found


def test_every_problem_is_reported_at_once() -> None:
    found = problems("columns:\n  a.b.c: Bad\n  d: email\nnames:\n  x.y: phone\n")
    assert len(found) == 3


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read catalog"):
        load_catalog(tmp_path / "nope.yaml")


def test_shipped_catalog_covers_the_demo_columns() -> None:
    from dbgate.demo_data import PII_COLUMNS

    cat = load_catalog()
    for table, columns in PII_COLUMNS.items():
        for column in columns:
            entity, why = cat.classify("public", table, column)
            assert entity is not None and "catalog" in why, (table, column)
    assert cat.classify("public", "orders", "status") == (None, "")


def test_precedence_catalog_over_comment_over_names() -> None:
    cat = parse_catalog(
        "columns:\n  public.users.email: none\n  '*.users.notes': pii\nnames:\n  '*_msisdn': phone\n"
    )
    assert cat.classify("public", "users", "email", "pii:email")[0] is None  # switched off
    assert cat.classify("public", "users", "notes")[0] == "pii"
    assert cat.classify("public", "users", "home_msisdn")[0] == "phone"
    assert cat.classify("s", "t", "x", "pii:ssn")[0] == "ssn"  # comment
    assert cat.classify("s", "t", "contact_email")[0] == "email"  # built-in name default
    assert cat.classify("s", "t", "ip_address")[0] == "ip"  # more specific than *_address
    assert cat.classify("s", "t", "Email")[0] == "email"  # case-insensitive


def test_name_defaults_can_be_switched_off() -> None:
    cat = parse_catalog("name_defaults: false\n")
    assert cat.classify("s", "t", "email") == (None, "")
    assert Catalog().classify("s", "t", "email")[0] == "email"


def test_comments_only_add_and_can_be_ignored() -> None:
    entities = Catalog().entities
    assert entity_from_comment("pii:email", entities) == "email"
    assert entity_from_comment("PII: e-mail address", entities) == "pii"
    assert entity_from_comment("pii:none", entities) is None
    assert entity_from_comment("not personal", entities) is None
    assert entity_from_comment("api:email", entities) is None
    assert parse_catalog("comments: false\n").classify("s", "t", "x", "pii:email")[0] is None


def test_a_catalog_column_that_does_not_exist_is_a_warning() -> None:
    cat = parse_catalog(
        "columns:\n  public.customers.emial: email\n  '*.ghosts.*': name\n", "pii.yaml"
    )
    snap = SchemaSnapshot.build({"public.customers": ["id", "email"]})
    cov = Coverage(snap, cat)
    assert cov.warnings == [
        "pii.yaml:2: catalog column 'public.customers.emial' matches no column of the database",
        "pii.yaml:3: catalog pattern '*.ghosts.*' matches no column of the database",
    ]
    assert cov.relation_lins(snap.lookup("customers")[0])[1].entities == {"email"}


def test_a_column_the_snapshot_does_not_know_is_not_clean() -> None:
    """A RowDescription names a column by its attribute number: one past the
    snapshot's last (added since, by a migration that did not pass through dbgate) is
    not known to be clean (None: the plan tokenizes it, as for an unknown relation)."""
    snap = SchemaSnapshot.build({"public.tags": ["id", "label"]})
    cov = Coverage(snap, Catalog())
    oid = snap.lookup("tags")[0].oid
    assert cov.attr(oid, 2) is not None and cov.attr(oid, 2).clean
    assert cov.attr(oid, 3) is None
    assert cov.attr(oid + 100, 1) is None  # a relation it does not know


def test_a_foreign_key_links_the_values_of_its_columns() -> None:
    """``buyer REFERENCES customers(email)`` holds e-mails; so does the column a PII
    column references, and every column a chain of keys links to them. An explicit
    ``none`` still switches one off; clean keys (``customer_id -> id``) stay clean."""
    cat = parse_catalog("columns:\n  public.archive.addr: none\n", "pii.yaml")
    snap = SchemaSnapshot.build(
        {
            "public.customers": ["id", "email"],
            "public.orders": ["id", "customer_id", "buyer"],
            "public.registry": ["addr", "kind"],
            "public.refs": ["k"],
            "public.archive": ["addr"],
        },
        foreign_keys=[
            ("public.orders.customer_id", "public.customers.id"),
            ("public.orders.buyer", "public.customers.email"),
            ("public.customers.email", "public.registry.addr"),
            ("public.refs.k", "public.registry.addr"),
            ("public.archive.addr", "public.refs.k"),
        ],
    )
    cov = Coverage(snap, cat)

    def entities(rel: str) -> list[set[str]]:
        return [set(lin.entities) for lin in cov.relation_lins(snap.lookup(rel)[0])]

    assert entities("orders") == [set(), set(), {"email"}]
    assert entities("registry") == [{"email"}, set()]
    assert entities("refs") == [{"email"}]
    assert entities("archive") == [set()]
    why = {(d.relation.name, d.column): d.why for d in cov.decisions}
    assert why[("orders", "buyer")] == (
        "a foreign key or table inheritance links it to public.customers.email"
    )


def test_a_parent_table_holds_what_its_children_hold() -> None:
    """A read of a parent reads its partitions' rows: a column a partition's comment
    (or a catalog entry matching only partitions) marks is PII in the parent, and so in
    the other partitions, whatever it is called."""
    built = SchemaSnapshot.build(
        {"public.events": ["id", "note"], "public.events_a": ["id", "note"]},
        comments={"public.events_a.note": "pii:email"},
    )
    parent = built.lookup("events")[0]
    relations = dict(built.relations)
    for name in ("events_a", "events_b"):
        kid = built.lookup("events_a")[0]
        oid = kid.oid if name == "events_a" else kid.oid + 10
        relations[oid] = dataclasses.replace(
            kid, oid=oid, name=name, parents=(parent.oid,), row_type=oid + 1
        )
        if name == "events_b":
            relations[oid] = dataclasses.replace(
                relations[oid],
                columns=tuple(dataclasses.replace(c, comment=None) for c in kid.columns),
            )
    snap = SchemaSnapshot(relations=relations, assume_builtin_functions=True)
    cov = Coverage(snap, Catalog())
    for name in ("events", "events_a", "events_b"):
        lins = cov.relation_lins(snap.lookup(name)[0])
        assert [set(lin.entities) for lin in lins] == [set(), {"email"}], name


def test_a_column_a_full_text_trigger_fills_holds_its_sources() -> None:
    """``tsvector_update_trigger(tsv, 'pg_catalog.simple', title, body)`` stores the
    words of ``title`` and ``body`` in ``tsv``; one fed by clean columns stays clean,
    and a catalog entry on the filled column still wins."""
    cat = parse_catalog("columns:\n  public.docs.tsv3: none\n", "pii.yaml")
    built = SchemaSnapshot.build(
        {"public.docs": ["title", "body", "tsv", "tsv2", "tsv3"]},
        comments={"public.docs.body": "pii:email"},
    )
    rel = built.lookup("docs")[0]
    fed = (("tsv", ("title", "body")), ("tsv2", ("title",)), ("tsv3", ("body",)))
    snap = SchemaSnapshot(
        relations={rel.oid: dataclasses.replace(rel, fed=fed)}, assume_builtin_functions=True
    )
    cov = Coverage(snap, cat)
    lins = cov.relation_lins(snap.lookup("docs")[0])
    assert [set(lin.entities) for lin in lins] == [set(), {"email"}, {"email"}, set(), set()]
    why = {d.column: d.why for d in cov.decisions}
    assert why["tsv"] == "a full-text trigger fills it from email"


def test_a_vector_of_a_table_with_triggers_holds_the_rows_pii() -> None:
    """A ``tsvector`` column no expression or built-in trigger is known to fill, in a
    table with triggers of its own, is taken to hold the row's PII (a trigger's
    ``to_tsvector(NEW.body)``); without triggers, or PII in the row, it stays clean."""
    built = SchemaSnapshot.build(
        {
            "public.docs": ["id", "full_name", ("search", 3614)],
            "public.notes": ["id", "body", ("search", 3614)],
            "public.plain": ["id", "full_name", ("search", 3614)],
        },
        triggers=["public.docs", "public.notes"],
    )
    cov = Coverage(built, Catalog())

    def entities(rel: str) -> list[set[str]]:
        return [set(lin.entities) for lin in cov.relation_lins(built.lookup(rel)[0])]

    assert entities("docs") == [set(), {"name"}, {"name"}]
    assert cov.relation_lins(built.lookup("docs")[0])[2].unknown
    assert entities("notes") == [set(), set(), set()]
    assert entities("plain") == [set(), {"name"}, set()]


def test_a_default_that_calls_a_function_of_the_database_is_unknown() -> None:
    """``note text DEFAULT pick()`` stores whatever ``pick()`` read: unknown, unless
    the catalog names the column."""
    cat = parse_catalog("columns:\n  public.t.ref: none\n", "pii.yaml")
    built = SchemaSnapshot.build({"public.t": ["id", "note", "ref"]})
    rel = built.lookup("t")[0]
    cols = tuple(dataclasses.replace(c, coded_default=c.name != "id") for c in rel.columns)
    snap = SchemaSnapshot(
        relations={rel.oid: dataclasses.replace(rel, columns=cols)},
        assume_builtin_functions=True,
    )
    lins = Coverage(snap, cat).relation_lins(snap.lookup("t")[0])
    assert [lin.clean for lin in lins] == [True, False, True]
    assert lins[1].unknown


def test_a_default_of_postgresqls_own_is_read_by_lineage() -> None:
    """``DEFAULT current_query()`` keeps statement texts (literals and all): unknown;
    ``now()``, a sequence's next value and constants stay clean."""
    built = SchemaSnapshot.build({"public.audit": ["id", "q", "made", "note"]})
    rel = built.lookup("audit")[0]
    defaults = {
        "id": "nextval('audit_id_seq'::regclass)",
        "q": "current_query()",
        "made": "now()",
        "note": "'x'::text",
    }
    cols = tuple(dataclasses.replace(c, default=defaults[c.name]) for c in rel.columns)
    snap = SchemaSnapshot(
        relations={rel.oid: dataclasses.replace(rel, columns=cols)},
        assume_builtin_functions=True,
    )
    cov = Coverage(snap, Catalog())
    lins = cov.relation_lins(snap.lookup("audit")[0])
    assert [lin.clean for lin in lins] == [True, False, True, True]
    why = {d.column: d.why for d in cov.decisions}
    assert why["q"] == "its default is made by an expression that could not be followed"


def test_a_default_that_calls_code_does_not_spread_along_foreign_keys() -> None:
    """``created_by int DEFAULT current_user_id() REFERENCES users(id)`` holds ids of
    users: clean as ``users.id`` is; and ``users.id DEFAULT make_id()`` is unknown
    itself without making every key to it unknown."""
    built = SchemaSnapshot.build(
        {
            "public.users": ["id", "email"],
            "public.orders": ["id", "created_by"],
            "public.notes": ["id", "author"],
        },
        foreign_keys=[
            ("public.orders.created_by", "public.users.id"),
            ("public.notes.author", "public.users.id"),
        ],
    )
    coded = {("users", "id"), ("orders", "created_by")}
    relations = {
        oid: dataclasses.replace(
            rel,
            columns=tuple(
                dataclasses.replace(c, coded_default=(rel.name, c.name) in coded)
                for c in rel.columns
            ),
        )
        for oid, rel in built.relations.items()
    }
    snap = SchemaSnapshot(
        relations=relations, foreign_keys=built.foreign_keys, assume_builtin_functions=True
    )
    cov = Coverage(snap, Catalog())

    def unknown(rel: str) -> list[bool]:
        return [lin.unknown for lin in cov.relation_lins(snap.lookup(rel)[0])]

    assert unknown("users") == [True, False]
    assert unknown("orders") == [False, False]
    assert unknown("notes") == [False, False]


@pytest.mark.parametrize(
    ("column", "entity"),
    [
        ("emails", "email"),
        ("work_emails", "email"),
        ("phonenumber", "phone"),
        ("phones", "phone"),
        ("tel", "phone"),
        ("ssn_last4", "ssn"),
        ("card_no", "card"),
        ("cvv", "card"),
        ("address1", "address"),
        ("fname", "name"),
        ("lname", "name"),
        ("ipaddr", "ip"),
        ("hotel_tel", None),
        ("telemetry", None),
        ("addresses_count", None),
        # an ORM's quoted camelCase, and other separators, read as words
        ("emailAddress", "email"),
        ("contactEmail", "email"),
        ("e-mail", "email"),
        ("dateOfBirth", "birth_date"),
        ("mobileNumber", "phone"),
        ("homeAddress", "address"),
        ("postalCode", "postal_code"),
        ("socialSecurityNumber", "ssn"),
        ("creditCardNumber", "card"),
        ("nationalId", "national_id"),
        ("IPAddress", "ip"),
        ("first name", "name"),
        ("createdAt", None),
        ("userId", None),
        ("ZIP", "postal_code"),
        # the same unquoted: PostgreSQL folds emailAddress to emailaddress
        ("emailaddress", "email"),
        ("useremail", "email"),
        ("homephone", "phone"),
        ("mobilenumber", "phone"),
        ("dateofbirth", "birth_date"),
        ("postalcode", "postal_code"),
        ("cardnumber", "card"),
        ("socialsecuritynumber", "ssn"),
        ("homeaddress", "address"),
        ("ipaddress", "ip"),
        ("middlename", "name"),
        ("emailverified", None),
        ("createdat", None),
    ],
)
def test_common_spellings_of_pii_names_are_defaults(column: str, entity: str | None) -> None:
    """Plural, run-together, numbered and camelCase spellings of the default names."""
    assert Catalog().classify("public", "t", column, None)[0] == entity
