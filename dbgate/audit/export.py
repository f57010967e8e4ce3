"""``dbgate audit export``: stream records to a SIEM or an evidence folder.

Records come out in chain order (``chain``, ``seq``), each with ``prev_hash``,
``digest`` and ``hash``, so the file verifies on its own
(``dbgate audit verify --file``). ``--since``/``--until`` select by ``logged_at``,
the writer's time, which only grows along a chain: every chain's part of the file
is one unbroken run. ``--identity`` keeps the chains whole too: a record of another
identity is written as a *link* (chain, seq, hashes, no content), so the file still
proves that nothing between two exported records was removed.

One ``REPEATABLE READ`` snapshot: records committed while exporting are not half in.
"""

from __future__ import annotations

import csv
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal, TextIO

from dbgate.audit.canonical import INDEX, canonical, digest
from dbgate.audit.serial import (
    CSV_COLUMNS,
    csv_row,
    dumps,
    from_db_values,
    link_document,
    to_document,
)

ExportFormat = Literal["jsonl", "csv"]
_COLUMNS = (
    "id, format, chain, seq, logged_at, at, kind, event, replica, session_id, identity, "
    "application_name, client_addr, database, purpose, model, statement, statement_length, "
    "params, fingerprint, categories, tables, columns, decision, rule, approval_id, outcome, "
    "rows, duration_us, tokenized, actor, reason, details, scrubbed, escaped, "
    "decode(prev_hash, 'hex') AS prev, decode(hash, 'hex') AS hash"
)


def parse_when(value: str) -> datetime:
    """A ``--since``/``--until`` value: an ISO date or date-time; UTC unless it says."""
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"not a date or time: {value!r} (use 2026-11-01 or 2026-11-01T12:00:00Z)"
        ) from None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def month_range(month: date) -> tuple[datetime, datetime]:
    first = datetime(month.year, month.month, 1, tzinfo=UTC)
    nxt = (first + timedelta(days=32)).replace(day=1)
    return first, nxt


class _Sink:
    def __init__(self, out: TextIO, fmt: ExportFormat) -> None:
        self.fmt = fmt
        self.out = out
        self.csv = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
        if self.csv is not None:
            self.csv.writerow(CSV_COLUMNS)

    def write(self, doc: dict[str, Any]) -> None:
        if self.csv is not None:
            self.csv.writerow(csv_row(doc))
        else:
            self.out.write(dumps(doc) + "\n")


async def export_records(
    conn: Any,
    out: TextIO,
    fmt: ExportFormat = "jsonl",
    since: datetime | None = None,
    until: datetime | None = None,
    identity: str | None = None,
    fetch: int = 2_000,
) -> tuple[int, int]:
    """Write records to ``out`` inside the caller's transaction on ``conn``.

    Returns (records written in full, links written for other identities).
    """
    where, args = [], []
    if since is not None:
        args.append(since)
        where.append(f"logged_at >= ${len(args)}")
    if until is not None:
        args.append(until)
        where.append(f"logged_at < ${len(args)}")
    query = f"SELECT {_COLUMNS} FROM dbgate.audit_log"
    if where:
        query += " WHERE " + " AND ".join(where)
    query += " ORDER BY chain, seq, id"
    sink = _Sink(out, fmt)
    full = links = 0
    cursor = await conn.cursor(query, *args)
    identity_at = INDEX["identity"]
    while True:
        rows = await cursor.fetch(fetch)
        if not rows:
            break
        for r in rows:
            values = from_db_values(r)
            prev, h = bytes(r["prev"]), bytes(r["hash"])
            if identity is not None and values[identity_at] != identity:
                sink.write(
                    link_document(
                        values[INDEX["chain"]],
                        values[INDEX["seq"]],
                        values[INDEX["logged_at"]],
                        prev,
                        digest(canonical(values)),
                        h,
                    )
                )
                links += 1
            else:
                sink.write(to_document(values, prev, h, id=r["id"]))
                full += 1
    return full, links


async def export(
    dsn: str,
    out: TextIO,
    fmt: ExportFormat = "jsonl",
    since: datetime | None = None,
    until: datetime | None = None,
    identity: str | None = None,
) -> tuple[int, int]:
    """Connect to the state database and export (see :func:`export_records`)."""
    import asyncpg

    conn = await asyncpg.connect(dsn, server_settings={"application_name": "dbgate-audit-export"})
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            return await export_records(conn, out, fmt, since, until, identity)
    finally:
        await conn.close()
