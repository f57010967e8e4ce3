"""``dbgate serve --workers N``: N processes on one port, and the supervisor over them.

Why processes: one asyncio process uses one core; a proxy that must keep up with a
busy database on a bigger machine needs more. Each worker is a whole dbgate (proxy,
gate, approval service, audit writer, web port) listening with SO_REUSEPORT, so
the kernel spreads new connections over them and no byte passes through the
supervisor. Workers share what replicas share — the state database — plus:

* **cancels**: a CancelRequest lands on any worker; one that does not hold the
  session forwards it to its siblings over local Unix sockets
  (:mod:`dbgate.workers_cancel`);
* **metrics**: prometheus-client's multiprocess mode — the supervisor empties
  ``metrics.multiprocess_dir`` (default: a private temp dir) and every worker's
  ``/metrics`` sums all workers' files;
* **ports**: the supervisor checks that nobody else listens on them (SO_REUSEPORT
  would otherwise quietly share a port with another dbgate of the same user), then
  holds a bound, non-listening socket on each for the whole run, so that port 0
  becomes one port for all workers and restarted workers get the same one.

What the supervisor does, and nothing else:

* start worker 0 and wait until it is ready (so a start-up problem — a port in use,
  an unreachable upstream — is one line and exit status 1, not N), then the others;
* restart a worker that dies, at once and then with back-off (1 s doubling to 30 s)
  while it keeps failing to start. The dead worker's clients see their connection
  close (the kernel closes its sockets); the other workers' sessions go on, and new
  connections go to the live workers (a dead process's listening socket leaves the
  port's group with it). Its live metrics gauges are dropped
  (:func:`dbgate.metrics.worker_exited`); its unfinished holds are marked
  ``abandoned`` when its successor, which has the same replica name, starts;
* SIGTERM or SIGINT: SIGTERM to every worker, each of which drains its sessions as
  a lone ``dbgate serve`` does (``shutdown_grace_seconds``); a worker still running
  15 s after that is killed. A second SIGINT (Ctrl-C) kills the workers at once;
* SIGHUP: forwarded to every worker, each of which reloads (:mod:`dbgate.reload`).

``--workers 1`` (or a machine with one core) runs dbgate in this process with no
supervisor (:func:`dbgate.workers_process.serve_alone`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbgate.config import Config, split_hostport
from dbgate.startup_errors import StartupError, startup_step
from dbgate.workers_process import Seat, replica_name, serve_alone, worker_main

log = logging.getLogger("dbgate.workers")

__all__ = ["default_workers", "run"]

#: Extra time a draining worker gets beyond ``shutdown_grace_seconds`` before SIGKILL.
STOP_MARGIN_SECONDS = 15.0
RESTART_BACKOFF_MAX = 30.0
#: How long a worker may take to start (preflight, migrations, listeners).
START_TIMEOUT = 120.0


def default_workers() -> int:
    """The number of cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def run(config: Config, *, workers: int, load: Callable[[], Config] | None = None) -> int:
    """Blocking entry point of ``dbgate serve``: returns the exit status."""
    if workers <= 1:
        return serve_alone(config, load)
    return Supervisor(config, workers, load).run()


# ---------------------------------------------------------------------------
# Ports
# ---------------------------------------------------------------------------


def _reserve(address: str, default_port: int, step: str) -> tuple[socket.socket, int]:
    """Check nobody listens on ``address``, then hold it for the workers (bound with
    SO_REUSEPORT, not listening). Returns the socket and the port (port 0: chosen)."""
    host, port = split_hostport(address, default_port)
    with startup_step(step, address=address):
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        if port != 0:
            # Without SO_REUSEPORT, so that a listener of any process makes this fail.
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(sockaddr)
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(sockaddr)
        except BaseException:
            sock.close()
            raise
    return sock, sock.getsockname()[1]


def _with_port(address: str, default_port: int, port: int) -> str:
    host, _ = split_hostport(address, default_port)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def with_ports(config: Config, listen_port: int, web_port: int | None) -> Config:
    """``config`` with the ports the supervisor reserved (port 0 resolved)."""
    update: dict[str, Any] = {"listen": _with_port(config.listen, 6432, listen_port)}
    if config.web is not None and web_port is not None:
        update["web"] = config.web.model_copy(
            update={"listen": _with_port(config.web.listen, 8080, web_port)}
        )
    return config.model_copy(update=update)


def _load_with_ports(load: Callable[[], Config], listen_port: int, web_port: int | None) -> Config:
    return with_ports(load(), listen_port, web_port)


# ---------------------------------------------------------------------------
# The supervisor
# ---------------------------------------------------------------------------


@dataclass
class _Worker:
    index: int
    process: Any = None  # multiprocessing.Process
    pipe: Any = None  # our end of its readiness pipe
    ready: bool = False
    failures: int = 0  # consecutive failed starts
    restart_at: float | None = None  # monotonic time of a pending restart
    started_at: float = 0.0
    history: list[int] = field(default_factory=list)  # pids, oldest first


