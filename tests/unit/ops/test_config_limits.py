"""The capacity and memory keys: defaults, validation, the old name of max_client_conn."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dbgate.config import Config


def test_defaults_are_bounded() -> None:
    cfg = Config()
    assert cfg.limits.max_message_size == 64 * 1024 * 1024
    assert cfg.limits.max_login_message_size == 16 * 1024
    assert cfg.limits.memory_budget >= cfg.limits.max_message_size
    assert cfg.limits.max_logins == 100 and cfg.limits.max_client_conn == 1000
    # derived from the server's limits, and then below PostgreSQL's default
    # max_connections (100) minus its reserved slots
    assert cfg.upstream.max_server_conn is None and cfg.upstream.read_server_limits
    from dbgate.proxy.capacity import ServerLimits, effective_limit

    assert effective_limit(None, ServerLimits(100, 3)).value < 97
    assert cfg.upstream.server_wait_timeout > 0


def test_the_budget_must_hold_one_message() -> None:
    with pytest.raises(ValidationError, match=r"memory_budget .* must be at least"):
        Config.model_validate({"limits": {"max_message_size": 8 << 20, "memory_budget": 4 << 20}})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_login_message_size", 100),  # below a SCRAM message
        ("max_login_message_size", 64 << 20),  # a login message is never that long
        ("max_logins", 0),
        ("max_client_conn", 0),
        ("memory_budget", 1000),
    ],
)
def test_out_of_range_limits_are_refused(key: str, value: int) -> None:
    with pytest.raises(ValidationError, match=key):
        Config.model_validate({"limits": {key: value}})


@pytest.mark.parametrize(("key", "value"), [("max_server_conn", 0), ("server_wait_timeout", 0)])
def test_out_of_range_upstream_capacity_is_refused(key: str, value: float) -> None:
    with pytest.raises(ValidationError, match=key):
        Config.model_validate({"upstream": {key: value}})


def test_max_connections_is_the_old_name_of_max_client_conn() -> None:
    assert Config.model_validate({"limits": {"max_connections": 7}}).limits.max_client_conn == 7
    with pytest.raises(ValidationError, match="set only max_client_conn"):
        Config.model_validate({"limits": {"max_connections": 7, "max_client_conn": 8}})


@pytest.mark.parametrize(
    ("total", "count", "shares"),
    [(90, 2, [45, 45]), (91, 2, [46, 45]), (10, 3, [4, 3, 3]), (2, 4, [1, 1, 1, 1])],
)
def test_workers_share_max_server_conn(total: int, count: int, shares: list[int]) -> None:
    """The server's connection limit holds for all workers together, not per worker."""
    from pathlib import Path

    from dbgate.workers_process import Seat, worker_config

    config = Config.model_validate({"upstream": {"max_server_conn": total}})
    got = [
        worker_config(config, Seat(i, count, Path("/tmp"), 1, "r")).upstream.max_server_conn
        for i in range(count)
    ]
    assert got == shares
    assert sum(got) == max(total, count)


def test_workers_know_their_seat_for_a_limit_derived_from_the_server() -> None:
    from pathlib import Path

    from dbgate.workers_process import Seat, worker_config

    config = Config()
    seats = [worker_config(config, Seat(i, 3, Path("/tmp"), 1, "r")).upstream for i in range(3)]
    assert [u.seat for u in seats] == [(0, 3), (1, 3), (2, 3)]
    assert all(u.max_server_conn is None for u in seats)
    assert config.upstream.seat == (0, 1)  # the supervisor's own config is untouched
