"""Shape approvals (mixin of :class:`~dbgate.approvals.store.ApprovalStore`): "this
fingerprint, for this identity, until then" — given from a request (``approve_shape``),
found and used by later statements (``find_shapes``, ``record_shape_use``), revoked by
any approver (``revoke_shape``), and read back (``get_shape``, ``list_shapes``).

A shape is given only by an approver who may decide the request it comes from, and
only for rules that need one approver. Every statement it lets through is recorded as
its own request (``mode`` ``shape``, approved and claimed at once).
"""

from __future__ import annotations

import asyncpg

from dbgate.approvals.eligibility import Approver, refusal
from dbgate.approvals.errors import ApprovalError, BadRequest, Conflict, Forbidden, NotFound
from dbgate.approvals.matching import fixes_parameters, shape_key
from dbgate.approvals.store.decisions import owners_of
from dbgate.approvals.store.records import (
    REQUEST_FIELD_COUNT,
    REQUEST_FIELDS,
    NewRequest,
    RequestRecord,
    ShapeRecord,
    placeholders,
)
from dbgate.pii.sql_mask import mask_text

_SHAPE_COLUMNS = """
    id, identity, fingerprint, params_fixed, statement, source_request, created_by, reason,
    created_at, expires_at, revoked_at, revoked_by, revoke_reason, uses,
    (revoked_at IS NULL AND expires_at > now()) AS active, database
"""


def _shape(row: asyncpg.Record) -> ShapeRecord:
    return ShapeRecord(**dict(row))


