"""A whole dbgate (``App``) per test module, as ``dbgate serve`` runs it: state
database, approvals API, PII tokenization and the audit trail all on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.holds.harness import HoldsEnv, start_env


@pytest.fixture(scope="module")
def env(
    pg_server: Any, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HoldsEnv]:
    name = "gate_" + request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    yield from start_env(pg_server, name, tmp_path_factory.mktemp(name))
