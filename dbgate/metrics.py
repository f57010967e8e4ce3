"""Prometheus metrics of one dbgate process, cheap enough for the relay's hot path.

The rest of dbgate calls plain functions (``metrics.statement("read", "allow")``,
``metrics.bytes_from_client(n)``) and never touches prometheus-client itself.

Why two layers: a prometheus-client counter increment takes a lock and, in
multiprocess mode, a ``getpid`` and an mmap write — about 0.5 µs in one process and
over 1 µs with workers on this machine, per call. Per statement, per relayed chunk
and per tokenized value that is too much. So the hot-path functions only add to
plain dictionaries and integers owned by the event-loop thread (about 0.1 to 0.3 µs,
measured by ``bench/bench_metrics.py``), and :func:`flush` moves the accumulated
deltas into prometheus-client's values: before every scrape, and every second from
a :class:`Flusher` (needed with workers, where the scrape happens in another
process). A scrape therefore sees counts at most one flush interval old.

Rare events (sessions opening, holds ending, audit queue readings) go straight to
prometheus-client.

Multiprocess mode (``dbgate serve --workers N``): the parent calls
:func:`prepare_multiprocess_dir` before it starts workers, each worker calls
:func:`init` with the same directory, and the process that serves ``/metrics`` reads
every worker's files (prometheus-client's ``MultiProcessCollector``). When a worker
dies the parent calls :func:`worker_exited` so its live gauges stop counting.

Thread safety: the hot-path functions are meant for the event-loop thread. Calls
from other threads are safe for Python (no crash) but may lose an increment in a
race with :func:`flush`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("dbgate.metrics")

__all__ = [
    "HOLD_BUCKETS",
    "Flusher",
    "Snapshot",
    "approvals_pending",
    "audit_queue",
    "budget_hit",
    "bytes_from_client",
    "bytes_from_upstream",
    "client_wait_finished",
    "client_wait_started",
    "connection_refused",
    "exposition",
    "flush",
    "hold_finished",
    "hold_started",
    "init",
    "log_records_dropped",
    "prepare_multiprocess_dir",
    "session_closed",
    "session_opened",
    "snapshot",
    "statement",
    "tokenized",
    "upstream_error",
    "worker_exited",
]

#: Hold durations in seconds: approvals take seconds to an hour.
HOLD_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
#: Time a client waits for a server connection (max_server_conn queue).
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30)

ENV_MULTIPROC = "PROMETHEUS_MULTIPROC_DIR"

# ---------------------------------------------------------------------------
# Hot-path tallies: plain containers, mutated in place (never rebound), so the
# functions below close over them with no global lookup of a replaced object.
# ---------------------------------------------------------------------------
_statements: defaultdict[tuple[str, str], int] = defaultdict(int)
_tokenized: defaultdict[str, int] = defaultdict(int)
_relay = [0, 0]  # bytes from clients, bytes from upstreams
_log_dropped = [0]


def statement(category: str, decision: str) -> None:
    """One statement decided: ``category`` (the one that decided) and ``allow|hold|deny``."""
    _statements[category, decision] += 1


def bytes_from_client(n: int) -> None:
    """``n`` bytes read from an agent and relayed upstream."""
    _relay[0] += n


def bytes_from_upstream(n: int) -> None:
    """``n`` bytes read from PostgreSQL and relayed to an agent."""
    _relay[1] += n


def tokenized(kind: str, n: int = 1) -> None:
    """``n`` values of PII ``kind`` (email, phone, …) replaced by tokens."""
    _tokenized[kind] += n


def log_records_dropped(n: int = 1) -> None:
    """Log records dropped because the log destination could not keep up or failed."""
    _log_dropped[0] += n


# ---------------------------------------------------------------------------
# The prometheus side, built by init().
# ---------------------------------------------------------------------------


@dataclass
class _Families:
    registry: Any
    sessions: Any
    sessions_opened: Any
    sessions_closed: Any
    statements: Any
    relay_bytes: Any
    tokenized: Any
    holds_waiting: Any
    hold_seconds: Any
    approvals_pending: Any
    budget_hits: Any
    audit_queue_depth: Any
    audit_lag: Any
    upstream_errors: Any
    connections_refused: Any
    clients_waiting: Any
    client_wait_seconds: Any
    log_dropped: Any
    build_info: Any


@dataclass
class Snapshot:
    """Cumulative totals of this process (for the periodic log summary)."""

    sessions_opened: int = 0
    sessions_closed: int = 0
    statements: dict[str, int] = field(default_factory=dict)  # by decision
    holds_finished: dict[str, int] = field(default_factory=dict)  # by outcome
    upstream_errors: int = 0
    connections_refused: int = 0
    log_records_dropped: int = 0
    sessions_open: int = 0
    holds_waiting: int = 0


_state: dict[str, Any] = {"families": None, "dir": None}
_totals = Snapshot()


def _families() -> _Families:
    fam = _state["families"]
    if fam is None:
        init()
        fam = _state["families"]
    return fam


def prepare_multiprocess_dir(path: str | Path) -> Path:
    """Parent process, before starting workers: an empty directory for their files.

    Files left by an earlier run would be added to this run's counters, so the
    directory is emptied (only prometheus-client's ``*.db`` files are removed; the
    directory must belong to dbgate). Sets ``PROMETHEUS_MULTIPROC_DIR`` so that
    workers started afterwards inherit it.
    """
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    for f in directory.glob("*.db"):
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
    os.environ[ENV_MULTIPROC] = str(directory)
    return directory


def init(*, multiprocess_dir: str | Path | None = None, version: str | None = None) -> None:
    """Build this process's metric families (again: tallies and totals are reset).

    Call once per process before serving — in each worker after it starts. With
    ``multiprocess_dir`` (or ``PROMETHEUS_MULTIPROC_DIR`` set) values are written to
    files in that directory so that any process can expose the sum of all workers.
    """
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

    directory = multiprocess_dir or os.environ.get(ENV_MULTIPROC) or None
    if directory is not None:
        os.environ[ENV_MULTIPROC] = str(directory)
        # Chosen per value at creation: set it before any family below exists, even
        # when prometheus_client was imported before the variable was set.
        values.ValueClass = values.MultiProcessValue()
    else:
        values.ValueClass = values.MutexValue
    _state["dir"] = Path(directory) if directory is not None else None
    registry = CollectorRegistry(auto_describe=True)
    if directory is None:
        from prometheus_client import PlatformCollector, ProcessCollector

        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)

    def gauge(name: str, doc: str, labels: Iterable[str] = (), mode: str = "livesum") -> Any:
        return Gauge(name, doc, list(labels), registry=registry, multiprocess_mode=mode)

    fam = _Families(
        registry=registry,
        sessions=gauge("dbgate_sessions", "Client sessions open now."),
        sessions_opened=Counter(
            "dbgate_sessions_opened", "Client sessions authenticated.", registry=registry
        ),
        sessions_closed=Counter(
            "dbgate_sessions_closed", "Client sessions ended.", registry=registry
        ),
        statements=Counter(
            "dbgate_statements",
            "Statements decided, by the category that decided and the decision.",
            ["category", "decision"],
            registry=registry,
        ),
        relay_bytes=Counter(
            "dbgate_relay_bytes",
            "Bytes relayed, by direction (client: agent to PostgreSQL).",
            ["direction"],
            registry=registry,
        ),
        tokenized=Counter(
            "dbgate_tokenized_values",
            "Values replaced by PII tokens, by kind.",
            ["kind"],
            registry=registry,
        ),
        holds_waiting=gauge("dbgate_holds_waiting", "Held statements waiting in this process."),
        hold_seconds=Histogram(
            "dbgate_hold_seconds",
            "How long held statements waited, by outcome.",
            ["outcome"],
            buckets=HOLD_BUCKETS,
            registry=registry,
        ),
        approvals_pending=gauge(
            "dbgate_approvals_pending",
            "Approval requests pending in the state database (all replicas).",
            mode="mostrecent",
        ),
        budget_hits=Counter(
            "dbgate_budget_hits",
            "Statements stopped by a run-time limit or budget, by identity and limit.",
            ["identity", "limit"],
            registry=registry,
        ),
        audit_queue_depth=gauge("dbgate_audit_queue_depth", "Audit records waiting to be written."),
        audit_lag=gauge(
            "dbgate_audit_lag_seconds",
            "Age of the oldest audit record not yet written.",
            mode="livemax",
        ),
        upstream_errors=Counter(
            "dbgate_upstream_errors",
            "Failures talking to PostgreSQL, by kind (connect, auth, tls, lost, cancel).",
            ["kind"],
            registry=registry,
        ),
        connections_refused=Counter(
            "dbgate_connections_refused",
            "Client connections refused before a session started, by reason.",
            ["reason"],
            registry=registry,
        ),
        clients_waiting=gauge("dbgate_clients_waiting", "Clients waiting for a server connection."),
        client_wait_seconds=Histogram(
            "dbgate_client_wait_seconds",
            "How long clients waited for a server connection.",
            buckets=WAIT_BUCKETS,
            registry=registry,
        ),
        log_dropped=Counter(
            "dbgate_log_records_dropped",
            "Log records dropped because the destination was slow, full or broken.",
            registry=registry,
        ),
        build_info=gauge("dbgate_build_info", "dbgate version.", ["version"], mode="max"),
    )
    fam.build_info.labels(version or _version()).set(1)
    _state["families"] = fam
    _statements.clear()
    _tokenized.clear()
    _relay[0] = _relay[1] = 0
    _log_dropped[0] = 0
    global _totals
    _totals = Snapshot()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dbgate")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


def worker_exited(pid: int) -> None:
    """Parent process: worker ``pid`` is gone; its live gauges stop counting."""
    directory = _state["dir"] or os.environ.get(ENV_MULTIPROC)
    if directory:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, str(directory))


def flush() -> None:
    """Move the hot-path tallies into prometheus-client (event-loop thread)."""
    fam = _families()
    if _statements:
        items = list(_statements.items())
        _statements.clear()
        for (category, decision), n in items:
            fam.statements.labels(category, decision).inc(n)
            _totals.statements[decision] = _totals.statements.get(decision, 0) + n
    if _tokenized:
        items2 = list(_tokenized.items())
        _tokenized.clear()
        for kind, n in items2:
            fam.tokenized.labels(kind).inc(n)
    if _relay[0]:
        fam.relay_bytes.labels("client").inc(_relay[0])
        _relay[0] = 0
    if _relay[1]:
        fam.relay_bytes.labels("upstream").inc(_relay[1])
        _relay[1] = 0
    if _log_dropped[0]:
        n = _log_dropped[0]
        _log_dropped[0] = 0
        fam.log_dropped.inc(n)
        _totals.log_records_dropped += n


def snapshot() -> Snapshot:
    """Flush, then a copy of this process's cumulative totals."""
    flush()
    return Snapshot(
        sessions_opened=_totals.sessions_opened,
        sessions_closed=_totals.sessions_closed,
        statements=dict(_totals.statements),
        holds_finished=dict(_totals.holds_finished),
        upstream_errors=_totals.upstream_errors,
        connections_refused=_totals.connections_refused,
        log_records_dropped=_totals.log_records_dropped,
        sessions_open=_totals.sessions_open,
        holds_waiting=_totals.holds_waiting,
    )


