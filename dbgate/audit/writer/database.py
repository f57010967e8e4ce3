"""The writer and the state database (mixin of
:class:`~dbgate.audit.writer.AuditWriter`): connecting (at start and again after a
failure, with back-off), checking the schema, learning where the chain ends there,
claiming the chain in ``dbgate.audit_chains``, creating month partitions, and the
COPY of one batch in one transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from dbgate.audit import binary
from dbgate.audit.binary import array_literal
from dbgate.audit.canonical import AT, FIELDS, INDEX, LOGGED_AT, FieldType
from dbgate.audit.errors import AuditError
from dbgate.audit.events import WriterEvent
from dbgate.audit.times import EPOCH, from_us, iso, parse_iso

log = logging.getLogger("dbgate.audit")

COPY_COLUMNS: tuple[str, ...] = binary.COLUMNS
_PERMANENT = (
    asyncpg.InvalidPasswordError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
)
HEAD_SQL = "SELECT seq, hash FROM dbgate.audit_events WHERE chain = $1 ORDER BY seq DESC LIMIT 1"
_REGISTER_SQL = """
INSERT INTO dbgate.audit_chains (chain, replica, host, pid, version, started_at)
VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (chain) DO NOTHING
"""


_ARRAYS = tuple(INDEX[name] for name, kind in FIELDS if kind is FieldType.ARRAY)


def _copy_row(values: list[Any], logged: datetime, prev_hash: bytes, hash_: bytes) -> list[Any]:
    row = values.copy()
    row[LOGGED_AT] = logged
    row[AT] = EPOCH + timedelta(microseconds=row[AT])
    for i in _ARRAYS:
        if row[i]:
            row[i] = array_literal(row[i])
    row.append(prev_hash)
    row.append(hash_)
    return row


def copy_tuple(values: list[Any], prev_hash: bytes, hash_: bytes) -> list[Any]:
    """A record (given in canonical form) as asyncpg binds the columns
    :data:`COPY_COLUMNS` (the writer itself sends binary COPY rows)."""
    return _copy_row(values, from_us(values[LOGGED_AT]), prev_hash, hash_)


class Database:
    """Connection, schema and chain registration, partitions and COPY. The state
    lives in :class:`~dbgate.audit.writer.AuditWriter`'s ``__init__``."""

    # ------------------------------------------------------------------ connecting

    async def _first_connect(self) -> None:
        """start()'s connection: a refusal for good raises AuditError (the spill files
        let go); an unreachable database leaves the writer unavailable (or buffering)."""
        try:
            conn = await asyncpg.connect(
                self._dsn,
                timeout=self.config.connect_timeout,
                server_settings={"application_name": "dbgate-audit"},
            )
        except _PERMANENT as e:
            self._release_files()
            raise AuditError(f"the state database refused the audit writer: {e}") from e
        except (ValueError, asyncpg.ClientConfigurationError) as e:
            self._release_files()
            raise AuditError(f"the state database DSN is not usable: {e}") from e
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            self._went_unavailable(f"cannot reach the state database: {e}")
        else:
            try:
                await self._check_schema(conn)
            except BaseException:
                await conn.close()
                self._release_files()
                raise
            self._conn = conn
            self._set_available(True, "")

    async def _connect(self) -> None:
        """Connect again, from the task: a failure schedules the next attempt
        (back-off); success learns where the chain ends and records the outage."""
        try:
            conn = await asyncpg.connect(
                self._dsn,
                timeout=self.config.connect_timeout,
                server_settings={"application_name": "dbgate-audit"},
            )
        except Exception as e:
            self._schedule_retry(f"cannot reach the state database: {e}")
            return
        try:
            if not self._schema_ok:
                await self._check_schema(conn)
            await asyncio.wait_for(self._reconcile(conn), self.config.write_timeout)
        except AuditError:
            await conn.close()
            raise
        except Exception as e:
            conn.terminate()
            self._schedule_retry(f"the state database failed: {e}")
            return
        self._conn = conn
        self._registered = False
        self._backoff = 0.1
        if self._unavailable_since is not None:
            since, self._unavailable_since = self._unavailable_since, None
            log.warning("audit: the state database is back; writing resumes")
            self._record_outage(since)
        self._set_available(True, "")
        self._signal()  # connected again: wake wait_available (buffering kept `available`)

    async def _check_schema(self, conn: Any) -> None:
        row = await conn.fetchrow(
            "SELECT current_setting('server_encoding') AS enc,"
            " to_regclass('dbgate.audit_events') IS NOT NULL AS tables,"
            " to_regprocedure('dbgate.audit_ensure_month(date)') IS NOT NULL AS fn"
        )
        if not (row["tables"] and row["fn"]):
            raise AuditError(
                "the state database has no audit schema: apply the state migrations first"
            )
        if row["enc"] != "UTF8":
            raise AuditError(f"the state database's encoding is {row['enc']}; the audit needs UTF8")
        self._schema_ok = True

    async def _reconcile(self, conn: Any) -> None:
        """Learn where our chain ends in the database: a batch whose COMMIT answer was
        lost may be there already, and must not be written twice."""
        row = await conn.fetchrow(HEAD_SQL, self.chain)
        if row is None:
            return
        db_seq, db_hash = int(row["seq"]), bytes(row["hash"])
        if db_seq > self._seq:
            raise AuditError(
                f"chain {self.chain} already has {db_seq} records in the state database, "
                "written by another process: a chain has one writer"
            )
        done = [r for r in self._pending if r.seq <= db_seq]
        if done:
            if done[-1].hash != db_hash:
                raise AuditError(f"chain {self.chain} in the state database forks from ours")
            self._pending = self._pending[len(done) :]
            self._committed(done)
        if db_seq > self._committed_seq:
            self._committed_seq, self._committed_hash = db_seq, db_hash
            self._committed_logged_us = None

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), 2)
            except Exception:
                conn.terminate()

    # ------------------------------------------------------------------ outages

    def _schedule_retry(self, why: str) -> None:
        self._next_attempt = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.config.retry_max_seconds)
        self._went_unavailable(why)

    def _went_unavailable(self, why: str) -> None:
        if self._unavailable_since is None:
            self._unavailable_since = self._clock()
            log.error("audit: %s", why)
        self._last_error = why
        buffering_ok = self._buffering and self._spill is not None and self._spill_has_room()
        self._set_available(buffering_ok, "" if buffering_ok else f"audit unavailable: {why}")

    def _record_outage(self, since: float) -> None:
        """A record of the outage itself (not after chain_end: nothing may follow it)."""
        if not self._closing:
            details = {
                "since": iso(round(since * 1_000_000)),
                "until": iso(round(self._clock() * 1_000_000)),
                "error": self._last_error,
                "spilled": self._spill.records if self._spill is not None else 0,
            }
            if self._refused_unrecorded:
                # [identity, count] pairs: details hold scalars and lists
                details["refused_unrecorded"] = sorted(map(list, self._refused_unrecorded.items()))
                self._refused_unrecorded = {}
            if self._sessions_unrecorded:  # [event, identity, count]
                details["sessions_unrecorded"] = sorted(
                    [*key, n] for key, n in self._sessions_unrecorded.items()
                )
                self._sessions_unrecorded = {}
            self._enqueue(WriterEvent("unavailable", details, self._clock()), urgent=False)

    # ------------------------------------------------------------------ writing

    async def _register(self, conn: Any, identity: dict[str, Any]) -> None:
        """Claim the chain in dbgate.audit_chains (idempotent for its own writer)."""
        started = from_us(parse_iso(identity["started_at"]))
        await conn.execute(
            _REGISTER_SQL,
            identity["chain"],
            str(identity.get("replica", "")),
            str(identity.get("host", "")),
            int(identity.get("pid", 0)),
            str(identity.get("version", "")),
            started,
        )
        row = await conn.fetchrow(
            "SELECT host, pid, started_at FROM dbgate.audit_chains WHERE chain = $1",
            identity["chain"],
        )
        if identity["chain"] == self.chain and (
            row["host"] != identity["host"]
            or row["pid"] != identity["pid"]
            or row["started_at"] != started
        ):
            raise AuditError(
                f"chain {self.chain} is registered by another process "
                f"({row['host']} pid {row['pid']}): a chain has one writer"
            )

    async def _ensure_months(self, conn: Any, logged: set[int]) -> None:
        """Create the month partitions these records go to (once per month and process)."""
        months = {from_us(us).date().replace(day=1) for us in logged} - self._months
        for month in sorted(months):
            await conn.fetchval("SELECT dbgate.audit_ensure_month($1)", month)
            self._months.add(month)

    async def _copy(self, conn: Any, rows: list[bytes], identity: dict[str, Any]) -> None:
        """Commit binary COPY rows (:mod:`dbgate.audit.binary`) in one transaction."""
        async with conn.transaction():
            if identity["chain"] != self.chain or not self._registered:
                await self._register(conn, identity)
            await conn.copy_to_table(
                "audit_events",
                schema_name="dbgate",
                columns=COPY_COLUMNS,
                source=binary.Chunks(rows),
                format="binary",
            )
