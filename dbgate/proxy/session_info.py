"""What the rest of dbgate may know about a live client session."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dbgate.proxy.prepared import PreparedStatements

log = logging.getLogger("dbgate.session")

if TYPE_CHECKING:
    from dbgate.proxy.seams import Notice


@dataclass(slots=True)
class SessionInfo:
    """Identity and live state of one client session (read-only for hooks)."""

    session_id: int
    identity: str
    database: str
    application_name: str
    client_addr: str
    groups: frozenset[str] = frozenset()
    transaction_status: str = "I"  # 'I' idle, 'T' in transaction, 'E' failed transaction
    server_params: dict[str, str] = field(default_factory=dict)
    # The server's prepared statements as far as dbgate can know them (kept by the
    # relay, confirmed at each ReadyForQuery): what Binds and EXECUTE are judged by.
    statements: PreparedStatements = field(default_factory=PreparedStatements)
    # Bumped by the relay on every ParameterStatus: lets hooks cache what they derive
    # from server_params (the policy inspector's identity and session checks).
    params_version: int = 0
    policy_state: Any = None  # the policy inspector's cache, valid for one params_version
    #: Named portals the client bound through the extended protocol (each name's first
    #: 63 bytes, as the server compares them), kept by the relay: SQL cursors and
    #: portals share one namespace, so ``FETCH c`` may run a portal ``Bind "c"`` made
    #: of another statement than a ``DECLARE c`` the gate saw before. ``portals_lost``:
    #: too many names to remember were bound, and forgotten (any name may be one).
    portal_names: set[bytes] = field(default_factory=set)
    portals_lost: bool = False
    #: The gate's own per-session state (e.g. the session's PII state), by room name.
    state: dict[str, Any] = field(default_factory=dict)
    #: What the agent declared about itself for approvers ("purpose", "model"): from
    #: the startup parameters dbgate.purpose / dbgate.model, then kept by the gate
    #: from the SET statements it lets through (custom settings are not reported by
    #: ParameterStatus).
    declared: dict[str, str] = field(default_factory=dict)
    #: Why the session ended, when it was not the client's doing (for observers'
    #: ``session_ended``): the SQLSTATE and message of the FATAL the client got — the
    #: server's own (``25P03`` an idle-in-transaction timeout, ``25P04`` a
    #: transaction timeout, ``57P01`` a terminated backend) or dbgate's; ``08006``
    #: when the upstream connection was lost. Empty when the client left.
    ended_sqlstate: str = ""
    ended_message: str = ""
    #: Called once at the next ReadyForQuery that says the session is idle (status
    #: ``I``): see :meth:`when_idle`.
    idle_waiters: list[Callable[[], None]] = field(default_factory=list)
    _notify: Callable[[Notice], None] | None = None

    _forget: Callable[[], None] | None = None
    _catch_up: Callable[[], None] | None = None

    def forget_verdicts(self) -> None:
        """Make the relay ask the inspector again about messages it allowed before
        with ``Allow(repeatable=True)`` (e.g. after the rules changed), and about
        every Bind of the statements prepared so far."""
        if self._forget is not None:
            self._forget()
        self.statements.judge_binds_again()

    def verdicts_catch_up(self) -> None:
        """The gate has just read a new snapshot to judge this session's waiting
        statement on it: forget now the verdicts taken on older snapshots (as the
        relay does when it sees the inspector's ``generation`` move), so that the
        verdict about to be given, the new snapshot's, is not forgotten with them and
        its statement's Binds do not all go to the gate for the rest of the session."""
        if self._catch_up is not None:
            self._catch_up()

    def when_idle(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, at the next ReadyForQuery with status ``I``: when
        what the session did so far is committed or rolled back. A message of the
        extended protocol completes before its Sync, and the transaction it ran in (an
        implicit one, or the client's block) ends at a ReadyForQuery after it."""
        self.idle_waiters.append(callback)

    def went_idle(self) -> None:
        """The relay read a ReadyForQuery with status ``I``: run the waiters (each
        once; one that fails is logged, the others still run)."""
        waiters, self.idle_waiters = self.idle_waiters, []
        for callback in waiters:
            try:
                callback()
            except Exception:
                log.exception("session %s: a callback at idle failed", self.session_id)

    def notify_client(self, notice: Notice) -> None:
        """Send a NoticeResponse to the client now (allowed at any time by the protocol)."""
        if self._notify is not None:
            self._notify(notice)
