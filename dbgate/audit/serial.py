"""One written form of a record for files: JSON lines and CSV rows.

The same document serves three purposes, so a record read back is always the
record that was hashed: the spill file (records waiting for the state database),
``audit export`` (JSON lines or CSV), and ``audit verify --file`` (which rebuilds
the canonical form from it). A document carries every hashed field plus
``prev_hash``, ``hash`` and ``digest`` (hex) and, when it came from the database,
``id``.

Timestamps are ISO 8601 in UTC with six fractional digits; ``details`` is the stored
JSON text, as a string, because its exact text is what the hash covers.

A *link* document (``"kind": "link"``) stands for a record an export left out (an
``--identity`` filter): it carries only ``chain``, ``seq``, ``logged_at``,
``prev_hash``, ``digest`` and ``hash``, enough to check that the chain is unbroken
without showing the record.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from dbgate.audit.canonical import FIELDS, INDEX, NAMES, FieldType, canonical, digest
from dbgate.audit.times import iso, parse_iso, to_us

LINK_KIND = "link"
CSV_COLUMNS: tuple[str, ...] = ("id", *NAMES, "digest", "prev_hash", "hash")


class DocumentError(ValueError):
    """A line of a file is not a record this code can read."""


@dataclass(slots=True)
class Document:
    """A record as read from a file or the database."""

    values: list[Any] | None  # None for a link
    chain: str
    seq: int
    logged_at: int
    prev_hash: bytes
    hash: bytes
    digest: bytes | None  # as given in the file (links and exports); None from the database
    id: int | None = None

    @property
    def is_link(self) -> bool:
        return self.values is None

    @property
    def kind(self) -> str:
        return LINK_KIND if self.values is None else (self.values[INDEX["kind"]] or "")

    @property
    def event(self) -> str:
        return "" if self.values is None else (self.values[INDEX["event"]] or "")


# ---------------------------------------------------------------------- to files


def to_document(
    values: list[Any], prev_hash: bytes, hash_: bytes, *, id: int | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if id is not None:
        out["id"] = id
    for (name, kind), v in zip(FIELDS, values, strict=True):
        if kind is FieldType.TIME:
            out[name] = None if v is None else iso(v)
        elif kind is FieldType.ARRAY:
            out[name] = list(v) if v else None
        else:
            out[name] = v
    out["digest"] = digest(canonical(values)).hex()
    out["prev_hash"] = prev_hash.hex()
    out["hash"] = hash_.hex()
    return out


def link_document(
    chain: str, seq: int, logged_at: int, prev_hash: bytes, digest_: bytes, hash_: bytes
) -> dict[str, Any]:
    return {
        "kind": LINK_KIND,
        "chain": chain,
        "seq": seq,
        "logged_at": iso(logged_at),
        "digest": digest_.hex(),
        "prev_hash": prev_hash.hex(),
        "hash": hash_.hex(),
    }


def dumps(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


#: A CSV cell that begins with one of these is a formula to a spreadsheet (and to
#: some SIEM viewers): ``=HYPERLINK(...)`` as an application name, a user name typed
#: at login. Such a cell gets a ``'`` in front — so does one that begins with ``'``,
#: which keeps it reversible: :func:`csv_cell_value` takes it off again.
_FORMULA_START = frozenset("=+-@\t\r'")


def csv_row(doc: Mapping[str, Any]) -> list[str]:
    """The CSV cells of a document: empty for absent, JSON for arrays; a cell that
    would start a spreadsheet formula starts with ``'`` instead."""
    cells = []
    for name in CSV_COLUMNS:
        v = doc.get(name)
        if v is None:
            cell = ""
        elif isinstance(v, bool):
            cell = "true" if v else "false"
        elif isinstance(v, list):
            cell = json.dumps(v, ensure_ascii=False, separators=(",", ":"))
        else:
            cell = str(v)
        if cell and cell[0] in _FORMULA_START:
            cell = "'" + cell
        cells.append(cell)
    return cells


def csv_cell_value(cell: str) -> str:
    """A cell of an exported CSV as the document had it (:func:`csv_row`'s ``'``
    taken off)."""
    return cell[1:] if cell[:1] == "'" else cell


