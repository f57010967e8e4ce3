"""The plan cache's second level: one analysis for every text of a shape (literals masked).

What must hold (dbgate/pii/plan_cache.py): an analysis served from a shape is the very
analysis a fresh walk of that text gives, for any literal values; a text with a token
in it is never served from (nor stored under) a shape; nothing a shape would hide
(a refuted key, a parse error, a session-bound statement) is shared; and a new schema
snapshot or PII catalog empties the cache, so the next text is planned afresh.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbgate.pii.catalog_load import load_catalog
from dbgate.pii.lineage import analyze
from dbgate.pii.plan_cache import (
    LONG_CHARS,
    LONG_ENTRIES,
    MAX_CACHED_SQL,
    PlanCache,
    shape_holds,
    shape_of,
)
from dbgate.pii.room import PiiRoom, PiiSettings
from dbgate.pii.schema import SchemaSnapshot
from dbgate.pii.tokens import Key, Keyring, Tokenizer
from dbgate.policy.literals import spans
from tests.integration.pii.test_queries import BINARY, SIMPLE
from tests.unit.pii.test_lineage import CASES, _schema

CATALOG = load_catalog()
TOKENIZER = Tokenizer(Keyring([Key("k", b"k" * 32)]))
SNAPSHOT = _schema()
A_TOKEN = TOKENIZER.token("email", b"ann@example.org")

#: Literals in the places the walker treats differently: outputs, filters, writes into
#: PII and plain columns, settings, notifications, COPY options, cursors, EXPLAIN.
EXTRA = [
    "select id, email from customers where id = 42",
    "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;",
    "select email, 'x' as tag, 1.5, -2, -3.25 from customers where id in (1, 2, 3) limit 10 offset 5",
    "select id from customers where email = 'ann@example.org' and phone like '+1%'",
    "select case when id > 10 then email else 'none' end from customers where id < 99",
    "select substring(ssn from 8 for 4), left(phone, 4) from customers",
    "select coalesce(email, 'n/a') || ' <' || full_name || '>' from customers where id = 7",
    "select to_char(birth_date, 'YYYY-MM'), date '2020-01-01', interval '3 days' from customers",
    "insert into customers (id, email, phone) values (1, 'a@b.c', '555')",
    "insert into orders (id, status) values (1, 'paid') returning id, status",
    "update customers set phone = '1' where id = 3 returning email",
    "update orders set status = 'x' where customer_id = 5",
    "delete from payments where id = 9 returning card_number",
    "select set_config('app.user', 'bob', false), id from customers where id = 1",
    "select pg_notify('chan', 'hello') from customers where id = 2",
    "select id from customers where email = 'set_config' and id = 1",
    "select id from customers where email = 'pg_notify(x)'",
    "copy (select email, id from customers where id < 10) to stdout with (format csv, delimiter ';')",
    "copy customers (id, email) to stdout with (null 'NULL')",
    "explain select email from customers where id = 1",
    "with w as (select email, 1 as one from customers where id = 2) select * from w limit 3",
    "select email from customers where id = 1; select status from orders where id = 2",
    "declare c cursor for select id, ssn from customers where id > 5",
    "fetch 10 from c",
    "prepare p as select email from customers where id = 1",
    "select json_build_object('mail', email, 'n', 1) from customers where id = 3",
    "select (array[email, phone])[1] from customers where id = 1",
    "select id from customers order by 1 limit 2",
    "selec email fro customers where id = 1",
    # names the snapshot lacks, in clauses walked only when filters matter
    "select id from customers where nosuch = 'x' and id = 1",
    "select id from customers c where exists (select 1 from nosuch n where n.a = 'y')",
    # literals PostgreSQL reads otherwise than the mask: never a trusted shape
    "select id, 'a'\n'b' from customers",
    "select id -5, - 5 from customers",
]

TEMPLATES = sorted(
    {
        sql
        for sql in [c[0] for c in CASES] + [q[0] for q in SIMPLE + BINARY] + EXTRA
        if (spans(sql) or None) is not None
    }
)


def _room(snapshot: SchemaSnapshot = SNAPSHOT, settings: PiiSettings | None = None) -> PiiRoom:
    return PiiRoom(CATALOG, TOKENIZER, settings or PiiSettings(), snapshot)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


_STRING = st.one_of(
    st.text(
        alphabet=st.characters(
            blacklist_categories=("Cs",), blacklist_characters="\x00", max_codepoint=0x2FF
        ),
        max_size=12,
    ),
    st.sampled_from(
        [
            "",
            "'",
            "$1",
            "\\x74ok_",
            "set_config",
            "pg_notify",
            "SET_CONFIG(",
            "tok_",
            A_TOKEN,
            f"a {A_TOKEN} b",
            "TOK_EMAIL_H" + "0" * 32,
            "--",
            "/*",
            "\n",
            "é",
        ]
    ),
)
_INT = st.integers(min_value=0, max_value=999_999_999).map(str)
_DECIMAL = st.tuples(_INT, st.integers(0, 10**6)).map(lambda p: f"{p[0]}.{p[1]}")


def _literal(kind: str) -> st.SearchStrategy[str]:
    """A literal the mask reads as ``kind``: same kind, any value."""
    return {
        "S": _STRING.map(_quote),
        "N": _INT,
        "F": _DECIMAL,
        "M": _INT.map(lambda v: "-" + v),
        "G": _DECIMAL.map(lambda v: "-" + v),
    }[kind]


def _fill(template: str, values: list[str]) -> str:
    found = spans(template)
    assert found is not None
    out, pos = [], 0
    for (start, end, _kind), value in zip(found, values, strict=True):
        out.append(template[pos:start])
        out.append(value)
        pos = end
    out.append(template[pos:])
    return "".join(out)


def _variant(data: Any, template: str) -> str:
    found = spans(template)
    assert found is not None
    return _fill(template, [data.draw(_literal(kind)) for _s, _e, kind in found])


def _fresh(room: PiiRoom, sql: str) -> Any:
    return analyze(sql, room.coverage)  # type: ignore[arg-type]


def _served_from_shape(room: PiiRoom, sql: str) -> tuple[Any, bool]:
    before = room.plans.stats["shape"]
    analysis = room.analysis(sql)
    return analysis, room.plans.stats["shape"] > before


# ----------------------------------------------------------------------------- soundness
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), template=st.sampled_from(TEMPLATES))
def test_a_plan_served_from_a_shape_equals_a_fresh_plan(data: Any, template: str) -> None:
    room = _room()
    for _ in range(3):  # the first plans cold; later ones may come from the shape
        sql = _variant(data, template)
        got, shaped = _served_from_shape(room, sql)
        assert got == _fresh(room, sql), sql
        if shaped:
            assert "tok_" not in sql and not got.token_sites
            assert not room.seen_exactly(sql)  # a fresh literal is not remembered exactly


@pytest.mark.parametrize("template", TEMPLATES, ids=[t[:60] for t in TEMPLATES])
def test_every_verified_shape_serves_its_other_texts(template: str) -> None:
    """The shape level is really used: a second text of a shape whose key PostgreSQL's
    normalize confirms comes from it (unless it may not: session-bound, unparsable)."""
    found = spans(template)
    assert found is not None
    plain = {"S": "'plain'", "N": "17", "F": "1.5", "M": "-17", "G": "-1.5"}
    other = {"S": "'other'", "N": "23", "F": "2.5", "M": "-23", "G": "-2.5"}
    first = _fill(template, [plain[k] for _s, _e, k in found])
    second = _fill(template, [other[k] for _s, _e, k in found])
    room = _room()
    a1 = room.analysis(first)
    a2, shaped = _served_from_shape(room, second)
    shape = shape_of(second)
    shareable = (
        shape is not None
        and shape_holds(shape, second)
        and not a1.parse_error
        and not (a1.declares or a1.prepares or a1.deallocates)
        and not any(s.kind in ("FetchStmt", "ExecuteStmt") for s in a1.statements)
        and not a1.reads_literals  # ORDER BY 2: the literal names an output
    )
    assert shaped == shareable, (first, second)
    assert a2 == _fresh(room, second)


def test_most_templates_have_a_verified_shape() -> None:
    """A test above that never saw the shape level would prove nothing."""
    verified = [
        t for t in TEMPLATES if (shape := shape_of(t)) is not None and shape_holds(shape, t)
    ]
    assert len(TEMPLATES) >= 120
    assert len(verified) >= 0.8 * len(TEMPLATES), sorted(set(TEMPLATES) - set(verified))


def test_the_point_select_of_pgbench_is_served_from_its_shape() -> None:
    room = _room()
    for aid in range(1, 50):
        room.analysis(f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};")
    assert room.plans.stats == {"exact": 0, "shape": 48, "cold": 1}
    assert room.plans.info()["exact_size"] == 1 and room.plans.info()["shape_size"] == 1


# ----------------------------------------------------------------------------- tokens
@pytest.mark.parametrize(
    "text",
    [
        f"select id from customers where email = '{A_TOKEN}'",
        f"select id, email from customers where email = 'x' or email = '{A_TOKEN}'",
        f"insert into orders (id, status) values (1, '{A_TOKEN}')",
        f"select id from customers where email = 'tok_' || '{A_TOKEN[4:]}'",
    ],
)
def test_a_text_with_a_token_is_never_served_from_a_shape(text: str) -> None:
    room = _room()
    primer = text.replace(A_TOKEN, "ann@example.org").replace("'tok_'", "'abcd'")
    room.analysis(primer)
    # another text of the shape: the shape is known and trusted
    room.analysis(primer.replace("ann@", "bob@").replace("'abcd'", "'abce'"))
    assert room.plans.stats["shape"] == 1
    got, shaped = _served_from_shape(room, text)
    assert not shaped and shape_of(text) is None
    assert got == _fresh(room, text)
    if A_TOKEN in text:
        assert got.token_sites, "the token was seen, to be resolved or refused"


def test_tokens_the_mask_cannot_see_make_no_shape() -> None:
    """Escapes spell a token without ``tok_`` in the text: E'' strings have no shape;
    adjacent strings that PostgreSQL joins across a newline refute their key."""
    room = _room()
    hidden = "\\x74ok" + A_TOKEN[3:]
    escaped = f"select id, E'{hidden}' from customers"
    assert shape_of(escaped) is None
    room.analysis(escaped.replace(hidden, "a"))
    room.analysis(escaped.replace(hidden, "b"))
    got, shaped = _served_from_shape(room, escaped)
    assert not shaped and got.token_sites and got.token_sites[0].text == A_TOKEN

    joined = f"select id, 'to'\n'{A_TOKEN[2:]}' from customers"
    shape = shape_of(joined)
    assert shape is not None and not shape_holds(shape, joined)
    room.analysis("select id, 'a'\n'b' from customers")
    got, shaped = _served_from_shape(room, joined)
    assert not shaped and got.token_sites and got.token_sites[0].text == A_TOKEN
    # the refuted key is remembered as such: no text of it is ever served
    _again, shaped = _served_from_shape(room, "select id, 'c'\n'd' from customers")
    assert not shaped


@settings(max_examples=200, deadline=None)
@given(
    cut=st.integers(min_value=1, max_value=3),
    between=st.sampled_from(["\n", " \n  ", "\r\n", "\n-- a comment\n", "\t\n"]),
    before=st.text(alphabet="abc@. ", max_size=6),
    after=st.text(alphabet="xyz@. ", max_size=6),
)
def test_a_token_split_over_joined_strings_is_always_found(
    cut: int, between: str, before: str, after: str
) -> None:
    """PostgreSQL joins string literals separated by a newline: ``'to'`` newline
    ``'k_email_…'`` is a token without ``tok_`` in the text. Its shape never holds, so
    it is planned on its own and the token is found."""
    template = "select id, {} from customers where id = 1"
    room = _room()
    for a, b in ((before, after), (after, before)):  # the shape's other texts first
        room.analysis(template.format(f"{_quote(a)}{between}{_quote(b)}"))
    text = template.format(f"{_quote(A_TOKEN[:cut])}{between}{_quote(A_TOKEN[cut:])}")
    assert "tok_" not in text
    got, shaped = _served_from_shape(room, text)
    assert not shaped
    assert [site.text for site in got.token_sites] == [A_TOKEN]


# ----------------------------------------------------------------------------- what is not shared
def test_what_a_shape_must_not_share_is_planned_per_text() -> None:
    room = _room()
    for sql in (
        "selec email fro customers where id = 1",  # a parse error
        "fetch 5 from c",  # the session's cursor
        "declare c cursor for select email from customers where id = 1",
        f"select email from customers where id = 1 and email <> '{'x' * MAX_CACHED_SQL}'",
        "select email from customers",  # no literal: only its own text is its shape
    ):
        room.analysis(sql)
        _got, shaped = _served_from_shape(room, sql.replace("1", "2").replace("5", "6"))
        assert not shaped, sql
    assert room.plans.info()["shape_size"] == 0


_FROM = " from generate_series(0, 200) g, customers c where c.id = 1"
#: (a text whose literal names an output, that literal for a clean output, for a PII one)
_BY_POSITION = [
    ("select g, abs(g - ascii(substr(c.email, 2, 1))) as d" + _FROM + " order by {} limit 1", 1, 2),
    ("select distinct on ({}) g, ascii(substr(c.email, 2, 1)) - g as d" + _FROM, 1, 2),
    ("select count(*), g % ascii(substr(c.email, 2, 1))" + _FROM + " group by {}", 3, 2),
]


@pytest.mark.parametrize(("sql", "clean", "pii"), _BY_POSITION)
def test_an_output_named_by_its_position_is_planned_per_text(
    sql: str, clean: int, pii: int
) -> None:
    """``ORDER BY 2 LIMIT 1`` chooses by the second output: ``g`` of the row where
    ``abs(g - ascii(...))`` is least is the code, and is tokenized; ``ORDER BY 1``
    does not make ``g`` PII. The texts differ in one literal only, so a plan shared
    by their shape handed the first one's clean ``g`` to the second: raw codes."""
    room = _room()
    first = room.analysis(sql.format(clean))
    assert first.statements[0].output is not None
    assert not first.statements[0].output.columns[0].pii
    second, shaped = _served_from_shape(room, sql.format(pii))
    assert not shaped
    assert second == _fresh(room, sql.format(pii))
    assert second.statements[0].output is not None
    assert second.statements[0].output.columns[0].pii, sql.format(pii)


