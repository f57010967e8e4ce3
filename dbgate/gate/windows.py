"""The rows-per-window limit, applied by the gate and charged by an observer.

:mod:`dbgate.gate.row_window` keeps the shared counts; this module is what the gate
does with them (docs/rules.md, "Run-time limits", ``max_rows_per_window``):

* before an allowed read runs, :func:`windowed` asks how many rows the identity has
  left for the tables it reads (named as the server resolves them through the
  session's ``search_path``, so ``big`` and ``public.big`` are one account), and
  caps the statement's ``max_rows`` with it; nothing left: refused with 54000 before
  it runs, naming the rule and what was read. A read proven to read no more than is
  left (``Allow.result_bound``: a unique key pins the rows it reads and nothing
  repeats them) is capped at that bound instead,
  which the relay only counts; such a cap is reused while the identity's charges
  since cannot have used up the room it fitted in (``_CREDIT``);
* a read proven to return no more than is left is charged that bound as it is let
  through (``GateNote.window_charge`` "ahead"): the proof bounds the rows it returns,
  so nothing about it needs following to its end, and the relay keeps its lean
  answer loop. Fewer rows returned still count the bound: more, never less. A read
  whose result may repeat the rows it reads (a cross join with ``generate_series``,
  grouping sets) or add rows of no table (a catalog) has no such bound: it is
  watched and charged what it returned;
* any other read is charged after it ran, by :class:`WindowCharges` (an observer):
  the rows it returned — the command tag's count, or, for a statement that failed or
  was stopped, the rows the relay forwarded before it ended (for a counted one, its
  bound: never less) — to each of those tables.

A verdict under a window is never ``repeatable``, and a prepared statement under one
is capped afresh at every Bind (``check_binds``): the rows left change with every
read. A read's Bind needs nothing else (its values do not matter), so its Parse's
verdict carries a :class:`WindowedBinds` (``Allow.recheck_bind``): the relay asks it
for each Bind's verdict — the same cap the gate would give, without decoding the
values or judging the statement again — and shows the gate the Bind only when it
answers None: the rules or a catalog changed, the session's settings did (its
identity may match other rules), the audit queue is full or away, or nothing is
left (the gate refuses it, and records why). Such a Parse's verdict may then be
remembered (``repeatable``): nothing runs at Parse.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from dbgate.gate.notes import GateNote
from dbgate.proxy.seams import Allow, QuietObserver, Refuse
from dbgate.wire import sqlstate

if TYPE_CHECKING:
    from dbgate.gate.row_window import RowWindows
    from dbgate.policy.keys import KeyCatalog
    from dbgate.policy.model import Decision, RowWindow
    from dbgate.policy.rules import RuleSet
    from dbgate.proxy.seams import StatementRecord
    from dbgate.proxy.session_info import SessionInfo


def window_lengths(ruleset: RuleSet) -> set[int]:
    """The window lengths (seconds) the rules use: their shared totals are read from
    the start, so the first read under each is not refused while they load."""
    return {r.window_seconds for r in ruleset.rules if r.max_rows_per_window and r.window_seconds}


#: (tables, id of the catalog's relations, its cache token) -> (relations, accounts);
#: the entry keeps the relations alive, so their id is not reused while it lives.
_ACCOUNTS: dict[tuple[frozenset[str], int, object], tuple[object, tuple[str, ...]]] = {}
_ACCOUNTS_SIZE = 4096


def account_tables(tables: frozenset[str], catalog: KeyCatalog | None) -> tuple[str, ...]:
    """The accounts a statement's tables are charged to: schema-qualified as the
    server resolves them for this session (``public.<name>`` when unknown). Remembered
    per (tables, catalog snapshot and search path): asked at every windowed read."""
    if catalog is None:
        return _accounts(tables, None)
    relations = catalog.relations
    key = (tables, id(relations), catalog.cache_token)
    hit = _ACCOUNTS.get(key)
    if hit is None or hit[0] is not relations:
        if len(_ACCOUNTS) >= _ACCOUNTS_SIZE:
            _ACCOUNTS.clear()
        hit = _ACCOUNTS[key] = (relations, _accounts(tables, catalog))
    return hit[1]


def _accounts(tables: frozenset[str], catalog: KeyCatalog | None) -> tuple[str, ...]:
    from dbgate.policy.rules_match import qualify_table

    out = set()
    for t in tables:
        schema, _, name = t.rpartition(".")
        if not schema and catalog is not None:
            found = catalog.schema_of(name)
            if found is not None:
                schema = found
        account = f"{schema}.{name}" if schema else qualify_table(t)
        rel = catalog.relations.get(account) if catalog is not None else None
        if rel is not None and rel.accounts:
            # a partition's or inheritance child's rows are its root's: one account,
            # however they are read (else each partition would have a window of its own)
            out.update(rel.accounts)
        else:
            out.add(account)
    return tuple(sorted(out))


#: (id of a verdict, its accounts) -> (the verdict, its capped form). A verdict whose
#: own ``max_rows`` (or, without one, its proven ``result_bound``) fits in what is left
#: is capped the same way at every read: made once, not twice per statement. The
#: entry keeps the verdict alive (its id stays its).
_CAPPED: dict[tuple[int, tuple[str, ...]], tuple[Allow, Allow]] = {}
_CAPPED_SIZE = 4096
#: (id of a note, its accounts, how charged) -> (the note, the note naming them): the same for
#: every read of one statement shape, whatever is left.
_NOTES: dict[tuple[int, tuple[str, ...], str], tuple[GateNote, GateNote]] = {}
#: (id of a verdict, id of its window, id of the session's key catalog, identity) ->
#: (verdict, window, ledger, epoch, mark, capped verdict, catalog): the verdict last
#: capped for that identity, when its bound fitted in what was left (a catalog is
#: immutable: the same one always names the same accounts). Within one ``RowLedger.epoch`` (no read of
#: the shared totals, no fold) what is left shrinks by no more than the rows the
#: identity is charged (``RowLedger.charged``; rows leaving the window only make
#: room), so the bound still fits while the identity's charges stay at or below
#: ``mark`` (the charges then plus the room there was); a stale ledger refuses as
#: before. Every read of a statement shape then costs a few comparisons instead of
#: counting its accounts' buckets.
_CREDIT: dict[tuple[int, int, tuple[str, ...], str], tuple[Any, ...]] = {}


def windowed(
    verdict: Allow,
    window: RowWindow,
    windows: RowWindows,
    identity: str,
    catalog: KeyCatalog | None,
    runs: bool = False,
) -> Allow | Refuse:
    """``verdict`` capped by the rows ``identity`` has left under ``window``, or a
    refusal when it has none. ``runs``: the verdict lets a read run (a Query's, a
    Bind's; not a Parse's): one capped at its proven bound is charged that bound now
    (see the module docstring)."""
    ledger = windows.ledger
    key = (id(verdict), id(window), id(catalog), identity)
    credit = _CREDIT.get(key)
    if (
        credit is not None
        and credit[0] is verdict
        and credit[1] is window
        and credit[6] is catalog
        and credit[2] is ledger
        and credit[3] == ledger.epoch
        and ledger.charged.get(identity, 0) <= credit[4]
        and not windows.stale()
    ):
        capped = credit[5]
        if runs:
            note = capped.note
            if isinstance(note, GateNote) and note.window_charge == "ahead":
                windows.add(identity, window, note.window_tables, capped.max_rows)
        return capped  # type: ignore[no-any-return]
    tables = account_tables(window.tables, catalog)
    epoch, charged = ledger.epoch, ledger.charged.get(identity, 0)
    left = windows.remaining(identity, window, tables)
    capped = _capped(verdict, window, windows, identity, tables, left)
    own = verdict.max_rows or verdict.result_bound
    if type(capped) is Allow and own is not None and own <= left:
        # the same capped verdict while the bound still fits in what is left (_CREDIT)
        if len(_CREDIT) >= _CAPPED_SIZE:
            _CREDIT.clear()
        _CREDIT[key] = (verdict, window, ledger, epoch, charged + left - own, capped, catalog)
    else:
        _CREDIT.pop(key, None)
    if runs and type(capped) is Allow:
        note = capped.note
        if isinstance(note, GateNote) and note.window_charge == "ahead":
            windows.add(identity, window, tables, capped.max_rows)
    return capped


def _capped(
    verdict: Allow,
    window: RowWindow,
    windows: RowWindows,
    identity: str,
    tables: tuple[str, ...],
    left: int,
) -> Allow | Refuse:
    """:func:`windowed` once the accounts and the rows left in them are known."""
    if left <= 0:
        return Refuse(
            sqlstate.PROGRAM_LIMIT_EXCEEDED,
            f"dbgate: {windows.describe(identity, window, tables)}",
            hint="wait for the window to move on, or ask for the rule to be changed",
            note=verdict.note,
        )
    # What bounds it besides the window: its own limit, or (none) the rows it is
    # proven to return. Within what is left, that bound is the cap.
    own = verdict.max_rows or verdict.result_bound
    fits = own is not None and own <= left
    if fits:
        hit = _CAPPED.get((id(verdict), tables))
        if hit is not None and hit[0] is verdict:
            return hit[1]
    note = verdict.note
    if fits:
        if verdict.max_rows:
            if isinstance(note, GateNote):
                note = _charged_to(note, tables, "")
            capped = replace(verdict, note=note, repeatable=False)
        else:
            # Proven to return no more than is left: capped at its bound, so the relay
            # counts its rows instead of watching them (Allow.result_bound), and charged
            # that bound as it is let through.
            if isinstance(note, GateNote):
                note = _charged_to(note, tables, "ahead")
            capped = replace(
                verdict,
                note=note,
                repeatable=False,
                max_rows=own,
                over_limit=Refuse(
                    sqlstate.PROGRAM_LIMIT_EXCEEDED,
                    f"dbgate: the statement returned more than the {own} rows it was "
                    f"proven to return of {', '.join(tables)} under rule '{window.rule}' "
                    f"({window.rows} rows per table per {window.seconds} s); it was stopped",
                ),
            )
        if len(_CAPPED) >= _CAPPED_SIZE:
            _CAPPED.clear()
        _CAPPED[(id(verdict), tables)] = (verdict, capped)
        return capped
    if isinstance(note, GateNote):
        note = _charged_to(note, tables, "")
    return replace(
        verdict,
        note=note,
        repeatable=False,
        max_rows=left,
        over_limit=Refuse(
            sqlstate.PROGRAM_LIMIT_EXCEEDED,
            f"dbgate: the statement returned more than the {left} rows {identity} has "
            f"left of {', '.join(tables)} under rule '{window.rule}' "
            f"({window.rows} rows per table per {window.seconds} s); it was stopped",
            hint="select fewer rows, or wait for the window to move on",
        ),
    )


class BindJudge(Protocol):
    """What :class:`WindowedBinds` asks of the gate that made it."""

    generation: int
    windows: RowWindows | None
    audit: Any
    keys: Any

    def windowed_bind_base(self, session: SessionInfo, sql: str) -> Allow | None:
        """The verdict a Bind of ``sql`` is capped from, as the gate would make it now
        (None: the Bind must be judged in full)."""
        ...


class WindowedBinds:
    """The verdict of each Bind of a prepared read under a window (an
    ``Allow.recheck_bind``; see the module docstring): ``base``, the gate's verdict on
    such a Bind before the window's cap, capped by what the session's identity has
    left now."""

    __slots__ = ("base", "gate", "generation", "sql", "window")

    def __init__(self, gate: BindJudge, sql: str, base: Allow, window: RowWindow) -> None:
        self.gate = gate
        self.sql = sql
        self.base = base
        self.window = window
        self.generation = gate.generation

    def __call__(self, session: SessionInfo, body: bytes) -> Allow | None:
        gate = self.gate
        if gate.windows is None:
            return None
        if gate.generation != self.generation:
            # The rules or a catalog snapshot changed since its Parse: still good if
            # the gate would start from the very same verdict now (a PII schema
            # reload changes nothing here; a key catalog's or the rules' does).
            if gate.windowed_bind_base(session, self.sql) is not self.base:
                return None
            self.generation = gate.generation
        state = session.policy_state
        if state is None or state[0] != session.params_version:
            return None  # a setting its identity is matched on may have changed
        audit = gate.audit
        if audit is not None and not audit.admits_now():
            return None  # the gate waits for room in the audit queue, or refuses
        keys = gate.keys
        catalog = keys.for_session(session) if keys is not None else None
        capped = windowed(
            self.base, self.window, gate.windows, session.identity, catalog, runs=True
        )
        return capped if type(capped) is Allow else None


def _charged_to(note: GateNote, tables: tuple[str, ...], charge: str) -> GateNote:
    key = (id(note), tables, charge)
    hit = _NOTES.get(key)
    if hit is not None and hit[0] is note:
        return hit[1]
    if len(_NOTES) >= _CAPPED_SIZE:
        _NOTES.clear()
    named = replace(note, window_tables=tables, window_charge=charge)
    _NOTES[key] = (note, named)
    return named


def charged_by_binds(verdict: Allow) -> Allow:
    """A windowed Parse's verdict (``check_binds``): each Bind is judged and charged on
    its own (the relay follows a Bind's Executes when its verdict is followed), so the
    Parse itself is not followed for the window."""
    note = verdict.note
    if not isinstance(note, GateNote) or not note.window_tables:
        return verdict
    return replace(verdict, note=_charged_to(note, note.window_tables, "binds"))


class WindowCharges(QuietObserver):
    """Charges every windowed statement's rows when it ends (an Observer)."""

    ignores = frozenset({"statement_received", "statement_decided", "statement_forwarded"})
    #: A Parse or Bind returns no rows: only Executes (and Queries) are charged.
    executes_only = True

    def __init__(self, windows: RowWindows) -> None:
        self.windows = windows

    def follows(self, session: SessionInfo, verdict: Allow) -> bool:
        """A statement under a rows-per-window rule: a windowed verdict (a Query's,
        a Parse's whose Executes are charged, a Bind's), named tables or not."""
        note = verdict.note
        if not isinstance(note, GateNote):
            return False
        if note.window_tables:
            return not note.window_charge  # else charged already, or by its Binds
        decision = note.decision
        return decision is not None and decision.row_window is not None

    def statement_completed(self, session: SessionInfo, record: StatementRecord) -> None:
        rows = record.rows
        if rows <= 0:  # nothing to charge (a Parse, a Bind, no rows)
            return
        verdict = record.verdict
        note = verdict.note if verdict is not None else None
        if not isinstance(note, GateNote):
            return
        tables = note.window_tables
        if not tables or note.window_charge:
            return
        decision: Decision | None = note.decision
        window = decision.row_window if decision is not None else None
        if window is not None:
            self.windows.add(session.identity, window, tables, rows)

    statement_failed = statement_completed  # charged the same: the rows it returned
