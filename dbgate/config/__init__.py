"""One validated configuration for the whole gateway.

Loaded from YAML, then overridden by environment variables of the form
``DBGATE__SECTION__KEY`` (double underscore separates levels), then by CLI flags.
Validation is pydantic's; every problem is reported at once, each naming the file,
the line and the key, with "did you mean" for a misspelt key (docs/config.md).
Secrets stay out of the file: any string may reference an environment variable as
``${ENV_NAME}`` or a file's content as ``${file:/run/secrets/name}`` (one trailing
newline removed; a relative path is relative to the config file's directory).

One module per job. The section models are grouped by the part of dbgate they
configure; the loader is the only module that knows YAML, the environment or how a
problem is phrased, and :mod:`.refs` the only one that expands ``${...}``:

==============  ==================================================================
``base``        what every section shares: :class:`~dbgate.config.base.Strict`
                (unknown keys refused, frozen), :data:`Loc` (a key path),
                :func:`split_hostport`, :class:`TLSConfig`
``proxy``       the relay: :class:`UpstreamConfig`, :class:`IdentityConfig`,
                :class:`LimitsConfig`, :class:`ClassifyConfig`
``state``       the state database and the audit trail: :class:`StateConfig`,
                :class:`AuditConfig`
``approvals``   holds and approvers: :class:`ApprovalsConfig`, :class:`WebConfig`,
                :class:`NotificationsConfig` and its targets
                (:class:`WebhookTargetConfig`, :class:`SlackConfig`,
                :class:`TeamsConfig`)
``pii``         :class:`PiiConfig`, :class:`PiiKeyConfig`
``operations``  :class:`LoggingConfig`, :class:`MetricsConfig`
``root``        :class:`Config`: the top level, every section in its place
``refs``        ``${NAME}`` and ``${file:PATH}`` references,
                :data:`MAX_SECRET_FILE_BYTES`
``loader``      :func:`load_config` and :class:`ConfigError`: reading the YAML,
                ``DBGATE__…`` overrides, validation, and each problem as
                ``file:line: key: what is wrong``
==============  ==================================================================

Import from ``dbgate.config``; the modules are how the code is laid out, not API.
"""

from __future__ import annotations

from dbgate.config.approvals import (
    ApprovalsConfig,
    NotificationsConfig,
    SlackConfig,
    TeamsConfig,
    WebConfig,
    WebhookTargetConfig,
)
from dbgate.config.base import Loc, TLSConfig, split_hostport
from dbgate.config.loader import ConfigError, load_config
from dbgate.config.operations import LoggingConfig, MetricsConfig
from dbgate.config.pii import PiiConfig, PiiKeyConfig
from dbgate.config.proxy import ClassifyConfig, IdentityConfig, LimitsConfig, UpstreamConfig
from dbgate.config.refs import MAX_SECRET_FILE_BYTES
from dbgate.config.root import Config
from dbgate.config.state import AuditConfig, StateConfig

__all__ = [
    "MAX_SECRET_FILE_BYTES",
    "ApprovalsConfig",
    "AuditConfig",
    "ClassifyConfig",
    "Config",
    "ConfigError",
    "IdentityConfig",
    "LimitsConfig",
    "Loc",
    "LoggingConfig",
    "MetricsConfig",
    "NotificationsConfig",
    "PiiConfig",
    "PiiKeyConfig",
    "SlackConfig",
    "StateConfig",
    "TLSConfig",
    "TeamsConfig",
    "UpstreamConfig",
    "WebConfig",
    "WebhookTargetConfig",
    "load_config",
    "split_hostport",
]
