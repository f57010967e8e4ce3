"""What the agent chooses at startup — the database name it asks for — must not split
dbgate's view of one upstream database into several (real Apps on a state database,
DDL approved through the API as an approver would).

With ``upstream.database`` set, every session reaches that one database whatever name
the client asked for; dbgate keyed its PII schema snapshot (and the "schema in flux"
state DDL puts it in) by the name asked for, so DDL through a session that asked for
``alias_two`` left the snapshot of sessions that asked for ``alias_one`` as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from dbgate.config import Config
from tests.integration.holds.harness import (
    HoldsEnv,
    RunningApp,
    admin_execute,
    app_config,
    start_env,
)
from tests.integration.pii.test_hunt_replicas import EMAILS, PEOPLE_AND_LABELS, _approved, _raw


@pytest.fixture(scope="module")
def env(pg_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HoldsEnv]:
    env_iter = start_env(pg_server, "hunt_transport", tmp_path_factory.mktemp("hunt_transport"))
    env = next(env_iter)
    admin_execute(
        env.admin_dsn,
        *PEOPLE_AND_LABELS,
        "CREATE VIEW board AS SELECT id, label FROM labels",
    )
    try:
        yield env
    finally:
        next(env_iter, None)


@pytest.fixture(scope="module")
def forced(env: HoldsEnv) -> Iterator[RunningApp]:
    """A replica whose sessions all reach the data database (``upstream.database``)."""
    config = app_config(
        env.pg_server,
        env.pg_server.dsn(env.state_db),
        env.app.config.rules_dir,
        replica="hunt_transport-forced",
    )
    config = config.model_copy(
        update={"upstream": config.upstream.model_copy(update={"database": env.data_db})}
    )
    app = RunningApp(config).start()
    try:
        yield app
    finally:
        app.stop()


async def test_a_database_name_the_client_chooses_does_not_split_the_schema_snapshot(
    env: HoldsEnv, forced: RunningApp
) -> None:
    read = "SELECT label FROM board ORDER BY id LIMIT 3"
    reader = await asyncpg.connect(forced.dsn("alias_one"))
    try:
        assert [r["label"] for r in await reader.fetch(read)] == ["red", "green", "blue"]
        # the same upstream database, asked for under another name
        await _approved(
            env,
            "CREATE OR REPLACE VIEW board AS SELECT id, email AS label FROM people",
            forced.dsn("alias_two"),
        )
        after = [r["label"] for r in await reader.fetch(read)]
        assert _raw(after) == [], after
        assert len(after) == 3
    finally:
        await reader.close()


@pytest.fixture(scope="module")
def over_tls(env: HoldsEnv, cert_files: tuple[Path, Path]) -> Iterator[RunningApp]:
    """A replica that offers TLS to its clients."""
    config = app_config(
        env.pg_server,
        env.pg_server.dsn(env.state_db),
        env.app.config.rules_dir,
        replica="hunt_transport-tls",
    )
    data = config.model_dump(mode="json", exclude_none=True)
    data["tls"] = {"cert_file": str(cert_files[0]), "key_file": str(cert_files[1])}
    app = RunningApp(Config.model_validate(data)).start()
    try:
        yield app
    finally:
        app.stop()


def test_results_and_copy_over_tls_with_scram_are_tokenized(
    env: HoldsEnv, over_tls: RunningApp
) -> None:
    """The relay loop after the TLS handshake is the one every session runs: rows,
    COPY out and errors of a client that authenticated with SCRAM over TLS carry no
    raw value."""
    with psycopg.connect(
        over_tls.dsn(env.data_db), sslmode="require", connect_timeout=10, autocommit=True
    ) as conn:
        assert conn.pgconn.ssl_in_use
        received = b""
        for row in conn.execute("SELECT id, email FROM people ORDER BY id LIMIT 3"):
            received += repr(row).encode()
        with conn.cursor().copy(
            "COPY (SELECT email FROM people ORDER BY id LIMIT 3) TO STDOUT"
        ) as copy:
            for data in copy:
                received += bytes(data)
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT email::int FROM people ORDER BY id LIMIT 1")
        received += str(info.value).encode()
    assert b"tok_email" in received
    assert not [e for e in EMAILS if e.encode() in received], received
