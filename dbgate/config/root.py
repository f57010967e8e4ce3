"""The top level of the config: every section in its place, and the top-level keys."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from dbgate.config.approvals import ApprovalsConfig, NotificationsConfig, WebConfig
from dbgate.config.base import Strict, TLSConfig, split_hostport
from dbgate.config.operations import LoggingConfig, MetricsConfig
from dbgate.config.pii import PiiConfig
from dbgate.config.proxy import ClassifyConfig, IdentityConfig, LimitsConfig, UpstreamConfig
from dbgate.config.state import AuditConfig, StateConfig


class Config(Strict):
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
