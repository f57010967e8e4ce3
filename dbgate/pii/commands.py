"""``dbgate pii …`` and ``dbgate detokenize``: the PII room's command line.

Imports of asyncpg, the schema loader and the tokenizer stay inside the functions, so
that ``dbgate --help`` and the other commands do not pay for them.

* ``dbgate pii scan --dsn DSN``: which columns of a live database the catalog covers
  (and why), and which uncovered ones look like personal data — by name, and by
  sampling values through the content detectors. Values are never printed.
* ``dbgate pii check [FILE]``: validate a catalog file (errors name file:line).
* ``dbgate pii keygen``: a new tokenization key and its fingerprint.
* ``dbgate detokenize TOKEN -c CONFIG``: the value behind a token, for an authorized
  human holding the key. Every use emits a :class:`DetokenizeEvent` (who, when, which
  entity, success) — on standard error as one JSON line, and to the recorder the
  application installs with :func:`set_detokenize_recorder` (the audit log).
"""

from __future__ import annotations

import getpass
import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

pii_app = typer.Typer(help="PII catalog, coverage and keys (docs/pii.md).", no_args_is_help=True)

#: uncovered column names that deserve a look even when no value trips a detector
SUSPICIOUS_NAME = re.compile(
    r"name|mail|phone|mobile|addr|street|city|zip|postal|birth|dob|ssn|social|passport|"
    r"licen[cs]e|tax|iban|account|card|cvv|ip_?addr|geo|lat|lon|gender|salary|religion|health",
    re.IGNORECASE,
)
SKIP_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")


@dataclass(frozen=True)
class DetokenizeEvent:
    """One use of ``dbgate detokenize``: recorded, never with the value."""

    at: float
    user: str  # the operating-system user who ran the command
    entity: str
    token_prefix: str  # the first 24 characters: enough to find the token, not to use it
    ok: bool
    error: str = ""


_recorder: Callable[[DetokenizeEvent], None] | None = None


def set_detokenize_recorder(recorder: Callable[[DetokenizeEvent], None] | None) -> None:
    """Install where detokenize events go besides standard error (the audit log)."""
    global _recorder
    _recorder = recorder


# ------------------------------------------------------------------------------ scan


@dataclass
class ScanReport:
    covered: list[dict[str, Any]]
    suspicious: list[dict[str, Any]]
    warnings: list[str]


async def scan_database(dsn: str, catalog_path: Path | None, sample: int) -> ScanReport:
    import asyncpg

    from dbgate.pii.catalog_load import load_catalog
    from dbgate.pii.coverage import Coverage
    from dbgate.pii.detectors import detect
    from dbgate.pii.pseudonyms import TEXT, TypeRegistry
    from dbgate.pii.schema import load_schema

    catalog = load_catalog(catalog_path)
    conn = await asyncpg.connect(dsn)
    try:
        snapshot = await load_schema(conn)
        coverage = Coverage(snapshot, catalog)
        types = TypeRegistry(snapshot)
        covered: list[dict[str, Any]] = []
        suspicious: list[dict[str, Any]] = []
        for d in coverage.decisions:
            rel = d.relation
            if rel.schema in SKIP_SCHEMAS or rel.kind not in ("r", "p", "v", "m", "f"):
                continue
            where = f"{rel.schema}.{rel.name}.{d.column}"
            if d.entity is not None:
                covered.append(
                    {"column": where, "entity": d.entity, "why": d.why, "unknown": d.unknown}
                )
                continue
            col = rel.column(d.column)
            if col is None or types.kind(col.type_oid) != TEXT:
                continue
            hits: dict[str, int] = {}
            if sample and rel.kind in ("r", "p", "m", "f"):
                q = (
                    f'SELECT "{d.column.replace(chr(34), chr(34) * 2)}"::text FROM '
                    f'"{rel.schema.replace(chr(34), chr(34) * 2)}"."{rel.name.replace(chr(34), chr(34) * 2)}" '
                    f"LIMIT {int(sample)}"
                )
                try:
                    rows = await conn.fetch(q)
                except asyncpg.PostgresError:
                    rows = []
                for (value,) in rows:
                    for _s, _e, entity in detect(value or ""):
                        hits[entity] = hits.get(entity, 0) + 1
            by_name = bool(SUSPICIOUS_NAME.search(d.column))
            if hits or by_name:
                suspicious.append(
                    {"column": where, "by_name": by_name, "detected": hits, "sampled": sample}
                )
        return ScanReport(covered, suspicious, list(coverage.warnings))
    finally:
        await conn.close()


