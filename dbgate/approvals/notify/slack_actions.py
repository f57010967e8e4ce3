"""Slack's Approve and Reject buttons: verify the click, map the person, decide.

Slack posts a click to the interactivity endpoint (``POST /slack/interactivity``)
as a form field ``payload`` holding JSON, signed with the app's signing secret.
:meth:`SlackActions.handle`:

1. refuses anything not signed by Slack within ``max_age`` seconds (401; a replayed
   or forged click decides nothing);
2. refuses malformed payloads (400);
3. maps the Slack user id to a dbgate approver account (``notifications.slack.users``)
   — a click by anyone not mapped is refused and the thread says so;
4. records the decision through the same store as the page and the API (same
   eligibility: groups, N-of-M, never the requester's own side; ``via = slack``);
5. replies through the click's ``response_url``: a decision replaces the message
   (no buttons left, who decided); a refusal is posted in the message's thread.

Verified clicks are answered 200 (Slack wants an acknowledgement within three
seconds) with a JSON body saying what happened; the person reads the outcome in the
channel.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from dbgate.approvals.accounts import AccountStore
from dbgate.approvals.errors import ApprovalError, NotFound
from dbgate.approvals.notify.messages import (
    ACTION_APPROVE,
    ACTION_REJECT,
    outcome_text,
    slack_request_blocks,
    whole_in_chat,
)
from dbgate.approvals.notify.sender import Sender
from dbgate.approvals.notify.signing import SignatureError, verify_slack
from dbgate.approvals.store import ApprovalStore

log = logging.getLogger("dbgate.notify")


@dataclass(frozen=True, slots=True)
class SlackAnswer:
    """What the endpoint answers Slack, and the reply posted to ``response_url``."""

    status: int
    body: dict[str, Any]
    reply: dict[str, Any] | None = field(default=None, compare=False)


def _refused(status: int, code: str, message: str) -> SlackAnswer:
    return SlackAnswer(status, {"ok": False, "error": code, "message": message})


class SlackActions:
    def __init__(
        self,
        *,
        signing_secret: str,
        users: Mapping[str, str],
        store: ApprovalStore,
        accounts: AccountStore,
        url_for: Callable[[int], str],
        sender: Sender,
        response_url_prefix: str = "https://hooks.slack.com/",
        max_age: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = signing_secret
        self._users = dict(users)
        self._store = store
        self._accounts = accounts
        self._url_for = url_for
        self._sender = sender
        self._prefix = response_url_prefix
        self._max_age = max_age
        self._clock = clock
        self._replies: set[asyncio.Task[None]] = set()

    async def handle(self, body: bytes, headers: Mapping[str, str]) -> SlackAnswer:
        try:
            verify_slack(
                self._secret,
                headers.get("X-Slack-Request-Timestamp"),
                headers.get("X-Slack-Signature"),
                body,
                now=self._clock(),
                max_age=self._max_age,
            )
        except SignatureError as e:
            log.warning("slack: refused an interactivity request: %s", e)
            return _refused(401, "bad_signature", f"refused: {e}; nothing was decided")
        try:
            payload = _payload(body)
        except ValueError as e:
            log.warning("slack: malformed interactivity request: %s", e)
            return _refused(400, "bad_request", f"{e}; nothing was decided")
        answer = await self._act(payload)
        response_url = payload.get("response_url")
        if answer.reply is not None and isinstance(response_url, str):
            self._post_reply(response_url, answer.reply)
        return answer

    async def _act(self, payload: dict[str, Any]) -> SlackAnswer:
        if payload.get("type") != "block_actions":
            return _refused(400, "bad_request", f"unsupported interaction {payload.get('type')!r}")
        actions = payload.get("actions")
        if not isinstance(actions, list):
            return _refused(400, "bad_request", "the payload has no actions")
        action = next(
            (
                a
                for a in actions
                if isinstance(a, dict) and a.get("action_id") in (ACTION_APPROVE, ACTION_REJECT)
            ),
            None,
        )
        if action is None:  # the "Open in dbgate" link button also reports its click
            return SlackAnswer(200, {"ok": True, "ignored": True})
        value = action.get("value")
        if not isinstance(value, str) or not value.isdigit() or int(value) > 2**63 - 1:
            return _refused(400, "bad_request", "the button does not name an approval request")
        request_id = int(value)
        approve = action["action_id"] == ACTION_APPROVE
        user = payload.get("user") if isinstance(payload.get("user"), dict) else {}
        slack_user = str(user.get("id") or "")
        thread_ts = _thread_ts(payload)
        name = self._users.get(slack_user)
        verb = "approve" if approve else "reject"
        if name is None:
            message = (
                f"<@{slack_user}> is not mapped to a dbgate approver account, so this click "
                f"was refused and request {request_id} was not decided. An operator can add "
                "the Slack user id to notifications.slack.users."
            )
            log.warning(
                "slack: click on request %d by unmapped Slack user %r refused",
                request_id,
                slack_user,
            )
            await self._store.refused(
                request_id,
                f"slack:{slack_user[:64]}",
                f"{verb} via slack",
                "the Slack user is not mapped to a dbgate approver account",
            )
            return SlackAnswer(
                200,
                {"ok": False, "error": "unmapped_user", "message": message},
                _thread_reply(message, thread_ts),
            )
        try:
            if approve and not whole_in_chat(await self._store.get(request_id)):
                why = (
                    "the message could not show the whole statement, its values, reasons "
                    "and tables: it is approved on its page, where all of it is shown"
                )
                message = f"{name} cannot approve request {request_id} in Slack: {why}"
                log.info("slack: %s", message)
                await self._store.refused(request_id, name, "approve via slack", why)
                return SlackAnswer(
                    200,
                    {"ok": False, "error": "open_the_page", "message": message},
                    _thread_reply(message, thread_ts),
                )
            approver = await self._accounts.get(name)
            reason = f"{'approved' if approve else 'rejected'} in Slack by {name}"
            rec = await self._store.decide(
                request_id, approver, approve=approve, reason=reason, via="slack"
            )
        except NotFound as e:
            message = f"{name} cannot {verb} request {request_id}: {e.message}"
            log.warning("slack: %s", message)
            await self._store.refused(request_id, name, f"{verb} via slack", e.message)
            return SlackAnswer(
                200,
                {"ok": False, "error": e.code, "message": message},
                _thread_reply(message, thread_ts),
            )
        except ApprovalError as e:
            message = f"{name} could not {verb} request {request_id}: {e.message}. Nothing was decided by this click."
            log.info("slack: %s", message)
            return SlackAnswer(
                200,
                {"ok": False, "error": e.code, "message": message},
                _thread_reply(message, thread_ts),
            )
        log.info("slack: request %d: %s via Slack (now %s)", request_id, verb, rec.status)
        if rec.status == "pending":  # N-of-M: more approvals needed
            line = f"{name} approved in Slack; {rec.approvals} of {rec.approvals_needed} approvals so far"
            return SlackAnswer(
                200,
                {"ok": True, "status": rec.status, "message": line},
                _thread_reply(line, thread_ts),
            )
        line = f"Request {rec.id} {outcome_text(rec)} (in Slack)"
        reply = {
            "replace_original": True,
            "text": line,
            "blocks": slack_request_blocks(
                rec, self._url_for(rec.id), buttons=False, status_line=line
            ),
        }
        return SlackAnswer(200, {"ok": True, "status": rec.status, "message": line}, reply)

    def _post_reply(self, response_url: str, reply: dict[str, Any]) -> None:
        if not response_url.startswith(self._prefix):
            log.warning("slack: response_url does not start with %s; no reply posted", self._prefix)
            return
        body = json.dumps(reply).encode()

        async def post() -> None:
            _n, result = await self._sender.deliver(
                response_url,
                body,
                lambda: {"Content-Type": "application/json"},
                what="Slack reply",
            )
            if not result.ok:
                log.warning("slack: the reply to a click could not be posted: %s", result.error)

        task = asyncio.ensure_future(post())
        self._replies.add(task)
        task.add_done_callback(self._replies.discard)

    async def drain(self, timeout: float) -> None:
        if self._replies:
            await asyncio.wait(list(self._replies), timeout=timeout)


def _payload(body: bytes) -> dict[str, Any]:
    try:
        form = parse_qs(body.decode("utf-8"), strict_parsing=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise ValueError("the body is not a form") from None
    raw = form.get("payload")
    if not raw or len(raw) != 1:
        raise ValueError("the form has no single 'payload' field")
    try:
        payload = json.loads(raw[0])
    except ValueError:
        raise ValueError("'payload' is not JSON") from None
    if not isinstance(payload, dict):
        raise ValueError("'payload' is not a JSON object")
    return payload


def _thread_ts(payload: dict[str, Any]) -> str | None:
    container = payload.get("container")
    if isinstance(container, dict) and isinstance(container.get("message_ts"), str):
        return str(container["message_ts"])
    message = payload.get("message")
    if isinstance(message, dict) and isinstance(message.get("ts"), str):
        return str(message["ts"])
    return None


def _thread_reply(text: str, thread_ts: str | None) -> dict[str, Any]:
    reply: dict[str, Any] = {"replace_original": False, "response_type": "in_channel", "text": text}
    if thread_ts:
        reply["thread_ts"] = thread_ts
    return reply
