"""The server's prepared-statement namespace, as far as dbgate can know it.

Why this exists: decisions made at Bind (``set_config($1, $2, false)`` is harmless
with ``work_mem`` and a privilege change with ``role``) and the classification of
``EXECUTE name`` depend on which statement the server holds under a name. dbgate sees
the messages that change that namespace (Parse, Close, SQL ``PREPARE`` /
``DEALLOCATE`` / ``DISCARD ALL``) *before* the server acts on them, and the server
may never act on them: after an error it skips every message up to Sync, or the rest
of a query string. Believing a Close that never ran, or a Parse that failed, would let
the Binds of a dangerous statement through unchecked.

So the picture is conservative, and corrected by what the server reports:

* a change that *adds* a statement counts at once, next to what was there before, so
  a Bind later in the same batch is judged by it too;
* at the ReadyForQuery that ends the change's cycle (one Query, or everything up to a
  Sync), a cycle without an ErrorResponse means every change in it ran, in order, and
  the picture becomes exact for those names;
* a cycle with an error leaves its additions as *possible* (the name may hold the old
  or the new statement) and its removals undone.

Each name maps to its candidates: every statement the server may hold under it. A
Bind is checked against every candidate that asks for Bind checks; ``EXECUTE`` is
classified against all of them. PostgreSQL's prepared statements are not
transactional (a PREPARE in a rolled-back transaction stays), so only errors matter.
Pure state: the relay calls the ``sent``/``cycle_done`` methods, the inspector reads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

from dbgate.wire.errors import ProtocolError

#: More possible statements than this under one name (a client that keeps failing
#: while re-preparing it) collapse into :data:`LOST`: every Bind and EXECUTE of the
#: name is then refused until a clean Parse or Close of it is confirmed.
MAX_CANDIDATES = 16
#: Changes in flight (sent, not yet confirmed by a ReadyForQuery) and names tracked
#: per session. Beyond either, :class:`TooManyStatements` is raised and the relay ends
#: the session: the picture must stay exact, so it cannot simply forget.
MAX_PENDING = 4096
MAX_NAMES = 20_000
#: PostgreSQL keys prepared statements by the first NAMEDATALEN - 1 bytes of the name.
MAX_NAME_BYTES = 63


class TooManyStatements(ProtocolError):
    """A session wants more prepared-statement bookkeeping than dbgate allows.

    A ProtocolError so the relay handles it the same way: that one session ends with
    an ErrorResponse (54000 program_limit_exceeded), everyone else carries on.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, sqlstate="54000")


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


LOST = Candidate("", check_binds=True, lost=True)


class PreparedChange(NamedTuple):
    """A change to the namespace that a statement makes when the server runs it."""

    kind: Literal["add", "remove", "clear"]  # clear: DEALLOCATE ALL / DISCARD ALL
    name: str = ""
    sql: str = ""
    check_binds: bool = False


class _Pending(NamedTuple):
    cycle: int
    change: PreparedChange  # its name already a name_key


