"""One validated configuration for the whole gateway.

Loaded from YAML, then overridden by environment variables of the form
``DBGATE__SECTION__KEY`` (double underscore separates levels), then by CLI flags.
Validation is pydantic's; every problem is reported at once, each naming the file,
the line and the key, with "did you mean" for a misspelt key (docs/config.md).
Secrets stay out of the file: any string may reference an environment variable as
``${ENV_NAME}`` or a file's content as ``${file:/run/secrets/name}`` (one trailing
newline removed; a relative path is relative to the config file's directory).
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)


class ConfigError(Exception):
    """Configuration problems, phrased for the operator who has to fix them.

    ``problems`` holds one line per problem (``file:line: key: what is wrong``);
    ``str()`` joins them with newlines.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = problems or [message]
        super().__init__(message)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def split_hostport(value: str, default_port: int) -> tuple[str, int]:
    if value.startswith("["):  # [::1]:6432
        host, _, rest = value[1:].partition("]")
        port = rest.lstrip(":")
        return host, int(port) if port else default_port
    if value.count(":") == 1:
        host, port = value.split(":")
        return host or "127.0.0.1", int(port)
    return value, default_port


class TLSConfig(_Strict):
    """Server-side TLS for clients. Without it, SSLRequest is answered with 'N'."""

    cert_file: Path
    key_file: Path


class UpstreamConfig(_Strict):
    """The real PostgreSQL server. Agents never see these credentials."""

    host: str = "127.0.0.1"  # a hostname/IP, or an absolute Unix-socket directory
    port: int = Field(5432, ge=1, le=65535)
    user: str = "postgres"
    password: str | None = None
    database: str | None = None  # None: the database the client asks for
    # libpq's meanings: prefer/require encrypt without verifying; verify-ca checks the
    # certificate chain against sslrootcert; verify-full also checks the host name.
    sslmode: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] = "disable"
    sslrootcert: Path | None = None  # CA certificates (PEM) for verify-ca/verify-full
    connect_timeout: float = Field(10.0, gt=0)
    #: Server connections dbgate opens at once (PgBouncer's max_db_connections),
    #: for all workers together. Never more than the server accepts from ordinary
    #: roles (max_connections less its reserved slots, read from the server); null:
    #: that, less a margin for other clients. Clients above it wait in a queue
    #: instead of getting the server's "too many clients".
    max_server_conn: int | None = Field(None, ge=1)
    #: Seconds a client waits in that queue before dbgate refuses it with 53300.
    server_wait_timeout: float = Field(60.0, gt=0)
    #: Read the server's connection limits (on the first session, then every minute)
    #: and keep max_server_conn below them. Off behind a connection pooler, whose
    #: client limit is not the server's max_connections.
    read_server_limits: bool = True
    #: (index, count) of this process among ``--workers`` (set by
    #: dbgate.workers_process.worker_config, never by the operator).
    _seat: tuple[int, int] = PrivateAttr(default=(0, 1))

    @property
    def seat(self) -> tuple[int, int]:
        """(index, count) of this process among the workers: its share of the server
        connections is computed from it."""
        return self._seat

    @model_validator(mode="after")
    def _verification_needs_a_root(self) -> UpstreamConfig:
        if self.sslmode.startswith("verify-"):
            if self.sslrootcert is None:
                raise ValueError(f"upstream.sslmode {self.sslmode} needs upstream.sslrootcert")
            if not self.sslrootcert.is_file():
                raise ValueError(f"upstream.sslrootcert {self.sslrootcert} is not a file")
        if self.sslmode not in ("disable", "prefer") and self.host.startswith("/"):
            raise ValueError(
                f"upstream.sslmode {self.sslmode}: TLS does not apply to a Unix-socket upstream"
            )
        return self


class IdentityConfig(_Strict):
    """A dbgate credential handed to one agent."""

    name: str = Field(min_length=1)
    # Either a clear password (hashed at load time) or a stored SCRAM-SHA-256 verifier
    # ("SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>", as in pg_authid).
    password: str | None = None
    scram_verifier: str | None = None
    upstream_user: str | None = None  # defaults to upstream.user
    upstream_password: str | None = None
    groups: list[str] = Field(default_factory=list)
    databases: list[str] = Field(default_factory=lambda: ["*"])
    #: Approver accounts of the humans who run this agent: like the identity itself,
    #: they may never approve its requests.
    owners: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_secret(self) -> IdentityConfig:
        if bool(self.password) == bool(self.scram_verifier):
            raise ValueError(
                f"identity {self.name!r}: set exactly one of password or scram_verifier"
            )
        return self


