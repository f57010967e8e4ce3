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
filter (values echoed in errors, NOTIFY payloads). What the relay calls per row and
per message — the result plan and the message filter — lives in
:mod:`dbgate.gate.pii_outputs`. Exempt identities (``pii.exempt_*``) see raw values;
that is recorded with their sessions.

One room per upstream database (each has its own schema): its schema snapshot is
loaded before the first statement of a session on that database is judged, again in
the background after DDL, and before a statement that names a relation the snapshot
does not know (:mod:`dbgate.gate.schema_loads` decides when); a name still unknown
after a reload (a temporary table, a typo) has its columns tokenized, as lineage
does with anything it cannot follow.

Tracing lineage parses and walks the whole statement, as classifying does: a
statement too costly to trace on the event loop (by the classification pool's
estimate) is traced in a worker process (:meth:`ClassifyPool.trace_ahead
<dbgate.gate.classify_pool.ClassifyPool.trace_ahead>`) while every other session goes
on, and held (or refused) when that cannot be done in time. Such a trace has no
session: what it would need of one (a cursor's or SQL prepared statement's columns)
is unknown, so tokenized.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NamedTuple

from dbgate.gate import refusals
from dbgate.gate.notes import GateNote, primary_category
from dbgate.gate.pii_outputs import STATE_KEY, HeldCursorWatch, PiiFilter, PiiResultPlan
from dbgate.gate.schema_loads import SchemaLoads, upstream_dsn
from dbgate.pii.lin import UNKNOWN_LIN
from dbgate.pii.lineage.results import Analysis, Output, StatementLineage
from dbgate.pii.plan_cache import shape_from_mask, shape_of
from dbgate.pii.plans import StatementPlan
from dbgate.pii.room import PiiRoom, PiiSession
from dbgate.pii.tokens import TokenError
from dbgate.policy.model import Action, Category, Classification, Decision, Reason
from dbgate.proxy.prepared import MAX_NAME_BYTES as NAME_BYTES
from dbgate.proxy.prepared import identifier_key
from dbgate.proxy.seams import (
    Allow,
    Refuse,
    Statement,
)
from dbgate.proxy.session_info import SessionInfo

if TYPE_CHECKING:
    from dbgate.config import Config
    from dbgate.gate.classify_pool import ClassifyPool
    from dbgate.pii.lineage import Analysis
    from dbgate.pii.plan_cache import Shape

log = logging.getLogger("dbgate.pii")

#: Statements whose PII meaning depends on the session's cursors and prepared
#: statements: planned per session, never from the shared cache.
_SESSION_BOUND = frozenset({"DECLARE", "FETCH", "MOVE", "PREPARE", "EXECUTE", "DEALLOCATE"})
_VERDICT_CACHE = 8192
#: Texts this short are traced inline without asking the pool (as it would answer).
_ALWAYS_INLINE = 256


class _Question(NamedTuple):
    """An allowed Query or Parse that PII is asked about, as :meth:`PiiGate.verdict`
    was asked (carried through a reload or a worker's trace)."""

    info: SessionInfo
    statement: Statement
    allowed: Allow
    classification: Classification
    hold: Callable[[Decision], Any]
    reloaded: bool
    #: where the verdict is remembered (None: it is not)
    key: tuple[str, str, bool] | None


def _token_settings(pii: Any) -> tuple[Any, ...]:
    """What a room's tokenizer is built from besides its keys (see ``PiiRoom.from_config``)."""
    return (pii.mode, pii.max_reversible_bytes, pii.token_cache_entries)


def _keys(keyring: Any) -> tuple[tuple[str, bytes, float | None], ...]:
    """A keyring's keys as read: a ``secret_file`` or ``secret_env`` whose content
    changed is another key under the same config text."""
    return tuple((k.id, k.secret, k.retire_at) for k in keyring.keys)


