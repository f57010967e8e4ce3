"""The approvals HTTP API on a real server, against a real state database.

Two service instances stand for two replicas: statements are held on ``holder``,
decisions go through the API served by ``web`` (the other replica).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest

from dbgate.approvals.model import HoldStatus
from dbgate.approvals.service import PgApprovalService
from dbgate.web import WebServer, build_web_app
from dbgate.web.api import ROUTES
from dbgate.web.pages import PAGE_ROUTES
from dbgate.web.slack import SLACK_ROUTES
from tests.integration.approvals_helpers import (
    PII_SQL,
    PII_VALUES,
    Notices,
    drop_database,
    fresh_database,
    make_request,
    running_service,
)

DB = "dbgate_approvals_api_test"


@dataclass
class Api:
    url: str
    holder: PgApprovalService
    web: PgApprovalService
    http: aiohttp.ClientSession
    tokens: dict[str, str]
    dsn: str
    seen: list[str]  # every response body, to check for raw PII

    async def call(
        self, method: str, path: str, who: str | None = "alice", body: Any = None, **kw: Any
    ) -> tuple[int, Any]:
        headers = dict(kw.pop("headers", {}))
        if who is not None:
            headers["Authorization"] = f"Bearer {self.tokens[who]}"
        data = kw.pop("data", None)
        if body is not None:
            data = json.dumps(body)
        async with self.http.request(
            method, self.url + path, headers=headers, data=data, **kw
        ) as r:
            text = await r.text()
            self.seen.append(text)
            payload = json.loads(text) if r.content_type == "application/json" else text
            return r.status, payload

    async def held(self, **kw: Any) -> tuple[int, asyncio.Task[Any]]:
        """Hold a statement on the holding replica; (request id, the hold's task)."""
        notices = Notices()
        task = asyncio.create_task(self.holder.hold(make_request(**kw), notices))
        return await notices.request_id(), task


@pytest.fixture(scope="module")
async def state_dsn(pg_server) -> AsyncIterator[str]:
    dsn = await fresh_database(pg_server, DB)
    yield dsn
    await drop_database(pg_server, DB)


@pytest.fixture(scope="module")
async def api(state_dsn) -> AsyncIterator[Api]:
    async with (
        running_service(state_dsn, replica="holder", owners={"agent": ["olga"]}) as holder,
        running_service(state_dsn, replica="web", public_url="http://dbgate.test") as web_svc,
    ):
        tokens = {}
        for name, groups in {
            "alice": ["dba"],
            "bob": ["dba"],
            "carol": ["support"],
            "olga": ["dba"],
            "agent": ["dba"],
        }.items():
            await web_svc.accounts.add(name, groups, None)
            tokens[name] = (await web_svc.accounts.issue_token(name))[1]
        server = WebServer(build_web_app(web_svc, max_body_bytes=4096), "127.0.0.1", 0)
        await server.start()
        async with aiohttp.ClientSession() as http:
            yield Api(server.url, holder, web_svc, http, tokens, state_dsn, [])
        await server.stop()


async def test_list_and_detail_show_the_masked_request(api: Api) -> None:
    rid, task = await api.held(sql=PII_SQL, params=("4111111111111111",), approver_groups=("dba",))
    status, page = await api.call("GET", "/api/approvals?status=pending")
    assert status == 200
    item = next(a for a in page["approvals"] if a["id"] == str(rid))
    assert item["status"] == "pending" and item["identity"] == "agent"
    assert item["url"] == f"http://dbgate.test/approvals/{rid}"
    assert "'<email>'" in item["statement"] and item["categories"] == ["destructive"]
    assert item["tables"] == ["orders"] and item["approvals_needed"] == 1
    assert item["purpose"] == "clean up a test order" and item["model"] == "test-model"

    status, detail = await api.call("GET", f"/api/approvals/{rid}")
    assert status == 200
    assert detail["params"] == ["<card>"]
    assert detail["reasons"] == [{"code": "delete", "text": "DELETE removes rows"}]
    assert detail["client_addr"] == "127.0.0.1" and detail["application_name"] == "pytest"
    assert detail["replica"] == "holder" and detail["can_decide"] is True
    assert detail["approver_groups"] == ["dba"] and detail["waited_seconds"] >= 0
    assert detail["estimated_rows"] is None and detail["decisions"] == []

    status, me = await api.call("GET", "/api/me", who="carol")
    assert (status, me) == (200, {"name": "carol", "groups": ["support"]})
    status, detail = await api.call("GET", f"/api/approvals/{rid}", who="carol")
    assert detail["can_decide"] is False and "group dba" in detail["cannot_decide_reason"]

    await api.call("POST", f"/api/approvals/{rid}/reject", body={"reason": "no"})
    assert (await task).status is HoldStatus.REJECTED


async def test_approve_through_one_replica_wakes_the_hold_on_the_other(api: Api) -> None:
    rid, task = await api.held()
    status, detail = await api.call(
        "POST", f"/api/approvals/{rid}/approve", body={"reason": "fine"}
    )
    assert status == 200 and detail["status"] == "approved"
    assert detail["decided_by"] == ["alice"] and detail["decisions"][0]["via"] == "api"
    outcome = await task
    assert outcome.status is HoldStatus.APPROVED and outcome.reason == "fine"


async def test_approve_accepts_an_empty_body_and_reject_needs_a_reason(api: Api) -> None:
    rid, task = await api.held()
    status, err = await api.call("POST", f"/api/approvals/{rid}/reject", body={})
    assert status == 400 and "reason is required" in err["message"]
    status, _ = await api.call("POST", f"/api/approvals/{rid}/approve")
    assert status == 200
    assert (await task).status is HoldStatus.APPROVED


async def test_rejection_reaches_the_agent(api: Api) -> None:
    rid, task = await api.held()
    status, detail = await api.call(
        "POST", f"/api/approvals/{rid}/reject", who="bob", body={"reason": "use the replica"}
    )
    assert (
        status == 200 and detail["status"] == "rejected" and detail["reason"] == "use the replica"
    )
    outcome = await task
    assert outcome.status is HoldStatus.REJECTED and outcome.reason == "use the replica"


async def test_n_of_m_through_the_api(api: Api) -> None:
    rid, task = await api.held(approvals_needed=2, approver_groups=("dba",))
    status, detail = await api.call("POST", f"/api/approvals/{rid}/approve")
    assert status == 200 and detail["status"] == "pending" and detail["approvals"] == 1
    assert detail["can_decide"] is False and "already decided" in detail["cannot_decide_reason"]
    status, err = await api.call("POST", f"/api/approvals/{rid}/approve")
    assert status == 409 and err["error"] == "conflict"
    status, detail = await api.call("POST", f"/api/approvals/{rid}/approve", who="bob")
    assert status == 200 and detail["status"] == "approved"
    assert (await task).decided_by == ("alice", "bob")


# -- bad input ------------------------------------------------------------------------


async def test_missing_malformed_forged_revoked_and_expired_tokens_get_401(api: Api) -> None:
    async def status_with(headers: dict[str, str]) -> tuple[int, Any, str]:
        async with api.http.get(api.url + "/api/approvals", headers=headers) as r:
            return r.status, await r.json(), r.headers.get("WWW-Authenticate", "")

    status, err, challenge = await status_with({})
    assert (status, err["error"]) == (401, "unauthorized") and challenge.startswith("Bearer")
    status, err, _ = await status_with({"Authorization": "Basic YWxpY2U6eA=="})
    assert status == 401 and "Bearer TOKEN" in err["message"]
    status, err, _ = await status_with({"Authorization": "Bearer dbg_" + "A" * 43})
    assert status == 401 and err["message"] == "unknown token"
    status, err, _ = await status_with({"Authorization": "Bearer not-even-a-token"})
    assert status == 401

    _, revoked = await api.web.accounts.issue_token("alice", label="to revoke")
    await api.web.accounts.revoke_token(revoked)
    status, err, _ = await status_with({"Authorization": f"Bearer {revoked}"})
    assert status == 401 and "revoked" in err["message"]

    _, expired = await api.web.accounts.issue_token("alice", lifetime=timedelta(seconds=-1))
    status, err, _ = await status_with({"Authorization": f"Bearer {expired}"})
    assert status == 401 and "expired" in err["message"]


async def test_deciding_ones_own_request_or_outside_the_groups_gets_403(api: Api) -> None:
    rid, task = await api.held(approver_groups=("dba",))
    for who, why in [
        ("agent", "the identity that asked"),
        ("olga", "owns identity 'agent'"),
        ("carol", "needs an approver from group dba"),
    ]:
        for verb in ("approve", "reject"):
            status, err = await api.call(
                "POST", f"/api/approvals/{rid}/{verb}", who=who, body={"reason": "x"}
            )
            assert (status, err["error"]) == (403, "forbidden"), (who, verb)
            assert why in err["message"]
    status, detail = await api.call("GET", f"/api/approvals/{rid}")
    assert detail["status"] == "pending" and detail["decisions"] == []
    await api.call("POST", f"/api/approvals/{rid}/reject", body={"reason": "cleanup"})
    await task


async def test_unknown_requests_and_routes_get_404_and_wrong_methods_405(api: Api) -> None:
    for path in (
        "/api/approvals/999999",
        "/api/approvals/abc",
        "/api/approvals/99999999999999999999",
    ):
        status, err = await api.call("GET", path)
        assert (status, err["error"]) == (404, "not_found"), path
    status, err = await api.call("POST", "/api/approvals/999999/approve", body={})
    assert status == 404
    status, err = await api.call("GET", "/api/nothing-here")
    assert status == 404 and err["error"] == "not_found"
    status, err = await api.call("GET", "/api/approvals/1/approve")
    assert status == 405 and err["error"] == "method_not_allowed"
    status, err = await api.call("GET", "/api/shapes/424242")
    assert status == 404


async def test_deciding_a_decided_or_expired_request_gets_409(api: Api) -> None:
    rid, task = await api.held()
    await api.call("POST", f"/api/approvals/{rid}/approve")
    await task
    status, err = await api.call(
        "POST", f"/api/approvals/{rid}/reject", who="bob", body={"reason": "late"}
    )
    assert status == 409 and "already approved" in err["message"]

    outcome = await api.holder.hold(make_request(wait=0.05), Notices())
    assert outcome.status is HoldStatus.EXPIRED
    status, err = await api.call("POST", f"/api/approvals/{outcome.request_id}/approve")
    assert status == 409 and "expired" in err["message"]


async def test_two_tabs_deciding_at_once_exactly_one_wins(api: Api) -> None:
    for _ in range(3):
        rid, task = await api.held()
        results = await asyncio.gather(
            api.call("POST", f"/api/approvals/{rid}/approve", who="alice"),
            api.call("POST", f"/api/approvals/{rid}/reject", who="bob", body={"reason": "no"}),
            api.call("POST", f"/api/approvals/{rid}/approve", who="alice"),
        )
        statuses = sorted(s for s, _ in results)
        assert statuses == [200, 409, 409], results
        outcome = await task
        winner = next(body for s, body in results if s == 200)
        assert outcome.status.value == winner["status"]


async def test_oversized_and_malformed_bodies(api: Api) -> None:
    rid, task = await api.held()
    path = f"/api/approvals/{rid}/approve"
    status, err = await api.call("POST", path, body={"reason": "x" * 10_000})
    assert (status, err["error"]) == (413, "payload_too_large")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1000

    status, err = await api.call("POST", path, data=chunks())
    assert status == 413 and err["error"] == "payload_too_large"
    for data, why in [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"reason": 5}', "'reason' must be a string"),
        ('{"reason": "ok", "force": true}', "unknown key(s) 'force'"),
        (b"\xff\xfe", "not valid JSON"),
        ('{"reason": "' + "y" * 2100 + '"}', "longer than 2000"),
        ('{"reason": "a\\u0000b"}', "'reason' must be text PostgreSQL can store"),
        ('{"reason": "\\ud800"}', "'reason' must be text PostgreSQL can store"),
    ]:
        status, err = await api.call("POST", path, data=data)
        assert (status, err["error"]) == (400, "bad_request"), data
        assert why in err["message"]
    for query, why in [
        ("status=bogus", "unknown status"),
        ("limit=0", "'limit' must be an integer"),
        ("limit=x", "'limit' must be an integer"),
        ("before=-1", "'before' must be an integer"),
        ("identity=a%00b", "'identity' must be text"),
    ]:
        status, err = await api.call("GET", f"/api/approvals?{query}")
        assert status == 400 and why in err["message"], query
    status, err = await api.call("GET", "/api/shapes?identity=a%00b")
    assert status == 400 and "'identity' must be text" in err["message"]
    status, detail = await api.call("GET", f"/api/approvals/{rid}")
    assert detail["status"] == "pending"  # nothing was decided by any of it
    await api.call("POST", path)
    await task


