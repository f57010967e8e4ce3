"""What an LLM agent with a "SQL database" tool sends, through dbgate with PII
tokenization on, against the same statements sent straight to PostgreSQL.

The hunts (tests/integration/pii/) pin the leaks that must stay closed; this module
pins the other side: ordinary work — schema introspection, sample rows, counts,
reports grouped over orders joined to customers, date ranges, top-N, window functions
over clean columns, EXISTS/IN sub-selects, lookups by a token received earlier, small
writes by key — runs (nothing held or refused) under the shipped rule pack and PII
catalog, every clean column byte for byte as the server sends it, and only the PII
columns (and the values the docs say derive from them) tokenized.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.integration.clients.conftest import DemoRole, start_pii_proxy
from tests.integration.clients.tools import run
from tests.integration.conftest import RunningProxy

#: The PII columns of the demo dataset (rules/pii.yaml).
CUSTOMER_PII = ("full_name", "email", "phone", "ssn", "birth_date", "address")


@pytest.fixture(scope="module")
def pii_gate(pg_server: Any, demo_role: DemoRole, demo_db: str) -> Iterator[RunningProxy]:
    running = start_pii_proxy(pg_server, demo_role)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def gate_dsn(pii_gate: RunningProxy, demo_db: str) -> str:
    return pii_gate.dsn(demo_db)


def fetch(dsn: str, sql: str, params: Sequence[Any] | None = None) -> tuple[list[str], list[Any]]:
    """Column names and rows of ``sql`` on a fresh psycopg 3 connection (rolled back)."""
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(sql, params)
        names = [d.name for d in cur.description or ()]
        rows = cur.fetchall()
        conn.rollback()
    return names, rows


def assert_tokenized_only(
    sql: str,
    direct: tuple[list[str], list[Any]],
    gate: tuple[list[str], list[Any]],
    tokenized: set[str],
) -> None:
    """Same columns and rows; the outputs named in ``tokenized`` replaced (text ones by
    a ``tok_`` token), every other output equal to what the server sent."""
    (names, rows), (gate_names, gate_rows) = direct, gate
    assert gate_names == names, sql
    assert len(gate_rows) == len(rows), sql
    assert rows, f"the scenario reads no row: {sql}"
    for raw, seen in zip(rows, gate_rows, strict=True):
        for name, value, got in zip(names, raw, seen, strict=True):
            if name not in tokenized:
                assert got == value, f"{name} of {sql!r}: {got!r} != {value!r}"
            elif isinstance(value, str):
                assert got.startswith("tok_") and got != value, f"{name} of {sql!r}: {got!r}"
            elif value is not None:
                assert type(got) is type(value), f"{name} of {sql!r}: {got!r}"


# Each: a statement and the outputs that come back tokenized.
AGENT_READS: list[tuple[str, set[str]]] = [
    # introspection
    (
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
        set(),
    ),
    (
        "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position",
        set(),
    ),
    (
        "SELECT column_name, col_description('customers'::regclass, ordinal_position) "
        "FROM information_schema.columns WHERE table_name = 'customers' ORDER BY ordinal_position",
        set(),
    ),
    (
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = 'orders'::regclass ORDER BY 1",
        set(),
    ),
    ("SELECT reltuples >= 0 FROM pg_class WHERE relname = 'customers'", set()),
    # sample rows
    ("SELECT * FROM customers ORDER BY id LIMIT 3", set(CUSTOMER_PII)),
    ("SELECT * FROM customers LIMIT 3", set(CUSTOMER_PII)),
    ("SELECT * FROM orders ORDER BY id LIMIT 3", set()),
    ("SELECT * FROM payments ORDER BY id LIMIT 3", {"card_number"}),
    # counts, reports, ranges
    ("SELECT COUNT(*) FROM customers", set()),
    ("SELECT COUNT(*) FROM orders WHERE status = 'paid'", set()),
    ("SELECT status, COUNT(*), SUM(total) FROM orders GROUP BY status ORDER BY status", set()),
    (
        "SELECT c.id, c.full_name, SUM(o.total) AS spent FROM customers c "
        "JOIN orders o ON o.customer_id = c.id GROUP BY c.id, c.full_name "
        "ORDER BY spent DESC, c.id LIMIT 10",
        {"full_name"},
    ),
    ("SELECT count(*) FROM orders WHERE created_at >= now() - interval '30 days'", set()),
    (
        "SELECT count(*) FROM orders WHERE created_at >= '2024-01-01' "
        "AND created_at < '2024-02-01'",
        set(),
    ),
    (
        "SELECT date_trunc('month', created_at) AS m, count(*), sum(total) FROM orders "
        "GROUP BY 1 ORDER BY 1",
        set(),
    ),
    ("SELECT id, customer_id, total FROM orders ORDER BY total DESC, id LIMIT 10", set()),
    ("SELECT DISTINCT status FROM orders ORDER BY status", set()),
    (
        "SELECT avg(total), min(total), max(total), "
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY total) FROM orders",
        set(),
    ),
    (
        "SELECT customer_id, count(*) FILTER (WHERE status = 'refunded')::float / count(*) "
        "AS refund_rate FROM orders GROUP BY customer_id HAVING count(*) >= 5 "
        "ORDER BY refund_rate DESC, customer_id LIMIT 5",
        set(),
    ),
    # segments chosen by PII: counted, not packed, stay numbers
    ("SELECT count(*) FROM customers WHERE email LIKE '%@gmail.com'", set()),
    ("SELECT count(*) FROM customers WHERE full_name ILIKE '%smith%'", set()),
    ("SELECT count(*) FROM customers WHERE birth_date < now() - interval '60 years'", set()),
    (
        "SELECT o.status, count(DISTINCT o.customer_id) FROM orders o "
        "JOIN customers c ON c.id = o.customer_id WHERE c.email LIKE '%@gmail.com' "
        "GROUP BY o.status ORDER BY 1",
        set(),
    ),
    (
        "SELECT o.status, count(*) FROM orders o WHERE o.customer_id IN "
        "(SELECT id FROM customers WHERE email LIKE '%@gmail.com') GROUP BY o.status ORDER BY 1",
        set(),
    ),
    (
        "SELECT c.id, max(o.total), max(o.created_at) FROM customers c "
        "JOIN orders o ON o.customer_id = c.id WHERE c.email LIKE '%@gmail.com' "
        "GROUP BY c.id ORDER BY c.id LIMIT 5",
        set(),
    ),
    (
        "SELECT id, created_at FROM customers WHERE email LIKE '%@gmail.com' ORDER BY id LIMIT 10",
        set(),
    ),
    # windows and CTEs over clean columns
    (
        "WITH ranked AS (SELECT id, customer_id, created_at, total, row_number() OVER "
        "(PARTITION BY customer_id ORDER BY created_at, id) AS rn FROM orders) "
        "SELECT * FROM ranked WHERE rn = 1 ORDER BY customer_id LIMIT 20",
        set(),
    ),
    (
        "SELECT id, total, sum(total) OVER (PARTITION BY customer_id ORDER BY created_at, id) "
        "AS running FROM orders WHERE customer_id = 42 ORDER BY created_at, id",
        set(),
    ),
    (
        "SELECT customer_id, sum(total) AS s, rank() OVER (ORDER BY sum(total) DESC) "
        "FROM orders GROUP BY customer_id ORDER BY s DESC, customer_id LIMIT 10",
        set(),
    ),
    (
        "WITH r AS (SELECT o.*, row_number() OVER (PARTITION BY customer_id "
        "ORDER BY created_at DESC, id) rn FROM orders o) SELECT c.id, c.email, r.total "
        "FROM r JOIN customers c ON c.id = r.customer_id WHERE rn = 1 "
        "ORDER BY r.total DESC, c.id LIMIT 10",
        {"email"},
    ),
    ("SELECT id, email, count(*) OVER () AS n FROM customers ORDER BY id LIMIT 10", {"email"}),
    # EXISTS / IN sub-selects, joins
    (
        "SELECT id FROM customers c WHERE EXISTS (SELECT 1 FROM orders o "
        "WHERE o.customer_id = c.id AND o.status = 'refunded') ORDER BY id LIMIT 20",
        set(),
    ),
    (
        "SELECT c.id, c.created_at FROM customers c WHERE NOT EXISTS "
        "(SELECT 1 FROM orders o WHERE o.customer_id = c.id) ORDER BY c.id LIMIT 10",
        set(),
    ),
    (
        "SELECT id, total FROM orders WHERE customer_id IN (SELECT id FROM customers "
        "WHERE email LIKE '%@yahoo.com') ORDER BY total DESC, id LIMIT 5",
        set(),
    ),
    (
        "SELECT c.id, (SELECT count(*) FROM orders o WHERE o.customer_id = c.id) AS n "
        "FROM customers c WHERE c.id < 5 ORDER BY c.id",
        set(),
    ),
    (
        "SELECT o.id, o.total, c.full_name, c.email FROM orders o "
        "JOIN customers c ON c.id = o.customer_id ORDER BY o.created_at DESC, o.id LIMIT 10",
        {"full_name", "email"},
    ),
    (
        "SELECT o.id, o.status, p.amount FROM orders o LEFT JOIN payments p "
        "ON p.order_id = o.id WHERE o.customer_id = 42 ORDER BY o.id, p.id",
        set(),
    ),
    ("SELECT id, full_name FROM customers ORDER BY full_name, id LIMIT 10", {"full_name"}),
    ("SELECT id, created_at FROM customers ORDER BY email LIMIT 10", set()),
    # an agent's query wrapped in a sub-select or a CTE, then filtered or ordered by
    # the PII column it passes on as it is
    (
        "SELECT * FROM (SELECT id, full_name, created_at FROM customers "
        "ORDER BY created_at DESC, id LIMIT 20) sub ORDER BY sub.full_name, sub.id",
        {"full_name"},
    ),
    (
        "WITH recent AS (SELECT id, email, created_at FROM customers "
        "WHERE created_at >= '2024-01-01') SELECT id, created_at FROM recent "
        "WHERE email LIKE '%@gmail.com' ORDER BY id LIMIT 10",
        set(),
    ),
    (
        "SELECT s.email, count(*) AS orders FROM (SELECT c.email FROM customers c "
        "JOIN orders o ON o.customer_id = c.id WHERE c.id < 50) s GROUP BY s.email "
        "ORDER BY 2 DESC, 1 LIMIT 5",
        {"email"},
    ),
    # a CTE ordered or grouped by its own output's name
    (
        "WITH top AS (SELECT customer_id, sum(total) AS spent FROM orders "
        "GROUP BY customer_id ORDER BY spent DESC, customer_id LIMIT 5) "
        "SELECT c.id, c.full_name, top.spent FROM top JOIN customers c "
        "ON c.id = top.customer_id ORDER BY top.spent DESC, c.id",
        {"full_name"},
    ),
    (
        "WITH m AS (SELECT date_trunc('month', created_at) AS month, count(*) AS n "
        "FROM orders GROUP BY month) SELECT * FROM m ORDER BY month",
        set(),
    ),
    (
        "SELECT s.customer_id, s.spent FROM (SELECT customer_id, sum(total) spent "
        "FROM orders GROUP BY customer_id ORDER BY spent DESC, customer_id LIMIT 5) s",
        set(),
    ),
    # derived from PII: tokenized by design (docs/pii.md), pinned so a change is seen
    (
        "SELECT split_part(email, '@', 2) AS domain, count(*) FROM customers GROUP BY 1 "
        "ORDER BY 2 DESC, 1",
        {"domain"},
    ),
    (
        "SELECT sum(o.total) FROM customers c JOIN orders o ON o.customer_id = c.id "
        "WHERE c.email LIKE '%@gmail.com'",
        {"sum"},
    ),
    (
        "SELECT count(*) FILTER (WHERE email LIKE '%@gmail.com') AS gmail, count(*) FROM customers",
        {"gmail"},
    ),
]


@pytest.mark.parametrize("sql,tokenized", AGENT_READS, ids=[s for s, _ in AGENT_READS])
def test_agent_reads_run_with_only_pii_tokenized(
    direct_dsn: str, gate_dsn: str, sql: str, tokenized: set[str]
) -> None:
    assert_tokenized_only(sql, fetch(direct_dsn, sql), fetch(gate_dsn, sql), tokenized)


@pytest.fixture(scope="module")
def customer_42(direct_dsn: str, gate_dsn: str) -> dict[str, tuple[str, str]]:
    """Customer 42's PII columns: (token through dbgate, raw value)."""
    names = ("email", "full_name", "phone")
    sql = f"SELECT {', '.join(names)} FROM customers WHERE id = 42"
    raw = fetch(direct_dsn, sql)[1][0]
    tokens = fetch(gate_dsn, sql)[1][0]
    return {n: (t, r) for n, t, r in zip(names, tokens, raw, strict=True)}


