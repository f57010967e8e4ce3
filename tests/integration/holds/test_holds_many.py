"""Many held statements on one process, and sessions that are not held.

A held statement parks only its own session: the others keep running ordinary
statements while it waits. A hundred held at once are each decided on their own
(half approved, half rejected, in a shuffled order) and each client gets exactly
its own outcome.
"""

from __future__ import annotations

import asyncio
import random

import asyncpg

from tests.integration.holds.clients import AsyncpgNotices
from tests.integration.holds.harness import APPROVER, HoldsEnv, admin_execute

HELD = 100


async def test_other_sessions_run_while_one_is_held(holds: HoldsEnv) -> None:
    t = holds.table("many_bystander", 3)
    held = await asyncpg.connect(holds.dsn)
    notices = AsyncpgNotices(held)
    others = [await asyncpg.connect(holds.dsn) for _ in range(3)]
    try:
        running = asyncio.create_task(held.execute(f"DELETE FROM {t}"))
        rid = await notices.held()

        async def ordinary(conn: asyncpg.Connection, k: int) -> int:
            total = 0
            for i in range(50):
                total += await conn.fetchval("SELECT $1::int + 1", i)
                await conn.execute(f"INSERT INTO {t} (id) VALUES ($1)", 1000 + k * 100 + i)
            async with conn.transaction():
                total += await conn.fetchval(f"SELECT count(*) FROM {t} WHERE id > $1", 999)
            return total

        results = await asyncio.gather(*(ordinary(c, k) for k, c in enumerate(others)))
        assert all(r >= sum(range(1, 51)) for r in results)
        assert not running.done()  # all of that happened while the statement was held
        assert (await holds.app.arequest(rid))["status"] == "pending"
        await holds.app.aapprove(rid)
        assert await running == "DELETE 153"
    finally:
        await held.close()
        for c in others:
            await c.close()


async def test_a_hundred_held_at_once_are_each_decided_correctly(holds: HoldsEnv) -> None:
    tables = [f"many_{i}" for i in range(HELD)]
    admin_execute(
        holds.admin_dsn,
        "DO $$ BEGIN FOR i IN 0.." + str(HELD - 1) + " LOOP "
        "EXECUTE format('DROP TABLE IF EXISTS many_%s', i); "
        "EXECUTE format('CREATE TABLE many_%s (id int PRIMARY KEY, note text)', i); "
        "EXECUTE format('INSERT INTO many_%s VALUES (1, ''a''), (2, ''b'')', i); "
        "END LOOP; END $$",
    )
    conns = await asyncio.gather(*(asyncpg.connect(holds.dsn) for _ in range(HELD)))
    listeners = [AsyncpgNotices(c) for c in conns]
    try:
        running = [
            asyncio.create_task(c.execute(f"DELETE FROM {t}"))
            for c, t in zip(conns, tables, strict=True)
        ]
        rids = await asyncio.gather(*(n.held() for n in listeners))
        assert len(set(rids)) == HELD
        pending = holds.app.rows(
            "SELECT id, statement FROM dbgate.approvals WHERE id = ANY($1::bigint[])", rids
        )
        by_id = {r["id"]: r["statement"] for r in pending}
        assert [by_id[r] for r in rids] == [f"DELETE FROM {t}" for t in tables]

        order = list(range(HELD))
        random.Random(7).shuffle(order)

        async def decide(i: int) -> None:
            if i % 2 == 0:
                await holds.app.aapprove(rids[i], f"ok {i}")
            else:
                await holds.app.areject(rids[i], f"no {i}")

        await asyncio.gather(*(decide(i) for i in order))
        outcomes = await asyncio.gather(*running, return_exceptions=True)
        for i, outcome in enumerate(outcomes):
            if i % 2 == 0:
                assert outcome == "DELETE 2", (i, outcome)
            else:
                assert isinstance(outcome, asyncpg.InsufficientPrivilegeError), (i, outcome)
                assert outcome.message.endswith(f"rejected by {APPROVER}: no {i}")
        counts = [holds.count(t) for t in tables]
        assert counts == [0 if i % 2 == 0 else 2 for i in range(HELD)]
        assert all(await asyncio.gather(*(c.fetchval("SELECT true") for c in conns)))
    finally:
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
        admin_execute(
            holds.admin_dsn,
            "DO $$ BEGIN FOR i IN 0.." + str(HELD - 1) + " LOOP "
            "EXECUTE format('DROP TABLE IF EXISTS many_%s', i); END LOOP; END $$",
        )
