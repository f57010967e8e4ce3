"""Where a security tester had a column stop being PII by changing the schema, then
read its stored values raw (demo dataset, real server): a column PII by its name
renamed, a ``pii:`` comment dropped, a column's type changed. Each statement runs as
the relay would (planned, results through the room, the snapshot read again after
DDL, as after DDL through dbgate); one held for approval is not sent.
Unit-level: tests/unit/pii/test_lineage_unmarking.py.
"""

from __future__ import annotations

import contextlib
from typing import Any

import asyncpg
import pytest

from tests.integration.pii.conftest import Demo
from tests.integration.pii.harness import leaked
from tests.integration.pii.test_hunt_derived import _schema
from tests.integration.pii.test_hunt_shapes import _agent, _sent
from tests.integration.pii.test_hunt_stores import _session


async def _drop(admin: asyncpg.Connection) -> None:
    for kind in ("view", "table"):
        for name in ("hunt_um", "hunt_um2"):
            # a table where a view is dropped, or the other way round, is an error
            with contextlib.suppress(asyncpg.WrongObjectTypeError):
                await admin.execute(f"drop {kind} if exists {name} cascade")
    await admin.close()


SETUPS = [
    (
        "create table hunt_um (id int, email text)",
        "alter table hunt_um rename column email to x",
        "select id, x from hunt_um",
    ),
    (
        "create table hunt_um (id int, body text); comment on column hunt_um.body is 'pii:email'",
        "comment on column hunt_um.body is null",
        "select id, body from hunt_um",
    ),
    (
        "create table hunt_um (id int, contact_email text)",
        "alter table hunt_um rename to hunt_um2; create view hunt_um as select id, contact_email"
        " as x from hunt_um2",
        "select id, x from hunt_um",
    ),
]


@pytest.mark.parametrize(("create", "change", "read"), SETUPS)
async def test_a_schema_change_does_not_unmark_stored_pii(
    pg_server: Any, pii_demo: Demo, create: str, change: str, read: str
) -> None:
    admin = await asyncpg.connect(pii_demo.dsn)
    try:
        received = await _session(
            pg_server,
            pii_demo,
            [
                create,
                "insert into hunt_um select id, email from customers where id <= 3",
                change,
                read,
            ],
        )
    finally:
        await _drop(admin)
        await pii_demo.room.refresh_dsn(pii_demo.dsn)
    assert not leaked(received, pii_demo.values), change
    assert b"the catalog may no longer find it" in received


async def test_a_schema_change_of_a_table_without_pii_runs(pg_server: Any, pii_demo: Demo) -> None:
    admin = await asyncpg.connect(pii_demo.dsn)
    try:
        received = await _session(
            pg_server,
            pii_demo,
            [
                "create table hunt_um (id int, label text)",
                "insert into hunt_um values (1, 'vip')",
                "alter table hunt_um rename column label to tag",
                "select id, tag from hunt_um",
            ],
        )
    finally:
        await _drop(admin)
        await pii_demo.room.refresh_dsn(pii_demo.dsn)
    assert b"vip" in received
    assert b"catalog" not in received


async def test_an_operator_of_the_databases_own_code_is_unknown(
    pg_server: Any, pii_demo: Demo
) -> None:
    """``1 + 'x'::text`` calls the database's ``+ (int, text)``, a SQL function that
    returns an e-mail: tokenized as a call of that function would be."""
    async with _schema(
        pii_demo,
        "create function hunt_opf(int, text) returns text language sql stable"
        " as $$ select email from customers where id = $1 $$;"
        " create operator + (leftarg = int, rightarg = text, function = hunt_opf)",
        "drop operator if exists + (int, text); drop function if exists hunt_opf(int, text)",
    ):
        res = await _agent(pg_server, pii_demo, "select 1 + 'x'::text, 'a' || 'b'")
    assert leaked(_sent(res), pii_demo.values)  # the server sent it raw
    assert not leaked(res.output_bytes, pii_demo.values)
    assert res.replaced == [{0}]


async def test_a_cast_of_the_databases_own_code_is_unknown(pg_server: Any, pii_demo: Demo) -> None:
    """``1::hunt_wrap`` calls ``CREATE CAST (int AS hunt_wrap) WITH FUNCTION``, a SQL
    function that returns a customer's e-mail in a record."""
    async with _schema(
        pii_demo,
        "create type hunt_wrap as (v text);"
        " create function hunt_castf(int) returns hunt_wrap language sql stable"
        " as $$ select row(email)::hunt_wrap from customers where id = $1 $$;"
        " create cast (int as hunt_wrap) with function hunt_castf(int)",
        "drop cast if exists (int as hunt_wrap); drop function if exists hunt_castf(int);"
        " drop type if exists hunt_wrap",
    ):
        res = await _agent(pg_server, pii_demo, "select (1::hunt_wrap).v, 2::text")
    assert leaked(_sent(res), pii_demo.values)  # the server sent it raw
    assert res.replaced == [{0}]
