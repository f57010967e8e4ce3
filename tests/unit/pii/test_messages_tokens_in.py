"""Echoed values in errors and notices, notification payloads, detectors, and resolving
tokens sent back in SQL text and Bind values."""

from __future__ import annotations

import json
import struct

import pytest

from dbgate.pii.detectors import detect, luhn_ok
from dbgate.pii.lineage import analyze
from dbgate.pii.pseudonyms import TypeRegistry
from dbgate.pii.room import PiiRoom, PiiSettings
from dbgate.pii.schema import SchemaSnapshot
from dbgate.pii.tokens import Key, Keyring, TokenError, Tokenizer
from dbgate.pii.tokens_in import detokenize_params, detokenize_sql
from dbgate.wire.messages import error_response, notice_response, parse_error_fields

ROOM = PiiRoom(
    __import__("dbgate.pii.catalog_load", fromlist=["load_catalog"]).load_catalog(),
    Tokenizer(Keyring([Key("k", b"k" * 32)])),
    PiiSettings(),
    SchemaSnapshot.build(
        {"public.customers": ["id", "email", "full_name", "note"], "public.tags": ["id", "label"]}
    ),
)
TOK = ROOM.tokenizer


def err(**fields: str) -> dict[str, str]:
    code = fields.pop("C", "XX000")
    body = error_response(code, fields.pop("M", "m"), **fields)[5:]
    return parse_error_fields(ROOM.message_filter.error(body))


def test_unique_violation_tokenizes_pii_keys_only() -> None:
    e = err(
        C="23505",
        M="duplicate key",
        D="Key (email)=(ann@x.io) already exists.",
        t="customers",
        s="public",
    )
    assert e["D"] == f"Key (email)=({TOK.token('email', b'ann@x.io')}) already exists."
    e = err(C="23505", M="dup", D="Key (id)=(5) already exists.", t="tags", s="public")
    assert e["D"] == "Key (id)=(5) already exists."
    e = err(C="23505", M="dup", D="Key (a, b)=(1, x) already exists.", t="nosuch")
    assert "tok_unknown_" in e["D"]


def test_failing_row_and_data_exceptions() -> None:
    e = err(
        C="23502",
        M='null value in column "id"',
        D="Failing row contains (null, ann@x.io, Ann, x).",
        t="customers",
    )
    assert e["D"].startswith("Failing row contains (tok_pii_") and "ann@x.io" not in e["D"]
    e = err(C="22P02", M='invalid input syntax for type integer: "Ann Lee"')
    assert "Ann Lee" not in e["M"] and e["M"].startswith(
        'invalid input syntax for type integer: "tok_pii_'
    )
    e = err(C="42P01", M='relation "customers2" does not exist')
    assert e["M"] == 'relation "customers2" does not exist'


def test_copy_context_and_free_text() -> None:
    e = err(C="22P02", M="bad", W='COPY customers, line 2, column id: "Ann Lee"')
    assert "Ann Lee" not in e["W"]
    e = err(C="P0001", M="customer ann@x.io has card 4111 1111 1111 1111", R="exec_stmt_raise")
    assert "tok_email_" in e["M"] and "tok_card_" in e["M"]


def test_notice_and_malformed_bodies() -> None:
    body = notice_response("mail me at bob@example.org")[5:]
    assert b"tok_email_" in ROOM.message_filter.notice(body)
    assert ROOM.message_filter.error(b"garbage") == b"garbage"
    assert ROOM.message_filter.notification(b"\0\0") == b"\0\0"


def test_notifications_modes() -> None:
    body = struct.pack("!I", 7) + b"ch\0payload ann@x.io\0"
    assert b"tok_pii_" in ROOM.message_filter.notification(body)
    room = PiiRoom(
        ROOM.catalog,
        TOK,
        PiiSettings(notification_payloads="pass", notification_channels={"ch": "detect"}),
    )
    out = room.message_filter.notification(body)
    assert out.startswith(struct.pack("!I", 7) + b"ch\0payload tok_email_")
    other = struct.pack("!I", 7) + b"jobs\0ann@x.io\0"
    assert room.message_filter.notification(other) == other


