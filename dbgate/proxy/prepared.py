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

#: More possible statements than this under one name (a client that keeps failing
#: while re-preparing it) collapse into :data:`LOST`: every Bind and EXECUTE of the
#: name is then refused until a clean Parse or Close of it is confirmed.
MAX_CANDIDATES = 16


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
    change: PreparedChange


class PreparedStatements:
    """Candidates per statement name, corrected at each ReadyForQuery."""

    __slots__ = ("_known", "checked", "pending", "texts")

    def __init__(self) -> None:
        self._known: dict[str, tuple[Candidate, ...]] = {}
        #: Changes forwarded but not yet confirmed, oldest first (read-only outside).
        self.pending: deque[_Pending] = deque()
        #: Names with a candidate (known or pending) whose Binds the inspector must see.
        #: The relay decodes a Bind only when its statement name is in here.
        self.checked: set[str] = set()
        #: name -> candidate SQL texts, for classifying ``EXECUTE name``.
        self.texts: Mapping[str, tuple[str, ...]] = _Texts(self)

    # -- reading -----------------------------------------------------------------------
    def candidates(self, name: str) -> tuple[Candidate, ...]:
        """Every statement the server may hold under ``name`` (empty: none known)."""
        known = self._known.get(name, ())
        if not self.pending or known == (LOST,):
            return known
        out = known
        for _, change in self.pending:
            if change.kind == "add" and change.name == name:
                cand = Candidate(change.sql, change.check_binds)
                if cand not in out:
                    out += (cand,)
        return (LOST,) if len(out) > MAX_CANDIDATES else out

    def names(self) -> set[str]:
        return set(self._known) | {p.change.name for p in self.pending if p.change.kind == "add"}

    # -- what the relay forwards -----------------------------------------------------
    def sent(self, cycle: int, change: PreparedChange) -> None:
        """``change`` was forwarded to the server as part of cycle number ``cycle``."""
        self.pending.append(_Pending(cycle, change))
        if change.check_binds:
            self.checked.add(change.name)

    def parse_sent(self, cycle: int, name: str, sql: str, check_binds: bool) -> None:
        """An allowed Parse was forwarded (called for every one: keep it cheap)."""
        if name or check_binds or "" in self.checked:
            self.sent(cycle, PreparedChange("add", name, sql, check_binds))
        # else: the unnamed statement cannot be EXECUTEd, so only its Bind checks
        # matter, and there are none before or after this Parse. Skipping it keeps the
        # Parse/Bind/Execute/Sync of every extended-protocol query free.

    def close_sent(self, cycle: int, name: str) -> None:
        if name in self._known or self.pending:  # nothing to forget otherwise
            self.sent(cycle, PreparedChange("remove", name))

    def cycle_done(self, cycle: int, failed: bool) -> None:
        """The server ended cycle ``cycle`` (ReadyForQuery); ``failed``: it sent an error."""
        pending = self.pending
        if not pending or pending[0].cycle > cycle:
            return
        known = self._known
        touched: set[str] = set()
        cleared = False
        while pending and pending[0].cycle <= cycle:
            change = pending.popleft().change
            name = change.name
            touched.add(name)
            if change.kind == "add":
                cand = Candidate(change.sql, change.check_binds)
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
        cands = self._owner.candidates(name)
        if not cands:
            raise KeyError(name)
        if any(c.lost for c in cands):
            return ()
        return tuple(c.sql for c in cands)

    def __iter__(self) -> Iterator[str]:
        return iter(self._owner.names())

    def __len__(self) -> int:
        return len(self._owner.names())
