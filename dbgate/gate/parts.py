"""What the gate offers its parts: one declaration, for the type checker only.

``Gate`` (:mod:`dbgate.gate.inspector`) is joined from mixins — ``StatementVerdicts``,
``BindVerdicts``, ``RunLimits``, ``ApprovedPii`` — that call each other through
``self`` and read the state ``Gate.__init__`` sets. :class:`GateParts` names that
state and those methods once, so each mixin declares ``GateParts`` as its base for the
type checker (``if TYPE_CHECKING``) and plain ``object`` at run time: no mixin
re-declares another's methods, and a signature lives next to its one description.
Nothing here runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from dbgate.gate.audit import AuditTrail
    from dbgate.gate.classify_pool import ClassifyPool
    from dbgate.gate.keys import KeyCatalog, KeyCatalogs
    from dbgate.gate.pii import PiiGate
    from dbgate.gate.row_window import RowWindows
    from dbgate.policy.model import Decision, Identity
    from dbgate.policy.rules import RuleSet
    from dbgate.proxy.seams import Allow, Refuse, Statement, Verdict
    from dbgate.proxy.session_info import SessionInfo


class GateParts(Protocol):
    """The state and methods of ``Gate`` that its mixins use from one another."""

    # state set by Gate.__init__
    ruleset: RuleSet
    keys: KeyCatalogs | None
    offload: ClassifyPool | None
    windows: RowWindows | None
    audit: AuditTrail | None
    pii: PiiGate | None
    generation: int
    _answers: dict[tuple[int, int], tuple[Any, ...]]
    _bind_allows: dict[int, tuple[Any, Allow]]
    _bind_limits: dict[tuple[int, int], tuple[Decision, Any, Allow | Decision]]
    _bind_checked: dict[int, tuple[Allow, Allow]]
    _repeats: Callable[..., bool]

    # Gate (inspector.py)
    @staticmethod
    def identity(session: SessionInfo) -> Identity | None: ...
    def verdict(
        self,
        decision: Decision,
        session: SessionInfo,
        sql: str,
        params: Any,
        param_types: tuple[int, ...] = (),
    ) -> Verdict | Awaitable[Verdict]: ...
    def _held(self, kind: str, decision: Decision, session: SessionInfo, sql: str) -> Any: ...
    async def _recorded(
        self, session: SessionInfo, sql: str, params: Any, decision: Decision, refusal: Refuse
    ) -> Verdict: ...
    def _classified(self, sql: str, prepared: Any, catalog: KeyCatalog | None) -> Any: ...
    def _decided(self, identity: Identity, classification: Any) -> Decision: ...
    def _may_learn_keys(
        self, session: SessionInfo, catalog: KeyCatalog, classification: Any
    ) -> bool: ...
    async def _after_keys(self, session: SessionInfo, statement: Statement) -> Verdict: ...
    async def _offloaded(
        self, ready: Awaitable[Decision | None], session: SessionInfo, *a: Any
    ) -> Verdict: ...

    # RunLimits (run_limits.py)
    def _has_limits(self, decision: Decision) -> bool: ...
    def _limited(self, decision: Decision, classification: Any, sql: str) -> Allow | Decision: ...
    def _bind_limited(
        self, decision: Decision, classification: Any, sql: str
    ) -> Allow | Decision: ...
    def _run_limited(self, kind: str, verdict: Allow, decision: Decision, *a: Any) -> Any: ...

    # ApprovedPii (approved_pii.py)
    def _bind_held(
        self, decision: Decision, session: SessionInfo, statement: Statement, *a: Any
    ) -> Verdict | Awaitable[Verdict]: ...
