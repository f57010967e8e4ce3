"""The memory budget: reservations for whole messages, granted first come first served."""

from __future__ import annotations

from collections.abc import Callable

from dbgate.proxy.budget import MemoryBudget


class Woken:
    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, name: str) -> Callable[[], None]:
        return lambda: self.names.append(name)


def test_reservations_within_the_limit_are_granted_at_once() -> None:
    budget = MemoryBudget(100)
    woken = Woken()
    a = budget.reserve(60, woken("a"))
    b = budget.reserve(40, woken("b"))
    assert a.granted and b.granted and budget.used == 100 and budget.waiting == 0
    a.release()
    b.release()
    assert budget.used == 0 and budget.peak == 100 and woken.names == []


def test_beyond_the_limit_a_reservation_waits_and_is_woken_in_order() -> None:
    budget = MemoryBudget(100)
    woken = Woken()
    a = budget.reserve(70, woken("a"))
    b = budget.reserve(50, woken("b"))
    c = budget.reserve(10, woken("c"))  # would fit, but must not overtake b
    assert not b.granted and not c.granted and budget.waiting == 2
    a.release()
    assert b.granted and c.granted and woken.names == ["b", "c"]
    assert budget.used == 60 and budget.used <= budget.limit


def test_a_message_larger_than_the_budget_waits_until_nothing_is_held() -> None:
    budget = MemoryBudget(100)
    woken = Woken()
    a = budget.reserve(30, woken("a"))
    big = budget.reserve(150, woken("big"))
    assert not big.granted
    a.release()
    assert big.granted and woken.names == ["big"]
    big.release()
    assert budget.used == 0


def test_a_waiting_reservation_given_up_lets_the_next_one_in() -> None:
    budget = MemoryBudget(100)
    woken = Woken()
    budget.reserve(60, woken("a"))
    b = budget.reserve(50, woken("b"))
    c = budget.reserve(30, woken("c"))
    assert not c.granted
    b.release()  # its session ended while it waited
    assert c.granted and woken.names == ["c"] and budget.waiting == 0
    b.release()  # twice: nothing happens
    assert budget.used == 90


def test_charged_bytes_count_and_delay_reservations() -> None:
    budget = MemoryBudget(100)
    woken = Woken()
    budget.charge(80)  # queued behind a waiting statement: never refused
    assert budget.used == 80
    r = budget.reserve(30, woken("r"))
    assert not r.granted
    budget.discharge(80)
    assert r.granted and woken.names == ["r"] and budget.used == 30
