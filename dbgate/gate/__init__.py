"""The gate: the one adapter that joins the rooms.

The relay (``dbgate.proxy``) knows only its seams: an inspector that returns a
verdict, a result plan per statement, an observer of each statement's life. The
gate implements them from the other rooms: it classifies SQL and lets the rules
decide (``dbgate.policy``), turns a ``hold`` into a wait on the approval service
(``dbgate.approvals``), and (as those rooms land) attaches result plans for PII
tokenization and records every statement in the audit. Nothing outside the gate
imports two rooms at once; ``dbgate.app`` builds the gate with what is configured.
"""

from dbgate.gate.inspector import Gate

__all__ = ["Gate"]
