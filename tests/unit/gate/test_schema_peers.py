"""What one process makes of another's schema changes, told through the state database
(``dbgate.gate.schema_peers`` over ``schema_notify``): no server, the notifications are
handed in."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from dbgate.gate import schema_notify
from dbgate.gate.schema_loads import SchemaLoads
from dbgate.gate.schema_notify import NotifyTransport
from dbgate.gate.schema_peers import SchemaPeers


class Pool:
    """Records what would be notified; ``fail`` makes it raise as an unreachable state
    database does. The first notification takes longer than the others (a connection
    of the pool opened first)."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.fail = False
        self.calls = 0

    async def execute(self, sql: str, channel: str, payload: str) -> None:
        if self.fail:
            raise OSError("unreachable")
        assert channel == schema_notify.CHANNEL
        self.calls += 1
        if self.calls == 1:
            for _ in range(3):
                await asyncio.sleep(0)  # yields to the others; no time passes
        self.sent.append(json.loads(payload))


def _peers() -> tuple[SchemaPeers, SchemaLoads[str], Pool]:
    async def load(database: str) -> str:
        return "snapshot"

    loads: SchemaLoads[str] = SchemaLoads("the schema", load)
    pool = Pool()
    return SchemaPeers(NotifyTransport("postgresql://unused", pool), [loads]), loads, pool


def _said(sender: str, database: str, is_open: bool) -> str:
    return json.dumps({"r": sender, "db": database, "open": is_open})


def test_another_replicas_ddl_puts_the_database_in_flux_until_read_again() -> None:
    async def scenario() -> None:
        peers, loads, _ = _peers()
        await loads.ensure("db")
        changed: list[int] = []
        loads.on_change.append(lambda: changed.append(1))
        peers.heard(_said("other", "db", True))
        assert loads.in_flux("db") and not loads.in_flux("elsewhere")
        assert changed  # verdicts remembered from the old snapshot are dropped
        peers.heard(_said("other", "db", True))  # the heartbeat: still one transaction
        peers.heard(_said("other", "db", False))
        assert loads.in_flux("db")  # until the snapshot is read after it
        await asyncio.gather(*loads._settling)
        assert not loads.in_flux("db")

    asyncio.run(scenario())


def test_an_end_heard_without_its_beginning_reads_the_snapshot_again() -> None:
    async def scenario() -> None:
        peers, loads, _ = _peers()
        await loads.ensure("db")
        peers.heard(_said("other", "db", False))
        assert loads.in_flux("db")
        await asyncio.gather(*loads._settling)
        assert not loads.in_flux("db")

    asyncio.run(scenario())


def test_its_own_announcements_and_malformed_ones_change_nothing() -> None:
    async def scenario() -> None:
        peers, loads, _ = _peers()
        await loads.ensure("db")
        peers.heard(_said(peers.sender, "db", True))
        peers.heard("not json")
        peers.heard(json.dumps({"db": "db"}))
        assert not loads.in_flux("db")

    asyncio.run(scenario())


def test_a_sender_not_heard_of_again_is_taken_as_done() -> None:
    """A replica that crashed inside its DDL transaction (the server rolled it back)
    never says it ended: its word expires."""

    async def scenario() -> None:
        peers, loads, _ = _peers()
        await loads.ensure("db")
        peers.heard(_said("other", "db", True))
        peers._expire(float("-inf"))  # nothing older than the beginning of time
        assert loads.in_flux("db")
        peers._expire(float("inf"))
        await asyncio.gather(*loads._settling)
        assert not loads.in_flux("db")

    asyncio.run(scenario())


def test_ddl_is_announced_before_it_runs_and_its_end_once_none_is_left() -> None:
    async def scenario() -> None:
        peers, _, pool = _peers()
        assert await peers.opening("db")
        assert pool.sent == [{"r": peers.sender, "db": "db", "open": True}]
        peers.began("db")
        peers.began("db")
        peers.ended("db")
        await asyncio.gather(*peers._sends)
        assert [m["open"] for m in pool.sent] == [True, True, True]
        peers.ended("db")
        await asyncio.gather(*peers._sends)
        assert pool.sent[-1] == {"r": peers.sender, "db": "db", "open": False}
        pool.fail = True
        assert not await peers.opening("db")  # the statement is then refused

    asyncio.run(scenario())


def test_announcements_arrive_in_the_order_they_were_made() -> None:
    """A DDL transaction's beginning and end are sent side by side; an end that
    overtook its beginning left the others taking the database as changing for 30 s,
    and a beginning overtaken by the previous transaction's end as settled while the
    new DDL ran."""

    async def scenario() -> None:
        peers, _, pool = _peers()
        peers.began("db")
        peers.ended("db")
        await asyncio.gather(*peers._sends)
        assert [m["open"] for m in pool.sent] == [True, False]

    asyncio.run(scenario())
