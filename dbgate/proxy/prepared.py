"""The server's prepared-statement namespace, as far as dbgate can know it.

Why this exists: decisions made at Bind (``set_config($1, $2, false)`` is harmless
with ``work_mem`` and a privilege change with ``role``) and the classification of
``EXECUTE name`` depend on which statement the server holds under a name. dbgate sees
the messages that change that namespace (Parse, Close, SQL ``PREPARE`` /
``DEALLOCATE`` / ``DISCARD ALL``) *before* the server acts on them, and the server
may never act on them: a Parse can fail, and after an error the server skips every
message up to Sync, or the rest of a query string. Believing a Close that never ran,
or a Parse that failed, would let the Binds of a dangerous statement through unchecked.

So the picture has two parts:

* **known**: what the server holds, exactly, as confirmed by its answers. The
  statement tracker (:mod:`dbgate.proxy.tracker`) matches every answer to the message
  that caused it, so it knows for each change whether the server ran it
  (ParseComplete, CloseComplete, the command tag of a PREPARE) or not (an error, or a
  message skipped after one), and resolves it with :meth:`PendingChange.resolve`.
* **pending**: changes sent and not yet answered. Until then a name may hold the old
  statement or the new one, so a Bind is judged against both — except a Bind that
  follows, in the same batch, a Parse of its own name: it runs only if that Parse
  did, so that Parse is all it can bind.

Once every change is answered nothing "possible" is left over, so a statement that
was refused, replaced or failed can never stand in for a later one. Each name maps to
its *candidates*: every statement the server may hold under it. A Bind is checked
against every candidate that asks for Bind checks; ``EXECUTE`` is classified against
all of them. PostgreSQL's prepared statements are not transactional (a PREPARE in a
rolled-back transaction stays), so only the server's answers matter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, NamedTuple

from dbgate.wire.errors import LimitExceeded

#: More possible statements than this under one name (a client that pipelines many
#: different statements under one name) collapse into :data:`LOST`: every Bind and
#: EXECUTE of the name is then refused until its changes are answered.
MAX_CANDIDATES = 16
#: Changes in flight (sent, not yet answered) and names tracked per session. Beyond
#: either, :class:`TooManyStatements` is raised and the relay ends the session: the
#: picture must stay exact, so it cannot simply forget.
MAX_PENDING = 4096
MAX_NAMES = 20_000
#: Unnamed Parses whose change and candidate a session keeps made (all forgotten on
#: overflow).
_UNNAMED_MADE = 64
#: PostgreSQL keys prepared statements by the first NAMEDATALEN - 1 bytes of the name.
MAX_NAME_BYTES = 63


class TooManyStatements(LimitExceeded):
    """A session wants more prepared-statement bookkeeping than dbgate allows.

    A resource limit, not a protocol error: that one session ends with an
    ErrorResponse (54000 program_limit_exceeded), everyone else carries on.
    """


def name_key(name: str | bytes) -> str:
    """A statement name as the server's table of prepared statements compares it.

    PostgreSQL keeps only the first 63 bytes (NAMEDATALEN - 1) of a name, so
    ``"a" * 63 + "1"`` and ``"a" * 63 + "2"`` are the same statement to it and must
    be to dbgate. Bytes that are not UTF-8 (a cut through a character, or a Bind
    naming a statement in invalid UTF-8) are kept as surrogates, so the key is exact.
    """
    if isinstance(name, str):
        if len(name) <= MAX_NAME_BYTES // 4:
            return name
        name = name.encode("utf-8", "surrogateescape")
    return name[:MAX_NAME_BYTES].decode("utf-8", "surrogateescape")


def identifier_key(identifier: str) -> str:
    """A SQL identifier (PREPARE/DEALLOCATE name) as the parser truncates it: to 63
    bytes at a character boundary."""
    raw = identifier.encode("utf-8", "surrogateescape")
    if len(raw) <= MAX_NAME_BYTES:
        return identifier
    return raw[:MAX_NAME_BYTES].decode("utf-8", "ignore")


@dataclass(frozen=True, slots=True)
class Candidate:
    """A statement the server may hold under some name."""

    sql: str
    check_binds: bool = False  # the inspector must see each Bind of it (decided on values)
    lost: bool = False  # too many possibilities to track: refuse its uses
    #: Parameter type OIDs: from Parse where the client named them, completed by the
    #: server's ParameterDescription once the client asked for it (0: not known).
    param_types: tuple[int, ...] = ()
    #: ``check_binds`` only for PII tokens among the values: a Bind none of whose bytes
    #: spell ``tok_`` has nothing to resolve and need not be shown (see
    #: :meth:`PreparedStatements.checks_only_tokens`).
    tokens_only: bool = False
    #: The Parse verdict's ``recheck_bind`` (``Allow.recheck_bind``): a Bind that can
    #: mean only this statement is judged by it before the inspector is asked.
    recheck: Callable[[Any, bytes], Any] | None = None
    #: Made by SQL ``PREPARE``: the gate never judged its text as a Parse (its result
    #: plan, its holds), so a protocol Bind of it is refused (``EXECUTE`` runs it).
    sql_prepared: bool = False


LOST = Candidate("", check_binds=True, lost=True)
#: What the server may hold under a name an SQL ``PREPARE`` sent through the extended
#: protocol creates (it runs at Execute, any number of times, and is not followed)
SQL_PREPARED = Candidate("", check_binds=True, sql_prepared=True)


class PreparedChange(NamedTuple):
    """A change to the namespace that a statement makes when the server runs it."""

    kind: Literal["add", "remove", "clear"]  # clear: DEALLOCATE ALL / DISCARD ALL
    name: str = ""
    sql: str = ""
    check_binds: bool = False
    param_types: tuple[int, ...] = ()
    #: For SQL PREPARE/DEALLOCATE in a query string: the position (0-based) of the
    #: statement that makes the change, so it is confirmed by that statement's own
    #: command tag.
    statement: int = 0
    tokens_only: bool = False  # see Candidate.tokens_only
    recheck: Callable[[Any, bytes], Any] | None = None  # see Candidate.recheck
    sql_prepared: bool = False  # see Candidate.sql_prepared


class PendingChange:
    """A change sent to the server and not yet answered.

    The statement tracker holds it and calls :meth:`resolve` once the server's
    answers show whether the change happened.
    """

    __slots__ = ("batch", "candidate", "change", "owner", "resolved")

    def __init__(
        self, owner: PreparedStatements, change: PreparedChange, batch: int, cand: Candidate | None
    ) -> None:
        self.owner = owner
        self.change = change
        self.batch = batch
        self.candidate = cand
        self.resolved = False

    def resolve(self, happened: bool) -> None:
        """The server ran the change (``happened``), or failed or skipped it."""
        if not self.resolved:
            self.resolved = True
            self.owner._resolve(self, happened)


class PreparedStatements:
    """Candidates per statement name: confirmed by the server, plus what is in flight.

    Names are compared as the server compares them (:func:`name_key`); callers pass
    names as they appear in messages.
    """

    __slots__ = (
        "_known",
        "_pending",
        "_pending_count",
        "_unnamed_made",
        "checked",
        "texts",
        "tokens_only",
        "track_unnamed",
    )

    def __init__(self) -> None:
        #: Track every unnamed Parse, not only those whose Binds need checks: set when
        #: the inspector is shown every Bind, which must then be matched to the
        #: statement it binds (the last Parse sent may have been skipped after an
        #: error, leaving the older statement in place).
        self.track_unnamed = False
        self._known: dict[str, Candidate] = {}
        #: (sql, check_binds, param_types, tokens_only, recheck) -> the change and
        #: candidate of an unnamed Parse (see :meth:`_unnamed_sent`)
        self._unnamed_made: dict[tuple[Any, ...], tuple[PreparedChange, Candidate]] = {}
        # name -> changes sent for it and not yet resolved, oldest first
        self._pending: dict[str, list[PendingChange]] = {}
        self._pending_count = 0
        #: Keys of names with a candidate (known or pending) whose Binds the inspector
        #: must see. Read-only outside; test a name with :meth:`checks_binds` (the
        #: relay tests a key it already has here directly, once per Bind).
        self.checked: set[str] = set()
        #: Names in :attr:`checked` whose every checked candidate is ``tokens_only``.
        self.tokens_only: set[str] = set()
        #: name -> candidate SQL texts, for classifying ``EXECUTE name``.
        self.texts: Mapping[str, tuple[str, ...]] = _Texts(self)

    # -- reading -----------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """How many changes are sent and not yet answered."""
        return self._pending_count

    def checks_binds(self, name: str | bytes) -> bool:
        """Whether Binds of ``name`` must be shown to the inspector (the relay's test)."""
        return bool(self.checked) and name_key(name) in self.checked

    def checks_only_tokens(self, name: str | bytes) -> bool:
        """Whether Binds of ``name`` (in :attr:`checked`) are checked only for PII
        tokens in their values: then a Bind without ``tok_`` in its bytes is not."""
        return bool(self.tokens_only) and name_key(name) in self.tokens_only

    def recheck(self, name: str | bytes, batch: int = 0) -> Callable[[Any, bytes], Any] | None:
        """The quick way to judge a Bind of ``name`` (``Candidate.recheck``), when the
        Bind can mean only one statement and that one has it; else None."""
        key = name_key(name)
        if not self._pending.get(key):  # candidates' common case: the one it holds
            known = self._known.get(key)
            return None if known is None else known.recheck
        cands = self.candidates(name, batch)
        return cands[0].recheck if len(cands) == 1 else None

    def candidates(self, name: str | bytes, batch: int = 0) -> tuple[Candidate, ...]:
        """Every statement the server may hold under ``name`` (empty: none known).

        ``batch``: the batch (cycle) of the message asking; a Parse of the same name
        sent earlier in that batch is then the only statement it can meet.
        """
        key = name_key(name)
        pending = self._pending.get(key)
        known = self._known.get(key)
        if not pending:
            return () if known is None else (known,)
        if batch:
            for p in reversed(pending):
                if p.batch == batch and p.change.kind == "add":
                    return (p.candidate,)  # type: ignore[return-value]
        out: tuple[Candidate, ...] = () if known is None else (known,)
        for p in pending:
            cand = p.candidate
            if cand is not None and cand not in out:
                out += (cand,)
        return (LOST,) if len(out) > MAX_CANDIDATES else out

    def tokens_only_in(self, name: str, batch: int) -> bool:
        """Whether a Bind of ``name`` in ``batch`` can meet only a Parse of that batch
        whose Binds are checked only for PII tokens (``candidates(name, batch)``).
        The name's own mark (:attr:`tokens_only`) also counts the statement the server
        held before, which a Bind of a later batch may still meet."""
        pending = self._pending.get(name)
        if not pending:
            return False
        for p in reversed(pending):
            if p.batch == batch and p.change.kind == "add":
                return p.candidate is not None and p.candidate.tokens_only
        return False

    def names(self) -> set[str]:
        return set(self._known) | set(self._pending)

    def sql_prepared(self, name: str) -> None:
        """An SQL ``PREPARE`` of ``name`` was let through in a Parse: whatever the
        server holds under the name may be what it prepares, which the relay does not
        follow. Every Bind of the name is shown to the inspector, which refuses it."""
        key = name_key(name)
        if key not in self._known and len(self._known) >= MAX_NAMES:
            raise TooManyStatements(f"more than {MAX_NAMES} prepared statements")
        self._known[key] = SQL_PREPARED
        self.checked.add(key)
        self.tokens_only.discard(key)

    def judge_binds_again(self) -> None:
        """Have every Bind of the statements held so far shown to the inspector.

        After the rules changed (a reload), a statement allowed at its Parse may no
        longer be allowed: its next executions are judged again, at their Binds.
        Statements parsed from now on are judged as usual."""
        for key, known in list(self._known.items()):
            if not known.check_binds or known.tokens_only or known.recheck is not None:
                self._known[key] = replace(known, check_binds=True, tokens_only=False, recheck=None)
        for queue in self._pending.values():
            for p in queue:
                c = p.candidate
                if c is not None and (not c.check_binds or c.tokens_only or c.recheck is not None):
                    p.candidate = replace(c, check_binds=True, tokens_only=False, recheck=None)
        self.checked.update(self.names())
        self.tokens_only.clear()

    # -- what the relay forwards -----------------------------------------------------
    def sent(self, batch: int, change: PreparedChange) -> PendingChange:
        """``change`` was forwarded to the server as part of ``batch``; resolve the
        returned handle once the server has answered it."""
        if self._pending_count >= MAX_PENDING:
            raise TooManyStatements(
                f"more than {MAX_PENDING} prepared-statement changes without an answer"
            )
        key = name_key(change.name)
        if key != change.name:
            change = change._replace(name=key)
        cand = None
        if change.kind == "add":
            if key not in self._known and len(self._known) >= MAX_NAMES:
                raise TooManyStatements(f"more than {MAX_NAMES} prepared statements")
            cand = Candidate(
                change.sql,
                change.check_binds,
                param_types=change.param_types,
                tokens_only=change.check_binds and change.tokens_only,
                recheck=change.recheck if change.check_binds else None,
                sql_prepared=change.sql_prepared,
            )
        handle = PendingChange(self, change, batch, cand)
        queue = self._pending.get(key)
        if queue is None:
            queue = self._pending[key] = [handle]
        else:
            queue.append(handle)
        self._pending_count += 1
        if cand is not None and cand.check_binds:
            self.checked.add(key)
            if not cand.tokens_only:
                self.tokens_only.discard(key)
            elif len(queue) == 1:
                # What _recheck would find, cheaply (every extended-protocol query of
                # a table the PII catalog covers comes here): the candidates are this
                # one and the statement the server holds, if it holds one.
                known = self._known.get(key)
                self._mark(key, True, known is None or not known.check_binds or known.tokens_only)
            elif len(queue) < MAX_CANDIDATES:
                self._recheck(key)  # token-only for every candidate of the name?
        if len(queue) >= MAX_CANDIDATES:
            self._recheck(key)  # may have become LOST: every Bind of it is checked
        return handle

    def parse_sent(
        self,
        batch: int,
        name: str,
        sql: str,
        check_binds: bool,
        param_types: tuple[int, ...] = (),
        tokens_only: bool = False,
        recheck: Callable[[Any, bytes], Any] | None = None,
    ) -> PendingChange | None:
        """An allowed Parse was forwarded (called for every one: keep it cheap).

        Returns None when nothing needs tracking: the unnamed statement the server
        holds, parsed again with nothing of it in flight (drivers do it for every
        execution). That keeps the Parse/Bind/Execute/Sync of a repeated
        extended-protocol query free; a new text is tracked like any change, so that
        whatever the server holds under a name is always among its candidates.

        An earlier change still in flight makes this Parse tracked even when nothing
        asks for checks: it is answered before this Parse runs, and its resolution
        writes its statement into the picture, so this Parse must be queued behind it
        to replace that statement in turn. Left untracked, the older statement would
        stay a candidate the server no longer holds, and within this batch a Bind
        would be matched to it instead of to this Parse.
        """
        if not name and "" not in self._pending:
            known = self._known.get("")
            if (
                known is not None
                and known.sql == sql
                and known.check_binds == check_binds
                and known.param_types == param_types
                and known.tokens_only == (check_binds and tokens_only)
                and known.recheck == (recheck if check_binds else None)
                and not known.lost
            ):
                # The unnamed statement the server holds, parsed again (drivers do it
                # for every execution): whether the server takes it or not, the picture
                # is the same afterwards (a failed unnamed Parse keeps the old one as a
                # candidate), so there is nothing to track.
                return None
        if not name and "" not in self._pending and self._pending_count < MAX_PENDING:
            # Tracked even when its Binds need no checks: were a checked unnamed Parse
            # that follows skipped after an error, a Bind sent before its answer would
            # bind this statement, which must then be among its candidates.
            return self._unnamed_sent(batch, sql, check_binds, param_types, tokens_only, recheck)
        return self.sent(
            batch,
            PreparedChange(
                "add",
                name,
                sql,
                check_binds,
                param_types,
                tokens_only=tokens_only,
                recheck=recheck,
            ),
        )

    def _unnamed_sent(
        self,
        batch: int,
        sql: str,
        check_binds: bool,
        param_types: tuple[int, ...],
        tokens_only: bool,
        recheck: Callable[[Any, bytes], Any] | None,
    ) -> PendingChange:
        """:meth:`sent` for an unnamed Parse with no other change of it in flight: a
        driver that sends Parse/Bind/Execute/Sync for every statement cycles through
        a few texts, so their change and candidate (both immutable) are made once."""
        made_key = (sql, check_binds, param_types, tokens_only, recheck)
        made = self._unnamed_made.get(made_key)
        if made is None:
            change = PreparedChange(
                "add", "", sql, check_binds, param_types, tokens_only=tokens_only, recheck=recheck
            )
            cand = Candidate(
                sql,
                check_binds,
                param_types=param_types,
                tokens_only=check_binds and tokens_only,
                recheck=recheck if check_binds else None,
            )
            if len(self._unnamed_made) >= _UNNAMED_MADE:
                self._unnamed_made.clear()
            made = self._unnamed_made[made_key] = (change, cand)
        change, cand = made
        handle = PendingChange(self, change, batch, cand)
        self._pending[""] = [handle]
        self._pending_count += 1
        if cand.check_binds:
            # what sent() does for the only change of a name in flight
            self.checked.add("")
            if not cand.tokens_only:
                self.tokens_only.discard("")
            else:
                known = self._known.get("")
                self._mark("", True, known is None or not known.check_binds or known.tokens_only)
        return handle

    def close_sent(self, batch: int, name: str | bytes) -> PendingChange | None:
        key = name_key(name)
        if key in self._known or key in self._pending:  # nothing to forget otherwise
            return self.sent(batch, PreparedChange("remove", key))
        return None

    def described(self, name: str | bytes, param_types: tuple[int, ...]) -> None:
        """The server's ParameterDescription for a statement it holds: the types its
        parameters will be read as (what a binary value means)."""
        key = name_key(name)
        known = self._known.get(key)
        if known is not None and known.param_types != param_types and not known.lost:
            self._known[key] = replace(known, param_types=param_types)

    # -- what the server answered ------------------------------------------------------
    def _resolve(self, handle: PendingChange, happened: bool) -> None:
        change = handle.change
        name = change.name
        queue = self._pending.get(name)
        if queue is not None:
            if queue[0] is handle:  # answers come in order: the oldest, nearly always
                del queue[0]
            else:
                with contextlib.suppress(ValueError):  # a handle resolves once
                    queue.remove(handle)
            if not queue:
                del self._pending[name]
        self._pending_count -= 1
        if not happened:
            # A named Parse that failed creates nothing and keeps what was there; an
            # unnamed one drops the old statement before parsing, but keeping it as a
            # candidate errs on the safe side. Removals that did not run remove nothing.
            self._recheck(name)
            return
        if change.kind == "add":
            cand: Candidate = handle.candidate  # type: ignore[assignment]
            self._known[name] = cand
            if name in self._pending:
                self._recheck(name)
            else:  # what _recheck finds when this is the only candidate
                self._mark(name, cand.check_binds, cand.tokens_only)
        elif change.kind == "remove":
            self._known.pop(name, None)
            self._recheck(name)
        else:  # DEALLOCATE ALL / DISCARD ALL leave the unnamed statement alone
            unnamed = self._known.get("")
            self._known.clear()
            if unnamed is not None:
                self._known[""] = unnamed
            for key in list(self.checked):
                self._recheck(key)

    def _recheck(self, name: str) -> None:
        checked = [c for c in self.candidates(name) if c.check_binds]
        # also a name that is LOST: its Binds are all checked
        self._mark(name, bool(checked), all(c.tokens_only for c in checked))

    def _mark(self, name: str, checked: bool, only_tokens: bool) -> None:
        """Record whether ``name``'s Binds are checked, and whether only for tokens."""
        if checked:
            self.checked.add(name)
            if only_tokens:
                self.tokens_only.add(name)
            else:
                self.tokens_only.discard(name)
        else:
            self.checked.discard(name)
            self.tokens_only.discard(name)


class _Texts(Mapping[str, tuple[str, ...]]):
    """Read-only name -> candidate texts; a lost name, or one an unfollowed SQL PREPARE
    made, maps to () (unknown: opaque)."""

    __slots__ = ("_owner",)

    def __init__(self, owner: PreparedStatements) -> None:
        self._owner = owner

    def __getitem__(self, name: str) -> tuple[str, ...]:
        cands = self._owner.candidates(identifier_key(name))
        if not cands:
            raise KeyError(name)
        if any(c.lost or c is SQL_PREPARED for c in cands):
            return ()  # a text the relay does not know: EXECUTE of it is opaque
        return tuple(c.sql for c in cands)

    def __iter__(self) -> Iterator[str]:
        return iter(self._owner.names())

    def __len__(self) -> int:
        return len(self._owner.names())
