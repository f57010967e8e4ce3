"""PII tokenization at the gate: the PII room (``dbgate.pii``) fitted to the relay's seams.

For every statement the policy allows, the room's plan says what PII means for it:

* its results carry PII (or may: lineage it cannot follow is tokenized whole) — the
  ``Allow`` carries a :class:`ResultPlan` whose rewriter replaces those values with
  tokens, in every row, portal, cursor and COPY of that statement only;
* it copies PII where the catalog will not find it again (``INSERT INTO notes SELECT
  email …``, ``set_config(…, email)``) — it is held for approval like any hold;
* it sends tokens back (``WHERE email = 'tok_email_…'``, or in Bind values) — they are
  resolved to the values they stand for and the rewritten statement is forwarded; a
  token that does not resolve is refused with 22023.

Every notice, error and notification of a session goes through the room's message
filter (values echoed in errors, NOTIFY payloads). Exempt identities (``pii.exempt_*``)
see raw values; that is recorded with their sessions.

One room per upstream database (each has its own schema): its schema snapshot is
loaded before the first statement of a session on that database is judged; again in
the background after a DDL statement completes (:class:`SchemaWatch`); and, before the
statement is judged, when a statement names a relation the snapshot does not know (a
table created since, by anyone). Such reloads are shared by every waiting statement,
at most one per second per database, and a name still unknown after a reload (a
temporary table, a typo) does not cause another for a minute: its columns are
tokenized meanwhile, as lineage does with anything it cannot follow.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from dbgate.gate.notes import GateNote, primary_category
from dbgate.pii.room import PiiRoom, PiiSession, StatementPlan
from dbgate.pii.tokens import TokenError
from dbgate.policy.model import Action, Category, Classification, Decision, Reason
from dbgate.proxy.seams import Allow, Refuse, RowRewriter, Statement, StatementRecord
from dbgate.proxy.session_info import SessionInfo

if TYPE_CHECKING:
    from dbgate.config import Config

log = logging.getLogger("dbgate.pii")

_STATE_KEY = "pii"
_DDL_KEY = "pii.ddl"  # the session changed the schema in its current transaction
#: Statements whose PII meaning depends on the session's cursors and prepared
#: statements: planned per session, never from the shared cache.
_SESSION_BOUND = frozenset({"DECLARE", "FETCH", "MOVE", "PREPARE", "EXECUTE", "DEALLOCATE"})
_VERDICT_CACHE = 8192
#: At most one schema reload per database per this many seconds, however many
#: statements name relations the snapshot does not know.
RELOAD_INTERVAL_SECONDS = 1.0
#: A name still unknown after a reload causes no other reload for this long.
ABSENT_SECONDS = 60.0
#: What can change the schema a room's lineage reads.
_SCHEMA_CHANGING = frozenset({Category.DDL, Category.DESTRUCTIVE})


class PiiResultPlan:
    """A :class:`~dbgate.proxy.seams.ResultPlan` for one statement's PII plan."""

    __slots__ = ("plan",)

    def __init__(self, plan: StatementPlan) -> None:
        self.plan = plan

    def _current(self) -> StatementPlan:
        plan = self.plan
        room = plan.room
        if plan.version != room.version:  # the schema was reloaded since it was planned
            plan = self.plan = room.plan(plan.sql)
        return plan

    def rows(
        self, session: SessionInfo, description: bytes | None, formats: tuple[int, ...]
    ) -> RowRewriter | None:
        return self._current().rows(description, formats)  # type: ignore[return-value]

    def copy_out(self, session: SessionInfo, response: bytes) -> RowRewriter | None:
        return self._current().copy_out(response)  # type: ignore[no-any-return]


class PiiFilter:
    """The proxy's :class:`~dbgate.proxy.seams.MessageFilter`: each session's room."""

    def __init__(self, gate: PiiGate) -> None:
        self.gate = gate

    def _filter(self, session: SessionInfo) -> Any:
        s = session.state.get(_STATE_KEY)
        return None if s is None else s.filter

    def notice(self, session: SessionInfo, body: bytes) -> bytes:
        f = self._filter(session)
        return body if f is None else f.notice(body)

    def error(self, session: SessionInfo, body: bytes) -> bytes:
        f = self._filter(session)
        return body if f is None else f.error(body)

    def notification(self, session: SessionInfo, body: bytes) -> bytes:
        f = self._filter(session)
        return body if f is None else f.notification(body)


