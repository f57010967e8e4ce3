"""The PII room's front door: what the gate calls, per process, session and statement.

* :class:`PiiRoom` — one per process: catalog, keys, tokenizer, the upstream schema
  snapshot and the catalog applied to it, the plan cache, the replacement cache.
  ``await room.refresh(conn)`` (re)loads the schema; call it at start and after DDL.
* :class:`PiiSession` — one per client connection: the identity's exemption, the
  cursors and SQL-level prepared statements it declared, and the message filter.
* :class:`StatementPlan` — one per statement text: which outputs carry PII, whether
  the statement should be held (``pii.unknown: hold``), which tokens it sends back;
  ``rows()``/``copy_out()`` give the rewriters for its results.

Nothing here imports ``dbgate.proxy``: the plan, rewriters and filter have the method
shapes of ``proxy/seams.py`` (without the ``session`` argument), and the gate adapts.
Everything is synchronous except the schema load.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dbgate.pii.catalog import Catalog
from dbgate.pii.catalog_load import load_catalog
from dbgate.pii.collector import collector_paused
from dbgate.pii.copyout import (
    BinaryCopyRewriter,
    CsvCopyRewriter,
    LineCopyRewriter,
    TextCopyRewriter,
    embeds_ascii,
)
from dbgate.pii.coverage import Coverage
from dbgate.pii.detectors import replace_detected
from dbgate.pii.entities import MIXED, UNKNOWN
from dbgate.pii.filters import MessageFilter
from dbgate.pii.keys import keyring_from_config
from dbgate.pii.lin import CLEAN, UNKNOWN_LIN, Lin
from dbgate.pii.lineage import Analysis, Output, analyze, parse
from dbgate.pii.plan_cache import PlanCache, Shape
from dbgate.pii.pseudonyms import TEXT, Pseudonymizer, TypeRegistry
from dbgate.pii.rows import ColumnAction, RowRewriter, ValueCache
from dbgate.pii.schema import SchemaSnapshot, load_schema
from dbgate.pii.tokens import TokenError, Tokenizer
from dbgate.pii.tokens_in import detokenize_params, detokenize_sql

__all__ = ["Exemption", "PiiRoom", "PiiSession", "PiiSettings", "StatementPlan", "TokenError"]

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


def _description(body: bytes) -> list[tuple[str, int, int, int]]:
    """RowDescription body -> [(name, table oid, attnum, type oid)]."""
    from dbgate.wire.messages import decode_backend

    msg = decode_backend(ord("T"), body)
    return [(f.name, f.table_oid, f.column_attr, f.type_oid) for f in msg.fields]  # type: ignore[union-attr]


def _formats(formats: Sequence[int], n: int) -> list[int]:
    if not formats:
        return [0] * n
    if len(formats) == 1:
        return [formats[0]] * n
    return [formats[i] if i < len(formats) else 0 for i in range(n)]


class StatementPlan:
    """What PII means for one statement text (a ``ResultPlan`` of proxy/seams.py).

    Attributes the gate reads:

    * ``hold`` / ``hold_reasons``: the statement copies PII where the catalog will not
      find it again (``INSERT INTO notes SELECT email …``, ``CREATE TABLE AS``,
      ``set_config(…, email)``, ``COPY … TO 'file'``), or ``pii.unknown: hold`` and
      some output could not be followed — hold it for approval instead of running it;
    * ``unknown_reasons``: why some output is tokenized for lack of lineage;
    * ``pii_writes``: those copies, one sentence each (also in ``hold_reasons``);
    * ``has_tokens`` / ``params_may_hold_tokens``: call :meth:`PiiSession.detokenize_sql`
      on the text / :meth:`PiiSession.detokenize_params` on each Bind;
    * ``exemption``: set when the session sees raw values (rows() returns None).
    """

    __slots__ = (
        "analysis",
        "exemption",
        "hold",
        "hold_reasons",
        "room",
        "runs_pii",
        "sql",
        "token_params",
        "version",
    )

    def __init__(
        self,
        room: PiiRoom,
        sql: str,
        analysis: Analysis,
        exemption: Exemption | None = None,
        token_params: frozenset[int] = frozenset(),
        runs_pii: bool = False,
    ) -> None:
        self.room = room
        self.sql = sql
        self.analysis = analysis
        self.exemption = exemption
        self.token_params = token_params
        #: it runs a cursor or SQL prepared statement that the session declared over PII
        #: (or that dbgate did not see declared): see ``PiiSession.plan``
        self.runs_pii = runs_pii
        self.version = room.version
        reasons: list[str] = []
        if exemption is None:
            # PII copied where the catalog will not find it again is always held:
            # once in a plain column or a setting, it would come back raw
            reasons.extend(analysis.pii_writes)
            if room.settings.unknown == "hold" and _unknown_outputs(analysis):
                reasons.extend(analysis.unknown_reasons)
        self.hold = bool(reasons)
        self.hold_reasons = reasons

    # ---------------------------------------------------------------- for the gate
    @property
    def unknown_reasons(self) -> list[str]:
        return list(self.analysis.unknown_reasons)

    @property
    def pii_writes(self) -> list[str]:
        return list(self.analysis.pii_writes)

    @property
    def has_tokens(self) -> bool:
        return bool(self.analysis.token_sites)

    @property
    def params_may_hold_tokens(self) -> bool:
        return bool(self.analysis.param_sites)

    @property
    def pii_outputs(self) -> bool:
        """Some output of the statement is (or may be) PII: results will be rewritten."""
        for st in self.analysis.statements:
            if st.output is not None and (
                st.output.tail is not None
                or any(self._may_be_pii(lin) for lin in st.output.columns)
            ):
                return True
        return False

    def _may_be_pii(self, lin: Lin) -> bool:
        """A bind parameter is PII where a Bind's value there was a token (resolved);
        a parameter that chose the rows is in every output of their level (``WHERE id
        = $1``), and with a plain value changes nothing."""
        if lin.pii or lin.unknown:
            return True
        return bool(lin.params & self.token_params)

    @property
    def involves_pii(self) -> bool:
        """Whether the server's errors and notices about this statement may echo PII
        (their text is then withheld, see :meth:`MessageFilter.withhold`): some output
        is or may be PII, it holds tokens (in its text, or its Bind's values), lineage
        could not follow all of it, it writes to a relation whose own rules or triggers
        run (code that may read anything and say it), it reads or writes a relation
        whose row-level security policies run (code too), it runs a cursor or SQL prepared
        statement declared over PII (FETCH, MOVE, EXECUTE: the declared query runs now,
        its WHERE clause included), or its text names a relation with PII columns or a
        PII column (anywhere: a WHERE clause, a function's argument; lineage walks those
        clauses only for tokens, so the names decide)."""
        if self.exemption is not None:
            return False
        a = self.analysis
        if (
            a.token_sites
            or self.token_params
            or self.runs_pii
            or a.unknown_reasons
            or a.unknown_relations
            or a.parse_error
            or a.hidden_code
            or a.policies_met
            or self.pii_outputs
        ):
            return True
        if _UNICODE_IDENTIFIER.search(self.sql):
            return True  # U&"cust\006Fmers": a name the words below do not spell
        names = self.room.pii_names()
        return any(
            word.strip('"').replace('""', '"').lower() in names for word in _WORD.findall(self.sql)
        )

    def with_token_params(self, numbers: Iterable[int]) -> StatementPlan:
        """This plan for a Bind whose parameters ``numbers`` (1-based) held tokens."""
        numbers = frozenset(numbers)
        if not numbers:
            return self
        return StatementPlan(
            self.room,
            self.sql,
            self.analysis,
            self.exemption,
            numbers | self.token_params,
            self.runs_pii,
        )

    # ---------------------------------------------------------------- seam methods
    def rows(
        self,
        description: bytes | None,
        formats: Sequence[int] = (),
        statement: int | None = None,
    ) -> RowRewriter | None:
        """A rewriter for one result set, or None when nothing in it is PII.

        ``statement``: which statement of the text the result set is of (the relay
        counts them in a simple Query); without it, the outputs of all statements
        that fit the description are merged position by position."""
        if self.exemption is not None:
            return None
        outputs = [
            s.output for s in self.analysis.statements if s.output is not None and not s.copy_out
        ]
        room = self.room
        if statement is not None and description is not None:
            outputs = self._of_statement(statement)
        if description is None:
            merged = self._merged(outputs, None)
            n = len(merged.columns) if merged.tail is None else 0
            if merged.tail is not None:
                # the client never described the portal: without its width the
                # only safe rewrite is every column
                return _AllColumns(self, list(_formats(formats, len(formats) or 1)))
            fields = [("", 0, 0, 0)] * n
        else:
            fields = _description(description)
            merged = self._merged(outputs, len(fields))
        fmts = _formats(formats, len(fields))
        actions: list[ColumnAction] = []
        cov = room.coverage
        # rows that PII chose (``c2.id = ascii(substr(c.email, n, 1))``): a stored
        # value of one is the value of the row the code names, and its deterministic
        # token, matched with the tokens of rows read by id, spells the code back
        chosen = self._lin_params(merged.chosen)
        by_pii = chosen.pii or chosen.unknown
        for i, (name, table_oid, attnum, type_oid) in enumerate(fields):
            lin: Lin | None = None
            stored = False  # the value is a table column's, as stored
            if table_oid and cov is not None:
                lin = cov.attr(table_oid, attnum)
                if lin is None:  # a relation or column created after the last refresh
                    room.stale = True
                    named = room.catalog.name_rule(name)
                    lin = merged.at(i) | (Lin(frozenset((named.entity,))) if named else UNKNOWN_LIN)
                else:
                    # exact for the value; but PII may have chosen the rows it is from
                    lin = lin | merged.chosen
                    # a RETURNING of a write names the table's column for the value
                    # it wrote, which the statement made: not a stored value
                    stored = (
                        attnum > 0
                        and cov.stored(table_oid)
                        and not self.analysis.returns_written
                        and not by_pii
                    )
            if lin is None:
                lin = merged.at(i)
            action = self._action(i, lin, type_oid, fmts[i], stored)
            if action is not None:
                actions.append(action)
        if not actions:
            return None
        return RowRewriter(
            actions,
            len(fields),
            room.pseudonymizer,
            room.values,
            room.detect_bytes,
            room.fresh_pseudonymizer,
        )

    def _of_statement(self, index: int) -> list[Output]:
        """The output of statement ``index`` alone, as :meth:`_merged` takes it. A
        statement that returns no rows yet has a result set (a rule's ``DO ALSO
        SELECT``), or an index past the text's statements: unknown, every column."""
        statements = self.analysis.statements
        if 0 <= index < len(statements):
            st = statements[index]
            if st.output is not None and not st.copy_out:
                return [st.output]
        why = f"a result set of statement {index + 1}, which returns none dbgate can follow"
        return [Output(tail=self.room.note_unknown(why))]

    def _merged(self, outputs: list[Output], width: int | None) -> Output:
        if not outputs:
            return Output(tail=UNKNOWN_LIN)
        fitting = [
            o
            for o in outputs
            if width is None
            or (len(o.columns) == width and o.tail is None)
            or (o.tail is not None and len(o.columns) <= width)
        ]
        if not fitting:
            return Output(
                tail=self.room.note_unknown("a result set no statement of the query explains")
            )
        merged = fitting[0]
        for o in fitting[1:]:
            merged = merged.merged(o)
        return merged

    def _lin_params(self, lin: Lin) -> Lin:
        if lin.params and lin.params & self.token_params:
            return lin | Lin(frozenset((MIXED,)))
        return lin

    def _action(
        self, i: int, lin: Lin, type_oid: int, fmt: int, stored: bool = False
    ) -> ColumnAction | None:
        """What to do with column ``i``. Only a table column's stored value
        (``stored``: the RowDescription names it) keeps the same token for the same
        value; anything else made from PII or not followed gets a new one each time
        (``FreshTokens``: a derived value's token must not be comparable)."""
        lin = self._lin_params(lin)
        settings = self.room.settings
        mode = "token" if stored else "fresh"
        if lin.pii:
            return ColumnAction(i, lin.entity(), type_oid, fmt, mode)
        if lin.unknown:
            if settings.unknown == "detect" and self.room.types.kind(type_oid) == TEXT:
                return ColumnAction(i, UNKNOWN, type_oid, fmt, "detect")
            return ColumnAction(i, UNKNOWN, type_oid, fmt, mode)
        if settings.detect_clean_text and fmt == 0 and self.room.types.kind(type_oid) == TEXT:
            return ColumnAction(i, UNKNOWN, type_oid, fmt, "detect")
        return None

    def copy_out(self, response: bytes) -> Any:
        """A rewriter for the CopyData of this statement's COPY TO STDOUT, or None."""
        if self.exemption is not None:
            return None
        copies = [s for s in self.analysis.statements if s.copy_out and s.output is not None]
        if len(response) < 3:
            return None
        overall = response[0]
        if not copies:
            out = Output(
                tail=self.room.note_unknown("COPY output from a statement dbgate did not follow")
            )
            options: dict[str, Any] = {}
            types: list[int] = []
        else:
            st = copies[0]
            out = st.output or Output(tail=UNKNOWN_LIN)
            # its options and columns: the COPY statements before it (COPY ... FROM too)
            before = 0
            for other in self.analysis.statements:
                if other is st:
                    break
                before += other.kind == "CopyStmt"
            options = self.room.copy_options(self.sql, before)
            types = self.room.copy_types(self.sql, before)
            if len(copies) > 1:
                # the relay does not say which of the text's COPY statements this
                # output is of: every value of it, whatever its options
                out = Output(tail=self.room.note_unknown("one of several COPY TO STDOUT in a text"))
        ncols = int.from_bytes(response[1:3], "big")
        pii: dict[int, Any] = {}
        # COPY output carries no column origins: every PII value in it is treated as
        # derived (a new token each time, see FreshTokens)
        pseudo = self.room.fresh_pseudonymizer
        for i in range(ncols):
            lin = self._lin_params(out.at(i))
            if lin.clean:
                continue
            entity = lin.entity()
            oid = types[i] if i < len(types) else 25
            mode = (
                "detect"
                if (lin.unknown and not lin.pii and self.room.settings.unknown == "detect")
                else "token"
            )
            pii[i] = _copy_replacer(pseudo, entity, oid, overall, mode, self.room)
        if not pii:
            return None
        if overall == 1:
            return BinaryCopyRewriter(pii)
        encoding = options.get("encoding")
        if len(copies) > 1 or (isinstance(encoding, str) and embeds_ascii(encoding)):
            # fields that cannot be told apart by their bytes (or by options that may
            # be another statement's): each line whole
            whole = _copy_replacer(pseudo, UNKNOWN_LIN.entity(), 25, 0, "token", self.room)
            return LineCopyRewriter(lambda line: whole(0, line))
        if options.get("format") == "csv":
            return CsvCopyRewriter(
                pii,
                delimiter=options.get("delimiter", ","),
                quote=options.get("quote", '"'),
                escape=options.get("escape"),
                null=options.get("null", ""),
                header=bool(options.get("header")),
            )
        return TextCopyRewriter(
            pii,
            options.get("delimiter", "\t"),
            options.get("null", "\\N"),
            header=bool(options.get("header")),
        )


#: identifiers as the statement's text spells them (quoted or not; keywords match too,
#: which only ever errs towards withholding)
_WORD = re.compile(r'[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*|"(?:[^"]|"")+"')
#: a quoted identifier with Unicode escapes (``U&"..."``, perhaps with ``UESCAPE``):
#: the server reads a name its text does not spell, so any such text counts as naming
#: PII (only ever errs towards withholding)
_UNICODE_IDENTIFIER = re.compile(r'[Uu]&"')


def _unknown_outputs(analysis: Analysis) -> bool:
    """Some output of the statement could not be followed (only outputs matter for a
    hold: an unresolvable name in WHERE is the server's error to report)."""
    for st in analysis.statements:
        out = st.output
        if out is not None and (
            (out.tail is not None and out.tail.unknown) or any(lin.unknown for lin in out.columns)
        ):
            return True
    return False


def _copy_replacer(
    pseudo: Pseudonymizer, entity: str, oid: int, fmt: int, mode: str, room: PiiRoom
) -> Any:
    def replace(_i: int, raw: bytes) -> bytes:
        if mode == "detect":
            return room.detect_bytes(raw)
        return pseudo.value(entity, oid, fmt, raw)

    if mode != "detect":
        # every PII value of a COPY is taken as derived, and a derived value's NULL is
        # made by the same expression (``CASE WHEN ascii(...) & (1 << b) <> 0 THEN 1
        # END`` beside ``b``): a fresh stand-in, not the NULL marker
        replace.null = lambda: pseudo.null(entity, oid, fmt)  # type: ignore[attr-defined]
    return replace


class _AllColumns:
    """Rows of a portal that was never described and whose width lineage cannot give:
    every column, NULLs too, is tokenized as text (fail closed)."""

    def __init__(self, plan: StatementPlan, formats: list[int]) -> None:
        self.plan = plan
        self.formats = formats

    def data_row(self, body: bytes) -> bytes:
        from dbgate.wire.messages import data_row, parse_data_row

        cols = parse_data_row(body)
        tok = self.plan.room.fresh_pseudonymizer.tokenizer
        # a NULL too: it may be made by the expression that makes a value (a bit of it)
        new = [tok.token(UNKNOWN, b"" if c is None else c).encode() for c in cols]
        return data_row(new)[5:]

    def copy_data(self, body: bytes) -> bytes:
        return body


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
        self.filter = room.message_filter if self.exemption is None else _PassFilter()

    # SessionState for the lineage walker
    def cursor(self, name: str) -> Output | None:
        return self._cursors.get(name)

    def prepared(self, name: str) -> Output | None:
        return self._prepared.get(name)

    def plan(
        self, sql: str, shape: Shape | bool | None = False, analysis: Analysis | None = None
    ) -> StatementPlan:
        """The plan of one statement text (Query or Parse); cheap when seen before.
        ``shape``: ``shape_of(sql)`` when the caller has computed it; ``analysis``:
        its lineage when the caller has it (traced in a worker, or looked up)."""
        if analysis is None:
            analysis = self.room.analysis(sql, self, shape)
        _declare(self._cursors, analysis.declares)
        _declare(self._prepared, analysis.prepares)
        for name in analysis.deallocates:
            if name == "*":
                self._prepared.clear()
            else:
                self._prepared.pop(name, None)
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
        if any(n in cursors or n not in self._cursors for n in analysis.runs_cursors) or any(
            n in prepared or n not in self._prepared for n in analysis.runs_prepared
        ):
            return StatementPlan(self.room, sql, analysis, self.exemption, runs_pii=True)
        return plan

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
