"""Where a value being walked ends up: it decides whether a token in it may be resolved.

Tokens the agent sends back are resolved to real values before the statement runs,
and only where the agent acts on one customer with them: a token (a literal or a
Bind value, cast or not, in an ``IN`` list or an array) compared with a PII column or
a value derived from one (``=``, ``<>``, ``IN``, ``= ANY``, ``IS [NOT] DISTINCT
FROM``, ``@>``: :attr:`Ctx.compared`), or written into a PII column
(:attr:`Ctx.stores`). Anywhere else the resolved value would be computed on —
``ascii(substr('tok_…', 1, 1)) & 1 <> 0`` reads one bit of it per branch, reading no
table, so no rows-per-window budget bounds it — and the token is refused
(:data:`NOT_COMPARED`); where the value could be stored or echoed raw (a non-PII
column, a setting, a user function, a view definition, EXPLAIN) it is refused for the
reason the context carries (:func:`refused`).
"""

from __future__ import annotations


class Ctx:
    """Where a value being walked ends up (decides whether a token may be resolved)."""

    __slots__ = ("allowed", "compared", "stores", "target", "why")

    def __init__(
        self,
        allowed: bool,
        why: str = "",
        target: str | None = None,
        stores: bool = False,
        compared: bool = False,
    ) -> None:
        self.allowed = allowed
        self.why = why
        self.target = target
        #: the value is stored in a PII column, where it will read back with the
        #: deterministic token of a stored value (see ``FreshTokens``)
        self.stores = stores
        #: the value itself (not a computation on it) is compared with PII
        self.compared = compared

    def comparing(self) -> Ctx:
        """This context for a bare value compared with PII (see the module)."""
        if not self.allowed or self.compared:
            return self
        return Ctx(True, self.why, self.target, self.stores, compared=True)

    def token_refusal(self) -> str | None:
        """Why a token here is refused, or None when it may be resolved."""
        if not self.allowed:
            return self.why
        if self.compared or self.stores:
            return None
        return NOT_COMPARED


#: Why a token is refused where it is neither compared with PII nor stored in it.
NOT_COMPARED = (
    "a token stands for its value only where it is compared with a PII column "
    "(=, <>, IN, = ANY, IS [NOT] DISTINCT FROM; @> and <@ inside an array or JSON) "
    "or written into one"
)

OUTPUT = Ctx(True)
FILTER = Ctx(True)
WRITE_PII = Ctx(True, stores=True)


def refused(why: str) -> Ctx:
    return Ctx(False, why)
