"""The :class:`EmbeddedPostgres` manager: one server's whole lifecycle, in order.

The steps themselves live beside it, one concern per module: the OS user
(:mod:`~dbgate.embedded.os_user`), where the cluster goes
(:mod:`~dbgate.embedded.placement`), initdb and TLS (:mod:`~dbgate.embedded.cluster`),
the postmaster process (:mod:`~dbgate.embedded.process`), the data directory's lock
and password (:mod:`~dbgate.embedded.datadir`) and cleaning up after killed owners
(:mod:`~dbgate.embedded.sweep`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from dbgate.embedded import cluster, datadir, process
from dbgate.embedded.binaries import find_free_port, pg_bin_dir
from dbgate.embedded.cluster import SUPERUSER
from dbgate.embedded.errors import AccessDenied, EmbeddedPostgresError, PortInUse
from dbgate.embedded.os_user import (
    ServerUser,
    chown_tree,
    ensure_system_user,
    ensure_traversable,
    is_root,
    make_installation_usable,
)
from dbgate.embedded.placement import place_cluster
from dbgate.embedded.sweep import sweep_relocated_clusters, sweep_stale_socket_dirs

# Settings for scratch servers: no durability, enough connections for a test suite
# that opens many sessions through the proxy and directly.
DEFAULT_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "log_min_messages": "warning",
    "log_connections": "off",
    "timezone": "UTC",
}


class EmbeddedPostgres:
    """Manage one PostgreSQL server process for tests and the demo.

    Usage::

        with EmbeddedPostgres(tmp_path / "pg") as pg:
            asyncpg.connect(pg.dsn())

    ``password``: the superuser password. When ``None`` it is read from
    ``data_dir/superuser.password`` if a previous run left one there, otherwise a
    random one is generated — so a persistent data directory keeps stable DSNs.
    An explicit password that differs from the stored one is applied with
    ``ALTER ROLE`` at start.
    ``port``: ``None`` picks a free port (and picks again if it is taken meanwhile).
    ``settings``: extra/overriding ``postgres -c`` settings (e.g. for benchmarks).
    ``bin_dir``: another PostgreSQL installation's ``bin`` directory (e.g. Debian's
    ``/usr/lib/postgresql/15/bin``, built with SSL support, which the wheel is not).
    ``tls``: ``(certificate, key)`` PEM files: copied into the cluster with the
    ownership and mode PostgreSQL insists on, and ``ssl = on``.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        password: str | None = None,
        host: str = "127.0.0.1",
        settings: Mapping[str, str] | None = None,
        start_timeout: float = 60.0,
        bin_dir: Path | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self._bin_dir = Path(bin_dir) if bin_dir is not None else None
        self._tls = tls
        self._requested_port = port
        self._port: int | None = port
        self._requested_password = password
        self._password: str | None = password
        self._host = host
        self._settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self._start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._socket_dir: Path | None = None
        self._pgdata: Path | None = None
        self._dir_lock = datadir.DataDirLock(self.data_dir)
        self._server_user: ServerUser | None = None
        self._lock = threading.RLock()  # stop() may run inside a failing start()

    # ------------------------------------------------------------------ properties

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedPostgresError("port is not known before start()")
        return self._port

    @property
    def socket_dir(self) -> Path:
        if self._socket_dir is None:
            raise EmbeddedPostgresError("socket_dir is not known before start()")
        return self._socket_dir

    @property
    def user(self) -> str:
        return SUPERUSER

    @property
    def password(self) -> str:
        if self._password is None:
            raise EmbeddedPostgresError("password is not known before start()")
        return self._password

    @property
    def bin_dir(self) -> Path:
        return self._bin_dir if self._bin_dir is not None else pg_bin_dir()

    @property
    def pgdata(self) -> Path:
        """The cluster directory the server runs on: ``data_dir/pgdata`` or, when that
        is a symlink to a relocated cluster (see :mod:`dbgate.embedded.placement`), its target."""
        return self._pgdata if self._pgdata is not None else self.data_dir / "pgdata"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def pid(self) -> int | None:
        """PID of the postmaster while running."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def dsn(self, dbname: str = "postgres") -> str:
        """postgresql:// URL over TCP with the superuser password (works with asyncpg, psycopg, psql)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (
            f"postgresql://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{host}:{self.port}/{quote(dbname, safe='')}"
        )

    def psql_env(self, dbname: str = "postgres") -> dict[str, str]:
        """Environment for ``psql``/libpq tools: the current environment plus PG* variables."""
        env = dict(os.environ)
        env.update(
            PGHOST=self.host,
            PGPORT=str(self.port),
            PGUSER=self.user,
            PGPASSWORD=self.password,
            PGDATABASE=dbname,
            PGSSLMODE="disable",
        )
        return env

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL with the bundled ``psql`` over TCP (with the password); return stdout.

        Raises :class:`EmbeddedPostgresError` with psql's message on failure.
        """
        result = subprocess.run(
            [str(self.bin_dir / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
            env=self.psql_env(dbname),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise EmbeddedPostgresError(f"psql failed: {result.stderr.strip()}")
        return result.stdout

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> EmbeddedPostgres:
        """initdb if needed, start the postmaster, wait until it accepts connections."""
        with self._lock:
            if self.running:
                return self
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._dir_lock.acquire()
            try:
                self._start_locked()
            except BaseException:
                self._dir_lock.release()
                raise
            return self

    def _start_locked(self) -> None:
        """The part of start() that runs with the data directory locked."""
        self._prepare_os_user()
        self._resolve_password()
        if not (self.pgdata / "PG_VERSION").exists():
            cluster.initdb(self.bin_dir, self.pgdata, self.password, self._server_user)
            datadir.store_password(self.data_dir, self.password)
        if self._tls is not None:
            self._settings.update(cluster.install_tls(self.pgdata, *self._tls, self._server_user))
        process.stop_stale_postmaster(self.pgdata)
        sweep_stale_socket_dirs()
        self._socket_dir = process.make_socket_dir(self._server_user)
        try:
            self._spawn_with_retries()
        except BaseException:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
            raise
        atexit.register(self.stop)
        try:
            self._apply_password()
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 15.0) -> None:
        """Fast shutdown (SIGINT); immediate (SIGQUIT) then SIGKILL if it lingers.

        Idempotent. Waits for the postmaster *and its children* to be gone, then
        removes the private socket directory.
        """
        with self._lock:
            with contextlib.suppress(Exception):
                atexit.unregister(self.stop)
            proc, self._proc = self._proc, None
            if proc is not None:
                process.terminate(proc, timeout)
            if self._socket_dir is not None:
                shutil.rmtree(self._socket_dir, ignore_errors=True)
                self._socket_dir = None
            self._dir_lock.release()

    # ------------------------------------------------------------------ internals

    def _prepare_os_user(self) -> None:
        """As root: the server's OS user, a usable installation and a reachable cluster."""
        if not is_root():
            return
        user = self._server_user = ensure_system_user()
        make_installation_usable(self.bin_dir)
        sweep_relocated_clusters()
        self._pgdata = place_cluster(self.data_dir)
        if self.pgdata.exists() and self.pgdata.stat().st_uid != user.uid:
            chown_tree(self.pgdata, user)

    def _resolve_password(self) -> None:
        """Explicit password, else the stored one, else a fresh random one."""
        stored = datadir.read_stored_password(self.data_dir)
        if self._requested_password is not None:
            self._password = self._requested_password
        elif stored is not None:
            self._password = stored
        else:
            self._password = secrets.token_urlsafe(18)

    def _spawn_with_retries(self) -> None:
        """Start the postmaster, retrying the races we can recover from.

        With an automatic port: another process grabbed it. As root: an ancestor
        lost its traversal bit (see :func:`dbgate.embedded.cluster.initdb`).
        """
        attempts = 5
        for attempt in range(attempts):
            if self._requested_port is None:
                self._port = find_free_port(self.host)
            try:
                self._spawn_and_wait()
                return
            except AccessDenied:
                # Someone took back the traversal bit on an ancestor between our
                # chmod and the server's chdir; restore it and retry.
                if attempt == attempts - 1:
                    raise EmbeddedPostgresError(
                        f"PostgreSQL cannot reach {self.pgdata} (permission denied)\n"
                        f"--- {self.log_file} ---\n{process.tail(self.log_file)}"
                    ) from None
                ensure_traversable(self.pgdata)
            except PortInUse:
                if self._requested_port is not None or attempt == attempts - 1:
                    raise EmbeddedPostgresError(
                        f"port {self._port} on {self.host} is in use\n"
                        f"--- {self.log_file} ---\n{process.tail(self.log_file)}"
                    ) from None

    def _spawn_and_wait(self) -> None:
        assert self._socket_dir is not None and self._port is not None
        settings = {
            **self._settings,
            "listen_addresses": self.host,
            "port": str(self._port),
            "unix_socket_directories": str(self._socket_dir),
        }
        cmd = process.postmaster_command(self.bin_dir, self.pgdata, settings)
        log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        # Known before the wait, so that stop() can reach a server interrupted mid-start.
        self._proc = process.spawn_postmaster(cmd, self.log_file, self._server_user)
        try:
            process.wait_until_ready(
                self._proc,
                pgdata=self.pgdata,
                host=self.host,
                port=self._port,
                log_file=self.log_file,
                log_offset=log_offset,
                timeout=self._start_timeout,
                as_other_user=self._server_user is not None,
            )
        except (EmbeddedPostgresError, AccessDenied, PortInUse):
            self._proc = None
            raise

    def _apply_password(self) -> None:
        """Make the role's password match ours when the stored one differs or is unknown.

        Covers an explicit password on an existing data directory and a data
        directory whose password file was lost; the socket uses trust auth.
        """
        if datadir.read_stored_password(self.data_dir) == self.password:
            return
        cluster.set_superuser_password(self.bin_dir, self.socket_dir, self.port, self.password)
        datadir.store_password(self.data_dir, self.password)

    def __repr__(self) -> str:
        state = f"pid={self.pid} port={self._port}" if self.running else "stopped"
        return f"<EmbeddedPostgres {self.data_dir} {state}>"
