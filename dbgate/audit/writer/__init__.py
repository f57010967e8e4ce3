"""The audit writer: events in, hash-chained records committed to the state database.

One :class:`AuditWriter` per dbgate process. Callers on the relay's hot path call
:meth:`~AuditWriter.record` (append to a queue, nothing else); one task builds the
records, chains them and writes them in batches with COPY. Why it is shaped so:

* **one chain per writer.** Each process starts a new chain (``<replica>.<random>``)
  and is the only one to append to it, so replicas and workers never contend for a
  chain head and never interleave one. The chain is registered in
  ``dbgate.audit_chains`` in the same transaction as its first records; a chain id
  found registered by another process is refused.
* **chained before written.** A record gets its ``seq``, ``logged_at`` and hash when
  the task takes it from the queue, and keeps them through retries, spills and
  replays: whatever fails later, the chain has no gap and no fork. After a lost
  connection the writer asks the database where its chain ends (a COMMIT may have
  succeeded even though its answer was lost) and continues from there.
* **backpressure, never loss.** The queue is bounded by ``queue_size`` records and
  ``queue_bytes``; :meth:`~AuditWriter.admit` (or :meth:`~AuditWriter.wait_for_room`)
  is how the gate makes a client wait before a new statement. ``record`` itself
  never refuses: events of statements already admitted are always accepted.
* **durable before it matters.** :meth:`~AuditWriter.record_durable` jumps the queue
  and returns once its record is committed; the gate awaits it before a held,
  approved, denied or rejected statement is forwarded or refused.
* **few, large commits.** Every commit is a WAL flush on the state database and a
  transaction and a COPY on both sides, whatever its size: a writer that committed
  whenever a record arrived would spend more on commits than on records. So ordinary
  records wait up to ``batch_delay`` seconds (``audit.batch_delay``, 50 ms by
  default) after the previous write began, for others to share their commit; a full
  batch, a durable record, :meth:`~AuditWriter.flush` and :meth:`~AuditWriter.stop`
  end the wait at once (a durable record takes whatever is queued into its commit).
  Under light load the first record after a quiet spell is written straight away;
  under heavy load batches fill before the delay runs out.
* **the database goes away.** ``on_failure: refuse`` keeps queued records in memory,
  reports :attr:`~AuditWriter.available` False (the gate refuses statements) and
  retries with back-off; ``buffer`` spills chained records to a file
  (:mod:`dbgate.audit.spill`) and replays them in order when the database returns.
* **a crash.** Committed batches are whole (one transaction each). On ``kill -9``
  the records still in memory are lost — at most the queue, never a record that
  ``record_durable`` confirmed — and the killed chain simply has no ``chain_end``
  record; the next process starts its own chain (and adopts a dead process's spill
  file). ``audit verify`` passes.

The chain head is logged (``audit chain head: ...``) every ``head_log_seconds`` when
it moved, and appended to ``head_file`` when configured, so that an outside system
can anchor it: ``audit verify --heads`` then also catches records deleted from the
end of a chain, which no hash chain can show by itself.

One class, one module per job. :class:`AuditWriter` (``core``) holds the state and
the lifecycle; the other modules each give it one mixin, because every one of them
works on the same queue, chain head and connection (the spill file's own format is
:mod:`dbgate.audit.spill`, a collaborator the writer owns):

==============  ==================================================================
``core``        :class:`AuditWriter`: the state its parts share, ``start``, ``stop``,
                the chain head and stats
``queue``       what waits (:class:`~dbgate.audit.writer.queue.Item`,
                :class:`~dbgate.audit.writer.queue.Rec`); ``record``,
                ``record_durable``; admission and backpressure; availability and
                the callers waiting on it; ``flush``
``batching``    the task: chain queued events into records, gather a batch, write
                it while the next is chained; what a commit or a failure settles
``database``    the state database: connect and reconnect, the schema, where the
                chain ends there, claiming the chain, month partitions, COPY
``spilling``    the spill path: spill while the database is away, replay when it
                returns, adopt dead writers' files, keep what is left at stop
==============  ==================================================================

The per-record path — ``record`` and ``_enqueue`` (``queue``), ``_chain_some`` and
``_write`` (``batching``) — is on the relay's hot path: one object, plain method
calls and attributes, no hop through a helper object.
"""

from __future__ import annotations

from dbgate.audit.writer.batching import gather_for
from dbgate.audit.writer.core import AuditWriter
from dbgate.audit.writer.database import COPY_COLUMNS, copy_tuple

__all__ = ["COPY_COLUMNS", "AuditWriter", "copy_tuple", "gather_for"]
