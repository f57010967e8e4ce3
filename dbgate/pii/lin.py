"""``Lin``: where one value comes from, as far as PII is concerned.

A value is *clean* (no PII column flows into it), *PII* of some entities (it is
derived from those columns, or from a token the agent sent back), and/or *unknown*
(something in its making could not be followed: an opaque function, a relation
dbgate has not seen, a cursor declared elsewhere). ``params`` lists the bind
parameters whose values flow into it, because a parameter may carry a token whose
real value is only known at Bind time.

Lins are immutable and combine with ``|``; the common ones are shared singletons so
that planning a large statement allocates little.
"""

from __future__ import annotations

from typing import Any

from dbgate.pii.entities import MIXED, UNKNOWN

__all__ = ["CLEAN", "UNKNOWN_LIN", "Lin", "lin"]


class Lin:
    __slots__ = ("entities", "params", "token", "unknown")

    def __init__(
        self,
        entities: frozenset[str] = frozenset(),
        unknown: bool = False,
        params: frozenset[int] = frozenset(),
        token: bool = False,
    ) -> None:
        self.entities = entities
        self.unknown = unknown
        self.params = params
        self.token = token  # derived from a token literal that will be resolved to a value

    def __or__(self, other: Lin) -> Lin:
        if other is self or other is CLEAN:
            return self
        if self is CLEAN:
            return other
        return Lin(
            self.entities | other.entities,
            self.unknown or other.unknown,
            self.params | other.params,
            self.token or other.token,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Lin) and (
            self.entities == other.entities
            and self.unknown == other.unknown
            and self.params == other.params
            and self.token == other.token
        )

    def __hash__(self) -> int:
        return hash((self.entities, self.unknown, self.params, self.token))

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Analyses traced in a worker process come back pickled: the shared
        # singletons must come back as themselves (``|`` and callers test identity).
        return (lin, (self.entities, self.unknown, self.params, self.token))

    @property
    def pii(self) -> bool:
        """Derived from at least one PII column (or resolved token)."""
        return bool(self.entities)

    @property
    def clean(self) -> bool:
        return not self.entities and not self.unknown and not self.params

    def entity(self) -> str:
        """The tag of tokens for this value: its entity, ``pii`` if several, ``unknown``."""
        if len(self.entities) == 1:
            return next(iter(self.entities))
        if self.entities:
            return MIXED
        return UNKNOWN

    def __repr__(self) -> str:
        parts = sorted(self.entities)
        if self.unknown:
            parts.append("?")
        if self.params:
            parts.extend(f"${n}" for n in sorted(self.params))
        if self.token:
            parts.append("tok")
        return f"Lin({', '.join(parts) or 'clean'})"


CLEAN = Lin()
UNKNOWN_LIN = Lin(unknown=True)


def lin(
    entities: frozenset[str] = frozenset(),
    unknown: bool = False,
    params: frozenset[int] = frozenset(),
    token: bool = False,
) -> Lin:
    """A Lin, the shared singleton when it is one of them (unpickling uses this)."""
    if not entities and not params and not token:
        return UNKNOWN_LIN if unknown else CLEAN
    return Lin(frozenset(entities), unknown, frozenset(params), token)


def of_entity(entity: str, _cache: dict[str, Lin] = {}) -> Lin:  # noqa: B006 - a deliberate memo
    lin = _cache.get(entity)
    if lin is None:
        lin = _cache[entity] = Lin(frozenset((entity,)))
    return lin
