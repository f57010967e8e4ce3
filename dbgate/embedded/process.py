"""The postmaster process: spawning it, waiting until it serves, stopping it for good.

``postgres`` is started directly (not through ``pg_ctl``) so that this process owns
the postmaster's PID, can wait for it and can kill it — no orphans. Each server gets
a private Unix socket directory under /tmp (socket paths are limited to ~107 bytes),
marked with its owner's PID so that :mod:`dbgate.embedded.sweep` can tell a stale one.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import psutil

from dbgate.embedded.errors import AccessDenied, EmbeddedPostgresError, PortInUse
from dbgate.embedded.os_user import ServerUser, run_as

SOCKET_DIR_PREFIX = "dbgate-pg-"
OWNER_FILE = "owner.pid"

_PR_SET_PDEATHSIG = 1
# Loaded in the parent: the pre-exec hook must not dlopen in a freshly forked child.
_LIBC = ctypes.CDLL(None, use_errno=True)


def _pdeathsig_preexec() -> None:
    """In the child (after setuid): ask the kernel to SIGINT us when our parent dies.

    SIGINT is PostgreSQL's fast shutdown. This is the safety net for a parent that
    is SIGKILLed and never runs atexit. Only used when starting from the main thread,
    because the kernel ties the signal to the *thread* that forked, not the process.
    """
    _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGINT), 0, 0, 0)


def server_env() -> dict[str, str]:
    """A minimal, predictable environment: no inherited PG* variables, C messages."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
    if "TZ" in os.environ:
        env["TZ"] = os.environ["TZ"]
    return env


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def log_since(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def make_socket_dir(user: ServerUser | None) -> Path:
    """A fresh private socket directory under /tmp, owned by the server user."""
    d = Path(tempfile.mkdtemp(prefix=SOCKET_DIR_PREFIX))
    (d / OWNER_FILE).write_text(f"{os.getpid()}\n")
    if user is not None:
        user.chown(d)
    d.chmod(0o700)
    return d


def postmaster_command(bin_dir: Path, pgdata: Path, settings: Mapping[str, str]) -> list[str]:
    cmd = [str(bin_dir / "postgres"), "-D", str(pgdata)]
    for key, value in settings.items():
        cmd += ["-c", f"{key}={value}"]
    return cmd


def spawn_postmaster(
    cmd: list[str], log_file: Path, user: ServerUser | None
) -> subprocess.Popen[bytes]:
    """Start the postmaster with its output appended to ``log_file``; do not wait."""
    use_pdeathsig = threading.current_thread() is threading.main_thread()
    with open(log_file, "ab") as log:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd="/",
            env=server_env(),
            # Own session: a terminal's Ctrl-C reaches us, not the server, so the
            # proxy can drain before the server stops.
            start_new_session=True,
            preexec_fn=_pdeathsig_preexec if use_pdeathsig else None,
            **run_as(user),  # type: ignore[arg-type]
        )


def wait_until_ready(
    proc: subprocess.Popen[bytes],
    *,
    pgdata: Path,
    host: str,
    port: int,
    log_file: Path,
    log_offset: int,
    timeout: float,
    as_other_user: bool,
) -> None:
    """Return once the server accepts connections.

    Raises :class:`PortInUse` or :class:`AccessDenied` for the races a retry can
    recover from (the server has exited then), :class:`EmbeddedPostgresError` with
    the log's tail otherwise; a server that is still starting at the deadline is
    stopped first.
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            log_text = log_since(log_file, log_offset)
            if "Address already in use" in log_text or "could not create any TCP/IP" in log_text:
                raise PortInUse
            if "Permission denied" in log_text and as_other_user:
                raise AccessDenied
            raise EmbeddedPostgresError(
                f"PostgreSQL exited with code {proc.returncode} during start-up\n"
                f"--- {log_file} (tail) ---\n{tail(log_file)}"
            )
        if is_ready(pgdata, host, port):
            return
        if time.monotonic() > deadline:
            terminate(proc, 5)
            raise EmbeddedPostgresError(
                f"PostgreSQL did not accept connections within {timeout:.0f}s\n"
                f"--- {log_file} (tail) ---\n{tail(log_file)}"
            )
        time.sleep(0.05)


def is_ready(pgdata: Path, host: str, port: int) -> bool:
    """postmaster.pid says 'ready' and the TCP port answers."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except OSError:
        return False
    if len(lines) < 8 or lines[7].strip() != "ready":
        return False
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Fast shutdown (SIGINT); immediate (SIGQUIT) then SIGKILL if it lingers; then the children."""
    if proc.poll() is not None:
        return
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        children = []
    for sig, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # Backends normally exit with the postmaster; make sure, since an orphaned
    # backend would keep the shared memory and the port's connections alive.
    _gone, alive = psutil.wait_procs(children, timeout=5)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


def stop_stale_postmaster(pgdata: Path) -> None:
    """A previous run that was SIGKILLed may have left its server running on ``pgdata``.

    It is ours (same data directory), nobody can be using it meaningfully, and it
    would block this start: stop it.
    """
    pidfile = pgdata / "postmaster.pid"
    try:
        lines = pidfile.read_text().splitlines()
        pid = int(lines[0].strip())
    except (OSError, ValueError, IndexError):
        return
    stale_socket_dir = Path(lines[4].strip()) if len(lines) > 4 and lines[4].strip() else None
    try:
        proc = psutil.Process(pid)
        is_ours = proc.name() == "postgres" and str(pgdata) in " ".join(proc.cmdline())
    except psutil.Error:
        is_ours = False
    if not is_ours:
        return  # PostgreSQL removes a stale lock file itself
    procs = [proc, *proc.children(recursive=True)]
    with contextlib.suppress(psutil.Error):
        proc.send_signal(signal.SIGINT)
    _gone, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    if stale_socket_dir is not None and stale_socket_dir.name.startswith(SOCKET_DIR_PREFIX):
        shutil.rmtree(stale_socket_dir, ignore_errors=True)