def test_long_texts_are_remembered_exactly_a_few_and_within_their_characters() -> None:
    """A text over MAX_CACHED_SQL (seconds to trace, in a worker) is found again by its
    own text — its prepared statement's Binds ask — but never by shape, never as a
    decision worth remembering, and a few of them at most."""
    room = _room()
    pad = "x" * MAX_CACHED_SQL

    def text(i: int, size: int = 0) -> str:
        return f"select email from customers where id = {i} and email <> '{pad}{'y' * size}'"

    first = room.analysis(text(0))
    assert room.plans.lookup(text(0))[0] is first
    assert not room.seen_exactly(text(0))
    assert room.plans.lookup(text(1))[0] is None  # another long text: no shape
    for i in range(1, LONG_ENTRIES + 1):
        room.analysis(text(i))
    assert room.plans.info()["long_size"] == LONG_ENTRIES
    assert room.plans.lookup(text(0))[0] is None  # the oldest went
    assert room.plans.lookup(text(LONG_ENTRIES))[0] is not None
    huge = text(99, LONG_CHARS // 2)
    room.analysis(huge)
    assert room.plans.lookup(huge)[0] is not None
    assert room.plans._long_chars <= LONG_CHARS
    room.analysis(text(98, LONG_CHARS))  # over the whole level's budget: not kept
    assert room.plans.lookup(text(98, LONG_CHARS))[0] is None
    room.plans.clear()
    assert room.plans.info()["long_size"] == 0 and room.plans.lookup(huge)[0] is None


def test_filters_matter_is_part_of_the_shape() -> None:
    """A side-effect name in a literal makes the walk look at ORDER BY (where an unknown
    relation is then noticed): the two texts must not share an analysis. (WHERE and
    HAVING are always walked: a predicate there may turn the choice of rows into a
    value.)"""
    quiet = "select id from customers order by (select x from nosuch where y = 'a')"
    loud = "select id from customers order by (select x from nosuch where y = 'set_config')"
    assert shape_of(quiet)[0] == shape_of(loud)[0]  # type: ignore[index]
    room = _room()
    room.analysis(quiet)
    got, shaped = _served_from_shape(room, loud)
    assert not shaped and got == _fresh(room, loud)
    # every ORDER BY is walked now (a cursor's FETCH 1 cuts it): both notice the relation
    assert got.unknown_relations == {"nosuch"} == room.analysis(quiet).unknown_relations


# ----------------------------------------------------------------------------- invalidation
def test_a_new_snapshot_empties_the_cache() -> None:
    """What a refresh after DDL does (``COMMENT ON COLUMN orders.status IS 'pii:email'``):
    the next text of a known shape is planned on the new schema."""
    room = _room()
    for n in (1, 2):
        a = room.analysis(f"select status from orders where id = {n}")
        assert not a.statements[0].output.columns[0].pii  # type: ignore[union-attr]
    assert room.plans.stats["shape"] == 1
    commented = SchemaSnapshot.build(
        {
            "public.customers": ["id", "email"],
            "public.orders": ["id", "customer_id", "total", "status"],
        },
        comments={"public.orders.status": "pii:email"},
    )
    room.set_snapshot(commented)
    info = room.plans.info()
    assert info["exact_size"] == info["shape_size"] == 0
    got, shaped = _served_from_shape(room, "select status from orders where id = 3")
    assert not shaped
    assert got.statements[0].output.columns[0].entities == {"email"}  # type: ignore[union-attr]


def test_a_pii_catalog_reload_starts_from_an_empty_cache(tmp_path: Any) -> None:
    """``PiiGate.use_config`` (SIGHUP) gives each database a new room; a literal
    variant of a shape planned under the old catalog is planned under the new one."""
    from dbgate.config import Config
    from dbgate.gate.pii import PiiGate

    def config(catalog: str) -> Config:
        path = tmp_path / f"pii-{len(catalog)}.yaml"
        path.write_text(catalog)
        return Config.model_validate(
            {
                "pii": {
                    "catalog": str(path),
                    "keys": [{"id": "k", "secret": "hex:" + "6b" * 32}],
                }
            }
        )

    before = config("version: 1\nname_defaults: true\n")
    after = config("version: 1\nname_defaults: true\ncolumns:\n  public.orders.status: email\n")
    gate = PiiGate(before)
    room = PiiRoom.from_config(before.pii)
    room.set_snapshot(SNAPSHOT)
    gate.loads.loaded["db"] = room
    for n in (1, 2):
        a = room.analysis(f"select status from orders where id = {n}")
        assert not a.statements[0].output.columns[0].pii  # type: ignore[union-attr]
    assert room.plans.stats["shape"] == 1
    gate.use_config(after, [])
    new = gate.loads.loaded["db"]
    assert new is not room and new.plans.info()["shape_size"] == 0
    got = new.analysis("select status from orders where id = 3")
    assert got.statements[0].output.columns[0].entities == {"email"}  # type: ignore[union-attr]
    assert new.plans.stats == {"exact": 0, "shape": 0, "cold": 1}


# ----------------------------------------------------------------------------- bounds
def test_both_levels_are_bounded_by_entries_and_characters() -> None:
    cache = PlanCache(entries=100, chars=10_000)
    room = _room()
    for n in range(1_000):
        sql = f"select c{n % 300}, email from customers where id = {n}"
        a, shape = cache.lookup(sql)
        if a is None:
            cache.store(sql, shape, analyze(sql, room.coverage))  # type: ignore[arg-type]
        info = cache.info()
        assert info["exact_size"] <= 100 and info["shape_size"] <= 100
        assert info["exact_chars"] <= 10_000 and info["shape_chars"] <= 10_000
    long = "select email from customers where id = 1 or id = " + "1" * 50 + " -- " + "x" * 20_000
    cache.store(long, shape_of(long), analyze(long, room.coverage))  # type: ignore[arg-type]
    assert cache.info()["exact_chars"] <= 10_000


def test_the_gate_judges_texts_of_a_shape_alike_and_remembers_only_repeats(
    tmp_path: Any,
) -> None:
    """PiiGate.verdict on fresh literals: the same verdict as a fresh plan gives
    (tokenize the e-mail, nothing for orders), and no entry in the gate's verdict
    memory for a text that will not come again; a text that repeats gets one."""
    from dbgate.config import Config
    from dbgate.gate.pii import PiiGate
    from dbgate.gate.pii_outputs import PiiResultPlan
    from dbgate.policy.classify import classify
    from dbgate.proxy.seams import Allow, Statement
    from dbgate.proxy.session_info import SessionInfo

    config = Config.model_validate({"pii": {"keys": [{"id": "k", "secret": "hex:" + "6b" * 32}]}})
    gate = PiiGate(config)
    room = PiiRoom.from_config(config.pii)
    room.set_snapshot(SNAPSHOT)
    gate.loads.loaded["db"] = room
    info = SessionInfo(1, "agent", "db", "app", "127.0.0.1")
    allowed = Allow()

    def verdict(sql: str) -> Any:
        return gate.verdict(info, Statement("query", sql), allowed, classify(sql), lambda _d: None)

    for n in range(1, 6):
        with_pii = verdict(f"select id, email from customers where id = {n}")
        assert type(with_pii) is Allow and isinstance(with_pii.plan, PiiResultPlan)
        assert with_pii.plan.plan.sql == f"select id, email from customers where id = {n}"
        assert verdict(f"select id, status from orders where id = {n}") is None
    # e-mail texts: planned from their shape each time (4 after the first); orders
    # texts: the second one, planned from the shape, showed the shape needs nothing
    # from PII, and the next three were not planned at all
    assert room.plans.stats["shape"] == 4 + 1
    assert room.plans.nothing_to_change(shape_of("select id, status from orders where id = 9"))
    assert not room.plans.nothing_to_change(
        shape_of("select id, email from customers where id = 9")
    )
    remembered = {key[1] for key in gate._verdicts}
    assert remembered == {
        "select id, email from customers where id = 1",
        "select id, status from orders where id = 1",
    }
    verdict("select id, email from customers where id = 5")
    assert len(gate._verdicts) == 2  # served from the shape again, not remembered
    room.set_snapshot(SNAPSHOT)  # a schema reload: what PII needs is found out again
    assert not room.plans.nothing_to_change(shape_of("select id, status from orders where id = 9"))


def test_a_result_plan_made_again_keeps_the_tokens_its_bind_resolved() -> None:
    """A Bind's plan (a token resolved into ``$1``) whose results arrive once the
    schema was read again is made again on the new snapshot: the parameter that held a
    token still carries PII into the outputs of the rows it chose, as it did before."""
    from dbgate.gate.pii_outputs import PiiResultPlan

    room = _room()
    sql = (
        "select o.id, o.status from orders o join customers c on c.id = o.customer_id"
        " where c.email = $1"
    )
    bound = room.plan(sql).with_token_params({1})
    result = PiiResultPlan(bound)
    room.set_snapshot(_schema())  # read again: a new version
    again = result._current()
    assert again is not bound and again.version == room.version
    assert again.token_params == frozenset({1})
