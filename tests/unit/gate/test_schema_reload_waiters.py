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
