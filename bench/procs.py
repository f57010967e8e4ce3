"""Child-process plumbing shared by the benchmark targets.

Every long-lived process the benchmark starts (PgBouncer, dbgate) runs in its own
session, i.e. its own process group. Two reasons:

* a Ctrl-C in the terminal goes to the foreground process group only, so the
  children are not killed half-way while the runner is still printing; the runner
  then stops them itself, in order, from its ``finally``;
* stopping a child means signalling its whole group, so helpers it forked (dbgate
  ``--workers``) cannot outlive the benchmark.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago on ``host``.

    There is a small race (someone else may take it before our child binds), which
    is acceptable for a benchmark on a machine we own.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(
    host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None
) -> None:
    """Block until something accepts TCP connections on ``host:port``.

    Raises ``RuntimeError`` early when ``proc`` exits, so a child that failed to
    start is reported at once instead of after the whole timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"nothing accepted connections on {host}:{port} within {timeout:.0f}s"
                ) from None
            time.sleep(0.1)


class ManagedProcess:
    """A child started in its own process group, with its output in a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - lives as long as the child
        self.proc: subprocess.Popen[bytes] = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the child's output, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the whole group, then SIGKILL whatever is left after ``timeout``.

        Safe to call more than once and on a child that already exited.
        """
        try:
            if self.proc.poll() is None:
                _signal_group(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    _signal_group(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(5)
            # The leader may be gone while group members (forked workers) live on.
            _signal_group(self.proc.pid, signal.SIGKILL)
        finally:
            self._log.close()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def run_checked(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 600
) -> str:
    """Run a short command to completion, raising with its output when it fails.

    The child gets its own session too, so that Ctrl-C reaches only the runner,
    which then kills the child from here instead of leaving it half-done.
    """
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(env) if env is not None else None,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except BaseException:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited with status {proc.returncode}:\n{text[-3000:]}")
    return text


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def which(name: str) -> str | None:
    """``shutil.which`` that also looks in the sbin directories Debian uses."""
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        candidate = Path(d) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def group_cpu_seconds(pgid: int) -> tuple[float, float]:
    """(user, system) CPU seconds used so far by every live process in group ``pgid``.

    Read from ``/proc/<pid>/stat``. Divided by the transactions of a run, this gives
    the proxy's CPU cost per transaction, a number that other load on the machine
    barely moves, unlike TPS. Children that already exited are not counted, which
    does not matter for long-lived servers.
    """
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0.0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name (field 2) may contain spaces: split after its ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if int(fields[2]) != pgid:  # field 5, pgrp
            continue
        user += int(fields[11]) / tick  # field 14, utime
        system += int(fields[12]) / tick  # field 15, stime
    return user, system