def test_echoed_values_get_fresh_tokens_but_a_pii_key_keeps_its_columns() -> None:
    """A text the agent chooses, echoed in a NOTIFY payload, a data exception or a
    failing row, gets a new token every time: a deterministic one would be a codebook
    entry for whatever PII reaches the same place. A unique violation's key keeps the
    column's token (the agent can tell which row it names); each token resolves."""
    payload = struct.pack("!I", 7) + b"ch\0chosen text\0"
    notified = {ROOM.message_filter.notification(payload) for _ in range(2)}
    assert len(notified) == 2
    cast = {err(C="22P02", M='invalid input syntax for type integer: "Ann Lee"')["M"] for _ in "ab"}
    assert len(cast) == 2
    failing = {
        err(C="23502", M="null", D="Failing row contains (null, a@x.io).", t="customers")["D"]
        for _ in "ab"
    }
    assert len(failing) == 2
    detail = "Key (email)=(ann@x.io) already exists."
    keys = {err(C="23505", M="dup", D=detail, t="customers", s="public")["D"] for _ in "ab"}
    assert keys == {f"Key (email)=({TOK.token('email', b'ann@x.io')}) already exists."}
    (token,) = (t for t in cast.pop().split('"') if t.startswith("tok_pii_"))
    assert TOK.resolve(token) == ("pii", b"Ann Lee")


@pytest.mark.parametrize(
    ("text", "entities"),
    [
        ("write to ann.lee+x@mail.example.co.uk today", ["email"]),
        ("card 4111-1111-1111-1111", ["card"]),
        ("card 4111-1111-1111-1112", ["phone"]),  # Luhn fails: not a card (a number)
        ("ssn 123-45-6789", ["ssn"]),
        ("ssn 000-45-6789", []),
        ("iban GB82 WEST 1234 5698 7654 32", ["iban"]),
        ("iban GB82 WEST 1234 5698 7654 33", ["phone"]),  # mod 97 fails: not an IBAN
        ("call +44 20 7946 0958", ["phone"]),
        ("order 12345 on 2024-01-01 for 1234.56", []),
        # a time's seconds with microseconds, as a Failing row or Key detail prints one
        ("Failing row contains (7, 42, 1.00, x, 2026-12-03 09:16:14.025648+00).", []),
        ("at 23:59:59.5 and 00:00:01.000001", []),
        ("12:00:00.123456 call +44 20 7946 0958", ["phone"]),
        ("phone:555-123-4567", ["phone"]),
        ("0:00:(591)983-3688x37067", ["phone"]),
        ("10:11:12 555.1234567", ["phone"]),
    ],
)
def test_detectors(text: str, entities: list[str]) -> None:
    assert [e for _s, _e, e in detect(text)] == entities
    assert luhn_ok("79927398713")


# ---------------------------------------------------------------------------- tokens in


def resolve(token: str) -> tuple[str, bytes]:
    return TOK.resolve(token)


def plan_sql(sql: str) -> str:
    return detokenize_sql(sql, ROOM.analysis(sql), resolve)


def test_every_quoting_style_and_nothing_outside_literals() -> None:
    t = TOK.token("email", b"o'brien@x.io")
    for lit in (f"'{t}'", f"E'{t}'", f"$${t}$$", f"$q${t}$q$"):
        sql = f'select id as "{t}" from customers /* {t} */ where email = {lit}'
        out = plan_sql(sql)
        assert "$dbgate$o'brien@x.io$dbgate$" in out
        assert out.count(t) == 2  # the alias and the comment are untouched


def test_json_and_array_literals_are_escaped() -> None:
    t = TOK.token("full_name", b'Ann "the" Lee, Jr.')
    out = plan_sql(
        f"select id from customers where jsonb_build_object('n', full_name) @> '{{\"n\": \"{t}\"}}'"
    )
    inner = out.split("$dbgate$")[1]
    assert json.loads(inner) == {"n": 'Ann "the" Lee, Jr.'}
    out = plan_sql(f"select id from customers where full_name = any('{{{t},plain}}')")
    assert '{"Ann \\"the\\" Lee, Jr.",plain}' in out