# Each: a lookup written with {email}/{name} (a token in the text) or bound as %s.
TOKEN_LOOKUPS: list[tuple[str, str | None, set[str]]] = [
    ("SELECT id, created_at FROM customers WHERE email = '{email}'", None, set()),
    ("SELECT id, created_at FROM customers WHERE email = %s", "email", set()),
    ("SELECT * FROM customers WHERE email = %s", "email", set(CUSTOMER_PII)),
    ("SELECT id FROM customers WHERE full_name = '{name}'", None, set()),
    ("SELECT id FROM customers WHERE email IN ('{email}')", None, set()),
    ("SELECT EXISTS (SELECT 1 FROM customers WHERE email = %s)", "email", set()),
    ("SELECT count(*) FROM customers WHERE email = %s", "email", set()),
    (
        "SELECT o.id, o.total, o.status FROM orders o JOIN customers c ON c.id = o.customer_id "
        "WHERE c.email = '{email}' ORDER BY o.id",
        None,
        set(),
    ),
    (
        "SELECT count(*), sum(o.total) FROM orders o JOIN customers c ON c.id = o.customer_id "
        "WHERE c.email = %s",
        "email",
        set(),
    ),
    (
        "SELECT * FROM orders WHERE customer_id = (SELECT id FROM customers WHERE email = %s) "
        "ORDER BY id",
        "email",
        set(),
    ),
    (
        "SELECT c.id, c.created_at, count(o.id) FROM customers c LEFT JOIN orders o "
        "ON o.customer_id = c.id WHERE c.email = %s GROUP BY c.id",
        "email",
        set(),
    ),
]


