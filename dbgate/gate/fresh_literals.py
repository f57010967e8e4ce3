"""Verdicts of Query texts that differ from an earlier one only in their literals.

Clients that inline values (``pgbench -M simple``, ORMs, hand-written SQL from an
agent) send a new text for every statement. Every layer under the gate already
answers such a text from its shape (the text with its literals masked): the
classifier from its masked cache, the policy from its answer for the identity and the
classification, the PII gate from the shape it found nothing to change in. Asking the
three in turn costs about a third of the relay's Python for a simple-mode ``-S``
transaction; this remembers their joint answer per shape and session identity.

An answer is remembered only when each layer's own answer is one it gives every text
of the shape, and it is checked again against the cheap parts of each at every use:

* the statements are reads (SELECT) or writes (INSERT, UPDATE, DELETE): no cursor,
  prepared statement, setting or MERGE, whose verdicts depend on the session;
* the classification is the one the classifier's masked cache holds for the shape
  (so every text of the shape that is not cached verbatim classifies to it), and the
  text itself is not cached verbatim (a text that repeats takes the path that lets
  the relay remember it);
* the policy's outcome is the same Allow object for every text of the
  classification, for this identity: its plain allow, or the allow of a statement
  whose bound the catalog proves (a write whose WHERE pins a unique key) — never one
  under a row limit, a measurement of its changes or a clamp, which are counted or
  rewritten per text. A read under a rows-per-window limit is remembered with its
  window, and capped by what the identity has left (and charged) at every use, as
  the gate would (``RowWindow``, ``dbgate.gate.windows.windowed``);
* PII has nothing to change in the shape (``PlanCache.nothing_to_change``, which only
  a trusted shape reaches), or the session sees raw values;
* nothing changed since: the gate's ``generation`` (rules, key catalog, PII schema),
  the session's identity object (renewed on any ParameterStatus) and its key catalog.
"""

from __future__ import annotations

from typing import Any

from dbgate.policy.classify import cached_shape
from dbgate.policy.literals import fast_mask
from dbgate.policy.model import Identity, RowWindow
from dbgate.proxy.seams import Allow
from dbgate.proxy.session_info import SessionInfo

__all__ = ["MAX_ENTRIES", "MAX_TEXT", "FreshLiterals"]

#: Remembered shapes (per identity); all are forgotten on overflow.
MAX_ENTRIES = 4096
#: Longer texts are not remembered (bounds the memory to about 8 MB of keys).
MAX_TEXT = 2048
#: Reads, and the writes the catalog proves bounded (the gate only offers those).
_PLAIN_COMMANDS = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"})


class FreshLiterals:
    """Shape -> verdict of the plain reads a session sends with fresh literals."""

    def __init__(self, pii: Any = None) -> None:
        #: the PII gate (``dbgate.gate.pii.PiiGate``), or None without tokenization
        self.pii = pii
        #: (masked text, id(identity)) -> (verdict, identity, classification, catalog,
        #: generation, window)
        self._entries: dict[
            tuple[str, int], tuple[Allow, Identity, Any, Any, int, RowWindow | None]
        ] = {}

    def lookup(
        self,
        session: SessionInfo,
        identity: Identity,
        catalog: Any,
        generation: int,
        sql: str,
    ) -> tuple[Allow, RowWindow | None] | None:
        """The remembered verdict for ``sql`` and the window it is capped by at each
        use (None: none), or None to judge it the long way."""
        if len(sql) > MAX_TEXT or not self._entries:
            return None
        masked = fast_mask(sql)
        if masked is None:
            return None
        entry = self._entries.get((masked, id(identity)))
        if (
            entry is None
            or entry[1] is not identity
            or entry[3] is not catalog
            or entry[4] != generation
            or cached_shape(sql, masked, keys=catalog) is not entry[2]
        ):
            return None
        pii = self.pii
        if pii is not None and not pii.shape_unchanged(session, sql, masked):
            return None
        return entry[0], entry[5]

    def remember(
        self,
        session: SessionInfo,
        identity: Identity,
        catalog: Any,
        generation: int,
        sql: str,
        verdict: Allow,
        classification: Any,
        window: RowWindow | None = None,
    ) -> None:
        """``verdict`` is the policy's plain allow for ``classification`` (before the
        cap of ``window``, when it reads under one) and PII left it as it is: remember
        it for the texts of ``sql``'s shape, when that holds for all of them (see the
        module docstring)."""
        if len(sql) > MAX_TEXT or type(verdict) is not Allow or verdict.check_binds:
            return
        if not all(st.command in _PLAIN_COMMANDS for st in classification.statements):
            return
        masked = fast_mask(sql)
        if masked is None or cached_shape(sql, masked, keys=catalog) is not classification:
            return
        pii = self.pii
        if pii is not None and not pii.shape_unchanged(session, sql, masked):
            return
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[masked, id(identity)] = (
            verdict,
            identity,
            classification,
            catalog,
            generation,
            window,
        )

    def clear(self) -> None:
        self._entries.clear()
