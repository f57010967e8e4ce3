"""Holds and the humans who decide them: how held statements are recorded, waited
for and matched, the approvers' web page, and who is notified (docs/approvals.md,
docs/web.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from dbgate.config.base import Strict, TLSConfig


class ApprovalsConfig(Strict):
    """How held statements are recorded, waited for and matched (docs/approvals.md)."""

    #: Names this process in approval records; a replica marks its own still-pending
    #: holds ``abandoned`` when it starts. Default: ``<hostname>:<pid>``. Give each
    #: replica (and each worker) a stable, distinct id to have its holds cleaned up
    #: by its own restart rather than after ``abandon_after_seconds``.
    replica_id: str | None = Field(None, min_length=1)
    #: Wait for hold rules that do not set ``wait_seconds`` (0: approve-then-retry).
    default_wait_seconds: float = Field(300.0, ge=0)
    #: How long an approval may be used by the identical statement once approved
    #: (approve-then-retry, or a wait that ended before the statement ran).
    approved_lifetime_seconds: float = Field(900.0, gt=0)
    #: How long a ``wait_seconds: 0`` request stays open for a decision.
    retry_window_seconds: float = Field(3600.0, gt=0)
    #: Longest shape approval ("this fingerprint, this identity, N minutes").
    max_shape_minutes: int = Field(1440, ge=1)
    #: Waiting holds re-read their status this often, so that a lost notification
    #: delays a decision but never loses it.
    recheck_seconds: float = Field(2.0, gt=0, le=60)
    #: A held request still pending this long after its deadline has lost its
    #: replica: any replica marks it ``abandoned``.
    abandon_after_seconds: float = Field(60.0, gt=0)
    #: Timeout for each state-database call; beyond it a hold fails closed.
    state_timeout_seconds: float = Field(5.0, gt=0)
    #: HMAC key for matching retries (keyed hash of the raw statement and values).
    #: Default: a random key created once and kept in the state database.
    match_key: str | None = Field(None, min_length=16)


class WebConfig(Strict):
    """The approvers' web page and the HTTP API (docs/web.md)."""

    listen: str = "127.0.0.1:8080"
    #: How approvers reach the page (used in notices and notifications); default
    #: http://<listen> (https:// when ``tls`` is set).
    public_url: str | None = None
    #: Serve the page and the API over HTTPS with this certificate.
    tls: TLSConfig | None = None
    #: Mark the session cookie ``Secure`` (sent over HTTPS only). Default: when ``tls``
    #: is set or ``public_url`` starts with https:// (TLS ended by a proxy in front).
    secure_cookies: bool | None = None
    #: A signed-in approver is signed out after this long without a request...
    session_idle_minutes: int = Field(30, ge=1, le=24 * 60)
    #: ...and in any case this long after signing in.
    session_max_hours: float = Field(12.0, gt=0, le=24 * 7)
    #: Failed sign-ins (per approver name, and per client address) within
    #: ``login_lockout_seconds`` before further attempts are refused for that long.
    login_max_failures: int = Field(5, ge=1, le=1000)
    login_lockout_seconds: float = Field(900.0, gt=0)
    #: Most pending requests the queue page lists at once (newest first).
    queue_limit: int = Field(1000, ge=10, le=10000)

    @property
    def cookies_secure(self) -> bool:
        if self.secure_cookies is not None:
            return self.secure_cookies
        return self.tls is not None or (self.public_url or "").lower().startswith("https://")


class WebhookTargetConfig(Strict):
    """A generic webhook: JSON POST signed with ``X-Dbgate-Signature`` (docs/web.md)."""

    name: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    url: str = Field(pattern=r"^https?://")
    #: HMAC-SHA256 key shared with the receiver (use ``${ENV}``).
    secret: str = Field(min_length=16)
    #: ``created`` (a request waits), ``finished`` (approved, rejected, expired, ...).
    events: list[Literal["created", "finished"]] = Field(
        default_factory=lambda: ["created", "finished"]
    )


class SlackConfig(Strict):
    """Slack: an incoming-webhook message per request, Approve/Reject buttons."""

    webhook_url: str = Field(pattern=r"^https?://")
    #: The Slack app's signing secret; without it the buttons are not offered and the
    #: interactivity endpoint (``/slack/interactivity``) answers 404.
    signing_secret: str | None = Field(None, min_length=8)
    #: Slack user id (``U0123ABCD``) -> dbgate approver name. A click by anyone not
    #: listed is refused, and the thread says so.
    users: dict[str, str] = Field(default_factory=dict)
    #: Slack's ``response_url`` must start with this (it is where the reply is posted).
    response_url_prefix: str = "https://hooks.slack.com/"
    #: Requests older than this (X-Slack-Request-Timestamp) are refused as replays.
    max_age_seconds: float = Field(300.0, gt=0, le=3600)
    events: list[Literal["created", "finished"]] = Field(
        default_factory=lambda: ["created", "finished"]
    )


class TeamsConfig(Strict):
    """Microsoft Teams: an incoming-webhook (workflow) card with a link to the page."""

    webhook_url: str = Field(pattern=r"^https?://")
    events: list[Literal["created", "finished"]] = Field(
        default_factory=lambda: ["created", "finished"]
    )


class NotificationsConfig(Strict):
    """Who hears about held statements, and how hard dbgate tries (docs/web.md)."""

    webhooks: list[WebhookTargetConfig] = Field(default_factory=list)
    slack: SlackConfig | None = None
    teams: TeamsConfig | None = None
    #: Each delivery attempt gives up after this long.
    timeout_seconds: float = Field(5.0, gt=0, le=120)
    #: Attempts per message before it is marked failed (shown on the page and logged).
    max_attempts: int = Field(5, ge=1, le=20)
    #: Wait before the second attempt; doubled each time, up to ``max_backoff_seconds``.
    backoff_seconds: float = Field(1.0, gt=0)
    max_backoff_seconds: float = Field(60.0, gt=0)
    #: Messages sent at once (the rest wait their turn; the hold never does).
    concurrency: int = Field(8, ge=1, le=100)
    #: How often to look for requests whose notification was missed (a replica that
    #: stopped, a lost NOTIFY), and how far back.
    catch_up_seconds: float = Field(30.0, gt=0)
    catch_up_window_seconds: float = Field(3600.0, gt=0)

    @model_validator(mode="after")
    def _unique_webhooks(self) -> NotificationsConfig:
        names = [w.name for w in self.webhooks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"notifications.webhooks: name {dup[0]!r} is used twice")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.webhooks) or self.slack is not None or self.teams is not None