async def test_shape_approval_and_revocation_through_the_api(api: Api) -> None:
    request = make_request(
        "SELECT * FROM orders WHERE customer_id = $1", ("1",), wait=0, fingerprint="fp-api-shape"
    )
    outcome = await api.holder.hold(request, Notices())
    rid = outcome.request_id
    path = f"/api/approvals/{rid}/approve-shape"
    for body, why in [
        ({}, "'minutes' is required"),
        ({"minutes": 0}, "from 1 to"),
        ({"minutes": 10**6}, "from 1 to"),
        ({"minutes": True}, "'minutes' is required"),
        ({"minutes": 5, "params": "any"}, "'params' must be"),
    ]:
        status, err = await api.call("POST", path, body=body)
        assert status == 400 and why in err["message"], body
    status, err = await api.call("POST", path, who="olga", body={"minutes": 5})
    assert status == 403
    status, made = await api.call(
        "POST", path, body={"minutes": 15, "params": "free", "reason": "reporting"}
    )
    assert status == 201
    shape = made["shape"]
    assert shape["identity"] == "agent" and shape["fingerprint"] == "fp-api-shape"
    assert shape["params"] == "free" and shape["active"] and shape["created_by"] == "alice"
    assert made["request"]["status"] == "approved"

    status, listed = await api.call("GET", "/api/shapes?active=true")
    assert any(s["id"] == shape["id"] for s in listed["shapes"])
    status, one = await api.call("GET", f"/api/shapes/{shape['id']}")
    assert status == 200 and one["uses"] == 0
    status, detail = await api.call("GET", f"/api/approvals/{rid}")
    assert [s["id"] for s in detail["shapes"]] == [shape["id"]]

    other_values = make_request(
        "SELECT * FROM orders WHERE customer_id = $1", ("2",), wait=0, fingerprint="fp-api-shape"
    )
    assert await api.holder.approved_before(other_values) is not None

    status, revoked = await api.call(
        "POST", f"/api/shapes/{shape['id']}/revoke", who="bob", body={"reason": "done"}
    )
    assert status == 200 and not revoked["active"] and revoked["revoked_by"] == "bob"
    assert revoked["uses"] == 1
    status, err = await api.call("POST", f"/api/shapes/{shape['id']}/revoke", body={})
    assert status == 409 and "already revoked" in err["message"]
    assert await api.holder.approved_before(other_values) is None
    status, listed = await api.call("GET", "/api/shapes?active=false")
    assert any(s["id"] == shape["id"] for s in listed["shapes"])
    status, err = await api.call("GET", "/api/shapes?active=maybe")
    assert status == 400


