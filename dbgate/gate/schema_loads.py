"""What the gate reads from each upstream database's catalog, loaded and reloaded.

The PII rooms (column lineage needs the schema) and the key catalogs (the classifier
proves a statement narrow from unique keys) are both per upstream database, both
loaded before the first statement on it is judged, and both go stale when the
schema changes — by DDL through dbgate, or by anyone else. :class:`SchemaLoads`
is the one place that decides when to read again:

* the first statement on a database waits for the first load (shared by waiters);
* after a DDL statement completes, a reload runs in the background
  (:meth:`refresh_soon`); statements go on with the old snapshot, which errs on the
  safe side about what the DDL added (unknown columns are tokenized, unknown keys
  prove nothing), not about what it took away (below);
* a snapshot older than :data:`MAX_AGE_SECONDS` is read again in the background when a
  session asks for it (:meth:`refresh_if_old`): DDL that did not pass through dbgate
  (a migration, a DBA's session) is seen within that time. For the unique keys this
  matters: an old snapshot that still lists a dropped key, or a table without the
  inheritance children added since, proves reads narrow that are not;
* a statement that names a relation the snapshot lacks waits for a load that
  started after it arrived (:meth:`reload_since`) — at most one per
  :data:`RELOAD_INTERVAL_SECONDS` per database, shared by every waiter — and a name
  still unknown after such a load (a temporary table, a typo) causes no other for
  :data:`ABSENT_SECONDS` (:meth:`may_be_new`, :meth:`still_unknown`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

from dbgate.policy.model import Category
from dbgate.proxy.seams import QuietObserver, StatementRecord
from dbgate.proxy.session_info import SessionInfo
from dbgate.proxy.upstream import asyncpg_ssl

log = logging.getLogger("dbgate.gate")

T = TypeVar("T")

#: At most one reload per database per this many seconds, however many statements
#: name relations the snapshot does not know.
RELOAD_INTERVAL_SECONDS = 1.0
#: A snapshot whose load started longer ago than this is reloaded in the background
#: when it is next asked for (:meth:`SchemaLoads.refresh_if_old`).
MAX_AGE_SECONDS = 30.0
#: A name still unknown after a reload causes no other reload for this long.
ABSENT_SECONDS = 60.0
_MAX_ABSENT = 10_000


#: How long a catalog read waits for a lock. ``pg_get_viewdef`` locks the view it
#: prints, and a session's own open transaction may hold that view exclusively (a
#: ``REFRESH MATERIALIZED VIEW``, an approved ``LOCK``) while one of its statements
#: waits for the read (it names a relation the snapshot lacks): without a limit the
#: two waited for each other for ever, the view locked. The read fails instead (the
#: old snapshot stays; the first read's failure refuses the statement).
CATALOG_LOCK_TIMEOUT = "3s"


def upstream_dsn(config: Any, database: str) -> dict[str, Any]:
    """asyncpg connect arguments for dbgate's own catalog reads on ``database``."""
    up = config.upstream
    return {
        "host": up.host,
        "port": up.port,
        "user": up.user,
        "password": up.password,
        "database": up.database or database,
        "ssl": asyncpg_ssl(up),
        "server_settings": {"lock_timeout": CATALOG_LOCK_TIMEOUT},
    }


