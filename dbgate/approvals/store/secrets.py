"""Secrets shared by every replica (mixin of
:class:`~dbgate.approvals.store.ApprovalStore`): the first replica to ask creates one,
every other replica gets the same value (``dbgate.approval_secrets``). The approvals
service keeps its retry-matching key here when ``approvals.match_key`` is not set.
"""

from __future__ import annotations


class Secrets:
    """Shared secrets. The state lives in
    :class:`~dbgate.approvals.store.ApprovalStore`'s ``__init__``."""

    async def secret(self, name: str, new_value: bytes) -> bytes:
        """A secret shared by every replica, created with ``new_value`` the first time."""
        async with self.db.connection() as conn:
            await conn.execute(
                "INSERT INTO dbgate.approval_secrets (name, value) VALUES ($1, $2) "
                "ON CONFLICT (name) DO NOTHING",
                name,
                new_value,
            )
            value: bytes = await conn.fetchval(
                "SELECT value FROM dbgate.approval_secrets WHERE name = $1", name
            )
        return value