class LimitsConfig(_Strict):
    """What one client, and all of them together, may make dbgate hold (docs/config.md)."""

    #: After login: a larger message ends the session with 54000.
    max_message_size: int = Field(64 * 1024 * 1024, ge=1024)
    #: Before login: a larger message (SASL, password) ends the connection with 54000.
    #: A SCRAM message is a few hundred bytes.
    max_login_message_size: int = Field(16 * 1024, ge=512, le=1024 * 1024)
    #: Logins (TLS + authentication) in progress at once; later connections are not
    #: read from until one finishes (their startup_timeout runs meanwhile).
    max_logins: int = Field(100, ge=1)
    startup_timeout: float = Field(15.0, gt=0)  # seconds a client has to finish authentication
    #: Client sessions at once (PgBouncer's max_client_conn); more are refused with 53300.
    max_client_conn: int = Field(1000, ge=1)
    #: Bytes of long client messages held at once across all sessions; beyond it,
    #: reading pauses (backpressure) until room is free. At least max_message_size.
    memory_budget: int = Field(256 * 1024 * 1024, ge=1024 * 1024)
    #: The earlier name of max_client_conn, still accepted.
    max_connections: int | None = Field(None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _old_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("max_connections") is not None:
            if "max_client_conn" in data:
                raise ValueError(
                    "limits.max_connections is the old name of limits.max_client_conn: "
                    "set only max_client_conn"
                )
            data = {**data, "max_client_conn": data["max_connections"]}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> LimitsConfig:
        if self.memory_budget < self.max_message_size:
            raise ValueError(
                f"limits.memory_budget ({self.memory_budget}) must be at least "
                f"limits.max_message_size ({self.max_message_size}): one message "
                "must fit in it"
            )
        return self


class ClassifyConfig(_Strict):
    """Where statements are classified (docs/config.md, ``classify``): inline on the
    event loop when cheap, else in worker processes with a time budget."""

    #: Worker processes (per dbgate process); null: min(2, cores); 0: everything inline.
    workers: int | None = Field(None, ge=0, le=64)
    #: Estimated cost (µs) under which a statement is classified inline.
    inline_budget_us: int = Field(2000, ge=0, le=1_000_000)
    #: Seconds a statement may wait for its classification, queue included; then it
    #: is held as opaque.
    time_budget_seconds: float = Field(2.0, gt=0, le=3600)
    #: Statements that may wait for a busy worker; more are held as opaque at once.
    queue_size: int = Field(64, ge=0, le=100_000)
    #: Address-space limit of each worker in MiB (0: none). A worker past it stops,
    #: and the statement it was classifying is refused.
    worker_memory_mb: int = Field(2048, ge=0)
    #: How workers yield the CPU to the sessions: "idle" (Linux SCHED_IDLE: they run
    #: only on CPU nothing else wants) or "nice" (nice +10: a share under load).
    worker_scheduling: Literal["idle", "nice"] = "idle"

    @field_validator("worker_memory_mb")
    @classmethod
    def _room_to_start(cls, v: int) -> int:
        if 0 < v < 256:
            raise ValueError("a worker needs at least 256 MiB to start (0: no limit)")
        return v


class LoggingConfig(_Strict):
    """Operator logs (docs/operations.md). The level is the top-level ``log_level``."""

    #: ``auto``: text on a terminal, JSON lines otherwise (containers, journald, files).
    format: Literal["auto", "text", "json"] = "auto"
    #: Append to this file (reopened when rotated away); ``null``: standard error.
    file: Path | None = None
    #: One INFO line per interval with sessions, statements by decision, refusals,
    #: holds and errors; 0 turns it off.
    summary_interval_seconds: float = Field(60.0, ge=0)
    #: Records waiting for a slow destination before new ones are dropped (and counted).
    queue_size: int = Field(10_000, ge=100)


class MetricsConfig(_Strict):
    """Prometheus metrics at ``/metrics`` on the web port (docs/operations.md)."""

    enabled: bool = True
    #: Directory for prometheus-client's per-process files when running several
    #: worker processes; emptied at start. ``null``: a private temporary directory.
    multiprocess_dir: Path | None = None
    #: How often each process moves its hot-path counts into the shared values.
    flush_interval_seconds: float = Field(1.0, gt=0, le=60)


class StateConfig(_Strict):
    """dbgate's own state database (approvals, audit, budgets), shared by replicas.

    Its role needs CREATE on the database for the first start (dbgate creates and
    migrates schema ``dbgate``); agents must never be able to reach it.
    """

    dsn: str = Field(min_length=1)  # postgresql://user:password@host:port/dbname
    pool_min: int = Field(1, ge=0)
    pool_max: int = Field(10, ge=1)


class AuditConfig(_Strict):
    """The tamper-evident audit trail, written to the state database (docs/audit.md)."""

    enabled: bool = True  # needs `state`; without a state database nothing is recorded
    #: The state database is unreachable: "refuse" (statements are refused until it
    #: returns) or "buffer" (records go to a bounded spill file, replayed in order).
    on_failure: Literal["refuse", "buffer"] = "refuse"
    spill_dir: Path | None = None  # required by "buffer"; one file per writer process
    spill_max_bytes: int = Field(256 * 1024 * 1024, ge=1024 * 1024)
    #: Records waiting to be written before new statements wait for room (backpressure).
    queue_size: int = Field(10_000, ge=100)
    queue_bytes: int = Field(64 * 1024 * 1024, ge=1024 * 1024)
    batch_size: int = Field(2_000, ge=1, le=100_000)  # records per COPY
    #: Seconds an ordinary record waits after the previous write began, for others to
    #: share its commit (0: written at once). Durable records never wait.
    batch_delay: float = Field(0.05, ge=0, le=10)
    #: How long a held/denied/approved statement waits for its record to be committed.
    durable_timeout: float = Field(5.0, gt=0)
    write_timeout: float = Field(10.0, gt=0)  # one COPY + COMMIT
    connect_timeout: float = Field(5.0, gt=0)
    retry_max_seconds: float = Field(5.0, gt=0)  # reconnection back-off ceiling
    stop_timeout: float = Field(10.0, ge=0)  # drain time at shutdown
    head_log_seconds: float = Field(60.0, gt=0)  # chain head to the operator log
    head_file: Path | None = None  # also append each logged head to this file (JSON lines)
    replica: str | None = None  # name of this replica in records; default: the host name
    #: Key for hashing raw parameter values (h:...). Without one, a random key per
    #: process: equal values still match within a process, not across restarts.
    param_key: str | None = None
    max_statement_chars: int = Field(262_144, ge=1024)  # longer statements are truncated
    max_text_chars: int = Field(8_192, ge=256)  # other text fields

    @model_validator(mode="after")
    def _buffer_needs_a_place(self) -> AuditConfig:
        if self.on_failure == "buffer" and self.spill_dir is None:
            raise ValueError("audit.on_failure buffer needs audit.spill_dir")
        return self


class WebConfig(_Strict):
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


class WebhookTargetConfig(_Strict):
    """A generic webhook: JSON POST signed with ``X-Dbgate-Signature`` (docs/web.md)."""

    name: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    url: str = Field(pattern=r"^https?://")
    #: HMAC-SHA256 key shared with the receiver (use ``${ENV}``).
    secret: str = Field(min_length=16)
    #: ``created`` (a request waits), ``finished`` (approved, rejected, expired, ...).
    events: list[Literal["created", "finished"]] = Field(
        default_factory=lambda: ["created", "finished"]
    )


class SlackConfig(_Strict):
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


class TeamsConfig(_Strict):
    """Microsoft Teams: an incoming-webhook (workflow) card with a link to the page."""

    webhook_url: str = Field(pattern=r"^https?://")
    events: list[Literal["created", "finished"]] = Field(
        default_factory=lambda: ["created", "finished"]
    )


class NotificationsConfig(_Strict):
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


class ApprovalsConfig(_Strict):
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


class PiiKeyConfig(_Strict):
    """One tokenization key (see docs/pii.md, "Keys and rotation")."""

    id: str = Field(min_length=1)
    secret: str | None = Field(None, repr=False)  # base64:... or hex:...; may be ${ENV}
    secret_env: str | None = None  # read the secret from this environment variable
    secret_file: Path | None = None  # read the secret from this file
    fingerprint: str | None = None  # as printed by `dbgate pii keygen`: guards against a wrong key
    retire_after: datetime | None = None  # earlier keys only: resolve-only until then


class PiiConfig(_Strict):
    """PII tokenization of everything the agent receives (docs/pii.md)."""

    enabled: bool = True
    catalog: Path | None = None  # None: the shipped rules/pii.yaml
    # hashed: keyed BLAKE2b, fastest, resolves tokens this process issued;
    # reversible: AES-SIV, resolves anywhere with the key (dbgate detokenize)
    mode: Literal["hashed", "reversible"] = "hashed"
    keys: list[PiiKeyConfig] = Field(default_factory=list)  # empty: DBGATE_PII_KEY
    # Output whose provenance lineage cannot decide: tokenize it whole, hold the
    # statement for approval, or run the content detectors over it.
    unknown: Literal["tokenize", "hold", "detect"] = "tokenize"
    detect_clean_text: bool = False  # also run the detectors over text that lineage calls clean
    raise_messages: Literal["detect", "tokenize"] = "detect"
    notification_payloads: Literal["tokenize", "detect", "pass"] = "tokenize"
    notification_channels: dict[str, Literal["tokenize", "detect", "pass"]] = Field(
        default_factory=dict
    )
    exempt_identities: list[str] = Field(default_factory=list)  # see raw values (recorded)
    exempt_groups: list[str] = Field(default_factory=list)
    max_reversible_bytes: int = Field(4096, ge=16)  # longer values get hashed tokens
    token_cache_entries: int = Field(200_000, ge=0)  # hashed mode: tokens that resolve

    @model_validator(mode="after")
    def _unique_key_ids(self) -> PiiConfig:
        ids = [k.id for k in self.keys]
        if len(set(ids)) != len(ids):
            raise ValueError(f"pii.keys: key ids must be unique, got {ids}")
        return self


class Config(_Strict):
    listen: str = "127.0.0.1:6432"
    tls: TLSConfig | None = None
    upstream: UpstreamConfig = UpstreamConfig()
    identities: list[IdentityConfig] = Field(default_factory=list)
    limits: LimitsConfig = LimitsConfig()
    classify: ClassifyConfig = ClassifyConfig()
    state: StateConfig | None = None  # None: no approvals or audit (holds are refused)
    web: WebConfig | None = None
    audit: AuditConfig = AuditConfig()
    approvals: ApprovalsConfig = ApprovalsConfig()
    pii: PiiConfig = PiiConfig()
    notifications: NotificationsConfig = NotificationsConfig()
    rules_dir: Path | None = None  # None: the shipped default pack
    # "enforce": classify every statement and apply the rules (the default).
    # "off": relay only (wire-compatibility testing); logged loudly at startup.
    policy: Literal["enforce", "off"] = "enforce"
    shutdown_grace_seconds: float = Field(30.0, ge=0)
    # `dbgate serve` refuses to start when an identity reaches PostgreSQL as a role that
    # is a superuser, has BYPASSRLS or CREATEROLE, or may SET ROLE to one (see
    # dbgate.preflight); true starts anyway and logs a warning per such role.
    allow_privileged_upstream: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, v: str) -> str:
        host, port = split_hostport(v, 6432)
        if not host or not (0 <= port <= 65535):
            raise ValueError(f"listen must be HOST:PORT, got {v!r}")
        return v

    @model_validator(mode="after")
    def _unique_identities(self) -> Config:
        seen: set[str] = set()
        for ident in self.identities:
            if ident.name in seen:
                raise ValueError(f"identity {ident.name!r} is defined twice")
            seen.add(ident.name)
        return self

    def owners(self) -> dict[str, tuple[str, ...]]:
        """identity name -> the approver names that may not approve its requests."""
        return {i.name: tuple(i.owners) for i in self.identities if i.owners}

    @property
    def listen_host(self) -> str:
        return split_hostport(self.listen, 6432)[0]

    @property
    def listen_port(self) -> int:
        return split_hostport(self.listen, 6432)[1]

    def identity(self, name: str) -> IdentityConfig | None:
        for ident in self.identities:
            if ident.name == name:
                return ident
        return None


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_FILE_REF = re.compile(r"\$\{file:([^}]+)\}")
#: A secret file is small; a larger one is almost certainly the wrong file.
MAX_SECRET_FILE_BYTES = 64 * 1024
#: Keys whose values are never echoed in an error message.
_SECRET_WORDS = ("password", "secret", "key", "token", "dsn", "verifier")