async def test_no_raw_pii_in_any_api_response(api: Api) -> None:
    api.seen.clear()
    rid, task = await api.held(
        sql=PII_SQL, params=("4111111111111111",), purpose="contact ann.lee@example.com"
    )
    await api.call("GET", "/api/approvals?status=all")
    await api.call("GET", f"/api/approvals/{rid}")
    await api.call(
        "POST", f"/api/approvals/{rid}/approve", body={"reason": "called +1-780-563-6083"}
    )
    await api.call("GET", f"/api/approvals/{rid}")
    await task
    assert len(api.seen) == 4
    for text in api.seen:
        for raw in PII_VALUES:
            assert raw not in text


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_unreachable_state_database_gives_503_json() -> None:
    dsn = f"postgresql://nobody:pw@127.0.0.1:{_closed_port()}/state"
    async with running_service(dsn, replica="down", timeout=2.0) as svc:
        server = WebServer(build_web_app(svc), "127.0.0.1", 0)
        await server.start()
        try:
            async with aiohttp.ClientSession() as http:
                headers = {"Authorization": "Bearer dbg_" + "B" * 43}
                for method, path in [
                    ("GET", "/api/approvals"),
                    ("POST", "/api/approvals/1/approve"),
                    ("GET", "/api/health"),
                ]:
                    async with http.request(method, server.url + path, headers=headers) as r:
                        body = await r.json()
                        assert r.status == 503, path
                        assert body["error"] == "unavailable"
                        assert "state database" in body["message"] and "pw" not in body["message"]
        finally:
            await server.stop()