# ---------------------------------------------------------------------- from files


def _hex(doc: Mapping[str, Any], key: str) -> bytes:
    v = doc.get(key)
    if not isinstance(v, str):
        raise DocumentError(f"{key} is missing")
    try:
        b = bytes.fromhex(v)
    except ValueError:
        raise DocumentError(f"{key} is not hex") from None
    if len(b) != 32:
        raise DocumentError(f"{key} is not 32 bytes")
    return b


def _int(v: Any, name: str) -> int | None:
    if v is None or v == "":
        return None
    if isinstance(v, bool):
        raise DocumentError(f"{name} is not an integer")
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            pass
    raise DocumentError(f"{name} is not an integer")


def _time(v: Any, name: str) -> int | None:
    if v is None or v == "":
        return None
    if not isinstance(v, str):
        raise DocumentError(f"{name} is not a timestamp")
    try:
        return parse_iso(v)
    except ValueError:
        raise DocumentError(f"{name} is not a timestamp") from None


def _bool(v: Any, name: str) -> bool | None:
    if v is None or v == "":
        return None
    if isinstance(v, bool):
        return v
    if v in ("true", "t"):
        return True
    if v in ("false", "f"):
        return False
    raise DocumentError(f"{name} is not a boolean")


def _array(v: Any, name: str) -> list[str | None] | None:
    if v is None or v == "":
        return None
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            raise DocumentError(f"{name} is not a JSON array") from None
    if not isinstance(v, list) or not all(x is None or isinstance(x, str) for x in v):
        raise DocumentError(f"{name} is not an array of strings")
    return v or None


def _text(v: Any, name: str) -> str | None:
    if v is None or v == "":
        return None
    if not isinstance(v, str):
        raise DocumentError(f"{name} is not text")
    return v


_READERS = {
    FieldType.TEXT: _text,
    FieldType.INT: _int,
    FieldType.TIME: _time,
    FieldType.BOOL: _bool,
    FieldType.ARRAY: _array,
    FieldType.JSON: _text,
}


def from_document(doc: Mapping[str, Any]) -> Document:
    """A :class:`Document` from a parsed JSON line or CSV row (strings everywhere)."""
    if not isinstance(doc, Mapping):
        raise DocumentError("not a JSON object")
    prev, h = _hex(doc, "prev_hash"), _hex(doc, "hash")
    given_digest = _hex(doc, "digest") if doc.get("digest") not in (None, "") else None
    chain = _text(doc.get("chain"), "chain")
    seq = _int(doc.get("seq"), "seq")
    logged_at = _time(doc.get("logged_at"), "logged_at")
    if chain is None or seq is None or logged_at is None:
        raise DocumentError("chain, seq and logged_at are required")
    record_id = _int(doc.get("id"), "id")
    if doc.get("kind") == LINK_KIND:
        if given_digest is None:
            raise DocumentError("a link needs its digest")
        return Document(None, chain, seq, logged_at, prev, h, given_digest, record_id)
    values = [_READERS[kind](doc.get(name), name) for name, kind in FIELDS]
    return Document(values, chain, seq, logged_at, prev, h, given_digest, record_id)


def _one_of_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different. ``{"statement": "SELECT 1", ...,
    "statement": "<the record's>"}`` would verify (the last one counts here) and show
    another text to a reader that keeps the first."""
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DocumentError(f"{key} is given twice")
            seen.add(key)
    return doc


def read_jsonl(lines: Iterable[str]) -> Iterator[tuple[int, Document]]:
    """(line number, document) for every non-empty line; DocumentError names the line."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line, object_pairs_hook=_one_of_each)
            yield n, from_document(doc)
        except (ValueError, DocumentError) as e:
            raise DocumentError(f"line {n}: {e}") from None


def from_db_values(record: Mapping[str, Any]) -> list[Any]:
    """Hashed values of a row of ``dbgate.audit_log`` (asyncpg record) in FIELDS order."""
    out: list[Any] = []
    for name, kind in FIELDS:
        v = record[name]
        if kind is FieldType.TIME:
            v = to_us(v)
        elif kind is FieldType.ARRAY:
            v = list(v) if v else None
        out.append(v)
    return out
