"""Server connection slots: a limit, a fair queue, a timeout, no slot ever lost; and
the limit itself, derived from or capped by the server's own."""

from __future__ import annotations

import asyncio

import pytest

from dbgate.proxy.capacity import (
    FALLBACK_TOTAL,
    REFRESH_SECONDS,
    NoServerSlot,
    ServerCapacity,
    ServerLimits,
    ServerSlots,
    derived_total,
    effective_limit,
    share,
)


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


# ----------------------------------------------------------------- resizing the pool


async def test_a_higher_limit_lets_waiters_in_at_once_in_order() -> None:
    slots = ServerSlots(1)
    await slots.acquire(1)
    first = asyncio.ensure_future(slots.acquire(30))
    second = asyncio.ensure_future(slots.acquire(30))
    third = asyncio.ensure_future(slots.acquire(30))
    await asyncio.sleep(0)
    slots.resize(3)
    await asyncio.gather(first, second)
    assert not third.done() and slots.used == 3 and slots.waiting == 1
    slots.release()
    await third
    assert slots.used == 3


async def test_a_lower_limit_keeps_running_sessions_and_hands_on_no_slot_above_it() -> None:
    slots = ServerSlots(3)
    for _ in range(3):
        await slots.acquire(1)
    slots.resize(1)
    waiter = asyncio.ensure_future(slots.acquire(30))
    await asyncio.sleep(0)
    slots.release()  # 2 in use, limit 1: not handed on
    slots.release()  # 1 in use: still not below the limit
    await asyncio.sleep(0)
    assert not waiter.done() and slots.used == 1
    slots.release()  # the last one of the old crowd: now the waiter's turn
    await waiter
    assert slots.used == 1 and slots.waiting == 0


def test_the_limit_is_never_below_one() -> None:
    slots = ServerSlots(5)
    slots.resize(0)
    assert slots.limit == 1


# ----------------------------------------------------------------- the server's limit

