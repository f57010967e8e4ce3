"""A classification worker process: classifies one statement at a time for the gate,
or traces its PII lineage.

Run as ``python -m dbgate.gate.classify_worker [--niced] [MEMORY_MB]`` (the pool
runs it so, its priority lowered before any import: ``--niced``) by
:class:`dbgate.gate.classify_pool.ClassifyPool`, which talks to it over its standard
input and output in frames (:func:`write_frame`): a request is a pickled
:class:`Request` followed by the statement's UTF-8 text; a reply is
``(job, "ok", classification, fingerprint_is_text)`` or ``(job, "error", name)``; a
request to trace PII (``coverage`` set) is answered ``(job, "ok", analysis, False)``
with the :class:`~dbgate.pii.lineage.Analysis` of the statement.

Why a process and not a thread: PostgreSQL's parser releases the GIL, but decoding
its JSON tree and walking it hold it for as long as they run — seconds for a
multi-megabyte statement — and a thread cannot be stopped when its time is up. A
process runs beside the event loop and is killed when its budget is spent.

The classification travels back compact: without ``fingerprint_source`` when that is
the text itself (the gate has it), so a reply is as large as the facts found, not as
the statement. The worker keeps the key catalogs and PII coverages (the PII catalog
applied to a schema snapshot) it was sent, by the gate's key, so each crosses the
pipe once per worker, not once per statement. Standard output
carries frames only: anything else the process prints goes to standard error.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import sys
from dataclasses import dataclass, replace
from typing import Any, BinaryIO

__all__ = ["HEADER", "Request", "main", "write_frame"]

#: A frame: two big-endian lengths (pickled part, text part), then both parts.
HEADER = struct.Struct(">II")


@dataclass(frozen=True, slots=True)
class Request:
    """One statement to classify, with what :func:`~dbgate.policy.classify.classify`
    needs besides its text. ``catalog`` is the gate's key for a key catalog the worker
    keeps, ``relations`` that catalog's relations when the worker does not have them
    yet, and ``forget`` tells it to drop every catalog it kept first.

    ``trace``: trace the statement's PII lineage instead, against the coverage the
    gate keys so (``coverage``: that :class:`~dbgate.pii.coverage.Coverage`, when the
    worker does not have it yet); ``forget`` drops the coverages kept as well."""

    job: int
    prepared: dict[str, Any] | None = None
    catalog: tuple[int, int | str] | None = None
    search_path: tuple[str, ...] = ()
    relations: Any = None
    forget: bool = False
    trace: int | None = None
    coverage: Any = None


def write_frame(out: BinaryIO, head: bytes, text: bytes = b"") -> None:
    out.write(HEADER.pack(len(head), len(text)) + head)
    if text:
        out.write(text)
    out.flush()


def _read_exactly(src: BinaryIO, n: int) -> bytes | None:
    data = src.read(n) if n else b""
    return data if len(data) == n else None


def _serve(src: BinaryIO, out: BinaryIO) -> None:
    from dbgate.policy.classify import classify
    from dbgate.policy.keys import KeyCatalog

    catalogs: dict[tuple[int, int | str], Any] = {}
    coverages: dict[int, Any] = {}
    write_frame(out, pickle.dumps(("ready", os.getpid())))
    while True:
        header = _read_exactly(src, HEADER.size)
        if header is None:
            return  # the gate is gone (or closed the pipe): nothing left to do
        head_len, text_len = HEADER.unpack(header)
        head, text = _read_exactly(src, head_len), _read_exactly(src, text_len)
        if head is None or text is None:
            return
        request: Request = pickle.loads(head)
        sql = text.decode("utf-8", "surrogatepass")
        if request.forget:
            catalogs.clear()
            coverages.clear()
        if request.trace is not None:
            write_frame(out, _trace(request, sql, coverages))
            del sql, text
            continue
        keys = None
        if request.catalog is not None:
            if request.relations is not None:
                catalogs[request.catalog] = request.relations
            relations = catalogs.get(request.catalog)
            if relations is None:
                write_frame(out, pickle.dumps((request.job, "error", "missing key catalog")))
                continue
            keys = KeyCatalog(relations, request.search_path, request.catalog[1])
        try:
            result = classify(sql, prepared=request.prepared, keys=keys)
            same = result.fingerprint_source == sql
            if same:
                result = replace(result, fingerprint_source="")
            reply = pickle.dumps((request.job, "ok", result, same))
        except BaseException as exc:  # classify never raises; MemoryError still may
            reply = pickle.dumps((request.job, "error", type(exc).__name__))
        del sql, text
        write_frame(out, reply)


def _trace(request: Request, sql: str, coverages: dict[int, Any]) -> bytes:
    """The reply to a request to trace PII through ``sql``."""
    from dbgate.pii.lineage import analyze

    if request.coverage is not None:
        coverages[request.trace] = request.coverage  # type: ignore[index]
    coverage = coverages.get(request.trace)  # type: ignore[arg-type]
    if coverage is None:
        return pickle.dumps((request.job, "error", "missing PII coverage"))
    try:
        # no session: its cursors and prepared statements stay with the gate, and
        # what the walk cannot follow without them is unknown (tokenized)
        return pickle.dumps((request.job, "ok", analyze(sql, coverage, None), False))
    except BaseException as exc:  # analyze never raises; MemoryError still may
        return pickle.dumps((request.job, "error", type(exc).__name__))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    # The gate stops its workers; a Ctrl-C in the terminal is its business.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Below the proxy and the server in the scheduler's eyes: a hostile statement
    # burning its time budget must not take a core from the sessions' work. The pool
    # lowers it before any import (``--niced``); run alone, it does so here.
    if args and args[0] == "--niced":
        args = args[1:]
    else:
        os.nice(10)
    if args and int(args[0]) > 0:
        import resource

        limit = int(args[0]) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints go to stderr
    sys.stdout = sys.stderr
    _serve(sys.stdin.buffer, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
