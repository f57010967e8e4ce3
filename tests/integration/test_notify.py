"""Notifications end to end: a real state database, real announcements (LISTEN/NOTIFY),
a local HTTP receiver standing in for the webhook, Slack and Teams, and Slack clicks
signed in the test the way Slack signs them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from dbgate.approvals.model import HoldStatus
from dbgate.approvals.notify import Notifier, slack_signature, verify_webhook
from dbgate.approvals.notify.sender import RetryPolicy, Sender
from dbgate.approvals.notify.targets import Target
from dbgate.approvals.service import PgApprovalService
from dbgate.config import SlackConfig
from dbgate.web import WebServer, build_web_app
from tests.integration.approvals_helpers import (
    PII_SQL,
    PII_VALUES,
    Notices,
    drop_database,
    fresh_database,
    make_request,
    running_service,
)
from tests.integration.receiver import Receiver, closed_port_url, receiver
from tests.integration.web_helpers import Browser, add_person

DB = "dbgate_notify_test"
SECRET = "webhook-secret-0123456789"
SIGNING = "slack-signing-secret"
FAST = RetryPolicy(timeout=0.5, max_attempts=3, backoff=0.01, max_backoff=0.05)


@dataclass
class Env:
    holder: PgApprovalService
    other: PgApprovalService
    rx: Receiver

    async def held(self, **kw: Any) -> tuple[int, asyncio.Task[Any]]:
        notices = Notices()
        task = asyncio.create_task(self.holder.hold(make_request(**kw), notices))
        return await notices.request_id(), task

    async def decide(self, rid: int, approve: bool = True, who: str = "bob") -> None:
        approver = await self.other.accounts.get(who)
        await self.other.store.decide(rid, approver, approve=approve, reason="because")

    async def deliveries(self, rid: int) -> list[Any]:
        return await self.notifiers_store().for_request(rid)

    def notifiers_store(self) -> Any:
        from dbgate.approvals.notify.deliveries import DeliveryStore

        return DeliveryStore(self.other.store.db)


@pytest.fixture(scope="module")
async def state_dsn(pg_server) -> AsyncIterator[str]:
    dsn = await fresh_database(pg_server, DB)
    yield dsn
    await drop_database(pg_server, DB)


@pytest.fixture(scope="module")
async def env(state_dsn) -> AsyncIterator[Env]:
    async with (
        running_service(state_dsn, replica="n1", owners={"agent": ["olga"]}) as holder,
        running_service(state_dsn, replica="n2", public_url="http://dbgate.test") as other,
        receiver() as rx,
    ):
        for name, groups in {"alice": ["dba"], "bob": ["dba"], "olga": ["dba"]}.items():
            await add_person(other, name, "pw-" + name, *groups)
        yield Env(holder, other, rx)


@asynccontextmanager
async def notifying(
    svc: PgApprovalService, targets: Sequence[Target], policy: RetryPolicy = FAST
) -> AsyncIterator[Notifier]:
    n = Notifier(svc, targets, policy=policy, catch_up_seconds=3600)
    await n.start()
    try:
        yield n
    finally:
        await n.stop(grace=5)


def webhook(rx: Receiver, path: str, name: str | None = None) -> Target:
    return Target(
        f"webhook:{name or path.strip('/')}",
        "webhook",
        rx.url + path,
        frozenset({"created", "finished"}),
        secret=SECRET,
    )


async def until_settled(env: Env, n: Notifier, rid: int, count: int) -> list[Any]:
    """Wait until ``count`` deliveries of ``rid`` ended on notifier ``n``; their rows."""
    await n.wait_until(lambda done: sum(1 for d in done if d.request_id == rid) >= count)
    return await env.deliveries(rid)


# -- delivery ------------------------------------------------------------------------------


async def test_webhook_slack_and_teams_get_signed_masked_messages(env: Env) -> None:
    targets = [
        webhook(env.rx, "/hook/a"),
        Target(
            "slack",
            "slack",
            env.rx.url + "/slack/a",
            frozenset({"created", "finished"}),
            buttons=True,
        ),
        Target("teams", "teams", env.rx.url + "/teams/a", frozenset({"created", "finished"})),
    ]
    async with notifying(env.holder, targets) as notifier:
        rid, task = await env.held(sql=PII_SQL, params=("4111111111111111",))
        [hook] = await env.rx.wait_for("/hook/a")
        [slack] = await env.rx.wait_for("/slack/a")
        [teams] = await env.rx.wait_for("/teams/a")
        await env.decide(rid)
        assert (await task).status is HoldStatus.APPROVED
        hooks = await env.rx.wait_for("/hook/a", 2)
        await env.rx.wait_for("/slack/a", 2)
        await env.rx.wait_for("/teams/a", 2)
        await notifier.drain(10)

    for arrival in env.rx.arrivals:
        for value in PII_VALUES:
            assert value.encode() not in arrival.body
    # Generic webhook: signed over timestamp and body, verifiable within the window.
    stamp = verify_webhook(
        SECRET, hook.headers["X-Dbgate-Signature"], hook.body, now=time.time(), tolerance=60
    )
    assert abs(stamp - time.time()) < 60
    body = hook.json()
    assert body["event"] == "approval.created" and body["request"]["id"] == str(rid)
    assert "'<email>'" in body["request"]["statement"] and body["request"]["params"] == ["<card>"]
    assert body["request"]["url"] == f"http://approvals.test/approvals/{rid}"
    assert hook.headers["X-Dbgate-Delivery"] == body["delivery"]
    finished = hooks[1].json()
    assert finished["event"] == "approval.finished"
    assert finished["request"]["status"] in ("approved", "executed")
    assert finished["request"]["decided_by"] == ["bob"]
    # Slack: masked context (Slack-escaped), buttons naming the request, a link.
    msg = slack.json()
    text = json.dumps(msg)
    assert "&lt;email&gt;" in text and f"/approvals/{rid}" in text
    actions = next(b for b in msg["blocks"] if b["type"] == "actions")["elements"]
    assert [a.get("action_id") for a in actions] == [
        "dbgate_approve",
        "dbgate_reject",
        "dbgate_open",
    ]
    assert actions[0]["value"] == str(rid)
    # Teams: an Adaptive Card with the facts and an OpenUrl action.
    card = teams.json()["attachments"][0]
    assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert card["content"]["actions"][0]["url"] == f"http://approvals.test/approvals/{rid}"
    facts = {f["title"]: f["value"] for f in card["content"]["body"][2]["facts"]}
    assert facts["Identity"] == "agent"
    texts = [
        "".join(run["text"] for run in b["inlines"])
        for b in card["content"]["body"]
        if b["type"] == "RichTextBlock"
    ]
    assert "Tables: orders" in texts
    rows = await env.deliveries(rid)
    assert {(d.target, d.event, d.status) for d in rows} == {
        (t, e, "delivered")
        for t in ("webhook:hook/a", "slack", "teams")
        for e in ("created", "finished")
    }


async def test_two_replicas_send_each_message_once(env: Env) -> None:
    target = webhook(env.rx, "/hook/once")
    async with notifying(env.holder, [target]), notifying(env.other, [target]):
        rid, task = await env.held()
        await env.rx.wait_for("/hook/once")
        await env.decide(rid)
        await task
        await env.rx.wait_for("/hook/once", 2)
    # Leaving the block stopped both notifiers, which lets deliveries in flight end.
    rows = await env.deliveries(rid)
    events = [a.json()["event"] for a in env.rx.at("/hook/once")]
    assert sorted(events) == ["approval.created", "approval.finished"]
    assert len(rows) == 2 and all(d.status == "delivered" for d in rows)


async def test_failing_receivers_are_retried_then_recorded_and_shown(env: Env, caplog) -> None:
    env.rx.script["/hook/flaky"] = [500, 503]
    env.rx.script["/hook/gone"] = [404]
    targets = [
        webhook(env.rx, "/hook/flaky", "flaky"),
        webhook(env.rx, "/hook/gone", "gone"),
        Target("webhook:down", "webhook", closed_port_url(), frozenset({"created"}), secret=SECRET),
    ]
    caplog.set_level(logging.WARNING, logger="dbgate.notify")
    async with notifying(env.holder, targets) as n:
        rid, task = await env.held()
        rows = {d.target: d for d in await until_settled(env, n, rid, 3)}
        await env.decide(rid, approve=False)
        await task
    assert rows["webhook:flaky"].status == "delivered" and rows["webhook:flaky"].attempts == 3
    assert rows["webhook:gone"].status == "failed" and rows["webhook:gone"].attempts == 1
    assert rows["webhook:gone"].last_error == "the receiver answered HTTP 404"
    assert rows["webhook:down"].status == "failed" and rows["webhook:down"].attempts == 3
    assert "cannot connect to the receiver" in rows["webhook:down"].last_error
    assert any(
        "webhook:down created message" in r.message and "failed" in r.message
        for r in caplog.records
    )
    # The page shows it: the queue's banner and the request's own list.
    web_app = build_web_app(env.other)
    server = WebServer(web_app, "127.0.0.1", 0)
    await server.start()
    b = Browser(server.url)
    try:
        await b.sign_in("alice", "pw-alice")
        queue = await b.get("/approvals")
        assert "Notifications to <strong>webhook:down</strong> are failing" in queue.text
        detail = await b.get(f"/approvals/{rid}")
        assert "webhook:down (created): failed after 3 attempts" in detail.plain
        assert "cannot connect to the receiver" in detail.plain
    finally:
        await b.close()
        await server.stop()


async def test_retries_wait_with_doubling_backoff_between_attempts(env: Env) -> None:
    """The back-off is waited between attempts (never after the last one, never after
    a refusal that retrying cannot change), doubling up to its cap; every attempt is
    signed afresh."""
    policy = RetryPolicy(timeout=5, max_attempts=5, backoff=0.5, max_backoff=1.5)

    async def deliver(path: str, statuses: list[int]) -> tuple[int, Any, list[Any], int]:
        """(attempts, last result, [(seconds waited, attempts seen by then)], signings)"""
        env.rx.script[path] = list(statuses)
        waits: list[tuple[float, int]] = []
        signed: list[int] = []

        async def sleep(seconds: float) -> None:
            waits.append((seconds, len(env.rx.at(path))))

        def headers() -> dict[str, str]:
            signed.append(1)
            return {"Content-Type": "application/json"}

        sender = Sender(policy, sleep=sleep)
        await sender.start()
        try:
            attempts, result = await sender.deliver(env.rx.url + path, b"{}", headers)
        finally:
            await sender.close()
        return attempts, result, waits, len(signed)

    attempts, result, waits, signed = await deliver("/backoff/ok", [503, 500, 429, 502])
    assert (attempts, result.ok, signed) == (5, True, 5)
    assert waits == [(0.5, 1), (1.0, 2), (1.5, 3), (1.5, 4)]  # each after its attempt

    attempts, result, waits, _ = await deliver("/backoff/down", [500] * 5)
    assert (attempts, result.ok, result.error) == (5, False, "the receiver answered HTTP 500")
    assert [s for s, _ in waits] == [0.5, 1.0, 1.5, 1.5]  # none after the last attempt

    attempts, result, waits, _ = await deliver("/backoff/gone", [410])
    assert (attempts, result.ok, result.retry, waits) == (1, False, False, [])


async def test_a_hung_receiver_never_delays_the_hold(env: Env) -> None:
    env.rx.hang.add("/hook/hung")
    slow = RetryPolicy(timeout=600, max_attempts=1)
    async with notifying(env.holder, [webhook(env.rx, "/hook/hung", "hung")], slow) as n:
        rid, task = await env.held()
        await env.rx.wait_for("/hook/hung")  # the receiver holds this request open
        await env.decide(rid)
        outcome = await task  # the hold ends while the message is still in flight
        assert outcome.status is HoldStatus.APPROVED
        assert n.in_flight >= 1
        created = [d for d in await env.deliveries(rid) if d.event == "created"]
        assert [d.status for d in created] == ["sending"]
        env.rx.release.set()
        await env.rx.wait_for("/hook/hung", 2)  # the finished message follows
        await until_settled(env, n, rid, 2)
    env.rx.hang.discard("/hook/hung")


async def test_a_slow_receiver_times_out_and_is_recorded(env: Env) -> None:
    env.rx.hang.add("/hook/slow")
    env.rx.release.clear()
    policy = RetryPolicy(timeout=0.2, max_attempts=2, backoff=0.01)
    target = Target(
        "webhook:slow", "webhook", env.rx.url + "/hook/slow", frozenset({"created"}), secret=SECRET
    )
    async with notifying(env.holder, [target], policy) as n:
        rid, task = await env.held()
        [row] = await until_settled(env, n, rid, 1)
        await env.decide(rid, approve=False)
        await task
    env.rx.release.set()
    env.rx.hang.discard("/hook/slow")
    assert row.status == "failed" and row.attempts == 2
    assert row.last_error == "the receiver did not answer within 0.2 s"


async def test_catch_up_sends_what_no_replica_sent(env: Env) -> None:
    rid, task = await env.held()  # nobody is notifying now
    await env.decide(rid)
    await task
    async with env.other.store.db.connection() as conn:
        await conn.execute(
            "UPDATE dbgate.approval_requests SET created_at = created_at - interval '1 minute', "
            "finished_at = finished_at - interval '1 minute' WHERE id = $1",
            rid,
        )
    target = webhook(env.rx, "/hook/late", "late")

    def about(a: Any) -> bool:
        return bool(a.json()["request"]["id"] == str(rid))

    async with notifying(env.other, [target]) as n:
        assert await n.catch_up() >= 1  # (earlier tests' requests are due here too)
        [late] = await env.rx.wait_for("/hook/late", match=about)
        assert late.json()["event"] == "approval.finished"  # it was decided already
        await n.drain(10)
        await n.catch_up()
        await n.drain(10)
    assert len(env.rx.at("/hook/late", about)) == 1  # nothing twice
    assert [(d.event, d.status) for d in await env.deliveries(rid)] == [("finished", "delivered")]


# -- Slack clicks --------------------------------------------------------------------------


@dataclass
class SlackSite:
    url: str
    http: aiohttp.ClientSession

    async def click(
        self,
        rid: int | str,
        user: str,
        action: str = "dbgate_approve",
        *,
        secret: str = SIGNING,
        age: float = 0,
        response_url: str | None = None,
        payload: dict[str, Any] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, dict[str, Any]]:
        data = payload or {
            "type": "block_actions",
            "user": {"id": user, "username": user.lower()},
            "container": {"type": "message", "message_ts": "1700000000.000100"},
            "response_url": response_url,
            "actions": [{"action_id": action, "value": str(rid), "type": "button"}],
        }
        body = raw if raw is not None else urlencode({"payload": json.dumps(data)}).encode()
        ts = str(int(time.time() - age))
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": slack_signature(secret, ts, body),
        }
        async with self.http.post(
            self.url + "/slack/interactivity", data=body, headers=headers
        ) as r:
            return r.status, await r.json()


@pytest.fixture
async def slack(env: Env) -> AsyncIterator[SlackSite]:
    config = SlackConfig(
        webhook_url=env.rx.url + "/slack/in",
        signing_secret=SIGNING,
        users={"U_ALICE": "alice", "U_OLGA": "olga", "U_GHOST": "ghost"},
        response_url_prefix=env.rx.url + "/slack-response/",
    )
    server = WebServer(build_web_app(env.other, slack=config), "127.0.0.1", 0)
    await server.start()
    async with aiohttp.ClientSession() as http:
        yield SlackSite(server.url, http)
    await server.stop()


async def test_slack_approve_click_decides_and_replaces_the_message(
    env: Env, slack: SlackSite
) -> None:
    rid, task = await env.held()
    reply_url = env.rx.url + f"/slack-response/ok{rid}"
    status, body = await slack.click(rid, "U_ALICE", response_url=reply_url)
    assert status == 200 and body["ok"] is True and body["status"] == "approved"
    outcome = await task
    assert outcome.status is HoldStatus.APPROVED and outcome.decided_by == ("alice",)
    rec = await env.other.store.get(rid)
    assert [(d.approver, d.via) for d in rec.decisions] == [("alice", "slack")]
    [reply] = await env.rx.wait_for(f"/slack-response/ok{rid}")
    message = reply.json()
    assert message["replace_original"] is True and "approved by alice" in message["text"]
    assert not any(
        e.get("action_id") == "dbgate_approve"
        for b in message["blocks"]
        if b["type"] == "actions"
        for e in b["elements"]
    )


async def test_slack_reject_click(env: Env, slack: SlackSite) -> None:
    rid, task = await env.held()
    status, body = await slack.click(rid, "U_ALICE", "dbgate_reject")
    assert status == 200 and body["status"] == "rejected"
    outcome = await task
    assert outcome.status is HoldStatus.REJECTED and "rejected in Slack by alice" in outcome.reason


async def test_slack_refusals_decide_nothing_and_say_so_in_the_thread(
    env: Env, slack: SlackSite
) -> None:
    told: list[tuple[str, str, str]] = []  # what the audit trail is told (store.on_event)
    env.other.store.on_event = lambda step, _rec, actor, why, _at: told.append((step, actor, why))
    try:
        await _slack_refusals(env, slack)
    finally:
        env.other.store.on_event = None
    assert [(step, actor) for step, actor, _ in told] == [
        ("refused", "slack:U_STRANGER"),
        ("refused", "ghost"),
        ("refused", "olga"),
        ("refused", "slack:U_STRANGER"),
        ("approved", "bob"),
        ("refused", "alice"),
    ]
    assert told[0][2] == (
        "approve via slack refused: the Slack user is not mapped to a dbgate approver account"
    )
    assert "owns identity" in told[2][2] and "already approved" in told[5][2]


async def _slack_refusals(env: Env, slack: SlackSite) -> None:
    rid, task = await env.held()
    reply_url = env.rx.url + f"/slack-response/no{rid}"
    # Unmapped Slack user.
    status, body = await slack.click(rid, "U_STRANGER", response_url=reply_url)
    assert status == 200 and body["error"] == "unmapped_user"
    [reply] = await env.rx.wait_for(f"/slack-response/no{rid}")
    msg = reply.json()
    assert msg["thread_ts"] == "1700000000.000100" and msg["replace_original"] is False
    assert "<@U_STRANGER> is not mapped to a dbgate approver" in msg["text"]
    assert "was not decided" in msg["text"]
    # Mapped to a name that has no account.
    status, body = await slack.click(rid, "U_GHOST", response_url=reply_url)
    assert status == 200 and body["error"] == "not_found"
    # The agent's owner.
    status, body = await slack.click(rid, "U_OLGA", response_url=reply_url)
    assert status == 200 and body["error"] == "forbidden" and "owns identity" in body["message"]
    replies = await env.rx.wait_for(f"/slack-response/no{rid}", 3)
    assert "owns identity" in replies[2].json()["text"]
    # Forged, replayed, unsigned and malformed requests.
    status, body = await slack.click(rid, "U_ALICE", secret="not-the-secret")
    assert (
        status == 401 and body["error"] == "bad_signature" and "does not match" in body["message"]
    )
    status, body = await slack.click(rid, "U_ALICE", age=600)
    assert status == 401 and "replay" in body["message"]
    async with slack.http.post(slack.url + "/slack/interactivity", data=b"payload=%7B%7D") as r:
        assert r.status == 401
    status, body = await slack.click(rid, "U_ALICE", raw=b"payload=not-json")
    assert status == 400 and "not JSON" in body["message"]
    status, body = await slack.click(rid, "U_ALICE", payload={"type": "view_submission"})
    assert status == 400
    status, body = await slack.click("abc", "U_ALICE")
    assert status == 400
    # A response_url elsewhere than Slack's gets no reply (and nothing is decided).
    status, body = await slack.click(rid, "U_STRANGER", response_url="http://evil.test/x")
    assert status == 200 and body["error"] == "unmapped_user"
    assert (await env.other.store.get(rid)).status == "pending"
    assert (await env.other.store.get(rid)).decisions == ()
    # Finally decided; a later click is told so.
    await env.decide(rid)
    await task
    status, body = await slack.click(rid, "U_ALICE")
    assert status == 200 and body["error"] == "conflict" and "already approved" in body["message"]


async def test_the_slack_endpoint_is_absent_without_a_signing_secret(env: Env) -> None:
    server = WebServer(build_web_app(env.other), "127.0.0.1", 0)
    await server.start()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.post(server.url + "/slack/interactivity", data=b"payload=%7B%7D") as r,
        ):
            assert r.status == 404 and (await r.json())["error"] == "not_found"
    finally:
        await server.stop()


async def test_a_statement_cut_short_in_slack_is_not_approved_from_slack(
    env: Env, slack: SlackSite
) -> None:
    """Regression: the Slack message cut the statement at 1,500 characters (and never
    showed the values) yet offered Approve: a harmless start padded past the cut
    hid what followed. Such a click is refused; Reject still works from Slack."""
    sql = "SELECT 1 /* " + "x" * 1600 + " */; DELETE FROM orders"
    rid, task = await env.held(sql=sql)
    status, body = await slack.click(rid, "U_ALICE")
    assert status == 200 and body["error"] == "open_the_page", body
    assert (await env.other.store.get(rid)).status == "pending"
    status, body = await slack.click(rid, "U_ALICE", "dbgate_reject")
    assert status == 200 and body["status"] == "rejected"
    assert (await task).status is HoldStatus.REJECTED
