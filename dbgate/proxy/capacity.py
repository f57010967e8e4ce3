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

The limit is never above what the server itself accepts. :class:`ServerCapacity`
reads the server's ``max_connections``, ``superuser_reserved_connections`` and
``reserved_connections`` (PostgreSQL 16+) on a fresh upstream session — the first one,
again after the server could not be reached or was full, and at most every
:data:`REFRESH_SECONDS` — and sets the limit to ``upstream.max_server_conn`` capped at
the connections the server leaves to ordinary roles, or, when that key is not set, to
those connections less a margin for everyone else (:func:`derived_total`). Until it
has read them, dbgate opens one server connection at a time, so a first crowd of
clients cannot overrun a server whose limit is not known yet. With ``--workers N``
each worker holds its share of the total (:func:`share`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("dbgate.proxy")


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
        """A session ended: its slot goes to the first waiter, or back to the pool
        (always back while more slots are in use than the limit allows: it was lowered)."""
        if self.used <= self.limit and self._hand_on():
            return  # ``used`` stays: the slot changes hands
        self.used -= 1

    def resize(self, limit: int) -> None:
        """Change the limit (at least 1). A higher one lets waiters in at once; with a
        lower one, sessions beyond it run on, and their slots are not handed on."""
        self.limit = max(1, limit)
        while self.used < self.limit and self._hand_on():
            self.used += 1

    def _hand_on(self) -> bool:
        """Grant the first live waiter its slot; False when none waits."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return True
        return False

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)


# ------------------------------------------------------------------ the server's limit

#: Seconds after which the server's limits are read again (on the next new session):
#: a server restarted with another ``max_connections`` is noticed within this.
REFRESH_SECONDS = 60.0
#: The total when ``upstream.max_server_conn`` is not set and the server's limits
#: could not be read (PostgreSQL's default ``max_connections`` 100, less its 3
#: superuser slots and a margin).
FALLBACK_TOTAL = 90
#: The settings read, in order; ``reserved_connections`` is PostgreSQL 16's.
SETTINGS = ("max_connections", "superuser_reserved_connections", "reserved_connections")


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """The server's connection limits, as its settings say."""

    max_connections: int
    superuser_reserved: int
    reserved: int = 0  # reserved_connections (PostgreSQL 16+), for pg_use_reserved_connections

    @classmethod
    def from_settings(cls, values: dict[str, str | None]) -> ServerLimits:
        """From :data:`SETTINGS` as read; ValueError when one is missing or not a count."""

        def count(name: str, missing: int | None = None) -> int:
            raw = values.get(name)
            if raw is None:
                if missing is None:
                    raise ValueError(f"the server did not report {name}")
                return missing
            try:
                value = int(raw)
            except ValueError:
                raise ValueError(f"the server reported {name} = {raw!r}") from None
            if value < 0:
                raise ValueError(f"the server reported {name} = {value}")
            return value

        return cls(
            count("max_connections"),
            count("superuser_reserved_connections", 0),
            count("reserved_connections", 0),
        )

    @property
    def available(self) -> int:
        """Connections the server accepts from a role that may not use its reserved
        slots. dbgate never counts on those: they are the administrators' way in."""
        return max(0, self.max_connections - self.superuser_reserved - self.reserved)

    def describe(self) -> str:
        """The arithmetic of :attr:`available`, for the operator's log."""
        reserved = f" - reserved_connections {self.reserved}" if self.reserved else ""
        return (
            f"max_connections {self.max_connections} - superuser_reserved_connections "
            f"{self.superuser_reserved}{reserved} = {self.available}"
        )


def margin(available: int) -> int:
    """Connections left to everyone but dbgate when its limit is derived: an
    administrator's psql, monitoring, dbgate's own catalog reads and state database,
    other replicas: a tenth, and at least two."""
    return max(2, available // 10)


def derived_total(available: int) -> int:
    """The server connections dbgate opens when ``upstream.max_server_conn`` is not
    set: what the server accepts, less :func:`margin` (at least one)."""
    return max(1, available - margin(available))


def share(total: int, index: int, count: int) -> int:
    """Worker ``index`` of ``count``'s part of ``total``: the first ``total % count``
    workers get one more, and each at least one (a worker with no server connection
    could serve no one)."""
    return max(1, total // count + (1 if index < total % count else 0))


@dataclass(frozen=True, slots=True)
class Limit:
    """An effective ``max_server_conn`` and why it is that (for the log and for errors)."""

    value: int
    reason: str


def effective_limit(
    configured: int | None,
    server: ServerLimits | None,
    seat: tuple[int, int] = (0, 1),
) -> Limit:
    """This process's limit on server connections.

    ``configured``: ``upstream.max_server_conn`` for this process (with workers, its
    share already), or None when the key is not set. ``server``: the server's limits,
    None when unknown. ``seat``: (index, count) of this process among the workers.
    """
    index, count = seat
    of = f" (this worker's share: {count} workers)" if count > 1 else ""
    if server is None:
        if configured is not None:
            return Limit(configured, f"upstream.max_server_conn{of}; the server's limit is unknown")
        return Limit(
            share(FALLBACK_TOTAL, index, count),
            f"the default {FALLBACK_TOTAL}{of}: the server's limit could not be read",
        )
    available = server.available
    accepted = share(available, index, count)
    if configured is None:
        total = derived_total(available)
        return Limit(
            share(total, index, count),
            f"derived from the server: {server.describe()} connections for ordinary roles, "
            f"less {available - total} for other clients{of}; set upstream.max_server_conn "
            "to choose",
        )
    if configured <= accepted:
        return Limit(configured, f"upstream.max_server_conn{of}")
    return Limit(
        accepted,
        f"upstream.max_server_conn {configured}{of} capped to what the server accepts: "
        f"{server.describe()}",
    )


class ServerCapacity:
    """What dbgate knows of the server's limits, and when to read them again.

    The proxy asks :meth:`due` after each new upstream login and, when it says so,
    reads :data:`SETTINGS` on that session and reports the result with
    :meth:`learned` or :meth:`unreadable`; each resizes ``slots`` and logs the
    effective limit when it changes. :meth:`forget` (the server could not be reached
    or was full) makes the next login read them again.
    """

    def __init__(
        self,
        slots: ServerSlots,
        configured: int | None,
        seat: tuple[int, int] = (0, 1),
        *,
        read: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.slots = slots
        self.configured = configured
        self.seat = seat
        self.read = read
        self._clock = clock
        self.server: ServerLimits | None = None
        self._read_at: float | None = None
        self._reading = False
        #: The last limit logged was not the configured one (so coming back to it is news).
        self._departed = False
        if read:
            self.limit = effective_limit(configured, None, seat)
            # Unknown yet: one server connection at a time, the first one reads it.
            slots.resize(1)
        else:
            index, count = seat
            if configured is not None:
                self.limit = Limit(configured, "upstream.max_server_conn")
            else:
                self.limit = Limit(
                    share(FALLBACK_TOTAL, index, count), f"the default {FALLBACK_TOTAL}"
                )
            slots.resize(self.limit.value)
            log.info(
                "upstream.max_server_conn: %d server connections (%s; the server's own "
                "limit is not read: upstream.read_server_limits is off)",
                self.limit.value,
                self.limit.reason,
            )

    def due(self) -> bool:
        """Whether this new session should read the server's limits (and then claim it)."""
        if not self.read or self._reading:
            return False
        if self._read_at is not None and self._clock() - self._read_at < REFRESH_SECONDS:
            return False
        self._reading = True
        return True

    def learned(self, values: dict[str, str | None]) -> Limit:
        """The settings as read: the new limit (or :meth:`unreadable`'s, if they make no
        sense)."""
        try:
            server = ServerLimits.from_settings(values)
        except ValueError as e:
            return self.unreadable(str(e))
        self._done()
        self.server = server
        return self._apply(effective_limit(self.configured, server, self.seat))

    def unreadable(self, why: str) -> Limit:
        """The settings could not be read: the configured limit, or the fallback. Tried
        again after :data:`REFRESH_SECONDS`."""
        self._done()
        limit = effective_limit(self.configured, self.server, self.seat)
        log.warning("cannot read the upstream server's connection limits: %s", why)
        return self._apply(limit)

    def abandoned(self) -> None:
        """The session that was to read them went away first: the next one reads."""
        self._reading = False

    def forget(self) -> None:
        """Read the limits again at the next login (the server was unreachable, full,
        or restarted: its settings may have changed)."""
        self._read_at = None

    def _done(self) -> None:
        self._reading = False
        self._read_at = self._clock()

    def _apply(self, limit: Limit) -> Limit:
        """Resize to ``limit`` and log it when it changed: at INFO when dbgate chose the
        value or departs from the operator's (the operator must know), at DEBUG when
        it only confirms the configured one."""
        changed = limit != self.limit or self.slots.limit != limit.value
        self.limit = limit
        self.slots.resize(limit.value)
        if changed:
            as_configured = limit.value == self.configured and not self._departed
            self._departed = limit.value != self.configured
            log.log(
                logging.DEBUG if as_configured else logging.INFO,
                "upstream.max_server_conn: %d server connections (%s)",
                limit.value,
                limit.reason,
            )
        return limit
