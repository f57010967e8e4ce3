"""Lineage as a table: SQL in, the PII (or unknown) of each output column out.

Hand-made schema (no server), so this runs in microseconds per case; the real-server
proof is tests/integration/pii/test_queries.py.
"""

from __future__ import annotations

import pytest

from dbgate.pii.catalog_load import load_catalog
from dbgate.pii.coverage import Coverage
from dbgate.pii.lineage import analyze
from dbgate.pii.schema import Column, Relation, SchemaSnapshot


def _schema() -> SchemaSnapshot:
    snap = SchemaSnapshot.build(
        {
            "public.customers": [
                "id",
                "full_name",
                "email",
                "phone",
                "ssn",
                ("birth_date", 1082),
                "address",
            ],
            "public.orders": ["id", "customer_id", "total", "status"],
            "public.payments": ["id", "order_id", "card_number", "amount"],
            "other.customers": ["id", "nickname"],
        }
    )
    rels = dict(snap.relations)
    rels[900] = Relation(
        900,
        "public",
        "v_mail",
        "v",
        901,
        (Column("id", 1, 20), Column("m", 2, 25)),
        "SELECT id, upper(email) AS m FROM customers",
    )
    return SchemaSnapshot(relations=rels, assume_builtin_functions=True)


COV = Coverage(_schema(), load_catalog())

# sql -> one string per output column: entities joined by "+", "-" clean, "?" unknown
CASES = [
    ("select id, email from customers", ["-", "email"]),
    ("select * from payments", ["-", "-", "card", "-"]),
    ("select lower(email), id + 1 from customers", ["email", "-"]),
    ("select full_name || phone from customers", ["name+phone"]),
    ("select count(email), count(*) from customers", ["-", "-"]),
    ("select c from customers c", ["address+birth_date+email+name+phone+ssn"]),
    ("select row_to_json(c)::text from customers c", ["address+birth_date+email+name+phone+ssn"]),
    ("select t.* from orders t", ["-", "-", "-", "-"]),
    ("select xmlelement(name p, xmlattributes(email as e), phone) from customers", ["email+phone"]),
    ("select xmlforest(ssn), xmlagg(xmlelement(name x, id)) from customers", ["ssn", "-"]),
    ("select json_object(email: phone), json_arrayagg(ssn) from customers", ["email+phone", "ssn"]),
    ("select jsonb_build_object('a', birth_date) from customers", ["birth_date"]),
    ("select m from v_mail", ["email"]),
    ("select nickname from customers", ["?"]),  # only in a schema off the default path
    ("select id from customers where email = 'x' order by phone", ["-"]),
    (
        "select row_number() over (partition by email), lag(ssn) over () from customers",
        ["-", "ssn"],
    ),
    ("select email from customers union all select status from orders", ["email"]),
    ("select 1 union select 2", ["-"]),
    ("values (1, 'a'), (2, 'b')", ["-", "-"]),
    ("with w as (select ssn s from customers) select s, 1 from w", ["ssn", "-"]),
    ("select s.x from (select phone x from customers) s", ["phone"]),
    ("select (select max(email) from customers)", ["email"]),
    ("select exists (select email from customers)", ["-"]),
    ("select array(select card_number from payments)", ["card"]),
    ("select case when id > 1 then email end from customers", ["email"]),
    ("select case when email like 'a%' then 1 else 0 end from customers", ["email"]),
    ("select grouping(email) from customers group by rollup (email)", ["-"]),
    ("select g from generate_series(1, 3) g", ["-"]),
    (
        "select j.key, j.value from customers c, jsonb_each(to_jsonb(c)) j",
        ["address+birth_date+email+name+phone+ssn"] * 2,
    ),
    ("select * from nosuchtable", "?tail"),
    ("select id, extra from customers", ["-", "?"]),
    ("select $1::text, id from customers", ["$1", "-"]),
    ("insert into orders (status) values ('x') returning id, status", ["-", "-"]),
    (
        "update customers set phone = '1' returning phone, old.phone, new.id",
        ["phone", "phone", "-"],
    ),
    (
        "delete from payments p using orders o where o.id = p.order_id returning p.card_number, o.status",
        ["card", "-"],
    ),
    (
        "merge into customers c using orders o on o.customer_id = c.id when matched then update set phone = '1' returning c.email",
        ["email"],
    ),
    ("select email from customers c join orders o using (id)", ["email"]),
    (
        "with recursive r(n, e) as (select 1, email from customers union all select n + 1, e from r) select e from r",
        ["email"],
    ),
    ("explain select email from customers", ["-"]),
    ("show search_path", ["-"]),
    ("copy (select ssn from customers) to stdout", ["ssn"]),
]