@pytest.mark.parametrize(
    "sql,bound,tokenized", TOKEN_LOOKUPS, ids=[f"{s}|{b}" for s, b, _ in TOKEN_LOOKUPS]
)
def test_lookups_by_a_token_received_earlier(
    direct_dsn: str,
    gate_dsn: str,
    customer_42: dict[str, tuple[str, str]],
    sql: str,
    bound: str | None,
    tokenized: set[str],
) -> None:
    """The agent sends back the token it was given, in the text or bound; the server
    sees the value, the agent the same rows as a direct lookup by the value."""
    (email_tok, email_raw), (name_tok, name_raw) = customer_42["email"], customer_42["full_name"]
    gate_sql = sql.format(email=email_tok, name=name_tok)
    direct_sql = sql.format(email=email_raw, name=name_raw)
    gate_params = [customer_42[bound][0]] if bound else None
    direct_params = [customer_42[bound][1]] if bound else None
    got = fetch(gate_dsn, gate_sql, gate_params)
    assert_tokenized_only(sql, fetch(direct_dsn, direct_sql, direct_params), got, tokenized)
    if "email" in got[0]:  # the stored column keeps its own token
        assert got[1][0][got[0].index("email")] == email_tok


def test_small_writes_by_key_and_by_token(
    direct_dsn: str, gate_dsn: str, customer_42: dict[str, tuple[str, str]]
) -> None:
    """UPDATE/INSERT/DELETE an agent makes: by primary key, or for the customer a token
    names; RETURNING of clean columns comes back as it is. All rolled back."""
    email_tok = customer_42["email"][0]
    orders_42 = fetch(direct_dsn, "SELECT id FROM orders WHERE customer_id = 42 ORDER BY id")[1]
    with psycopg.connect(gate_dsn) as conn:
        row = conn.execute(
            "UPDATE orders SET status = 'shipped' WHERE id = 10 RETURNING id, status"
        ).fetchone()
        assert row == (10, "shipped")
        row = conn.execute(
            "UPDATE orders SET status = %s WHERE id = %s RETURNING id, status", ["paid", 11]
        ).fetchone()
        assert row == (11, "paid")
        ids = conn.execute(
            "UPDATE orders SET status = 'cancelled' WHERE customer_id = "
            "(SELECT id FROM customers WHERE email = %s) RETURNING id",
            [email_tok],
        ).fetchall()
        assert sorted(ids) == orders_42
        ids = conn.execute(
            "UPDATE orders o SET status = 'cancelled' FROM customers c "
            f"WHERE c.id = o.customer_id AND c.email = '{email_tok}' RETURNING o.id"
        ).fetchall()
        assert sorted(ids) == orders_42
        row = conn.execute(
            "INSERT INTO orders (customer_id, total, status) VALUES (42, 12.50, 'pending') "
            "RETURNING customer_id, total, status"
        ).fetchone()
        assert row is not None and row[1:] == (pytest.approx(12.5), "pending")
        row = conn.execute(
            "INSERT INTO orders (customer_id, total, status) SELECT id, 5, 'pending' "
            "FROM customers WHERE email = %s RETURNING customer_id",
            [email_tok],
        ).fetchone()
        assert row == (42,)
        cur = conn.execute(
            "UPDATE customers SET phone = %s WHERE email = %s", ["555-0199", email_tok]
        )
        assert cur.rowcount == 1
        cur = conn.execute("UPDATE customers SET phone = %s WHERE id = %s", ["555-0100", 43])
        assert cur.rowcount == 1
        row = conn.execute(
            "INSERT INTO orders (customer_id, total, status) VALUES (42, 1, 'pending') RETURNING id"
        ).fetchone()
        assert row is not None
        assert conn.execute("DELETE FROM orders WHERE id = %s RETURNING id", [row[0]]).fetchone()
        conn.rollback()


