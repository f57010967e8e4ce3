"""One statement's PII plan: which outputs carry PII, whether the statement should be
held (``pii.unknown: hold``), which tokens it sends back, whether its errors may echo
PII; ``rows()``/``copy_out()`` give the rewriters for its results.

Made by :class:`~dbgate.pii.room.PiiRoom` (the room holds the schema, coverage and
tokenizer a plan reads); like the room, it does not import ``dbgate.proxy``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from dbgate.pii.copyout import (
    BinaryCopyRewriter,
    CsvCopyRewriter,
    LineCopyRewriter,
    TextCopyRewriter,
    embeds_ascii,
)
from dbgate.pii.entities import MIXED, UNKNOWN
from dbgate.pii.lin import UNKNOWN_LIN, Lin
from dbgate.pii.lineage import Analysis, Output
from dbgate.pii.pseudonyms import TEXT, Pseudonymizer
from dbgate.pii.rows import ColumnAction, RowRewriter

if TYPE_CHECKING:
    from dbgate.pii.room import Exemption, PiiRoom

log = logging.getLogger("dbgate.pii")


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
        "distrust",
        "exemption",
        "hold",
        "hold_reasons",
        "room",
        "runs_pii",
        "sql",
        "token_params",
        "unsettled",
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
        distrust: bool = False,
    ) -> None:
        self.room = room
        self.sql = sql
        self.analysis = analysis
        self.exemption = exemption
        self.token_params = token_params
        #: it runs a cursor or SQL prepared statement that the session declared over PII
        #: (or that dbgate did not see declared): see ``PiiSession.plan``
        self.runs_pii = runs_pii
        #: the schema may have changed since the snapshot was read (DDL in a
        #: transaction not yet over, or a reload after it not yet done): every column of
        #: its results is tokenized, fresh, and its errors withheld (:meth:`distrusted`)
        self.distrust = distrust
        #: while ``distrust``: whether the schema may still differ from the snapshot
        self.unsettled: Callable[[], bool] | None = None
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
        if self.distrust:
            return True
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
            self.distrust
            or a.token_sites
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
        return self._remade(numbers | self.token_params, self.distrust, self.unsettled)

    def distrusted(self, unsettled: Callable[[], bool]) -> StatementPlan:
        """This plan for a statement run while the schema may differ from the snapshot:
        DDL in the session's open transaction (a view redefined to read e-mails under
        the name of a clean column, then read in the same transaction and rolled back)
        or in another's, until the snapshot is read again after it. Neither lineage nor
        the RowDescription's columns can be judged on the old snapshot then."""
        if self.distrust or self.exemption is not None:
            return self
        # a prepared statement's executions outlive the change: planned again after
        # it (``PiiResultPlan``), or it would stay tokenized whole
        return self._remade(self.token_params, True, unsettled)

    def _remade(
        self,
        token_params: frozenset[int],
        distrust: bool,
        unsettled: Callable[[], bool] | None,
    ) -> StatementPlan:
        plan = StatementPlan(
            self.room,
            self.sql,
            self.analysis,
            self.exemption,
            token_params,
            self.runs_pii,
            distrust,
        )
        plan.unsettled = unsettled
        return plan

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
        if self.distrust:  # every column, stored ones too: the snapshot may be wrong
            outputs = [Output(tail=UNKNOWN_LIN, chosen=UNKNOWN_LIN)]
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
        unknown = self.room.note_unknown(why)
        return [Output(tail=unknown, chosen=unknown)]

    def _merged(self, outputs: list[Output], width: int | None) -> Output:
        if not outputs:
            return Output(tail=UNKNOWN_LIN, chosen=UNKNOWN_LIN)
        fitting = [
            o
            for o in outputs
            if width is None
            or (len(o.columns) == width and o.tail is None)
            or (o.tail is not None and len(o.columns) <= width)
        ]
        if not fitting:
            unknown = self.room.note_unknown("a result set no statement of the query explains")
            return Output(tail=unknown, chosen=unknown)
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
        if stored and not fmt and self.room.types.text_may_round(type_oid):
            # ``SET extra_float_digits = -15`` prints a stored latitude as ``4e+01``: its
            # deterministic pseudonym would be every value's that rounds alike
            stored = False
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
        if self.distrust:
            out = Output(tail=UNKNOWN_LIN)
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
