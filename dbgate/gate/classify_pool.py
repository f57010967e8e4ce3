"""Classification off the event loop: expensive statements go to worker processes.

dbgate serves every session from one event loop, so a statement that takes seconds to
classify (megabytes of VALUES, an OR chain, a giant literal) would freeze every other
session for as long. The gate asks :meth:`ClassifyPool.ahead` before it classifies:

* **inline** (``None``): the text is in the classifier's cache, or
  :func:`~dbgate.policy.prescan.classification_cost` estimates it under
  ``inline_budget_us`` (the estimate is linear, C-speed, and errs high). Almost every
  statement of an ordinary workload takes this path and pays one length check, a
  cost estimate of a short text or one dict lookup;
* **worker** (an awaitable): the statement is classified in a worker process
  (:mod:`dbgate.gate.classify_worker`) with the same arguments. The result is stored
  in the classifier's cache (a text it would cache: next time it is inline) and handed
  to the gate for the one statement that waits for it; the awaitable resolves to None
  and the gate judges the statement as usual.

When a statement cannot be classified, the awaitable resolves to a
:class:`~dbgate.policy.model.Decision` instead, which the gate turns into a verdict as
it does any other (fail closed, never allowed):

* its estimated cost is more than :data:`HOPELESS` times the ``time_budget``
  (estimated from samples of the text when it is too long to estimate whole): **held**
  as opaque at once, "too large to classify in time". A worker would only burn its
  budget on it and be killed and replaced — seconds of CPU, and a new process to
  start, taken from every other session on a small host — to reach the same hold;
* its ``time_budget`` ran out (counted from the moment it was asked for, waiting
  included): **held** as opaque, "classifying this statement took too long"; a worker
  still busy with it is killed and replaced;
* every worker is busy and ``queue_size`` statements already wait: **held** as opaque
  at once (never dropped, never waited for without bound);
* the worker died while classifying it (a crash, the memory limit): **refused**;
  the worker is replaced and the statements queued behind it continue.

**PII lineage** (which outputs of a statement carry PII, which tokens it sends back)
is traced the same way: :meth:`ClassifyPool.trace_ahead` answers None (trace inline:
cheap by the same estimate), or an awaitable that resolves to the statement's
:class:`~dbgate.pii.lineage.Analysis` traced in a worker against the room's coverage,
or to a Decision (held or refused, for the same reasons, in words about tracing PII).

A hold without an approval service is the gate's usual refusal. Workers are started
with ``start()`` and replaced in the background; a worker that dies before it is ready
is restarted with a growing back-off, and while none is ready statements wait in the
queue and are held when their budget ends. ``workers`` 0 turns the pool off
(everything inline, as without it).

Replies are unpickled with an allow-list of the classifier's and the lineage walk's
value types: a worker reads hostile text, and even if one were subverted, its reply
could only be a classification or an analysis, never code.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import pickle
import re
import sys
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from dbgate.gate.classify_worker import HEADER, Request
from dbgate.policy.keys import KeyCatalog
from dbgate.policy.model import (
    Action,
    Category,
    Classification,
    Decision,
    Prepared,
    Reason,
    StatementClass,
)
from dbgate.policy.prescan import classification_cost

log = logging.getLogger("dbgate.gate.classify")

__all__ = ["ClassifyPool", "PoolStats", "default_workers", "sampled_cost"]

#: Texts this short are always classified inline: no estimate is needed to know.
_TINY = 256
#: The estimate starts at 0.6 µs per character: texts longer than budget / 0.6 cannot
#: be under it, so their estimate (several passes over the text) is never computed.
_US_PER_CHAR = 0.6
_EXECUTE = re.compile(r"execute", re.IGNORECASE)
#: Classifications handed from a worker to the statement waiting for it, not yet
#: taken (its session left): bounded so that they cannot pile up.
_HANDOVER_ENTRIES = 256
_HANDOVER_CHARS = 64 * 1024 * 1024
#: Key catalogs a worker keeps before it is told to forget them all.
_CATALOGS_PER_WORKER = 16
#: PII coverages (one per database and schema snapshot) a worker keeps likewise.
_COVERAGES_PER_WORKER = 4
_RESTART_BACKOFF = (0.1, 5.0)
#: A statement estimated to cost more than this many times the time budget is held at
#: once. The estimate errs high by up to ~17x for one giant literal (its worst case: 50 MB
#: estimated at 30 s, classified in ~1.8 s), so a literal-heavy text just past this may
#: have fit; a text this costly would be held after its budget on any busy host anyway.
HOPELESS = 10
#: Windows of a long text whose estimated cost stands for the whole text's.
_SAMPLES, _SAMPLE_CHARS = 16, 4096
#: The estimate's fixed term per text, not per window (prescan.classification_cost).
_FIXED_US = 50
#: How a worker starts: its priority lowered first, then its imports (a replacement
#: worker's start is a fair share of its cost, and must not compete with the sessions'
#: work either). ``idle``: also the SCHED_IDLE policy (Linux), under which any session's
#: process that wakes takes the CPU at once: a niced process still delays a woken one
#: by a scheduler slice, and a relay's every message is a wake-up (issue 10's noisy
#: neighbour on a loaded 2-core host: pgbench at 0.51-0.58x of its TPS beside niced
#: workers, 0.65-0.95x beside idle ones).
_IDLE = "hasattr(os, 'SCHED_IDLE') and os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0)); "


def worker_boot(scheduling: str = "idle") -> str:
    """The ``python -c`` program that starts a worker with ``scheduling`` (idle | nice)."""
    return (
        "import os, runpy, sys; os.nice(10); "
        + (_IDLE if scheduling == "idle" else "")
        + "sys.argv.insert(1, '--niced'); "
        "runpy.run_module('dbgate.gate.classify_worker', run_name='__main__', alter_sys=True)"
    )


def default_workers() -> int:
    """min(2, cores): enough to keep a hostile statement from queueing ordinary cold
    ones behind it, few enough to leave the cores to the event loop."""
    return max(1, min(2, os.cpu_count() or 1))


def sampled_cost(sql: str) -> int:
    """:func:`~dbgate.policy.prescan.classification_cost` of a long text, estimated from
    :data:`_SAMPLES` evenly spaced windows: a fixed amount of work on the event loop
    however long the text (the full estimate reads it several times). It only
    decides between a worker and holding at once, never allows anything: a text
    that looks cheaper in its samples than it is still meets the time budget."""
    n = len(sql)
    if n <= _SAMPLES * _SAMPLE_CHARS:
        return classification_cost(sql)
    step = n // _SAMPLES
    windows = sum(
        classification_cost(sql[i * step : i * step + _SAMPLE_CHARS]) - _FIXED_US
        for i in range(_SAMPLES)
    )
    return _FIXED_US + windows * n // (_SAMPLES * _SAMPLE_CHARS)


def _opaque(code: str, message: str) -> Classification:
    """A statement that was not classified: opaque, never cached, its own reason."""
    return Classification(
        statements=(
            StatementClass(
                categories=frozenset({Category.OPAQUE}),
                reasons=(Reason(Category.OPAQUE, code, message),),
            ),
        ),
        session_dependent=True,
    )


def _unclassified(action: Action, code: str, message: str) -> Decision:
    classification = _opaque(code, message)
    return Decision(
        action,
        code,
        message,
        classification=classification,
        reasons=classification.reasons,
    )


# Each reason: (code, message when classifying, message when tracing PII).
TIMED_OUT = (
    "classify-timeout",
    "classifying this statement took too long, so dbgate holds it as opaque",
    "tracing PII through this statement took too long, so dbgate holds it",
)
BUSY = (
    "classify-busy",
    "dbgate's classification workers are all busy, so it holds this statement as opaque",
    "dbgate's classification workers are all busy, so it holds this statement: its "
    "PII could not be traced",
)
CRASHED = (
    "classify-crashed",
    "the classification worker stopped while classifying this statement, so dbgate refuses it",
    "the classification worker stopped while tracing PII through this statement, so "
    "dbgate refuses it",
)
TOO_LARGE = (
    "classify-too-large",
    "this statement is too large to classify within dbgate's time budget, so dbgate "
    "holds it as opaque",
    "this statement is too large to trace PII through within dbgate's time budget, so "
    "dbgate holds it",
)
BIND_COSTLY = (
    "classify-bind-costly",
    "this statement is decided on its parameter values, and classifying it again with "
    "them would take too long to do while other sessions wait, so dbgate holds it as opaque",
)


class _Replies(pickle.Unpickler):
    """Unpickles only the classifier's value types (see the module docstring)."""

    _ALLOWED = (
        frozenset(
            {
                ("builtins", "frozenset"),
                ("builtins", "set"),
                ("copyreg", "_reconstructor"),
                ("builtins", "object"),
            }
        )
        | {
            ("dbgate.policy.model", name)
            for name in (
                "Category",
                "Classification",
                "GuardSetting",
                "PreparedEffect",
                "Reason",
                "StatementClass",
            )
        }
        | {
            ("dbgate.pii.lineage.results", name)
            for name in ("Analysis", "Output", "StatementLineage", "TokenSite")
        }
        | {("dbgate.pii.lin", "lin")}
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"a classification worker sent {module}.{name}")
        return super().find_class(module, name)


