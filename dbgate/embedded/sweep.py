"""Cleaning up after owners that were killed outright.

``EmbeddedPostgres.stop()`` removes what it made, but a SIGKILLed process cannot: the
kernel stops its server (PDEATHSIG, see :mod:`dbgate.embedded.process`) and its socket
directory and relocated cluster stay behind. These sweeps run before a new server
starts and remove only what no live process can still be using.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import psutil

from dbgate.embedded.placement import ORIGIN_FILE, relocation_bases
from dbgate.embedded.process import OWNER_FILE, SOCKET_DIR_PREFIX


def pid_alive(path: Path) -> bool | None:
    """Is the PID on the first line of ``path`` alive? None when there is no such file."""
    try:
        pid = int(path.read_text().split()[0])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, IndexError):
        return False
    return psutil.pid_exists(pid)


def sweep_stale_socket_dirs() -> None:
    """Remove socket directories left by SIGKILLed owners.

    A directory is stale when neither its owner (``owner.pid``) nor the postmaster
    named in the socket's lock file is alive. Directories without an owner file come
    from an unknown writer and are only removed after an hour without a live postmaster.
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
            if any(pid_alive(lock) for lock in d.glob(".s.PGSQL.*.lock")):
                continue
            owner = pid_alive(d / OWNER_FILE)
            if owner is None:
                if time.time() - d.stat().st_mtime < 3600:
                    continue
            elif owner:
                continue
            shutil.rmtree(d, ignore_errors=True)
        except OSError:
            continue


def sweep_relocated_clusters() -> None:
    """Delete relocated clusters whose ``data_dir`` is gone (e.g. pytest's tmp_path cleanup).

    A cluster is kept while its origin's ``pgdata`` symlink still points at it, or
    while a postmaster runs on it.
    """
    for base in set(relocation_bases()):
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
                if pid_alive(d / "pgdata" / "postmaster.pid"):
                    continue
            except OSError:
                continue  # being created right now, or not ours
            shutil.rmtree(d, ignore_errors=True)
