"""Where a value being walked ends up: it decides whether a token in it may be resolved.

Tokens the agent sends back are resolved to real values before the statement runs.
That is fine in an output (tokenized again), in a filter, or in a value written into a
PII column; anywhere the value could be stored or echoed raw (a non-PII column, a
setting, a user function, a view definition, EXPLAIN) the token is refused, for the
reason the context carries (:func:`refused`).
"""

from __future__ import annotations


class Ctx:
    """Where a value being walked ends up (decides whether a token may be resolved)."""

    __slots__ = ("allowed", "stores", "target", "why")

    def __init__(
        self, allowed: bool, why: str = "", target: str | None = None, stores: bool = False
    ) -> None:
        self.allowed = allowed
        self.why = why
        self.target = target
        #: the value is stored in a PII column, where it will read back with the
        #: deterministic token of a stored value (see ``FreshTokens``)
        self.stores = stores


OUTPUT = Ctx(True)
FILTER = Ctx(True)
WRITE_PII = Ctx(True, stores=True)


def refused(why: str) -> Ctx:
    return Ctx(False, why)
