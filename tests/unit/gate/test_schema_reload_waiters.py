"""Waiters for a schema reload, when another waiter starts the next load meanwhile."""

from __future__ import annotations

import asyncio
import time

from dbgate.gate import schema_loads
from dbgate.gate.schema_loads import SchemaLoads


def test_a_waiter_reads_the_load_it_waited_for_even_when_a_newer_one_runs(
    monkeypatch: object,
) -> None:
    """Many sessions wait for reloads at once (a hundred held statements approved
    together, each naming a table new to the snapshot). One whose load finished may
    resume after another waiter started the next load: it must report the load it
    waited for, not ask the still-running one for its outcome (that raised
    InvalidStateError and refused the statement with an internal error)."""
    monkeypatch.setattr(schema_loads, "RELOAD_INTERVAL_SECONDS", 0.0)  # type: ignore[attr-defined]

    async def scenario() -> None:
        loads_started: list[str] = []

        async def load(database: str) -> str:
            loads_started.append(database)
            if len(loads_started) == 1:
                # another waiter starts the next load before this one's waiter resumes
                loads._start(database)
                await asyncio.sleep(0)
                return "snapshot 1"
            await asyncio.sleep(0.01)
            return "snapshot 2"

        loads: SchemaLoads[str] = SchemaLoads("the schema", load)
        since = time.monotonic()
        await loads.reload_since("db", since)  # returns once the first load is done
        assert len(loads_started) == 2
        await loads.reload_since("db", since)
        assert loads.loaded["db"] in ("snapshot 1", "snapshot 2")

    asyncio.run(scenario())


def test_a_reload_that_found_nothing_changed_keeps_decisions() -> None:
    """The PII schema is read again every 30 s while it is used: a reload that found
    the schema as it was (``reloaded_unchanged``) must not make every session forget
    its remembered verdicts, and the room keeps its coverage and plans."""
    from dbgate.pii.schema import SchemaSnapshot

    class Room:
        reloaded_unchanged = False

    async def scenario() -> None:
        room = Room()

        async def load(database: str) -> Room:
            return room

        loads: SchemaLoads[Room] = SchemaLoads("the schema", load)
        changes: list[int] = []
        loads.on_change.append(lambda: changes.append(1))
        await loads.ensure("db")
        assert changes == [1]
        room.reloaded_unchanged = True
        loads.refresh_soon("db")
        await loads._loading["db"]
        assert changes == [1]
        room.reloaded_unchanged = False
        loads.refresh_soon("db")
        await loads._loading["db"]
        assert changes == [1, 1]

    asyncio.run(scenario())
    a = SchemaSnapshot.build({"public.t": ["id", "email"]})
    b = SchemaSnapshot.build({"public.t": ["id", "email"]})
    c = SchemaSnapshot.build({"public.t": ["id", "email", "phone"]})
    assert a.version != b.version and a.same_as(b) and not a.same_as(c)


def test_the_schema_is_in_flux_from_a_ddl_to_the_load_after_its_transaction(
    monkeypatch: object,
) -> None:
    """From the decision of a statement that changes the schema until a load that
    started after its transaction ended is done, the snapshot may be wrong: decisions
    taken from it are dropped at the start (``changed``), and ``in_flux`` says so."""
    monkeypatch.setattr(schema_loads, "RELOAD_INTERVAL_SECONDS", 0.0)  # type: ignore[attr-defined]

    async def scenario() -> None:
        gate = asyncio.Event()

        async def load(database: str) -> str:
            await gate.wait()
            return "snapshot"

        loads: SchemaLoads[str] = SchemaLoads("the schema", load)
        changes: list[int] = []
        loads.on_change.append(lambda: changes.append(1))
        gate.set()
        await loads.ensure("db")
        changes.clear()
        assert not loads.in_flux("db")
        loads.change_began("db")
        loads.change_began("db")  # two sessions
        assert loads.in_flux("db") and len(changes) == 2
        gate.clear()
        loads.change_ended("db")
        assert loads.in_flux("db")  # the other is still open
        loads.change_ended("db")
        await asyncio.sleep(0.01)
        assert loads.in_flux("db")  # its load is not done
        gate.set()
        for _ in range(100):
            await asyncio.sleep(0.001)
            if not loads.in_flux("db"):
                break
        assert not loads.in_flux("db")
        assert not loads.in_flux("other")

    asyncio.run(scenario())