def test_an_error_of_a_write_without_pii_reads_as_the_servers(
    direct_dsn: str, gate_dsn: str
) -> None:
    """An INSERT the agent got wrong (a status the CHECK refuses): the DETAIL names the
    failing row as the server does, its timestamp's microseconds not taken for a
    phone number."""
    sql = (
        "INSERT INTO orders (id, customer_id, total, status, created_at) "
        "VALUES (999999, 42, 1, 'bogus', '2024-05-01 10:11:12.345678+00')"
    )

    def detail(dsn: str) -> tuple[str | None, str | None]:
        with psycopg.connect(dsn) as conn:
            conn.execute("SET TIME ZONE 'UTC'")
            with pytest.raises(psycopg.errors.CheckViolation) as raised:
                conn.execute(sql)
        return raised.value.diag.message_primary, raised.value.diag.message_detail

    assert detail(gate_dsn) == detail(direct_dsn)
    assert "10:11:12.345678+00" in (detail(gate_dsn)[1] or "")


def test_asyncpg_prepared_statements_reused_and_cursors(direct_dsn: str, gate_dsn: str) -> None:
    """A prepared statement run again with other values, a cursor in a transaction and
    binary parameters: the same clean rows through dbgate as direct."""

    async def work(dsn: str) -> list[Any]:
        conn = await asyncpg.connect(dsn)
        try:
            out: list[Any] = []
            by_customer = await conn.prepare(
                "SELECT id, total, status FROM orders WHERE customer_id = $1 ORDER BY id"
            )
            for customer in (1, 2, 3, 42, 1):
                out.append([tuple(r) for r in await by_customer.fetch(customer)])
            out.append(
                [
                    tuple(r)
                    for r in await conn.fetch(
                        "SELECT id FROM orders ORDER BY total DESC, id LIMIT $1", 5
                    )
                ]
            )
            out.append(
                [
                    tuple(r)
                    for r in await conn.fetch(
                        "SELECT id FROM orders ORDER BY id LIMIT $1 OFFSET $2", 5, 100
                    )
                ]
            )
            out.append(
                [
                    tuple(r)
                    for r in await conn.fetch(
                        "SELECT c.id, count(o.id) FROM customers c JOIN orders o ON o.customer_id = c.id "
                        "WHERE c.id = any($1::int[]) GROUP BY c.id ORDER BY c.id",
                        [1, 2, 3],
                    )
                ]
            )
            async with conn.transaction():
                cur = await conn.cursor(
                    "SELECT id, total FROM orders WHERE customer_id < $1 ORDER BY id", 20
                )
                out.append([tuple(r) for r in await cur.fetch(5)])
            return out
        finally:
            await conn.close()

    assert asyncio.run(work(gate_dsn)) == asyncio.run(work(direct_dsn))


