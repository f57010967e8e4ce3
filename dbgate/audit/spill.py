"""The spill file: records that are hashed and chained but not yet in the database.

With ``audit.on_failure: buffer`` a writer that cannot reach the state database
appends its records here, in chain order, and replays them when the database
returns — the chain has no gap because the records were chained before they were
spilled. Each writer has its own file, ``<spill_dir>/<chain>.spill``, locked with
``flock`` for as long as the process lives:

* a second process can never write into it, so chains never interleave;
* a file whose lock can be taken belongs to a process that died (``kill -9``):
  the next writer to start on that host *adopts* it and replays it into the
  database under its original chain.

Format: JSON lines; the first is a header naming the chain and its writer (used to
register the chain if it never reached the database), the rest are
:mod:`dbgate.audit.serial` documents. Each append is flushed and fsynced before the
records count as spilled. Replay skips records the database already has (a spill
may race a commit whose acknowledgement was lost), so replaying twice is harmless.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dbgate.audit.serial import Document, DocumentError, dumps, read_jsonl

SUFFIX = ".spill"


class SpillFile:
    """One writer's own spill file, created on first use."""

    def __init__(self, directory: Path, chain: str, header: dict[str, Any], max_bytes: int) -> None:
        self.path = Path(directory) / f"{chain}{SUFFIX}"
        self._header = {"dbgate_audit_spill": 1, **header}
        self.max_bytes = max_bytes
        self._fd: int | None = None
        self.size = 0
        self.records = 0

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._fd = fd
            self._write([dumps(self._header)])
        return self._fd

    def _write(self, lines: list[str]) -> None:
        assert self._fd is not None
        data = ("\n".join(lines) + "\n").encode("utf-8")
        os.write(self._fd, data)
        os.fsync(self._fd)
        self.size += len(data)

    def room_for(self, docs: list[dict[str, Any]]) -> bool:
        need = sum(len(dumps(d)) + 1 for d in docs)
        return self.size + need <= self.max_bytes

    def append(self, docs: list[dict[str, Any]]) -> None:
        """Append and fsync (blocking: the writer runs it in a thread)."""
        self._open()
        self._write([dumps(d) for d in docs])
        self.records += len(docs)

    def read(self) -> Iterator[Document]:
        return read_documents(self.path)

    def clear(self) -> None:
        """Everything was replayed: remove the file (a new one is made if needed)."""
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            os.close(self._fd)
            self._fd = None
        self.size = 0
        self.records = 0

    @property
    def pending(self) -> bool:
        return self.records > 0

    def close(self) -> None:
        """Release the lock; a file with records stays for the next writer to adopt."""
        if self._fd is not None:
            if self.records == 0:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
            os.close(self._fd)
            self._fd = None


def read_header(path: Path) -> dict[str, Any]:
    """The header of a spill file; DocumentError when it has none (yet)."""
    with path.open(encoding="utf-8") as f:
        first = f.readline()
    try:
        header = json.loads(first)
    except ValueError:
        raise DocumentError(f"{path}: no spill header") from None
    if not isinstance(header, dict) or header.get("dbgate_audit_spill") != 1:
        raise DocumentError(f"{path}: not a dbgate audit spill file")
    return header


def read_documents(path: Path) -> Iterator[Document]:
    """The records of a spill file, in the order they were spilled."""
    with path.open(encoding="utf-8") as f:
        f.readline()
        for _, doc in read_jsonl(f):
            yield doc


class Orphan:
    """Another (dead) writer's spill file, locked by us until it is replayed."""

    def __init__(self, path: Path, fd: int, header: dict[str, Any]) -> None:
        self.path = path
        self.fd = fd
        self.header = header

    @property
    def chain(self) -> str:
        return str(self.header["chain"])

    def documents(self) -> Iterator[Document]:
        return read_documents(self.path)

    def done(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.release()

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def adopt_orphans(directory: Path, own: Path | None, known: set[Path]) -> list[Orphan]:
    """Spill files in ``directory`` whose writer is gone (their lock could be taken)."""
    found: list[Orphan] = []
    if not directory.is_dir():
        return found
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        if path == own or path in known:
            continue
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # a live writer holds it
            continue
        try:
            header = read_header(path)
        except (OSError, DocumentError):
            os.close(fd)  # being created right now, or not ours: leave it
            continue
        found.append(Orphan(path, fd, header))
    return found
