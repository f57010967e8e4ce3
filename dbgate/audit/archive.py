"""``dbgate audit archive``: move the oldest month out of the live audit table.

Retention without breaking verification. In one transaction:

1. lock the month's partition against writes (``SHARE``);
2. export its records to a file (JSON lines, with hashes: it verifies on its own);
3. check that file with the same verifier as ``audit verify --file``;
4. ``dbgate.audit_detach_month``: record, for every chain, the last ``(seq, hash)``
   of that month in ``dbgate.audit_anchors`` — where the remaining records of the
   chain continue from — and detach the partition;
5. with ``--drop``, drop the detached table.

If anything fails, the transaction rolls back, the file is removed, and nothing
changed. The drop (step 5) runs after the commit.
Afterwards ``audit verify --dsn`` starts each chain at its anchor, and the archive
file keeps the proof for the month that left (its last record of each chain must be
the anchor).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from dbgate.audit.errors import AuditError
from dbgate.audit.export import export_records, month_range
from dbgate.audit.verify import Report, verify_file


async def archive_month(
    dsn: str, month: date, output: Path, drop: bool = False
) -> tuple[str, int, Report]:
    """Archive ``month`` (must be the oldest attached one); returns (partition, records, file report)."""
    import asyncpg

    part = f"audit_events_{month.year:04d}_{month.month:02d}"
    first, nxt = month_range(month)
    conn = await asyncpg.connect(dsn, server_settings={"application_name": "dbgate-audit-archive"})
    try:
        async with conn.transaction():
            await _check_archivable(conn, part, month)
            await conn.execute(f'LOCK TABLE dbgate."{part}" IN SHARE MODE')
            with output.open("x", encoding="utf-8") as out:
                try:
                    full, _ = await export_records(conn, out, "jsonl", first, nxt)
                except BaseException:
                    output.unlink()
                    raise
            try:
                report = verify_file(output)
                if not report.ok:
                    raise AuditError(
                        "the exported month does not verify; nothing was detached:\n"
                        + report.text()
                    )
                await conn.fetchval("SELECT dbgate.audit_detach_month($1)", first.date())
            except BaseException:
                output.unlink()
                raise
        if drop:  # after the commit: the export's cursor held the table until then
            await conn.execute(f'DROP TABLE dbgate."{part}"')
    except asyncpg.PostgresError as e:
        raise AuditError(str(e)) from e
    finally:
        await conn.close()
    return part, full, report


async def _check_archivable(conn: Any, part: str, month: date) -> None:
    """Refuse before writing anything: only the oldest attached past month leaves."""
    attached = [
        r[0]
        for r in await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'dbgate.audit_events'::regclass ORDER BY 1"
        )
    ]
    current = await conn.fetchval("SELECT date_trunc('month', now() AT TIME ZONE 'UTC')::date")
    if month >= current:
        raise AuditError(
            f"{month:%Y-%m} is the current month (UTC) or later; only past months are archived"
        )
    if part not in attached:
        raise AuditError(f"no attached audit partition for {month:%Y-%m} ({part})")
    if attached[0] != part:
        raise AuditError(
            f"{month:%Y-%m} is not the oldest attached month (that is {attached[0]}); "
            "archive months in order"
        )