class Supervisor:
    """Starts, watches, restarts and stops the workers (see the module docstring)."""

    def __init__(self, config: Config, count: int, load: Callable[[], Config] | None) -> None:
        self.config = config
        self.count = count
        self.load = load
        self.workers = [_Worker(i) for i in range(count)]
        self._ctx = multiprocessing.get_context("spawn")
        self._held: list[socket.socket] = []
        self._runtime_dir: Path | None = None
        self._metrics_dir: Path | None = None
        self._own_metrics_dir = False
        self._signals: list[int] = []
        self._wake_r, self._wake_w = -1, -1
        self._replica = replica_name(config)

    # -- life ------------------------------------------------------------------------

    def run(self) -> int:
        from dbgate import logs

        config = self.config
        logs.setup_logging(
            config.log_level,
            format=config.logging.format,
            file=config.logging.file,
            queue_size=config.logging.queue_size,
        )
        try:
            try:
                self._prepare()
            except StartupError as e:
                print(f"dbgate: {e}", file=sys.stderr, flush=True)
                return 1
            self._install_signals()
            started = self._start_all()
            if started != "ready":
                self._stop_workers(kill=started == "failed")
                return 1 if started == "failed" else 0
            log.info(
                "dbgate: %d workers serving on %s (supervisor pid %d)",
                self.count,
                self.config.listen,
                os.getpid(),
            )
            self._watch()
            return 0
        finally:
            self._restore_signals()
            self._cleanup()
            logs.stop_logging()

    def _prepare(self) -> None:
        config = self.config
        sock, listen_port = _reserve(config.listen, 6432, "listen")
        self._held.append(sock)
        web_port = None
        if config.web is not None:
            wsock, web_port = _reserve(config.web.listen, 8080, "web")
            self._held.append(wsock)
        self.config = with_ports(config, listen_port, web_port)
        if self.load is not None:
            self.load = functools.partial(_load_with_ports, self.load, listen_port, web_port)
        self._runtime_dir = Path(tempfile.mkdtemp(prefix="dbgate-workers-"))
        os.chmod(self._runtime_dir, 0o700)
        if config.metrics.enabled:
            from dbgate import metrics

            directory = config.metrics.multiprocess_dir
            if directory is None:
                directory = Path(tempfile.mkdtemp(prefix="dbgate-metrics-"))
                self._own_metrics_dir = True
            self._metrics_dir = metrics.prepare_multiprocess_dir(directory)

    def _cleanup(self) -> None:
        for sock in self._held:
            sock.close()
        self._held.clear()
        if self._runtime_dir is not None:
            import shutil

            shutil.rmtree(self._runtime_dir, ignore_errors=True)
        if self._metrics_dir is not None and self._own_metrics_dir:
            from dbgate import metrics

            metrics.remove_multiprocess_dir(self._metrics_dir)
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    # -- signals -----------------------------------------------------------------------

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._old_wakeup = signal.set_wakeup_fd(self._wake_w)
        self._old_handlers = {
            sig: signal.signal(sig, self._on_signal)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }

    def _restore_signals(self) -> None:
        for sig, handler in getattr(self, "_old_handlers", {}).items():
            signal.signal(sig, handler)
        if hasattr(self, "_old_wakeup"):
            signal.set_wakeup_fd(self._old_wakeup)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)  # handled in the loop (set_wakeup_fd wakes it)

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._wake_r, 512):
                pass

    # -- workers -----------------------------------------------------------------------

    def _spawn(self, w: _Worker) -> None:
        assert self._runtime_dir is not None
        seat = Seat(
            index=w.index,
            count=self.count,
            runtime_dir=self._runtime_dir,
            supervisor_pid=os.getpid(),
            replica=self._replica,
        )
        ours, theirs = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=worker_main,
            args=(self.config, self.load, seat, theirs),
            name=f"dbgate-worker-{w.index}",
            daemon=False,
        )
        process.start()
        theirs.close()
        w.process, w.pipe, w.ready = process, ours, False
        w.started_at = time.monotonic()
        w.restart_at = None
        w.history.append(process.pid)

    def _start_all(self) -> str:
        """Worker 0 first (one error line if the start-up fails), then the others.

        ``ready``, ``failed`` (a worker printed why) or ``stopped`` (a stop signal)."""
        first = self.workers[0]
        self._spawn(first)
        started = self._wait_ready([first])
        if started != "ready":
            return started
        rest = self.workers[1:]
        for w in rest:
            self._spawn(w)
        return self._wait_ready(rest)

    def _wait_ready(self, workers: list[_Worker]) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        pending = list(workers)
        while pending:
            if any(s != signal.SIGHUP for s in self._signals):
                return "stopped"
            waits = [w.pipe for w in pending] + [w.process.sentinel for w in pending]
            left = deadline - time.monotonic()
            if left <= 0:
                print(
                    f"dbgate: a worker did not start within {START_TIMEOUT:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
                return "failed"
            multiprocessing.connection.wait([*waits, self._wake_r], timeout=min(left, 1.0))
            self._drain_wakeups()
            for w in list(pending):
                status = self._poll_ready(w)
                if status is True:
                    pending.remove(w)
                elif status is False:
                    return "failed"
        return "ready"

    def _poll_ready(self, w: _Worker) -> bool | None:
        """True: ready; False: failed to start (it printed why); None: not yet."""
        with contextlib.suppress(EOFError, OSError):
            if w.pipe.poll():
                kind, _ = w.pipe.recv()
                if kind == "ready":
                    if len(w.history) > 1:
                        log.info("worker %d (pid %d) is serving again", w.index, w.process.pid)
                    w.ready, w.failures = True, 0
                    return True
                return False
        if not w.process.is_alive():
            return False
        return None

    def _watch(self) -> None:
        while True:
            timeout = self._next_restart_in()
            waits: list[Any] = [self._wake_r]
            for w in self.workers:
                if w.process is not None:
                    waits.append(w.process.sentinel)
                    if not w.ready:
                        waits.append(w.pipe)
            multiprocessing.connection.wait(waits, timeout=timeout)
            self._drain_wakeups()
            signals, self._signals = self._signals, []
            for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: asking %d workers to reload", self.count)
                    self._send_all(signal.SIGHUP)
                else:
                    log.info(
                        "%s: stopping %d workers (draining sessions)",
                        signal.Signals(signum).name,
                        self.count,
                    )
                    self._stop_workers(kill=False)
                    return
            for w in self.workers:
                if w.process is not None and not w.ready:
                    self._poll_ready(w)
                if w.process is not None and not w.process.is_alive():
                    self._exited(w)
                elif (
                    w.process is None
                    and w.restart_at is not None
                    and time.monotonic() >= w.restart_at
                ):
                    self._spawn(w)

    def _next_restart_in(self) -> float | None:
        times = [w.restart_at for w in self.workers if w.process is None and w.restart_at]
        if not times:
            return None
        return max(0.0, min(times) - time.monotonic())

    def _exited(self, w: _Worker) -> None:
        from dbgate import metrics

        process = w.process
        process.join(0)
        code = process.exitcode
        how = (
            f"killed by {signal.Signals(-code).name}"
            if code is not None and code < 0
            else f"exit status {code}"
        )
        if self._metrics_dir is not None:
            with contextlib.suppress(Exception):
                metrics.worker_exited(process.pid)
        with contextlib.suppress(OSError):
            w.pipe.close()
        w.process = w.pipe = None
        if w.ready:
            w.failures = 0
            delay = 0.0
            log.error(
                "worker %d (pid %d) ended (%s); its clients' connections were closed; "
                "restarting it",
                w.index,
                process.pid,
                how,
            )
        else:
            w.failures += 1
            delay = min(RESTART_BACKOFF_MAX, 2.0 ** (w.failures - 1))
            log.error(
                "worker %d (pid %d) failed to start (%s); trying again in %.0f s",
                w.index,
                process.pid,
                how,
                delay,
            )
        w.ready = False
        w.restart_at = time.monotonic() + delay

    def _send_all(self, sig: int) -> None:
        for w in self.workers:
            if w.process is not None and w.process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.process.pid, sig)

    def _stop_workers(self, *, kill: bool) -> None:
        """SIGTERM (drain) to every worker, SIGKILL after the grace, or at once."""
        self._send_all(signal.SIGKILL if kill else signal.SIGTERM)
        deadline = time.monotonic() + self.config.shutdown_grace_seconds + STOP_MARGIN_SECONDS
        killed = kill
        while True:
            alive = [w for w in self.workers if w.process is not None and w.process.is_alive()]
            if not alive:
                break
            left = deadline - time.monotonic()
            if left <= 0 and not killed:
                log.error(
                    "%d workers still draining after the grace period: killing them", len(alive)
                )
                self._send_all(signal.SIGKILL)
                killed = True
                deadline = time.monotonic() + 10
                continue
            if left <= 0:
                break
            multiprocessing.connection.wait(
                [w.process.sentinel for w in alive] + [self._wake_r], timeout=min(left, 1.0)
            )
            self._drain_wakeups()
            # A second Ctrl-C is a person who will not wait; a repeated SIGTERM is not
            # (timeout(1) and systemd may signal the supervisor and the group alike).
            again, self._signals = [s for s in self._signals if s == signal.SIGINT], []
            if again and not killed:
                log.warning("second SIGINT: not waiting for sessions to drain")
                self._send_all(signal.SIGKILL)
                killed = True
        for w in self.workers:
            if w.process is not None:
                w.process.join(0)
                with contextlib.suppress(OSError):
                    w.pipe.close()
        log.info("all workers stopped")
