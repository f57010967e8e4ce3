"""The sections of the relay itself: the upstream server, the identities agents log
in as, what clients may make dbgate hold, and where statements are classified."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from dbgate.config.base import Strict


class UpstreamConfig(Strict):
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


class IdentityConfig(Strict):
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


class LimitsConfig(Strict):
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


class ClassifyConfig(Strict):
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
