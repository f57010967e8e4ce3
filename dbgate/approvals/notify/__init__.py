"""Notifications about approval requests: generic webhooks, Slack and Teams.

:class:`Notifier` hears every new and finished request through the approvals
service's wake-up feed and sends each message once across replicas, retried with
backoff and recorded; :class:`SlackActions` handles Slack's Approve/Reject clicks.
See docs/web.md.
"""

from dbgate.approvals.notify.notifier import Notifier
from dbgate.approvals.notify.signing import (
    SIGNATURE_HEADER,
    SignatureError,
    sign_webhook,
    slack_signature,
    verify_slack,
    verify_webhook,
)
from dbgate.approvals.notify.slack_actions import SlackActions, SlackAnswer

__all__ = [
    "SIGNATURE_HEADER",
    "Notifier",
    "SignatureError",
    "SlackActions",
    "SlackAnswer",
    "sign_webhook",
    "slack_signature",
    "verify_slack",
    "verify_webhook",
]