def test_non_utf8_and_unknown_tokens_are_refused() -> None:
    t = TOK.token("email", b"\xff\xfe")
    with pytest.raises(TokenError, match="not UTF-8"):
        plan_sql(f"select id from customers where email = '{t}'")
    with pytest.raises(TokenError):
        plan_sql("select id from customers where email = 'tok_email_r" + "0" * 64 + "'")


def test_bind_parameters_text_arrays_and_binary() -> None:
    sql = "select id from customers where email = $1 or email = any($2) or full_name = any($3)"
    analysis = analyze(sql, ROOM.coverage)  # type: ignore[arg-type]
    a, b = TOK.token("email", b"a@x.io"), TOK.token("email", b"b, c@x.io")
    binary_array = (
        struct.pack("!iiI", 1, 0, 25)
        + struct.pack("!ii", 1, 1)
        + struct.pack("!i", len(a))
        + a.encode()
    )
    values, replaced = detokenize_params(
        analysis,
        (a.encode(), f"{{{a},{b}}}".encode(), binary_array),
        (0, 0, 1),
        (25, 1009, 1009),
        TypeRegistry(),
        resolve,
    )
    assert values[0] == b"a@x.io" and values[1] == b'{a@x.io,"b, c@x.io"}'
    assert values[2].endswith(struct.pack("!i", 6) + b"a@x.io") and replaced == {1, 2, 3}
    untouched, none = detokenize_params(
        analysis, (b"plain", None, None), (0, 0, 0), (25, 0, 0), TypeRegistry(), resolve
    )
    assert untouched == (b"plain", None, None) and not none


def test_bind_parameters_that_would_be_stored_are_refused() -> None:
    a = TOK.token("email", b"a@x.io")
    for sql in ("insert into tags (label) values ($1)", "select set_config('x', $1, false)"):
        analysis = analyze(sql, ROOM.coverage)  # type: ignore[arg-type]
        with pytest.raises(TokenError, match=r"parameter \$1"):
            detokenize_params(analysis, (a.encode(),), (0,), (25,), TypeRegistry(), resolve)


def test_a_token_is_resolved_only_where_it_is_compared_with_pii_or_stored_in_it() -> None:
    """Anywhere else the server would compute on the value: ``ascii(substr($1, i, 1))``
    chooses rows by one bit of it per branch, reading no table (22023 instead)."""
    a = TOK.token("email", b"a@x.io").encode()
    for sql in (
        "select $1::text",
        "select 1 where ascii(substr($1, 1, 1)) & 1 <> 0",
        "select 1 where $1 = 'a@x.io'",  # compared with no PII: a guess confirmed
        "select id from customers where lower(email) = lower($1)",  # computed on
        "select g from generate_series(1, 9) g limit length($1)",
    ):
        analysis = analyze(sql, ROOM.coverage)  # type: ignore[arg-type]
        with pytest.raises(TokenError, match="compared with a PII column"):
            detokenize_params(analysis, (a,), (0,), (25,), TypeRegistry(), resolve)
    for sql in (
        "select id from customers where email = $1",
        "select id from customers where $1::text <> email",
        "select id from customers where email in ($1, 'x')",
        "select id from customers where email = any($1::text[])",
        "select id from customers where lower(email) is not distinct from $1",
        "update customers set email = $1 where id = 7",
    ):
        analysis = analyze(sql, ROOM.coverage)  # type: ignore[arg-type]
        value = b"{" + a + b"}" if "any" in sql else a
        values, replaced = detokenize_params(
            analysis, (value,), (0,), (1009 if "any" in sql else 25,), TypeRegistry(), resolve
        )
        assert replaced == {1} and b"a@x.io" in values[0], sql


