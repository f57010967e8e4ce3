"""Fixtures for held statements: a whole dbgate with a state database per test module.

``holds`` starts :class:`~tests.integration.holds.harness.RunningApp` once per module
(its own data and state databases on the session's PostgreSQL, the default rule
pack plus the tests' retry and expiry rules, the API on a free port, approvers
``alice`` and ``olga``), so a module's tests see each other's approval requests
only by id, never by accident.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.holds.harness import HoldsEnv, start_env


@pytest.fixture(scope="module")
def holds(
    pg_server: Any, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HoldsEnv]:
    name = "holds_" + request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    yield from start_env(pg_server, name, tmp_path_factory.mktemp(name))
