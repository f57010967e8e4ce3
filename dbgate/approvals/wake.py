"""Wake a waiting hold when its request is decided, on whichever replica decided it.

One listening connection per replica (not per hold) runs ``LISTEN dbgate_approvals``;
a trigger in the state database notifies that channel at commit of every status
change, so a decision taken through any replica, the CLI or plain SQL wakes the
replica holding the statement within milliseconds.

Notifications can be lost: the listening connection may drop and reconnect, and a
change committed in between is never delivered. So every ``recheck_seconds`` the
waker also asks the database for the status of every request it waits for, and
wakes those that are no longer pending. A lost notification delays a decision by
at most that period; it never loses one.

Subscribers (the web page's live queue) get every payload too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from dbgate.approvals.db import ChannelListener

log = logging.getLogger("dbgate.approvals")

CHANNEL = "dbgate_approvals"

#: Reads the status of some requests: ``{id: status}``.
StatusReader = Callable[[Sequence[int]], Awaitable[dict[int, str]]]
Subscriber = Callable[[str], None]


class Waker:
    """Per-replica LISTEN connection plus periodic re-check; see the module docstring."""

    def __init__(
        self,
        dsn: str,
        read_statuses: StatusReader,
        *,
        recheck_seconds: float = 2.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._read_statuses = read_statuses
        self._recheck_seconds = recheck_seconds
        self._connect_timeout = connect_timeout
        self._waiters: dict[int, asyncio.Event] = {}
        self._subscribers: list[Subscriber] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._listener = ChannelListener(
            dsn,
            CHANNEL,
            self._on_notify,
            application_name="dbgate-approvals-listen",
            what="decisions",
            timeout=connect_timeout,
            probe_seconds=max(recheck_seconds * 5, 10),
            # whatever was decided while nobody listened is found now
            on_listening=self.wake_all,
        )
        self.listening = self._listener.listening  # set while the LISTEN connection is up

    # -- waiters ----------------------------------------------------------------------

    def register(self, request_id: int) -> asyncio.Event:
        """An event set whenever request ``request_id`` may have changed."""
        event = self._waiters.get(request_id)
        if event is None:
            event = self._waiters[request_id] = asyncio.Event()
        return event

    def unregister(self, request_id: int) -> None:
        self._waiters.pop(request_id, None)

    def wake(self, request_id: int) -> None:
        event = self._waiters.get(request_id)
        if event is not None:
            event.set()

    def wake_all(self) -> None:
        for event in self._waiters.values():
            event.set()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(payload)`` for every notification; returns the unsubscriber."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    # -- life -------------------------------------------------------------------------

    async def start(self) -> None:
        self._closing = False
        await self._listener.start()
        self._tasks = [
            asyncio.create_task(self._recheck_loop(), name="dbgate-approvals-recheck"),
        ]

    async def stop(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._listener.stop()

    # -- notifications ----------------------------------------------------------------

    def _on_notify(self, payload: str) -> None:
        kind, _, rest = payload.partition(":")
        if kind in ("request", "decision"):
            ident = rest.split(":", 1)[0]
            if ident.isdigit():
                self.wake(int(ident))
        for callback in list(self._subscribers):
            try:
                callback(payload)
            except Exception:
                log.exception("approvals subscriber failed")

    async def _recheck_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(self._recheck_seconds)
            ids = list(self._waiters)
            if not ids:
                continue
            try:
                statuses = await self._read_statuses(ids)
            except Exception as e:  # StateUnavailable and anything else: try again later
                log.debug("approvals: re-check failed: %s", e)
                continue
            for rid in ids:
                if statuses.get(rid, "missing") != "pending":
                    self.wake(rid)