class SchemaLoads(Generic[T]):
    """Loads of one kind of catalog snapshot (``T``), per upstream database."""

    def __init__(self, what: str, load: Callable[[str], Awaitable[T]]) -> None:
        self.what = what  # for log lines: "the schema", "the unique keys"
        self._load = load
        self.loaded: dict[str, T] = {}
        self._loading: dict[str, asyncio.Future[T]] = {}
        self._started: dict[str, float] = {}  # database -> monotonic start of last load
        self._absent: dict[str, dict[str, float]] = {}
        #: Called after a snapshot was loaded or replaced: decisions taken from the
        #: old one (the relay's remembered verdicts) must be taken again.
        self.on_change: list[Callable[[], None]] = []
        #: Called when a change of the schema begins (DDL let through here, or heard
        #: of from another process): statements judged before may run after it.
        self.on_began: list[Callable[[], None]] = []
        #: database -> sessions whose open transaction changed the schema
        self._changing: dict[str, int] = {}
        #: database -> when the last such transaction ended (monotonic), and when the
        #: last load that completed started
        self._settled_after: dict[str, float] = {}
        self._completed: dict[str, float] = {}
        self._settling: set[asyncio.Task[None]] = set()

    async def _run(self, database: str, started: float) -> T:
        value = await self._load(database)
        self._completed[database] = max(self._completed.get(database, started), started)
        self.loaded[database] = value
        # a reload that found nothing changed (``reloaded_unchanged``) leaves every
        # decision taken from the old snapshot standing
        if not getattr(value, "reloaded_unchanged", False):
            self.changed()
        return value

    def changed(self) -> None:
        """A snapshot in :attr:`loaded` is new: tell :attr:`on_change`."""
        for callback in self.on_change:
            callback()

    def replaced(self) -> None:
        """What judges the snapshots was replaced (a reload of the PII catalog, keys
        and settings): decisions taken by the old one are taken again (:attr:`on_change`),
        and what was judged by it and arrives after is treated as after a change of
        the schema (:meth:`moved`)."""
        self.moved()
        self.changed()

    def moved(self) -> None:
        """What the statements judged so far were judged on is gone (a snapshot found
        changed, a catalog replaced): their results, when they arrive from now on —
        statements in flight, portals resumed — are treated as after a change of the
        schema (:attr:`on_began`), not by their verdicts."""
        for callback in self.on_began:
            callback()

    def _start(self, database: str) -> asyncio.Future[T]:
        started = self._started[database] = time.monotonic()
        loading = self._loading[database] = asyncio.ensure_future(self._run(database, started))
        return loading

    def ensure(self, database: str) -> Awaitable[T]:
        """The snapshot of ``database``, loaded once (a failed load is tried again)."""
        loading = self._loading.get(database)
        if loading is None or (loading.done() and loading.exception() is not None):
            loading = self._start(database)
        return loading

    def refresh_soon(self, database: str) -> None:
        """Reload ``database`` in the background (after DDL)."""
        if database not in self.loaded:
            return
        task = self._loading.get(database)
        if task is not None and not task.done():
            return
        self._start(database)

    def refresh_if_old(self, database: str) -> None:
        """Reload ``database`` in the background when its snapshot's load started more
        than :data:`MAX_AGE_SECONDS` ago (the schema may have changed without dbgate
        seeing the DDL). Cheap: asked at every statement."""
        started = self._started.get(database)
        if started is not None and time.monotonic() - started > MAX_AGE_SECONDS:
            self.refresh_soon(database)

    async def reload_since(self, database: str, since: float) -> None:
        """Return once ``database`` was read by a load that started at or after
        ``since`` (monotonic). A failed load is logged; the old snapshot stays."""
        while True:
            task = self._loading.get(database)
            started = self._started.get(database, float("-inf"))
            if task is not None and not task.done():
                await asyncio.wait([task])
                if started >= since:
                    break
                continue
            if task is not None and started >= since:
                break
            wait = started + RELOAD_INTERVAL_SECONDS - time.monotonic()
            if wait > 0:
                # rate limiting, not synchronisation: a later load covers every waiter
                await asyncio.sleep(wait)
                continue
            self._start(database)
        # the load waited for, not the newest: another waiter may have started one since
        error = None if task.cancelled() else task.exception()
        if error is not None:
            log.error("cannot reload %s of %s: %s", self.what, database, error)

    def change_began(self, database: str) -> None:
        """A session's transaction changes the schema of ``database`` (DDL decided):
        until it is over and the snapshot read again after it, the snapshot may be
        wrong (:meth:`in_flux`). Decisions remembered from it are taken again."""
        self._changing[database] = self._changing.get(database, 0) + 1
        for callback in self.on_began:
            callback()
        self.changed()

    def change_ended(self, database: str) -> None:
        """That transaction is over: read the snapshot again (a load started from now
        on ends :meth:`in_flux`, once no other such transaction is open)."""
        left = self._changing.get(database, 0) - 1
        if left > 0:
            self._changing[database] = left
        else:
            self._changing.pop(database, None)
        now = time.monotonic()
        self._settled_after[database] = now
        if database not in self.loaded:
            return
        task = asyncio.ensure_future(self.reload_since(database, now))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    def stop_settling(self) -> None:
        """Cancel the reloads waiting to follow ended changes (the process stops)."""
        for task in list(self._settling):
            task.cancel()

    def in_flux(self, database: str) -> bool:
        """Whether the schema of ``database`` may differ from its snapshot: a
        transaction that changes it is open (here, or in another process sharing the
        state database: ``schema_peers``), or the load after the last one is not done.
        Cheap: asked at every statement."""
        if not self._changing and not self._settled_after:
            return False
        if self._changing.get(database):
            return True
        after = self._settled_after.get(database)
        if after is None:
            return False
        if self._completed.get(database, float("-inf")) >= after:
            del self._settled_after[database]
            return False
        return True

    def may_be_new(self, database: str, names: Iterable[str]) -> bool:
        """Whether a reload could teach the snapshot one of ``names``."""
        absent = self._absent.get(database)
        if not absent:
            return True
        limit = time.monotonic() - ABSENT_SECONDS
        return any(absent.get(name, limit) <= limit for name in names)

    def still_unknown(self, database: str, names: Iterable[str]) -> None:
        """``names`` were not found by a load that started after they were asked for."""
        absent = self._absent.setdefault(database, {})
        if len(absent) > _MAX_ABSENT:
            absent.clear()
        now = time.monotonic()
        for name in names:
            absent[name] = now


