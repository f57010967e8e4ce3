"""PII tokenization in a running dbgate, through the paths the relay takes.

The PII room's own tests (tests/integration/pii/) drive a room directly; these run
the whole App, where the policy, the relay's verdict memory and Bind-time decisions
meet the result plans.
"""

from __future__ import annotations

import asyncpg
import psycopg
import pytest

from tests.integration.holds.harness import HoldsEnv, admin_execute

SECRET = "wilhelmina.zorn@example.org"


@pytest.fixture(scope="module")
def contacts(env: HoldsEnv) -> str:
    admin_execute(
        env.admin_dsn,
        "DROP TABLE IF EXISTS contacts",
        "CREATE TABLE contacts (id int PRIMARY KEY, email text NOT NULL, kind text)",
        f"INSERT INTO contacts VALUES (1, '{SECRET}', 'a'), (2, 'other@example.net', 'b')",
        "GRANT SELECT ON contacts TO PUBLIC",
    )
    return "contacts"


async def test_a_bind_time_decision_keeps_the_statements_tokenization(
    env: HoldsEnv, contacts: str
) -> None:
    """LIMIT $1 is decided at each Bind (its value says whether the read is bounded);
    the Bind's verdict must not drop the result plan made at Parse."""
    conn = await asyncpg.connect(env.dsn)
    try:
        for _ in range(2):  # the second run reuses asyncpg's prepared statement
            rows = await conn.fetch(f"SELECT email FROM {contacts} ORDER BY id LIMIT $1", 1)
            assert len(rows) == 1
            assert rows[0]["email"] != SECRET and rows[0]["email"].startswith("tok_email_")
    finally:
        await conn.close()


def test_psycopg_binary_parameters_keep_tokenization(env: HoldsEnv, contacts: str) -> None:
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        cur = conn.cursor(binary=True)
        for _ in range(3):  # psycopg prepares after a few runs
            cur.execute(f"SELECT id, email FROM {contacts} WHERE id = %s", (1,))
            (row,) = cur.fetchall()
            assert row[0] == 1 and row[1] != SECRET and row[1].startswith("tok_email_")


async def test_a_table_created_after_start_is_known_without_a_restart(env: HoldsEnv) -> None:
    """The schema snapshot is read again when a statement names a relation it lacks:
    the new table's non-PII columns come back as they are, its PII tokenized."""
    admin_execute(
        env.admin_dsn,
        "DROP TABLE IF EXISTS late_table",
        "CREATE TABLE late_table (id int PRIMARY KEY, email text, note text)",
        f"INSERT INTO late_table VALUES (7, '{SECRET}', 'plain')",
        "GRANT SELECT ON late_table TO PUBLIC",
    )
    conn = await asyncpg.connect(env.dsn)
    try:
        row = await conn.fetchrow("SELECT id, email, note FROM late_table WHERE id = 7")
    finally:
        await conn.close()
    assert (row["id"], row["note"]) == (7, "plain")
    assert row["email"] != SECRET and row["email"].startswith("tok_email_")


async def test_a_statement_decided_at_bind_keeps_its_tokenization(
    env: HoldsEnv, contacts: str
) -> None:
    """set_config($1, ...) is decided at each Bind (the setting's name is a value);
    the Bind's verdict must not drop the result plan made at Parse."""
    conn = await asyncpg.connect(env.dsn)
    try:
        sql = f"SELECT email, set_config($1, '8MB', false) AS s FROM {contacts} WHERE id = 1"
        for _ in range(2):
            row = await conn.fetchrow(sql, "work_mem")
            assert row["s"] == "8MB"
            assert row["email"] != SECRET and row["email"].startswith("tok_email_")
    finally:
        await conn.close()
