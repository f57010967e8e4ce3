"""dbgate.logs: JSON/text shapes, ids, no raw PII, and a destination that is full,
stuck or broken never blocks or crashes the caller."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbgate import logs, metrics


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    logs.stop_logging(timeout=2.0)
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def _read_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line]


def _log_to_file(tmp_path: Path, fmt: str = "json") -> tuple[logs.LogPipeline, Path]:
    path = tmp_path / "dbgate.log"
    pipeline = logs.setup_logging("debug", format=fmt, file=path)  # type: ignore[arg-type]
    return pipeline, path


def test_json_lines_carry_level_logger_ids_and_fields(tmp_path: Path) -> None:
    pipeline, path = _log_to_file(tmp_path)
    log = logging.getLogger("dbgate.proxy")
    log.info("session opened", extra=logs.session_extra(7, identity="agent"))
    with logs.log_context(request_id="req-1"):
        logging.getLogger("dbgate.web").warning("approve %s failed", 12)
    log.debug("quiet detail")
    assert pipeline.stop()
    first, second, third = (json.loads(line) for line in _read_lines(path))
    assert first["level"] == "info" and first["logger"] == "dbgate.proxy"
    assert first["msg"] == "session opened"
    assert first["session_id"] == 7 and first["identity"] == "agent"
    assert first["ts"].endswith("Z")
    assert second["request_id"] == "req-1" and second["msg"] == "approve 12 failed"
    assert "request_id" not in third and third["level"] == "debug"


def test_text_format_for_people(tmp_path: Path) -> None:
    pipeline, path = _log_to_file(tmp_path, "text")
    logging.getLogger("dbgate.proxy").info("closed", extra=logs.session_extra(9))
    assert pipeline.stop()
    (line,) = _read_lines(path)
    assert " INFO dbgate.proxy [session_id=9]: closed" in line


def test_auto_format_is_text_on_a_terminal_and_json_elsewhere() -> None:
    r, w = os.pipe()
    try:
        pipeline = logs.setup_logging(fd=w)
        assert isinstance(pipeline.formatter, logs.JsonFormatter)
    finally:
        logs.stop_logging()
        os.close(r)
        os.close(w)
    master, slave = os.openpty()
    try:
        pipeline = logs.setup_logging(fd=slave)
        assert isinstance(pipeline.formatter, logs.TextFormatter)
    finally:
        logs.stop_logging()
        os.close(master)
        os.close(slave)


def test_statement_text_and_pii_never_reach_the_log(tmp_path: Path) -> None:
    pipeline, path = _log_to_file(tmp_path)
    log = logging.getLogger("dbgate.session")
    sql = "SELECT * FROM customers WHERE email = 'ann@example.com'"
    log.info("running %s", sql)
    log.info("running %s", "-- a comment first\nupdate customers set ssn = '123-45-6789'")
    log.info("running %s", "; ;select * from customers where full_name = 'Zelda Quist'")
    log.info("bytes %s", b"\x00secret")
    log.info("decided", extra={"sql": sql, "params": ["4111 1111 1111 1111"]})
    log.info("held", extra={"statement_masked": "SELECT * FROM customers WHERE email = '<email>'"})
    log.info("denied by rule %s", "copy-to-program")
    log.warning("upstream said: Key (email)=(bob@example.org) already exists")
    try:
        raise ValueError("card 4111 1111 1111 1111 rejected")
    except ValueError:
        log.exception("failed")
    assert pipeline.stop()
    text = path.read_text()
    for raw in (
        "ann@example.com",
        "123-45-6789",
        "secret",
        "4111 1111",
        "bob@example.org",
        "Zelda",
    ):
        assert raw not in text
    records = [json.loads(line) for line in _read_lines(path)]
    assert records[0]["msg"] == "running <sql withheld>"
    assert records[1]["msg"] == "running <sql withheld>"
    assert records[2]["msg"] == "running <sql withheld>"
    assert records[3]["msg"] == "bytes <7 bytes withheld>"
    assert records[4]["sql"] == "<withheld>" and records[4]["params"] == "<withheld>"
    assert records[5]["statement_masked"] == "SELECT * FROM customers WHERE email = '<email>'"
    assert records[6]["msg"] == "denied by rule copy-to-program"
    assert "<email>" in records[7]["msg"]
    assert "ValueError" in records[8]["exc"] and "<card>" in records[8]["exc"]


def test_a_full_disk_costs_records_not_the_process(tmp_path: Path) -> None:
    """/dev/full answers every write with ENOSPC, like a full file system."""
    metrics.init(version="test")
    link = tmp_path / "dbgate.log"
    link.symlink_to("/dev/full")
    pipeline = logs.setup_logging("info", format="json", file=link)
    log = logging.getLogger("dbgate.proxy")
    for i in range(200):
        log.info("event %d", i)  # must neither raise nor block
    assert pipeline.sync()
    assert pipeline.write_errors >= 1
    # The disk gets space again (here: the path now names a regular file, as after
    # logrotate): the writer reopens it and says how many records were lost.
    link.unlink()
    link.write_text("")
    log.info("after recovery")
    assert pipeline.stop()
    assert pipeline.write_errors >= 1
    lines = [json.loads(line) for line in _read_lines(link)]
    assert lines[-1]["msg"].endswith(
        "were dropped: the log destination was slow, full or broken (ENOSPC)"
    )
    assert any(r["msg"] == "after recovery" for r in lines)
    assert metrics.snapshot().log_records_dropped == pipeline.dropped >= 200


def test_a_stuck_pipe_never_blocks_the_caller_and_a_broken_one_never_raises() -> None:
    r, w = os.pipe()
    pipeline = logs.setup_logging("info", format="json", fd=w, queue_size=100)
    log = logging.getLogger("dbgate.proxy")
    payload = "x" * 500
    for i in range(5000):  # ~2.5 MB into a 64 KB pipe nobody reads: the caller goes on
        log.info("event %d %s", i, payload)
    assert pipeline.dropped > 0
    # Someone reads again: the writer catches up and reports the loss.
    seen = threading.Event()

    def reader() -> None:
        buf = b""
        with os.fdopen(r, "rb", buffering=0) as f:
            while chunk := f.read(65536):
                buf += chunk
                if b"were dropped" in buf and not seen.is_set():
                    seen.set()
                    return

    t = threading.Thread(target=reader)
    t.start()
    log.info("wake the writer")
    t.join()
    assert seen.is_set()
    # The reader is gone for good: EPIPE is counted, nothing raises.
    for i in range(50):
        log.info("into a broken pipe %d", i)
    assert pipeline.stop()
    assert pipeline.write_errors >= 1
    os.close(w)


def test_stop_gives_up_on_a_destination_that_never_takes_writes() -> None:
    r, w = os.pipe()
    os.set_blocking(w, False)
    with contextlib.suppress(BlockingIOError):
        while True:  # fill the pipe: every further write blocks
            os.write(w, b"z" * 65536)
    os.set_blocking(w, True)
    try:
        pipeline = logs.setup_logging("info", format="json", fd=w, queue_size=10)
        for i in range(100):
            logging.getLogger("dbgate").info("fill %d", i)
        assert pipeline.stop(timeout=0.2) is False  # bounded, not a hang
        os.close(r)  # the writer's blocked write now fails with EPIPE ...
        r = -1
        assert pipeline.stop(timeout=5.0)  # ... and it can be stopped
    finally:
        if r >= 0:
            os.close(r)
        os.close(w)


def test_summary_reports_the_interval(caplog: pytest.LogCaptureFixture) -> None:
    metrics.init(version="test")
    summary = logs.LogSummary(interval=60)
    assert summary.emit_once() is None  # idle: no line
    metrics.session_opened()
    metrics.session_opened()
    metrics.session_closed()
    for _ in range(5):
        metrics.statement("read", "allow")
    metrics.statement("admin", "deny")
    metrics.hold_started()
    metrics.hold_finished("rejected", 5)
    metrics.hold_started()
    with caplog.at_level(logging.INFO, logger="dbgate.summary"):
        fields = summary.emit_once()
    assert fields is not None
    assert fields["sessions_opened"] == 2 and fields["sessions_closed"] == 1
    assert fields["sessions_open"] == 1
    assert fields["statements"] == 6
    assert fields["statements_by_decision"] == {"allow": 5, "deny": 1}
    assert fields["refusals"] == 2  # the deny and the rejected hold
    assert fields["holds_waiting"] == 1
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert (
        "sessions +2 -1 (open 1), statements 6 (allow 5, deny 1), refusals 2" in record.getMessage()
    )
    # Next interval: deltas start again; an open session keeps the line coming.
    fields = summary.emit_once()
    assert fields is not None and fields["statements"] == 0 and fields["sessions_open"] == 1
