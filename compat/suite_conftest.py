"""conftest.py for the copied asyncpg test suite (copied there by compat/suite.py).

Three jobs, all about trusting the numbers:

* refuse to run unless ``asyncpg`` is the installed wheel — the suite must test
  the compiled driver dbgate's users run, not a source tree next to it;
* turn on the suite's own per-test timeout (``TestCaseMeta.TEST_TIMEOUT``, an
  ``asyncio.wait_for`` around each test coroutine) from ``COMPAT_TEST_TIMEOUT``:
  a statement hanging in the proxy then fails as "test timed out", cleanly,
  instead of relying on pytest-timeout's signal alone;
* append one JSON line per collected set and per test report to the file named by
  ``COMPAT_EVENTS``. junit XML is only written when pytest ends normally; when a
  run through a hanging proxy has to be interrupted, these events still tell which
  tests ran, how they ended and which never started.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import asyncpg
import pytest

_HERE = Path(__file__).resolve().parent
_ORIGIN = Path(asyncpg.__file__).resolve()


def _emit(event: dict[str, Any]) -> None:
    path = os.environ.get("COMPAT_EVENTS")
    if not path:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(event) + "\n")


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""


def pytest_configure(config: pytest.Config) -> None:
    if _HERE in _ORIGIN.parents:
        raise pytest.UsageError(
            f"asyncpg was imported from the suite tree ({_ORIGIN}), not the installed wheel"
        )
    timeout = os.environ.get("COMPAT_TEST_TIMEOUT")
    if timeout:
        from asyncpg import _testbase

        # Read by each test wrapper at call time, so setting it here covers all tests.
        _testbase.TestCaseMeta.TEST_TIMEOUT = float(timeout)


def pytest_report_header(config: pytest.Config) -> str:
    return f"asyncpg {asyncpg.__version__} from {_ORIGIN.parent}"


def pytest_collection_finish(session: pytest.Session) -> None:
    _emit({"event": "collected", "nodeids": [item.nodeid for item in session.items]})


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    message = ""
    if report.outcome == "skipped" and isinstance(report.longrepr, tuple):
        message = str(report.longrepr[2])
    elif report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        message = getattr(crash, "message", None) or str(report.longrepr)
    _emit(
        {
            "event": "report",
            "nodeid": report.nodeid,
            "when": report.when,
            "outcome": report.outcome,
            "subtest": type(report).__name__ != "TestReport",
            "message": _first_line(message),
            "duration": round(report.duration, 3),
        }
    )
