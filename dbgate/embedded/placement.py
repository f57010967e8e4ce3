"""Where a cluster lives when the server runs as another OS user (we are root).

The server opens some files by absolute path for as long as it runs (a checkpoint
PANICs if ``global/pg_control`` becomes unreachable), so every ancestor of its
cluster must stay traversable by the server user. When an ancestor of the data
directory is private (mode without o+x) we do not loosen it: its owner meant it, and
may tighten it again — pytest resets ``/tmp/pytest-of-root`` to 0700 at every
session start. Instead the cluster goes to a root-owned directory under /var/tmp and
``data_dir/pgdata`` becomes a symlink to it; the log and password files stay in
``data_dir``. :func:`dbgate.embedded.sweep.sweep_relocated_clusters` deletes such a
cluster once its data directory is gone.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path

from dbgate.embedded.errors import EmbeddedPostgresError
from dbgate.embedded.os_user import ensure_traversable

RELOCATED_DIR = "dbgate-embedded"
ORIGIN_FILE = "origin"


def relocation_bases() -> tuple[Path, ...]:
    """Homes of relocated clusters, preferred first: /var/tmp survives reboots, /tmp is the fallback."""
    return (Path("/var/tmp") / RELOCATED_DIR, Path(tempfile.gettempdir()) / RELOCATED_DIR)


def has_private_ancestor(path: Path) -> bool:
    """Does reaching ``path`` need a directory that others may not traverse?"""
    return any(not p.stat().st_mode & stat.S_IXOTH for p in path.resolve().parents)


def relocation_base() -> Path:
    """The first usable home of relocated clusters, created root-owned and traversable."""
    for base in relocation_bases():
        try:
            base.mkdir(mode=0o711, exist_ok=True)
            base.chmod(0o711)
            return base
        except OSError:
            continue
    raise EmbeddedPostgresError("no writable place for the PostgreSQL cluster (/var/tmp, /tmp)")


def place_cluster(data_dir: Path) -> Path:
    """The cluster directory for ``data_dir``, placed so that the server user can always reach it.

    ``data_dir/pgdata`` itself when every ancestor is traversable (or a cluster is
    already there); otherwise a relocated directory that ``data_dir/pgdata`` links to.
    """
    link = data_dir / "pgdata"
    if link.is_symlink():
        pgdata = Path(os.readlink(link))
        pgdata.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
        (pgdata.parent / ORIGIN_FILE).write_text(f"{data_dir}\n")
        return pgdata
    if link.exists() or not has_private_ancestor(data_dir):
        ensure_traversable(link)
        return link
    target = relocation_base() / hashlib.sha256(str(data_dir).encode()).hexdigest()[:20]
    pgdata = target / "pgdata"
    # Link first: a concurrent sweep keeps any directory that a link points to.
    link.symlink_to(pgdata, target_is_directory=True)
    target.mkdir(mode=0o711, exist_ok=True)
    (target / ORIGIN_FILE).write_text(f"{data_dir}\n")
    return pgdata
