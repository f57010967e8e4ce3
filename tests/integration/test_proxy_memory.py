"""What one long statement costs ``dbgate serve`` in resident memory (issue 10).

A statement the relay must see whole is held once, as the message it arrived in, plus
the text decoded from it for the classifier: its peak RSS growth stays within those
two (and a few megabytes), where it used to be ~3.7 times the statement (the reads,
their join, a slice of the body, the parked message). When it is done, all of it is
given back, and an allowed long statement leaves nothing behind in the gate's memos.

RSS is read from ``/proc`` (``VmHWM``, reset through ``clear_refs``), so these run on
Linux only; the process is a real ``dbgate serve``, the client psycopg.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PgServer
from tests.integration.serve_process import ServeProcess, serve_config

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")

MB = 1 << 20
#: Beyond its message and its text: interpreter and allocator noise.
SLACK = 8 * MB


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS


@pytest.fixture(scope="module")
def serve(
    pg_server: PgServer, pg_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServeProcess, psycopg.Connection]]:
    # A time budget of 1 s: a text estimated at over 10 s is held at once (no worker
    # copy), a 4 MB literal (~2.4 s) goes to the worker and is allowed.
    config = serve_config(pg_server, classify={"time_budget_seconds": 1.0})
    server = ServeProcess(tmp_path_factory.mktemp("memory"), config, workers=1)
    try:
        server.wait_ready()
        with psycopg.connect(server.dsn(pg_database), autocommit=True) as conn:
            yield server, conn
    finally:
        server.stop()


def test_a_long_statement_costs_its_message_and_its_text_and_is_given_back(
    serve: tuple[ServeProcess, psycopg.Connection],
) -> None:
    server, conn = serve
    pid = server.proc.pid
    size = 24 * MB
    sql = "select 1 where " + " or ".join(["1 = 1"] * (size // 10))  # held: too large
    for _ in range(2):  # the first time warms up: imports, caches, the allocator
        _reset_peak(pid)
        before = _status(pid)["VmRSS"]
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="too large"):
            conn.execute(sql, prepare=False)
        after = _status(pid)
    growth = after["VmHWM"] - before
    assert growth < 2 * len(sql) + SLACK, f"peak RSS grew {growth / MB:.1f} MB"
    assert after["VmRSS"] - before < SLACK, "the statement's memory was not given back"
    assert conn.execute("select 1").fetchone() == (1,)


def test_allowed_long_statements_leave_nothing_behind(
    serve: tuple[ServeProcess, psycopg.Connection],
) -> None:
    server, conn = serve
    pid = server.proc.pid
    size, times = 4 * MB, 16
    sql = "select length('" + "x" * size + "')"  # classified in a worker, then allowed
    # prepare=False: each one a Query with its text (psycopg prepares a repeated query)
    assert conn.execute(sql, prepare=False).fetchone() == (size,)
    before = _status(pid)["VmRSS"]
    for _ in range(times):
        assert conn.execute(sql, prepare=False).fetchone() == (size,)
    grown = _status(pid)["VmRSS"] - before
    # Each one used to stay in the gate's memos (its classification holds its text).
    assert grown < SLACK, f"RSS grew {grown / MB:.1f} MB over {times} statements of 4 MB"
