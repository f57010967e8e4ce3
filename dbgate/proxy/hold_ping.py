"""Keeping a held statement's transaction alive while a human decides.

dbgate starts every upstream session with ``idle_in_transaction_session_timeout``
(the session guards, docs/rules.md). A statement held for approval inside a
transaction block leaves the server's backend idle in that transaction for as long
as the human takes, and past the guard the server ends the session (FATAL 25P03):
without help, no approval inside a transaction could outlast the guard.

PostgreSQL arms that timer only when it is about to send ReadyForQuery and waits for
the next message (``PostgresMain``: the idle timers are started in the
``send_ready_for_query`` branch and stopped as soon as any message is read). So:

* at a **cycle boundary** — everything the relay sent has been answered, the last
  thing being a ReadyForQuery — the timer runs. A bare Sync of dbgate's re-arms it:
  the server answers ReadyForQuery and nothing else, changes no state (inside a
  transaction block a Sync commits nothing) and the relay swallows the answer (the
  statement tracker's ``ping``/PING entry; it is never counted as a client cycle);
* **inside an extended-protocol batch** (a Parse the relay forwarded before the held
  Bind, without a Sync yet) the server has read a message since its last
  ReadyForQuery, so no idle timer runs at all: nothing needs doing, and a Sync there
  would end the client's batch early, so none is sent;
* after an **error earlier in the batch** the server skips messages until Sync and
  sends no ReadyForQuery, so again no timer runs; a Sync of dbgate's would end the
  skipping early, so none is sent.

The tracker (:meth:`~dbgate.proxy.tracker.StatementTracker.ping`) decides whether a
ping is safe now; this module decides how often to ask. ``transaction_timeout`` is
not an idle timer and is left alone: a held statement still ends when the server
ends its transaction (FATAL 25P04), and the wait with it.

The interval is derived from the value of ``idle_in_transaction_session_timeout``
the upstream session was started with (dbgate's ceiling, or the client's lower
startup value): a quarter of it, at most :data:`MAX_INTERVAL`, at least
:data:`MIN_INTERVAL`. A client that lowers the guard later with ``SET`` is not seen
by the relay: below four times the interval, its own guard can still end its
session while a statement of its waits.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping

__all__ = ["MAX_INTERVAL", "MIN_INTERVAL", "HoldPinger", "ping_interval"]

#: Seconds between pings at most: well below any idle guard worth setting (the
#: default pack's is one minute).
MAX_INTERVAL = 5.0
#: Seconds between pings at least, however short the guard.
MIN_INTERVAL = 0.1
#: Pings per guard period: three may be late before the server's timer fires.
_PER_GUARD = 4

_GUARD = "idle_in_transaction_session_timeout"
_TIME = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(us|ms|s|min|h|d)?\s*")
_MS_PER_UNIT = {
    "us": 0.001,
    "ms": 1.0,
    "s": 1000.0,
    "min": 60_000.0,
    "h": 3_600_000.0,
    "d": 86_400_000.0,
}


def _guard_ms(value: str) -> float | None:
    """A time setting as PostgreSQL reads it (milliseconds when no unit is given);
    None for a spelling this reader does not know (hex, octal, exponents)."""
    m = _TIME.fullmatch(value)
    if m is None:
        return None
    return float(m.group(1)) * _MS_PER_UNIT[m.group(2) or "ms"]


def ping_interval(settings: Mapping[str, str]) -> float:
    """Seconds between pings for a session started with ``settings`` (the upstream
    StartupMessage's parameters)."""
    value = next((v for k, v in settings.items() if k.lower() == _GUARD), None)
    ms = _guard_ms(value) if value is not None else None
    if not ms:  # not set by dbgate, unreadable or 0: the server's own may still apply
        return MAX_INTERVAL
    return min(MAX_INTERVAL, max(MIN_INTERVAL, ms / 1000 / _PER_GUARD))


class HoldPinger:
    """Calls ``ping`` every ``interval`` seconds from :meth:`start` on, until it
    returns False (nothing waits any more) or :meth:`stop` is called.

    ``ping`` is the session's: it asks the tracker for a ping and writes it upstream.
    An ``interval`` of 0 turns pinging off.
    """

    __slots__ = ("_handle", "_ping", "interval")

    def __init__(self, interval: float, ping: Callable[[], bool]) -> None:
        self.interval = interval
        self._ping = ping
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """A statement began to wait (a no-op when already ticking)."""
        if self.interval > 0 and self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        self._handle = None
        if self._ping():
            self.start()
