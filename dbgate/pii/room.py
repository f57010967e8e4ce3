"""The PII room's front door: what the gate calls, per process, session and statement.

* :class:`PiiRoom` — one per process: catalog, keys, tokenizer, the upstream schema
  snapshot and the catalog applied to it, the plan cache, the replacement cache.
  ``await room.refresh(conn)`` (re)loads the schema; call it at start and after DDL.
* :class:`PiiSession` — one per client connection: the identity's exemption, the
  cursors and SQL-level prepared statements it declared, and the message filter.
* :class:`~dbgate.pii.plans.StatementPlan` — one per statement text (its own module):
  which outputs carry PII, whether the statement should be held, which tokens it sends
  back; ``rows()``/``copy_out()`` give the rewriters for its results.

Nothing here imports ``dbgate.proxy``: the plan, rewriters and filter have the method
shapes of ``proxy/seams.py`` (without the ``session`` argument), and the gate adapts.
Everything is synchronous except the schema load.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dbgate.pii.catalog import Catalog
from dbgate.pii.catalog_load import load_catalog
from dbgate.pii.collector import collector_paused
from dbgate.pii.coverage import Coverage
from dbgate.pii.detectors import replace_detected
from dbgate.pii.entities import MIXED, UNKNOWN
from dbgate.pii.filters import MessageFilter
from dbgate.pii.keys import keyring_from_config
from dbgate.pii.lin import CLEAN, UNKNOWN_LIN, Lin
from dbgate.pii.lineage import Analysis, Output, analyze, parse
from dbgate.pii.plan_cache import PlanCache, Shape
from dbgate.pii.plans import StatementPlan
from dbgate.pii.pseudonyms import Pseudonymizer, TypeRegistry
from dbgate.pii.rows import ValueCache
from dbgate.pii.schema import SchemaSnapshot, load_schema
from dbgate.pii.tokens import TokenError, Tokenizer
from dbgate.pii.tokens_in import detokenize_params, detokenize_sql

__all__ = ["Exemption", "PiiRoom", "PiiSession", "PiiSettings", "TokenError"]

log = logging.getLogger("dbgate.pii")


@dataclass(frozen=True)
class PiiSettings:
    """The behaviour knobs of ``pii:`` in the config (see dbgate.config.PiiConfig)."""

    unknown: str = "tokenize"  # tokenize | hold | detect
    detect_clean_text: bool = False
    raise_messages: str = "detect"
    notification_payloads: str = "tokenize"
    notification_channels: dict[str, str] = field(default_factory=dict)
    exempt_identities: frozenset[str] = frozenset()
    exempt_groups: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, cfg: Any) -> PiiSettings:
        return cls(
            unknown=cfg.unknown,
            detect_clean_text=cfg.detect_clean_text,
            raise_messages=cfg.raise_messages,
            notification_payloads=cfg.notification_payloads,
            notification_channels=dict(cfg.notification_channels),
            exempt_identities=frozenset(cfg.exempt_identities),
            exempt_groups=frozenset(cfg.exempt_groups),
        )


@dataclass(frozen=True, slots=True)
class Exemption:
    """Why a session sees raw values: to be recorded with the session and each statement."""

    identity: str
    reason: str  # e.g. "identity 'analyst' is listed in pii.exempt_identities"


#: Texts remembered per SQL prepared statement name (see ``PiiSession._prepared_again``)
_PREPARED_TEXTS = 16


def _declare(known: dict[str, Output], declared: dict[str, Output]) -> None:
    """Remember what cursors or prepared statements ``declared`` return. A name this
    session declared before keeps what it returned too: the new declaration is planned
    before it runs and may fail (``cursor "c" already exists``, or refused by the
    rules), leaving the server with the old one, so a later FETCH or EXECUTE of the
    name is judged by both (over-tokenized at worst, never raw)."""
    for name, out in declared.items():
        before = known.get(name)
        known[name] = out if before is None else before.merged(out)


class PiiSession:
    """PII state of one client connection."""

    def __init__(self, room: PiiRoom, identity: str, groups: Iterable[str] = ()) -> None:
        self.room = room
        self.identity = identity
        self.groups = frozenset(groups)
        self.exemption = room.exemption_for(identity, self.groups)
        self._cursors: dict[str, Output] = {}
        self._prepared: dict[str, Output] = {}
        # names declared by a text that involves PII (StatementPlan.involves_pii): a
        # FETCH, MOVE or EXECUTE of one runs that query, whose errors may echo PII even
        # where its outputs are clean (``WHERE current_setting(full_name) IS NULL``).
        # Never forgotten: a redeclaration or DEALLOCATE may fail on the server.
        self._pii_cursors: set[str] = set()
        self._pii_prepared: set[str] = set()
        # the texts that prepared each name, and the snapshot their lineage is of: the
        # server plans a prepared statement again when what it reads changes (a view
        # redefined, a column marked), so after a reload EXECUTE reads it as it is now
        self._prepared_texts: dict[str, list[str]] = {}
        self._prepared_version = room.version
        self.filter = room.message_filter if self.exemption is None else _PassFilter()
        #: Whether the server may hold a portal the client bound through the extended
        #: protocol under a cursor name, or a statement it parsed so under a prepared
        #: statement's name (set by whoever relays the session; None: never). Names
        #: are one namespace for both ways: ``Bind "c"`` of ``SELECT email …`` after
        #: ``DECLARE c CURSOR FOR SELECT status …`` and ``CLOSE c`` made ``FETCH ALL
        #: FROM c`` read as the clean cursor, and return the e-mails raw; so did
        #: ``EXECUTE p`` of a protocol Parse ``p`` after ``PREPARE p AS`` a clean
        #: query and a Close of it. Such a name is unknown to FETCH and EXECUTE.
        self.portal_bound: Callable[[str], bool] | None = None
        self.protocol_prepared: Callable[[str], bool] | None = None

    # SessionState for the lineage walker
    def cursor(self, name: str) -> Output | None:
        if self.portal_bound is not None and self.portal_bound(name):
            return Output(tail=UNKNOWN_LIN, chosen=UNKNOWN_LIN)
        return self._cursors.get(name)

    def prepared(self, name: str) -> Output | None:
        if self.protocol_prepared is not None and self.protocol_prepared(name):
            return Output(tail=UNKNOWN_LIN, chosen=UNKNOWN_LIN)
        return self._prepared.get(name)

    def plan(
        self, sql: str, shape: Shape | bool | None = False, analysis: Analysis | None = None
    ) -> StatementPlan:
        """The plan of one statement text (Query or Parse); cheap when seen before.
        ``shape``: ``shape_of(sql)`` when the caller has computed it; ``analysis``:
        its lineage when the caller has it (traced in a worker, or looked up)."""
        if self._prepared_version != self.room.version:
            self._prepared_again()
        if analysis is None:
            analysis = self.room.analysis(sql, self, shape)
        _declare(self._cursors, analysis.declares)
        _declare(self._prepared, analysis.prepares)
        for name in analysis.prepares:
            texts = self._prepared_texts.setdefault(name, [])
            if sql not in texts:
                # a name prepared by more texts than this is unknown once traced again
                texts.append(sql if len(texts) < _PREPARED_TEXTS else "")
        for name in analysis.deallocates:
            if name == "*":
                self._prepared.clear()
                self._prepared_texts.clear()
            else:
                self._prepared.pop(name, None)
                self._prepared_texts.pop(name, None)
        plan = StatementPlan(self.room, sql, analysis, self.exemption)
        if not (
            analysis.declares
            or analysis.prepares
            or analysis.runs_cursors
            or analysis.runs_prepared
        ):
            return plan
        involved = plan.involves_pii
        if involved:
            self._pii_cursors.update(analysis.declares)
            self._pii_prepared.update(analysis.prepares)
            return plan
        cursors, prepared = self._pii_cursors, self._pii_prepared
        bound, parsed = self.portal_bound, self.protocol_prepared
        if any(
            n in cursors or n not in self._cursors or (bound is not None and bound(n))
            for n in analysis.runs_cursors
        ) or any(
            n in prepared or n not in self._prepared or (parsed is not None and parsed(n))
            for n in analysis.runs_prepared
        ):
            return StatementPlan(self.room, sql, analysis, self.exemption, runs_pii=True)
        return plan

    def distrust_cursors(self, names: Iterable[str]) -> None:
        """Cursors declared while the schema may differ from the snapshot: the server
        planned their query on the schema as it was then, which a cursor ``WITH HOLD``
        keeps past the COMMIT; what they return is unknown (a view redefined in the
        transaction that declared it, ``lower(label)`` now an e-mail)."""
        for name in names:
            self._cursors[name] = Output(tail=UNKNOWN_LIN, chosen=UNKNOWN_LIN)
            self._pii_cursors.add(name)

    def _prepared_again(self) -> None:
        """The schema snapshot changed since the session's SQL prepared statements were
        traced: trace the texts that prepared each again (a name several texts
        prepared, each failed or not, takes what any of them returns). A cursor's
        query was planned by the server when it was declared, on the schema as it was
        then, which the new snapshot no longer describes, while what the catalog marks
        now (a ``pii:`` comment added since) is read on the new one: what its FETCH
        returns is unknown (``lower(body)`` traced clean, then ``body`` commented
        ``pii:email``, was FETCHed raw)."""
        room = self.room
        self._prepared_version = room.version
        self.distrust_cursors(list(self._cursors))
        for name, texts in self._prepared_texts.items():
            out: Output | None = None
            for text in texts:
                try:
                    analysis = room.analysis(text, self) if text else None
                except Exception:  # traced before; unknown if not now
                    analysis = None
                got = None if analysis is None else analysis.prepares.get(name)
                if got is None:
                    got = Output(tail=UNKNOWN_LIN, chosen=UNKNOWN_LIN)
                elif StatementPlan(room, text, analysis, self.exemption).involves_pii:
                    self._pii_prepared.add(name)
                out = got if out is None else out.merged(got)
            if out is not None:
                self._prepared[name] = out

    def detokenize_sql(self, plan: StatementPlan) -> str:
        """The text to forward, with tokens resolved; TokenError (22023) if one may not be.

        Records nothing itself: the gate records that tokens were resolved (how many:
        ``len(plan.analysis.token_sites)``), never the values.
        """
        tokenizer = self.room.tokenizer
        return detokenize_sql(plan.sql, plan.analysis, tokenizer.resolve, tokenizer.resolve_stored)

    def detokenize_params(
        self,
        plan: StatementPlan,
        params: Sequence[bytes | None],
        formats: Sequence[int],
        param_types: Sequence[int],
    ) -> tuple[tuple[bytes | None, ...], StatementPlan]:
        """Bind values with tokens resolved, and the plan for that portal's results."""
        values, replaced = detokenize_params(
            plan.analysis,
            params,
            formats,
            param_types,
            self.room.types,
            self.room.tokenizer.resolve,
            self.room.tokenizer.resolve_stored,
        )
        if replaced and plan.analysis.declares:
            self._declared_with_tokens(plan.analysis.declares, replaced)
        return values, plan.with_token_params(replaced)

    def _declared_with_tokens(self, declares: dict[str, Output], replaced: frozenset[int]) -> None:
        """A Bind of ``DECLARE c CURSOR FOR SELECT $1::text`` resolved tokens into
        parameters ``replaced``: a later FETCH (planned without that Bind's values)
        returns the resolved values wherever those parameters flow, so the session's
        cursor carries them as PII, and its errors are withheld."""
        pii = Lin(frozenset((MIXED,)))

        def mark(lin: Lin) -> Lin:
            return lin | pii if lin.params & replaced else lin

        for name in declares:
            self._pii_cursors.add(name)
            out = self._cursors.get(name)
            if out is not None:
                self._cursors[name] = Output(
                    [mark(lin) for lin in out.columns],
                    list(out.names),
                    None if out.tail is None else mark(out.tail),
                    mark(out.chosen),
                )


