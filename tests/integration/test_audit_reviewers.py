"""What a reviewer does with psql: the queries of docs/audit.md, run as written by a
member of ``dbgate_auditor`` against recorded data, and what that role may not do."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import asyncpg
import pytest

from dbgate.audit.events import ApprovalEvent, SessionEvent, StatementEvent
from dbgate.audit.verify import verify_database
from dbgate.audit.writer import AuditWriter
from tests.integration.audit_support import (
    create_state_database,
    drop_state_database,
    fast_config,
)

DB = "dbgate_audit_reviewers"
DOC = Path(__file__).resolve().parents[2] / "docs" / "audit.md"
AUDITOR = "dbgate_test_auditor"


def doc_queries() -> dict[str, str]:
    """The ```sql blocks of docs/audit.md that start with ``-- query: NAME``."""
    found = {}
    for block in re.findall(r"```sql\n(.*?)```", DOC.read_text(), re.S):
        first, _, rest = block.partition("\n")
        m = re.fullmatch(r"-- query: ([a-z0-9-]+)", first.strip())
        if m:
            found[m.group(1)] = rest.strip().rstrip(";")
    return found


QUERIES = doc_queries()


def test_the_documented_queries_are_all_here() -> None:
    assert set(QUERIES) == {
        "identity-yesterday",
        "approved-exports-this-month",
        "approved-exports-this-month-audit-only",
        "touched-customers-ssn",
        "denied-by-identity",
    }


def S(event: str, sql: str, at: float, **kw) -> StatementEvent:
    return StatementEvent(event, sql, at=at, **kw)


@pytest.fixture(scope="module")
async def trail(pg_server) -> AsyncIterator[tuple[str, str]]:
    """(superuser DSN, auditor DSN) of a state database with a reviewer's day in it."""
    dsn = await create_state_database(pg_server, DB)
    conn = await asyncpg.connect(dsn)
    yesterday = await conn.fetchval(
        "SELECT extract(epoch FROM (current_date - 1 + time '12:00')::timestamptz)::float8"
    )
    now = await conn.fetchval("SELECT extract(epoch FROM now())::float8")
    password = secrets.token_urlsafe(12)
    await conn.execute(f'DROP ROLE IF EXISTS "{AUDITOR}"')
    await conn.execute(
        f"CREATE ROLE \"{AUDITOR}\" LOGIN PASSWORD '{password}' IN ROLE dbgate_auditor"
    )
    await conn.close()
    ra = "reporting-agent"
    events = [
        # reporting-agent, yesterday
        SessionEvent("connect", identity=ra, at=yesterday, client_addr="10.1.1.1:5000"),
        S(
            "completed",
            "SELECT count(*) FROM orders",
            yesterday + 1,
            identity=ra,
            outcome="SELECT 1",
        ),
        S(
            "refused",
            "DROP TABLE orders",
            yesterday + 2,
            identity=ra,
            decision="deny",
            outcome="42501",
        ),
        # not yesterday, or not reporting-agent
        S("completed", "SELECT 1", now, identity=ra, outcome="SELECT 1"),
        S("completed", "SELECT 2", yesterday + 3, identity="other-agent", outcome="SELECT 1"),
        # an approved export this month, two approvers
        S(
            "decided",
            "COPY customers TO STDOUT",
            now,
            identity=ra,
            decision="hold",
            categories=("export",),
            approval_id="101",
        ),
        ApprovalEvent("approved", "101", at=now, identity=ra, actor="alice", reason="quarterly"),
        ApprovalEvent("approved", "101", at=now, identity=ra, actor="bob", reason="fine"),
        S(
            "decided",
            "COPY customers TO STDOUT",
            now,
            identity=ra,
            decision="approved",
            categories=("export",),
            approval_id="101",
        ),
        S(
            "completed",
            "COPY customers TO STDOUT",
            now,
            identity=ra,
            decision="approved",
            categories=("export",),
            approval_id="101",
            outcome="COPY 5000",
            rows=5000,
        ),
        # a rejected export, an approved write, an export allowed by a rule
        S(
            "refused",
            "COPY orders TO STDOUT",
            now,
            identity="agent-1",
            decision="rejected",
            categories=("export",),
            approval_id="102",
            outcome="42501",
        ),
        S(
            "completed",
            "UPDATE orders SET status = 'x'",
            now,
            identity=ra,
            decision="approved",
            categories=("write",),
            approval_id="103",
            outcome="UPDATE 3",
            rows=3,
        ),
        S(
            "completed",
            "COPY (SELECT 1) TO STDOUT",
            now,
            identity=ra,
            categories=("export",),
            outcome="COPY 1",
        ),
        # who touched customers.ssn
        S(
            "decided",
            "SELECT ssn FROM customers",
            now,
            identity="agent-1",
            decision="hold",
            tables=("customers",),
            columns=("customers.ssn",),
        ),
        S(
            "completed",
            "SELECT ssn FROM customers",
            now,
            identity="agent-1",
            decision="approved",
            tables=("customers",),
            columns=("customers.ssn",),
            outcome="SELECT 10",
        ),
        S(
            "completed",
            "SELECT * FROM customers",
            now,
            identity="agent-2",
            tables=("customers",),
            outcome="SELECT 10",
        ),
        S(
            "completed",
            "SELECT id FROM orders /* ssn */",
            now,
            identity="agent-2",
            tables=("orders",),
            columns=("orders.id",),
            outcome="SELECT 10",
        ),
        S(
            "completed",
            "SELECT email FROM public.customers",
            now,
            identity="agent-2",
            tables=("public.customers",),
            columns=("customers.email",),
            outcome="SELECT 10",
        ),
        # denied attempts
        S("refused", "GRANT ALL ON orders TO agent1", now, identity="agent-1", decision="deny"),
        S("refused", "ALTER ROLE agent1 SUPERUSER", now, identity="agent-1", decision="deny"),
        SessionEvent("auth_failed", identity="mallory", at=now, outcome="28P01"),
    ]
    w = AuditWriter(dsn, fast_config())
    await w.start()
    for e in events:
        w.record(e)
    await w.stop()
    parts = pg_server.dsn(DB).split("@", 1)[1]
    auditor_dsn = f"postgresql://{AUDITOR}:{quote(password, safe='')}@{parts}"
    yield dsn, auditor_dsn
    await drop_state_database(pg_server, DB)
    admin = await asyncpg.connect(pg_server.dsn("postgres"))
    try:
        await admin.execute(f'DROP ROLE IF EXISTS "{AUDITOR}"')
    finally:
        await admin.close()


@pytest.fixture
async def auditor(trail) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(trail[1])
    yield conn
    await conn.close()


async def test_everything_an_identity_did_yesterday(auditor) -> None:
    rows = await auditor.fetch(QUERIES["identity-yesterday"])
    assert [(r["kind"], r["event"], r["statement"]) for r in rows] == [
        ("session", "connect", None),
        ("statement", "completed", "SELECT count(*) FROM orders"),
        ("statement", "refused", "DROP TABLE orders"),
    ]
    assert rows[2]["decision"] == "deny" and rows[2]["outcome"] == "42501"


async def test_approved_exports_this_month_and_who_approved_them(auditor) -> None:
    """Against the approvals view's documented contract columns (a stand-in with
    exactly those columns, until dbgate.approvals exists in this database)."""
    await auditor.execute(
        "CREATE TEMP TABLE approvals_contract (id bigint, status text, identity text, "
        "statement text, decided_by text[], reason text)"
    )
    await auditor.execute(
        "INSERT INTO approvals_contract VALUES "
        "(101, 'executed', 'reporting-agent', 'COPY customers TO STDOUT', '{alice,bob}', 'quarterly'),"
        "(102, 'rejected', 'agent-1', 'COPY orders TO STDOUT', '{carol}', 'no'),"
        "(103, 'executed', 'reporting-agent', 'UPDATE orders SET status = ?', '{alice}', 'ok')"
    )
    query = QUERIES["approved-exports-this-month"]
    assert "dbgate.approvals AS a" in query
    rows = await auditor.fetch(query.replace("dbgate.approvals", "pg_temp.approvals_contract"))
    assert [(r["identity"], r["statement"], r["rows"], r["decided_by"]) for r in rows] == [
        ("reporting-agent", "COPY customers TO STDOUT", 5000, ["alice", "bob"])
    ]
    if await auditor.fetchval("SELECT to_regclass('dbgate.approvals') IS NOT NULL"):
        await auditor.fetch(query)  # the real view has the contract's columns


async def test_approved_exports_from_the_audit_trail_alone(auditor) -> None:
    rows = await auditor.fetch(QUERIES["approved-exports-this-month-audit-only"])
    assert [(r["statement"], r["approved_by"], r["reason"]) for r in rows] == [
        ("COPY customers TO STDOUT", "alice", "quarterly"),
        ("COPY customers TO STDOUT", "bob", "fine"),
    ]


async def test_every_statement_that_touched_customers_ssn(auditor) -> None:
    rows = await auditor.fetch(QUERIES["touched-customers-ssn"])
    assert [(r["identity"], r["statement"]) for r in rows] == [
        ("agent-1", "SELECT ssn FROM customers"),
        ("agent-2", "SELECT * FROM customers"),
    ]


async def test_denied_attempts_by_identity(auditor) -> None:
    rows = await auditor.fetch(QUERIES["denied-by-identity"])
    assert [(r["identity"], r["denied"], r["rejected"], r["failed_logins"]) for r in rows] == [
        ("agent-1", 2, 1, 0),
        ("reporting-agent", 1, 0, 0),
        ("mallory", 0, 0, 1),
    ]


async def test_the_auditor_reads_the_views_only(auditor, trail) -> None:
    assert await auditor.fetchval("SELECT count(*) FROM dbgate.audit_writers") == 1
    await auditor.fetchval("SELECT count(*) FROM dbgate.audit_archive")
    for sql in (
        "SELECT * FROM dbgate.audit_events",
        "SELECT * FROM dbgate.audit_chains",
        "SELECT * FROM dbgate.audit_anchors",
        "INSERT INTO dbgate.audit_log (statement) VALUES ('x')",
        "DELETE FROM dbgate.audit_log",
        "SELECT dbgate.audit_ensure_month(current_date)",
        "SELECT dbgate.audit_detach_month('2000-01-01')",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await auditor.execute(sql)


async def test_the_auditor_can_verify_the_trail(trail) -> None:
    report = await verify_database(trail[1])
    assert report.ok, report.text()
    assert report.records == 23  # 21 events, chain_start, chain_end
    # several connections sharing the auditor's exported snapshot
    ranged = await verify_database(trail[1], jobs=3, range_rows=5)
    assert ranged.ok and ranged.records == 23


async def test_every_column_of_the_view_is_documented(auditor) -> None:
    text = DOC.read_text()
    section = text[text.index("### `dbgate.audit_log`") : text.index("### `dbgate.audit_writers`")]
    documented = re.findall(r"^\| `(\w+)`", section, re.M)
    columns = [
        r[0]
        for r in await auditor.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'dbgate.audit_log'::regclass "
            "AND attnum > 0 ORDER BY attnum"
        )
    ]
    assert sorted(documented) == sorted(columns)
    assert {"id", "at", "identity", "statement", "categories", "decision", "outcome"} <= set(
        columns
    )


async def test_the_trail_keeps_only_the_indexes_its_readers_need(trail) -> None:
    """Each index costs the state database CPU on every record written (one per
    statement): what is there is what verification, the approvers' page and the
    time-bounded reviewer queries use (migration 0022 dropped (identity, at))."""
    conn = await asyncpg.connect(trail[0])
    try:
        rows = await conn.fetch(
            "SELECT c.relname, am.amname FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam"
            " WHERE i.indrelid = 'dbgate.audit_events'::regclass ORDER BY 1"
        )
    finally:
        await conn.close()
    assert [(r["relname"], r["amname"]) for r in rows] == [
        ("audit_events_approval", "btree"),
        ("audit_events_at", "brin"),
        ("audit_events_chain_seq", "btree"),
    ]


async def test_an_identity_over_a_period_is_read_through_an_index(auditor) -> None:
    """Without its own B-tree, the identity query still narrows by time: with
    sequential and plain index scans priced out (a whole-index scan of another index
    would otherwise do, whatever the statistics say), a bitmap scan of the BRIN on
    ``at`` is the path left, the one a large trail takes."""
    async with auditor.transaction():
        await auditor.execute("SET LOCAL enable_seqscan = off")
        await auditor.execute("SET LOCAL enable_indexscan = off")
        plan = "\n".join(
            r[0] for r in await auditor.fetch("EXPLAIN " + QUERIES["identity-yesterday"])
        )
    assert "Seq Scan" not in plan, plan
    # the month partition's BRIN (audit_events_YYYY_MM_at_idx), by the time bound
    assert re.search(r"Bitmap Index Scan on audit_events_\d{4}_\d{2}_at_idx", plan), plan
    assert "Index Cond: ((at >= " in plan, plan
