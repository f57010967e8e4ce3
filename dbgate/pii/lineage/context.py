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

    __slots__ = ("allowed", "compared", "container", "stores", "target", "why")

    def __init__(
        self,
        allowed: bool,
        why: str = "",
        target: str | None = None,
        stores: bool = False,
        compared: bool = False,
        container: bool = False,
    ) -> None:
        self.allowed = allowed
        self.why = why
        self.target = target
        #: the value is stored in a PII column, where it will read back with the
        #: deterministic token of a stored value (see ``FreshTokens``)
        self.stores = stores
        #: the value itself (not a computation on it) is compared with PII
        self.compared = compared
        #: the server reads the value as an array or JSON (a cast to one, ``= ANY``,
        #: compared with or written into what is visibly one): a literal in array or
        #: JSON syntax has its tokens resolved inside it only then, since untyped it
        #: takes the type of what it is compared with — a range reads ``'["tok_…",
        #: 5e15]'`` as its bounds, a ``line`` ``'{tok_…,1,0}'`` as its coefficients
        self.container = container

    def comparing(self, container: bool = False) -> Ctx:
        """This context for a bare value compared with PII (see the module)."""
        if not self.allowed or (self.compared and self.container == container):
            return self
        return Ctx(True, self.why, self.target, self.stores, True, container)

    def read_as(self, container: bool) -> Ctx:
        """This context for a value the server reads as an array or JSON, or not (a
        cast's argument, an ``ARRAY[…]`` element)."""
        if not self.allowed or self.container == container:
            return self
        return Ctx(self.allowed, self.why, self.target, self.stores, self.compared, container)

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

#: Why a token in array or JSON syntax is refused where the server may read the
#: literal as another type.
NOT_A_CONTAINER = (
    "a token in array or JSON syntax stands for its value only where the server reads "
    "that text as an array or JSON (cast it to an array type, json or jsonb); read as "
    "another type (a range's bounds, a line's coefficients) the value would be a part "
    "of it"
)

OUTPUT = Ctx(True)
FILTER = Ctx(True)
WRITE_PII = Ctx(True, stores=True)


def refused(why: str) -> Ctx:
    return Ctx(False, why)