async def test_health_and_sign_in_page(api: Api) -> None:
    status, body = await api.call("GET", "/api/health", who=None)
    assert status == 200 and body["status"] == "ok"
    status, text = await api.call("GET", "/", who=None)
    assert status == 200 and "Sign in to decide held statements" in text


async def test_openapi_documents_exactly_the_served_routes(api: Api) -> None:
    status, doc = await api.call("GET", "/api/openapi.json", who=None)
    assert status == 200 and doc["openapi"].startswith("3.1")
    documented = {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }
    app = build_web_app(api.web)
    served = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or info.get("prefix")
        if route.method in ("HEAD", "OPTIONS"):
            continue
        served.add((route.method, path))
    # The API is documented exactly; everything else served is a page, Slack's
    # endpoint or the static files (docs/web.md), none of it under /api/.
    api_routes = {(m, p) for m, p in served if p.startswith("/api/")}
    assert api_routes == documented
    assert api_routes == {(m, p) for m, p, _ in ROUTES}
    others = {(m, p) for m, p, _ in (*PAGE_ROUTES, *SLACK_ROUTES)} | {("GET", "/static")}
    assert served - api_routes == others
    # Every $ref resolves, every operation outside the public three needs the token.
    text = json.dumps(doc)
    for ref in set(re.findall(r'"\$ref": "#/components/(\w+)/(\w+)"', text)):
        assert ref[1] in doc["components"][ref[0]], ref
    public = {"/api/openapi.json", "/api/health"}
    for path, item in doc["paths"].items():
        for op in item.values():
            assert ("security" in op and op["security"] == []) == (path in public), path
            for code in op["responses"]:
                assert code.isdigit()


