"""Verify an ``audit export`` file on its own, and read chain heads anchored outside
the database (a head file, or the operator log's lines)."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from dbgate.audit.canonical import canonical
from dbgate.audit.serial import (
    CSV_COLUMNS,
    Document,
    DocumentError,
    csv_cell_value,
    from_document,
    read_jsonl,
)
from dbgate.audit.times import parse_iso
from dbgate.audit.verify.chains import Report, Verifier

# the writer's line (AuditWriter.log_head), written unmasked
_HEAD_TEXT = re.compile(
    r"audit chain head: chain=(\S+)\s+seq=(\d+)\s+hash=([0-9a-f]{64})(?:\s+logged_at=(\S+))?"
)


def read_heads(path: Path) -> list[tuple[str, int, bytes, int | None]]:
    """Chain heads from a head file (JSON lines) or from operator log lines
    (``audit chain head: chain=... seq=... hash=... logged_at=...``): chain, seq,
    hash, and when the head record was logged (µs; None from lines that do not say)."""
    heads: list[tuple[str, int, bytes, int | None]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                obj = json.loads(line)
                if isinstance(obj, dict) and "chain" not in obj and isinstance(obj.get("msg"), str):
                    # the operator log in JSON (logging.format json, or auto to a file)
                    if obj.get("logger") == "dbgate.audit":
                        head = _log_head(path, n, obj["msg"])
                        if head is not None:
                            heads.append(head)
                    continue
                logged = obj.get("logged_at")
                heads.append(
                    (
                        str(obj["chain"]),
                        int(obj["seq"]),
                        bytes.fromhex(obj["hash"]),
                        parse_iso(logged) if logged is not None else None,
                    )
                )
                continue
            except (ValueError, KeyError, TypeError):
                raise DocumentError(f"{path}:{n}: not a chain head") from None
        head = _log_head(path, n, line)
        if head is not None:
            heads.append(head)
    return heads


def _log_head(path: Path, n: int, text: str) -> tuple[str, int, bytes, int | None] | None:
    """The chain head an operator log line reports, or None for other lines."""
    m = _HEAD_TEXT.search(text)
    if m is None:
        return None
    try:
        logged = parse_iso(m.group(4)) if m.group(4) else None
    except ValueError:
        raise DocumentError(f"{path}:{n}: not a chain head") from None
    return m.group(1), int(m.group(2)), bytes.fromhex(m.group(3)), logged


def _documents(path: Path) -> Iterator[tuple[int, Document]]:
    with path.open(encoding="utf-8", newline="") as f:
        first = f.readline()
        f.seek(0)
        if first.lstrip().startswith("{"):
            yield from read_jsonl(f)
            return
        reader = csv.DictReader(f)
        if reader.fieldnames is None or list(reader.fieldnames) != list(CSV_COLUMNS):
            raise DocumentError(f"{path}: neither JSON lines nor dbgate's CSV columns")
        for n, row in enumerate(reader, 2):
            try:
                yield (
                    n,
                    from_document(
                        {k: csv_cell_value(v) if isinstance(v, str) else v for k, v in row.items()}
                    ),
                )
            except DocumentError as e:
                raise DocumentError(f"line {n}: {e}") from None


def verify_file(path: Path, heads: Iterable[tuple[Any, ...]] = ()) -> Report:
    """Verify an ``audit export`` file (JSON lines or CSV) on its own."""
    verifier = Verifier(str(path), heads=heads, segments_allowed=True)
    links = 0
    try:
        for _, doc in _documents(path):
            links += doc.values is None
            content = canonical(doc.values) if doc.values is not None else None
            end = doc.values is not None and doc.kind == "audit" and doc.event == "chain_end"
            verifier.feed(
                doc.chain, doc.seq, doc.id, doc.prev_hash, doc.hash, content, doc.digest, end
            )
    except DocumentError as e:
        raise DocumentError(f"{path}: {e}") from None
    if links:
        # an --identity export's; in a full export, a record turned into a link
        # would hide its content and still verify
        verifier.report.notes.append(
            f"{links:,} record(s) are links: the file holds their hashes, not their content"
        )
    return verifier.finish()
