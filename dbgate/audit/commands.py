"""``dbgate audit verify | export | archive``.

Thin: flags in, the room's functions out. Heavy imports (asyncpg) happen inside the
commands so that ``dbgate --help`` stays quick.

Exit status: 0 success (verify: every chain intact), 1 verification found tampering,
2 bad input or the check could not run (unreachable database, unreadable file).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import typer

audit_app = typer.Typer(
    help="The tamper-evident audit trail: verify, export, archive (docs/audit.md).",
    no_args_is_help=True,
)

EXIT_TAMPERED = 1
EXIT_ERROR = 2


def _fail(message: str) -> typer.Exit:
    typer.echo(f"dbgate audit: {message}", err=True)
    return typer.Exit(EXIT_ERROR)


@audit_app.command("verify")
def verify_command(
    dsn: Annotated[
        str | None, typer.Option(help="State database (postgresql://...); a reviewer role works.")
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="An export file (JSON lines or CSV) instead.")
    ] = None,
    heads: Annotated[
        Path | None,
        typer.Option(help="Chain heads anchored outside: the head file or operator log lines."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    jobs: Annotated[
        int, typer.Option(min=1, max=32, help="Database connections reading ahead (--dsn).")
    ] = 3,
) -> None:
    """Recompute every hash chain; exit 1 naming the first bad record of each chain."""
    from dbgate.audit.serial import DocumentError
    from dbgate.audit.verify import print_report, read_heads, verify_database, verify_file

    if (dsn is None) == (file is None):
        raise _fail("give exactly one of --dsn or --file")
    try:
        anchored = read_heads(heads) if heads is not None else []
        if file is not None:
            report = verify_file(file, anchored)
    except (OSError, DocumentError) as e:
        raise _fail(str(e)) from None
    if dsn is not None:
        try:
            report = asyncio.run(verify_database(dsn, anchored, jobs=jobs))
        except Exception as e:  # asyncpg errors, an unreachable server
            raise _fail(f"cannot verify: {type(e).__name__}: {e}") from None
    print_report(report, as_json)
    raise typer.Exit(0 if report.ok else EXIT_TAMPERED)


@audit_app.command("export")
def export_command(
    dsn: Annotated[str, typer.Option(help="State database (postgresql://...).")],
    fmt: Annotated[str, typer.Option("--format", help="jsonl or csv.")] = "jsonl",
    since: Annotated[
        str | None, typer.Option(help="Records logged at or after (ISO date/time, UTC).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Records logged before (ISO, UTC).")] = None,
    identity: Annotated[
        str | None, typer.Option(help="Only this identity (others become hash links).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Stream records with their chain hashes (the file verifies on its own)."""
    from dbgate.audit.export import export, parse_when

    if fmt not in ("jsonl", "csv"):
        raise _fail(f"--format must be jsonl or csv, not {fmt!r}")
    try:
        start = parse_when(since) if since else None
        end = parse_when(until) if until else None
    except ValueError as e:
        raise _fail(str(e)) from None
    try:
        out = sys.stdout if output is None else output.open("w", encoding="utf-8", newline="")
    except OSError as e:
        raise _fail(str(e)) from None
    try:
        full, links = asyncio.run(export(dsn, out, fmt, start, end, identity))  # type: ignore[arg-type]
    except Exception as e:  # asyncpg errors, an unreachable server, a full disk
        raise _fail(f"cannot export: {type(e).__name__}: {e}") from None
    finally:
        if out is not sys.stdout:
            out.close()
    extra = f" and {links:,} links for other identities" if links else ""
    typer.echo(f"dbgate audit: exported {full:,} records{extra}", err=True)


@audit_app.command("archive")
def archive_command(
    dsn: Annotated[str, typer.Option(help="State database, as a role that owns the audit tables.")],
    month: Annotated[str, typer.Option(help="YYYY-MM: the oldest month still attached.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The archive file (new).")],
    drop: Annotated[bool, typer.Option(help="Drop the detached table afterwards.")] = False,
) -> None:
    """Export a month to a file that verifies, anchor the chains, detach the month."""
    from datetime import date

    from dbgate.audit.archive import archive_month
    from dbgate.audit.errors import AuditError

    try:
        year, mon = (int(x) for x in month.split("-"))
        first = date(year, mon, 1)
    except ValueError:
        raise _fail(f"--month must be YYYY-MM, not {month!r}") from None
    try:
        part, records, _ = asyncio.run(archive_month(dsn, first, output, drop))
    except FileExistsError:
        raise _fail(f"{output} exists; choose a new file") from None
    except (AuditError, OSError) as e:
        raise _fail(str(e)) from None
    except Exception as e:
        raise _fail(f"cannot archive: {type(e).__name__}: {e}") from None
    what = "dropped" if drop else "detached (drop it once the file is stored safely)"
    typer.echo(f"dbgate audit: {records:,} records of {month} written to {output}; {part} {what}")
