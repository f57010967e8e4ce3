"""Raw values an agent could have the server keep for it, then read back with a clean
statement (demo dataset, real server): each test runs the agent's statements as the
relay would — planned, tokens resolved, results through the room — on one session,
and checks every byte the agent gets back. Unit-level: tests/unit/pii/test_lineage_hunt.py.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from dbgate.pii.tokens import TokenError
from tests.integration.pii.conftest import DBNAME, Demo
from tests.integration.pii.harness import apply_plan, connect, leaked, run_simple


async def _email_token(pii_demo: Demo) -> tuple[str, str]:
    conn = await asyncpg.connect(pii_demo.dsn)
    try:
        email = await conn.fetchval("select email from customers where id = 1")
    finally:
        await conn.close()
    return email, pii_demo.room.tokenizer.token("email", email.encode())


async def _session(pg_server: Any, pii_demo: Demo, statements: list[str]) -> bytes:
    """Run ``statements`` one after the other as the agent, on one connection (the
    room's snapshot read again after each, as after DDL); all the agent received.
    A statement dbgate refuses (a token it will not resolve) or holds for approval
    is not sent; the agent receives the reason."""
    session = pii_demo.room.session("agent")
    client = await connect(pg_server, DBNAME)
    received = b""
    try:
        for sql in statements:
            plan = session.plan(sql)
            if plan.hold_reasons:
                received += "; ".join(plan.hold_reasons).encode()
                continue
            try:
                forwarded = session.detokenize_sql(plan)
            except TokenError as e:
                received += str(e).encode()
                continue
            res = apply_plan(plan, await run_simple(client, forwarded))
            received += res.output_bytes
            await pii_demo.room.refresh_dsn(pii_demo.dsn)
    finally:
        await client.close()
    return received


async def test_a_token_in_a_view_filter_is_not_stored_in_its_definition(
    pg_server: Any, pii_demo: Demo
) -> None:
    email, token = await _email_token(pii_demo)
    for view, read in (
        ("create temp view hunt_v1", "select definition from pg_views where viewname = 'hunt_v1'"),
        ("create materialized view hunt_v2", "select pg_get_viewdef('hunt_v2'::regclass)"),
    ):
        received = await _session(
            pg_server,
            pii_demo,
            [
                f"{view} as select id from customers where email = '{token}'",
                read,
                "drop materialized view if exists hunt_v2",
            ],
        )
        assert email.encode() not in received, view
        assert not leaked(received, pii_demo.values), view
        assert b"view definition" in received  # refused, and says why


async def test_a_large_objects_position_does_not_keep_a_value(
    pg_server: Any, pii_demo: Demo
) -> None:
    """``lo_lseek64`` moves an open descriptor to any offset below 4 TB, and
    ``lo_tell64`` in a later statement of the transaction reads it back: five bytes
    of a value per round trip, unless a seek to a position derived from PII is held."""
    conn = await asyncpg.connect(pii_demo.dsn)
    try:
        packed = await conn.fetchval(
            "select ('x' || encode(substr(email::bytea, 1, 5), 'hex'))::bit(40)::bigint"
            " from customers where id = 1"
        )
    finally:
        await conn.close()
    five = "('x' || encode(substr(email::bytea, 1, 5), 'hex'))::bit(40)::bigint"
    for seek in (
        f"select lo_lseek64(0, (select {five} from customers where id = 1), 0)",
        # one step per row chosen by the value: the position counts them
        "select lo_lseek64(0, 1, 1) from generate_series(1, 200) g"
        " where g <= (select ascii(email) from customers where id = 1)",
    ):
        received = await _session(
            pg_server,
            pii_demo,
            [
                "begin",
                "select lo_open(lo_create(0), 393216)",
                seek,
                "select lo_tell64(0)",
                "rollback",
            ],
        )
        assert str(packed).encode() not in received, seek
        assert b"lo_lseek64() keeps a value derived from PII" in received, seek