Loc = tuple[str | int, ...]


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _read_secret_file(ref: str, base_dir: Path) -> str:
    path = Path(ref).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    try:
        size = path.stat().st_size
        if size > MAX_SECRET_FILE_BYTES:
            raise ValueError(
                f"secret file {path} is {size} bytes (at most {MAX_SECRET_FILE_BYTES}): "
                "is it the right file?"
            )
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"cannot read secret file {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"secret file {path} is not UTF-8 text") from e
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise ValueError(f"secret file {path} is empty")
    return text


def _expand_refs(
    value: Any,
    loc: Loc,
    problems: list[tuple[Loc, str]],
    environ: typing.Mapping[str, str],
    base_dir: Path,
) -> Any:
    """``${NAME}`` from the environment, then ``${file:PATH}``; problems are collected."""
    if isinstance(value, str):

        def env(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in environ:
                problems.append((loc, f"environment variable {name} is not set"))
                return ""
            return environ[name]

        def file(m: re.Match[str]) -> str:
            try:
                return _read_secret_file(m.group(1), base_dir)
            except ValueError as e:
                problems.append((loc, str(e)))
                return ""

        # One pass each: a secret's own text is never expanded again.
        return _FILE_REF.sub(file, _ENV_REF.sub(env, value))
    if isinstance(value, dict):
        return {
            k: _expand_refs(v, (*loc, str(k)), problems, environ, base_dir)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            _expand_refs(v, (*loc, i), problems, environ, base_dir) for i, v in enumerate(value)
        ]
    return value


def _apply_env_overrides(data: dict[str, Any], environ: typing.Mapping[str, str]) -> dict[str, Any]:
    for key, value in environ.items():
        if not key.startswith("DBGATE__"):
            continue
        path = [p.lower() for p in key[len("DBGATE__") :].split("__") if p]
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {part} is not a section")
        node[path[-1]] = value
    return data


def _line_of(text: str, loc: Loc) -> int | None:
    """Line of ``loc`` in the YAML text, or of its deepest ancestor that is there."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    found: int | None = None
    for i, part in enumerate(loc):
        if node is None:
            break
        nxt = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == part:
                    nxt = k if i == len(loc) - 1 else v
                    found = k.start_mark.line + 1
                    break
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            nxt = node.value[part]
            found = nxt.start_mark.line + 1
        node = nxt
    return found


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The config section model inside ``X``, ``X | None`` or ``list[X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) in (
        typing.Union,
        list,
    ):
        for arg in typing.get_args(annotation):
            model = _model_of(arg)
            if model is not None:
                return model
    return None


def _section_keys(loc: Loc) -> list[str]:
    """The keys allowed in the section at ``loc`` (for "did you mean")."""
    model: type[BaseModel] | None = Config
    for part in loc:
        if model is None:
            return []
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        model = _model_of(field.annotation) if field is not None else None
    return list(model.model_fields) if model is not None else []


def _is_secret(loc: Loc) -> bool:
    return any(w in str(p).lower() for p in loc for w in _SECRET_WORDS)


def _explain(err: Any) -> str:
    loc: Loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _section_keys(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
        if close:
            return f"unknown key; did you mean {close[0]}?"
        return f"unknown key; this section takes: {', '.join(allowed)}"
    if kind == "missing":
        return "required key is missing"
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    given = err.get("input")
    if isinstance(given, str | int | float | bool) and not _is_secret(loc):
        shown = repr(given) if len(repr(given)) <= 60 else repr(given)[:57] + "..."
        msg += f" (got {shown})"
    return msg


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: typing.Mapping[str, str] | None = None,
) -> Config:
    """Read, expand, override and validate. Raises ConfigError listing every problem.

    ``environ`` (default ``os.environ``) supplies both ``DBGATE__…`` overrides and
    ``${NAME}`` references.
    """
    text = ""
    data: dict[str, Any] = {}
    where = "config"
    base_dir = Path.cwd()
    env = os.environ if environ is None else environ
    if path is not None:
        where = str(path)
        base_dir = Path(path).expanduser().absolute().parent
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"{where}: cannot read: {e.strerror}") from e
        except UnicodeDecodeError as e:
            raise ConfigError(f"{where}: not a UTF-8 text file") from e
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{where}{line}: invalid YAML: {getattr(e, 'problem', e)}") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{where}: the top level must be a mapping")
        data = loaded
    data = _apply_env_overrides(data, env)
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value

    def located(loc: Loc, message: str) -> tuple[int, str]:
        line = _line_of(text, loc) if text else None
        prefix = f"{where}:{line}" if line else where
        return line or 0, f"{prefix}: {_dotted(loc)}: {message}"

    ref_problems: list[tuple[Loc, str]] = []
    data = _expand_refs(data, (), ref_problems, env, base_dir)
    found = [located(loc, msg) for loc, msg in ref_problems]
    try:
        config = Config.model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            loc = tuple(err["loc"])
            # A reference that could not be resolved was replaced by "": the section
            # around it may now fail too, which would only repeat the same problem.
            if any(bad[: len(loc)] == loc for bad, _ in ref_problems):
                continue
            found.append(located(loc, _explain(err)))
    if found:
        problems = [p for _, p in sorted(found, key=lambda f: f[0])]
        raise ConfigError("\n".join(problems), problems)
    return config
