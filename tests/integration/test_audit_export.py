"""``audit export`` and ``audit verify --file``: files that prove themselves."""

from __future__ import annotations

import asyncio
import csv
import json
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dbgate.audit.export import export
from dbgate.audit.serial import DocumentError
from dbgate.audit.verify import verify_file
from dbgate.audit.writer import AuditWriter
from dbgate.embedded import find_free_port
from tests.integration.audit_support import (
    create_state_database,
    drop_state_database,
    fast_config,
    one_of_each,
    statement,
    with_host_port,
)

DB = "dbgate_audit_export"
T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
async def state_dsn(pg_server) -> AsyncIterator[str]:
    """Two chains; records logged at T0, T0+1h and T0+2h, by two identities."""
    dsn = await create_state_database(pg_server, DB)
    clock = Clock(T0)
    a = AuditWriter(dsn, fast_config(), replica="a", clock=clock)
    b = AuditWriter(dsn, fast_config(), replica="b", clock=clock)
    await a.start()
    await b.start()
    for hour in range(3):
        clock.t = T0 + hour * 3600
        for i in range(10):
            a.record(statement(hour * 100 + i, identity="alpha" if i % 2 else "beta"))
            b.record(statement(hour * 100 + i, identity="beta"))
        await a.flush()
        await b.flush()
    for e in one_of_each():
        a.record(e)
    a.record(statement(999, sql="SELECT 'a,b\n\"c\"', E'\\\\x00' -- \x01", params=("x,y", None)))
    await a.stop()
    await b.stop()
    yield dsn
    await drop_state_database(pg_server, DB)