class PiiGate:
    """The PII rooms (one per upstream database) and what the gate asks of them."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.loads: SchemaLoads[PiiRoom] = SchemaLoads("the schema", self._load)
        self.filter = PiiFilter()
        #: The relay's observer of cursors that run at COMMIT (see HeldCursorWatch)
        self.held_cursors = HeldCursorWatch()
        # (database, sql, exempt) -> (room version, the policy's verdict, PII's verdict)
        self._verdicts: dict[
            tuple[str, str, bool], tuple[int, Allow, Allow | Refuse | Awaitable[Any] | None]
        ] = {}
        #: Told of each exempt session (the audit records it).
        self.on_exemption: Callable[[SessionInfo, str], None] | None = None
        #: Traces costly statements in worker processes (set by the gate that has one).
        self.offload: ClassifyPool | None = None
        #: database -> (the snapshot, catalog and coverage it was worked out from,
        #: every PII column's name)
        self._everywhere: dict[str, tuple[tuple[Any, ...], tuple[str, ...]]] = {}
        #: Reloads of the catalog, keys and settings so far (:meth:`use_config`)
        self._generation = 0

    def check(self) -> None:
        """Build a room once: a missing or wrong key, or a bad catalog, stops the start."""
        PiiRoom.from_config(self.config.pii)

    def use_config(self, config: Config, sessions: Iterable[SessionInfo]) -> None:
        """Tokenize by ``config.pii`` from now on (a reload: catalog, keys, settings).

        Raises like :meth:`check` and then changes nothing. Each database's room is
        rebuilt on the schema snapshot it had (no catalog read), cached verdicts are
        dropped, and ``sessions`` take the new room at once (their notifications and
        errors are filtered by it). What was judged by the old rooms and arrives after
        — results of statements in flight, portals resumed — runs under the stale
        verdict (:meth:`SchemaLoads.replaced`); a result set already streaming
        finishes under the plan it started with.
        """
        from dbgate.pii.catalog_load import load_catalog
        from dbgate.pii.keys import keyring_from_config
        from dbgate.pii.room import PiiSettings

        catalog = load_catalog(config.pii.catalog)  # raises on a bad catalog
        settings = PiiSettings.from_config(config.pii)
        # the keys read again, as a start reads them: raises on a missing or wrong key
        keys = _keys(keyring_from_config(config.pii.keys))
        same_settings = _token_settings(config.pii) == _token_settings(self.config.pii)
        if not same_settings:
            PiiRoom.from_config(config.pii)  # raises on other bad settings
        rooms = {}
        for database, old in self.loads.loaded.items():
            # Same keys: keep the tokenizer, so that tokens issued so far still resolve.
            if same_settings and _keys(old.tokenizer.keyring) == keys:
                tokenizer = old.tokenizer
            else:
                tokenizer = PiiRoom.from_config(config.pii).tokenizer
            room = PiiRoom(catalog, tokenizer, settings)
            room.set_snapshot(old.snapshot, before=old.coverage)
            rooms[database] = room
        self.config = config
        self._generation += 1
        self.loads.loaded.update(rooms)
        self.loads.replaced()
        self._verdicts.clear()
        for info in sessions:
            # Each session takes the new room at once, not at its next statement: its
            # notifications, and the errors and rows of what it has in flight, arrive
            # before that, and a session with no PII state has no filter at all.
            if info.state.pop(STATE_KEY, None) is not None and info.database in rooms:
                self._open(info, rooms[info.database])

    async def _load(self, database: str) -> PiiRoom:
        import asyncpg

        generation = self._generation
        room = self.loads.loaded.get(database) or PiiRoom.from_config(self.config.pii)
        known = room.coverage is not None and bool(room.snapshot.relations)
        conn = await asyncpg.connect(**upstream_dsn(self.config, database), timeout=10)
        try:
            await room.refresh(conn)
        finally:
            await conn.close()
        if known and not room.reloaded_unchanged:
            # a column marked on the server since (a ``pii:`` comment a DBA added): a
            # portal bound before, resumed now, was judged without it
            self.loads.moved()
        if generation != self._generation:
            # A reload (:meth:`use_config`) replaced the room while the schema was
            # read: the room read is the old catalog's, keys' and exemptions', and
            # stored in its place it would undo the reload. The new room takes the
            # snapshot read instead (the marks either found kept).
            current = self.loads.loaded.get(database)
            if current is None or current is room:
                current = PiiRoom.from_config(self.config.pii)
            current.set_snapshot(room.snapshot, before=room.coverage)
            current.reloaded_unchanged = False
            return current
        return room

    def ensure(self, database: str) -> Awaitable[PiiRoom]:
        """The room of ``database``, its schema loaded (once; shared by waiters)."""
        return self.loads.ensure(database)

    def refresh_soon(self, database: str) -> None:
        """Reload ``database``'s schema in the background (after DDL); statements go on
        with the old snapshot meanwhile, and lineage treats what it does not know as
        PII (tokenized), so nothing new passes raw."""
        self.loads.refresh_soon(database)

    def _ask_again(self, q: _Question, reloaded: bool) -> Any:
        return self.verdict(q.info, q.statement, q.allowed, q.classification, q.hold, reloaded)

    async def _after_reload(self, q: _Question) -> Allow | Refuse:
        """The statement names relations the snapshot lacks: judged after a reload
        (what it still does not know then is tokenized)."""
        await self.loads.reload_since(q.info.database, time.monotonic())
        # what the session's other statements were judged on is older: forgotten now,
        # not after this statement's verdict (which would be forgotten with them)
        q.info.verdicts_catch_up()
        result = self._ask_again(q, reloaded=True)
        if isinstance(result, Awaitable):
            result = await result
        return q.allowed if result is None else result  # type: ignore[no-any-return]

    async def _traced(
        self,
        ready: Awaitable[Analysis | Decision],
        q: _Question,
        shape: Shape | None,
        coverage: Any,
    ) -> Allow | Refuse:
        """Judged once a worker has traced the statement's lineage, or held (refused)
        when it could not."""
        from dbgate.pii.lineage import Analysis

        traced = await ready
        if not isinstance(traced, Analysis):
            decision = Decision(
                traced.action,
                "pii",
                traced.message,
                classification=q.classification,
                reasons=traced.reasons,
            )
            result: Any = q.hold(decision)
        else:
            s = self.session(q.info)
            assert s is not None
            if s.room.coverage is coverage:
                s.room.adopt(q.statement.sql, shape, traced, coverage)
                result = self._decide(q, s, shape, traced)
            else:  # the schema or the catalog changed meanwhile: trace it again
                result = self._ask_again(q, q.reloaded)
        if isinstance(result, Awaitable):
            result = await result
        return q.allowed if result is None else result  # type: ignore[no-any-return]

    async def pii_columns_for(self, database: str, tables: Iterable[str] | None) -> tuple[str, ...]:
        """:meth:`pii_column_names` on a snapshot that knows the tables: one a statement
        names before the snapshot was taken (created since) is read again first.
        ``tables`` None: every relation of the snapshot as it is (code whose tables
        the classifier does not read, a ``DO`` block or a function's body), and the
        names of the relations that have such columns."""
        room = await self.loads.ensure(database)
        if tables is None:
            # Not read again first: the reload would wait for a lock the session itself
            # may hold (LOCK of a view in its open transaction: pg_get_viewdef), and
            # the held statement for the reload. The snapshot is at most 30 s old.
            return self.pii_column_names(database, None)
        tables = tuple(tables)
        names = [t.rpartition(".")[2] for t in tables]
        if any(not room.snapshot.lookup(n) for n in names) and self.loads.may_be_new(
            database, names
        ):
            await self.loads.reload_since(database, time.monotonic())
        return self.pii_column_names(database, tables)

    def pii_column_names(self, database: str, tables: Iterable[str] | None) -> tuple[str, ...]:
        """Names of the columns of ``tables`` the catalog marks as PII (by entry, name
        pattern or comment), or that hold PII as the gate follows it (a view's column
        over one, ``label`` of ``SELECT full_name AS label``; a generated column, one a
        foreign key links to a PII column), for masking what approvers are shown: a
        column whose name says nothing (``holder``, ``contact``) is still in a PII
        place. Empty until the database's schema is loaded (masking by name still
        applies)."""
        room = self.loads.loaded.get(database)
        if room is None:
            return ()
        coverage = room.coverage
        if tables is None:
            # a database of thousands of relations: worked out once per schema
            # snapshot, catalog and coverage, not at every hold
            basis = (room.snapshot, room.catalog, coverage)
            known = self._everywhere.get(database)
            if known is not None and all(a is b for a, b in zip(known[0], basis, strict=True)):
                return known[1]
            relations: Iterable[Any] = room.snapshot.relations.values()
        else:
            relations = [
                rel
                for table in tables
                for rel in room.snapshot.lookup(
                    table.rpartition(".")[2], table.rpartition(".")[0] or None
                )
            ]
        names: set[str] = set()
        for rel in relations:
            lins = coverage.relation_lins(rel) if coverage is not None else None
            for i, col in enumerate(rel.columns):
                entity, _ = room.catalog.classify(rel.schema, rel.name, col.name, col.comment)
                followed = lins is not None and i < len(lins) and not lins[i].clean
                if entity is not None or followed:
                    names.add(col.name)
                    if tables is None:
                        # code that names the relation may write its PII columns
                        # without naming them: INSERT INTO customers VALUES (…)
                        names.add(rel.name)
        found = tuple(sorted(names))
        if tables is None:
            self._everywhere[database] = (basis, found)
        return found

    def session(self, info: SessionInfo) -> PiiSession | None:
        """This client session's PII state, or None until its room is loaded."""
        # a column added or commented outside dbgate (a migration, a DBA's session):
        # an old snapshot would go on judging the table as it was
        self.loads.refresh_if_old(info.database)
        s = info.state.get(STATE_KEY)
        if s is not None:
            return s  # type: ignore[no-any-return]
        room = self.loads.loaded.get(info.database)
        if room is None:
            return None
        return self._open(info, room)

    def _open(self, info: SessionInfo, room: PiiRoom) -> PiiSession:
        """The PII state of ``info`` on ``room`` from now on (its exemption recorded)."""
        s = room.session(info.identity, info.groups)
        s.portal_bound = _portal_bound(info)
        s.protocol_prepared = _protocol_prepared(info)
        info.state[STATE_KEY] = s
        if s.exemption is not None:
            log.info("session %s: %s sees raw values", info.session_id, s.exemption.reason)
            if self.on_exemption is not None:
                self.on_exemption(info, s.exemption.reason)
        return s

    def shape_unchanged(self, info: SessionInfo, sql: str, masked: str) -> bool:
        """Whether :meth:`verdict` leaves an allowed read (no session-bound command,
        no Bind checks) as it is for ``sql`` (whose literal mask is ``masked``) and for
        every other text of its shape: the session sees raw values, or the shape is one
        PII was found to have nothing to change in (what :meth:`verdict` asks first)."""
        s = self.session(info)
        if s is None:
            return False
        if s.exemption is not None:
            return True
        if self.loads.in_flux(info.database):
            return False  # the shape's verdict is the old snapshot's
        shape = shape_from_mask(sql, masked)
        return shape is not None and s.room.plans.nothing_to_change(shape)

    def unclassified(self, info: SessionInfo, allowed: Allow, sql: str) -> Allow | Refuse:
        """``allowed`` for a statement a human approved that dbgate could not classify
        (its classification ran out of time or of workers): nothing is known of its
        outputs, so every column of its results is tokenized (fresh tokens) and its
        errors are withheld; tokens in its text are not resolved."""
        s = self.session(info)
        if s is None:
            return refusals.PII_SCHEMA_UNAVAILABLE  # fail closed
        if s.exemption is not None:
            return allowed
        analysis = Analysis()
        analysis.unknown_reasons.append("approved without a classification")
        analysis.statements.append(StatementLineage("?", Output(tail=UNKNOWN_LIN)))
        return replace(allowed, plan=PiiResultPlan(StatementPlan(s.room, sql, analysis, None)))

    # -- judging --------------------------------------------------------------------------
    def verdict(
        self,
        info: SessionInfo,
        statement: Statement,
        allowed: Allow,
        classification: Classification,
        hold: Callable[[Decision], Any],
        reloaded: bool = False,
    ) -> Allow | Refuse | Awaitable[Allow | Refuse] | None:
        """What PII changes about an allowed Query or Parse: None (nothing: the policy's
        verdict stands), or the verdict to use instead. Needs the session's room (see
        :meth:`session`). ``reloaded``: the schema was reloaded for this statement's
        unknown relations (so they are not waited for again)."""
        s = self.session(info)
        assert s is not None
        if s.exemption is not None:
            return None
        sql = statement.sql
        cacheable = (
            not any(st.command in _SESSION_BOUND for st in classification.statements)
            and not allowed.check_binds
            and not self._in_flux(info, classification)
        )
        room = s.room
        key = (info.database, sql, False)
        if cacheable:
            hit = self._verdicts.get(key)
            # the policy's verdict differs by identity (limits, note): it is part of the key
            if hit is not None and hit[0] == room.version and hit[1] is allowed:
                return hit[2]
            shape = shape_of(sql)
            if shape is not None and room.plans.nothing_to_change(shape):
                return None  # a fresh literal in a text of a shape PII leaves alone
        else:
            shape = False  # not computed
        q = _Question(
            info, statement, allowed, classification, hold, reloaded, key if cacheable else None
        )
        analysis = None
        offload = self.offload
        if offload is not None and len(sql) > _ALWAYS_INLINE:
            analysis, shape = room.plans.lookup(sql, shape)
            if analysis is None:
                ready = offload.trace_ahead(sql, room.coverage)
                if ready is not None:  # too costly to trace here: in a worker
                    return self._traced(ready, q, shape, room.coverage)
                analysis = room.trace(sql, s, shape)
        return self._decide(q, s, shape, analysis)

    def _decide(
        self, q: _Question, s: PiiSession, shape: Shape | bool | None, analysis: Analysis | None
    ) -> Allow | Refuse | Awaitable[Allow | Refuse] | None:
        """:meth:`verdict` once the statement's lineage is at hand (``analysis``, or
        cheap to look up or trace)."""
        info, allowed, classification, key = q.info, q.allowed, q.classification, q.key
        sql = q.statement.sql
        room = s.room
        plan = s.plan(sql, shape, analysis)
        if self._in_flux(info, classification):
            plan = plan.distrusted(self._unsettled(info.database))
            s.distrust_cursors(plan.analysis.declares)
        unknown = plan.analysis.unknown_relations
        # in flux, every result is tokenized whole, and a reload may wait for this very
        # session's transaction (its DDL locks what the reload reads): not waited for
        if unknown and not plan.distrust:
            if q.reloaded:
                self.loads.still_unknown(info.database, unknown)
            elif self.loads.may_be_new(info.database, unknown):
                return self._after_reload(q)
        result = self._judge(info, s, plan, allowed, classification, q.hold)
        if result is None and shape and not unknown:
            room.plans.remember_unchanged(shape)  # the policy's verdict stands
        # A text planned from its shape's plan (fresh literals: pgbench -M simple, ORMs
        # that inline values) rarely comes again: remembering it would only push out
        # the verdicts of texts that do repeat. A held one is never remembered: each
        # sending is held again (and a Parse's verdict, held at its Binds, is no
        # Query's).
        if (
            key is not None
            and not plan.hold
            and not isinstance(result, Awaitable)
            and room.seen_exactly(sql)
        ):
            if len(self._verdicts) >= _VERDICT_CACHE:
                self._verdicts.clear()
            self._verdicts[key] = (room.version, allowed, result)
        return result

    def _in_flux(self, info: SessionInfo, classification: Classification | None) -> bool:
        """Whether the schema may differ from the snapshot for this statement: it
        changes the schema itself (its other statements run after), or a transaction
        that changes it is open, or the snapshot was not read again since one ended
        (``SchemaLoads.in_flux``). Its results are then tokenized whole."""
        if classification is not None and Category.DDL in classification.categories:
            return True
        return self.loads.in_flux(info.database)

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
            held = hold(_pii_hold(plan, classification))
            if isinstance(held, Awaitable):
                return self._after_hold(held, info, s, plan, allowed, classification)
            if type(held) is not Allow:
                return held  # type: ignore[no-any-return]
            if held.check_binds:
                # A Parse: nothing runs yet, and an approval here would cover every
                # execution of the statement. Each Bind is held instead, with its values.
                return _held_at_each_bind(self._planned(s, plan, allowed, classification), allowed)
            # an approval is no exemption from PII: the statement runs under its plan
            allowed = _approved(allowed, held)
        return self._planned(s, plan, allowed, classification)

    async def _after_hold(
        self,
        held: Awaitable[Any],
        info: SessionInfo,
        s: PiiSession,
        plan: StatementPlan,
        allowed: Allow,
        classification: Classification,
    ) -> Allow | Refuse:
        """A statement the PII gate held, once decided: approved, it runs under its
        PII plan (results tokenized, tokens in it resolved) like any allowed one; an
        approval lets its copy through, never its rows raw."""
        verdict = await held
        if type(verdict) is not Allow:
            return verdict  # type: ignore[no-any-return]
        now = self._since_held(info, s, plan)
        if type(now) is Refuse:
            return now
        s, plan = now  # type: ignore[misc]
        planned = self._planned(s, plan, _approved(allowed, verdict), classification)
        return _approved(allowed, verdict) if planned is None else planned

    def _planned(
        self, s: PiiSession, plan: StatementPlan, allowed: Allow, classification: Classification
    ) -> Allow | Refuse | None:
        """``allowed`` under ``plan``: its results tokenized, its tokens resolved."""
        if plan.distrust:  # never remembered: taken again once the snapshot is read
            allowed = replace(allowed, repeatable=False)
        # Also for a statement that reads PII only where its rows are chosen: the plan
        # rewrites no row then, it marks the statement whose errors are withheld
        result_plan = PiiResultPlan(plan) if plan.involves_pii else None
        if plan.has_tokens:
            try:
                # The policy may have rewritten the text already (a guard's SET to 0
                # forwarded as its ceiling): the tokens are resolved in that text, or
                # the original's SET would reach the server instead. Its own plan
                # places them (their offsets moved), and judges them alike.
                sql = s.detokenize_sql(
                    plan if allowed.replace_sql is None else s.plan(allowed.replace_sql)
                )
            except TokenError as e:
                return Refuse(e.sqlstate, f"dbgate: {e}", note=_note(classification, "refuse"))
            # the policy's verdict (its limits, its note) with the tokens resolved
            resolved = replace(allowed, plan=result_plan, replace_sql=sql, repeatable=False)
            # and its Binds' values too, when they may be tokens
            return _binds_may_hold_tokens(resolved) if plan.params_may_hold_tokens else resolved
        if plan.params_may_hold_tokens:
            # Decided at each Bind: the values may be tokens to resolve. The Parse
            # itself is judged the same way every time (it stays repeatable when the
            # policy's verdict is): a driver's unnamed Parse of the same text is
            # remembered, its Binds are still shown to the gate.
            return _binds_may_hold_tokens(replace(allowed, plan=result_plan))
        if result_plan is None:
            return None
        return replace(allowed, plan=result_plan)

    def bind_verdict(
        self,
        info: SessionInfo,
        statement: Statement,
        sql: str,
        hold: Callable[[Decision], Any] | None = None,
    ) -> Allow | Refuse | Awaitable[Allow | Refuse | None] | None:
        """Tokens among a Bind's values, resolved; None when nothing changes. ``hold``
        makes the verdict of a statement whose lineage could not be traced (default:
        a refusal)."""
        s = self.session(info)
        if s is None or s.exemption is not None:
            return None
        room = s.room
        analysis = None
        if self.offload is not None and len(sql) > _ALWAYS_INLINE:
            # The Parse's trace is usually remembered; a long text pushed out since
            # is not traced again here
            analysis, _ = room.plans.lookup(sql)
            if analysis is None:
                ready = self.offload.trace_ahead(sql, room.coverage)
                if ready is not None:
                    return self._bind_traced(ready, info, statement, sql, room.coverage, hold)
        return self._bind_decide(info, s, statement, self._bind_plan(s, info, sql, analysis), hold)

    def _bind_plan(
        self, s: PiiSession, info: SessionInfo, sql: str, analysis: Analysis | None
    ) -> StatementPlan:
        plan = s.plan(sql, False, analysis)
        if self.loads.in_flux(info.database):
            return plan.distrusted(self._unsettled(info.database))
        return plan

    def _unsettled(self, database: str) -> Callable[[], bool]:
        loads = self.loads
        return lambda: loads.in_flux(database)

    async def _bind_traced(
        self,
        ready: Awaitable[Analysis | Decision],
        info: SessionInfo,
        statement: Statement,
        sql: str,
        coverage: Any,
        hold: Callable[[Decision], Any] | None,
    ) -> Allow | Refuse | None:
        from dbgate.pii.lineage import Analysis

        traced = await ready
        result: Any
        if not isinstance(traced, Analysis):
            if hold is None:
                return Refuse("42501", f"dbgate: {traced.message}")
            result = hold(traced)
            return await result if isinstance(result, Awaitable) else result  # type: ignore[no-any-return]
        s = self.session(info)
        assert s is not None
        if s.room.coverage is not coverage:
            traced = None  # the schema changed meanwhile: cheap again, or not
        else:
            s.room.adopt(sql, None, traced, coverage)
        result = (
            self._bind_decide(info, s, statement, self._bind_plan(s, info, sql, traced), hold)
            if traced is not None
            else self.bind_verdict(info, statement, sql, hold)
        )
        if isinstance(result, Awaitable):
            result = await result
        return result

    def _bind_decide(
        self,
        info: SessionInfo,
        s: PiiSession,
        statement: Statement,
        plan: StatementPlan,
        hold: Callable[[Decision], Any] | None = None,
    ) -> Allow | Refuse | Awaitable[Allow | Refuse | None] | None:
        """A Bind's verdict under its statement's ``plan``. A statement PII holds is
        held at every Bind (its Parse let it through, see :meth:`_judge`): one
        approval covers one execution, with these values."""
        if plan.hold:
            if hold is None:
                return Refuse("42501", f"dbgate: {_pii_hold(plan, None).message}")
            held = hold(_pii_hold(plan, None))
            if isinstance(held, Awaitable):
                return self._bind_after_hold(held, info, s, statement, plan)
            if type(held) is not Allow:
                return held  # type: ignore[no-any-return]
            return _bind_approved(held, self._bind_values(s, statement, plan))
        return self._bind_values(s, statement, plan)

    async def _bind_after_hold(
        self,
        held: Awaitable[Any],
        info: SessionInfo,
        s: PiiSession,
        statement: Statement,
        plan: StatementPlan,
    ) -> Allow | Refuse | None:
        verdict = await held
        if type(verdict) is not Allow:
            return verdict  # type: ignore[no-any-return]
        now = self._since_held(info, s, plan)
        if type(now) is Refuse:
            return now
        s, plan = now  # type: ignore[misc]
        return _bind_approved(verdict, self._bind_values(s, statement, plan))

    def _since_held(
        self, info: SessionInfo, s: PiiSession, plan: StatementPlan
    ) -> tuple[PiiSession, StatementPlan] | Refuse:
        """The session's PII state and the statement's plan once a hold that may have
        lasted is decided: a reload of the catalog (a new room) or a schema read again
        while it waited made ``plan`` on what no longer holds, and under it a column
        marked since came back raw. Planned again then; refused when the new plan holds
        it for a reason the approver was not shown."""
        now = self.session(info)
        if now is None:
            return refusals.PII_SCHEMA_UNAVAILABLE
        if now is s and plan.version == s.room.version:
            return s, plan
        fresh = now.plan(plan.sql).with_token_params(plan.token_params)
        if self.loads.in_flux(info.database):
            fresh = fresh.distrusted(self._unsettled(info.database))
        new = [r for r in fresh.hold_reasons if r not in plan.hold_reasons]
        if new:
            return Refuse(
                "42501",
                "dbgate: the PII catalog or the schema changed while this statement was "
                f"held ({new[0]}); send it again to have it held anew",
            )
        return now, fresh

    def _bind_values(
        self, s: PiiSession, statement: Statement, plan: StatementPlan
    ) -> Allow | Refuse | None:
        """The tokens among a Bind's values resolved, its results under ``plan``;
        None when nothing changes. A Bind judged for another reason gets ``plan``
        (made on the current snapshot) when the statement involves PII: its Parse's may
        have been made on an older one, which found nothing (``SessionInfo.
        forget_verdicts`` after a schema reload: the server re-plans a prepared
        statement whose view was redefined to read PII, or whose column was marked)."""
        if not plan.params_may_hold_tokens:
            return Allow(plan=PiiResultPlan(plan)) if plan.involves_pii else None
        try:
            values, bound = s.detokenize_params(
                plan, statement.params, statement.param_formats, statement.param_types
            )
        except TokenError as e:
            return Refuse(e.sqlstate, f"dbgate: {e}")
        result_plan = PiiResultPlan(bound) if bound.involves_pii else None
        if values == statement.params:
            return Allow(plan=result_plan) if result_plan is not None else None
        return Allow(plan=result_plan, replace_params=values)