def test_psycopg_pipeline_executemany_and_prepared(direct_dsn: str, gate_dsn: str) -> None:
    def work(dsn: str) -> list[Any]:
        out: list[Any] = []
        with psycopg.connect(dsn) as conn:
            with conn.pipeline():
                cur = conn.cursor()
                cur.executemany(
                    "UPDATE orders SET status = %s WHERE id = %s",
                    [("paid", 7), ("paid", 8), ("paid", 9)],
                )
                cur.execute("SELECT id, status FROM orders WHERE id IN (7, 8, 9) ORDER BY id")
            out.append(cur.fetchall())
            for i in range(7):  # promoted to a prepared statement after 5
                out.append(
                    conn.execute("SELECT id, total FROM orders WHERE id = %s", [i + 1]).fetchone()
                )
            binary = conn.cursor(binary=True)
            out.append(
                binary.execute(
                    "SELECT id, total, created_at FROM orders WHERE customer_id = %s ORDER BY id LIMIT %s",
                    [42, 3],
                ).fetchall()
            )
            with conn.cursor(name="pages") as named:
                named.execute(
                    "SELECT id, total FROM orders WHERE customer_id < %s ORDER BY id", [30]
                )
                out.append(named.fetchmany(5))
            conn.rollback()
        return out

    assert work(gate_dsn) == work(direct_dsn)


