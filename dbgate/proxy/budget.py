"""The memory budget: how many bytes of messages all sessions may hold at once.

Most messages pass through the relay without being held: complete ones are written on
as they are read, and a long message that dbgate does not need to see (a 60 MB
DataRow without a result plan) is streamed through in pieces. What *is* held:

* a long message the relay must see whole (a statement to inspect, a row to rewrite),
  while its pieces arrive — up to ``limits.max_message_size`` each;
* a long statement that waits for its verdict (a worker classifies it, an approver
  decides), with its decoded text;
* what a client sends while one of its statements waits for a verdict.

Without a ceiling a few hundred clients each sending a 60 MB statement would hold
gigabytes. With one, a session that starts a long message first *reserves* its whole
length (known from the length word); while the reservation is not granted, dbgate
stops reading from that connection — backpressure, not an error — and the other
sessions go on. Reservations are granted first come, first served, and each is for a
whole message, so no two half-received messages can wait for each other's memory:
every granted reservation ends when its message is complete (or its session ends),
and frees room for the next in line.

A waiting statement, and the bytes queued behind it, are *charged*: counted, never
refused (the session bounds what it queues itself and pauses; the statement was read
under a reservation already), so that a budget under pressure reflects them and long
messages wait for that memory too.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable


class Reservation:
    """Room for one message; ``granted`` once the budget has it."""

    __slots__ = ("_budget", "granted", "size", "wake")

    def __init__(self, budget: MemoryBudget, size: int, wake: Callable[[], None]) -> None:
        self._budget = budget
        self.size = size
        self.wake = wake
        self.granted = False

    def release(self) -> None:
        """The message is complete (or abandoned): give the room back, or stop waiting."""
        self._budget._release(self)


class MemoryBudget:
    """Bytes held for messages across every session of one proxy (see the module)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._waiting: deque[Reservation] = deque()

    @property
    def waiting(self) -> int:
        """Reservations not granted yet (sessions not being read from)."""
        return len(self._waiting)

    @property
    def over(self) -> bool:
        return self.used > self.limit

    def reserve(self, size: int, wake: Callable[[], None]) -> Reservation:
        """Ask for ``size`` bytes. Granted at once when there is room and nobody waits
        ahead; otherwise ``wake()`` is called when it is granted. A size larger than
        the whole budget is granted only when nothing else is held (configuration
        keeps messages below the budget; this keeps a mistake from waiting forever)."""
        r = Reservation(self, size, wake)
        if not self._waiting and self._fits(size):
            self._grant(r)
        else:
            self._waiting.append(r)
        return r

    def charge(self, n: int) -> None:
        """Count ``n`` held bytes that are never refused (see the module docstring)."""
        self.used += n
        if self.used > self.peak:
            self.peak = self.used

    def discharge(self, n: int) -> None:
        self.used -= n
        self._wake_waiting()

    def _fits(self, size: int) -> bool:
        return self.used + size <= self.limit or self.used == 0

    def _grant(self, r: Reservation) -> None:
        r.granted = True
        self.charge(r.size)

    def _release(self, r: Reservation) -> None:
        if r.granted:
            r.granted = False
            r.size, size = 0, r.size
            self.discharge(size)
        else:
            try:
                self._waiting.remove(r)
            except ValueError:
                return
            self._wake_waiting()  # the head may have been the one too big to fit

    def _wake_waiting(self) -> None:
        waiting = self._waiting
        while waiting and self._fits(waiting[0].size):
            r = waiting.popleft()
            self._grant(r)
            r.wake()
