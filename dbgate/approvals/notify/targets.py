"""Where notifications go: a generic webhook, Slack or Teams, built from the config.

A :class:`Target` turns one event about one request into the bytes and headers of
one HTTP POST. The generic webhook signs each attempt afresh (the signature's
timestamp is the time of sending, so a receiver's replay window applies to retries
too); the body, and its ``delivery`` id, stay the same across retries so that a
receiver can drop duplicates.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dbgate.approvals.notify.messages import slack_message, teams_message, webhook_body
from dbgate.approvals.notify.signing import SIGNATURE_HEADER, sign_webhook
from dbgate.approvals.store import RequestRecord

if TYPE_CHECKING:
    from dbgate.config import NotificationsConfig

JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Target:
    name: str  # webhook:<name> | slack | teams (recorded with each delivery)
    kind: str  # webhook | slack | teams
    url: str
    events: frozenset[str]
    secret: str = ""  # webhook: the HMAC key
    buttons: bool = False  # slack: offer Approve/Reject (a signing secret is configured)

    def body(self, event: str, rec: RequestRecord, url: str, delivery_id: str) -> bytes:
        if self.kind == "webhook":
            return webhook_body(event, rec, url, delivery_id)
        if self.kind == "slack":
            message = slack_message(event, rec, url, buttons=self.buttons)
        else:
            message = teams_message(event, rec, url)
        return json.dumps(message, ensure_ascii=False).encode("utf-8")

    def headers(self, body: bytes, delivery_id: str, now: float | None = None) -> dict[str, str]:
        headers = {"Content-Type": JSON, "User-Agent": "dbgate-notify"}
        if self.kind == "webhook":
            stamp = int(time.time() if now is None else now)
            headers[SIGNATURE_HEADER] = sign_webhook(self.secret, body, stamp)
            headers["X-Dbgate-Delivery"] = delivery_id
        return headers


def targets_from_config(config: NotificationsConfig) -> list[Target]:
    out = [
        Target(f"webhook:{w.name}", "webhook", w.url, frozenset(w.events), secret=w.secret)
        for w in config.webhooks
    ]
    if config.slack is not None:
        s = config.slack
        out.append(
            Target(
                "slack", "slack", s.webhook_url, frozenset(s.events), buttons=bool(s.signing_secret)
            )
        )
    if config.teams is not None:
        out.append(
            Target("teams", "teams", config.teams.webhook_url, frozenset(config.teams.events))
        )
    return out
