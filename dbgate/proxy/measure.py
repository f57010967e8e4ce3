"""Measured writes: run a statement under a savepoint, count what it changed, keep it
or undo it (``Allow(max_changes=N, over_changes=...)``).

Why: whether an UPDATE touches one row or fifteen thousand is often not provable from
its text, but the server says it exactly in the CommandComplete tag. So the relay
runs the statement where it can still be undone and decides after it ran.

How, for a simple Query (the only message the relay measures, see below):

* pipelined *before* the client's Query, one Query of dbgate's:
  ``BEGIN; SAVEPOINT <name>``. Outside a transaction block the BEGIN opens one (the
  relay will end it); inside one, PostgreSQL only warns (25001) and the SAVEPOINT is
  what matters; in a failed block it fails (25P02) and nothing is measured: the
  client's statement then fails by itself, exactly as it would have. Its answers are
  never shown. No extra round trip: both go in the same write.
* the client's Query runs. Everything it answers (RowDescription, RETURNING rows,
  CommandComplete, notices, an error) is held back until its ReadyForQuery; the rows
  held are bounded by the limit (see :attr:`Measurement.cap`). The count is the sum
  of the INSERT/UPDATE/DELETE/MERGE/COPY tags of the query string (a multi-statement
  string is measured as one unit: it is also undone as one).
* at its ReadyForQuery the relay decides, while the client's later messages wait:

  - the statement failed: the client gets what it would have got (the error, and
    status ``E`` inside its block; outside one dbgate rolls its block back and the
    client sees ``I``);
  - within the limit: the held answers go to the client. Inside the client's block
    ``RELEASE SAVEPOINT`` follows silently (status ``T``, as without dbgate);
    outside, dbgate's ``COMMIT`` runs first and its error, if any (a deferred
    constraint), reaches the client as PostgreSQL's own end of the implicit
    transaction would, followed by its ReadyForQuery;
  - over it: ``ROLLBACK TO SAVEPOINT`` (or ``ROLLBACK`` of dbgate's block) is sent at
    once, so nothing stays locked or changed while ``over_changes(count)`` decides.
    An :class:`~dbgate.proxy.seams.Allow` sends the client's Query again, unmeasured,
    and its answers are the client's; a :class:`~dbgate.proxy.seams.Refuse` becomes
    an error the server raises itself, so an open block is failed (status ``E``,
    later statements 25P02) and outside one the status is ``I``.

The extended protocol (Parse/Bind/Execute) is not measured: PostgreSQL's implicit
transaction of a batch cannot take a savepoint, and dbgate's own statements would
have to be prepared under names of its own. A Parse, Bind or FunctionCall allowed
with ``max_changes`` is therefore decided before it runs by ``over_changes(-1)``
("not measured"): the gate holds it, allows it unmeasured or refuses it.

A rollback cannot undo everything a statement does: sequence values it drew
(``nextval``, serial and identity columns), NOTIFY (sent on commit only, so an undone
statement's are dropped, but a re-run sends them once), large objects written through
server-side functions are undone, but effects outside the database — ``dblink``,
``COPY ... TO PROGRAM``, foreign tables — are not. docs/security.md lists them.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from dbgate.wire import sqlstate

if TYPE_CHECKING:
    from dbgate.proxy.seams import Allow, Refuse, Verdict

#: Command tags whose count is rows changed.
_CHANGE_TAGS = ("INSERT", "UPDATE", "DELETE", "MERGE", "COPY")


def changed_rows(tag: str) -> int:
    """Rows a statement changed, from its command tag ("INSERT 0 5", "UPDATE 3");
    0 for every other kind of statement."""
    head, _, rest = tag.partition(" ")
    if head not in _CHANGE_TAGS:
        return 0
    last = rest.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def setup_sql(savepoint: str) -> str:
    return f"BEGIN; SAVEPOINT {savepoint}"


def undo_sql(savepoint: str, opened: bool) -> str:
    if opened:
        return "ROLLBACK"
    return f"ROLLBACK TO SAVEPOINT {savepoint}; RELEASE SAVEPOINT {savepoint}"


def release_sql(savepoint: str) -> str:
    return f"RELEASE SAVEPOINT {savepoint}"


class Measurement:
    """One measured Query, from its forwarding to the relay's decision."""

    __slots__ = (
        "already",
        "buffer",
        "copying",
        "count",
        "entry",
        "errored",
        "failed",
        "message",
        "opened",
        "overflow",
        "rows",
        "verdict",
    )

    def __init__(self, verdict: Allow, message: bytes) -> None:
        self.verdict = verdict
        self.message = message  # the Query as forwarded (to run it again if approved)
        self.entry: tuple[Any, ...] | None = None  # the client's Query in the queue
        self.already = False  # dbgate's BEGIN warned: the client's block was open
        self.failed = False  # dbgate's BEGIN failed: a failed block, nothing measured
        self.opened = False  # dbgate's BEGIN opened the block: dbgate ends it
        self.errored = False  # the client's statement failed
        self.count = 0
        self.rows = 0  # rows held back
        self.overflow = False  # more rows than may be held: not measurable
        self.buffer: list[bytes] = []
        self.copying = False  # a COPY FROM STDIN of it takes the client's data

    @property
    def cap(self) -> int:
        """Rows that may be held back: RETURNING gives at most one per changed row,
        so the limit bounds the buffer (and a row limit, when smaller)."""
        limit = self.verdict.max_changes
        if self.verdict.max_rows and self.verdict.max_rows < limit:
            return self.verdict.max_rows
        return limit

    @property
    def over(self) -> bool:
        return self.overflow or self.count > self.verdict.max_changes

    @property
    def measured(self) -> int:
        """The count ``over_changes`` is given. Rows past :attr:`cap` were dropped;
        when the changes counted do not explain them (a SELECT in the string returned
        them), -1: more rows than may be held, so not measurable."""
        if self.overflow and self.count <= self.verdict.max_changes:
            return -1
        return self.count


def ask(verdict: Allow, count: int) -> Verdict | Awaitable[Verdict]:
    """``verdict.over_changes(count)``; refused when there is none or it fails."""
    from dbgate.proxy.seams import Refuse

    decide = verdict.over_changes
    if decide is None:
        return Refuse(
            sqlstate.PROGRAM_LIMIT_EXCEEDED,
            (
                f"dbgate: this statement would change {count} rows, more than its limit "
                f"of {verdict.max_changes}; it was undone"
                if count >= 0
                else "dbgate: the rows this statement changes cannot be measured here"
            ),
            hint="narrow it (a WHERE on a key) or ask for approval",
        )
    try:
        return decide(count)
    except Exception:
        import logging

        logging.getLogger("dbgate.session").exception("over_changes failed; refusing")
        return Refuse(
            sqlstate.INTERNAL_ERROR, "dbgate: internal error while deciding; statement not run"
        )


def settled(verdict: object) -> Allow | Refuse:
    """What an answer of ``over_changes`` means: an Allow (without a measurement of
    its own) or a Refuse."""
    from dataclasses import replace

    from dbgate.proxy.seams import Allow, Refuse

    if isinstance(verdict, Allow):
        if verdict.max_changes or verdict.over_changes is not None or verdict.repeatable:
            return replace(verdict, max_changes=0, over_changes=None, repeatable=False)
        return verdict
    if isinstance(verdict, Refuse):
        return verdict
    return Refuse(sqlstate.INTERNAL_ERROR, "dbgate: over_changes returned no verdict; not run")
