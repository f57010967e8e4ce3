"""The two seams later features plug into: statement inspection and result rewriting.

The relay calls an :class:`Inspector` once per statement before forwarding it, and a
:class:`ResultTransformer` for each result set. With the defaults (allow everything,
no transformer) the relay forwards bytes untouched on its fast path.

Verdicts may be returned synchronously (the common case costs one method call) or as
an awaitable: the session then stops reading from that client, keeps the client's
pipelined messages in order, and resumes when the awaitable resolves. This is how a
statement waits for a human approval.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, NamedTuple, Protocol

from dbgate.proxy.prepared import PreparedChange

if TYPE_CHECKING:
    from dbgate.proxy.session_info import SessionInfo

StatementKind = Literal["query", "parse", "bind", "function_call"]


class Statement(NamedTuple):
    """What a client asked the server to do, as the inspector sees it.

    A NamedTuple rather than a frozen dataclass: one is built per statement on the
    relay's hot path, and a frozen dataclass's ``__init__`` costs several times more.
    """

    kind: StatementKind
    sql: str  # the query text; for "bind", the text of the bound statement; "" for function_call
    statement_name: str = ""  # prepared statement name ("" is the unnamed statement)
    portal: str = ""
    params: tuple[bytes | None, ...] = ()  # Bind parameter values, as sent
    param_formats: tuple[int, ...] = ()  # 0 text, 1 binary (per Bind's rules)
    function_oid: int = 0  # for "function_call" (the fast-path FunctionCall message)


@dataclass(frozen=True, slots=True)
class Allow:
    """Forward the statement unchanged.

    ``check_binds`` (for a Parse): show the inspector every Bind of this statement,
    because the decision depends on the parameter values. ``changes`` (for a simple
    Query): what the statement does to the session's prepared statements when it runs
    (SQL ``PREPARE``/``DEALLOCATE``/``DISCARD ALL``), which the relay cannot see itself.
    The relay records both only once it has forwarded the message; see
    :mod:`dbgate.proxy.prepared` for how they are confirmed by the server.
    """

    check_binds: bool = False
    changes: tuple[PreparedChange, ...] = ()
    #: The inspector promises that the very same message would be allowed again in
    #: this session, with no other effect, until the server reports a changed
    #: parameter (ParameterStatus) or ``SessionInfo.forget_verdicts()`` is called.
    #: The relay may then forward a byte-identical message without asking.
    repeatable: bool = False


@dataclass(frozen=True, slots=True)
class Refuse:
    """Do not run the statement; the client gets an ErrorResponse with this code and text."""

    sqlstate: str
    message: str
    detail: str = ""
    hint: str = ""


@dataclass(frozen=True, slots=True)
class Notice:
    """A NoticeResponse to send the client right away (e.g. "held for approval #12")."""

    message: str
    detail: str = ""
    fields: dict[str, str] = field(default_factory=dict)


ALLOW = Allow()
ALLOW_CHECKING_BINDS = Allow(check_binds=True)
ALLOW_REPEATABLE = Allow(repeatable=True)
Verdict = Allow | Refuse


class Inspector(Protocol):
    """Decides about each statement before it reaches the server.

    Bind messages are shown to the inspector when it sets ``inspects_binds = True``,
    or for statements whose Parse it allowed with ``Allow(check_binds=True)``
    (bind-time decisions on parameter values).
    """

    def inspect(self, session: SessionInfo, statement: Statement) -> Verdict | Awaitable[Verdict]:
        """Return a verdict, or an awaitable of one to make the session wait.

        While waiting, the inspector may call ``session.notify_client(Notice(...))``.
        Implementations must not raise; if they do, the relay refuses the statement
        (fail closed) with SQLSTATE XX000.
        """
        ...


class RowRewriter(Protocol):
    """Rewrites the rows of one result set (from RowDescription to its completion)."""

    def data_row(self, body: bytes) -> bytes:
        """Return the new DataRow body (the column count must stay the same)."""
        ...

    def copy_data(self, body: bytes) -> bytes:
        """Return the new CopyData payload for COPY TO STDOUT output."""
        ...


class ResultTransformer(Protocol):
    """Sees results coming back; returns a RowRewriter only for results it must change."""

    def on_row_description(self, session: SessionInfo, body: bytes) -> RowRewriter | None: ...

    def on_copy_out(self, session: SessionInfo, body: bytes) -> RowRewriter | None: ...

    def on_notice(self, session: SessionInfo, body: bytes) -> bytes: ...

    def on_error(self, session: SessionInfo, body: bytes) -> bytes: ...

    def on_notification(self, session: SessionInfo, body: bytes) -> bytes: ...


class AllowAll:
    """The inspector used until policy is configured: every statement is forwarded."""

    inspects_binds = False

    def inspect(self, session: SessionInfo, statement: Statement) -> Verdict:
        return ALLOW