async def _export(dsn: str, path: Path, fmt: str = "jsonl", **kw) -> tuple[int, int]:
    with path.open("w", encoding="utf-8", newline="") as out:
        return await export(dsn, out, fmt, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
async def test_a_full_export_verifies_on_its_own(state_dsn, tmp_path, fmt) -> None:
    path = tmp_path / f"all.{fmt}"
    full, links = await _export(state_dsn, path, fmt)
    assert (
        links == 0 and full == 2 * 32 + len(one_of_each()) + 1
    )  # 2 x (start, 30, end); 10 more on a
    report = verify_file(path)
    assert report.ok, report.text()
    assert report.records == full and len(report.chains) == 2
    assert all(c.closed for c in report.chains.values())


async def test_documents_carry_every_column_and_the_hashes(state_dsn, tmp_path) -> None:
    path = tmp_path / "all.jsonl"
    await _export(state_dsn, path)
    docs = [json.loads(line) for line in path.read_text().splitlines()]
    hostile = next(d for d in docs if d["statement"] and d["statement"].startswith("SELECT 'a,b"))
    assert hostile["params"] == ["x,y", None]
    assert (
        hostile["at"].endswith("Z") and len(hostile["hash"]) == 64 and len(hostile["digest"]) == 64
    )
    assert isinstance(hostile["id"], int)
    await _export(state_dsn, tmp_path / "all.csv", "csv")
    with (tmp_path / "all.csv").open(newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    row = next(r for r in table if r["statement"].startswith("SELECT 'a,b"))
    assert row["statement"] == hostile["statement"] and json.loads(row["params"]) == ["x,y", None]


async def test_an_identity_export_keeps_the_chains_whole_with_links(state_dsn, tmp_path) -> None:
    path = tmp_path / "alpha.jsonl"
    full, links = await _export(state_dsn, path, identity="alpha")
    assert full == 15 and links > 0
    docs = [json.loads(line) for line in path.read_text().splitlines()]
    assert {d["identity"] for d in docs if d["kind"] != "link"} == {"alpha"}
    assert all(
        set(d) == {"kind", "chain", "seq", "logged_at", "digest", "prev_hash", "hash"}
        for d in docs
        if d["kind"] == "link"
    )
    assert "beta" not in "".join(json.dumps(d) for d in docs if d["kind"] == "link")
    report = verify_file(path)
    assert report.ok, report.text()


async def test_since_and_until_select_whole_runs_by_logged_at(state_dsn, tmp_path) -> None:
    path = tmp_path / "hour1.jsonl"
    since = datetime.fromtimestamp(T0 + 3600, UTC)
    until = datetime.fromtimestamp(T0 + 7200, UTC)
    full, _ = await _export(state_dsn, path, since=since, until=until)
    assert full == 20
    report = verify_file(path)
    assert report.ok, report.text()
    assert any("starts at seq" in n for n in report.notes)


async def test_a_tampered_file_fails_and_names_the_record(state_dsn, tmp_path) -> None:
    path = tmp_path / "all.jsonl"
    await _export(state_dsn, path)
    lines = path.read_text().splitlines()
    doc = json.loads(lines[5])
    doc["statement"] = "SELECT 'innocent'"
    edited = tmp_path / "edited.jsonl"
    edited.write_text("\n".join([*lines[:5], json.dumps(doc), *lines[6:]]) + "\n")
    report = verify_file(edited)
    assert [(f.problem, f.seq, f.id) for f in report.findings] == [
        ("edited", doc["seq"], doc["id"])
    ]

    dropped = tmp_path / "dropped.jsonl"
    dropped.write_text("\n".join([*lines[:5], *lines[6:]]) + "\n")
    report = verify_file(dropped)
    assert [(f.problem, f.seq) for f in report.findings] == [("deleted", doc["seq"])]

    swapped = tmp_path / "swapped.jsonl"
    swapped.write_text("\n".join([*lines[:5], lines[6], lines[5], *lines[7:]]) + "\n")
    report = verify_file(swapped)
    assert not report.ok and report.findings[0].seq in (doc["seq"], doc["seq"] + 1)


async def test_a_forged_link_fails(state_dsn, tmp_path) -> None:
    path = tmp_path / "alpha.jsonl"
    await _export(state_dsn, path, identity="alpha")
    lines = path.read_text().splitlines()
    i = next(n for n, line in enumerate(lines) if '"kind":"link"' in line)
    doc = json.loads(lines[i])
    doc["digest"] = "00" * 32
    lines[i] = json.dumps(doc)
    forged = tmp_path / "forged.jsonl"
    forged.write_text("\n".join(lines) + "\n")
    report = verify_file(forged)
    assert [(f.problem, f.seq) for f in report.findings] == [("edited", doc["seq"])]


async def test_garbage_files_are_clear_errors(tmp_path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"chain": "x"}\n')
    with pytest.raises(DocumentError, match="line 1"):
        verify_file(bad)
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(DocumentError, match="neither JSON lines nor"):
        verify_file(other)


async def _cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dbgate",
        "audit",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()


async def test_the_commands(state_dsn, tmp_path) -> None:
    code, out, err = await _cli("export", "--dsn", state_dsn, "--format", "csv")
    assert code == 0 and out.startswith("id,format,chain,seq,") and "exported" in err
    target = tmp_path / "beta.jsonl"
    code, _, _ = await _cli("export", "--dsn", state_dsn, "--identity", "beta", "-o", str(target))
    assert code == 0
    code, out, _ = await _cli("verify", "--file", str(target), "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    code, _, err = await _cli("export", "--dsn", state_dsn, "--format", "xml")
    assert code == 2 and "jsonl or csv" in err
    code, _, err = await _cli("export", "--dsn", state_dsn, "--since", "last tuesday")
    assert code == 2 and "not a date" in err
    code, _, err = await _cli("verify", "--file", str(tmp_path / "missing.jsonl"))
    assert code == 2 and "missing.jsonl" in err
    code, _, err = await _cli("verify")
    assert code == 2 and "exactly one of --dsn or --file" in err
    dead = with_host_port(state_dsn, "127.0.0.1", find_free_port())
    code, _, err = await _cli("verify", "--dsn", dead)
    assert code == 2 and "cannot verify" in err
    code, _, err = await _cli("export", "--dsn", dead)
    assert code == 2 and "cannot export" in err
