"""The keys under which the web app keeps what its handlers share."""

from __future__ import annotations

import asyncio

from aiohttp import web

from dbgate.approvals.notify.deliveries import DeliveryStore
from dbgate.approvals.notify.slack_actions import SlackActions
from dbgate.approvals.service import PgApprovalService
from dbgate.web.live import LiveFeed
from dbgate.web.sessions import LoginThrottle, SessionStore, WebSettings

SERVICE: web.AppKey[PgApprovalService] = web.AppKey("dbgate_approvals", PgApprovalService)
MAX_BODY: web.AppKey[int] = web.AppKey("dbgate_max_body", int)
SETTINGS: web.AppKey[WebSettings] = web.AppKey("dbgate_web_settings", WebSettings)
SESSIONS: web.AppKey[SessionStore] = web.AppKey("dbgate_web_sessions", SessionStore)
THROTTLE: web.AppKey[LoginThrottle] = web.AppKey("dbgate_web_throttle", LoginThrottle)
DELIVERIES: web.AppKey[DeliveryStore] = web.AppKey("dbgate_web_deliveries", DeliveryStore)
LIVE: web.AppKey[LiveFeed] = web.AppKey("dbgate_web_live", LiveFeed)
PASSWORD_SLOTS: web.AppKey[asyncio.Semaphore] = web.AppKey(
    "dbgate_web_password_slots", asyncio.Semaphore
)
SLACK: web.AppKey[SlackActions | None] = web.AppKey("dbgate_web_slack")
