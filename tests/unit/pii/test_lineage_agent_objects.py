"""Objects an agent may create (or an approver let it create as ordinary DDL) that would
keep PII where the catalog does not find it, or take a column's mark away: writes
through a view into the plain column behind it, a rule's or a SQL function's writes,
``ALTER COLUMN … TYPE … USING``, a token in a sub-select of a part the server echoes
or stores, renames and comments. Hand-made schema (no server);
tests/integration/pii/test_hunt_agent_objects.py runs them against a real one.
"""

from __future__ import annotations

import pytest

from dbgate.pii.catalog_load import load_catalog
from dbgate.pii.coverage import Coverage
from dbgate.pii.lineage import analyze
from dbgate.pii.schema import Column, Relation, SchemaSnapshot

TOKEN = "tok_email_h0123456789abcdef0123456789abcdef"


def _snapshot(contact_comment: str | None = "pii:email") -> SchemaSnapshot:
    base = SchemaSnapshot.build(
        {
            "public.customers": ["id", "full_name", "email", "phone"],
            "public.memos": [("id", 23), "body"],
            "public.marked": [("id", 23), "contact", "mobile", "memo"],
        },
        comments={"public.marked.contact": contact_comment} if contact_comment else None,
    )
    rels = dict(base.relations)
    memos = next(r for r in rels.values() if r.name == "memos")

    def view(oid: int, name: str, cols: list[str], definition: str) -> None:
        columns = tuple(Column(c, i, 25) for i, c in enumerate(cols, start=1))
        rels[oid] = Relation(oid, "public", name, "v", oid + 1, columns, definition)

    view(
        900, "memo_view", ["id", "email"], f" SELECT id,\n    body AS email\n   FROM {memos.name};"
    )
    view(
        902,
        "cust_view",
        ["id", "email"],
        " SELECT id,\n    email\n   FROM customers\n  WHERE id > 0;",
    )
    view(904, "cust_view2", ["id", "email"], " SELECT id,\n    email\n   FROM cust_view;")
    view(
        906,
        "joined_view",
        ["id", "email"],
        " SELECT c.id, m.body AS email FROM customers c, memos m;",
    )
    return SchemaSnapshot(relations=rels, functions={}, assume_builtin_functions=True)


CATALOG = load_catalog()
COV = Coverage(_snapshot(), CATALOG)

HELD = [
    # a view column PII by its name, stored in a plain one
    "insert into memo_view (id, email) select id, email from customers where id = 1",
    "update memo_view set email = c.email from customers c where c.id = 1 and memo_view.id = 1",
    # a view column no plain base column stands behind
    "insert into joined_view (id, email) select id, email from customers where id = 1",
    # a rule's and a SQL function's writes
    "create rule r as on insert to memos do also insert into memos select 1, email from customers",
    "create rule r as on insert to customers do also insert into memos values (new.id, new.email)",
    "create function f() returns void language sql as 'insert into memos select 1, email from customers'",
    "create procedure p() language sql begin atomic insert into memos select 1, email from customers; end",
    # a type change rewriting the rows
    "alter table memos alter column body type text using (select email from customers limit 1)",
    "alter table customers alter column email type text using upper(email)",
    # a mark taken away
    "comment on column marked.contact is ''",
    "comment on column marked.contact is null",
    "alter table marked rename column mobile to line2",
    # renamed to another PII name, or the table renamed: a catalog entry may name it
    "alter table marked rename column mobile to mobile_phone",
    "alter table marked rename to marked2",
]

NOT_HELD = [
    "insert into cust_view (id, email) select id, email from customers where id = 1",
    "insert into cust_view2 (id, email) select id, email from customers where id = 1",
    "insert into memo_view (id, email) values (1, 'plain')",
    "create rule r as on insert to memos do also insert into memos values (new.id, 'x')",
    "create function f() returns void language sql as 'insert into memos values (1, ''x'')'",
    "alter table memos alter column id type bigint using id::bigint",
    "comment on column marked.contact is 'pii:phone'",
    "comment on column marked.memo is 'what it says'",
]


@pytest.mark.parametrize("sql", HELD)
def test_held(sql: str) -> None:
    assert analyze(sql, COV).pii_writes, sql


@pytest.mark.parametrize("sql", NOT_HELD)
def test_not_held(sql: str) -> None:
    assert analyze(sql, COV).pii_writes == [], sql


REFUSED = [
    f"insert into memo_view values (1, '{TOKEN}')",
    f"explain select 1 from memos where id in (select id from customers where email = '{TOKEN}')",
    f"explain select (select id from customers where email = '{TOKEN}')",
    f"create policy p on memos using (exists (select 1 from customers where email = '{TOKEN}'))",
    f"create function f() returns bigint language sql return (select id from customers where email = '{TOKEN}')",
    f"create function f() returns void language sql as $$ insert into customers (id, email) values (1, '{TOKEN}') $$",
    f"create rule r as on insert to memos do also insert into customers (id, email) values (1, '{TOKEN}')",
]


@pytest.mark.parametrize("sql", REFUSED)
def test_a_token_there_is_refused(sql: str) -> None:
    sites = analyze(sql, COV).token_sites
    assert sites and not any(s.allowed for s in sites), sql


def test_a_token_in_a_reads_sub_select_and_through_a_view_of_pii_is_resolved() -> None:
    for sql in (
        f"select 1 from memos where id in (select id from customers where email = '{TOKEN}')",
        f"insert into cust_view values (1, '{TOKEN}')",
    ):
        sites = analyze(sql, COV).token_sites
        assert sites and all(s.allowed for s in sites), sql


def test_a_column_found_pii_stays_pii_when_its_mark_goes() -> None:
    """The next snapshot's coverage keeps what the last one found in the same relation
    and attribute number (a new comment, a rename keep both)."""
    unmarked = _snapshot(contact_comment="")
    marked = next(r for r in unmarked.relations.values() if r.name == "marked")
    assert Coverage(unmarked, CATALOG).attr(marked.oid, 2).clean  # the comment is gone
    kept = Coverage(unmarked, CATALOG, kept=COV.kept_from(unmarked))
    assert kept.attr(marked.oid, 2).entities == frozenset({"email"})
    assert kept.attr(marked.oid, 4).clean  # memo was never PII
