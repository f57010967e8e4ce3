"""Settings read as PostgreSQL reads them: the classifier's value against the server's.

A guard (``statement_timeout`` and friends) is compared with a ceiling, and a
``search_path`` is checked for a schema before ``pg_catalog``: both only mean
something if dbgate reads the value exactly as the server does. Each case here is set
on a real server and read back.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from dbgate.policy.catalog_settings import parse_time_ms, split_identifier_list
from dbgate.policy.classify import classify

NUMBERS = [
    "0",
    "1",
    "7",
    "010",
    "08",
    "0x1F",
    "0X10",
    "1.5",
    "2.5",
    ".5",
    "1e3",
    "1.5e2",
    "-1",
    "+5",
    "2147483647",
    "2147483648",
    "1e",
    "0x1p3",
    "",
    "abc",
    " 12 ",
]
UNITS = ["", "ms", "s", "min", "h", "d", "us", "m", "S", "Min", " s", "s ", "sec", "x"]
VALUES = sorted({n + u for n, u in itertools.product(NUMBERS, UNITS)} | {"inf", "nan", "1 s x"})


def _server_ms(conn: psycopg.Connection[Any], value: str) -> int | None:
    """How the server reads ``value`` for a guard. Read through ``lock_timeout``, which
    has the very same unit and range as ``statement_timeout``: a 1 ms statement
    timeout would also cut off the statements that read it back on a busy machine."""
    try:
        with conn.transaction():
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (value,))
            row = conn.execute(
                "SELECT setting FROM pg_settings WHERE name = 'lock_timeout'"
            ).fetchone()
            assert row is not None
            return int(row[0])
    except psycopg.errors.InvalidParameterValue:
        return None


@pytest.fixture(scope="module")
def conn(pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        yield c


def test_time_values_are_read_as_the_server_reads_them(conn: psycopg.Connection[Any]) -> None:
    mismatches = [
        (v, parse_time_ms(v), _server_ms(conn, v))
        for v in VALUES
        if parse_time_ms(v) != _server_ms(conn, v)
    ]
    assert not mismatches
    assert len(VALUES) > 250


@pytest.mark.parametrize(
    "literal",
    ["0", "5000", "'5s'", "'1min'", "1.5", "'0x10'", "'010'", "'2 h'", "DEFAULT", "'1m'", "-5"],
)
def test_set_statements_report_the_value_the_server_sets(
    conn: psycopg.Connection[Any], literal: str
) -> None:
    sql = f"SET LOCAL statement_timeout = {literal}"
    (st,) = classify(sql).statements
    (reported,) = st.guard_settings
    try:
        with conn.transaction():
            conn.execute(sql)  # type: ignore[arg-type]
            row = conn.execute(
                "SELECT setting, reset_val FROM pg_settings WHERE name = 'statement_timeout'"
            ).fetchone()
            assert row is not None
            server: int | None = int(row[0])
            if reported.reset:
                assert row[0] == row[1]  # back to the session's starting value
                return
    except (psycopg.errors.InvalidParameterValue, psycopg.errors.SyntaxError):
        server = None
    assert reported.local
    assert reported.value_ms == server


SCHEMAS = ['"cat,x"', '"A"', '"a b"', "lower_case", '"x""y"', '"PG_CATALOG"']


@pytest.fixture(scope="module")
def odd_schemas(pg_dsn: str) -> Iterator[str]:
    db = f"paths_{secrets.token_hex(4)}"
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {db}")  # type: ignore[arg-type]
    dsn = pg_dsn.rsplit("/", 1)[0] + f"/{db}"
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            for s in SCHEMAS:
                c.execute(f"CREATE SCHEMA {s}")  # type: ignore[arg-type]
        yield dsn
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [
        '"cat,x", public, pg_catalog',
        'public, "A", a, "a b", pg_catalog',
        '  lower_case ,"x""y",LOWER_CASE',
        '"$user", public',
        "PG_CATALOG, public",
        '"PG_CATALOG", public, pg_catalog',
        "",
        '"", public',
    ],
)
def test_search_path_strings_split_as_the_server_splits_them(odd_schemas: str, value: str) -> None:
    """``current_schemas`` lists the existing schemas of the path in order; ours, kept
    to the ones that exist, must be the same list."""
    with psycopg.connect(odd_schemas, autocommit=True) as c:
        c.execute("SELECT set_config('search_path', %s, false)", (value,))
        row = c.execute("SELECT current_schemas(true)").fetchone()
        existing = {r[0] for r in c.execute("SELECT nspname FROM pg_namespace").fetchall()}
    assert row is not None
    ours = list(dict.fromkeys(s for s in split_identifier_list(value) or [] if s in existing))
    if "pg_catalog" not in ours:  # searched first when the path does not name it
        ours.insert(0, "pg_catalog")
    assert row[0] == ours


@pytest.mark.parametrize("value", ["public,, pg_catalog", "a b", '"unterminated', "a,", '"a"b'])
def test_search_path_strings_the_server_refuses_are_refused_by_us_too(
    odd_schemas: str, value: str
) -> None:
    assert split_identifier_list(value) is None
    with psycopg.connect(odd_schemas, autocommit=True) as c, pytest.raises(psycopg.Error):
        c.execute("SELECT set_config('search_path', %s, false)", (value,))
