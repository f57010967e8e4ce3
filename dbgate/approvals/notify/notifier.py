"""Tell people about approval requests: hear of them, claim them, send, record.

The :class:`Notifier` needs no call from the hold path. It subscribes to the
approvals service's wake-up feed (``service.waker.subscribe``): the state database
announces every new request and every change of status on ``dbgate_approvals``
(:mod:`dbgate.approvals.wake`), whichever replica, CLI or API caused it. For each
``request:<id>:pending`` it sends ``created``; for each final status, ``finished``.

* **Never blocks a hold.** The subscriber callback only starts a task; reading the
  request, claiming the delivery and every HTTP attempt run in that task.
* **Once per target, across replicas.** Each replica hears every announcement; the
  delivery row's unique key lets exactly one of them send (:mod:`.deliveries`).
* **Retried, then recorded.** Attempts back off exponentially; a delivery that
  never arrives is marked ``failed`` with the reason, logged, and shown on the page.
* **Nothing lost for long.** Every ``catch_up_seconds`` the notifier sends what is
  due but unclaimed (a NOTIFY lost while reconnecting, a replica stopped mid-way)
  and takes over deliveries left ``sending`` by a replica that stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dbgate.approvals.errors import ApprovalError
from dbgate.approvals.notify.deliveries import FINISHED_STATUSES, DeliveryStore
from dbgate.approvals.notify.sender import AttemptResult, RetryPolicy, Sender
from dbgate.approvals.notify.targets import Target, targets_from_config
from dbgate.approvals.store import RequestRecord

if TYPE_CHECKING:
    from dbgate.approvals.service import PgApprovalService
    from dbgate.config import NotificationsConfig

log = logging.getLogger("dbgate.notify")


@dataclass(frozen=True, slots=True)
class Settled:
    """One delivery that ended on this replica (delivered or given up)."""

    request_id: int
    event: str
    target: str
    ok: bool
    attempts: int
    error: str


class Notifier:
    """Sends webhook, Slack and Teams messages about ``service``'s requests."""

    def __init__(
        self,
        service: PgApprovalService,
        targets: Sequence[Target],
        *,
        policy: RetryPolicy | None = None,
        concurrency: int = 8,
        catch_up_seconds: float = 30.0,
        catch_up_window_seconds: float = 3600.0,
    ) -> None:
        self.service = service
        self.targets = list(targets)
        self.policy = policy or RetryPolicy()
        self.sender = Sender(self.policy, concurrency)
        self._catch_up_seconds = catch_up_seconds
        self._catch_up_window = catch_up_window_seconds
        self._tasks: set[asyncio.Task[None]] = set()
        self._unsubscribe: Callable[[], None] | None = None
        self._catch_up: asyncio.Task[None] | None = None
        self._closing = False
        self.deliveries: DeliveryStore
        #: The last deliveries that ended here, newest last (see :meth:`wait_until`).
        self.settled: deque[Settled] = deque(maxlen=1000)
        self._settled_changed = asyncio.Condition()

    @classmethod
    def from_config(cls, config: NotificationsConfig, service: PgApprovalService) -> Notifier:
        return cls(
            service,
            targets_from_config(config),
            policy=RetryPolicy(
                timeout=config.timeout_seconds,
                max_attempts=config.max_attempts,
                backoff=config.backoff_seconds,
                max_backoff=config.max_backoff_seconds,
            ),
            concurrency=config.concurrency,
            catch_up_seconds=config.catch_up_seconds,
            catch_up_window_seconds=config.catch_up_window_seconds,
        )

    # -- life -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start after ``service.start()`` (it creates the store and the wake-up feed)."""
        self._closing = False
        self.deliveries = DeliveryStore(self.service.store.db)
        await self.sender.start()
        if not self.targets:
            return
        self._unsubscribe = self.service.waker.subscribe(self.on_announcement)
        self._catch_up = asyncio.create_task(self._catch_up_loop(), name="dbgate-notify-catch-up")
        log.info("notify: sending to %s", ", ".join(t.name for t in self.targets))

    async def stop(self, grace: float | None = None) -> None:
        """Stop hearing; let deliveries in flight finish for ``grace`` seconds, then
        cancel them (their rows stay ``sending`` and another replica takes them over).
        Stop before ``service.stop()``."""
        self._closing = True
        if self._unsubscribe is not None:
            with contextlib.suppress(ValueError):
                self._unsubscribe()
            self._unsubscribe = None
        if self._catch_up is not None:
            self._catch_up.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._catch_up
            self._catch_up = None
        await self.drain(self.policy.timeout if grace is None else grace)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        await self.sender.close()

    async def drain(self, timeout: float) -> bool:
        """Wait until no delivery is in flight (True) or ``timeout`` passed (False)."""
        if not self._tasks:
            return True
        _done, pending = await asyncio.wait(list(self._tasks), timeout=timeout)
        return not pending

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    # -- hearing ----------------------------------------------------------------------

    def on_announcement(self, payload: str) -> None:
        """The wake-up feed's callback: ``request:<id>:<status>``; never blocks."""
        kind, _, rest = payload.partition(":")
        if kind != "request" or self._closing:
            return
        ident, _, status = rest.partition(":")
        if not ident.isdigit():
            return
        if status == "pending":
            event = "created"
        elif status in FINISHED_STATUSES and status != "executed":
            event = "finished"
        else:
            return
        self._spawn(self._announce(int(ident), event))

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _announce(self, request_id: int, event: str, only: str | None = None) -> None:
        try:
            rec = await self.service.store.get(request_id)
        except ApprovalError as e:
            log.warning(
                "notify: cannot read request %d for its %s message: %s", request_id, event, e
            )
            return
        if rec.mode == "shape":
            return  # ran under a standing approval: nobody needs to act
        if event == "created" and rec.status != "pending":
            return  # decided before we got to it; its 'finished' message follows
        for target in self.targets:
            if event not in target.events or (only is not None and target.name != only):
                continue
            try:
                delivery_id = await self.deliveries.claim(
                    request_id, event, target.name, self.service.replica
                )
            except ApprovalError as e:
                log.warning(
                    "notify: cannot claim the %s message of request %d: %s",
                    target.name,
                    request_id,
                    e,
                )
                continue
            if delivery_id is not None:
                self._spawn(self._deliver(target, delivery_id, event, rec))

    # -- sending ----------------------------------------------------------------------

    async def _deliver(
        self,
        target: Target,
        delivery_id: int,
        event: str,
        rec: RequestRecord,
        attempts_before: int = 0,
    ) -> None:
        url = self.service.url_for(rec.id)
        stable_id = f"{rec.id}.{event}.{delivery_id}"  # the same on every retry
        body = target.body(event, rec, url, stable_id)
        what = f"{target.name} {event} message of request {rec.id}"

        async def record(attempt: int, result: AttemptResult) -> None:
            if not result.ok:
                with contextlib.suppress(ApprovalError):
                    await self.deliveries.attempted(
                        delivery_id, attempts_before + attempt, result.error
                    )

        attempts, result = await self.sender.deliver(
            target.url,
            body,
            lambda: target.headers(body, stable_id),
            on_attempt=record,
            what=what,
        )
        total = attempts_before + attempts
        if result.ok:
            log.info("notify: %s delivered (attempt %d)", what, total)
        else:
            log.warning("notify: %s failed after %d attempt(s): %s", what, total, result.error)
        try:
            await self.deliveries.finish(delivery_id, total, None if result.ok else result.error)
        except ApprovalError as e:
            log.warning("notify: cannot record how the %s went: %s", what, e)
        async with self._settled_changed:
            self.settled.append(Settled(rec.id, event, target.name, result.ok, total, result.error))
            self._settled_changed.notify_all()

    async def wait_until(
        self, predicate: Callable[[Sequence[Settled]], bool], timeout: float = 30.0
    ) -> None:
        """Wait until ``predicate(self.settled)`` holds (tests and shutdown use it to
        wait for what happened, not for a guessed time)."""
        async with asyncio.timeout(timeout), self._settled_changed:
            await self._settled_changed.wait_for(lambda: predicate(list(self.settled)))

    # -- catching up ------------------------------------------------------------------

    async def catch_up(self) -> int:
        """Send what is due and unclaimed, take over stale deliveries; how many."""
        pairs = [(t.name, e) for t in self.targets for e in sorted(t.events)]
        by_name = {t.name: t for t in self.targets}
        n = 0
        for rid, event, target in await self.deliveries.missing(
            pairs, self._catch_up_window, min_age_seconds=1.0
        ):
            n += 1
            await self._announce(rid, event, only=target)
        stale_after = self.policy.longest_delivery() + 60
        for d in await self.deliveries.reclaim_stale(stale_after, self.service.replica):
            t = by_name.get(d.target)
            if t is None:
                continue
            try:
                rec = await self.service.store.get(d.request_id)
            except ApprovalError:
                continue
            n += 1
            self._spawn(self._deliver(t, d.id, d.event, rec, d.attempts))
        return n

    async def _catch_up_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(self._catch_up_seconds)
            try:
                n = await self.catch_up()
                if n:
                    log.info("notify: caught up with %d message(s)", n)
            except ApprovalError as e:
                log.debug("notify: catch-up failed: %s", e)
            except Exception as e:  # keep going; a bug here must not stop notifications
                log.error("notify: catch-up failed (%s)", type(e).__name__)