class PiiGate:
    """The PII rooms (one per upstream database) and what the gate asks of them."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._rooms: dict[str, PiiRoom] = {}
        self._loading: dict[str, asyncio.Future[PiiRoom]] = {}
        #: database -> monotonic time its last schema load started
        self._load_started: dict[str, float] = {}
        #: database -> relation name -> when a reload last found it still unknown
        self._absent: dict[str, dict[str, float]] = {}
        self.filter = PiiFilter(self)
        # (database, sql, exempt) -> (room version, the verdict for that text)
        self._verdicts: dict[tuple[str, str, bool], tuple[int, Allow | Refuse | None]] = {}
        #: Told of each exempt session (the audit records it).
        self.on_exemption: Callable[[SessionInfo, str], None] | None = None

    def check(self) -> None:
        """Build a room once: a missing or wrong key, or a bad catalog, stops the start."""
        PiiRoom.from_config(self.config.pii)

    def _dsn_for(self, database: str) -> dict[str, Any]:
        up = self.config.upstream
        return {
            "host": up.host,
            "port": up.port,
            "user": up.user,
            "password": up.password,
            "database": up.database or database,
            "ssl": False if up.sslmode in ("disable", "prefer") else "require",
        }

    async def _load(self, database: str) -> PiiRoom:
        import asyncpg

        room = self._rooms.get(database) or PiiRoom.from_config(self.config.pii)
        conn = await asyncpg.connect(**self._dsn_for(database), timeout=10)
        try:
            await room.refresh(conn)
        finally:
            await conn.close()
        self._rooms[database] = room
        return room

    def _start_load(self, database: str) -> asyncio.Future[PiiRoom]:
        self._load_started[database] = time.monotonic()
        loading = self._loading[database] = asyncio.ensure_future(self._load(database))
        return loading

    def ensure(self, database: str) -> Awaitable[PiiRoom]:
        """The room of ``database``, its schema loaded (once; shared by waiters)."""
        loading = self._loading.get(database)
        if loading is None or (loading.done() and loading.exception() is not None):
            loading = self._start_load(database)
        return loading

    def refresh_soon(self, database: str) -> None:
        """Reload ``database``'s schema in the background (after DDL); statements go on
        with the old snapshot meanwhile, and lineage treats what it does not know as
        PII (tokenized), so nothing new passes raw."""
        room = self._rooms.get(database)
        if room is None:
            return
        task = self._loading.get(database)
        if task is not None and not task.done():
            return
        self._start_load(database)

    async def reload_since(self, database: str, since: float) -> None:
        """Return once ``database``'s schema was read by a load that started at or
        after ``since`` (monotonic): joins a load already under way, starts one no
        sooner than :data:`RELOAD_INTERVAL_SECONDS` after the previous one. A failed
        load is logged; the old snapshot stays (what it does not know is tokenized)."""
        while True:
            task = self._loading.get(database)
            started = self._load_started.get(database, float("-inf"))
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
            self._start_load(database)
        task = self._loading[database]
        if task.exception() is not None:
            log.error("pii: cannot reload the schema of %s: %s", database, task.exception())

    def _may_be_new(self, database: str, names: set[str]) -> bool:
        """Whether a reload could teach the room one of ``names``."""
        absent = self._absent.get(database)
        if not absent:
            return True
        limit = time.monotonic() - ABSENT_SECONDS
        return any(absent.get(name, limit) <= limit for name in names)

    async def _after_reload(
        self,
        info: SessionInfo,
        statement: Statement,
        allowed: Allow,
        classification: Classification,
        hold: Callable[[Decision], Any],
    ) -> Allow | Refuse:
        """The statement names relations the snapshot lacks: judged after a reload."""
        database = info.database
        await self.reload_since(database, time.monotonic())
        s = self.session(info)
        assert s is not None
        still = s.plan(statement.sql).analysis.unknown_relations
        if still:
            absent = self._absent.setdefault(database, {})
            if len(absent) > 10_000:
                absent.clear()
            now = time.monotonic()
            for name in still:
                absent[name] = now
        result = self.verdict(info, statement, allowed, classification, hold)
        if isinstance(result, Awaitable):
            result = await result
        return allowed if result is None else result  # awaited: None is no verdict

    def session(self, info: SessionInfo) -> PiiSession | None:
        """This client session's PII state, or None until its room is loaded."""
        s = info.state.get(_STATE_KEY)
        if s is not None:
            return s  # type: ignore[no-any-return]
        room = self._rooms.get(info.database)
        if room is None:
            return None
        s = room.session(info.identity, info.groups)
        info.state[_STATE_KEY] = s
        if s.exemption is not None:
            log.info("session %s: %s sees raw values", info.session_id, s.exemption.reason)
            if self.on_exemption is not None:
                self.on_exemption(info, s.exemption.reason)
        return s

    # -- judging --------------------------------------------------------------------------
    def verdict(
        self,
        info: SessionInfo,
        statement: Statement,
        allowed: Allow,
        classification: Classification,
        hold: Callable[[Decision], Any],
    ) -> Allow | Refuse | Awaitable[Allow | Refuse] | None:
        """What PII changes about an allowed Query or Parse: None (nothing: the policy's
        verdict stands), or the verdict to use instead. Needs the session's room (see
        :meth:`session`)."""
        s = self.session(info)
        assert s is not None
        if s.exemption is not None:
            return None
        sql = statement.sql
        cacheable = (
            not ({st.command for st in classification.statements} & _SESSION_BOUND)
            and not allowed.check_binds
        )
        room = s.room
        key = (info.database, sql, False)
        if cacheable:
            hit = self._verdicts.get(key)
            if hit is not None and hit[0] == room.version:
                return hit[1]
        plan = s.plan(sql)
        unknown = plan.analysis.unknown_relations
        if unknown and self._may_be_new(info.database, unknown):
            return self._after_reload(info, statement, allowed, classification, hold)
        result = self._judge(info, s, plan, allowed, classification, hold)
        if cacheable and not isinstance(result, Awaitable):
            if len(self._verdicts) >= _VERDICT_CACHE:
                self._verdicts.clear()
            self._verdicts[key] = (room.version, result)
        return result

    def _judge(
        self,
        info: SessionInfo,
        s: PiiSession,
        plan: StatementPlan,
        allowed: Allow,
        classification: Classification,
        hold: Callable[[Decision], Any],
    ) -> Allow | Refuse | Awaitable[Allow | Refuse] | None:
        if plan.hold:
            decision = Decision(
                Action.HOLD,
                "pii",
                "copies PII where the PII catalog cannot follow it",
                classification=classification,
                reasons=tuple(Reason(Category.EXPORT, "pii-copy", r) for r in plan.hold_reasons),
            )
            return hold(decision)  # type: ignore[no-any-return]
        result_plan = PiiResultPlan(plan) if plan.pii_outputs else None
        note = allowed.note
        if plan.has_tokens:
            try:
                sql = s.detokenize_sql(plan)
            except TokenError as e:
                return Refuse(e.sqlstate, f"dbgate: {e}", note=_note(classification, "refuse"))
            return Allow(
                check_binds=allowed.check_binds,
                changes=allowed.changes,
                plan=result_plan,
                note=note,
                replace_sql=sql,
            )
        if plan.params_may_hold_tokens:
            # Decided at each Bind: the values may be tokens to resolve.
            return Allow(changes=allowed.changes, plan=result_plan, note=note, check_binds=True)
        if result_plan is None:
            return None
        return Allow(
            check_binds=allowed.check_binds,
            changes=allowed.changes,
            repeatable=allowed.repeatable,
            plan=result_plan,
            note=note,
        )

    def bind_verdict(
        self, info: SessionInfo, statement: Statement, sql: str
    ) -> Allow | Refuse | None:
        """Tokens among a Bind's values, resolved; None when nothing changes."""
        s = self.session(info)
        if s is None or s.exemption is not None:
            return None
        plan = s.plan(sql)
        if not plan.params_may_hold_tokens:
            return None
        try:
            values, bound = s.detokenize_params(
                plan, statement.params, statement.param_formats, statement.param_types
            )
        except TokenError as e:
            return Refuse(e.sqlstate, f"dbgate: {e}")
        result_plan = PiiResultPlan(bound) if bound.pii_outputs else None
        if values == statement.params:
            return Allow(plan=result_plan) if result_plan is not None else None
        return Allow(plan=result_plan, replace_params=values)

    def after_ddl(self, info: SessionInfo) -> None:
        self.refresh_soon(info.database)


