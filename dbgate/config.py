"""One validated configuration for the whole gateway.

Loaded from YAML, then overridden by environment variables of the form
``DBGATE__SECTION__KEY`` (double underscore separates levels), then by CLI flags.
Validation is pydantic's; errors name the offending key and, for YAML files, the line.
Secrets may be written as ``${ENV_NAME}`` so that config files can be committed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(Exception):
    """A configuration problem, phrased for the operator who has to fix it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _split_hostport(value: str, default_port: int) -> tuple[str, int]:
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
    max_message_size: int = Field(64 * 1024 * 1024, ge=1024)  # larger messages are refused
    startup_timeout: float = Field(15.0, gt=0)  # seconds a client has to finish authentication
    max_connections: int = Field(1000, ge=1)


class StateConfig(_Strict):
    """dbgate's own state database (approvals, audit, budgets), shared by replicas.

    Its role needs CREATE on the database for the first start (dbgate creates and
    migrates schema ``dbgate``); agents must never be able to reach it.
    """

    dsn: str = Field(min_length=1)  # postgresql://user:password@host:port/dbname
    pool_min: int = Field(1, ge=0)
    pool_max: int = Field(10, ge=1)


class WebConfig(_Strict):
    """The approvers' web page and the HTTP API."""

    listen: str = "127.0.0.1:8080"
    #: How approvers reach the page (used in notices and notifications); default
    #: http://<listen>.
    public_url: str | None = None


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


class Config(_Strict):
    listen: str = "127.0.0.1:6432"
    tls: TLSConfig | None = None
    upstream: UpstreamConfig = UpstreamConfig()
    identities: list[IdentityConfig] = Field(default_factory=list)
    limits: LimitsConfig = LimitsConfig()
    state: StateConfig | None = None  # None: no approvals or audit (holds are refused)
    web: WebConfig | None = None
    approvals: ApprovalsConfig = ApprovalsConfig()
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

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, v: str) -> str:
        host, port = _split_hostport(v, 6432)
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
        return _split_hostport(self.listen, 6432)[0]

    @property
    def listen_port(self) -> int:
        return _split_hostport(self.listen, 6432)[1]

    def identity(self, name: str) -> IdentityConfig | None:
        for ident in self.identities:
            if ident.name == name:
                return ident
        return None


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_env(value: Any, where: str) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in os.environ:
                raise ConfigError(f"{where}: environment variable {name} is not set")
            return os.environ[name]

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _apply_env_overrides(data: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
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


def _line_of(text: str, loc: tuple[Any, ...]) -> int | None:
    """Best-effort line number of a validation error location in the YAML text."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    for part in loc:
        if node is None:
            return None
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if k.value == part:
                    nxt = v if part != loc[-1] else k
                    break
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            node = node.value[part] if part < len(node.value) else None
        else:
            break
    return node.start_mark.line + 1 if node is not None else None


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Config:
    """Read, expand, override and validate. Raises ConfigError with file:line context."""
    text = ""
    data: dict[str, Any] = {}
    where = "config"
    if path is not None:
        where = str(path)
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"{where}: cannot read: {e.strerror}") from e
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
    data = _apply_env_overrides(data, dict(os.environ if environ is None else environ))
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    data = _expand_env(data, where)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = tuple(err["loc"])
            dotted = ".".join(str(p) for p in loc) or "(top level)"
            line = _line_of(text, loc) if text else None
            prefix = f"{where}:{line}" if line else where
            lines.append(f"{prefix}: {dotted}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from e