PG_DEFAULT = ServerLimits(max_connections=100, superuser_reserved=3)
SMALL = ServerLimits(max_connections=12, superuser_reserved=3, reserved=2)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {
                "max_connections": "100",
                "superuser_reserved_connections": "3",
                "reserved_connections": "0",
            },
            ServerLimits(100, 3, 0),
        ),
        (  # before PostgreSQL 16
            {
                "max_connections": "100",
                "superuser_reserved_connections": "3",
                "reserved_connections": None,
            },
            ServerLimits(100, 3, 0),
        ),
        (
            {
                "max_connections": "12",
                "superuser_reserved_connections": "3",
                "reserved_connections": "2",
            },
            ServerLimits(12, 3, 2),
        ),
    ],
)
def test_server_limits_from_its_settings(
    values: dict[str, str | None], expected: ServerLimits
) -> None:
    assert ServerLimits.from_settings(values) == expected


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"max_connections": None}, "did not report max_connections"),
        ({"max_connections": "many"}, "max_connections = 'many'"),
        ({"max_connections": "10", "superuser_reserved_connections": "-1"}, "= -1"),
    ],
)
def test_settings_that_make_no_sense_are_refused(values: dict[str, str | None], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ServerLimits.from_settings(values)


def test_the_server_accepts_its_connections_less_both_reserves() -> None:
    assert PG_DEFAULT.available == 97
    assert SMALL.available == 7
    assert ServerLimits(5, 3, 4).available == 0
    assert SMALL.describe() == (
        "max_connections 12 - superuser_reserved_connections 3 - reserved_connections 2 = 7"
    )


@pytest.mark.parametrize(
    ("configured", "server", "seat", "value", "because"),
    [
        # not configured: derived from the server, a margin left to others
        (None, PG_DEFAULT, (0, 1), 88, "derived from the server: max_connections 100"),
        (None, SMALL, (0, 1), 5, "less 2 for other clients"),
        (None, ServerLimits(2, 0), (0, 1), 1, "derived"),
        # configured and accepted
        (50, PG_DEFAULT, (0, 1), 50, "upstream.max_server_conn"),
        (97, PG_DEFAULT, (0, 1), 97, "upstream.max_server_conn"),
        # configured above what the server accepts: capped
        (1000, PG_DEFAULT, (0, 1), 97, "capped to what the server accepts"),
        (50, SMALL, (0, 1), 7, "= 7"),
        # unknown server: the configured value, or the fallback
        (50, None, (0, 1), 50, "the server's limit is unknown"),
        (None, None, (0, 1), FALLBACK_TOTAL, "could not be read"),
        # workers: each its share of the total
        (None, PG_DEFAULT, (0, 2), 44, "this worker's share: 2 workers"),
        (None, PG_DEFAULT, (0, 3), 30, "derived"),  # 88 = 30 + 29 + 29
        (None, PG_DEFAULT, (2, 3), 29, "derived"),
        (30, PG_DEFAULT, (0, 2), 30, "upstream.max_server_conn"),  # 60 over 2 workers
        (500, PG_DEFAULT, (1, 2), 48, "capped"),  # 97 = 49 + 48
    ],
)
def test_effective_limit(
    configured: int | None,
    server: ServerLimits | None,
    seat: tuple[int, int],
    value: int,
    because: str,
) -> None:
    limit = effective_limit(configured, server, seat)
    assert limit.value == value
    assert because in limit.reason


def test_workers_together_never_exceed_what_the_server_accepts() -> None:
    for available in range(0, 300, 7):
        server = ServerLimits(available + 3, 3)
        for count in (1, 2, 3, 4, 8):
            total = sum(effective_limit(None, server, (i, count)).value for i in range(count))
            assert total <= max(derived_total(available), count)
            configured = [share(10_000, i, count) for i in range(count)]
            capped = sum(
                effective_limit(configured[i], server, (i, count)).value for i in range(count)
            )
            assert capped <= max(available, count)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


SETTINGS_100 = {
    "max_connections": "100",
    "superuser_reserved_connections": "3",
    "reserved_connections": "0",
}


def test_until_the_server_is_read_one_connection_at_a_time() -> None:
    slots = ServerSlots(1)
    capacity = ServerCapacity(slots, 50)
    assert slots.limit == 1
    assert capacity.due()
    assert not capacity.due()  # one session reads, the others go on
    capacity.learned(SETTINGS_100)
    assert slots.limit == 50 and capacity.limit.reason == "upstream.max_server_conn"


def test_the_limits_are_read_again_after_a_while_or_after_a_failure() -> None:
    clock = Clock()
    slots = ServerSlots(1)
    capacity = ServerCapacity(slots, None, clock=clock)
    assert capacity.due()
    capacity.learned(SETTINGS_100)
    assert slots.limit == 88
    assert not capacity.due()
    clock.now += REFRESH_SECONDS - 1
    assert not capacity.due()
    clock.now += 2
    assert capacity.due()
    capacity.learned({**SETTINGS_100, "max_connections": "20"})  # restarted smaller
    assert slots.limit == 15 and capacity.server == ServerLimits(20, 3)
    capacity.forget()  # the server was unreachable: read at the next login
    assert capacity.due()
    capacity.abandoned()  # that session went away before it could
    assert capacity.due()


def test_unreadable_limits_fall_back_and_are_tried_again_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    slots = ServerSlots(1)
    capacity = ServerCapacity(slots, None, clock=clock)
    assert capacity.due()
    capacity.unreadable("42501: permission denied")
    assert slots.limit == FALLBACK_TOTAL
    assert "cannot read the upstream server's connection limits" in caplog.text
    assert not capacity.due()
    clock.now += REFRESH_SECONDS
    assert capacity.due()
    capacity.learned({"max_connections": "nonsense"})  # as unreadable
    assert slots.limit == FALLBACK_TOTAL


def test_the_effective_limit_is_logged_when_it_changes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="dbgate.proxy")
    clock = Clock()
    capacity = ServerCapacity(ServerSlots(1), 1000, clock=clock)
    capacity.due()
    capacity.learned(SETTINGS_100)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == (
        "upstream.max_server_conn: 97 server connections (upstream.max_server_conn 1000 "
        "capped to what the server accepts: max_connections 100 - "
        "superuser_reserved_connections 3 = 97)"
    )
    clock.now += REFRESH_SECONDS
    capacity.due()
    capacity.learned(SETTINGS_100)
    assert len(caplog.records) == 1  # the same: not logged again


def test_without_reading_the_server_the_configured_limit_applies_at_once() -> None:
    slots = ServerSlots(1)
    capacity = ServerCapacity(slots, 40, read=False)
    assert slots.limit == 40 and not capacity.due()
    assert ServerCapacity(ServerSlots(1), None, (1, 2), read=False).slots.limit == 45


def test_a_configured_limit_the_server_accepts_is_confirmed_at_debug_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Connection events stay out of the INFO log; the operator's own value, confirmed,
    is not news. A cap, and the return from one, are."""
    caplog.set_level("DEBUG", logger="dbgate.proxy")
    clock = Clock()
    capacity = ServerCapacity(ServerSlots(1), 50, clock=clock)
    capacity.due()
    capacity.learned(SETTINGS_100)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("DEBUG", "upstream.max_server_conn: 50 server connections (upstream.max_server_conn)")
    ]
    caplog.clear()
    clock.now += REFRESH_SECONDS
    capacity.due()
    capacity.learned({**SETTINGS_100, "max_connections": "20"})  # restarted smaller: capped
    clock.now += REFRESH_SECONDS
    capacity.due()
    capacity.learned(SETTINGS_100)  # back to the configured value
    assert [r.levelname for r in caplog.records] == ["INFO", "INFO"]
