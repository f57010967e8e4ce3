"""The unique keys are read again once their snapshot is old: DDL that did not pass
through dbgate (a migration dropping a key, a table given inheritance children) would
otherwise leave reads proven narrow that are not."""

from __future__ import annotations

import asyncio
from typing import Any

from dbgate.gate import schema_loads
from dbgate.gate.keys import KeyCatalogs
from dbgate.policy.keys import KeyCatalog, Relation
from dbgate.proxy.session_info import SessionInfo

_KEYED = KeyCatalog({"public.orders": Relation((frozenset({"id"}),))}, version=1)
_UNKEYED = KeyCatalog({"public.orders": Relation((), has_children=True)}, version=2)


def _catalogs(snapshots: list[KeyCatalog]) -> tuple[KeyCatalogs, list[str]]:
    loads_run: list[str] = []
    catalogs = KeyCatalogs(config=None)  # type: ignore[arg-type]

    async def load(database: str) -> KeyCatalog:
        loads_run.append(database)
        return snapshots[min(len(loads_run), len(snapshots)) - 1]

    catalogs.loads._load = load  # type: ignore[method-assign]
    return catalogs, loads_run


def _session() -> SessionInfo:
    return SessionInfo(7, "agent", "demo", "psql", "10.0.0.7:5000")


def test_an_old_key_snapshot_is_read_again_in_the_background(monkeypatch: Any) -> None:
    async def scenario() -> None:
        catalogs, loads_run = _catalogs([_KEYED, _UNKEYED])
        await catalogs.ensure("demo")
        session = _session()
        first = catalogs.for_session(session)
        assert first is not None and first.keys_of(None, "orders")
        monkeypatch.setattr(schema_loads, "MAX_AGE_SECONDS", 0.0)
        await asyncio.sleep(0.001)
        catalogs.for_session(session)  # old: a reload starts, the old one answers now
        for _ in range(10):
            await asyncio.sleep(0)
        assert loads_run == ["demo", "demo"]
        now = catalogs.for_session(session)
        assert now is not None and not now.keys_of(None, "orders")

    asyncio.run(scenario())


def test_a_fresh_key_snapshot_is_not_read_again() -> None:
    async def scenario() -> None:
        catalogs, loads_run = _catalogs([_KEYED])
        await catalogs.ensure("demo")
        for _ in range(100):
            catalogs.for_session(_session())
            await asyncio.sleep(0)
        assert loads_run == ["demo"]

    asyncio.run(scenario())