def _show(lin: object) -> str:
    from dbgate.pii.lin import Lin

    assert isinstance(lin, Lin)
    parts = sorted(lin.entities)
    if lin.unknown:
        parts.append("?")
    parts.extend(f"${n}" for n in sorted(lin.params))
    return "+".join(parts) or "-"


@pytest.mark.parametrize(("sql", "expected"), CASES, ids=[c[0][:50] for c in CASES])
def test_lineage_table(sql: str, expected: list[str] | str) -> None:
    analysis = analyze(sql, COV)
    outs = [s.output for s in analysis.statements if s.output is not None]
    assert len(outs) == 1, analysis.statements
    out = outs[0]
    if expected == "?tail":
        assert out.tail is not None and out.tail.unknown and analysis.unknown_reasons
        return
    assert out.tail is None
    assert [_show(x) for x in out.columns] == expected


def test_unqualified_names_take_every_schema() -> None:
    out = analyze("select id from customers", COV).statements[0].output
    assert out is not None and _show(out.columns[0]) == "-"
    # the other schema's customers has no PII, public's email is PII: union
    assert (
        _show(analyze("select email from other.customers", COV).statements[0].output.columns[0])
        == "?"
    )  # type: ignore[union-attr]


def test_parse_errors_and_internal_errors_fail_closed() -> None:
    a = analyze("selec email fro customers", COV)
    assert (
        a.parse_error
        and a.statements[0].output is not None
        and a.statements[0].output.tail is not None
    )


def test_opaque_functions_and_readers_are_unknown() -> None:
    snap = SchemaSnapshot(relations=_schema().relations, assume_builtin_functions=False)
    cov = Coverage(snap, load_catalog())
    a = analyze("select my_func(id), query_to_xml('select 1', true, true, '') from customers", cov)
    cols = a.statements[0].output.columns  # type: ignore[union-attr]
    assert all(c.unknown for c in cols) and len(a.unknown_reasons) == 2


def test_writes_of_pii_into_plain_places_are_reported() -> None:
    for sql in (
        "insert into orders (status) select email from customers",
        "update orders set status = (select phone from customers limit 1)",
        "create table t as select ssn from customers",
        "select email into newtable from customers",
        "select set_config('a.b', email, false) from customers",
        "copy (select email from customers) to '/tmp/x'",
    ):
        assert analyze(sql, COV).pii_writes, sql
    for sql in (
        "insert into customers (email) select email from customers",
        "update customers set phone = phone",
        "create materialized view mv as select email from customers",
        "insert into orders (status) select status from orders",
    ):
        assert not analyze(sql, COV).pii_writes, sql


def test_cursors_and_prepared_statements_follow_the_session() -> None:
    class Session:
        def __init__(self) -> None:
            self.cursors: dict[str, object] = {}

        def cursor(self, name: str) -> object:
            return self.cursors.get(name)

        def prepared(self, name: str) -> object:
            return None

    s = Session()
    a = analyze("declare c cursor for select id, ssn from customers", COV, s)  # type: ignore[arg-type]
    s.cursors.update(a.declares)
    out = analyze("fetch 10 from c", COV, s).statements[0].output  # type: ignore[arg-type]
    assert out is not None and [_show(x) for x in out.columns] == ["-", "ssn"]
    unknown = analyze("fetch 10 from other", COV, s)  # type: ignore[arg-type]
    assert unknown.unknown_reasons and unknown.statements[0].output.tail is not None  # type: ignore[union-attr]