def _load_reply(data: bytes) -> Any:
    return _Replies(io.BytesIO(data)).load()


@dataclass
class PoolStats:
    """Counters since start (also read by tests and the bench)."""

    inline: int = 0
    offloaded: int = 0
    classified: int = 0
    #: statements whose PII lineage a worker traced
    traced: int = 0
    timed_out: int = 0
    busy: int = 0
    too_large: int = 0
    crashed: int = 0
    restarts: int = 0


@dataclass(eq=False)
class _Job:
    sql: str
    prepared: dict[str, Any] | None
    keys: KeyCatalog | None
    future: asyncio.Future[Any]
    deadline: float
    timer: asyncio.TimerHandle | None = None
    worker: _Worker | None = None
    #: the PII coverage to trace the statement's lineage against (else: classify it)
    coverage: Any = None

    def failed(self, reason: tuple[str, ...], action: Action = Action.HOLD) -> Decision:
        """The decision when the statement's job could not be done, for ``reason``."""
        code, classifying, tracing = reason
        return _unclassified(action, code, tracing if self.coverage is not None else classifying)


@dataclass(eq=False)
class _Worker:
    process: asyncio.subprocess.Process
    pid: int
    ready: bool = False
    job: _Job | None = None
    killed: bool = False
    reader: asyncio.Task[None] | None = None
    #: Key catalogs sent to it, by key; holding the relations keeps their id unique.
    catalogs: OrderedDict[tuple[int, int | str], Any] = field(default_factory=OrderedDict)
    #: PII coverages sent to it, by id (held, so the id stays unique).
    coverages: OrderedDict[int, Any] = field(default_factory=OrderedDict)


