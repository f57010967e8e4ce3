"""Unique keys of each upstream database, for the classifier's proofs of narrowness.

The classifier proves a read or write narrow only from unique keys
(:mod:`dbgate.policy.keys`); without them nothing is narrow and every read and
write runs under the rules' run-time limits. The gate loads one
:class:`~dbgate.policy.keys.KeyCatalog` per upstream database (as dbgate's
upstream login, which sees at least what the agents' roles see), through
:class:`~dbgate.gate.schema_loads.SchemaLoads`: before the first statement there,
again after DDL, when a statement names a relation the catalog lacks, and in the
background once a snapshot is older than ``schema_loads.MAX_AGE_SECONDS``. Each
session sees it through its own ``search_path`` and user, as the server resolves
names (both are reported by the server: ParameterStatus).
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from dbgate.gate.schema_loads import SchemaLoads, upstream_dsn
from dbgate.policy.catalog_settings import split_identifier_list
from dbgate.policy.keys import KEYS_QUERY, KeyCatalog, key_catalog_from_rows
from dbgate.proxy.session_info import SessionInfo

if TYPE_CHECKING:
    from dbgate.config import Config

_STATE_KEY = "keys"
_DEFAULT_PATH = ("$user", "public")


class KeyCatalogs:
    """One key catalog per upstream database, and each session's view of it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.loads: SchemaLoads[KeyCatalog] = SchemaLoads("the unique keys", self._load)
        self._versions = itertools.count(1)

    async def _load(self, database: str) -> KeyCatalog:
        import asyncpg

        conn = await asyncpg.connect(**upstream_dsn(self.config, database), timeout=10)
        try:
            rows = await conn.fetch(KEYS_QUERY)
        finally:
            await conn.close()
        return key_catalog_from_rows(rows, version=next(self._versions))

    def ensure(self, database: str) -> Awaitable[KeyCatalog]:
        return self.loads.ensure(database)

    def for_session(self, session: SessionInfo) -> KeyCatalog | None:
        """The session's view of its database's keys (None until they are loaded)."""
        loads = self.loads
        base = loads.loaded.get(session.database)
        if base is None:
            return None
        # a key dropped, or inheritance children added, outside dbgate: an old
        # snapshot would go on proving reads narrow that are not
        loads.refresh_if_old(session.database)
        server = session.server_params
        path = server.get("search_path")
        user = server.get("session_authorization", "")
        cached: Any = session.state.get(_STATE_KEY)
        if cached is not None and cached[0] is base and cached[1] == path and cached[2] == user:
            return cached[3]  # type: ignore[no-any-return]
        names = _DEFAULT_PATH if path is None else (split_identifier_list(path) or ())
        view = base.with_search_path(names, user=user)
        session.state[_STATE_KEY] = (base, path, user, view)
        return view

    def unknown(self, catalog: KeyCatalog, tables: frozenset[str]) -> list[str]:
        """Tables of a statement the catalog cannot place (perhaps created since)."""
        out = []
        for t in tables:
            schema, _, name = t.rpartition(".")
            if catalog.relation(schema or None, name) is None:
                out.append(t)
        return out