def test_stored_tokens_agree_across_protocols(gate_dsn: str) -> None:
    """A stored column's token is the same by simple query, prepared, binary, named
    cursor, pipeline and asyncpg: the agent can join what it got from each."""
    sql = "SELECT email, full_name FROM customers WHERE id = %s"
    seen = set()
    with psycopg.connect(gate_dsn, autocommit=True) as conn:
        seen.add(conn.execute(sql.replace("%s", "42")).fetchone())
        for _ in range(7):
            seen.add(conn.execute(sql, [42]).fetchone())
        seen.add(conn.cursor(binary=True).execute(sql, [42]).fetchone())
        with conn.transaction(), conn.cursor(name="one") as named:
            named.execute(sql, [42])
            seen.add(named.fetchone())
        with conn.pipeline():
            cur = conn.execute(sql, [42])
        seen.add(cur.fetchone())

    async def by_asyncpg() -> tuple[Any, ...]:
        conn = await asyncpg.connect(gate_dsn)
        try:
            stmt = await conn.prepare(sql.replace("%s", "$1"))
            return tuple(await stmt.fetchrow(42))
        finally:
            await conn.close()

    seen.add(asyncio.run(by_asyncpg()))
    assert len(seen) == 1, seen
    ((email, name),) = seen
    assert email.startswith("tok_email_") and name.startswith("tok_name_")


PSQL_CATALOG_COMMANDS = [r"\d customers", r"\d+ orders", r"\dt", r"\df", r"\l", r"\dn", r"\di"]


@pytest.mark.parametrize("command", PSQL_CATALOG_COMMANDS)
def test_psql_meta_commands_are_identical(direct_dsn: str, gate_dsn: str, command: str) -> None:
    args = ("-X", "-v", "ON_ERROR_STOP=1", "-c", command)
    direct, gate = run("psql", direct_dsn, *args), run("psql", gate_dsn, *args)
    assert (gate.returncode, gate.stderr) == (0, ""), gate
    assert gate.stdout == direct.stdout


def test_psql_expanded_select_and_copy_out(direct_dsn: str, gate_dsn: str) -> None:
    base = ("-X", "-v", "ON_ERROR_STOP=1")
    clean = r"\copy (SELECT id, status, total FROM orders WHERE id < 5 ORDER BY id) TO stdout"
    direct, gate = (
        run("psql", direct_dsn, *base, "-c", clean),
        run("psql", gate_dsn, *base, "-c", clean),
    )
    assert gate.returncode == 0 and gate.stdout == direct.stdout, gate
    pii = r"\copy (SELECT id, email FROM customers WHERE id < 3 ORDER BY id) TO stdout WITH CSV"
    direct, gate = (
        run("psql", direct_dsn, *base, "-c", pii),
        run("psql", gate_dsn, *base, "-c", pii),
    )
    assert gate.returncode == 0, gate
    for raw, seen in zip(direct.stdout.splitlines(), gate.stdout.splitlines(), strict=True):
        raw_id, raw_email = raw.split(",")
        seen_id, seen_email = seen.split(",")
        assert seen_id == raw_id and seen_email != raw_email, seen
        assert seen_email.startswith("tok_email_"), seen
    expanded = ("-c", r"\x", "-c", "SELECT id, email, created_at FROM customers WHERE id = 1")
    direct, gate = (
        run("psql", direct_dsn, *base, *expanded),
        run("psql", gate_dsn, *base, *expanded),
    )
    assert gate.returncode == 0, gate
    lines = dict(
        (k.strip(), v.strip())
        for k, _, v in (line.partition("|") for line in gate.stdout.splitlines())
        if _
    )
    raw = dict(
        (k.strip(), v.strip())
        for k, _, v in (line.partition("|") for line in direct.stdout.splitlines())
        if _
    )
    assert lines["id"] == raw["id"] and lines["created_at"] == raw["created_at"]
    assert lines["email"].startswith("tok_email_") and lines["email"] != raw["email"]