class _PassFilter:
    def notice(self, body: bytes, **_: Any) -> bytes:
        return body

    def error(self, body: bytes, **_: Any) -> bytes:
        return body

    def notification(self, body: bytes) -> bytes:
        return body

    def copy_data(self, data: bytes) -> str | None:
        return None  # a session that sees raw values resolves no tokens either


class PiiRoom:
    """Everything PII for one dbgate process."""

    def __init__(
        self,
        catalog: Catalog,
        tokenizer: Tokenizer,
        settings: PiiSettings | None = None,
        snapshot: SchemaSnapshot | None = None,
    ) -> None:
        self.catalog = catalog
        self.tokenizer = tokenizer
        self.settings = settings or PiiSettings()
        self.values = ValueCache()
        # a cached replacement holds a token: it must go when the token stops resolving
        tokenizer.on_forget(self.values.forget)
        self.stale = False  # a relation or OID was seen that the snapshot lacks
        #: the last refresh found the schema as it was, and kept the snapshot
        self.reloaded_unchanged = False
        self.warnings: list[str] = []
        #: Analyses by text and by shape (literals masked); cleared with the snapshot.
        self.plans = PlanCache()
        self._lock = threading.Lock()
        self.snapshot = SchemaSnapshot()
        self.coverage: Coverage | None = None
        self._pii_names: tuple[Coverage | None, frozenset[str]] | None = None
        self.types = TypeRegistry()
        self.pseudonymizer = Pseudonymizer(tokenizer, self.types)
        #: for values derived from PII: new tokens and pseudonyms at every use
        self.fresh_pseudonymizer = Pseudonymizer(tokenizer.fresh(), self.types)
        self.version = 0
        self.message_filter = MessageFilter(
            self._token_text,
            self._column_entity,
            self._relation_has_pii,
            raise_messages=self.settings.raise_messages,
            notification_payloads=self.settings.notification_payloads,
            notification_channels=self.settings.notification_channels,
            fresh=self._fresh_token_text,
        )
        self.set_snapshot(snapshot or SchemaSnapshot())

    @classmethod
    def from_config(cls, cfg: Any, environ: dict[str, str] | None = None) -> PiiRoom:
        """Build from ``Config.pii``. Raises PiiKeyError / CatalogError: do not start then."""
        keyring = keyring_from_config(cfg.keys, environ)
        tokenizer = Tokenizer(
            keyring,
            cfg.mode,
            max_reversible_bytes=cfg.max_reversible_bytes,
            cache_entries=cfg.token_cache_entries,
        )
        return cls(load_catalog(cfg.catalog), tokenizer, PiiSettings.from_config(cfg))

    # ---------------------------------------------------------------- schema
    async def refresh(self, conn: Any) -> list[str]:
        """Reload the upstream schema through an asyncpg connection; returns warnings.

        A schema found unchanged keeps the snapshot, its coverage and the plans made on
        it (``reloaded_unchanged``): the gate reads it again every 30 s while it is
        used, and a coverage of thousands of tables takes a second to build."""
        snapshot = await load_schema(conn)
        old = self.snapshot
        self.reloaded_unchanged = (
            self.coverage is not None and bool(old.relations) and old.same_as(snapshot)
        )
        if not self.reloaded_unchanged:
            self.set_snapshot(snapshot)
        return self.warnings

    async def refresh_dsn(self, dsn: str) -> list[str]:
        import asyncpg

        conn = await asyncpg.connect(dsn)
        try:
            return await self.refresh(conn)
        finally:
            await conn.close()

    def set_snapshot(self, snapshot: SchemaSnapshot, before: Coverage | None = None) -> None:
        """Use ``snapshot`` from now on. A column the last snapshot (or ``before``, the
        coverage of a room this one replaces) found PII stays PII: DDL, perhaps the
        agent's approved as ordinary, may take its mark away, not its values."""
        before = before or self.coverage
        kept = before.kept_from(snapshot) if before is not None else {}
        coverage = Coverage(snapshot, self.catalog, kept=kept)
        types = TypeRegistry(snapshot)
        with self._lock:
            self.snapshot = snapshot
            self.coverage = coverage
            self.types = types
            self.pseudonymizer = Pseudonymizer(self.tokenizer, types)
            self.fresh_pseudonymizer = Pseudonymizer(self.tokenizer.fresh(), types)
            self.version = snapshot.version
            self.plans.clear()
            self.values.clear()
            self.stale = False
            before = set(self.warnings)
            self.warnings = list(coverage.warnings)
        for w in self.warnings:
            if w not in before:  # a reload repeats what the first load said
                log.warning("%s", w)

    # ---------------------------------------------------------------- planning
    def session(self, identity: str, groups: Iterable[str] = ()) -> PiiSession:
        return PiiSession(self, identity, groups)

    def exemption_for(self, identity: str, groups: frozenset[str]) -> Exemption | None:
        s = self.settings
        if identity in s.exempt_identities:
            return Exemption(identity, f"identity {identity!r} is listed in pii.exempt_identities")
        hit = sorted(groups & s.exempt_groups)
        if hit:
            return Exemption(
                identity, f"group {hit[0]!r} of {identity!r} is listed in pii.exempt_groups"
            )
        return None

    def analysis(
        self, sql: str, session: PiiSession | None = None, shape: Shape | bool | None = False
    ) -> Analysis:
        """The lineage of ``sql``: from the plan cache (this text, or another of its
        shape: see :mod:`dbgate.pii.plan_cache`), else parsed and walked. ``shape``:
        ``shape_of(sql)`` when the caller has computed it."""
        cached, shape = self.plans.lookup(sql, shape)
        if cached is not None:
            return cached
        return self.trace(sql, session, shape)

    def trace(self, sql: str, session: PiiSession | None, shape: Shape | None) -> Analysis:
        """The lineage of ``sql`` walked now (its cache lookup missed), and kept."""
        coverage = self.coverage
        assert coverage is not None
        with collector_paused():
            result = analyze(sql, coverage, session)
        self.adopt(sql, shape, result, coverage)
        return result

    def adopt(self, sql: str, shape: Shape | None, result: Analysis, coverage: Coverage) -> None:
        """Keep the lineage of ``sql`` traced against ``coverage`` (here, or in a
        worker process): cached unless it depends on the session, or the coverage
        has been replaced since (it was traced on a stale schema)."""
        if result.unknown_relations:
            self.stale = True
        session_bound = any(
            st.kind in ("FetchStmt", "ExecuteStmt") for st in result.statements
        ) or bool(result.declares or result.prepares or result.deallocates or result.current_of)
        if not session_bound and self.coverage is coverage:
            self.plans.store(sql, shape, result)

    def seen_exactly(self, sql: str) -> bool:
        """Whether the plan of ``sql`` itself is cached (not just its shape's): a text
        that repeats, so decisions about it are worth remembering."""
        return self.plans.seen_exactly(sql)

    def plan(self, sql: str) -> StatementPlan:
        """A plan without a session (tools, tests): no cursors, no exemption."""
        return StatementPlan(self, sql, self.analysis(sql))

    def note_unknown(self, why: str) -> Lin:
        log.debug("pii: %s", why)
        return UNKNOWN_LIN

    def copy_options(self, sql: str, skip: int = 0) -> dict[str, Any]:
        """FORMAT/DELIMITER/NULL/QUOTE/ESCAPE/HEADER of the COPY statement in ``sql``."""
        try:
            stmts = [s for s in parse(sql) if "CopyStmt" in s]
        except Exception:
            return {}
        if len(stmts) <= skip:
            return {}
        out: dict[str, Any] = {}
        for opt in stmts[skip]["CopyStmt"].get("options") or ():
            d = opt.get("DefElem", {})
            name = d.get("defname", "")
            arg = d.get("arg") or {}
            if "String" in arg:
                value: Any = arg["String"].get("sval", "")
            elif "Boolean" in arg:
                value = bool(arg["Boolean"].get("boolval"))
            elif "Integer" in arg:
                value = arg["Integer"].get("ival", 0)
            else:
                value = True
            out[name] = value.lower() if name == "format" and isinstance(value, str) else value
        if "header" in out and isinstance(out["header"], str):
            out["header"] = out["header"].lower() not in ("false", "off", "0")
        return out

    def copy_types(self, sql: str, skip: int = 0) -> list[int]:
        """Type OIDs of a ``COPY table [(cols)] TO`` (empty for ``COPY (query)``), the
        one after ``skip`` other COPY statements of ``sql``."""
        try:
            stmts = [s["CopyStmt"] for s in parse(sql) if "CopyStmt" in s]
        except Exception:
            return []
        if len(stmts) <= skip or stmts[skip].get("relation") is None:
            return []
        rv = stmts[skip]["relation"]
        rels = self.snapshot.lookup(rv.get("relname", ""), rv.get("schemaname"))
        if not rels:
            return []
        rel = rels[0]
        attlist = [a["String"]["sval"] for a in stmts[skip].get("attlist") or () if "String" in a]
        if attlist:
            by_name = {c.name: c.type_oid for c in rel.columns}
            return [by_name.get(n, 25) for n in attlist]
        return [c.type_oid for c in rel.columns]

    # ---------------------------------------------------------------- helpers
    def _token_text(self, entity: str, value: bytes) -> str:
        return self.tokenizer.token(entity, value)

    def detect_bytes(self, raw: bytes) -> bytes:
        """``raw`` with what the content detectors find replaced by fresh tokens: the
        text around a finding may be the agent's to choose, so a deterministic token
        of it would be a codebook entry (see ``FreshTokens``)."""
        text = raw.decode("utf-8", "replace")
        new = replace_detected(text, self._fresh_token_text)
        return raw if new == text else new.encode()

    def _fresh_token_text(self, entity: str, value: bytes) -> str:
        return self.fresh_pseudonymizer.tokenizer.token(entity, value)

    def _column_entity(self, schema: str | None, table: str, column: str) -> str | None:
        rels = self.snapshot.lookup(table, schema)
        if not rels or self.coverage is None:
            return UNKNOWN
        out: Lin = CLEAN
        for rel in rels:
            for c, lin in zip(rel.columns, self.coverage.relation_lins(rel), strict=True):
                if c.name == column:
                    out = out | lin
        return None if out.clean else out.entity()

    def pii_names(self) -> frozenset[str]:
        """Lower-cased names of the relations with PII columns (views included) and of
        the PII columns themselves, for :attr:`StatementPlan.involves_pii`; computed
        once per schema snapshot."""
        coverage = self.coverage
        cached = self._pii_names
        if cached is not None and cached[0] is coverage:
            return cached[1]
        names: set[str] = set()
        if coverage is not None:
            for rel in list(self.snapshot.relations.values()):
                lins = coverage.relation_lins(rel)
                pii = [c.name for c, lin in zip(rel.columns, lins, strict=True) if not lin.clean]
                if pii:
                    names.add(rel.name.lower())
                    names.update(n.lower() for n in pii)
        result = frozenset(names)
        self._pii_names = (coverage, result)
        return result

    def _relation_has_pii(self, schema: str | None, table: str) -> bool:
        rels = self.snapshot.lookup(table, schema)
        if not rels or self.coverage is None:
            return True
        return any(not lin.clean for rel in rels for lin in self.coverage.relation_lins(rel))

    def detokenize(self, token: str) -> tuple[str, bytes]:
        """For authorized humans (``dbgate detokenize``): raises TokenError."""
        return self.tokenizer.resolve(token)