class Shapes:
    """Shape approvals. The state lives in
    :class:`~dbgate.approvals.store.ApprovalStore`'s ``__init__``."""

    async def approve_shape(
        self,
        request_id: int,
        approver: Approver,
        *,
        minutes: int,
        params_fixed: bool,
        reason: str,
        via: str = "api",
    ) -> tuple[ShapeRecord, RequestRecord]:
        """Allow this request's fingerprint for its identity for ``minutes`` (and approve
        the request itself if it is pending)."""
        reason = mask_text(reason)
        if not (isinstance(minutes, int) and 1 <= minutes <= self.max_shape_minutes):
            raise BadRequest(f"'minutes' must be an integer from 1 to {self.max_shape_minutes}")
        try:
            return await self._approve_shape(
                request_id,
                approver,
                minutes=minutes,
                params_fixed=params_fixed,
                reason=reason,
                via=via,
            )
        except (Forbidden, Conflict) as e:
            if isinstance(e, Conflict) and e.expired_now:
                await self._tell("expired", request_id, reason="nobody decided in time")
            raise await self._refusing(
                request_id, approver, f"approve shape via {via}", e
            ) from None

    async def _approve_shape(
        self,
        request_id: int,
        approver: Approver,
        *,
        minutes: int,
        params_fixed: bool,
        reason: str,
        via: str,
    ) -> tuple[ShapeRecord, RequestRecord]:
        async with self.db.connection() as conn:
            conflict: Conflict | None = None
            async with conn.transaction():
                row = await conn.fetchrow(
                    "SELECT status, identity, owners, approver_groups, approvals_needed, "
                    "fingerprint, statement, match_hash, database, context_hash "
                    "FROM dbgate.approval_requests "
                    "WHERE id = $1 FOR UPDATE",
                    request_id,
                )
                if row is None:
                    raise NotFound(f"approval request {request_id} does not exist")
                if not row["fingerprint"]:
                    raise Conflict(f"approval request {request_id} has no fingerprint to approve")
                key = shape_key(row["statement"]) or ""
                if not params_fixed and (fixes_parameters(key) or '"ExecuteStmt"' in key):
                    raise Conflict(
                        f"approval request {request_id} has parameters that are not data "
                        "(arguments of a function, such as set_config($1, $2, false), "
                        "object names, or a prepared statement it EXECUTEs): its shape can "
                        "only be approved with fixed values"
                    )
                if row["status"] == "pending":
                    conflict = await self._record_decision(
                        conn,
                        request_id,
                        approver,
                        approve=True,
                        reason=reason,
                        via=via,
                        needs_single=True,
                    )
                else:
                    if row["status"] not in ("approved", "executed"):
                        # A refused, lapsed or dead request is no approval to extend.
                        raise Conflict(
                            f"approval request {request_id} is {row['status']}: only a pending "
                            "or approved request can be approved as a shape"
                        )
                    owners = owners_of(row["owners"], row["identity"], self.owners)
                    why = refusal(approver, row["identity"], row["approver_groups"], owners)
                    if why is not None:
                        raise Forbidden(why)
                    if row["approvals_needed"] > 1:
                        raise Forbidden(
                            f"this request needs {row['approvals_needed']} approvers: a shape "
                            "approval is only offered for rules that need one"
                        )
                if conflict is None:
                    shape = await conn.fetchrow(
                        "INSERT INTO dbgate.shape_approvals (identity, fingerprint, params_fixed, "
                        "match_hash, statement, source_request, created_by, reason, expires_at, "
                        "database, context_hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, "
                        "now() + $9 * interval '1 minute', $10, $11) "
                        f"RETURNING {_SHAPE_COLUMNS}",
                        row["identity"],
                        row["fingerprint"],
                        params_fixed,
                        row["match_hash"] if params_fixed else None,
                        row["statement"],
                        request_id,
                        approver.name,
                        reason,
                        minutes,
                        row["database"],
                        row["context_hash"],
                    )
            if conflict is not None:
                raise conflict
        await self._tell("approved", request_id, approver.name, f"shape {shape['id']}: {reason}")
        return _shape(shape), await self.get(request_id)

    async def find_shapes(
        self,
        identity: str,
        fingerprint: str,
        match_hash: bytes,
        database: str = "",
        context_hash: bytes = b"",
    ) -> list[ShapeRecord]:
        """Active shape approvals of this identity and fingerprint in this context (a
        fixed one only with these very values), oldest first. A fingerprint is no
        proof of sameness: the caller compares the statement too. A shape approved
        before contexts were recorded has none and covers nothing."""
        if not fingerprint:
            return []
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {_SHAPE_COLUMNS} FROM dbgate.shape_approvals "
                "WHERE identity = $1 AND fingerprint = $2 AND revoked_at IS NULL "
                "AND expires_at > now() AND (NOT params_fixed OR match_hash = $3) "
                "AND database = $4 AND context_hash = $5 ORDER BY id LIMIT 20",
                identity,
                fingerprint,
                match_hash,
                database,
                context_hash,
            )
        return [_shape(row) for row in rows]

    async def creator(self, name: str) -> Approver | None:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                "SELECT name, groups, disabled_at FROM dbgate.approvers WHERE name = $1", name
            )
        if row is None:
            return None
        return Approver(row["name"], frozenset(row["groups"]), row["disabled_at"] is not None)

    async def record_shape_use(self, shape_id: int, req: NewRequest) -> RequestRecord | None:
        """Record a statement that runs under a shape approval (approved, claimed);
        None when the shape was revoked or expired meanwhile."""
        async with self.db.connection() as conn, conn.transaction():
            shape = await conn.fetchrow(
                "UPDATE dbgate.shape_approvals SET uses = uses + 1 "
                "WHERE id = $1 AND revoked_at IS NULL AND expires_at > now() "
                "RETURNING created_by, reason",
                shape_id,
            )
            if shape is None:
                return None
            why = f"shape approval {shape_id} by {shape['created_by']}" + (
                f": {shape['reason']}" if shape["reason"] else ""
            )
            rid = await conn.fetchval(
                "INSERT INTO dbgate.approval_requests (status, mode, deadline, "
                + REQUEST_FIELDS
                + ", decided_at, finished_at, valid_until, claimed_at, reason, shape_id) "
                "VALUES ('approved', 'shape', now(), "
                + placeholders(1)
                + f", now(), now(), now(), now(), ${REQUEST_FIELD_COUNT + 1}, ${REQUEST_FIELD_COUNT + 2}) RETURNING id",
                *req.values(),
                why,
                shape_id,
            )
            await conn.execute(
                "INSERT INTO dbgate.approval_decisions (request_id, approver, decision, "
                "reason, via) VALUES ($1, $2, 'approve', $3, 'shape')",
                rid,
                shape["created_by"],
                why,
            )
        return await self.get(rid)

    async def revoke_shape(self, shape_id: int, approver: Approver, reason: str) -> ShapeRecord:
        """Any approver may revoke a shape approval (it only narrows what runs). Told
        as step ``revoked`` of the request the shape was given from."""
        reason = mask_text(reason)
        try:
            shape = await self._revoke_shape(shape_id, approver, reason)
        except Conflict as e:
            try:
                source = await self._shape_source(shape_id)
            except ApprovalError:  # the refusal stands; only its record is missing
                source = None
            if source is not None:
                await self.refused(source, approver.name, f"revoke shape {shape_id}", e.message)
            raise
        if shape.source_request is not None:
            why = f"shape {shape_id} revoked" + (f": {reason}" if reason else "")
            await self._tell("revoked", shape.source_request, approver.name, why)
        return shape

    async def _shape_source(self, shape_id: int) -> int | None:
        async with self.db.connection() as conn:
            value = await conn.fetchval(
                "SELECT source_request FROM dbgate.shape_approvals WHERE id = $1", shape_id
            )
        return int(value) if value is not None else None

    async def _revoke_shape(self, shape_id: int, approver: Approver, reason: str) -> ShapeRecord:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                "UPDATE dbgate.shape_approvals SET revoked_at = now(), revoked_by = $2, "
                "revoke_reason = $3 WHERE id = $1 AND revoked_at IS NULL AND expires_at > now() "
                f"RETURNING {_SHAPE_COLUMNS}",
                shape_id,
                approver.name,
                reason,
            )
            if row is None:
                old = await conn.fetchrow(
                    f"SELECT {_SHAPE_COLUMNS} FROM dbgate.shape_approvals WHERE id = $1", shape_id
                )
                if old is None:
                    raise NotFound(f"shape approval {shape_id} does not exist")
                state = "revoked" if old["revoked_at"] is not None else "expired"
                raise Conflict(f"shape approval {shape_id} is already {state}")
        return _shape(row)

    async def get_shape(self, shape_id: int) -> ShapeRecord:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {_SHAPE_COLUMNS} FROM dbgate.shape_approvals WHERE id = $1", shape_id
            )
        if row is None:
            raise NotFound(f"shape approval {shape_id} does not exist")
        return _shape(row)

    async def list_shapes(
        self,
        *,
        active: bool | None = None,
        identity: str | None = None,
        fingerprint: str | None = None,
        limit: int = 100,
    ) -> list[ShapeRecord]:
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {_SHAPE_COLUMNS} FROM dbgate.shape_approvals "
                "WHERE ($1::bool IS NULL OR (revoked_at IS NULL AND expires_at > now()) = $1) "
                "AND ($2::text IS NULL OR identity = $2) "
                "AND ($3::text IS NULL OR fingerprint = $3) ORDER BY id DESC LIMIT $4",
                active,
                identity,
                fingerprint,
                limit,
            )
        return [_shape(r) for r in rows]
