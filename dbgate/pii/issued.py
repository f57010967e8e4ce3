"""The hashed tokens this process issued, so that a token the agent sends back resolves.

A hashed token (``tok_<entity>_h`` + 32 hex digits of keyed BLAKE2b) cannot be
decrypted, so dbgate remembers token -> value for what it showed, within a bound
(``pii.token_cache_entries``), forgetting the oldest first. Streaming a million rows
of distinct e-mails remembers a million tokens, so this sits on the hot path:

* the tokens are kept in *generations* of a tenth of the bound each; when the newest
  is full a new one starts and, past the bound, the oldest is dropped whole (one
  step, where deleting the oldest keys of one big dict scanned the holes they left
  at its front on every eviction);
* ``on_forget`` is called after a generation is dropped: a cache of tokens by value
  (the rewriters' ``ValueCache``) must forget too, or it would show tokens that no
  longer resolve.

:class:`IssuedTokens` is the compiled store of ``dbgate.pii._rows`` when it is built:
the C row loop adds to it without making a Python object per token (the 16-byte
digest and the value are copied into the generation's arena). ``PyIssuedTokens``
below is the reference; a property test checks both answer alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["IssuedTokens", "PyIssuedTokens"]

_HASHED_TAIL = re.compile(rb"[0-9a-f]{32}\Z")
#: The bounds of both stores (the compiled one's index of a generation is sized from it).
MAX_GENERATION_SIZE = 2**40
MAX_GENERATIONS = 1_000_000


class PyIssuedTokens:
    """Token -> value in generations (see the module); the reference version."""

    def __init__(self, generation_size: int, generations: int) -> None:
        if not (
            1 <= generation_size <= MAX_GENERATION_SIZE and 0 <= generations <= MAX_GENERATIONS
        ):
            raise ValueError("generation_size must be 1 to 2**40 and generations 0 to 1000000")
        self.generation_size = generation_size
        self.generations = generations
        self._gens: list[dict[bytes, bytes]] = [{}]
        #: Called (no arguments) after a generation was dropped.
        self.on_forget: Callable[[], object] | None = None

    def add(self, token: bytes, value: bytes) -> None:
        """Remember ``token`` (prefix + 32 lower-case hex digits) for ``value``."""
        # a prefix of up to 255 bytes, as the compiled store remembers it
        if not 32 <= len(token) <= 32 + 255 or _HASHED_TAIL.match(token, len(token) - 32) is None:
            raise ValueError("a hashed token ends with 32 lower-case hex digits")
        if not self.generations:
            return
        gens = self._gens
        if len(gens[-1]) >= self.generation_size:
            gens.append({})
            forgot = False
            while len(gens) > self.generations:
                del gens[0]
                forgot = True
            gens[-1][token] = value
            if forgot and self.on_forget is not None:
                self.on_forget()
            return
        gens[-1][token] = value

    def get(self, token: bytes) -> bytes | None:
        """The value of ``token``, or None when it was not issued or is forgotten."""
        for gen in reversed(self._gens):
            value = gen.get(token)
            if value is not None:
                return value
        return None

    def __len__(self) -> int:
        return sum(len(g) for g in self._gens)


try:  # the compiled store (dbgate/pii/_rows.c); optional, same answers
    from dbgate.pii._rows import IssuedTokens
except ImportError:  # pragma: no cover - depends on the build
    IssuedTokens = PyIssuedTokens  # type: ignore[assignment,misc]
