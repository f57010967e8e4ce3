"""Server connection slots: at most ``max_server_conn`` upstream sessions, and a queue.

dbgate opens one upstream session per client session. Without a limit of its own, a
crowd of agents above the server's ``max_connections`` would get the server's FATAL
53300 "too many clients" — the server decides, at random, who is turned away, and
the reserved slots of administrators go too. PgBouncer's answer, and this one: a
limit below the server's, and clients beyond it wait in line (first come, first
served) until a session ends or their wait times out, when dbgate refuses them with
its own 53300 that says which limit was reached.

A slot is held from before the upstream login to the end of the session. A slot
freed while clients wait is handed straight to the first of them, so a newcomer
cannot overtake the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class NoServerSlot(Exception):
    """The wait for a server connection timed out."""


class ServerSlots:
    """A fair counting semaphore with a wait timeout (see the module)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """Clients in the queue now."""
        return sum(1 for w in self._waiters if not w.done())

    async def acquire(self, timeout: float) -> None:
        """Take a slot, waiting up to ``timeout`` seconds behind earlier clients.

        Raises :class:`NoServerSlot` when the time is up. Cancelling the wait (the
        client hung up) leaves the queue; a slot granted at that same moment is
        passed on, never lost.
        """
        if self.used < self.limit and not self._waiters:
            self.used += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except BaseException as e:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted as we gave up: hand it on
            else:
                waiter.cancel()
            self._forget(waiter)
            if isinstance(e, TimeoutError):
                raise NoServerSlot(f"no server connection free within {timeout:g} s") from None
            raise

    def release(self) -> None:
        """A session ended: its slot goes to the first waiter, or back to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # ``used`` stays: the slot changes hands
                return
        self.used -= 1

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