async def test_the_view_matches_what_the_api_reports(api: Api) -> None:
    rid, task = await api.held()
    await api.call("POST", f"/api/approvals/{rid}/reject", body={"reason": "view check"})
    await task
    conn = await asyncpg.connect(api.dsn)
    try:
        row = await conn.fetchrow("SELECT * FROM dbgate.approvals WHERE id = $1", rid)
    finally:
        await conn.close()
    _, detail = await api.call("GET", f"/api/approvals/{rid}")
    assert row["status"] == detail["status"] == "rejected"
    assert list(row["decided_by"]) == detail["decided_by"] == ["alice"]
    assert row["reason"] == detail["reason"] == "view check"
    assert row["statement"] == detail["statement"]


async def test_refused_decisions_are_recorded_in_the_audit_trail(api: Api, caplog) -> None:
    """Every refused decision — not eligible, already decided, expired under the
    approver's hand, a shape revoked twice — is an ``approval``/``refused`` record
    naming who tried what; a shape's revocation is one too; refused calls are logged."""
    import logging

    from dbgate.audit import AuditWriter
    from dbgate.audit.approval_steps import recorder
    from dbgate.config import AuditConfig

    writer = AuditWriter(api.dsn, AuditConfig(), replica="api-test")
    await writer.start()
    api.web.store.on_event = recorder(writer)
    caplog.set_level(logging.INFO, logger="dbgate.web")
    try:
        rid, task = await api.held(approver_groups=("dba",))
        assert (await api.call("POST", f"/api/approvals/{rid}/approve", who="carol"))[0] == 403
        assert (await api.call("POST", f"/api/approvals/{rid}/approve", who="olga"))[0] == 403
        assert (await api.call("POST", f"/api/approvals/{rid}/approve", body={}))[0] == 200
        await task
        status, _ = await api.call(
            "POST", f"/api/approvals/{rid}/reject", who="bob", body={"reason": "late"}
        )
        assert status == 409

        # Overdue but not yet ended by its replica: the attempt expires it, and says so.
        late, late_task = await api.held()
        async with api.web.store.db.connection() as conn:
            await conn.execute(
                "UPDATE dbgate.approval_requests SET deadline = now() - interval '1 second' "
                "WHERE id = $1",
                late,
            )
        status, err = await api.call("POST", f"/api/approvals/{late}/approve", who="bob")
        assert status == 409 and "expired before this decision" in err["message"]
        assert (await late_task).status is HoldStatus.EXPIRED

        outcome = await api.holder.hold(
            make_request("SELECT * FROM orders", wait=0, fingerprint="fp-audit-shape"), Notices()
        )
        shaped = outcome.request_id
        status, made = await api.call(
            "POST", f"/api/approvals/{shaped}/approve-shape", body={"minutes": 5}
        )
        assert status == 201
        sid = made["shape"]["id"]
        revoke = f"/api/shapes/{sid}/revoke"
        assert (await api.call("POST", revoke, who="bob", body={"reason": "done"}))[0] == 200
        assert (await api.call("POST", revoke, who="alice", body={}))[0] == 409

        status, _ = await api.call("POST", f"/api/approvals/{rid}/approve", who=None)
        assert status == 401
        await writer.flush()
    finally:
        api.web.store.on_event = None
        await writer.stop()

    async def steps(request_id: int) -> list[tuple[str, str, str]]:
        conn = await asyncpg.connect(api.dsn)
        try:
            rows = await conn.fetch(
                "SELECT event, actor, reason FROM dbgate.audit_log "
                "WHERE kind = 'approval' AND approval_id = $1 ORDER BY chain, seq",
                str(request_id),
            )
        finally:
            await conn.close()
        return [(r["event"], r["actor"] or "", r["reason"] or "") for r in rows]

    recorded = await steps(rid)
    assert [(e, a) for e, a, _ in recorded] == [
        ("refused", "carol"),
        ("refused", "olga"),
        ("approved", "alice"),
        ("refused", "bob"),
    ]
    assert recorded[0][2].startswith("approve via api refused: ") and "dba" in recorded[0][2]
    assert "owns identity 'agent'" in recorded[1][2]
    assert recorded[3][2] == (f"reject via api refused: approval request {rid} is already approved")
    assert await steps(late) == [
        ("expired", "", "nobody decided in time"),
        (
            "refused",
            "bob",
            f"approve via api refused: approval request {late} expired before this decision",
        ),
    ]
    assert [(e, a) for e, a, _ in await steps(shaped)] == [
        ("approved", "alice"),
        ("revoked", "bob"),
        ("refused", "alice"),
    ]
    assert (await steps(shaped))[1][2] == f"shape {sid} revoked: done"
    assert "is already revoked" in (await steps(shaped))[2][2]
    logged = [r.getMessage() for r in caplog.records if r.name == "dbgate.web"]
    assert any(f"/api/approvals/{rid}/approve" in m and "401 unauthorized" in m for m in logged)
    assert any(f"/api/approvals/{rid}/reject" in m and "409 conflict" in m for m in logged)
