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

For the extended protocol, a *batch* (the messages up to a Sync) is measured as one
unit. dbgate's own statements around it (set-up, release, commit, undo) go through
the extended protocol under a statement and portal name of dbgate's, each ended by
a Sync of their own (:func:`as_batch`): a simple Query would destroy the client's
unnamed statement, which a client may Parse in one batch and Bind in the next. The
set-up can only go before the batch's first message (a Sync in the middle of a batch
would end it early), so:

* a Bind allowed with ``max_changes`` opens the measurement when it is the first
  message of its batch (a driver that binds a named statement: asyncpg, psycopg
  after its prepare threshold);
* a Parse of such a write (``Allow.opens_measurement``) opens it when it is the
  first message of its batch, because its Bind follows in the same batch (libpq,
  psycopg, pg8000: Parse/Bind/Describe/Execute/Sync). A batch that then binds
  nothing measured (a prepare-only Parse/Describe/Sync) is simply kept;
* a measured Bind further into a batch that no measurement covers is not measured
  and is decided before it runs by ``over_changes(-1)`` (held or refused).

The answers of the whole batch are held back until its ReadyForQuery. The count is
the sum of the tags of Executes of portals bound by measured Binds (changes by
statements proven narrow in the same batch do not count against the limit), and
past the limit it is undone as a Query is (and each statement of its measured Binds
is asked in turn, one approval request per text, before the batch is sent again); the named statements the batch prepared
are closed again (prepared statements outlive a rollback), so that a refusal leaves
the server as the client then believes it, and an approval re-sends the client's
batch as it sent it, judged again, unmeasured.

Two cases cannot hold their answers back: the client asks for them before its Sync
(Flush), or a COPY FROM STDIN waits for its data. The answers then go to the client
as they come (rows past the held-back cap are still dropped and make the count
unmeasurable), and past the limit the statement is undone and refused (54000) at its
Sync, the way PostgreSQL fails a batch at commit; it cannot be held, because the
client has seen its results.

