"""A neighbouring session for the off-the-loop tests: it runs ``SELECT 1`` in a loop
while another client sends something costly, and records each query's latency, so a
test can assert that the event loop kept serving everyone else."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psycopg


def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``condition`` (never a guessed sleep) until it holds or ``timeout`` ends."""
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.005)


class Neighbour:
    """A session running ``SELECT 1`` in a loop; records each query's latency."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.latencies: list[float] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                t0 = time.monotonic()
                assert self.conn.execute("SELECT 1").fetchone() == (1,)
                self.latencies.append(time.monotonic() - t0)
        except BaseException as e:
            self.errors.append(e)

    def __enter__(self) -> Neighbour:
        self._thread.start()
        until(lambda: len(self.latencies) > 0)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self.conn.close()
