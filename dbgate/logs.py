"""Operator logs: one event per line, never raw PII, never a stalled proxy.

:func:`setup_logging` installs one handler on the root logger. It does three jobs:

* **Shape.** ``text`` for a person at a terminal, ``json`` (one object per line:
  ``ts``, ``level``, ``logger``, ``msg``, ``session_id``/``request_id`` when known,
  any structured fields, ``exc``) for log collectors. ``auto`` (the default) picks
  text when the destination is a terminal and JSON otherwise — a container, a
  systemd journal, a file, a pipe.
* **No raw PII** (:class:`PIIFilter`). Statement text must never reach the log: a
  ``%s`` argument that looks like SQL is replaced by ``<sql withheld>``, bytes by
  ``<N bytes withheld>``, and structured fields with raw-text names (``sql``,
  ``statement``, ``params``, ``row`` …) by ``<withheld>``; only fields whose names
  end in ``_masked`` (the caller ran :func:`dbgate.pii.sql_mask.mask_sql` on them)
  pass. Then every message, field and traceback is masked by look
  (:func:`dbgate.pii.sql_mask.mask_text`: e-mail addresses, phone, card, SSN and IBAN
  numbers), because exception texts from PostgreSQL can echo values
  (``Key (email)=(…) already exists``).
* **Never block.** Records are handed to a bounded queue and written by one
  background thread. A slow, full, blocked or broken destination (a full disk, a
  pipe nobody reads, a closed journal socket) costs the event loop nothing: when
  the queue is full, records are dropped and counted (``dbgate_log_records_dropped``),
  write errors are counted, and a line saying how many were lost is written as soon
  as the destination takes writes again. :meth:`LogPipeline.stop` waits a bounded
  time, so even shutdown cannot hang on a stuck destination.

Log volume (issue: one client's connection must not cost a line): connection
events belong at DEBUG; :class:`LogSummary` writes one INFO line per interval
with what happened (sessions, statements by decision, refusals, holds, errors).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as _dt
import errno
import json
import logging
import os
import queue
import re
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "LogPipeline",
    "LogSummary",
    "PIIFilter",
    "log_context",
    "session_extra",
    "setup_logging",
]

LogFormat = Literal["auto", "text", "json"]

_session_id: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "dbgate_session_id", default=None
)
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "dbgate_request_id", default=None
)

#: Attributes every LogRecord has; anything else on a record is a structured field.
_STANDARD = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
_CONTEXT_FIELDS = ("session_id", "request_id")

#: Structured fields that carry raw text from agents or the database.
RAW_TEXT_FIELDS = frozenset(
    {
        "sql",
        "statement",
        "query",
        "text",
        "params",
        "parameters",
        "values",
        "value",
        "row",
        "rows",
        "data",
        "detail",
        "payload",
    }
)
WITHHELD = "<withheld>"
SQL_WITHHELD = "<sql withheld>"

# A %s argument that starts like a statement (after comments, empty statements and
# parentheses): a keyword followed by more words, so that names like
# ``copy-to-program`` pass.
_SQL_START = re.compile(
    r"^\s*(?:(?:--[^\n]*(?:\n|$)|/\*.*?\*/|;)\s*)*\(*\s*"
    r"(?:select|insert|update|delete|merge|with|values|table|copy|create|alter|drop|"
    r"truncate|grant|revoke|call|do|explain|prepare|execute|declare|fetch|lock|set|"
    r"reset|show|listen|notify|begin|start|commit|rollback|savepoint|release|vacuum|"
    r"analyze|cluster|reindex|comment|security|refresh|import|load|discard|deallocate|"
    r"abort|end|checkpoint|reassign|close|move|unlisten)"
    r"(?:\s+\S|\s*[(*;]|\s*$)",
    re.IGNORECASE | re.DOTALL,
)


@contextlib.contextmanager
def log_context(
    *, session_id: object | None = None, request_id: str | None = None
) -> Iterator[None]:
    """Tag every record logged in this context (task) with the ids given."""
    tokens = []
    if session_id is not None:
        tokens.append((_session_id, _session_id.set(session_id)))
    if request_id is not None:
        tokens.append((_request_id, _request_id.set(request_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def set_request_id(request_id: str | None) -> contextvars.Token[str | None]:
    """For middleware: tag records of the current task with ``request_id``."""
    return _request_id.set(request_id)


def session_extra(session_id: object, **fields: object) -> dict[str, object]:
    """``extra=`` for a record about one session (the relay's callbacks have no task context)."""
    return {"session_id": session_id, **fields}


def _looks_like_sql(value: str) -> bool:
    return bool(_SQL_START.match(value))


class PIIFilter(logging.Filter):
    """Withholds raw statement text, bytes and raw-text fields; see the module docstring.

    Runs where the record is created (before ``%`` formatting); masking by look
    happens in the writer thread (:func:`_mask`), off the event loop.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if args:
            if isinstance(args, Mapping):
                record.args = {k: _safe_arg(v) for k, v in args.items()}
            else:
                record.args = tuple(_safe_arg(a) for a in args)
        for name in list(vars(record)):
            if name in _STANDARD or name in _CONTEXT_FIELDS:
                continue
            if name.lower() in RAW_TEXT_FIELDS:
                setattr(record, name, WITHHELD)
            elif not name.endswith("_masked"):
                setattr(record, name, _safe_arg(getattr(record, name)))
        return True


def _safe_arg(value: Any) -> Any:
    if isinstance(value, str):
        return SQL_WITHHELD if _looks_like_sql(value) else value
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes withheld>"
    return value


_masker: list[Callable[[str], str]] = []


#: ``extra={UNMASKED: True}``: a message that carries no client data and must reach
#: the log exactly as written — an audit chain head, whose hex hash has a run of
#: Luhn-valid digits (``<card>``) about once in 200.
UNMASKED = "_dbgate_unmasked"


def _message(record: logging.LogRecord) -> str:
    text = record.getMessage()
    return text if getattr(record, UNMASKED, False) else _mask(text)


def _mask(text: str) -> str:
    """Mask PII-shaped values by look; if the masker itself fails, withhold the text."""
    if not _masker:
        from dbgate.pii.sql_mask import mask_text

        _masker.append(mask_text)
    try:
        return _masker[0](text)
    except Exception:
        return "<text withheld: masking failed>"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _CONTEXT_FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            out[name] = value
    for name, value in vars(record).items():
        if name in _STANDARD or name in _CONTEXT_FIELDS or name.startswith("_"):
            continue
        out[name] = value
    return out


def _masked_value(value: Any) -> Any:
    if isinstance(value, str):
        return _mask(value)
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_masked_value(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _masked_value(v) for k, v in value.items()}
    return _mask(str(value))


def _timestamp(record: logging.LogRecord) -> str:
    when = _dt.datetime.fromtimestamp(record.created, tz=_dt.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; every string masked by look."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _message(record),
        }
        for name, value in _fields(record).items():
            doc[name] = _masked_value(value)
        if record.exc_text:
            doc["exc"] = _mask(record.exc_text)
        if record.stack_info:
            doc["stack"] = _mask(record.stack_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``2025-01-02 10:11:12,345 INFO dbgate.proxy [session_id=7]: message key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        when = _dt.datetime.fromtimestamp(record.created).strftime("%Y-%m-%d %H:%M:%S")
        fields = _fields(record)
        ids = " ".join(f"{k}={fields.pop(k)}" for k in _CONTEXT_FIELDS if k in fields)
        head = f"{when},{int(record.msecs):03d} {record.levelname} {record.name}"
        if ids:
            head += f" [{ids}]"
        line = f"{head}: {_message(record)}"
        shown = {k: v for k, v in fields.items() if not isinstance(v, Mapping)}
        if shown:  # mappings (e.g. a summary's figures) are for JSON; the text says them
            line += " " + " ".join(f"{k}={_masked_value(v)}" for k, v in shown.items())
        if record.exc_text:
            line += "\n" + _mask(record.exc_text)
        if record.stack_info:
            line += "\n" + _mask(record.stack_info)
        return line


class _Destination:
    """Where lines go: an fd (stderr, a pipe) or a file reopened after rotation."""

    def __init__(self, fd: int | None, path: Path | None) -> None:
        self.path = path
        self._own = path is not None
        self.fd = fd if path is None else self._open()
        self._inode = self._stat_inode()

    def _open(self) -> int:
        assert self.path is not None
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def _stat_inode(self) -> tuple[int, int] | None:
        try:
            st = os.fstat(self.fd)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def isatty(self) -> bool:
        try:
            return os.isatty(self.fd)
        except OSError:
            return False

    def reopen_if_rotated(self) -> None:
        """A file renamed away (logrotate) is reopened at its path."""
        if not self._own or self.path is None:
            return
        try:
            st = os.stat(self.path)
            current = (st.st_dev, st.st_ino)
        except OSError:
            current = None
        if current != self._inode:
            with contextlib.suppress(OSError):
                new_fd = self._open()
                os.close(self.fd)
                self.fd = new_fd
                self._inode = self._stat_inode()

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]

    def close(self) -> None:
        if self._own:
            with contextlib.suppress(OSError):
                os.close(self.fd)


_STOP = object()


class LogPipeline(logging.Handler):
    """The root handler: filter and enqueue on the caller's thread, write on another."""

    def __init__(
        self,
        destination: _Destination,
        formatter: logging.Formatter,
        queue_size: int = 10_000,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__()
        self.destination = destination
        self.setFormatter(formatter)
        self.addFilter(PIIFilter())
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self.dropped = 0  # records not written: queue full or write failed
        self.write_errors = 0
        self.last_error: str | None = None
        self._reported = 0
        self._on_drop = on_drop
        self._thread = threading.Thread(target=self._run, name="dbgate-log-writer", daemon=True)
        self._thread.start()

    # -- caller's thread --------------------------------------------------------
    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._prepare(record)
            self.queue.put_nowait(record)
        except queue.Full:
            self._drop(1)
        except Exception:
            self._drop(1)

    def _prepare(self, record: logging.LogRecord) -> None:
        """Freeze the record: its args and traceback must not be read on another thread."""
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        for name, var in (("session_id", _session_id), ("request_id", _request_id)):
            if getattr(record, name, None) is None:
                value = var.get()
                if value is not None:
                    setattr(record, name, value)

    def _drop(self, n: int) -> None:
        self.dropped += n
        if self._on_drop is not None:
            with contextlib.suppress(Exception):
                self._on_drop(n)

    def handleError(self, record: logging.LogRecord) -> None:
        self._drop(1)

    # -- writer thread ------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self.queue.get()
            batch = [item]
            with contextlib.suppress(queue.Empty):
                while len(batch) < 512:
                    batch.append(self.queue.get_nowait())
            stop = any(r is _STOP for r in batch)
            self._write([r for r in batch if isinstance(r, logging.LogRecord)])
            for r in batch:
                if isinstance(r, threading.Event):
                    r.set()
            if stop:
                return

    def _write(self, records: list[logging.LogRecord]) -> None:
        if not records:
            return
        lines = []
        for record in records:
            try:
                lines.append(self.format(record))
            except Exception:
                self._drop(1)
        lost = self.dropped - self._reported
        if lost > 0:
            lines.append(
                self.format(
                    logging.LogRecord(
                        "dbgate.logs",
                        logging.WARNING,
                        __file__,
                        0,
                        "%d log records were dropped: the log destination was slow, "
                        "full or broken (%s)",
                        (lost, self.last_error or "queue full"),
                        None,
                    )
                )
            )
        data = ("\n".join(lines) + "\n").encode("utf-8", "replace")
        try:
            self.destination.reopen_if_rotated()
            self.destination.write(data)
        except OSError as e:
            self.write_errors += 1
            self.last_error = errno.errorcode.get(e.errno or 0, type(e).__name__)
            self._drop(len(records))
        else:
            self._reported += lost

    def sync(self, timeout: float = 2.0) -> bool:
        """Wait until everything logged before this call was written (or failed)."""
        done = threading.Event()
        try:
            self.queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def stop(self, timeout: float = 2.0) -> bool:
        """Write what is queued (for up to ``timeout`` seconds) and stop the writer.

        Returns False when the destination did not take it in time (the writer is a
        daemon thread: it never keeps the process alive).
        """
        root = logging.getLogger()
        if self in root.handlers:
            root.removeHandler(self)
        try:
            self.queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return False
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        self.destination.close()
        return True


_current: list[LogPipeline] = []


def _count_dropped(n: int) -> None:
    from dbgate import metrics

    metrics.log_records_dropped(n)


def setup_logging(
    level: str = "info",
    *,
    format: LogFormat = "auto",
    file: Path | str | None = None,
    fd: int | None = None,
    queue_size: int = 10_000,
) -> LogPipeline:
    """Route all logging through one non-blocking, PII-safe pipeline.

    ``file``: append to this path (reopened after rotation); otherwise ``fd``
    (default: standard error). Replaces a pipeline installed earlier (which is
    stopped) and any handler ``logging.basicConfig`` put on the root logger.
    """
    for old in _current:
        old.stop(timeout=1.0)
    _current.clear()
    destination = _Destination(2 if fd is None else fd, Path(file) if file else None)
    if format == "auto":
        format = "text" if destination.isatty() else "json"
    formatter: logging.Formatter = JsonFormatter() if format == "json" else TextFormatter()
    pipeline = LogPipeline(destination, formatter, queue_size, on_drop=_count_dropped)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(pipeline)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.getLogger("asyncio").setLevel(max(root.level, logging.WARNING))
    logging.captureWarnings(True)
    _current.append(pipeline)
    return pipeline


def stop_logging(timeout: float = 2.0) -> None:
    """Flush and stop the pipeline (at the very end of shutdown); logs go to stderr after."""
    for old in _current:
        old.stop(timeout=timeout)
    _current.clear()


class LogSummary:
    """One INFO line per interval instead of a line per connection or statement.

    ``start()`` in the running loop, ``await stop()`` at shutdown (writes a last
    line). :meth:`emit_once` computes and logs the interval's figures from
    :func:`dbgate.metrics.snapshot` and returns them (tests call it directly).
    """

    def __init__(
        self,
        interval: float = 60.0,
        *,
        logger: logging.Logger | None = None,
        quiet_when_idle: bool = True,
    ) -> None:
        from dbgate import metrics

        self.interval = interval
        self.log = logger or logging.getLogger("dbgate.summary")
        self.quiet_when_idle = quiet_when_idle
        self._metrics = metrics
        self._last = metrics.snapshot()
        self._task: asyncio.Task[None] | None = None

    def emit_once(self) -> dict[str, Any] | None:
        now = self._metrics.snapshot()
        last, self._last = self._last, now

        def delta(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
            return {k: v - b.get(k, 0) for k, v in sorted(a.items()) if v - b.get(k, 0)}

        statements = delta(now.statements, last.statements)
        holds = delta(now.holds_finished, last.holds_finished)
        fields: dict[str, Any] = {
            "interval_seconds": self.interval,
            "sessions_opened": now.sessions_opened - last.sessions_opened,
            "sessions_closed": now.sessions_closed - last.sessions_closed,
            "sessions_open": now.sessions_open,
            "statements": sum(statements.values()),
            "statements_by_decision": statements,
            "refusals": statements.get("deny", 0)
            + sum(n for outcome, n in holds.items() if outcome != "approved"),
            "holds_waiting": now.holds_waiting,
            "holds_finished": holds,
            "connections_refused": now.connections_refused - last.connections_refused,
            "upstream_errors": now.upstream_errors - last.upstream_errors,
            "log_records_dropped": now.log_records_dropped - last.log_records_dropped,
        }
        idle = not any(
            fields[k]
            for k in (
                "sessions_opened",
                "sessions_closed",
                "sessions_open",
                "statements",
                "holds_waiting",
                "connections_refused",
                "upstream_errors",
                "log_records_dropped",
            )
        )
        if idle and self.quiet_when_idle:
            return None
        by_decision = ", ".join(f"{k} {v}" for k, v in statements.items())
        self.log.info(
            "last %ss: sessions +%d -%d (open %d), statements %d%s, refusals %d, "
            "holds waiting %d, refused connections %d, upstream errors %d",
            f"{self.interval:g}",
            fields["sessions_opened"],
            fields["sessions_closed"],
            fields["sessions_open"],
            fields["statements"],
            f" ({by_decision})" if by_decision else "",
            fields["refusals"],
            fields["holds_waiting"],
            fields["connections_refused"],
            fields["upstream_errors"],
            extra={"summary": fields},
        )
        return fields

    def start(self) -> None:
        if self._task is None and self.interval > 0:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.emit_once()
            except Exception:
                self.log.exception("summary failed")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            self.emit_once()


def default_stream_is_tty() -> bool:
    """Whether ``format: auto`` would pick text for standard error."""
    return sys.stderr.isatty()