class ClassifyPool:
    """Worker processes that classify the statements too expensive for the event loop.

    ``workers``: processes (None: :func:`default_workers`; 0: off). ``inline_budget_us``:
    the estimated cost under which a text is classified inline. ``time_budget``:
    seconds a statement may wait for its classification. ``queue_size``: statements
    that may wait for a free worker. ``memory_mb``: each worker's address-space limit
    (0: none). ``scheduling``: ``idle`` (SCHED_IDLE and nice +10) or ``nice`` (+10). ``command``: how a worker is started (tests may wrap it).
    """

    def __init__(
        self,
        *,
        workers: int | None = None,
        inline_budget_us: int = 2000,
        time_budget: float = 2.0,
        queue_size: int = 64,
        memory_mb: int = 0,
        scheduling: str = "idle",
        command: tuple[str, ...] | None = None,
    ) -> None:
        self.size = default_workers() if workers is None else workers
        self.inline_budget_us = inline_budget_us
        self.time_budget = time_budget
        self.queue_size = queue_size
        self.memory_mb = memory_mb
        self._command = command or (sys.executable, "-c", worker_boot(scheduling))
        self.stats = PoolStats()
        self._workers: list[_Worker] = []
        self._queue: deque[_Job] = deque()
        self._handover: OrderedDict[tuple[str, Any], Classification] = OrderedDict()
        self._handover_chars = 0
        self._closed = False
        self._failures = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._max_chars = int(inline_budget_us / _US_PER_CHAR)
        from dbgate.policy.classify import is_cached, remember

        self._is_cached = is_cached
        self._remember = remember

    @classmethod
    def from_config(cls, config: Any) -> ClassifyPool | None:
        """The pool for ``config.classify`` (:class:`dbgate.config.ClassifyConfig`), or
        None when it is off."""
        c = config.classify
        workers = default_workers() if c.workers is None else c.workers
        if workers == 0:
            return None
        return cls(
            workers=workers,
            inline_budget_us=c.inline_budget_us,
            time_budget=c.time_budget_seconds,
            queue_size=c.queue_size,
            memory_mb=c.worker_memory_mb,
            scheduling=c.worker_scheduling,
        )

    # --- the gate's side -------------------------------------------------------

    def wrap(self, classify: Callable[..., Any]) -> Callable[..., Any]:
        """The gate's classifier with the workers' results handed over first: a text a
        worker just classified for this statement is not classified again."""
        handover = self._handover

        def classified(sql: str, **kwargs: Any) -> Any:
            if handover:
                keys = kwargs.get("keys")
                result = handover.pop((sql, keys.cache_token if keys is not None else None), None)
                if result is not None:
                    self._handover_chars -= len(sql)
                    return result
            return classify(sql, **kwargs)

        return classified

    def ahead(
        self, sql: str, prepared: Prepared | None, keys: KeyCatalog | None
    ) -> Awaitable[Decision | None] | None:
        """None: classify ``sql`` inline now. Otherwise an awaitable that resolves when
        it was classified (None: classify it now, the answer is waiting) or could not
        be (a :class:`Decision` to act on). See the module docstring."""
        if len(sql) <= _TINY and (not prepared or _EXECUTE.search(sql) is None):
            self.stats.inline += 1
            return None
        handover = self._handover  # looked up only when not empty: the key hashes the text
        if handover and (sql, keys.cache_token if keys is not None else None) in handover:
            return None
        cost = self._estimate(sql, prepared)
        if (cost is not None and cost <= self.inline_budget_us) or self._is_cached(sql, keys=keys):
            self.stats.inline += 1
            return None
        if cost is None:
            cost = sampled_cost(sql)
        if cost > HOPELESS * self.time_budget * 1_000_000:
            return self._too_large(TOO_LARGE[1])
        return self._submit(sql, prepared, keys)

    def trace_ahead(self, sql: str, coverage: Any) -> Awaitable[Any] | None:
        """None: trace the PII lineage of ``sql`` inline now (cheap). Otherwise an
        awaitable that resolves to its :class:`~dbgate.pii.lineage.Analysis`, traced
        in a worker against ``coverage`` (the room's
        :class:`~dbgate.pii.coverage.Coverage`, sent to each worker once), or to a
        :class:`Decision` when that could not be done (see the module docstring).
        The walk parses and reads the whole tree as classifying does: the same
        estimate decides."""
        if len(sql) <= _TINY:
            return None
        cost = self._estimate(sql, None)
        if cost is not None and cost <= self.inline_budget_us:
            return None
        if cost is None:
            cost = sampled_cost(sql)
        if cost > HOPELESS * self.time_budget * 1_000_000:
            return self._too_large(TOO_LARGE[2])
        return self._submit(sql, None, None, coverage)

    def _too_large(self, message: str) -> Awaitable[Decision]:
        self.stats.too_large += 1
        held: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        held.set_result(_unclassified(Action.HOLD, TOO_LARGE[0], message))
        return held

    def bind_verdict(self, sql: str, params: Any) -> Decision | None:
        """Whether a statement re-classified at Bind with its values (``needs_bind``:
        parsed again with them, never cached) is cheap enough to do inline: None when
        it is, else the hold that replaces it. The values add to the text's cost."""
        extra = sum(len(p) for p in params or () if p is not None)
        cost = self._estimate(sql, None)
        if cost is not None and cost + _US_PER_CHAR * extra <= self.inline_budget_us:
            return None
        return _unclassified(Action.HOLD, *BIND_COSTLY)

    def _estimate(self, sql: str, prepared: Prepared | None) -> int | None:
        """The estimated cost, or None when it is certainly over the budget."""
        if len(sql) > self._max_chars:
            return None
        cost = classification_cost(sql)
        if prepared and _EXECUTE.search(sql) is not None:
            # EXECUTE is classified by the body it runs, never cached: count each
            # body the session may mean.
            for texts in prepared.values():
                for body in (texts,) if isinstance(texts, str) else texts:
                    if len(body) > self._max_chars:
                        return None
                    cost += classification_cost(body)
        return cost

    # --- the queue ---------------------------------------------------------------

    def _submit(
        self, sql: str, prepared: Prepared | None, keys: KeyCatalog | None, coverage: Any = None
    ) -> Awaitable[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self.stats.offloaded += 1
        job = _Job(
            sql,
            dict(prepared.items()) if prepared else None,
            keys,
            future,
            deadline=loop.time() + self.time_budget,
            coverage=coverage,
        )
        idle = self._idle()
        if idle is None and self.queued() >= self.queue_size:
            self.stats.busy += 1
            future.set_result(job.failed(BUSY))
            return future
        job.timer = loop.call_at(job.deadline, self._expire, job)
        if idle is not None:
            self._dispatch(idle, job)
        else:
            self._queue.append(job)
        return future

    def _idle(self) -> _Worker | None:
        for worker in self._workers:
            if worker.ready and worker.job is None and not worker.killed:
                return worker
        return None

    def _next(self, worker: _Worker) -> None:
        while self._queue:
            job = self._queue.popleft()
            if not job.future.done():
                self._dispatch(worker, job)
                return

    def _dispatch(self, worker: _Worker, job: _Job) -> None:
        keys = job.keys
        request = Request(job=id(job), prepared=job.prepared)
        if job.coverage is not None:
            request = self._tracing(worker, request, job.coverage)
        elif keys is not None:
            key = (id(keys.relations), keys.version)
            forget = False
            relations = None
            if key not in worker.catalogs:
                if len(worker.catalogs) >= _CATALOGS_PER_WORKER:
                    worker.catalogs.clear()
                    worker.coverages.clear()  # the worker forgets both
                    forget = True
                worker.catalogs[key] = relations = keys.relations
            request = replace(
                request,
                catalog=key,
                search_path=keys.search_path,
                relations=dict(relations) if relations is not None else None,
                forget=forget,
            )
        head = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        text = job.sql.encode("utf-8", "surrogatepass")
        stdin = worker.process.stdin
        assert stdin is not None
        worker.job = job
        job.worker = worker
        stdin.write(HEADER.pack(len(head), len(text)) + head)
        stdin.write(text)  # the transport writes it as the pipe takes it

    @staticmethod
    def _tracing(worker: _Worker, request: Request, coverage: Any) -> Request:
        """``request`` made a request to trace PII against ``coverage``, which goes
        with it when the worker does not have it yet."""
        key = id(coverage)
        if key in worker.coverages:
            return replace(request, trace=key)
        forget = len(worker.coverages) >= _COVERAGES_PER_WORKER
        if forget:  # the worker drops its key catalogs too: they are sent again
            worker.coverages.clear()
            worker.catalogs.clear()
        worker.coverages[key] = coverage
        return replace(request, trace=key, coverage=coverage, forget=forget)

    def _expire(self, job: _Job) -> None:
        """The time budget ran out: hold the statement; stop the worker busy with it."""
        job.timer = None
        if not job.future.done():
            self.stats.timed_out += 1
            job.future.set_result(job.failed(TIMED_OUT))
        worker = job.worker
        if worker is not None and worker.job is job:
            log.debug("classification worker %d over its time budget: replaced", worker.pid)
            self._kill(worker)
        elif job in self._queue:
            self._queue.remove(job)

    def _finish(self, worker: _Worker, job: _Job, reply: Any) -> None:
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None
        _, status, *rest = reply
        if status != "ok":
            log.warning("classification worker %d failed: %s", worker.pid, rest[0])
            self.stats.crashed += 1
            if not job.future.done():
                job.future.set_result(job.failed(CRASHED, Action.DENY))
            return
        result, same = rest
        if job.coverage is not None:
            from dbgate.pii.lineage import Analysis

            if not isinstance(result, Analysis):
                raise pickle.UnpicklingError("a classification worker sent something else")
            self.stats.traced += 1
            if not job.future.done():
                job.future.set_result(result)
            return
        if not isinstance(result, Classification):
            raise pickle.UnpicklingError("a classification worker sent something else")
        if same:
            result = replace(result, fingerprint_source=job.sql)
        self.stats.classified += 1
        self._remember(job.sql, result, keys=job.keys)
        if not job.future.done():
            self._hand_over(job, result)
            job.future.set_result(None)

    def _hand_over(self, job: _Job, result: Classification) -> None:
        handover = self._handover
        key = (job.sql, job.keys.cache_token if job.keys is not None else None)
        if key in handover:
            self._handover_chars -= len(job.sql)
        handover[key] = result
        self._handover_chars += len(job.sql)
        while len(handover) > _HANDOVER_ENTRIES or (
            self._handover_chars > _HANDOVER_CHARS and len(handover) > 1
        ):
            old, _ = handover.popitem(last=False)
            self._handover_chars -= len(old[0])

    # --- the workers -------------------------------------------------------------

    async def start(self) -> None:
        """Start the workers and wait until each is ready (or has failed to start)."""
        starts = [self._spawn() for _ in range(self.size)]
        await asyncio.gather(*starts)
        if not any(w.ready for w in self._workers):
            raise RuntimeError(
                f"no classification worker could start ({' '.join(self._command)}): see the "
                "errors above, or set classify.workers: 0 to classify every statement inline"
            )

    async def close(self) -> None:
        """Stop every worker; statements still waiting are held (their sessions are
        being stopped too)."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for worker in list(self._workers):
            self._kill(worker)
        for worker in list(self._workers):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker.process.wait(), 5)
            if worker.reader is not None:
                with contextlib.suppress(BaseException):
                    await worker.reader
        while self._queue:
            job = self._queue.popleft()
            if not job.future.done():
                job.future.set_result(job.failed(BUSY))

    def worker_pids(self) -> list[int]:
        """Process ids of the workers ready for statements (operations and tests)."""
        return [w.pid for w in self._workers if w.ready and not w.killed]

    def running(self) -> int:
        """Statements being classified now."""
        return sum(1 for w in self._workers if w.job is not None)

    def queued(self) -> int:
        return sum(1 for j in self._queue if not j.future.done())

    async def _spawn(self) -> None:
        try:
            process = await asyncio.create_subprocess_exec(
                *self._command,
                str(self.memory_mb),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        except OSError as e:
            log.error("cannot start a classification worker: %s", e)
            self._failures += 1
            self._later_restart()
            return
        worker = _Worker(process, process.pid)
        self._workers.append(worker)
        ready = asyncio.get_running_loop().create_future()
        worker.reader = asyncio.ensure_future(self._read(worker, ready))
        await ready

    async def _read(self, worker: _Worker, ready: asyncio.Future[None]) -> None:
        stdout = worker.process.stdout
        assert stdout is not None
        try:
            while True:
                head_len, text_len = HEADER.unpack(await stdout.readexactly(HEADER.size))
                reply = _load_reply(await stdout.readexactly(head_len))
                if text_len:
                    await stdout.readexactly(text_len)
                if not worker.ready:
                    if reply[0] != "ready":
                        raise pickle.UnpicklingError("no ready message")
                    worker.ready = True
                    self._failures = 0
                    if not ready.done():
                        ready.set_result(None)
                    self._next(worker)
                    continue
                job = worker.job
                if job is None or reply[0] != id(job):
                    raise pickle.UnpicklingError("a reply for no statement")
                worker.job = None
                job.worker = None
                self._finish(worker, job, reply)
                job = reply = None  # not kept until the next reply: the job holds its text
                if not worker.killed:
                    self._next(worker)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if not worker.killed and not isinstance(e, asyncio.IncompleteReadError):
                log.error("classification worker %d: %s", worker.pid, e)
        finally:
            if not ready.done():
                ready.set_result(None)
            self._gone(worker)

    def _kill(self, worker: _Worker) -> None:
        worker.killed = True
        with contextlib.suppress(ProcessLookupError):
            worker.process.kill()

    def _gone(self, worker: _Worker) -> None:
        """A worker's output ended: it was killed or it died. Replace it."""
        was_ready = worker.ready
        if worker in self._workers:
            self._workers.remove(worker)
        if not worker.killed:
            self._kill(worker)  # it closed its output but may live on
        job, worker.job = worker.job, None
        if job is not None:
            job.worker = None
            if job.timer is not None:
                job.timer.cancel()
                job.timer = None
            if not job.future.done():
                self.stats.crashed += 1
                log.warning("classification worker %d stopped during a statement", worker.pid)
                job.future.set_result(job.failed(CRASHED, Action.DENY))
        task = asyncio.ensure_future(worker.process.wait())  # reap it
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self._closed:
            return
        if not was_ready:
            self._failures += 1
        self.stats.restarts += 1
        self._later_restart()

    def _later_restart(self) -> None:
        if self._closed:
            return
        first, most = _RESTART_BACKOFF
        delay = 0.0 if self._failures == 0 else min(most, first * 2 ** (self._failures - 1))

        async def restart() -> None:
            if delay:
                await asyncio.sleep(delay)
            if not self._closed:
                await self._spawn()

        task = asyncio.ensure_future(restart())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
