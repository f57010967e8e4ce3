"""One serving process: ``dbgate serve`` alone, or one worker of ``--workers N``.

It runs an :class:`~dbgate.app.App` until SIGTERM (or SIGINT when alone), drains it,
and reloads on SIGHUP (:mod:`dbgate.reload`). As a worker (a :class:`Seat` given by
:mod:`dbgate.workers`) it also:

* listens with SO_REUSEPORT on the ports the supervisor reserved;
* names itself in approval and audit records as ``<replica>/w<index>``, so that a
  restarted worker closes its predecessor's unfinished holds at once;
* exchanges CancelRequests with its siblings (:mod:`dbgate.workers_cancel`);
* ignores SIGINT (a Ctrl-C reaches the whole process group; the supervisor turns it
  into one SIGTERM per worker) and asks the kernel for SIGTERM should the
  supervisor die without stopping it;
* tells the supervisor through a pipe when it is ready, or that it failed to start
  (having printed the one-line reason itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dbgate.config import Config
from dbgate.proxy.capacity import share

log = logging.getLogger("dbgate.workers")

__all__ = ["Seat", "serve", "serve_alone", "worker_config", "worker_main"]

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Seat:
    """A worker's place among its siblings (pickled to the worker process)."""

    index: int
    count: int
    runtime_dir: Path  # the cancel and schema sockets (0700)
    supervisor_pid: int
    replica: str  # the supervisor's replica name; the worker's is "<replica>/w<index>"


def worker_config(config: Config, seat: Seat) -> Config:
    """``config`` as worker ``seat.index`` runs it: its own approval and audit names,
    and its share of ``upstream.max_server_conn`` — the limit protects the server, so
    it holds for all workers together (:func:`dbgate.proxy.capacity.share`). The
    upstream section also learns the worker's seat, so that a limit derived from the
    server's is shared the same way."""
    name = f"{seat.replica}/w{seat.index}"
    approvals = config.approvals.model_copy(update={"replica_id": name})
    audit = config.audit.model_copy(update={"replica": name})
    total = config.upstream.max_server_conn
    update = {} if total is None else {"max_server_conn": share(total, seat.index, seat.count)}
    upstream = config.upstream.model_copy(update=update)
    upstream._seat = (seat.index, seat.count)
    return config.model_copy(update={"approvals": approvals, "audit": audit, "upstream": upstream})


async def serve(
    app: Any,
    load: Callable[[], Config] | None,
    *,
    stop_signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM),
    on_ready: Callable[[], None] | None = None,
) -> int:
    """Start ``app``, serve until a stop signal, drain. SIGHUP reloads (with ``load``)."""
    from dbgate.app import StartupError, freeze_startup_objects
    from dbgate.reload import Reloader

    try:
        await app.start()
    except StartupError as e:
        print(f"dbgate: {e}", file=sys.stderr, flush=True)
        return 1
    freeze_startup_objects()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloader = Reloader(app, load) if load is not None else None
    for sig in stop_signals:
        loop.add_signal_handler(sig, stop.set)
    if reloader is not None:
        loop.add_signal_handler(signal.SIGHUP, reloader.request)
    if on_ready is not None:
        on_ready()
    try:
        await stop.wait()
    finally:
        for sig in (*stop_signals, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if reloader is not None:
            await reloader.stop()
        sessions = app.proxy.session_count if app.proxy is not None else 0
        log.info("shutting down: draining %d sessions", sessions)
        await app.stop()
    return 0


def serve_alone(config: Config, load: Callable[[], Config] | None) -> int:
    """``dbgate serve`` in this process (``--workers 1``)."""
    import uvloop

    from dbgate import logs
    from dbgate.app import App, setup_process

    setup_process(config)
    try:
        return uvloop.run(serve(App(config), load))
    finally:
        logs.stop_logging()


def _die_with_supervisor(supervisor_pid: int) -> None:
    """SIGTERM (a drain) for this worker if the supervisor dies without stopping it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the supervisor's SIGTERM only
        return
    if os.getppid() != supervisor_pid:  # it died before we asked
        os.kill(os.getpid(), signal.SIGTERM)


def worker_main(config: Config, load: Callable[[], Config] | None, seat: Seat, ready: Any) -> None:
    """Entry point of a worker process (``multiprocessing`` spawn target)."""
    import uvloop

    from dbgate import logs
    from dbgate.app import App, setup_process
    from dbgate.workers_cancel import CancelRelay
    from dbgate.workers_schema import SiblingTransport

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_supervisor(seat.supervisor_pid)
    config = worker_config(config, seat)
    setup_process(config)

    def worker_load() -> Config:
        assert load is not None
        return worker_config(load(), seat)

    async def main() -> int:
        app: Any = None

        async def cancel_here(request: Any) -> bool:
            return (
                app is not None and app.proxy is not None and await app.proxy.cancel_here(request)
            )

        relay = CancelRelay(seat.runtime_dir, seat.index, seat.count, cancel_here)
        await relay.start()
        app = App(
            config,
            reuse_port=True,
            forward_cancel=relay.forward,
            schema_siblings=SiblingTransport(seat.runtime_dir, seat.index, seat.count),
        )
        try:
            return await serve(
                app,
                worker_load if load is not None else None,
                stop_signals=(signal.SIGTERM,),
                on_ready=lambda: ready.send(("ready", os.getpid())),
            )
        finally:
            await relay.stop()

    status = 1
    try:
        status = uvloop.run(main())
    finally:
        if status != 0:
            with contextlib.suppress(OSError):
                ready.send(("failed", status))
        logs.stop_logging()
    sys.exit(status)


def replica_name(config: Config) -> str:
    """The supervisor's name in records: the configured one, else ``<host>:<pid>``."""
    return (
        config.approvals.replica_id
        or config.audit.replica
        or f"{socket.gethostname()}:{os.getpid()}"
    )