CUT_CASTS = [
    "select id from customers where email = $1::varchar(1)",
    "select id from customers where email = $1::char(3)",
    'select id from customers where email = $1::"char"',
    "select id from customers where email = $1::name",
    "select id from customers where email in ($1::varchar(2), 'x')",
    "select id from customers where email = any($1::varchar(2)[])",
    "select id from customers where email = $1::text::varchar(2)",
    "select id from customers where email = $1::text::text",
    "select id from customers where email = $1::float8",
    # the literal takes the type of what it is compared with
    'select id from customers where email::"char" = $1',
    "select id from customers where coalesce(email::\"char\", 'x') <> $1",
    "select id from customers where email::real in ($1, 'x')",
    'select id from customers where "char"(lower(email)) = $1',
    # cut in a sub-select or a CTE, compared by its column's name
    'select s.id from (select id, email::"char" e from customers) s where s.e = $1',
    "with s as (select id, name(email) e from customers) select id from s where e = $1",
    "select s.id from (select id, email::real e from customers) s where s.e = $1",
    "insert into customers (id, email) values (1, $1::varchar(1))",
    "update customers set email = $1::char(2) where id = 7",
    # a built-in returning a float: the value is read as one, a near miss matches
    "select id from customers where power(0 * length(email) + 4111111111111111, 1) = $1",
    "select id from customers where $1 = date_part('year', now()) + 0 * length(email)",
    "select s.id from (select id, power(0 * length(email) + 1, 1) p from customers) s"
    " where s.p = $1",
    "select s.id from (select id, (0 * length(email) + 1)::float8 p from customers) s"
    " where s.p = $1",
    "with s as (select id, sqrt(0 * length(email) + 4) p from customers)"
    " select id from s where p in ($1, 'x')",
]


@pytest.mark.parametrize("sql", CUT_CASTS)
def test_a_token_cut_by_a_cast_is_not_resolved(sql: str) -> None:
    """A cast to a type that keeps part of a text computes on the value:
    ``email = 'tok_…'::varchar(n)`` against guesses the agent stored in a PII column
    reads the value a prefix at a time."""
    a = TOK.token("email", b"a@x.io").encode()
    analysis = analyze(sql, ROOM.coverage)  # type: ignore[arg-type]
    value = b"{" + a + b"}" if "any" in sql else a
    with pytest.raises(TokenError, match=r"parameter \$1"):
        detokenize_params(
            analysis, (value,), (0,), (1009 if "any" in sql else 25,), TypeRegistry(), resolve
        )
    literal = analyze(sql.replace("$1", f"'{a.decode()}'"), ROOM.coverage)  # type: ignore[arg-type]
    assert literal.token_sites, sql
    if sql.startswith(("insert", "update")):  # held: a value made from PII stored in PII
        assert any("made from PII" in w for w in literal.pii_writes), sql
    else:
        assert not any(s.allowed for s in literal.token_sites), sql


@pytest.mark.parametrize(
    "sql",
    [
        "select id, avg(id::float8) over () from customers where email = $1",
        "select c.id, power(c.id, 2) from customers c where c.email = $1",
        "select id from (select id, sqrt(id) r from customers) s, customers c where c.email = $1",
    ],
)
def test_a_token_compared_with_a_stored_column_resolves_beside_a_float(sql: str) -> None:
    """A stored table's column has the table's type whatever else the text computes:
    a float elsewhere leaves the comparison whole."""
    a = TOK.token("email", b"a@x.io").encode()
    analysis = analyze(sql, ROOM.coverage)  # type: ignore[arg-type]
    values, replaced = detokenize_params(analysis, (a,), (0,), (25,), TypeRegistry(), resolve)
    assert replaced == {1} and values[0] == b"a@x.io", sql


@pytest.mark.parametrize("oid", [18, 19, 1002, 1003])
def test_a_token_bound_as_a_type_that_keeps_part_of_it_is_not_resolved(oid: int) -> None:
    """A Bind value typed ``"char"`` (first byte) or ``name`` (63 bytes) by its Parse
    reaches the server cut, whatever the statement's text says."""
    a = TOK.token("email", b"a@x.io").encode()
    analysis = analyze("select id from customers where email = $1", ROOM.coverage)  # type: ignore[arg-type]
    types = TypeRegistry()
    value = b"{" + a + b"}" if oid > 1000 else a
    with pytest.raises(TokenError, match="keeps only part"):
        detokenize_params(analysis, (value,), (0,), (oid,), types, resolve)
