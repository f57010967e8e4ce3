"""The spill path (mixin of :class:`~dbgate.audit.writer.AuditWriter`), with
``audit.spill_dir``: while the state database is away in buffer mode, chained
records go to the writer's spill file; when it returns, the file — then those of
dead writers adopted meanwhile — is replayed before anything new; at a stop that
times out, what is left is kept there. The file's format and locking are
:mod:`dbgate.audit.spill`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from dbgate.audit import binary
from dbgate.audit.errors import AuditUnavailable
from dbgate.audit.serial import Document, to_document
from dbgate.audit.spill import adopt_orphans
from dbgate.audit.writer.database import HEAD_SQL
from dbgate.audit.writer.queue import fail

log = logging.getLogger("dbgate.audit")

_REPLAY_CHUNK = 5_000


class Spilling:
    """The spill file, adopted orphans, replay. The state lives in
    :class:`~dbgate.audit.writer.AuditWriter`'s ``__init__``."""

    def _spill_has_room(self) -> bool:
        assert self._spill is not None
        return self._spill.size < self._spill.max_bytes

    def _replay_due(self) -> bool:
        return bool(self._orphans) or (self._spill is not None and self._spill.pending)

    async def _replay(self) -> None:
        """Write spilled records (ours first, then adopted ones) before anything new."""
        if self._spill is not None and self._spill.pending:
            await self._replay_file(self.chain, self._identity, self._spill.read())
            self._spill.clear()
            log.warning("audit: replayed the spill file; the chain continues without a gap")
        while self._orphans:
            orphan = self._orphans[0]
            await self._replay_file(orphan.chain, orphan.header, orphan.documents())
            orphan.done()
            self._orphans.pop(0)
            log.warning("audit: replayed the spill file %s of a writer that is gone", orphan.path)

    async def _replay_file(self, chain: str, identity: dict[str, Any], docs: Any) -> None:
        conn = self._conn
        row = await conn.fetchrow(HEAD_SQL, chain)
        head = int(row["seq"]) if row is not None else 0
        chunk: list[Document] = []

        async def flush() -> None:
            rows = [
                binary.encode(d.values, d.prev_hash, d.hash) for d in chunk if d.values is not None
            ]
            if not rows:
                return
            await self._ensure_months(conn, {d.logged_at for d in chunk})
            await asyncio.wait_for(self._copy(conn, rows, identity), self.config.write_timeout)
            if chain == self.chain:
                self._registered = True
                last = chunk[-1]
                if last.seq > self._committed_seq:
                    self._committed_seq, self._committed_hash = last.seq, last.hash
                    self._committed_logged_us = last.logged_at
            self.committed_total += len(rows)

        for doc in docs:
            if doc.seq <= head:
                continue
            chunk.append(doc)
            if len(chunk) >= _REPLAY_CHUNK:
                await flush()
                chunk = []
        await flush()

    async def _spill_everything(self) -> None:
        """Database unreachable, buffer mode: move every queued record to the spill file."""
        assert self._spill is not None
        while True:
            if len(self._pending) < self.config.batch_size:
                await self._chain_batch()
            if not self._pending:
                return
            batch = self._pending[: self.config.batch_size]
            docs = [to_document(r.values, r.prev, r.hash) for r in batch]
            if not self._spill.room_for(docs):
                self._set_available(
                    False,
                    "audit unavailable: the state database is unreachable and the spill file is full",
                )
                return
            try:
                await asyncio.to_thread(self._spill.append, docs)
            except OSError as e:
                log.error("audit: cannot write the spill file %s: %s", self._spill.path, e)
                self._set_available(False, f"audit unavailable: spill file: {e}")
                return
            self._pending = self._pending[len(batch) :]
            self._spilled_total += len(batch)
            exc = AuditUnavailable("the state database is unreachable; the record was buffered")
            for r in batch:
                fail(r.waiters, exc)
            self._release(batch)

    async def _last_resort(self) -> None:
        """After the stop timeout: keep what is left in the spill directory, if any."""
        self._chain_some(self._count + 1)
        left = self._pending
        if not left:
            return
        if self._spill is not None:
            try:
                self._spill.append([to_document(r.values, r.prev, r.hash) for r in left])
                log.error(
                    "audit: %d records could not be written before shutdown; they wait in %s",
                    len(left),
                    self._spill.path,
                )
                self._pending = []
                return
            except OSError as e:
                log.error("audit: cannot write the spill file: %s", e)
        log.error(
            "audit: %d records could not be written before shutdown and are lost "
            "(configure audit.spill_dir to keep them)",
            len(left),
        )

    def _adopt_orphans(self) -> None:
        assert self.config.spill_dir is not None
        own = self._spill.path if self._spill is not None else None
        known = {o.path for o in self._orphans}
        for orphan in adopt_orphans(self.config.spill_dir, own, known):
            log.warning("audit: adopting the spill file of a writer that is gone: %s", orphan.path)
            self._orphans.append(orphan)

    def _release_files(self) -> None:
        """Unlock the spill file (kept if it holds records) and adopted orphans."""
        if self._spill is not None:
            self._spill.close()
        for orphan in self._orphans:
            orphan.release()
        self._orphans = []
