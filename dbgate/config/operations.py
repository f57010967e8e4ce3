"""What the operator watches: logs and Prometheus metrics (docs/operations.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from dbgate.config.base import Strict


class LoggingConfig(Strict):
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


class MetricsConfig(Strict):
    """Prometheus metrics at ``/metrics`` on the web port (docs/operations.md)."""

    enabled: bool = True
    #: Directory for prometheus-client's per-process files when running several
    #: worker processes; emptied at start. ``null``: a private temporary directory.
    multiprocess_dir: Path | None = None
    #: How often each process moves its hot-path counts into the shared values.
    flush_interval_seconds: float = Field(1.0, gt=0, le=60)
