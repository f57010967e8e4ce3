"""PgApprovalService against a real state database: hold, decide, wake, retry, shapes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
from collections.abc import AsyncIterator

import asyncpg
import pytest

from dbgate.approvals.eligibility import Approver
from dbgate.approvals.errors import Conflict, Forbidden
from dbgate.approvals.model import HoldStatus
from dbgate.approvals.service import PgApprovalService
from tests.integration.approvals_helpers import (
    PII_SQL,
    PII_VALUES,
    Notices,
    add_approver,
    drop_database,
    fresh_database,
    make_request,
    running_service,
)

DB = "dbgate_approvals_service_test"
ALICE = Approver("alice", frozenset({"dba"}))
BOB = Approver("bob", frozenset({"dba", "security"}))
CAROL = Approver("carol", frozenset({"support"}))


@pytest.fixture(scope="module")
async def state_dsn(pg_server) -> AsyncIterator[str]:
    dsn = await fresh_database(pg_server, DB)
    yield dsn
    await drop_database(pg_server, DB)


@pytest.fixture
async def svc(state_dsn) -> AsyncIterator[PgApprovalService]:
    async with running_service(
        state_dsn, replica="replica-a", owners={"agent": ["olga"]}, recheck_seconds=0.5
    ) as s:
        for who in (ALICE, BOB, CAROL):
            with contextlib.suppress(Conflict):
                await s.accounts.add(who.name, who.groups, None)
        yield s


@pytest.fixture
async def other(state_dsn) -> AsyncIterator[PgApprovalService]:
    """A second replica: its own pool and listener on the same state database."""
    async with running_service(state_dsn, replica="replica-b", recheck_seconds=0.5) as s:
        yield s


async def _row(dsn: str, request_id: int) -> asyncpg.Record:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchrow(
            "SELECT status, mode, statement, params::text AS params, match_hash, reason, "
            "row_to_json(r)::text AS everything FROM dbgate.approval_requests r WHERE id = $1",
            request_id,
        )
    finally:
        await conn.close()


async def test_hold_records_masked_then_waits_for_an_approval(svc, state_dsn) -> None:
    notices = Notices()
    task = asyncio.create_task(svc.hold(make_request(PII_SQL, ("4111111111111111",)), notices))
    rid = await notices.request_id()
    message, detail = notices.items[0]
    assert f"request {rid}" in message and "waiting up to 60 s" in message
    assert "destructive statements are held" in message
    assert detail == f"Decide at http://approvals.test/approvals/{rid}"
    row = await _row(state_dsn, rid)
    assert row["status"] == "pending" and row["mode"] == "wait"
    assert "'<email>'" in row["statement"] and "'<ssn>'" in row["statement"]
    assert len(row["match_hash"]) == 32
    for raw in PII_VALUES:
        assert raw not in row["everything"]
    assert not task.done()

    rec = await svc.store.decide(rid, ALICE, approve=True, reason="looks right")
    assert rec.status == "approved"
    outcome = await task
    assert outcome.status is HoldStatus.APPROVED
    assert outcome.request_id == str(rid)
    assert outcome.decided_by == ("alice",)
    assert outcome.reason == "looks right"
    assert outcome.url.endswith(f"/approvals/{rid}")

    await svc.executed(outcome.request_id)
    assert (await _row(state_dsn, rid))["status"] == "executed"


async def test_names_the_agent_quoted_are_masked_by_look(svc, state_dsn) -> None:
    """A quoted identifier holds whatever the agent typed: FROM "ann.lee@example.com"."""
    from dataclasses import replace

    sql = 'DELETE FROM "ann.lee@example.com" WHERE "078-05-1120" = 1'
    request = replace(
        make_request(sql, wait=0, identity="names"),
        tables=("ann.lee@example.com",),
        columns=("ann.lee@example.com.078-05-1120",),
    )
    outcome = await svc.hold(request, Notices())
    row = await _row(state_dsn, int(outcome.request_id))
    assert "ann.lee" not in row["everything"] and "078-05-1120" not in row["everything"]
    assert '"tables":["<email>"]' in row["everything"]


async def test_a_rejection_returns_the_approvers_reason(svc) -> None:
    notices = Notices()
    task = asyncio.create_task(svc.hold(make_request(), notices))
    rid = await notices.request_id()
    await svc.store.decide(rid, BOB, approve=False, reason="not during business hours")
    outcome = await task
    assert outcome.status is HoldStatus.REJECTED
    assert outcome.reason == "not during business hours"
    assert outcome.decided_by == ("bob",)


async def test_a_wait_that_runs_out_expires_and_cannot_be_decided_after(svc, state_dsn) -> None:
    outcome = await svc.hold(make_request(wait=0.2), Notices())
    assert outcome.status is HoldStatus.EXPIRED
    assert "nobody decided within 0.2 s" in outcome.reason
    rid = int(outcome.request_id)
    assert (await _row(state_dsn, rid))["status"] == "expired"
    with pytest.raises(Conflict, match="expired"):
        await svc.store.decide(rid, ALICE, approve=True, reason="")


async def test_cancelling_the_wait_withdraws_the_request(svc, state_dsn) -> None:
    notices = Notices()
    task = asyncio.create_task(svc.hold(make_request(), notices))
    rid = await notices.request_id()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    row = await _row(state_dsn, rid)
    assert row["status"] == "withdrawn"
    assert "cancelled or disconnected" in row["reason"]
    with pytest.raises(Conflict, match="withdrawn"):
        await svc.store.decide(rid, ALICE, approve=True, reason="")


async def test_approve_then_retry_runs_the_identical_statement_exactly_once(svc, state_dsn) -> None:
    sql = "DELETE FROM orders WHERE id = $1"
    request = make_request(sql, ("7",), wait=0, identity="retry-agent")
    notices = Notices()
    outcome = await svc.hold(request, notices)
    assert outcome.status is HoldStatus.PENDING
    assert "send the identical statement again once it is approved" in outcome.reason
    assert "retry the identical statement" in notices.items[0][0]
    rid = int(outcome.request_id)
    assert (await _row(state_dsn, rid))["mode"] == "retry"
    assert await svc.approved_before(request) is None  # not approved yet

    await svc.store.decide(rid, ALICE, approve=True, reason="ok once")
    # Different values, a different identity: not covered.
    assert (
        await svc.approved_before(make_request(sql, ("8",), wait=0, identity="retry-agent")) is None
    )
    assert await svc.approved_before(make_request(sql, ("7",), wait=0, identity="other")) is None
    # Same statement, other whitespace, keyword case and comment: covered, once.
    same = make_request(
        "/* dbgate: purpose=retry */ delete   from ORDERS where id = $1",
        ("7",),
        wait=0,
        identity="retry-agent",
    )
    first = await svc.approved_before(same)
    assert first is not None and first.status is HoldStatus.APPROVED
    assert first.request_id == str(rid) and first.decided_by == ("alice",)
    assert await svc.approved_before(same) is None
    await svc.executed(first.request_id)
    assert (await _row(state_dsn, rid))["status"] == "executed"


async def test_concurrent_retries_use_one_approval_once(svc) -> None:
    request = make_request("DELETE FROM orders WHERE id = 99", wait=0, identity="racer")
    outcome = await svc.hold(request, Notices())
    await svc.store.decide(int(outcome.request_id), ALICE, approve=True, reason="")
    results = await asyncio.gather(*(svc.approved_before(request) for _ in range(10)))
    assert sum(r is not None for r in results) == 1


async def test_a_retry_window_that_passed_is_not_used(svc, state_dsn) -> None:
    request = make_request("DELETE FROM orders WHERE id = 5", wait=0, identity="late")
    outcome = await svc.hold(request, Notices())
    rid = int(outcome.request_id)
    await svc.store.decide(rid, ALICE, approve=True, reason="")
    conn = await asyncpg.connect(state_dsn)
    try:
        await conn.execute(
            "UPDATE dbgate.approval_requests SET valid_until = now() - interval '1 s' WHERE id = $1",
            rid,
        )
    finally:
        await conn.close()
    assert await svc.approved_before(request) is None


async def test_an_approved_retry_runs_only_in_the_database_it_was_asked_in(svc) -> None:
    def in_database(name: str):
        request = make_request("DROP TABLE orders", wait=0, identity="two-dbs")
        return dataclasses.replace(
            request, requester=dataclasses.replace(request.requester, database=name)
        )

    outcome = await svc.hold(in_database("staging"), Notices())
    rec = await svc.store.get(int(outcome.request_id))
    assert rec.database == "staging"  # approvers are shown where it would run
    await svc.store.decide(int(outcome.request_id), ALICE, approve=True, reason="staging only")
    assert await svc.approved_before(in_database("production")) is None
    used = await svc.approved_before(in_database("staging"))
    assert used is not None and used.request_id == outcome.request_id

    # A shape, free values or fixed, is given for the request's database only.
    shape, _ = await svc.store.approve_shape(
        int(outcome.request_id), ALICE, minutes=5, params_fixed=False, reason=""
    )
    assert shape.database == "staging"
    try:
        assert await svc.approved_before(in_database("production")) is None
        assert await svc.approved_before(in_database("staging")) is not None
    finally:
        await svc.store.revoke_shape(shape.id, BOB, "done")


async def test_shape_approval_with_free_values_covers_one_identity_and_fingerprint(
    svc, state_dsn
) -> None:
    sql = "SELECT * FROM orders WHERE customer_id = $1"
    first = make_request(
        sql, ("1",), wait=0, identity="shaper", fingerprint="fp-orders-by-customer"
    )
    outcome = await svc.hold(first, Notices())
    rid = int(outcome.request_id)
    shape, rec = await svc.store.approve_shape(
        rid, ALICE, minutes=30, params_fixed=False, reason="reporting run"
    )
    assert rec.status == "approved" and shape.active and shape.created_by == "alice"

    later = make_request(
        sql, ("2",), wait=0, identity="shaper", fingerprint="fp-orders-by-customer"
    )
    used = await svc.approved_before(first)  # the approved request itself, once
    assert used is not None and used.request_id == str(rid)
    covered = await svc.approved_before(later)
    assert covered is not None and covered.status is HoldStatus.APPROVED
    assert covered.request_id != str(rid)
    assert "shape approval" in covered.reason and covered.decided_by == ("alice",)
    row = await _row(state_dsn, int(covered.request_id))
    assert row["mode"] == "shape" and row["status"] == "approved"
    assert await svc.approved_before(later) is not None  # a shape is not used up

    # Never wider than one identity and one fingerprint.
    assert (
        await svc.approved_before(
            make_request(
                sql, ("2",), wait=0, identity="someone-else", fingerprint="fp-orders-by-customer"
            )
        )
        is None
    )
    assert (
        await svc.approved_before(
            make_request("DROP TABLE orders", wait=0, identity="shaper", fingerprint="fp-drop")
        )
        is None
    )

    revoked = await svc.store.revoke_shape(shape.id, BOB, "done")
    assert not revoked.active and revoked.revoked_by == "bob"
    assert await svc.approved_before(later) is None
    with pytest.raises(Conflict, match="already revoked"):
        await svc.store.revoke_shape(shape.id, BOB, "again")


@pytest.mark.parametrize(
    ("approved", "sent", "category", "reason"),
    [
        # Each pair has one pglast fingerprint.
        (
            "DO $$ begin perform pg_sleep(0); end $$",
            "DO $$ begin delete from customers; end $$",
            "opaque",
            "do-block",
        ),
        ("SET ROLE reporting", "SET ROLE postgres", "privilege", "set-role"),
        (
            "GRANT SELECT ON orders TO analyst",
            "GRANT SELECT ON orders TO agent",
            "privilege",
            "grant",
        ),
        (
            "CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql",
            "CREATE FUNCTION f() RETURNS int AS 'delete from orders returning 1' LANGUAGE sql",
            "ddl",
            "create-function",
        ),
        (
            "SELECT query_to_xml('select id from orders', true, true, '')",
            "SELECT query_to_xml('select ssn from customers', true, true, '')",
            "dump",
            "xml-query-export",
        ),
    ],
)
async def test_a_free_shape_frees_data_values_not_code_names_or_settings(
    svc, approved, sent, category, reason
) -> None:
    from pglast import parser

    fingerprint = str(parser.fingerprint(approved))
    assert str(parser.fingerprint(sent)) == fingerprint

    def request(sql: str):
        return make_request(
            sql,
            wait=0,
            identity="shaper-2",
            fingerprint=fingerprint,
            categories=(category,),
            reasons=((reason, reason),),
        )

    outcome = await svc.hold(request(approved), Notices())
    shape, _ = await svc.store.approve_shape(
        int(outcome.request_id), ALICE, minutes=30, params_fixed=False, reason="harmless"
    )
    try:
        assert await svc.approved_before(request(approved)) is not None  # its own approval
        assert await svc.approved_before(request(sent)) is None
    finally:
        await svc.store.revoke_shape(shape.id, BOB, "done")


async def _free_shape_given_before_the_check(state_dsn: str, request_id: int) -> int:
    """A free shape of the request written straight into the state database, as an
    earlier dbgate could have given it (it now refuses to): matching must still
    refuse what it should not cover."""
    conn = await asyncpg.connect(state_dsn)
    try:
        return await conn.fetchval(  # type: ignore[no-any-return]
            "INSERT INTO dbgate.shape_approvals (identity, fingerprint, params_fixed, "
            "statement, source_request, created_by, reason, expires_at, database) "
            "SELECT identity, fingerprint, false, statement, id, 'alice', '', "
            "now() + interval '30 minutes', database FROM dbgate.approval_requests "
            "WHERE id = $1 RETURNING id",
            request_id,
        )
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("sql", "approved", "sent"),
    [
        # the Bind values of a function's arguments are what it does
        ("SELECT set_config($1, $2, false)", ("app.mode", "report"), ("role", "postgres")),
        ("SELECT pg_read_file($1)", ("log/today.log",), ("/etc/passwd",)),
        # a parameter cast to an object type names the object
        (
            "SELECT * FROM pg_class WHERE oid = $1::regclass",
            ("orders",),
            ("customers",),
        ),
    ],
    ids=["set-config", "read-file", "regclass"],
)
async def test_a_free_shape_does_not_free_parameters_that_are_not_data(
    svc, state_dsn, sql, approved, sent
) -> None:
    """A statement whose parameters are arguments of a function (or name an object) is
    covered only by a shape with fixed values: with free values, another setting or
    file would pass under the approval of the first."""
    fingerprint = f"fp-not-data-{sql}"

    def request(params: tuple[str, ...]):
        return make_request(sql, params, wait=0, identity="shaper-4", fingerprint=fingerprint)

    outcome = await svc.hold(request(approved), Notices())
    rid = int(outcome.request_id)
    with pytest.raises(Conflict, match="only be approved with fixed values"):
        await svc.store.approve_shape(
            rid, ALICE, minutes=30, params_fixed=False, reason="one setting"
        )
    assert (await svc.store.get(rid)).status == "pending"  # nothing was decided
    # A free shape already in the state database (given before this check) covers
    # nothing but the request it was given from, which its own approval covers.
    shape_id = await _free_shape_given_before_the_check(state_dsn, rid)
    try:
        assert await svc.approved_before(request(sent)) is None
        assert await svc.approved_before(request(approved)) is None
    finally:
        await svc.store.revoke_shape(shape_id, BOB, "done")
    fixed, _ = await svc.store.approve_shape(
        rid, ALICE, minutes=30, params_fixed=True, reason="these values"
    )
    try:
        assert await svc.approved_before(request(approved)) is not None  # its own approval
        assert await svc.approved_before(request(approved)) is not None  # the fixed shape
        assert await svc.approved_before(request(sent)) is None
    finally:
        await svc.store.revoke_shape(fixed.id, BOB, "done")


@pytest.mark.parametrize(
    ("approved", "sent"),
    [
        # a prepared statement's arguments, masked for the approver (their columns
        # are unknown) but not data: they may name a setting, a file, a role
        ("EXECUTE p('Ann Lee')", "EXECUTE p('postgres')"),
        # a function's constants, masked because a PII column is among its arguments
        (
            "SELECT set_config('app.who', full_name, false) FROM customers WHERE id = 1",
            "SELECT set_config('role', full_name, false) FROM customers WHERE id = 1",
        ),
        # a DO block's literals, masked because it names a PII column
        (
            "DO $$BEGIN UPDATE customers SET full_name = 'Ann Lee' WHERE id = 1; END$$",
            "DO $$BEGIN UPDATE customers SET full_name = 'Ann Lee' WHERE id = 2; END$$",
        ),
    ],
    ids=["execute", "function-next-to-pii", "do-block"],
)
async def test_a_masked_constant_that_is_not_data_is_not_freed_by_a_shape(
    svc, state_dsn, approved, sent
) -> None:
    """The shape is compared on the masked text: two constants masked alike would
    pass as the same statement. Only a shape with fixed values covers them."""
    fingerprint = f"fp-masked-{approved}"

    def request(sql: str):
        return make_request(sql, wait=0, identity="shaper-5", fingerprint=fingerprint)

    outcome = await svc.hold(request(approved), Notices())
    rid = int(outcome.request_id)
    with pytest.raises(Conflict, match="only be approved with fixed values"):
        await svc.store.approve_shape(rid, ALICE, minutes=30, params_fixed=False, reason="")
    shape_id = await _free_shape_given_before_the_check(state_dsn, rid)
    try:
        assert await svc.approved_before(request(sent)) is None
    finally:
        await svc.store.revoke_shape(shape_id, BOB, "done")


async def test_a_free_shape_covers_only_statements_held_for_the_same_reasons(svc) -> None:
    sql = "DELETE FROM orders WHERE id = 7"
    outcome = await svc.hold(make_request(sql, wait=0, identity="shaper-3"), Notices())
    shape, _ = await svc.store.approve_shape(
        int(outcome.request_id), ALICE, minutes=30, params_fixed=False, reason=""
    )
    try:
        same = make_request("delete from orders where id = 8", wait=0, identity="shaper-3")
        assert await svc.approved_before(same) is not None  # its own approval is taken first
        assert await svc.approved_before(same) is not None  # then the shape: other values
        other_rule = make_request(
            "DELETE FROM orders WHERE id = 9", wait=0, identity="shaper-3", rule="hold-other"
        )
        assert await svc.approved_before(other_rule) is None
    finally:
        await svc.store.revoke_shape(shape.id, BOB, "done")


async def test_shape_approval_with_fixed_values_and_its_expiry(svc, state_dsn) -> None:
    sql = "UPDATE orders SET status = $2 WHERE id = $1"
    first = make_request(
        sql, ("3", "paid"), wait=0, identity="fixer", fingerprint="fp-order-status"
    )
    outcome = await svc.hold(first, Notices())
    shape, _ = await svc.store.approve_shape(
        int(outcome.request_id), ALICE, minutes=5, params_fixed=True, reason=""
    )
    assert await svc.approved_before(first) is not None  # the request's own approval
    assert await svc.approved_before(first) is not None  # then the shape, same values
    other_values = make_request(
        sql, ("4", "paid"), wait=0, identity="fixer", fingerprint="fp-order-status"
    )
    assert await svc.approved_before(other_values) is None
    conn = await asyncpg.connect(state_dsn)
    try:
        await conn.execute(
            "UPDATE dbgate.shape_approvals SET expires_at = now() - interval '1 s' WHERE id = $1",
            shape.id,
        )
    finally:
        await conn.close()
    assert await svc.approved_before(first) is None


async def test_a_rejected_request_cannot_become_a_shape_approval(svc) -> None:
    outcome = await svc.hold(make_request(wait=0, identity="shaper-4"), Notices())
    rid = int(outcome.request_id)
    await svc.store.decide(rid, BOB, approve=False, reason="not this")
    with pytest.raises(Conflict, match="is rejected"):
        await svc.store.approve_shape(rid, ALICE, minutes=5, params_fixed=False, reason="")
    shapes = await svc.store.list_shapes(active=True, identity="shaper-4")
    assert shapes == []


async def test_a_shape_approval_is_refused_when_the_rule_needs_several_approvers(svc) -> None:
    outcome = await svc.hold(make_request(wait=0, approvals_needed=2), Notices())
    with pytest.raises(Forbidden, match="needs 2 approvers"):
        await svc.store.approve_shape(
            int(outcome.request_id), ALICE, minutes=5, params_fixed=False, reason=""
        )


async def test_n_of_m_needs_distinct_approvers(svc) -> None:
    notices = Notices()
    task = asyncio.create_task(
        svc.hold(make_request(approvals_needed=2, approver_groups=("dba",)), notices)
    )
    rid = await notices.request_id()
    rec = await svc.store.decide(rid, ALICE, approve=True, reason="one")
    assert rec.status == "pending" and rec.approvals == 1
    with pytest.raises(Conflict, match="already decided"):
        await svc.store.decide(rid, ALICE, approve=True, reason="twice")
    assert not task.done()
    await svc.store.decide(rid, BOB, approve=True, reason="two")
    outcome = await task
    assert outcome.status is HoldStatus.APPROVED
    assert outcome.decided_by == ("alice", "bob")
    assert outcome.reason == "one; two"


async def test_who_may_decide(svc) -> None:
    outcome = await svc.hold(make_request(wait=0, approver_groups=("dba",)), Notices())
    rid = int(outcome.request_id)
    with pytest.raises(Forbidden, match="the identity that asked"):
        await svc.store.decide(rid, Approver("agent", frozenset({"dba"})), approve=True, reason="")
    with pytest.raises(Forbidden, match="owns identity 'agent'"):
        await svc.store.decide(rid, Approver("olga", frozenset({"dba"})), approve=True, reason="")
    with pytest.raises(Forbidden, match="needs an approver from group dba"):
        await svc.store.decide(rid, CAROL, approve=False, reason="no")
    with pytest.raises(Forbidden, match="disabled"):
        await svc.store.decide(
            rid, Approver("dan", frozenset({"dba"}), disabled=True), approve=True, reason=""
        )
    rec = await svc.store.decide(rid, ALICE, approve=True, reason="")
    assert rec.status == "approved" and [d.approver for d in rec.decisions] == ["alice"]


async def test_owners_recorded_with_the_request_bind_every_replica(svc, other) -> None:
    # "other" has no owners in its config; the owners recorded with the request apply.
    outcome = await svc.hold(make_request(wait=0), Notices())
    with pytest.raises(Forbidden, match="owns identity"):
        await other.store.decide(
            int(outcome.request_id), Approver("olga", frozenset()), approve=True, reason=""
        )


async def test_concurrent_decisions_exactly_one_wins(svc, other) -> None:
    for _ in range(5):
        outcome = await svc.hold(make_request(wait=0), Notices())
        rid = int(outcome.request_id)
        results = await asyncio.gather(
            svc.store.decide(rid, ALICE, approve=True, reason="yes"),
            other.store.decide(rid, BOB, approve=False, reason="no"),
            return_exceptions=True,
        )
        wins = [r for r in results if not isinstance(r, BaseException)]
        losses = [r for r in results if isinstance(r, BaseException)]
        assert len(wins) == 1 and len(losses) == 1, results
        assert isinstance(losses[0], Conflict)
        assert "already" in losses[0].message


async def test_a_decision_on_another_replica_wakes_the_holding_one(svc, other) -> None:
    notices = Notices()
    task = asyncio.create_task(svc.hold(make_request(), notices))
    rid = await notices.request_id()
    await other.store.decide(rid, BOB, approve=True, reason="from replica b")
    outcome = await task
    assert outcome.status is HoldStatus.APPROVED and outcome.reason == "from replica b"


async def test_a_lost_notification_delays_but_never_loses_the_decision(svc, state_dsn) -> None:
    notices = Notices()
    task = asyncio.create_task(svc.hold(make_request(), notices))
    rid = await notices.request_id()
    conn = await asyncpg.connect(state_dsn)
    try:
        # Triggers do not fire for a replication-role session: no NOTIFY is sent.
        await conn.execute("SET session_replication_role = replica")
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO dbgate.approval_decisions (request_id, approver, decision) "
                "VALUES ($1, 'alice', 'approve')",
                rid,
            )
            await conn.execute(
                "UPDATE dbgate.approval_requests SET status = 'approved', decided_at = now(), "
                "finished_at = now(), valid_until = now() + interval '1 minute' WHERE id = $1",
                rid,
            )
    finally:
        await conn.close()
    outcome = await task  # found by the periodic re-check
    assert outcome.status is HoldStatus.APPROVED


async def test_the_listener_reconnects_after_losing_its_connection(svc, state_dsn) -> None:
    await asyncio.wait_for(svc.waker.listening.wait(), 30)
    conn = await asyncpg.connect(state_dsn)
    try:
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'dbgate-approvals-listen' AND datname = current_database()"
        )
        assert killed >= 1
    finally:
        await conn.close()
    notices = Notices()
    task = asyncio.create_task(svc.hold(make_request(), notices))
    rid = await notices.request_id()
    await svc.store.decide(rid, ALICE, approve=True, reason="")
    assert (await task).status is HoldStatus.APPROVED
    await asyncio.wait_for(svc.waker.listening.wait(), 30)


async def test_a_restarted_replica_abandons_its_held_requests(state_dsn) -> None:
    async with running_service(state_dsn, replica="crashy") as first:
        notices = Notices()
        task = asyncio.create_task(first.hold(make_request(identity="crash-agent"), notices))
        rid = await notices.request_id()
        # The process "dies": its wait simply stops, nothing marks the request.
        first.waker.unregister(rid)
        task.cancel()
        first._end_quietly = _noop  # type: ignore[method-assign]
        with pytest.raises(asyncio.CancelledError):
            await task
    assert (await _row(state_dsn, rid))["status"] == "pending"
    async with running_service(state_dsn, replica="crashy") as restarted:
        row = await _row(state_dsn, rid)
        assert row["status"] == "abandoned" and "restarted" in row["reason"]
        with pytest.raises(Conflict, match="abandoned"):
            await restarted.store.decide(rid, ALICE, approve=True, reason="too late")
        assert await restarted.approved_before(make_request(identity="crash-agent")) is None


async def _noop(*_args: object) -> None:
    return None


async def test_requests_whose_replica_vanished_are_swept(svc, state_dsn) -> None:
    conn = await asyncpg.connect(state_dsn)
    try:
        await conn.execute(
            "INSERT INTO dbgate.approval_requests (mode, deadline, identity, replica, statement, "
            "match_hash) VALUES ('wait', now() - interval '2 minutes', 'ghost', 'gone', 'SELECT 1', "
            "'\\x00'), ('retry', now() - interval '1 second', 'ghost', 'gone', 'SELECT 2', '\\x00')"
        )
        assert await svc.store.sweep(abandon_after=60) == 2
        rows = await conn.fetch(
            "SELECT mode, status FROM dbgate.approval_requests WHERE identity = 'ghost' ORDER BY mode"
        )
    finally:
        await conn.close()
    assert [(r["mode"], r["status"]) for r in rows] == [("retry", "expired"), ("wait", "abandoned")]


async def test_stopping_the_service_ends_waiting_holds_as_abandoned(state_dsn) -> None:
    async with running_service(state_dsn, replica="stopper") as s:
        notices = Notices()
        task = asyncio.create_task(s.hold(make_request(), notices))
        rid = await notices.request_id()
        await s.stop()
        outcome = await task
        await s.start()  # running_service stops it again
    assert outcome.status is HoldStatus.ABANDONED
    assert (await _row(state_dsn, rid))["status"] == "abandoned"


async def test_a_hundred_holds_at_once_are_all_decided_correctly(svc, other) -> None:
    notices = [Notices() for _ in range(100)]
    tasks = [
        asyncio.create_task(svc.hold(make_request(f"DELETE FROM orders WHERE id = {i}"), n))
        for i, n in enumerate(notices)
    ]
    ids = [await n.request_id() for n in notices]
    await asyncio.gather(
        *(
            other.store.decide(rid, BOB, approve=i % 2 == 0, reason=f"decision {i}")
            for i, rid in enumerate(ids)
        )
    )
    outcomes = await asyncio.gather(*tasks)
    for i, (rid, outcome) in enumerate(zip(ids, outcomes, strict=True)):
        assert outcome.request_id == str(rid)
        assert outcome.status is (HoldStatus.APPROVED if i % 2 == 0 else HoldStatus.REJECTED)
        assert outcome.reason == f"decision {i}"
    assert svc.waker.waiting == 0


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_unreachable_state_database_fails_closed_without_raising() -> None:
    dsn = f"postgresql://nobody:pw@127.0.0.1:{_closed_port()}/state"
    async with running_service(dsn, replica="lonely", timeout=2.0) as s:
        outcome = await s.hold(make_request(), Notices())
        assert outcome.status is HoldStatus.UNAVAILABLE
        assert "cannot record the approval request" in outcome.reason
        assert "cannot reach the state database" in outcome.reason
        assert "pw" not in outcome.reason
        again = await s.hold(make_request(), Notices())  # refused at once while it is down
        assert again.status is HoldStatus.UNAVAILABLE and "state database" in again.reason
        assert await s.approved_before(make_request()) is None
        await s.executed("1")  # logs, does not raise


async def test_the_status_lifecycle_is_enforced_by_the_database(svc, state_dsn) -> None:
    outcome = await svc.hold(make_request(wait=0.05), Notices())
    assert outcome.status is HoldStatus.EXPIRED
    conn = await asyncpg.connect(state_dsn)
    try:
        with pytest.raises(asyncpg.CheckViolationError, match="cannot go from expired to approved"):
            await conn.execute(
                "UPDATE dbgate.approval_requests SET status = 'approved' WHERE id = $1",
                int(outcome.request_id),
            )
    finally:
        await conn.close()


async def test_reviewers_read_the_view_and_nothing_else(svc, state_dsn) -> None:
    outcome = await svc.hold(make_request(PII_SQL, wait=0), Notices())
    await svc.store.decide(int(outcome.request_id), ALICE, approve=False, reason="no")
    conn = await asyncpg.connect(state_dsn)
    try:
        await conn.execute("DROP ROLE IF EXISTS approvals_reviewer")
        await conn.execute("CREATE ROLE approvals_reviewer IN ROLE dbgate_auditor")
        await conn.execute("SET ROLE approvals_reviewer")
        row = await conn.fetchrow(
            "SELECT id, status, identity, statement, decided_by, reason FROM dbgate.approvals "
            "WHERE id = $1",
            int(outcome.request_id),
        )
        assert row["status"] == "rejected" and row["decided_by"] == ["alice"]
        assert row["reason"] == "no" and row["identity"] == "agent"
        assert "'<email>'" in row["statement"]
        for table in ("approval_requests", "approver_tokens", "approval_secrets", "approvers"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch(f"SELECT * FROM dbgate.{table} LIMIT 1")
    finally:
        await conn.execute("RESET ROLE")
        await conn.execute("DROP ROLE IF EXISTS approvals_reviewer")
        await conn.close()


async def test_no_raw_pii_in_any_log_line(svc, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="dbgate")
    notices = Notices()
    task = asyncio.create_task(
        svc.hold(
            make_request(PII_SQL, ("4111111111111111",), purpose="mail ann.lee@example.com"),
            notices,
        )
    )
    rid = await notices.request_id()
    await svc.store.decide(rid, ALICE, approve=True, reason="call +1-780-563-6083 first")
    outcome = await task
    assert "<phone>" in outcome.reason  # the approver's reason is masked too
    await svc.executed(outcome.request_id)
    retry = make_request(PII_SQL, wait=0)
    await svc.hold(retry, Notices())
    await svc.approved_before(retry)
    assert caplog.records  # the scenario does log
    for raw in PII_VALUES:
        assert raw not in caplog.text
    for message, detail in notices.items:
        for raw in PII_VALUES:
            assert raw not in message and raw not in detail


async def test_the_service_owns_one_listening_connection_not_one_per_hold(svc, state_dsn) -> None:
    notices = [Notices() for _ in range(20)]
    tasks = [asyncio.create_task(svc.hold(make_request(), n)) for n in notices]
    ids = [await n.request_id() for n in notices]
    await asyncio.wait_for(svc.waker.listening.wait(), 30)
    conn = await asyncpg.connect(state_dsn)
    try:
        listeners = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = 'dbgate-approvals-listen' AND datname = current_database()"
        )
    finally:
        await conn.close()
    assert listeners == 1  # only this test's service is running
    for rid in ids:
        await svc.store.decide(rid, ALICE, approve=True, reason="")
    assert all(o.status is HoldStatus.APPROVED for o in await asyncio.gather(*tasks))


async def test_tokens_and_accounts(svc) -> None:
    token = await add_approver(svc, "tina", "dba")
    assert (await svc.accounts.authenticate_token(token)).name == "tina"