class PreparedStatements:
    """Candidates per statement name, corrected at each ReadyForQuery.

    Names are compared as the server compares them (:func:`name_key`); callers pass
    names as they appear in messages.
    """

    __slots__ = ("_adding", "_known", "checked", "pending", "texts")

    def __init__(self) -> None:
        self._known: dict[str, tuple[Candidate, ...]] = {}
        #: Changes forwarded but not yet confirmed, oldest first (read-only outside).
        self.pending: deque[_Pending] = deque()
        # name -> candidates added by pending changes, in order (an index of pending)
        self._adding: dict[str, list[Candidate]] = {}
        #: Keys of names with a candidate (known or pending) whose Binds the inspector
        #: must see. Read-only outside; test a name with :meth:`checks_binds`.
        self.checked: set[str] = set()
        #: name -> candidate SQL texts, for classifying ``EXECUTE name``.
        self.texts: Mapping[str, tuple[str, ...]] = _Texts(self)

    # -- reading -----------------------------------------------------------------------
    def checks_binds(self, name: str | bytes) -> bool:
        """Whether Binds of ``name`` must be shown to the inspector (the relay's test)."""
        return bool(self.checked) and name_key(name) in self.checked

    def candidates(self, name: str | bytes) -> tuple[Candidate, ...]:
        """Every statement the server may hold under ``name`` (empty: none known)."""
        key = name_key(name)
        known = self._known.get(key, ())
        adding = self._adding.get(key)
        if not adding or known == (LOST,):
            return known
        out = known
        for cand in adding:
            if cand not in out:
                out += (cand,)
        return (LOST,) if len(out) > MAX_CANDIDATES else out

    def names(self) -> set[str]:
        return set(self._known) | set(self._adding)

    # -- what the relay forwards -----------------------------------------------------
    def sent(self, cycle: int, change: PreparedChange) -> None:
        """``change`` was forwarded to the server as part of cycle number ``cycle``."""
        if len(self.pending) >= MAX_PENDING:
            raise TooManyStatements(
                f"more than {MAX_PENDING} prepared-statement changes without a Sync"
            )
        key = name_key(change.name)
        change = change._replace(name=key)
        self.pending.append(_Pending(cycle, change))
        if change.kind == "add":
            if key not in self._known and len(self._known) >= MAX_NAMES:
                raise TooManyStatements(f"more than {MAX_NAMES} prepared statements")
            self._adding.setdefault(key, []).append(Candidate(change.sql, change.check_binds))
            if change.check_binds:
                self.checked.add(key)

    def parse_sent(self, cycle: int, name: str, sql: str, check_binds: bool) -> None:
        """An allowed Parse was forwarded (called for every one: keep it cheap)."""
        if name or check_binds or "" in self.checked:
            self.sent(cycle, PreparedChange("add", name, sql, check_binds))
        # else: the unnamed statement cannot be EXECUTEd, so only its Bind checks
        # matter, and there are none before or after this Parse. Skipping it keeps the
        # Parse/Bind/Execute/Sync of every extended-protocol query free.

    def close_sent(self, cycle: int, name: str | bytes) -> None:
        key = name_key(name)
        if key in self._known or key in self._adding:  # nothing to forget otherwise
            self.sent(cycle, PreparedChange("remove", key))

    def cycle_done(self, cycle: int, failed: bool) -> None:
        """The server sent a ReadyForQuery that ends cycle ``cycle``; ``failed``: an
        ErrorResponse came since the previous one.

        A clean cycle confirms the changes sent in it and before it. After an error,
        *every* pending change counts as possibly not run, not only those of this
        cycle: should the relay's count of cycles ever run ahead of the server's (a
        message the server skipped without a ReadyForQuery), a change is still only
        confirmed by a ReadyForQuery that came after it with no error in between.
        """
        pending = self.pending
        if not pending or (not failed and pending[0].cycle > cycle):
            return
        known = self._known
        touched: set[str] = set()
        cleared = False
        while pending and (failed or pending[0].cycle <= cycle):
            change = pending.popleft().change
            name = change.name
            touched.add(name)
            if change.kind == "add":
                adding = self._adding[name]
                cand = adding.pop(0)
                if not adding:
                    del self._adding[name]
                if not failed:
                    known[name] = (cand,)
                else:
                    was = known.get(name, ())
                    if cand not in was and was != (LOST,):
                        now = (*was, cand)
                        known[name] = (LOST,) if len(now) > MAX_CANDIDATES else now
            elif failed:
                continue  # a removal that may not have happened: keep what was there
            elif change.kind == "remove":
                known.pop(name, None)
            else:  # DEALLOCATE ALL leaves the unnamed statement alone
                unnamed = known.get("")
                known.clear()
                if unnamed is not None:
                    known[""] = unnamed
                cleared = True
        for name in list(self.checked) if cleared else touched:
            if any(c.check_binds for c in self.candidates(name)):
                self.checked.add(name)  # also a name that just became LOST
            else:
                self.checked.discard(name)


class _Texts(Mapping[str, tuple[str, ...]]):
    """Read-only name -> candidate texts; a lost name maps to () (unknown: opaque)."""

    __slots__ = ("_owner",)

    def __init__(self, owner: PreparedStatements) -> None:
        self._owner = owner

    def __getitem__(self, name: str) -> tuple[str, ...]:
        cands = self._owner.candidates(identifier_key(name))
        if not cands:
            raise KeyError(name)
        if any(c.lost for c in cands):
            return ()
        return tuple(c.sql for c in cands)

    def __iter__(self) -> Iterator[str]:
        return iter(self._owner.names())

    def __len__(self) -> int:
        return len(self._owner.names())