class SchemaWatch:
    """An :class:`~dbgate.proxy.seams.Observer`: after a statement that may change the
    schema completes (and once its transaction is over, so the reload sees it), the
    database's room reloads in the background."""

    def __init__(self, pii: PiiGate) -> None:
        self.pii = pii

    def _changed(self, info: SessionInfo, record: StatementRecord) -> None:
        note = getattr(record.verdict, "note", None)
        classification = getattr(note, "classification", None)
        if classification is not None and classification.categories & _SCHEMA_CHANGING:
            info.state[_DDL_KEY] = True
        if info.transaction_status == "I" and info.state.pop(_DDL_KEY, False):
            self.pii.after_ddl(info)

    def statement_completed(self, session: SessionInfo, record: StatementRecord) -> None:
        self._changed(session, record)

    def statement_failed(self, session: SessionInfo, record: StatementRecord) -> None:
        if session.transaction_status == "I" and session.state.pop(_DDL_KEY, False):
            self.pii.after_ddl(session)

    def session_ended(self, session: SessionInfo) -> None:
        if session.state.pop(_DDL_KEY, False):
            self.pii.after_ddl(session)

    def session_started(self, session: SessionInfo) -> None:
        pass

    def session_refused(self, *args: Any) -> None:
        pass

    def statement_received(self, session: SessionInfo, record: StatementRecord) -> None:
        pass

    def statement_decided(self, session: SessionInfo, record: StatementRecord) -> None:
        pass

    def statement_forwarded(self, session: SessionInfo, record: StatementRecord) -> None:
        pass


def _note(classification: Classification, action: str) -> GateNote:
    return GateNote(classification, action, primary_category(classification))