def exposition() -> tuple[bytes, str]:
    """Flush and render every metric in Prometheus text format: (body, content type).

    In multiprocess mode the body sums the files of every process in the directory.
    """
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    fam = _families()
    flush()
    directory = _state["dir"]
    if directory is None:
        return generate_latest(fam.registry), CONTENT_TYPE_LATEST
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    return generate_latest(registry), CONTENT_TYPE_LATEST


# ---------------------------------------------------------------------------
# Rare events: straight to prometheus-client.
# ---------------------------------------------------------------------------


def session_opened() -> None:
    fam = _families()
    fam.sessions.inc()
    fam.sessions_opened.inc()
    _totals.sessions_opened += 1
    _totals.sessions_open += 1


def session_closed() -> None:
    fam = _families()
    fam.sessions.dec()
    fam.sessions_closed.inc()
    _totals.sessions_closed += 1
    _totals.sessions_open -= 1


def hold_started() -> None:
    """A statement starts waiting for approval in this process."""
    _families().holds_waiting.inc()
    _totals.holds_waiting += 1


def hold_finished(outcome: str, seconds: float) -> None:
    """The wait ended: ``approved|rejected|expired|cancelled|unavailable`` after ``seconds``."""
    fam = _families()
    fam.holds_waiting.dec()
    fam.hold_seconds.labels(outcome).observe(seconds)
    _totals.holds_waiting -= 1
    _totals.holds_finished[outcome] = _totals.holds_finished.get(outcome, 0) + 1