@pii_app.command("scan")
def scan(
    dsn: Annotated[str, typer.Option(help="postgresql:// URL of the database to scan.")],
    catalog: Annotated[
        Path | None, typer.Option(help="Catalog file (default: the shipped one).")
    ] = None,
    sample: Annotated[
        int, typer.Option(help="Rows sampled per uncovered text column (0: none).")
    ] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    strict: Annotated[
        bool, typer.Option(help="Exit 1 when something suspicious is uncovered.")
    ] = False,
) -> None:
    """List the columns the catalog covers and the suspicious ones it does not."""
    import asyncio

    from dbgate.pii.catalog_load import CatalogError

    try:
        report = asyncio.run(scan_database(dsn, catalog, sample))
    except CatalogError as e:
        typer.echo(f"dbgate: {e}", err=True)
        raise typer.Exit(2) from None
    except (OSError, Exception) as e:  # connection problems: say so, do not trace back
        typer.echo(f"dbgate: cannot scan {_safe_dsn(dsn)}: {e}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(asdict(report), indent=2))
    else:
        for w in report.warnings:
            typer.echo(f"warning: {w}")
        typer.echo(f"covered ({len(report.covered)}):")
        for c in report.covered:
            flag = "  (lineage unknown: tokenized)" if c["unknown"] else ""
            typer.echo(f"  {c['column']:<50} {c['entity']:<12} {c['why']}{flag}")
        typer.echo(f"suspicious and not covered ({len(report.suspicious)}):")
        for s in report.suspicious:
            why = []
            if s["by_name"]:
                why.append("name looks personal")
            if s["detected"]:
                found = ", ".join(
                    f"{k} in {v} of {s['sampled']} sampled" for k, v in s["detected"].items()
                )
                why.append(found)
            typer.echo(f"  {s['column']:<50} {'; '.join(why)}")
    raise typer.Exit(1 if strict and report.suspicious else 0)


def _safe_dsn(dsn: str) -> str:
    return re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", dsn)


@pii_app.command("check")
def check(
    file: Annotated[
        Path | None, typer.Argument(help="Catalog file (default: the shipped one).")
    ] = None,
) -> None:
    """Validate a catalog file; errors name file:line."""
    from dbgate.pii.catalog_load import CatalogError, load_catalog

    try:
        cat = load_catalog(file)
    except CatalogError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"{cat.source}: ok ({len(cat.columns)} column entries, {len(cat.names)} name patterns, "
        f"name defaults {'on' if cat.name_defaults else 'off'})"
    )


@pii_app.command("keygen")
def keygen() -> None:
    """Print a new random tokenization key and its fingerprint (for pii.keys)."""
    from dbgate.pii.keys import generate_key

    secret, fingerprint = generate_key()
    typer.echo(f"secret: {secret}\nfingerprint: {fingerprint}")


# ------------------------------------------------------------------------------ detokenize


def detokenize_command(
    token: Annotated[str, typer.Argument(help="A token as the agent saw it (tok_<entity>_…).")],
    config: Annotated[
        Path | None, typer.Option("-c", "--config", help="YAML config with pii.keys.")
    ] = None,
) -> None:
    """Show the value behind a PII token (authorized humans; every use is recorded)."""
    from dbgate.config import ConfigError, load_config
    from dbgate.pii.keys import PiiKeyError, keyring_from_config
    from dbgate.pii.tokens import TokenError, Tokenizer, parse_token

    try:
        cfg = load_config(config)
        tokenizer = Tokenizer(keyring_from_config(cfg.pii.keys), cfg.pii.mode)
    except (ConfigError, PiiKeyError) as e:
        typer.echo(f"dbgate: {e}", err=True)
        raise typer.Exit(2) from None
    token = token.strip()
    try:
        entity, body = parse_token(token)
    except TokenError:
        entity, body = "", ""
    try:
        if body.startswith("h"):
            raise TokenError(
                "this is a hashed token (pii.mode: hashed): it has no value inside and resolves "
                "only in the dbgate process that issued it; set pii.mode: reversible for tokens "
                "that dbgate detokenize can open"
            )
        _entity, value = tokenizer.resolve(token)
    except TokenError as e:
        _emit(DetokenizeEvent(time.time(), _user(), entity, token[:24], False, str(e)))
        if cfg.state is not None:
            # an attempt is recorded too (nothing was shown, so it may fail to be)
            _record_in_audit(cfg.state.dsn, entity, token[:24], failed=str(e))
        typer.echo(f"dbgate: {e}", err=True)
        raise typer.Exit(1) from None
    if cfg.state is not None:
        # Recorded in the audit trail before the value is shown; if it cannot be, the
        # value is not shown (a detokenization nobody can review did not happen).
        problem = _record_in_audit(cfg.state.dsn, entity, token[:24])
        if problem:
            typer.echo(
                f"dbgate: the audit trail cannot be written, so nothing is shown: {problem}",
                err=True,
            )
            raise typer.Exit(2)
    _emit(DetokenizeEvent(time.time(), _user(), entity, token[:24], True))
    typer.echo(value.decode("utf-8", "backslashreplace"))


def _record_in_audit(state_dsn: str, entity: str, token_prefix: str, failed: str = "") -> str:
    """Write one ``detokenize`` record on this host's shell chain (``cli-<host>``, as
    decisions made with ``dbgate approvals`` are); the error text, or "" once durable.
    ``failed``: why the token did not resolve (a record of an attempt, no token shown)."""
    import asyncio
    import socket

    from dbgate.audit import AuditWriter
    from dbgate.audit import DetokenizeEvent as AuditDetokenize
    from dbgate.config import AuditConfig

    async def record() -> None:
        writer = AuditWriter(state_dsn, AuditConfig(), replica=f"cli-{socket.gethostname()}")
        await writer.start()
        if not writer.available:  # nothing recorded: nothing to wait for
            await writer.stop(timeout=0.1)
            raise OSError("cannot reach the state database")
        try:
            await writer.record_durable(
                AuditDetokenize(
                    identity="",
                    actor=_user(),
                    tokens=0 if failed else 1,
                    columns=(entity,) if entity else (),
                    reason=f"dbgate detokenize {token_prefix}…"
                    + (f" failed: {failed}" if failed else ""),
                ),
                timeout=10,
            )
        finally:
            await writer.stop(timeout=5)

    try:
        asyncio.run(record())
    except Exception as e:  # any failure: not recorded, so not shown
        return str(e) or type(e).__name__
    return ""


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return str(os.getuid())


def _emit(event: DetokenizeEvent) -> None:
    sys.stderr.write(json.dumps({"event": "pii.detokenize", **asdict(event)}) + "\n")
    if _recorder is not None:
        _recorder(event)