A rollback cannot undo everything a statement does: sequence values it drew
(``nextval``, serial and identity columns), NOTIFY (sent on commit only, so an undone
statement's are dropped, but a re-run sends them once), large objects written through
server-side functions are undone, but effects outside the database — ``dblink``,
``COPY ... TO PROGRAM``, foreign tables — are not. docs/security.md lists them.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from dbgate.proxy.prepared import name_key
from dbgate.wire import sqlstate
from dbgate.wire.messages import frame

if TYPE_CHECKING:
    from dbgate.proxy.seams import Allow, Refuse, Verdict

_FLUSH_MSG, _PARSE_MSG, _BIND_MSG, _EXECUTE_MSG = (ord(c) for c in "HPBE")

#: Command tags whose count is rows changed.
_CHANGE_TAGS = ("INSERT", "UPDATE", "DELETE", "MERGE", "COPY")

#: First keywords of the statements that end, or act on, a transaction block
#: (PostgreSQL's ``TransactionStmt``): ``COMMIT``/``END`` would keep a measured
#: batch's changes before dbgate decides on them, ``ROLLBACK`` would end its block.
_BLOCK_KEYWORDS = frozenset(
    {"ABORT", "BEGIN", "COMMIT", "END", "PREPARE", "RELEASE", "ROLLBACK", "SAVEPOINT", "START"}
)
_SPACE = b" \t\n\r\f\v;"  # what the server's lexer skips before a statement (and ;)


def first_keyword(sql: bytes) -> str:
    """The first word of ``sql`` as PostgreSQL's lexer reads it: after whitespace,
    ``--`` and (nested) ``/* */`` comments and empty statements (``;``, which the
    grammar drops: ``;COMMIT`` is one statement, a COMMIT). Uppercased ASCII
    letters; ``""`` when something else comes first (an unterminated comment, a
    quote, a parenthesis)."""
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in _SPACE:
            i += 1
        elif sql.startswith(b"--", i):
            j = i + 2
            while j < n and sql[j] not in b"\n\r":
                j += 1
            i = j
        elif sql.startswith(b"/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if sql.startswith(b"/*", j):
                    depth, j = depth + 1, j + 2
                elif sql.startswith(b"*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            if depth:
                return ""
            i = j
        else:
            break
    j = i
    while j < n and (65 <= sql[j] <= 90 or 97 <= sql[j] <= 122):
        j += 1
    return sql[i:j].decode("ascii").upper()


def acts_on_block(sql: str | bytes) -> bool:
    """Whether the statement ``sql`` (one, as a Parse holds it) may end or act on
    the transaction block a measurement runs in. Fail closed: a statement whose
    first word cannot be read is taken to."""
    raw = sql.encode("utf-8", "surrogateescape") if isinstance(sql, str) else sql
    word = first_keyword(raw)
    if word:
        return word in _BLOCK_KEYWORDS
    rest = raw.lstrip(_SPACE)
    # an empty statement, or a parenthesized query: no transaction statement
    return not (rest == b"" or rest.startswith(b"("))


def changed_rows(tag: str) -> int:
    """Rows a statement changed, from its command tag ("INSERT 0 5", "UPDATE 3");
    0 for every other kind of statement."""
    head, _, rest = tag.partition(" ")
    if head not in _CHANGE_TAGS:
        return 0
    last = rest.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def setup_sql(savepoint: str) -> list[str]:
    return ["BEGIN", f"SAVEPOINT {savepoint}"]


def undo_sql(savepoint: str, opened: bool) -> list[str]:
    if opened:
        return ["ROLLBACK"]
    return [f"ROLLBACK TO SAVEPOINT {savepoint}", f"RELEASE SAVEPOINT {savepoint}"]


def release_sql(savepoint: str) -> list[str]:
    return [f"RELEASE SAVEPOINT {savepoint}"]


def as_query(statements: list[str]) -> bytes:
    """dbgate's statements as one simple Query (around a measured Query, whose own
    Query destroys the unnamed statement anyway)."""
    return frame(ord("Q"), "; ".join(statements).encode() + b"\0")


def as_batch(statements: list[str], name: str, close_portals: tuple[str, ...] = ()) -> bytes:
    """dbgate's statements through the extended protocol, ended by a Sync of their
    own (around a measured batch). A simple Query would destroy the client's unnamed
    statement, which a client may Parse in one batch and Bind in the next (pg8000);
    so each runs as a statement and a portal named ``name`` (a name no client can
    guess), the statement closed right after its Bind, so that nothing of dbgate's
    stays prepared even when a statement fails, and the portal after its Execute.
    ``close_portals``: portals of the client's closed after them (a kept batch's)."""
    b = name.encode()
    out = []
    for sql in statements:
        out.append(frame(ord("P"), b + b"\0" + sql.encode() + b"\0\0\0"))
        out.append(frame(ord("B"), b + b"\0" + b + b"\0\0\0\0\0\0\0"))
        out.append(frame(ord("C"), b"S" + b + b"\0"))
        out.append(frame(ord("E"), b + b"\0\0\0\0\0"))
        out.append(frame(ord("C"), b"P" + b + b"\0"))
    for portal in close_portals:  # the client's, closed after the statements
        out.append(frame(ord("C"), b"P" + portal.encode("utf-8", "surrogateescape") + b"\0"))
    out.append(frame(ord("S"), b""))
    return b"".join(out)


#: Rows held back for a measured batch before any measured Bind says its limit.
BATCH_ROWS_HELD = 1000
#: The client's messages of a measured batch kept to send again if it is approved;
#: past this (a long pipeline, COPY data) its answers are no longer held back (and
#: past its limit it is refused, not held), so that a batch cannot grow dbgate's
#: memory.
BATCH_BYTES_KEPT = 1 << 20


class Measurement:
    """One measured Query or batch, from its forwarding to the relay's decision."""

    __slots__ = (
        "already",
        "batch",
        "bound",
        "bound_here",
        "buffer",
        "copying",
        "count",
        "covered",
        "covered_texts",
        "delivering",
        "entry",
        "errored",
        "failed",
        "kept",
        "kept_bytes",
        "message",
        "messages",
        "named",
        "open",
        "opened",
        "overflow",
        "parsed",
        "passing",
        "portals",
        "ran",
        "resend_from",
        "rows",
        "running",
        "sql",
        "verdict",
    )

    def __init__(self, verdict: Allow | None, message: bytes, batch: bool = False) -> None:
        #: The measured statement's verdict (its limit and ``over_changes``); for a
        #: batch, the measured Bind's with the smallest limit, None until one comes.
        self.verdict = verdict
        self.message = message  # the Query as forwarded (to run it again if approved)
        self.sql = ""  # the measured statement's text (what a refusal is recorded with)
        self.entry: tuple[Any, ...] | None = None  # the client's Query in the queue
        self.batch = batch  # an extended-protocol batch, up to its Sync
        self.open = batch  # batch: its Sync is not sent yet
        self.messages: list[bytes] = []  # batch: the client's messages, to send again
        self.kept_bytes = 0
        self.portals: set[str] = set()  # batch: portals bound by measured Binds
        self.named: list[str] = []  # batch: named statements it prepared (closed if undone)
        self.bound: list[str] = []  # batch: portals it bound (ended if undone)
        #: batch: portals the client's Binds in it name (its Executes may run only
        #: those: a portal bound before it may run a COMMIT)
        self.bound_here: set[bytes] = set()
        self.running = False  # dbgate's set-up was answered: the answers are its own
        self.already = False  # dbgate's BEGIN warned: the client's block was open
        self.failed = False  # dbgate's BEGIN failed: a failed block, nothing measured
        self.opened = False  # dbgate's BEGIN opened the block: dbgate ends it
        self.errored = False  # the client's statement failed
        self.count = 0
        #: batch: the verdicts of its measured Binds. Past the limit the whole batch is
        #: sent again if approved, so each of them is asked (:func:`ask_all`).
        self.covered: list[Allow] = []
        self.covered_texts: set[str] = set()
        self.rows = 0  # rows held back
        self.overflow = False  # more rows than may be held: not measurable
        self.buffer: list[bytes] = []
        self.copying = False  # a COPY FROM STDIN of it takes the client's data
        #: The answers go to the client as they come (Flush, COPY FROM STDIN): past
        #: the limit it can only be undone and refused, not held.
        self.delivering = False
        # A Flush before anything ran (asyncpg prepares with Parse/Describe/Flush and
        # binds in the same batch once it has the answers): the answers so far pass,
        # and the batch is measured (and sent again) from the message after it.
        self.passing = False  # answers pass until the client sends on
        self.resend_from = 0  # index in :attr:`messages` a re-send starts at
        self.parsed: list[str] = []  # names of the Parses the client sent in it
        self.kept: frozenset[str] = frozenset()  # those before the flush point: kept
        self.ran = False  # a Bind or Execute was sent in it

    def client_message(self, t: int, frame: bytes, in_flight: int) -> None:
        """One more message of the client's in this batch (kept, to send again)."""
        if self.passing and t != _FLUSH_MSG:
            # The client sends on after its Flush: if the answers before it are all
            # in, the rest is held back again; if not, they can no longer be told
            # apart, and everything passes (the batch can then only be refused).
            self.passing = False
            if in_flight:
                self.delivering = True
        if t == _BIND_MSG:
            end = frame.find(b"\0", 5)
            self.bound_here.add(frame[5:end])  # raw bytes, as its Executes name it
        if self.delivering:
            return  # it will not be sent again: nothing to keep
        self.kept_bytes += len(frame)
        if self.kept_bytes > BATCH_BYTES_KEPT:
            self.delivering = True
            self.messages.clear()
            return
        self.messages.append(frame)
        if t == _FLUSH_MSG:
            if self.verdict is None and not self.ran and not self.delivering:
                self.passing = True
                self.resend_from = len(self.messages)
                self.kept = frozenset(self.parsed)
            else:
                self.delivering = True
        elif t == _PARSE_MSG:
            end = frame.find(b"\0", 5)
            if end > 5:
                self.parsed.append(name_key(frame[5:end]))
        elif t in (_BIND_MSG, _EXECUTE_MSG):
            self.ran = True

    @property
    def resent(self) -> bytes:
        """The client's messages to send again once approved (after a flush point,
        those whose answers it has not seen)."""
        return b"".join(self.messages[self.resend_from :])

    @property
    def to_close(self) -> list[str]:
        """Named statements the batch prepared that an undo must close: not those
        whose ParseComplete the client saw before a flush point."""
        if self.delivering:
            return []  # the client saw every answer: it believes they exist
        return [k for k in self.named if k not in self.kept]

    @property
    def limit(self) -> int:
        return self.verdict.max_changes if self.verdict is not None else 0

    @property
    def cap(self) -> int:
        """Rows that may be held back: RETURNING gives at most one per changed row,
        so the limit bounds the buffer (and a row limit, when smaller)."""
        verdict = self.verdict
        if verdict is None:
            return BATCH_ROWS_HELD
        limit = verdict.max_changes
        if verdict.max_rows and verdict.max_rows < limit:
            return verdict.max_rows
        return limit

    @property
    def over(self) -> bool:
        if self.verdict is None:  # nothing measured ran: kept as it ran
            return False
        return self.overflow or self.count > self.verdict.max_changes

    @property
    def measured(self) -> int:
        """The count ``over_changes`` is given. Rows past :attr:`cap` were dropped;
        when the changes counted do not explain them (a SELECT in the string returned
        them), -1: more rows than may be held, so not measurable."""
        if self.overflow and self.count <= self.limit:
            return -1
        return self.count

    def covers(self, verdict: Allow, sql: str) -> None:
        """A measured Bind of this batch (of the statement ``sql``): its limit applies
        to the batch, the smallest one deciding (it is the one whose ``over_changes``
        is asked)."""
        if self.verdict is None or verdict.max_changes < self.verdict.max_changes:
            self.verdict = verdict
            self.sql = sql
        if sql not in self.covered_texts:
            # one request per statement: an executemany binds one text many times,
            # and its approval shows that text with the first values and the count
            self.covered_texts.add(sql)
            self.covered.append(verdict)


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


def delivered_refusal(m_: Measurement) -> Refuse:
    """Past the limit after the client saw the answers (Flush, COPY FROM STDIN):
    undone and refused, since a hold would show them twice."""
    from dbgate.proxy.seams import Refuse

    count = m_.measured
    what = f"changed {count} rows" if count >= 0 else "returned more rows than may be held back"
    return Refuse(
        sqlstate.PROGRAM_LIMIT_EXCEEDED,
        f"dbgate: this statement {what}, more than its limit of {m_.limit} changed rows; "
        "it was undone. It could not be held for approval: the client had its results "
        "before it ended (a Flush, or COPY data)",
        hint="change fewer rows (a WHERE on a key); a batch sent without Flush is held instead",
    )


def ask_all(verdicts: list[Allow], count: int) -> Verdict | Awaitable[Verdict]:
    """Every statement of a batch's measured Binds past its limit asked in turn (one
    approval request per text, with the values of its first Bind): the batch is sent
    again only if all allow it. Asking only the smallest limit's showed approvers one statement
    while the approval ran them all."""
    first = ask(verdicts[0], count)
    if len(verdicts) == 1:
        return first

    async def in_turn() -> Verdict:
        from dbgate.proxy.seams import Allow

        decision: Any = first
        for i, verdict in enumerate(verdicts):
            if i:
                decision = ask(verdict, count)
            if isinstance(decision, Awaitable):
                decision = await decision
            if not isinstance(decision, Allow):
                return decision  # type: ignore[no-any-return]
        return decision  # type: ignore[no-any-return]

    return in_turn()


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
