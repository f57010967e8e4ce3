"""Bad input on the real server: a 100 MB value, bytes that are not UTF-8, NULLs and
empty strings, arrays of PII, a schema that changed behind dbgate's back, a portal
that was never described."""

from __future__ import annotations

from typing import Any

import asyncpg

from dbgate.wire import messages as m
from tests.integration.pii.conftest import DBNAME, Demo
from tests.integration.pii.harness import apply_plan, connect, leaked, make_room, run_simple


async def test_a_100_mb_value(pg_server: Any, pii_demo: Demo) -> None:
    sql = "select repeat(email, 5000000) as big, id from customers where id = 1"
    client = await connect(pg_server, DBNAME)
    try:
        messages = await run_simple(client, sql)
    finally:
        await client.close()
    res = apply_plan(pii_demo.room.plan(sql), messages)
    ((big, cid),) = res.rows_after
    assert len(res.rows_before[0][0]) > 100_000_000
    assert big.startswith(b"tok_email_h") and len(big) < 100 and cid == b"1"


async def test_nulls_empty_strings_bytes_and_arrays(pg_server: Any, pii_demo: Demo) -> None:
    sql = (
        "select null::text as email, left(phone, 0) as phone, convert_to(full_name, 'LATIN1') as n, "
        "array[email, null, ''] as a, array[[phone]] as b from customers where id = 2"
    )
    client = await connect(pg_server, DBNAME)
    try:
        messages = await run_simple(client, sql)
    finally:
        await client.close()
    res = apply_plan(pii_demo.room.plan(sql), messages)
    ((email, phone, n, a, b),) = res.rows_after
    assert email is None and phone.startswith(b"tok_phone_")  # an empty value from a PII column
    assert bytes.fromhex(n[2:].decode()).startswith(b"tok_name_")
    # an array made from PII is derived: one fresh element, its shape and NULLs hidden
    assert a.startswith(b"{tok_email_") and a.count(b",") == 0 and b"NULL" not in a
    assert b.startswith(b"{tok_phone_")
    assert not leaked(res.output_bytes, pii_demo.values)


async def test_a_table_created_after_the_snapshot(pg_server: Any, pii_demo: Demo) -> None:
    room = make_room()
    await room.refresh_dsn(pii_demo.dsn)
    conn = await asyncpg.connect(pii_demo.dsn)
    try:
        await conn.execute(
            "create table late_contacts as select id, email as contact, phone from customers"
        )
        sql = "select id, contact, phone from late_contacts order by id limit 3"
        plan = room.plan(sql)
        assert room.stale and plan.unknown_reasons
        client = await connect(pg_server, DBNAME)
        try:
            messages = await run_simple(client, sql)
        finally:
            await client.close()
        res = apply_plan(plan, messages)
        assert not leaked(res.output_bytes, pii_demo.values)  # unknown: tokenized
        assert all(r[2].startswith(b"tok_phone_") for r in res.rows_after)  # by its name
        await room.refresh(conn)
        assert not room.stale
        res = apply_plan(room.plan(sql), messages)
        # after the refresh the table is known: id is clean again, contact is not
        # marked by anything (a CTAS copy is what StatementPlan.hold_reasons is for)
        assert res.rows_after[0][0] == b"1" and res.rows_after[0][2].startswith(b"tok_phone_")
    finally:
        await conn.execute("drop table if exists late_contacts")
        await conn.close()


async def test_a_portal_never_described(pii_demo: Demo) -> None:
    plan = pii_demo.room.plan("select * from customers")
    rw = plan.rows(None, (0,))
    assert rw is not None
    body = m.data_row([b"1", b"Ann Lee", b"a@x.io", None, b"", b"1990-01-01", b"x", b"2020-01-01"])[
        5:
    ]
    out = m.parse_data_row(rw.data_row(body))
    # no origins without a description: every PII value is taken as derived, and a
    # derived value's NULL gets a fresh stand-in (it may spell a value)
    assert out[0] == b"1" and out[1].startswith(b"tok_name_") and out[3].startswith(b"tok_phone_")
    opaque = pii_demo.room.plan("select * from get_email(1)")
    everything = opaque.rows(None, (0,))
    assert everything is not None
    assert m.parse_data_row(everything.data_row(m.data_row([b"x@y.z"])[5:]))[0].startswith(
        b"tok_unknown_"
    )


async def test_cte_copy_of_pii_is_held(pii_demo: Demo) -> None:
    plan = pii_demo.room.session("agent").plan("create table t2 as select email from customers")
    assert plan.hold and "CREATE TABLE AS" in plan.hold_reasons[0]
