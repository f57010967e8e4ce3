"""dbgate's own state database, and the audit trail written to it (docs/audit.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import Field, model_validator

from dbgate.config.base import Strict


class StateConfig(Strict):
    """dbgate's own state database (approvals, audit, budgets), shared by replicas.

    Its role needs CREATE on the database for the first start (dbgate creates and
    migrates schema ``dbgate``); agents must never be able to reach it.
    """

    dsn: str = Field(min_length=1)  # postgresql://user:password@host:port/dbname
    pool_min: int = Field(1, ge=0)
    pool_max: int = Field(10, ge=1)

    def is_database(self, port: int, database: str) -> bool:
        """Whether ``database`` on the upstream server (listening on ``port``) may be
        this state database: same name, same port (host names have aliases, so they
        are not compared). An agent there could read the audit trail — the literals of
        every statement, the values other sessions sent — and approval secrets."""
        try:
            parts = urlsplit(self.dsn)
            query = parse_qs(parts.query)
            name = unquote(parts.path.lstrip("/")) or query.get("dbname", [""])[0]
            state_port = parts.port or int(query.get("port", ["5432"])[0])
        except ValueError:
            return False
        return bool(name) and name == database and state_port == port


class AuditConfig(Strict):
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