def approvals_pending(n: int) -> None:
    """Pending approval requests in the state database (read by whoever polls it)."""
    _families().approvals_pending.set(n)


def budget_hit(identity: str, limit: str) -> None:
    """A run-time limit or budget (``max_rows``, ``max_rows_changed``, …) stopped a statement."""
    _families().budget_hits.labels(identity, limit).inc()


def audit_queue(depth: int, lag_seconds: float) -> None:
    """The audit writer's queue: records waiting, and the oldest one's age."""
    fam = _families()
    fam.audit_queue_depth.set(depth)
    fam.audit_lag.set(lag_seconds)


def upstream_error(kind: str) -> None:
    """``connect``, ``auth``, ``tls``, ``lost`` (mid-session) or ``cancel``."""
    _families().upstream_errors.labels(kind).inc()
    _totals.upstream_errors += 1


def connection_refused(reason: str) -> None:
    """``too_many_clients``, ``auth``, ``startup_timeout``, ``protocol``, ``shutting_down``."""
    _families().connections_refused.labels(reason).inc()
    _totals.connections_refused += 1


def client_wait_started() -> None:
    _families().clients_waiting.inc()


def client_wait_finished(seconds: float) -> None:
    fam = _families()
    fam.clients_waiting.dec()
    fam.client_wait_seconds.observe(seconds)


class Flusher:
    """Flush this process's tallies every ``interval`` seconds (needed with workers).

    ``start()`` inside the running loop; ``await stop()`` flushes one last time.
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                flush()
            except Exception:  # a metrics bug must never stop the proxy
                log.exception("metrics: flush failed")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            flush()


def remove_multiprocess_dir(path: str | Path) -> None:
    """Parent process, after the last worker stopped: remove a directory it created."""
    shutil.rmtree(path, ignore_errors=True)
