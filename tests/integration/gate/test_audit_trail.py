"""The audit trail of a running dbgate: what reviewers read in ``dbgate.audit_log``.

Every statement is recorded with its decision and outcome; what is unsafe is durable
before it happens (a refusal before the client hears of it, an approval before the
statement is forwarded); no raw literal or value reaches the log; the chain verifies.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import Any

import asyncpg
import pytest

from tests.integration.holds.clients import AsyncpgNotices
from tests.integration.holds.harness import HoldsEnv, admin_execute

SECRET_EMAIL = "zelda.quist@example.org"


def audit(env: HoldsEnv, where: str, *args: Any) -> list[dict[str, Any]]:
    """Records of the audit log (after the writer's queue was written)."""
    env.app.call(env.app.app.audit.flush())
    return env.app.rows(f"SELECT * FROM dbgate.audit_log WHERE {where} ORDER BY chain, seq", *args)


def durable(env: HoldsEnv, where: str, *args: Any) -> list[dict[str, Any]]:
    """Records already committed, without asking the writer to flush anything."""
    return env.app.rows(f"SELECT * FROM dbgate.audit_log WHERE {where} ORDER BY chain, seq", *args)


@pytest.fixture(scope="module")
def people(env: HoldsEnv) -> str:
    admin_execute(
        env.admin_dsn,
        "DROP TABLE IF EXISTS people",
        "CREATE TABLE people (id int PRIMARY KEY, email text NOT NULL, note text)",
        f"INSERT INTO people VALUES (1, '{SECRET_EMAIL}', 'first'), (2, 'b@example.net', 'x')",
        "GRANT SELECT, UPDATE ON people TO PUBLIC",
    )
    return "people"


async def test_an_allowed_statement_is_recorded_with_its_outcome_and_no_literal(
    env: HoldsEnv, people: str
) -> None:
    conn = await asyncpg.connect(env.dsn, server_settings={"application_name": "audit-test"})
    try:
        rows = await conn.fetch(f"SELECT id, note FROM {people} WHERE id = 1 AND note <> 'zz-7'")
        assert [tuple(r) for r in rows] == [(1, "first")]
        pid = await conn.fetchval("SELECT 7")
        assert pid == 7
    finally:
        await conn.close()
    recs = audit(env, "kind = 'statement' AND statement LIKE $1", f"%FROM {people} WHERE id%")
    assert len(recs) == 1
    r = recs[0]
    assert (r["event"], r["decision"], r["identity"]) == ("completed", "allow", "agent")
    assert r["statement"] == f"SELECT id, note FROM {people} WHERE id = $1 AND note <> $2"
    assert r["outcome"] == "SELECT 1" and r["rows"] == 1
    assert r["application_name"] == "audit-test" and r["database"] == env.data_db
    assert "read" in r["categories"] and r["tables"] == [people]


async def test_a_denied_statement_is_durable_before_the_client_hears_of_it(env: HoldsEnv) -> None:
    conn = await asyncpg.connect(env.dsn)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("COPY (SELECT 1) TO PROGRAM 'cat > /tmp/dbgate-audit-x'")
        # no flush: the refusal was committed before the error was sent
        recs = durable(env, "kind = 'statement' AND statement LIKE 'COPY (SELECT%'")
    finally:
        await conn.close()
    assert len(recs) == 1
    r = recs[0]
    assert (r["event"], r["decision"], r["outcome"]) == ("refused", "deny", "42501")
    assert r["rule"] and r["reason"].startswith("dbgate:")
    assert r["statement"] == "COPY (SELECT $1) TO PROGRAM $2"


async def test_a_held_statement_is_recorded_held_approved_then_completed(
    env: HoldsEnv, people: str
) -> None:
    conn = await asyncpg.connect(env.dsn)
    notices = AsyncpgNotices(conn)
    try:
        running = asyncio.create_task(conn.execute(f"UPDATE {people} SET note = 'n2'"))
        rid = await notices.held()
        held = durable(
            env,
            "approval_id IS NULL AND decision = 'hold' AND statement LIKE $1",
            f"UPDATE {people}%",
        )
        assert len(held) == 1 and held[0]["event"] == "decided"
        await env.app.aapprove(rid, "agreed")
        assert await running == "UPDATE 2"
    finally:
        running.cancel()
        await conn.close()
    recs = audit(env, "kind = 'statement' AND approval_id = $1", str(rid))
    assert [(r["event"], r["decision"]) for r in recs] == [
        ("decided", "approved"),
        ("completed", "approved"),
    ]
    assert recs[1]["outcome"] == "UPDATE 2" and recs[1]["rows"] == 2
    assert recs[0]["statement"] == f"UPDATE {people} SET note = $1"


async def test_a_rejected_statement_is_recorded_rejected(env: HoldsEnv, people: str) -> None:
    conn = await asyncpg.connect(env.dsn)
    notices = AsyncpgNotices(conn)
    try:
        running = asyncio.create_task(conn.execute(f"DELETE FROM {people}"))
        rid = await notices.held()
        await env.app.areject(rid, "no")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await running
        recs = durable(env, "kind = 'statement' AND approval_id = $1", str(rid))
    finally:
        running.cancel()
        await conn.close()
    assert [(r["event"], r["decision"], r["outcome"]) for r in recs] == [
        ("refused", "rejected", "42501")
    ]


async def test_no_raw_pii_reaches_the_audit(env: HoldsEnv, people: str) -> None:
    conn = await asyncpg.connect(env.dsn)
    try:
        # a literal in the text and a bind value: both PII
        got = await conn.fetch(f"SELECT id FROM {people} WHERE email = '{SECRET_EMAIL}'")
        assert [r["id"] for r in got] == [1]
        got = await conn.fetch(f"SELECT id FROM {people} WHERE email = $1", SECRET_EMAIL)
        assert [r["id"] for r in got] == [1]
        tokenized = await conn.fetchval(f"SELECT email FROM {people} WHERE id = 1")
        assert tokenized != SECRET_EMAIL
    finally:
        await conn.close()
    recs = audit(env, "kind = 'statement' AND statement LIKE $1", f"%FROM {people} WHERE email%")
    assert len(recs) == 2
    dump = env.app.rows("SELECT string_agg(t::text, ' ') AS all FROM dbgate.audit_log t")[0]["all"]
    assert SECRET_EMAIL not in dump
    bound = [r for r in recs if r["params"]]
    assert len(bound) == 1 and bound[0]["params"][0].startswith("h:")


async def test_no_literal_reaches_the_audit_whatever_its_place(env: HoldsEnv, people: str) -> None:
    """Literals the quick mask copies (a long number) or whose column an alias hides, in
    a text with a parameter: every one is masked, not only those next to a PII column."""
    conn = await asyncpg.connect(env.dsn)
    try:
        await conn.fetch(f"SELECT id FROM {people} WHERE id = 1 AND length(email) <> 5551234567")
        await conn.fetch(
            f"SELECT id FROM (SELECT id, email AS e FROM {people}) x "
            "WHERE e = E'Zelda Quist' AND id = $1",
            1,
        )
    finally:
        await conn.close()
    recs = audit(env, "kind = 'statement' AND statement LIKE $1", f"%FROM {people}%")
    texts = [r["statement"] for r in recs]
    assert any("length(email) <> $" in t for t in texts)
    assert any("WHERE e = $" in t for t in texts)
    dump = env.app.rows("SELECT string_agg(t::text, ' ') AS all FROM dbgate.audit_log t")[0]["all"]
    assert "5551234567" not in dump and "Zelda Quist" not in dump


async def test_bind_values_of_held_and_refused_statements_are_hashed(
    env: HoldsEnv, people: str
) -> None:
    """A held, rejected or denied statement's Bind values reach the trail as the gate
    decoded them (text): they are hashed like an allowed statement's, not stored."""
    conn = await asyncpg.connect(env.dsn)
    notices = AsyncpgNotices(conn)
    try:
        running = asyncio.create_task(
            conn.execute(f"UPDATE {people} SET note = $1", "Zelda Quist, 1 Quist Lane")
        )
        rid = await notices.held()
        await env.app.areject(rid, "no")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await running
        # decided at Bind, with the values: a logging setting is server administration
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetchval("SELECT set_config($1, $2, false)", "log_statement", "all -- Quist")
    finally:
        running.cancel()
        await conn.close()
    recs = audit(env, "kind = 'statement' AND params IS NOT NULL AND event <> 'completed'")
    assert {(r["event"], r["decision"]) for r in recs} >= {("decided", "hold"), ("refused", "deny")}
    assert all(p.startswith("h:") for r in recs for p in r["params"] if p is not None)
    dump = env.app.rows("SELECT string_agg(t::text, ' ') AS all FROM dbgate.audit_log t")[0]["all"]
    assert "Quist" not in dump


async def test_approvers_see_a_catalog_pii_columns_values_masked(env: HoldsEnv) -> None:
    """A column the PII catalog knows by its comment, whose name says nothing: what
    is assigned to it is masked for the approver as a PII-named column's would be."""
    admin_execute(
        env.admin_dsn,
        "DROP TABLE IF EXISTS holders",
        "CREATE TABLE holders (id int PRIMARY KEY, holder text)",
        "COMMENT ON COLUMN holders.holder IS 'pii:name'",
        "INSERT INTO holders VALUES (1, 'x')",
        "GRANT SELECT, UPDATE ON holders TO PUBLIC",
    )
    conn = await asyncpg.connect(env.dsn)
    notices = AsyncpgNotices(conn)
    try:
        running = asyncio.create_task(conn.execute("UPDATE holders SET holder = 'Zelda Quist'"))
        rid = await notices.held()
        await env.app.areject(rid, "no")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await running
    finally:
        running.cancel()
        await conn.close()
    (row,) = env.app.rows("SELECT statement FROM dbgate.approvals WHERE id = $1", rid)
    assert row["statement"] == "UPDATE holders SET holder = '<holder>'"


async def test_sessions_are_recorded(env: HoldsEnv) -> None:
    conn = await asyncpg.connect(env.dsn, server_settings={"application_name": "sess-audit"})
    sid = await conn.fetchval("SELECT 1")
    assert sid == 1
    await conn.close()
    recs = audit(
        env, "kind = 'session' AND application_name IN ('', 'sess-audit') AND identity = 'agent'"
    )
    assert {"connect", "disconnect"} <= {r["event"] for r in recs}
    bad = await _bad_password(env)
    assert bad == "28P01"
    failed = audit(env, "kind = 'session' AND event = 'auth_failed'")
    assert failed and failed[-1]["outcome"] == "28P01"


async def _bad_password(env: HoldsEnv) -> str:
    try:
        await asyncpg.connect(env.app.dsn(env.data_db, password="wrong"))
    except asyncpg.PostgresError as e:
        return e.sqlstate  # type: ignore[no-any-return]
    return ""


def test_the_trail_verifies(env: HoldsEnv, people: str) -> None:
    env.app.call(env.app.app.audit.flush())
    state_dsn = env.pg_server.dsn(env.state_db)
    done = subprocess.run(
        [sys.executable, "-m", "dbgate", "audit", "verify", "--dsn", state_dsn],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


async def test_approval_steps_are_recorded_with_who_decided(env: HoldsEnv, people: str) -> None:
    conn = await asyncpg.connect(env.dsn)
    notices = AsyncpgNotices(conn)
    try:
        running = asyncio.create_task(conn.execute(f"UPDATE {people} SET note = 'n3'"))
        rid = await notices.held()
        await env.app.aapprove(rid, "looks fine")
        assert await running == "UPDATE 2"
        await env.app.await_status(rid, "executed")
    finally:
        running.cancel()
        await conn.close()
    # The store reports "executed" just after committing the status the test waited
    # for: flush until that step has been told (or the deadline says it never was).
    deadline = time.monotonic() + 20
    while True:
        recs = audit(env, "kind = 'approval' AND approval_id = $1", str(rid))
        if any(r["event"] == "executed" for r in recs) or time.monotonic() > deadline:
            break
    recs.sort(key=lambda r: r["at"])  # one chain's order is the order events were told
    assert [(r["event"], r["actor"]) for r in recs] == [
        ("requested", None),
        ("approved", "alice"),
        ("executed", None),
    ]
    assert recs[1]["reason"] == "looks fine"
    # as approvers see it, every literal then masked as in statement records
    assert recs[0]["statement"] == f"UPDATE {people} SET note = $1"


def test_a_decision_from_the_shell_is_recorded(env: HoldsEnv, people: str) -> None:
    async def held() -> tuple[int, asyncpg.Connection, asyncio.Task[str]]:
        conn = await asyncpg.connect(env.dsn)
        notices = AsyncpgNotices(conn)
        running = asyncio.create_task(conn.execute(f"DELETE FROM {people}"))
        return await notices.held(), conn, running

    loop = asyncio.new_event_loop()
    try:
        rid, conn, running = loop.run_until_complete(held())
        state_dsn = env.pg_server.dsn(env.state_db)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "dbgate",
                "approvals",
                "reject",
                str(rid),
                "--dsn",
                state_dsn,
                "--as",
                "alice",
                "--reason",
                "from the shell",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            loop.run_until_complete(running)
        loop.run_until_complete(conn.close())
    finally:
        loop.close()
    recs = durable(env, "kind = 'approval' AND approval_id = $1 AND event = 'rejected'", str(rid))
    assert len(recs) == 1
    assert (recs[0]["actor"], recs[0]["reason"]) == ("alice", "from the shell")
    assert recs[0]["chain"].startswith("cli-")


def _readme_queries() -> list[str]:
    """The SQL of the README's "Reviewing the audit trail" section, one per statement."""
    from pathlib import Path

    text = (Path(__file__).parents[3] / "README.md").read_text()
    section = text.split("## Reviewing the audit trail", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sql\n", 1)[1].split("```", 1)[0]
    return [q.strip() for q in block.split(";") if q.strip()]


async def test_the_readmes_reviewer_queries_run_as_the_auditor(env: HoldsEnv, people: str) -> None:
    conn = await asyncpg.connect(env.dsn)
    try:
        got = await conn.fetch(f"SELECT id FROM {people} WHERE email = $1", "b@example.net")
        assert [r["id"] for r in got] == [2]
    finally:
        await conn.close()
    env.app.call(env.app.app.audit.flush())
    admin = env.pg_server.dsn(env.state_db)
    admin_execute(
        admin,
        "DROP ROLE IF EXISTS readme_auditor",
        "CREATE ROLE readme_auditor LOGIN PASSWORD 'readme' IN ROLE dbgate_auditor",
        f"GRANT CONNECT ON DATABASE {env.state_db} TO readme_auditor",
    )
    queries = _readme_queries()
    assert len(queries) == 4
    auditor = await asyncpg.connect(
        host=env.pg_server.host,
        port=env.pg_server.port,
        user="readme_auditor",
        password="readme",
        database=env.state_db,
    )
    try:
        for q in queries:
            await auditor.fetch(q)  # each runs as written, with the auditor's rights
        touched = await auditor.fetch(queries[2].replace("customers.ssn", f"{people}.email"))
        assert touched and all(r["identity"] == "agent" for r in touched)
    finally:
        await auditor.close()
        admin_execute(admin, "DROP OWNED BY readme_auditor", "DROP ROLE readme_auditor")


async def test_records_say_what_the_agent_declared_and_whether_results_were_tokenized(
    env: HoldsEnv, people: str
) -> None:
    conn = await asyncpg.connect(env.dsn, server_settings={"dbgate.purpose": "ticket 42"})
    try:
        tokens = await conn.fetch(f"SELECT email, id AS declared FROM {people} WHERE id = 2")
        assert tokens[0]["email"] != "b@example.net"
        await conn.execute("SET dbgate.model = 'model-x'")
        notes = await conn.fetch(
            f"/* dbgate: purpose='just notes' */ SELECT note FROM {people} WHERE id IN (1, 2)"
        )
        assert len(notes) == 2
    finally:
        await conn.close()
    [emails] = audit(
        env,
        "kind = 'statement' AND statement = $1",
        f"SELECT email, id AS declared FROM {people} WHERE id = $1",
    )
    assert (emails["purpose"], emails["model"], emails["tokenized"]) == ("ticket 42", None, True)
    [plain] = audit(
        env, "kind = 'statement' AND statement LIKE $1", f"%SELECT note FROM {people} WHERE%"
    )
    assert (plain["purpose"], plain["model"], plain["tokenized"]) == (
        "just notes",
        "model-x",
        False,
    )
