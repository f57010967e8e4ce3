"""PII tokenization in a running dbgate, through the paths the relay takes.

The PII room's own tests (tests/integration/pii/) drive a room directly; these run
the whole App, where the policy, the relay's verdict memory and Bind-time decisions
meet the result plans.
"""

from __future__ import annotations

import asyncio

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
    """set_config($1, ...) is decided at each Bind (the setting's name is a value).
    Beside PII it is held (what PII says may decide whether a state-keeping call runs:
    docs/pii.md, "Held, always"); once approved, the Bind's verdict must not drop the
    result plan made at Parse."""
    conn = await asyncpg.connect(env.dsn)
    try:
        sql = f"SELECT email, set_config($1, '8MB', false) AS s FROM {contacts} WHERE id = 1"
        after = env.app.last_id()
        fetch = asyncio.ensure_future(conn.fetchrow(sql, "work_mem"))
        (request,) = await env.app.await_pending(after)
        assert "set_config() runs in a statement that reads PII" in str(request["reasons"])
        await env.app.aapprove(request["id"])
        row = await fetch
        assert row["s"] == "8MB"
        assert row["email"] != SECRET and row["email"].startswith("tok_email_")
    finally:
        await conn.close()


async def test_a_token_bound_to_a_prepared_read_under_a_window_is_resolved(
    env: HoldsEnv, contacts: str
) -> None:
    """Every read here is under the default pack's rows-per-window limit, so the Binds
    of a prepared read are judged by its Parse verdict's quick judge (the window's
    cap); a Bind that carries a token must still reach the gate, to be resolved."""
    conn = await asyncpg.connect(env.dsn)
    try:
        token = await conn.fetchval(f"SELECT email FROM {contacts} WHERE id = 1")
        assert token.startswith("tok_email_")
        by_email = await conn.prepare(f"SELECT id, email FROM {contacts} WHERE email = $1")
        by_id = await conn.prepare(f"SELECT id, email FROM {contacts} WHERE id = $1")
        for _ in range(3):
            assert [tuple(r) for r in await by_email.fetch(token)] == [(1, token)]
            assert [tuple(r) for r in await by_id.fetch(1)] == [(1, token)]  # tokenized
    finally:
        await conn.close()


async def test_tokens_in_the_text_and_in_the_values_of_one_statement_are_all_resolved(
    env: HoldsEnv, contacts: str
) -> None:
    """A Parse whose text holds a token is forwarded with it resolved; its Binds'
    values may hold tokens as well, and are resolved too (never a silent miss)."""
    conn = await asyncpg.connect(env.dsn)
    try:
        token = await conn.fetchval(f"SELECT email FROM {contacts} WHERE id = 1")
        sql = f"SELECT id FROM {contacts} WHERE email = '{token}' AND email = $1"
        for _ in range(2):  # the second run reuses asyncpg's prepared statement
            assert [r["id"] for r in await conn.fetch(sql, token)] == [1]
        forged = token[:-4] + ("aaaa" if not token.endswith("aaaa") else "bbbb")
        with pytest.raises(asyncpg.InvalidParameterValueError):  # 22023
            await conn.fetch(sql, forged)
    finally:
        await conn.close()


async def test_errors_about_a_relation_created_after_start_are_withheld(env: HoldsEnv) -> None:
    """REFRESH MATERIALIZED VIEW CONCURRENTLY of a view whose query now yields a
    duplicate fails with ``DETAIL: Row: (…)``, the whole row. A view made after the
    schema snapshot was read is not in it: the statement's name for it must still
    count as unknown (read again, errors withheld), not as a relation without PII."""
    name = "Wilhelmina Zorn"
    admin_execute(
        env.admin_dsn,
        "DROP MATERIALIZED VIEW IF EXISTS late_people_mv",
        "DROP TABLE IF EXISTS late_people, late_marks",
        "CREATE TABLE late_people (id int PRIMARY KEY, full_name text NOT NULL)",
        f"INSERT INTO late_people VALUES (1, '{name}')",
        "CREATE TABLE late_marks (mark text)",
        "INSERT INTO late_marks VALUES ('vip')",
        "CREATE MATERIALIZED VIEW late_people_mv AS SELECT p.id, p.full_name"
        " FROM late_people p, late_marks m WHERE m.mark = 'vip'",
        "CREATE UNIQUE INDEX ON late_people_mv (id)",
        "INSERT INTO late_marks VALUES ('vip')",  # the view's query now repeats the row
        "GRANT SELECT ON late_people, late_marks, late_people_mv TO PUBLIC",
    )
    conn = await asyncpg.connect(env.dsn)
    try:
        with pytest.raises(asyncpg.PostgresError) as e:
            await conn.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY late_people_mv")
    finally:
        await conn.close()
    err = e.value
    said = " ".join(str(getattr(err, f, "") or "") for f in ("message", "detail", "hint"))
    assert err.sqlstate == "21000", said  # the server's own failure, not a refusal
    assert name not in said and "Zorn" not in said
    assert "withheld" in said


async def test_the_state_database_is_never_an_identitys(env: HoldsEnv) -> None:
    """The identities here may open any database (``databases: ["*"]``); the state
    database is still refused: its audit trail holds the literals other sessions
    sent (a name typed in a filter, an address in an update), raw."""
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="may not connect"):
        await asyncpg.connect(env.app.dsn(env.state_db))
    conn = await asyncpg.connect(env.dsn)  # the data database still opens
    await conn.close()


async def test_a_relation_the_snapshot_lacks_is_judged_while_the_session_locks_a_view(
    env: HoldsEnv,
) -> None:
    """``REFRESH MATERIALIZED VIEW`` (allowed) locks the view exclusively until its
    transaction ends. A later statement of that transaction naming a relation the
    snapshot lacks waited for the schema to be read again, and the read waited for the
    view's lock (``pg_get_viewdef``): the session hung for ever, the view locked for
    everyone. The read now gives up on the lock; the statement is judged on the old
    snapshot."""
    admin_execute(
        env.admin_dsn,
        "DROP MATERIALIZED VIEW IF EXISTS locked_mv",
        "CREATE MATERIALIZED VIEW locked_mv AS SELECT 1 AS id",
    )
    conn = await asyncpg.connect(env.dsn)
    try:
        await conn.execute("BEGIN")
        await conn.execute("REFRESH MATERIALIZED VIEW locked_mv")
        with pytest.raises(asyncpg.UndefinedTableError):
            await asyncio.wait_for(conn.fetch("SELECT * FROM not_in_the_snapshot"), 60)
        await conn.execute("ROLLBACK")
    finally:
        await conn.close()
