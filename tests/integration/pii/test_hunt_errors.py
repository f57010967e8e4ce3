"""Values the server echoes in errors no template covers, through the real proxy.

A statement that reads PII (anywhere: its select list, WHERE, a function's argument)
or had tokens resolved into it gets its error's text withheld: no field of the
ErrorResponse may hold a raw value, compared with the values read straight from the
server. An error of a statement without PII keeps the server's message.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import psycopg
import pytest


@pytest.fixture(scope="module")
def raw(admin_dsn: str) -> dict[str, str]:
    with psycopg.connect(admin_dsn) as conn:
        row = conn.execute(
            "select full_name, email, ssn, birth_date::text, address from customers where id = 1"
        ).fetchone()
    assert row is not None
    return dict(zip(("full_name", "email", "ssn", "birth_date", "address"), row, strict=True))


def _needles(raw: dict[str, str]) -> list[str]:
    """Raw values and the forms the leaking statements turn them into."""
    name = raw["full_name"]
    y, mo, d = raw["birth_date"].split("-")
    out = [
        name,
        raw["email"],
        raw["email"].replace("@", "#"),
        raw["ssn"],
        raw["ssn"].replace("-", "_"),
        raw["address"],
        raw["birth_date"],
        f"{y}-{mo}-{int(d) + 40}",
        str(2000000 + ord(name[0]) * 1000 + ord(name[1])),
        f".{ord(name[0])}",
    ]
    out += [p for p in name.split() if len(p) > 3]
    return out


def _check(fields: dict[str, str], raw: dict[str, str]) -> None:
    for code, text in fields.items():
        for needle in _needles(raw):
            assert needle.lower() not in text.lower(), (code, text, needle)


def _error_fields(dsn: str, sql: str, params: tuple[Any, ...] | None = None) -> dict[str, str]:
    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(psycopg.Error) as info:
        conn.execute(sql, params)
    diag = info.value.diag
    fields = {
        "C": diag.sqlstate or "",
        "M": diag.message_primary or "",
        "D": diag.message_detail or "",
        "H": diag.message_hint or "",
        "W": diag.context or "",
        "q": diag.internal_query or "",
    }
    assert fields["C"], fields
    return fields


LEAKS = [
    ("select current_setting(full_name) from customers where id=1", "42704"),
    ("select current_setting(address) from customers where id=1", "42704"),
    ("select current_setting(replace(email,'@','#')) from customers where id=1", "42704"),
    ("select current_setting(replace(ssn,'-','_')) from customers where id=1", "42704"),
    ("select quote_ident(full_name)::regclass from customers where id=1", "42P01"),
    ("select quote_ident(full_name)::regrole from customers where id=1", None),
    ("select quote_ident(full_name)::regnamespace from customers where id=1", None),
    ("select quote_ident(full_name)::regconfig from customers where id=1", None),
    ("select quote_ident(full_name)::regproc from customers where id=1", None),
    ("select full_name::regtype from customers where id=1", None),
    (
        "select has_column_privilege('customers', full_name, 'select') from customers where id=1",
        None,
    ),
    ("select to_tsquery(full_name || ' &') from customers where id=1", "42601"),
    ("select ('[\"' || full_name || '\" x')::json from customers where id=1", "22P02"),
    (
        "select make_date(extract(year from birth_date)::int, extract(month from birth_date)::int,"
        " extract(day from birth_date)::int + 40) from customers where id=1",
        None,
    ),
    (
        "select chr(2000000 + ascii(substr(full_name,1,1))*1000 + ascii(substr(full_name,2,1)))"
        " from customers where id=1",
        None,
    ),
    ("select ('$.' || ascii(substr(full_name,1,1)))::jsonpath from customers where id=1", None),
    # PII only where the rows are chosen
    ("select 1 from customers where current_setting(full_name) is null and id=1", "42704"),
    (
        "select count(*) from customers where quote_ident(full_name)::regclass is null and id=1",
        None,
    ),
]


@pytest.mark.parametrize(("sql", "code"), LEAKS)
def test_error_of_a_statement_reading_pii_holds_no_raw_value(
    dsn: str, raw: dict[str, str], sql: str, code: str | None
) -> None:
    fields = _error_fields(dsn, sql)
    if code is not None:
        assert fields["C"] == code
    _check(fields, raw)


def _token(dsn: str, column: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(f"select {column} from customers where id = 1").fetchone()
    assert row is not None and row[0].startswith("tok_")
    return str(row[0])


@pytest.mark.parametrize(
    "template",
    [
        "select current_setting('{tok}')",
        "select quote_ident('{tok}')::regclass",
        "select to_tsquery('{tok}' || ' &')",
    ],
)
def test_tokens_resolved_in_the_text_do_not_come_back_in_errors(
    dsn: str, raw: dict[str, str], template: str
) -> None:
    tok = _token(dsn, "full_name")
    fields = _error_fields(dsn, template.format(tok=tok))
    _check(fields, raw)


@pytest.mark.parametrize(
    "sql",
    [
        "select current_setting($1)",
        "select quote_ident($1)::regclass",
        "select to_tsquery($1 || ' &')",
    ],
)
async def test_tokens_resolved_in_bind_values_do_not_come_back_in_errors(
    dsn: str, raw: dict[str, str], sql: str
) -> None:
    tok = _token(dsn, "full_name")
    conn = await asyncpg.connect(dsn)
    try:
        with pytest.raises(asyncpg.PostgresError) as info:
            await conn.fetch(sql, tok)
    finally:
        await conn.close()
    e = info.value
    fields = {
        k: str(getattr(e, a, "") or "")
        for k, a in (
            ("C", "sqlstate"),
            ("M", "message"),
            ("D", "detail"),
            ("H", "hint"),
            ("W", "context"),
            ("q", "internal_query"),
        )
    }
    _check(fields, raw)


@pytest.mark.parametrize(
    ("sql", "code", "message"),
    [
        ("select 1/0", "22012", "division by zero"),
        ("select id from orders where id = 'abc'", "22P02", "invalid input syntax"),
        ("select to_tsquery('a &')", "42601", "tsquery"),
        ("select current_setting('no.such_setting')", "42704", "no.such_setting"),
    ],
)
def test_errors_of_statements_without_pii_keep_the_servers_message(
    dsn: str, sql: str, code: str, message: str
) -> None:
    fields = _error_fields(dsn, sql)
    assert fields["C"] == code
    assert message in fields["M"]
    assert "withheld" not in fields["M"]


def test_withheld_error_keeps_sqlstate_and_says_why(dsn: str) -> None:
    fields = _error_fields(dsn, "select current_setting(full_name) from customers where id=1")
    assert fields["C"] == "42704"
    assert "withheld" in fields["M"] and "42704" in fields["M"]
