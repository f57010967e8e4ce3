"""What a data directory keeps besides the cluster: its lock and the superuser password."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from dbgate.embedded.errors import EmbeddedPostgresError

LOCK_FILE = "embedded.lock"
PASSWORD_FILE = "superuser.password"


class DataDirLock:
    """One manager per data directory at a time.

    Without it a second ``dbgate demo`` on the same directory would take the first
    one's running server for a leftover and stop it. flock is released by the kernel
    when the holder dies, so a SIGKILLed owner never blocks a restart.
    """

    def __init__(self, data_dir: Path) -> None:
        self._path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock (idempotent); refuse clearly, naming the holder, when it is taken."""
        if self._fd is not None:
            return
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise EmbeddedPostgresError(
                f"{self._path.parent} is in use by another process (pid {holder}); "
                "stop it or choose another data directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing drops the flock


def read_stored_password(data_dir: Path) -> str | None:
    """The superuser password a previous run stored in ``data_dir``, if any."""
    try:
        value = (data_dir / PASSWORD_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    return value or None


def store_password(data_dir: Path, password: str) -> None:
    """Write the superuser password (mode 0600), replacing the file atomically."""
    path = data_dir / PASSWORD_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    os.replace(tmp, path)
