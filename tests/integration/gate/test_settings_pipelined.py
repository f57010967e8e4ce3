"""Statements pipelined behind one that would change how the server reads SQL text.

With ``standard_conforming_strings`` off the server reads a backslash in a string as
an escape, so a text dbgate reads as one harmless SELECT of two strings is, to the
server, a SELECT and a DELETE. dbgate refuses every statement once the server reports
such a setting — but a statement the client pipelined behind the change is judged
before that report arrives. So the change itself is refused: approving it could
only ever let such a statement through.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dbgate.wire import messages as wire
from tests.integration.holds.harness import (
    AGENT,
    AGENT_PASSWORD,
    HoldsEnv,
    admin_execute,
    admin_query,
    request_id,
)
from tests.integration.rawclient import RawClient, errors

#: dbgate (standard strings): SELECT '\', ' ; DELETE … ; -- ' — two strings.
#: The server with standard_conforming_strings off: SELECT '\', '; DELETE FROM …; -- '
HIDDEN_DELETE = "SELECT '\\', ' ; DELETE FROM set_items; -- '"


@pytest.fixture(scope="module")
def items(env: HoldsEnv) -> str:
    admin_execute(
        env.admin_dsn,
        "DROP TABLE IF EXISTS set_items",
        "CREATE TABLE set_items (id int PRIMARY KEY)",
        "INSERT INTO set_items SELECT generate_series(1, 5)",
        "GRANT ALL ON set_items TO PUBLIC",
    )
    return "set_items"


async def _client(env: HoldsEnv) -> RawClient:
    return await RawClient.connect(
        "127.0.0.1", env.app.port, user=AGENT, password=AGENT_PASSWORD, database=env.data_db
    )


async def _answers(env: HoldsEnv, client: RawClient, cycles: int) -> list[Any]:
    """Every message up to ``cycles`` ReadyForQuery, approving any hold on the way
    (an approver who lets the setting through)."""
    got: list[Any] = []
    while sum(isinstance(x, wire.ReadyForQuery) for x in got) < cycles:
        msg = await client.recv()
        got.append(msg)
        if isinstance(msg, wire.NoticeResponse) and "request" in msg.fields.get("M", ""):
            await env.app.aapprove(request_id(msg.fields["M"]), "legacy client")
    return got


async def test_turning_standard_strings_off_is_refused_so_nothing_behind_it_slips_through(
    env: HoldsEnv, items: str
) -> None:
    client = await _client(env)
    try:
        client.send(wire.Query("SET standard_conforming_strings = off"), wire.Query(HIDDEN_DELETE))
        answers = await asyncio.wait_for(_answers(env, client, 2), 60)
    finally:
        await client.close()
    assert admin_query(env.admin_dsn, f"SELECT count(*) FROM {items}")[0][0] == 5
    assert [e.sqlstate for e in errors(answers)] == ["42501"]


async def test_switching_client_encoding_away_from_utf8_is_refused(
    env: HoldsEnv, items: str
) -> None:
    client = await _client(env)
    try:
        client.send(wire.Query("SET client_encoding = 'SJIS'"), wire.Query("SELECT 1"))
        answers = await asyncio.wait_for(_answers(env, client, 2), 60)
    finally:
        await client.close()
    # refused, so the server's encoding stays UTF8 and the SELECT behind it runs
    assert [e.sqlstate for e in errors(answers)] == ["42501"]
    assert not any(isinstance(x, wire.ParameterStatus) for x in answers)