def _portal_bound(info: SessionInfo) -> Callable[[str], bool]:
    """Whether the server may hold a portal the client bound under a cursor name."""
    names = info.portal_names

    def bound(name: str) -> bool:
        return info.portals_lost or name.encode("utf-8", "surrogateescape")[:NAME_BYTES] in names

    return bound


def _protocol_prepared(info: SessionInfo) -> Callable[[str], bool]:
    """Whether the server may hold a statement the client parsed through the extended
    protocol (not an SQL ``PREPARE`` the gate traced) under a prepared statement's name."""
    statements = info.statements

    def parsed(name: str) -> bool:
        return any(
            c.lost or not c.sql_prepared for c in statements.candidates(identifier_key(name))
        )

    return parsed


def _pii_hold(plan: StatementPlan, classification: Classification | None) -> Decision:
    """The hold of a statement that copies PII where the catalog cannot follow it (a
    Bind's hold gets its classification from the gate that asks)."""
    return Decision(
        Action.HOLD,
        "pii",
        "copies PII where the PII catalog cannot follow it",
        classification=classification,
        reasons=tuple(Reason(Category.EXPORT, "pii-copy", r) for r in plan.hold_reasons),
    )


def _held_at_each_bind(planned: Allow | Refuse | None, allowed: Allow) -> Allow | Refuse:
    """The verdict of a Parse PII holds: let through under its plan, every Bind shown
    to the gate (none judged by a quick recheck, none skipped for lacking tokens), and
    never remembered by the relay."""
    if planned is None:
        planned = allowed
    if type(planned) is not Allow:
        return planned
    return replace(
        planned, check_binds=True, check_only_tokens=False, recheck_bind=None, repeatable=False
    )


