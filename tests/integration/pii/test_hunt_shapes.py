"""Where a security tester found PII under names no catalog rule marks, on the real
server (demo dataset).

A foreign key says that one column holds values of another: ``buyer text REFERENCES
customers(email)`` holds e-mail addresses whatever it is called, and so does the
column a PII column references (``customers.email REFERENCES registry(addr)``: every
customer's address is in ``registry``). Unit-level: tests/unit/pii/test_coverage.py.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from tests.integration.pii.conftest import DBNAME, Demo
from tests.integration.pii.harness import apply_plan, connect, leaked, run_simple


async def _agent(pg_server: Any, pii_demo: Demo, sql: str) -> Any:
    """Plan ``sql`` as the agent's session, run it, put the answer through the room."""
    session = pii_demo.room.session("agent")
    plan = session.plan(sql)
    client = await connect(pg_server, DBNAME)
    try:
        res = apply_plan(plan, await run_simple(client, session.detokenize_sql(plan)))
    finally:
        await client.close()
    assert not res.errors, res.errors
    return res


def _sent(res: Any) -> bytes:
    """What the server sent, before the room."""
    return b"".join(b"".join(v or b"" for v in row) for row in res.rows_before)


async def test_columns_linked_to_pii_by_a_foreign_key_are_pii(
    pg_server: Any, pii_demo: Demo
) -> None:
    admin = await asyncpg.connect(pii_demo.dsn)
    try:
        await admin.execute(
            "create table hunt_buyers (id int primary key, buyer text references customers(email));"
            " insert into hunt_buyers select id, email from customers where id <= 3;"
            " create table hunt_registry (addr text primary key, kind text);"
            " insert into hunt_registry select email, 'r' from customers where id <= 3;"
            " create table hunt_people (id int primary key, email text"
            "   references hunt_registry(addr));"
            " insert into hunt_people select id, email from customers where id <= 3;"
            # a chain: a column referencing the registry holds its values too
            " create table hunt_refs (id int primary key, k text references hunt_registry(addr),"
            "   n int references hunt_buyers(id));"
            " insert into hunt_refs select id, email, id from customers where id <= 3"
        )
        await pii_demo.room.refresh_dsn(pii_demo.dsn)
        for sql, replaced in (
            ("select id, buyer from hunt_buyers order by id", {1}),
            ("select addr, kind from hunt_registry order by addr", {0}),
            ("select id, k, n from hunt_refs order by id", {1}),
            ("select r.addr, b.buyer from hunt_registry r, hunt_buyers b where b.id = 1", {0, 1}),
        ):
            res = await _agent(pg_server, pii_demo, sql)
            assert leaked(_sent(res), pii_demo.values), sql  # the server sent them raw
            assert not leaked(res.output_bytes, pii_demo.values), sql
            assert res.replaced == [replaced], sql
        res = await _agent(pg_server, pii_demo, "select kind from hunt_registry order by addr")
        assert [r[0] for r in res.rows_after] == [b"r"] * 3  # the clean column stays readable
    finally:
        await admin.execute(
            "drop table if exists hunt_refs, hunt_buyers, hunt_people, hunt_registry"
        )
        await admin.close()
        await pii_demo.room.refresh_dsn(pii_demo.dsn)
