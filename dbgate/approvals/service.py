"""The approval service the gate awaits: record, tell the agent, wait, return.

:class:`PgApprovalService` implements :class:`~dbgate.approvals.model.ApprovalService`
on the state database. For one held statement, :meth:`~PgApprovalService.hold`

1. masks the statement and its values (:func:`dbgate.pii.sql_mask.mask_sql`), hashes
   the raw form with the replica-shared HMAC key (for approve-then-retry), and
   records the request — durably, before anything else;
2. sends the agent a notice naming the request, what it waits for and its URL;
3. for ``wait_seconds == 0`` returns ``PENDING`` at once (the agent retries after
   approval); otherwise waits until a decision wakes it (:mod:`.wake`) or the wait
   runs out (``expired``); a cancelled wait (client CancelRequest, disconnect)
   marks the request ``withdrawn`` and re-raises.

It never raises for a state-database failure: the outcome is ``UNAVAILABLE`` with a
reason, and the gate refuses the statement (fail closed). When the service starts
it marks the still-pending holds of its own replica ``abandoned`` (they were lost
with the previous process), and from time to time it ends requests that no replica
will end (:meth:`ApprovalStore.sweep`). Nothing approved ever runs by itself: an
approval is only used by the waiting session or by the identical retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from dbgate.approvals.accounts import AccountStore
from dbgate.approvals.db import StateDB, create_pool
from dbgate.approvals.eligibility import refusal
from dbgate.approvals.errors import ApprovalError, StateUnavailable
from dbgate.approvals.matching import context_hash, fixes_parameters, match_hash, shape_key
from dbgate.approvals.model import ApprovalRequest, HoldOutcome, HoldStatus, Notify
from dbgate.approvals.store import (
    ApprovalStore,
    NewRequest,
    RequestRecord,
    ShapeRecord,
    StepHook,
)
from dbgate.approvals.wake import Waker
from dbgate.pii.sql_mask import mask_sql, mask_text

if TYPE_CHECKING:
    import asyncpg

    from dbgate.config import Config

log = logging.getLogger("dbgate.approvals")

#: Given the request, returns the planner's row estimate and a note (see
#: :func:`dbgate.approvals.estimate.estimate_rows`); the composition root binds it to
#: the agent's upstream connection details.
RowEstimator = Callable[[ApprovalRequest], Awaitable[tuple[int | None, str]]]

_FINAL = {
    "approved": HoldStatus.APPROVED,
    "rejected": HoldStatus.REJECTED,
    "expired": HoldStatus.EXPIRED,
    "withdrawn": HoldStatus.WITHDRAWN,
    "abandoned": HoldStatus.ABANDONED,
    "executed": HoldStatus.EXECUTED,
}


def default_replica_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _seconds(value: float) -> str:
    return f"{value:g} s"


class PgApprovalService:
    """:class:`ApprovalService` on the state database (PostgreSQL).

    ``dsn`` reaches the state database (the pool, and the one LISTEN connection);
    ``public_url`` is where approvers open the page (``{public_url}/approvals/{id}``);
    ``owners`` maps identity -> approver names that may not decide its requests.
    Pass ``pool`` to share one; otherwise the service makes (and closes) its own.
    """

    def __init__(
        self,
        dsn: str,
        *,
        public_url: str,
        replica: str | None = None,
        owners: Mapping[str, Sequence[str]] | None = None,
        pool: asyncpg.Pool | None = None,
        pool_max: int = 10,
        timeout: float = 5.0,
        approved_lifetime: float = 900.0,
        retry_window: float = 3600.0,
        max_shape_minutes: int = 1440,
        recheck_seconds: float = 2.0,
        abandon_after: float = 60.0,
        match_key: str | bytes | None = None,
        estimator: RowEstimator | None = None,
        migrate: bool = True,
    ) -> None:
        self.dsn = dsn
        self.public_url = public_url.rstrip("/")
        self.replica = replica or default_replica_id()
        self.owners: Mapping[str, Sequence[str]] = owners or {}
        self._pool = pool
        self._own_pool = pool is None
        self._pool_max = pool_max
        self._timeout = timeout
        self._approved_lifetime = approved_lifetime
        self._retry_window = retry_window
        self._max_shape_minutes = max_shape_minutes
        self._recheck_seconds = recheck_seconds
        self._abandon_after = abandon_after
        self._match_key = match_key.encode() if isinstance(match_key, str) else match_key
        self._estimator = estimator
        self._migrate = migrate
        #: Told of every committed step of a request (the store's ``on_event``): the
        #: audit trail, when the composition root attaches one before :meth:`start`.
        self.on_step: StepHook | None = None
        self._ready = False
        self._ready_lock = asyncio.Lock()
        self._closing = False
        self._background: set[asyncio.Task[object]] = set()
        self._waits = 0
        self._no_waits = asyncio.Event()
        self._no_waits.set()
        self._sweeper: asyncio.Task[None] | None = None
        self.store: ApprovalStore
        self.accounts: AccountStore
        self.waker: Waker

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        estimator: RowEstimator | None = None,
        pool: asyncpg.Pool | None = None,
        migrate: bool = True,
    ) -> PgApprovalService:
        """The service as ``config`` describes it (``state``, ``web``, ``approvals``);
        ``migrate=False`` when the caller has migrated the state database already."""
        if config.state is None:
            raise ValueError("approvals need a state database: set state.dsn in the config")
        scheme = "https://" if config.web is not None and config.web.tls is not None else "http://"
        web_url = scheme + (config.web.listen if config.web else "127.0.0.1:8080")
        if config.web is not None and config.web.public_url:
            web_url = config.web.public_url
        a = config.approvals
        return cls(
            config.state.dsn,
            public_url=web_url,
            replica=a.replica_id,
            owners=config.owners(),
            pool=pool,
            pool_max=config.state.pool_max,
            timeout=a.state_timeout_seconds,
            approved_lifetime=a.approved_lifetime_seconds,
            retry_window=a.retry_window_seconds,
            max_shape_minutes=a.max_shape_minutes,
            recheck_seconds=a.recheck_seconds,
            abandon_after=a.abandon_after_seconds,
            match_key=a.match_key,
            estimator=estimator,
            migrate=migrate,
        )

    # -- life -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, migrate, abandon this replica's old holds, start listening.

        Never fails for an unreachable state database: the service then answers
        holds with ``UNAVAILABLE`` and keeps trying to get ready in the background.
        """
        if self._pool is None:
            self._pool = await create_pool(self.dsn, max_size=self._pool_max, timeout=self._timeout)
        db = StateDB(self._pool, timeout=self._timeout)
        self.store = ApprovalStore(
            db,
            owners=self.owners,
            approved_lifetime=self._approved_lifetime,
            max_shape_minutes=self._max_shape_minutes,
        )
        self.store.on_event = self.on_step
        self.accounts = AccountStore(db)
        self.waker = Waker(
            self.dsn,
            self.store.statuses,
            recheck_seconds=self._recheck_seconds,
            connect_timeout=self._timeout,
        )
        self._closing = False
        try:
            await self._get_ready()
        except StateUnavailable as e:
            log.warning("approvals: state database not ready (%s); holds fail closed", e)
        await self.waker.start()
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="dbgate-approvals-sweep")

    async def stop(self) -> None:
        """Stop waiting: holds still waiting end ``abandoned``; close connections."""
        self._closing = True
        self.waker.wake_all()
        with contextlib.suppress(TimeoutError):  # let waiting holds record how they end
            async with asyncio.timeout(self._timeout * 2):
                await self._no_waits.wait()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        pending = list(self._background)
        if pending:
            await asyncio.wait(pending, timeout=self._timeout)
        await self.waker.stop()
        if self._own_pool and self._pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pool.close(), self._timeout)
            self._pool = None

    async def _get_ready(self) -> None:
        if self._ready:
            return
        async with self._ready_lock:
            if self._ready:
                return
            if self._migrate:
                from dbgate.state.migrate import apply_migrations

                async with self.store.db.connection() as conn:
                    await apply_migrations(conn)
            if self._match_key is None:
                self._match_key = await self.store.secret("match_key", secrets.token_bytes(32))
            n = await self.store.abandon_replica(
                self.replica, f"replica {self.replica} restarted while the statement was held"
            )
            if n:
                log.warning("approvals: %d held request(s) of this replica marked abandoned", n)
            self._ready = True

    async def _sweep_loop(self) -> None:
        period = max(self._recheck_seconds * 5, 5.0)
        while not self._closing:
            await asyncio.sleep(period)
            try:
                if not self._ready:
                    await self._get_ready()
                n = await self.store.sweep(self._abandon_after)
                if n:
                    log.info("approvals: %d overdue request(s) ended", n)
            except ApprovalError as e:
                log.debug("approvals: sweep failed: %s", e)
            except Exception as e:  # keep sweeping; a bug here must not stop the loop
                log.error("approvals: sweep failed (%s)", type(e).__name__)

    def url_for(self, request_id: int | str) -> str:
        return f"{self.public_url}/approvals/{request_id}"

    # -- ApprovalService --------------------------------------------------------------

    async def hold(self, request: ApprovalRequest, notify: Notify) -> HoldOutcome:
        """See :meth:`ApprovalService.hold` and the module docstring."""
        try:
            if self._closing:
                raise StateUnavailable("dbgate is shutting down")
            await self._get_ready()
            rec = await self.store.create(self._new_request(request))
        except ApprovalError as e:
            return self._unavailable(request, f"cannot record the approval request: {e}")
        except Exception as e:  # a bug must not let the statement through
            # Only the type: an exception's text may quote the raw statement.
            log.error("approvals: recording a request failed (%s)", type(e).__name__)
            return self._unavailable(
                request, f"cannot record the approval request (internal error {type(e).__name__})"
            )
        url = self.url_for(rec.id)
        wait = request.wait_seconds > 0
        log.info(
            "approval request %d recorded: identity=%s rule=%s categories=%s mode=%s",
            rec.id,
            request.requester.identity,
            request.rule or "-",
            ",".join(request.categories) or "-",
            rec.mode,
        )
        self._tell(notify, rec, request, url, wait)
        estimate = self._start_estimate(rec.id, request)
        if not wait:
            return HoldOutcome(
                HoldStatus.PENDING,
                request_id=str(rec.id),
                reason=(
                    f"approval request {rec.id} is waiting for a decision at {url}; "
                    "send the identical statement again once it is approved (within "
                    f"{_seconds(self._approved_lifetime)} of the approval)"
                ),
                url=url,
            )
        try:
            return await self._wait(rec.id, request.wait_seconds, url)
        except asyncio.CancelledError:
            await self._end_quietly(rec.id, "withdrawn", "the client cancelled or disconnected")
            raise
        finally:
            if estimate is not None and not estimate.done():
                estimate.cancel()

    async def approved_before(self, request: ApprovalRequest) -> HoldOutcome | None:
        """An approve-then-retry approval of this exact statement (used up now), or a
        shape approval covering it (recorded as a new, approved request); None when
        neither exists or the state database cannot say (the gate then holds)."""
        try:
            await self._get_ready()
            key = self._key()
            database = request.requester.database
            h = _match_hash(key, request)
            identity = request.requester.identity
            rec = await self.store.claim_retry(identity, h)
            if rec is None:
                rec = await self._use_shape(
                    request, h, context_hash(key, database, request.context)
                )
        except ApprovalError as e:
            log.warning("approvals: cannot look for an earlier approval: %s", e)
            return None
        except Exception as e:
            log.error("approvals: looking for an earlier approval failed (%s)", type(e).__name__)
            return None
        if rec is None:
            return None
        log.info("approval request %d used by identity=%s", rec.id, request.requester.identity)
        return HoldOutcome(
            HoldStatus.APPROVED,
            request_id=str(rec.id),
            reason=rec.reason,
            decided_by=rec.decided_by,
            url=self.url_for(rec.id),
        )

    async def executed(self, request_id: str) -> None:
        try:
            await self.store.mark_executed(int(request_id))
        except (ApprovalError, ValueError) as e:
            log.warning("approvals: cannot mark request %s executed: %s", request_id, e)

    # -- helpers ----------------------------------------------------------------------

    def _key(self) -> bytes:
        if self._match_key is None:
            raise StateUnavailable("the retry-matching key is not loaded yet")
        return self._match_key

    def _new_request(self, request: ApprovalRequest, mode: str | None = None) -> NewRequest:
        who = request.requester
        statement, params = mask_sql(request.sql, request.params, pii_columns=request.pii_columns)
        if mode is None:
            mode = "wait" if request.wait_seconds > 0 else "retry"
        deadline = request.wait_seconds if mode == "wait" else self._retry_window
        return NewRequest(
            mode=mode,
            deadline_seconds=deadline,
            identity=who.identity,
            identity_groups=tuple(sorted(who.groups)),
            owners=tuple(self.owners.get(who.identity, ())),
            application_name=mask_text(who.application_name),
            client_addr=who.client_addr,
            session_id=who.session_id,
            replica=self.replica,  # the process that waits (and abandons on restart)
            purpose=mask_text(who.purpose),
            model=mask_text(who.model),
            statement=statement,
            params=params,
            match_hash=_match_hash(self._key(), request),
            context_hash=context_hash(self._key(), who.database, request.context),
            fingerprint=request.fingerprint,
            categories=tuple(request.categories),
            reasons=tuple((code, mask_text(text)) for code, text in request.reasons),
            rule=request.rule,
            rule_message=mask_text(request.rule_message),
            tables=tuple(mask_text(t) for t in request.tables),  # a quoted name holds anything
            columns=tuple(mask_text(c) for c in request.columns),
            approver_groups=tuple(request.approver_groups),
            approvals_needed=max(1, request.approvals_needed),
            wait_seconds=max(0.0, request.wait_seconds),
            database=who.database,
        )

    def _unavailable(self, request: ApprovalRequest, reason: str) -> HoldOutcome:
        log.error(
            "approvals: holding a statement of identity=%s failed: %s",
            request.requester.identity,
            reason,
        )
        return HoldOutcome(HoldStatus.UNAVAILABLE, reason=reason)

    def _tell(
        self, notify: Notify, rec: RequestRecord, request: ApprovalRequest, url: str, wait: bool
    ) -> None:
        groups = " or ".join(rec.approver_groups) or "any approver group"
        who = f"{_plural(rec.approvals_needed, 'approval')} from {groups}"
        why = rec.rule_message or (f"rule {rec.rule!r}" if rec.rule else "the rules")
        if wait:
            message = (
                f"dbgate: statement held for approval (request {rec.id}): {why}; "
                f"waiting up to {_seconds(request.wait_seconds)} for {who}"
            )
        else:
            message = (
                f"dbgate: statement needs approval (request {rec.id}): {why}; "
                f"it needs {who}; retry the identical statement once approved"
            )
        try:
            notify(message, f"Decide at {url}")
        except Exception:
            log.exception("approvals: sending the hold notice failed")

    def _start_estimate(
        self, request_id: int, request: ApprovalRequest
    ) -> asyncio.Task[object] | None:
        if self._estimator is None:
            return None
        estimator = self._estimator

        async def run() -> None:
            try:
                rows, note = await estimator(request)
                await self.store.set_estimate(request_id, rows, note)
            except ApprovalError as e:
                log.debug("approvals: cannot store the row estimate: %s", e)
            except Exception:
                log.exception("approvals: the row estimate failed")

        return self._spawn(run())

    def _spawn(self, coro: Awaitable[object]) -> asyncio.Task[object]:
        task: asyncio.Task[object] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _end_quietly(self, request_id: int, status: str, reason: str) -> None:
        """End a pending request even while our own task is being cancelled."""

        async def end() -> None:
            try:
                if await self.store.end_pending(request_id, status, reason):
                    log.info("approval request %d %s: %s", request_id, status, reason)
            except ApprovalError as e:
                log.warning("approvals: cannot mark request %d %s: %s", request_id, status, e)

        # Shielded: a (further) cancellation interrupts only this await, and the
        # update still completes in the background.
        await asyncio.shield(self._spawn(end()))

    async def _wait(self, request_id: int, wait_seconds: float, url: str) -> HoldOutcome:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        event = self.waker.register(request_id)
        self._waits += 1
        self._no_waits.clear()
        try:
            while True:
                remaining = deadline - loop.time()
                if self._closing:
                    await self._end_quietly(request_id, "abandoned", "dbgate is shutting down")
                    return await self._outcome(request_id, url)
                if remaining <= 0:
                    if await self._end(request_id, "expired", _expired_reason(wait_seconds)):
                        return HoldOutcome(
                            HoldStatus.EXPIRED,
                            request_id=str(request_id),
                            reason=_expired_reason(wait_seconds),
                            url=url,
                        )
                    return await self._outcome(request_id, url)  # decided meanwhile
                # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a
                # cancellation that coincides with the event being set, and a
                # cancelled hold must end withdrawn.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await event.wait()
                event.clear()
                if self._closing:
                    continue
                try:
                    outcome = await self._outcome(request_id, url)
                except ApprovalError as e:
                    log.warning("approvals: cannot read request %d: %s", request_id, e)
                    continue  # keep waiting; the deadline still applies
                if outcome.status is not HoldStatus.PENDING:
                    return outcome
        except ApprovalError as e:
            return HoldOutcome(
                HoldStatus.UNAVAILABLE,
                request_id=str(request_id),
                reason=f"lost the state database while waiting: {e}",
                url=url,
            )
        finally:
            self.waker.unregister(request_id)
            self._waits -= 1
            if self._waits == 0:
                self._no_waits.set()

    async def _end(self, request_id: int, status: str, reason: str) -> bool:
        return await self.store.end_pending(request_id, status, reason)

    async def _outcome(self, request_id: int, url: str) -> HoldOutcome:
        # Claiming records that the waiting session took the approval. Only this
        # session waits for a request of mode "wait" (retries claim "retry" ones), so
        # an approval already claimed was claimed by an earlier, failed round trip
        # of this same wait.
        rec, _claimed = await self.store.finish(request_id)
        status = _FINAL.get(rec.status, HoldStatus.PENDING)
        if status is HoldStatus.APPROVED:
            log.info("approval request %d approved by %s", request_id, ",".join(rec.decided_by))
        return HoldOutcome(
            status,
            request_id=str(request_id),
            reason=rec.reason,
            decided_by=rec.decided_by,
            url=url,
        )

    async def _use_shape(
        self, request: ApprovalRequest, h: bytes, context: bytes
    ) -> RequestRecord | None:
        identity = request.requester.identity
        shapes = await self.store.find_shapes(
            identity, request.fingerprint, h, request.requester.database, context
        )
        if not shapes:
            return None
        masked, _ = mask_sql(request.sql, request.params, pii_columns=request.pii_columns)
        key = shape_key(masked)
        for shape in shapes:
            why = await self._shape_refusal(shape, request, key)
            if why is None:
                return await self.store.record_shape_use(
                    shape.id, self._new_request(request, "shape")
                )
            log.info(
                "approvals: shape approval %d does not cover this statement: %s", shape.id, why
            )
        return None

    async def _shape_refusal(
        self, shape: ShapeRecord, request: ApprovalRequest, key: str | None
    ) -> str | None:
        """Why this shape approval does not cover the statement, or None when it does:
        the same statement up to its data values (:func:`shape_key`, on the masked
        texts approvers saw), held by the same rule for the same reasons, and a
        creator who may still decide it alone."""
        if key is None or shape_key(shape.statement) != key:
            return "the statement differs in more than its values"
        if not shape.params_fixed and request.prepared:
            return (
                "it runs a prepared statement (EXECUTE): only a shape approval with fixed "
                "values covers it, and only while the statement is the one approved"
            )
        if not shape.params_fixed and fixes_parameters(key):
            return (
                "its parameters are not data (arguments of a function, such as "
                "set_config($1, $2, false)): only a shape approval with fixed values covers it"
            )
        source = await self.store.get(shape.source_request) if shape.source_request else None
        if source is None or (
            source.rule != request.rule
            or tuple(sorted(source.categories)) != tuple(sorted(request.categories))
            or sorted(code for code, _ in source.reasons)
            != sorted(code for code, _ in request.reasons)
        ):
            return "the statement is not held by the same rule for the same reasons"
        creator = await self.store.creator(shape.created_by)
        if creator is None:
            return "its approver no longer exists"
        owners = set(self.owners.get(request.requester.identity, ()))
        why = refusal(creator, request.requester.identity, request.approver_groups, owners)
        if why is None and request.approvals_needed > 1:
            why = f"this statement's rule needs {request.approvals_needed} approvers"
        return why


def _match_hash(key: bytes, request: ApprovalRequest) -> bytes:
    """What recognises the identical statement again: its text and values, and the
    texts of the prepared statements it runs (``EXECUTE p`` is the same text whatever
    ``p`` was prepared as). A NUL cannot be in a value, so the marker is no value."""
    params = request.params
    if request.prepared:
        params = (*params, "\0prepared", *request.prepared)
    return match_hash(key, request.sql, params, request.requester.database, request.context)


def _expired_reason(wait_seconds: float) -> str:
    return f"nobody decided within {_seconds(wait_seconds)}"


__all__ = ["PgApprovalService", "RowEstimator", "default_replica_id"]
