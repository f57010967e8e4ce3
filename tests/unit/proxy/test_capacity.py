"""Server connection slots: a limit, a fair queue, a timeout, no slot ever lost."""

from __future__ import annotations

import asyncio

import pytest

from dbgate.proxy.capacity import NoServerSlot, ServerSlots


async def test_slots_are_taken_up_to_the_limit_then_clients_queue_in_order() -> None:
    slots = ServerSlots(2)
    await slots.acquire(1)
    await slots.acquire(1)
    order: list[str] = []

    async def client(name: str) -> None:
        await slots.acquire(30)
        order.append(name)

    first = asyncio.ensure_future(client("first"))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(client("second"))
    await asyncio.sleep(0)
    assert slots.waiting == 2 and slots.used == 2
    slots.release()
    await first
    assert order == ["first"] and slots.used == 2
    slots.release()
    await second
    assert order == ["first", "second"] and slots.waiting == 0
    slots.release()
    slots.release()
    assert slots.used == 0


async def test_a_newcomer_does_not_overtake_the_queue() -> None:
    slots = ServerSlots(1)
    await slots.acquire(1)
    waiter = asyncio.ensure_future(slots.acquire(30))
    await asyncio.sleep(0)
    slots.release()  # handed to the waiter, not put back
    newcomer = asyncio.ensure_future(slots.acquire(30))
    await waiter
    await asyncio.sleep(0)
    assert not newcomer.done() and slots.used == 1
    slots.release()
    await newcomer


async def test_the_wait_times_out_with_no_server_slot() -> None:
    slots = ServerSlots(1)
    await slots.acquire(1)
    with pytest.raises(NoServerSlot, match=r"within 0\.05 s"):
        await slots.acquire(0.05)
    assert slots.waiting == 0 and slots.used == 1
    slots.release()
    assert slots.used == 0


async def test_a_client_that_leaves_the_queue_loses_no_slot() -> None:
    slots = ServerSlots(1)
    await slots.acquire(1)
    leaving = asyncio.ensure_future(slots.acquire(30))
    staying = asyncio.ensure_future(slots.acquire(30))
    await asyncio.sleep(0)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    slots.release()
    await staying  # the slot went to the one still waiting
    assert slots.used == 1 and slots.waiting == 0


async def test_a_slot_granted_as_the_waiter_is_cancelled_is_never_lost() -> None:
    slots = ServerSlots(1)
    await slots.acquire(1)
    first = asyncio.ensure_future(slots.acquire(30))
    second = asyncio.ensure_future(slots.acquire(30))
    await asyncio.sleep(0)
    slots.release()  # granted to first ...
    first.cancel()  # ... which is cancelled before it runs again
    (outcome,) = await asyncio.gather(first, return_exceptions=True)
    if outcome is None:  # the grant won (wait_for may swallow a late cancel): first holds it
        assert not second.done()
        slots.release()
    await second  # either way the slot reaches the next in line
    assert slots.used == 1 and slots.waiting == 0
    slots.release()
    assert slots.used == 0