#: What can change the schema the snapshots describe.
_SCHEMA_CHANGING = frozenset({Category.DDL, Category.DESTRUCTIVE})
_DDL_KEY = "schema.ddl"  # the session changed the schema in its current transaction
_AFTER_SYNC_KEY = "schema.after_sync"  # a reload waits for the session to be idle
#: Records that end with their own ReadyForQuery: the status then is the one after them.
_ENDS_AT_ITS_READY = frozenset({"query", "function_call"})


#: What can change what a relation's columns hold (DROP and TRUNCATE cannot).
_RESHAPING = frozenset({Category.DDL})
_FLUX_KEY = "schema.flux"  # the session's open transaction ran DDL (SchemaLoads.in_flux)


def _changes_schema(verdict: Any, categories: frozenset[Category] = _SCHEMA_CHANGING) -> bool:
    note = getattr(verdict, "note", None)
    classification = getattr(note, "classification", None)
    return (
        classification is not None
        and bool(classification.categories & categories)
        # a Parse whose Binds carry the change (GateNote.changes_at_binds)
        and not getattr(note, "changes_at_binds", False)
    )


class SchemaWatch(QuietObserver):
    """An :class:`~dbgate.proxy.seams.Observer`: after a statement that may change the
    schema completes (and once its transaction is over, so the reload sees it), the
    database's snapshots reload in the background."""

    ignores = frozenset({"statement_received", "statement_decided", "statement_forwarded"})
    #: A prepared DDL statement is marked when it is decided (``follows``); what
    #: changes the schema is its Execute, which is recorded.
    executes_only = True

    def __init__(self, loads: Sequence[SchemaLoads[Any]], peers: Any = None) -> None:
        self.loads = tuple(loads)
        #: the other processes sharing the state database (``schema_peers.SchemaPeers``)
        self.peers = peers

    def _reload(self, info: SessionInfo) -> None:
        changed = info.state.pop(_FLUX_KEY, False)
        for loads in self.loads:
            if changed:
                loads.change_ended(info.database)
            else:
                loads.refresh_soon(info.database)
        if changed and self.peers is not None:
            self.peers.ended(info.database)

    def _began(self, session: SessionInfo, verdict: Any) -> None:
        """The session's transaction may change the schema from now on; DDL makes the
        snapshot untrustworthy until it is read again after it (``in_flux``)."""
        session.state[_DDL_KEY] = True
        if _FLUX_KEY not in session.state and _changes_schema(verdict, _RESHAPING):
            session.state[_FLUX_KEY] = True
            for loads in self.loads:
                loads.change_began(session.database)
            if self.peers is not None:
                self.peers.began(session.database)

    def follows(self, session: SessionInfo, verdict: Any) -> bool:
        """A statement that may change the schema, and every statement after it until
        its session's transaction is over. Marked here, at the decision, so a statement
        pipelined behind it is followed too."""
        if _changes_schema(verdict):
            self._began(session, verdict)
            return True
        return _DDL_KEY in session.state

    def statement_completed(self, session: SessionInfo, record: StatementRecord) -> None:
        if _changes_schema(record.verdict):
            self._began(session, record.verdict)
        elif _DDL_KEY not in session.state:
            return  # what _ended would find: nothing to do (nearly every statement)
        self._ended(session, record)

    def statement_failed(self, session: SessionInfo, record: StatementRecord) -> None:
        self._ended(session, record)

    def _ended(self, session: SessionInfo, record: StatementRecord) -> None:
        state = session.state
        if _DDL_KEY not in state:
            return
        if record.kind not in _ENDS_AT_ITS_READY:
            # An Execute (Parse, Bind) completes before its Sync: the status known now
            # is the one before it, and its implicit transaction commits at the Sync.
            if _AFTER_SYNC_KEY not in state:
                state[_AFTER_SYNC_KEY] = True
                session.when_idle(lambda: self._idle(session))
            return
        if session.transaction_status == "I" and state.pop(_DDL_KEY, False):
            self._reload(session)

    def _idle(self, session: SessionInfo) -> None:
        session.state.pop(_AFTER_SYNC_KEY, None)
        if session.state.pop(_DDL_KEY, False):
            self._reload(session)

    def session_ended(self, session: SessionInfo) -> None:
        if session.state.pop(_DDL_KEY, False):
            self._reload(session)