def _bind_approved(approved: Allow, changed: Allow | Refuse | None) -> Allow | Refuse:
    """An approved Bind's verdict: what PII makes of its values (``changed``) with the
    approval's note (the audit records the approval), never remembered."""
    if changed is None:
        return replace(approved, repeatable=False)
    if type(changed) is not Allow:
        return changed
    note = changed.note if approved.note is None else approved.note
    return replace(changed, note=note, repeatable=False)


def _approved(allowed: Allow, approved: Allow) -> Allow:
    """The policy's verdict (its limits) for a statement the PII gate held and a human
    approved, with the approval's note (the audit records the approval); never
    remembered by the relay (the next one is held again)."""
    note = allowed.note if approved.note is None else approved.note
    return replace(allowed, note=note, repeatable=False)


def _binds_may_hold_tokens(allowed: Allow) -> Allow:
    """``allowed`` for a Parse whose Bind values may be PII tokens: every Bind with
    ``tok_`` in its bytes is shown to the gate, to be resolved."""
    recheck = allowed.recheck_bind
    return replace(
        allowed,
        check_binds=True,
        check_only_tokens=not allowed.check_binds,  # nothing else to judge there
        # the policy's quick judge of its Binds knows nothing of tokens
        recheck_bind=None if recheck is None else _UnlessTokens(recheck),
    )


class _UnlessTokens:
    """A Parse verdict's ``recheck_bind`` for a statement whose values may be PII
    tokens: a Bind whose bytes spell ``tok_`` goes to the gate, to be resolved."""

    __slots__ = ("inner",)

    def __init__(self, inner: Callable[[SessionInfo, bytes], Allow | None]) -> None:
        self.inner = inner

    def __call__(self, session: SessionInfo, body: bytes) -> Allow | None:
        return None if b"tok_" in body else self.inner(session, body)


def _note(classification: Classification, action: str) -> GateNote:
    return GateNote(classification, action, primary_category(classification))
