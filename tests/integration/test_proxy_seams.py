"""The inspector and result-plan seams, with custom hooks, against a real server.

A refusal must look to the client exactly like the server failing at that message,
and leave client and server agreeing on transaction state; a held statement must
delay only itself and what the client pipelined after it; a result plan sees every
result path (simple, extended, COPY) and, without one, bytes pass untouched.
"""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from dbgate.proxy.seams import ALLOW, Allow, Notice, Refuse, Statement
from dbgate.proxy.session_info import SessionInfo
from dbgate.wire import messages as m
from tests.integration.rawclient import (
    agent,
    direct,
    errors,
    extended,
    names,
    rows,
    send_cancel,
    status,
)

DENY = "/*deny*/"
HOLD = "/*hold*/"


class MarkerInspector:
    """Refuses statements whose text contains DENY, Binds carrying b'forbidden', and
    FunctionCalls of one OID; records what it saw."""

    def __init__(self, refuse_oid: int = -1) -> None:
        self.seen: list[Statement] = []
        self.refuse_oid = refuse_oid

    def inspect(self, session: SessionInfo, stmt: Statement) -> Allow | Refuse:
        self.seen.append(stmt)
        if DENY in stmt.sql:
            return Refuse("42501", "no")
        if stmt.kind == "bind" and b"forbidden" in stmt.params:
            return Refuse("42501", "bind refused", detail="a parameter is forbidden")
        if stmt.kind == "function_call" and stmt.function_oid == self.refuse_oid:
            return Refuse("42501", "function call refused")
        return ALLOW


class HoldingInspector:
    """Holds statements containing HOLD on a future the test resolves."""

    def __init__(self) -> None:
        self.held: list[tuple[SessionInfo, Statement, asyncio.Future[Any]]] = []
        self._lock = threading.Lock()

    def inspect(self, session: SessionInfo, stmt: Statement) -> Any:
        if HOLD not in stmt.sql:
            return ALLOW
        fut = asyncio.get_running_loop().create_future()
        with self._lock:
            self.held.append((session, stmt, fut))
        return fut

    def wait_held(self, n: int, timeout: float = 5) -> tuple[SessionInfo, Statement, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.held) >= n:
                    return self.held[n - 1]
            time.sleep(0.01)
        raise AssertionError(f"statement #{n} was never held")


class RaisingInspector:
    def inspect(self, session: SessionInfo, stmt: Statement) -> Allow:
        if "boom" in stmt.sql:
            raise RuntimeError("inspector bug")
        return ALLOW


class Upper:
    """Rewrites the text (OID 25) columns of every result to upper case."""

    def __init__(self, text_columns: set[int]) -> None:
        self.text_columns = text_columns

    def data_row(self, body: bytes) -> bytes:
        cols = list(m.parse_data_row(body))
        for i in self.text_columns:
            if cols[i] is not None:
                cols[i] = cols[i].upper()  # type: ignore[union-attr]
        return m.data_row(cols)[5:]

    def copy_data(self, body: bytes) -> bytes:
        return body.upper()


class UpperPlan:
    """A result plan that upper-cases the text (OID 25) columns of its statement."""

    def rows(
        self,
        session: SessionInfo,
        description: bytes | None,
        formats: tuple[int, ...],
        statement: int | None = None,
    ) -> Upper | None:
        if description is None:
            return None
        desc = m.decode_backend(ord("T"), description)
        text = {i for i, f in enumerate(desc.fields) if f.type_oid == 25}  # type: ignore[union-attr]
        return Upper(text) if text else None

    def copy_out(self, session: SessionInfo, body: bytes) -> Upper:
        return Upper(set())


class UpperInspector:
    """Allows everything with an UpperPlan, except statements marked NOPLAN."""

    def __init__(self) -> None:
        self.plan = UpperPlan()

    def inspect(self, session: SessionInfo, stmt: Statement) -> Allow:
        return ALLOW if "NOPLAN" in stmt.sql else Allow(plan=self.plan)


def on_loop(running: Any, fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` on the proxy's event loop thread."""
    running.loop.call_soon_threadsafe(fn, *args)


@pytest.fixture
async def seam_table(pg_dsn: str) -> AsyncIterator[str]:
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute("drop table if exists seam_t; create table seam_t(x int)")
    yield "seam_t"
    await conn.execute("drop table if exists seam_t")
    await conn.close()


async def count(pg_dsn: str, table: str) -> int:
    conn = await asyncpg.connect(pg_dsn)
    try:
        return await conn.fetchval(f"select count(*) from {table}")
    finally:
        await conn.close()


# --------------------------------------------------------------------------- refusals


async def test_refused_simple_query_outside_transaction(make_proxy: Any, pg_database: str):
    inspector = MarkerInspector()
    client = await agent(make_proxy(inspector=inspector), pg_database)
    try:
        msgs = await client.query(f"select 1 {DENY}")
        assert names(msgs) == ["ErrorResponse", "ReadyForQuery"]
        (err,) = errors(msgs)
        assert (err.severity, err.sqlstate, err.message) == ("ERROR", "42501", "no")
        assert status(msgs) == "I"
        assert b"dbgate-refusal" not in client.received
        assert rows(await client.query("select 'next'")) == [(b"next",)]
        assert [s.kind for s in inspector.seen] == ["query", "query"]
    finally:
        await client.close()


async def test_refused_query_inside_transaction_fails_it(make_proxy: Any, pg_database: str):
    client = await agent(make_proxy(inspector=MarkerInspector()), pg_database)
    try:
        assert status(await client.query("begin")) == "T"
        msgs = await client.query(f"select 1 {DENY}")
        assert [e.sqlstate for e in errors(msgs)] == ["42501"] and status(msgs) == "E"
        # the server agrees the transaction is aborted
        msgs = await client.query("select 1")
        assert [e.sqlstate for e in errors(msgs)] == ["25P02"] and status(msgs) == "E"
        assert status(await client.query("rollback")) == "I"
        assert rows(await client.query("select 2")) == [(b"2",)]
    finally:
        await client.close()


async def test_refused_parse_mid_batch_rolls_back_like_the_server(
    make_proxy: Any, pg_server: Any, pg_database: str, pg_dsn: str, seam_table: str
):
    client = await agent(make_proxy(inspector=MarkerInspector()), pg_database)
    reference = await direct(pg_server, pg_database)

    def batch(second: str) -> bytes:
        return b"".join(
            (
                m.Parse("", f"insert into {seam_table} values (1)").encode(),
                m.Bind("", "").encode(),
                m.Execute("").encode(),
                m.Parse("", second).encode(),
                m.Bind("", "").encode(),
                m.Execute("").encode(),
                extended("select 'never'"),
                m.SYNC,
            )
        )

    try:
        client.send(batch(f"select 1 {DENY}"))
        msgs = await client.until_ready()
        assert names(msgs) == [
            "ParseComplete",
            "BindComplete",
            "CommandComplete",
            "ErrorResponse",
            "ReadyForQuery",
        ]
        assert msgs[2].tag == "INSERT 0 1"
        assert (msgs[3].sqlstate, msgs[3].message) == ("42501", "no")
        assert status(msgs) == "I"
        assert await count(pg_dsn, seam_table) == 0  # the implicit transaction rolled back
        # PostgreSQL failing to parse the second statement answers the same way
        reference.send(batch("select * from no_such_table_xyz"))
        assert names(await reference.until_ready()) == names(msgs)
        assert await count(pg_dsn, seam_table) == 0
        # and the session goes on
        client.send(extended("select 'after'"), m.SYNC)
        assert rows(await client.until_ready()) == [(b"after",)]
    finally:
        await client.close()
        await reference.close()


async def test_refused_bind_and_function_call(make_proxy: Any, pg_database: str, pg_dsn: str):
    conn = await asyncpg.connect(pg_dsn)
    int4pl = await conn.fetchval("select 'int4pl'::regproc::oid")
    textlen = await conn.fetchval("select 'textlen'::regproc::oid")
    await conn.close()
    client = await agent(make_proxy(inspector=MarkerInspector(refuse_oid=int4pl)), pg_database)
    try:
        client.send(
            m.Parse("named", "select $1::text as v").encode(),
            m.Bind("", "named", params=(b"forbidden",)).encode(),
            m.Execute("").encode(),
            m.SYNC,
        )
        msgs = await client.until_ready()
        assert names(msgs) == ["ParseComplete", "ErrorResponse", "ReadyForQuery"]
        assert (msgs[1].sqlstate, msgs[1].message) == ("42501", "bind refused")
        assert msgs[1].fields.get("D") == "a parameter is forbidden"
        # the statement survived the refusal and binds fine with other values
        client.send(m.Bind("", "named", params=(b"fine",)).encode(), m.Execute("").encode(), m.SYNC)
        assert rows(await client.until_ready()) == [(b"fine",)]

        allowed = m.FunctionCall(textlen, (0,), (b"abcd",), 1).encode()
        client.send(allowed)
        msgs = await client.until_ready()
        assert names(msgs) == ["FunctionCallResponse", "ReadyForQuery"]
        assert struct.unpack("!i", msgs[0].result) == (4,)

        refused = m.FunctionCall(int4pl, (1,), (struct.pack("!i", 1), struct.pack("!i", 2)), 1)
        client.send(refused.encode())
        msgs = await client.until_ready()
        assert names(msgs) == ["ErrorResponse", "ReadyForQuery"]
        assert (msgs[0].sqlstate, msgs[0].message) == ("42501", "function call refused")
        assert status(msgs) == "I"
        assert rows(await client.query("select 'usable'")) == [(b"usable",)]
    finally:
        await client.close()


async def test_refused_bind_keeps_the_unnamed_statement(make_proxy: Any, pg_database: str):
    """A refused Bind must not replace the client's unnamed prepared statement."""
    client = await agent(make_proxy(inspector=MarkerInspector()), pg_database)
    try:
        client.send(m.Parse("", "select $1::text as v").encode(), m.SYNC)
        assert names(await client.until_ready()) == ["ParseComplete", "ReadyForQuery"]
        client.send(m.Bind("", "", params=(b"forbidden",)).encode(), m.SYNC)
        assert [e.sqlstate for e in errors(await client.until_ready())] == ["42501"]
        client.send(m.Bind("", "", params=(b"ok",)).encode(), m.Execute("").encode(), m.SYNC)
        msgs = await client.until_ready()
        assert errors(msgs) == [] and rows(msgs) == [(b"ok",)]
    finally:
        await client.close()


async def test_inspector_that_raises_fails_closed(make_proxy: Any, pg_database: str):
    client = await agent(make_proxy(inspector=RaisingInspector()), pg_database)
    try:
        msgs = await client.query("select 'boom'")
        assert [e.sqlstate for e in errors(msgs)] == ["XX000"] and rows(msgs) == []
        client.send(extended("select 'boom'"), m.SYNC)
        msgs = await client.until_ready()
        assert [e.sqlstate for e in errors(msgs)] == ["XX000"] and rows(msgs) == []
        assert rows(await client.query("select 'fine'")) == [(b"fine",)]
    finally:
        await client.close()


# --------------------------------------------------------------------------- held


async def test_held_statement_waits_then_runs_in_order(make_proxy: Any, pg_database: str):
    inspector = HoldingInspector()
    running = make_proxy(inspector=inspector)
    client = await agent(running, pg_database)
    try:
        client.send(
            m.query("select 'before'"),
            m.query(f"select 'held' {HOLD}"),
            m.query("select 'after'"),
        )
        first = await client.until_ready()
        assert rows(first) == [(b"before",)]
        session, stmt, fut = await asyncio.to_thread(inspector.wait_held, 1)
        assert stmt.kind == "query"
        assert await client.nothing_for(0.3) == []  # nothing for the held one or later
        on_loop(running, session.notify_client, Notice("waiting for approval #7"))
        note = await client.recv()
        assert isinstance(note, m.NoticeResponse) and note.message == "waiting for approval #7"
        on_loop(running, fut.set_result, ALLOW)
        held = await client.until_ready()
        assert rows(held) == [(b"held",)]
        assert rows(await client.until_ready()) == [(b"after",)]
    finally:
        await client.close()


async def test_held_extended_statement_refused_later(make_proxy: Any, pg_database: str):
    inspector = HoldingInspector()
    running = make_proxy(inspector=inspector)
    client = await agent(running, pg_database)
    try:
        client.send(
            extended("select 'first'"),
            extended(f"select 'held' {HOLD}"),
            m.SYNC,
            extended("select 'next batch'"),
            m.SYNC,
        )
        _, _, fut = await asyncio.to_thread(inspector.wait_held, 1)
        # the first statement's results may or may not be flushed yet; no RFQ can be
        early = await client.nothing_for(0.3)
        assert "ReadyForQuery" not in names(early)
        on_loop(running, fut.set_result, Refuse("42501", "rejected by a human"))
        msgs = early + await client.until_ready()
        assert rows(msgs) == [(b"first",)]
        assert [(e.sqlstate, e.message) for e in errors(msgs)] == [("42501", "rejected by a human")]
        assert names(msgs)[-2:] == ["ErrorResponse", "ReadyForQuery"]
        assert rows(await client.until_ready()) == [(b"next batch",)]
    finally:
        await client.close()


async def test_cancel_while_held_gives_57014(make_proxy: Any, pg_database: str):
    inspector = HoldingInspector()
    running = make_proxy(inspector=inspector)
    client = await agent(running, pg_database)
    try:
        client.send(m.query(f"select 1 {HOLD}"))
        await asyncio.to_thread(inspector.wait_held, 1)
        assert client.key is not None
        await send_cancel(running.host, running.port, client.key.pid, client.key.secret)
        msgs = await client.until_ready(timeout=5)
        assert [e.sqlstate for e in errors(msgs)] == ["57014"] and status(msgs) == "I"
        assert rows(await client.query("select 'usable'")) == [(b"usable",)]
    finally:
        await client.close()


# --------------------------------------------------------------------------- result plans


async def test_result_plans_rewrite_simple_extended_and_copy(make_proxy: Any, pg_database: str):
    client = await agent(make_proxy(inspector=UpperInspector()), pg_database)
    try:
        msgs = await client.query("select 'abc'::text as t, 7 as n, null::text as z")
        assert rows(msgs) == [(b"ABC", b"7", None)]
        client.send(extended("select $1::text, 'x'::varchar", (b"hello",)), m.SYNC)
        assert rows(await client.until_ready()) == [(b"HELLO", b"x")]  # varchar is not OID 25
        msgs = await client.query("copy (select 'mixed Case' as t) to stdout")
        assert [x.data for x in msgs if isinstance(x, m.CopyData)] == [b"MIXED CASE\n"]
        msgs = await client.query("select 'still lower'::text")
        assert rows(msgs) == [(b"STILL LOWER",)]
        # a statement without a plan keeps its bytes, in the same session
        msgs = await client.query("select 'keep lower'::text /* NOPLAN */")
        assert rows(msgs) == [(b"keep lower",)]
        client.send(extended("select 'also lower'::text /* NOPLAN */"), m.SYNC)
        assert rows(await client.until_ready()) == [(b"also lower",)]
    finally:
        await client.close()


async def test_without_a_plan_bytes_are_untouched(proxy: Any, pg_server: Any, pg_database: str):
    through = await agent(proxy, pg_database)
    straight = await direct(pg_server, pg_database)
    sql = (
        "select g, 'ab' || g, null::int, '\\x00ff'::bytea, 1.5::numeric, "
        "'{\"k\": [1]}'::jsonb from generate_series(1, 200) g"
    )
    try:
        for client in (through, straight):
            client.received.clear()
            await client.query(sql)
            client.send(extended(sql), m.SYNC)
            await client.until_ready()
            await client.query("copy (select g from generate_series(1, 100) g) to stdout")
        assert bytes(through.received) == bytes(straight.received)
    finally:
        await through.close()
        await straight.close()


async def test_refusal_still_works_with_a_plan(make_proxy: Any, pg_database: str):
    class Both(UpperInspector, MarkerInspector):
        def __init__(self) -> None:
            UpperInspector.__init__(self)
            MarkerInspector.__init__(self)

        def inspect(self, session: SessionInfo, stmt: Statement) -> Allow | Refuse:
            refused = MarkerInspector.inspect(self, session, stmt)
            return (
                refused
                if isinstance(refused, Refuse)
                else UpperInspector.inspect(self, session, stmt)
            )

    client = await agent(make_proxy(inspector=Both()), pg_database)
    try:
        msgs = await client.query(f"select 'x' {DENY}")
        assert [(e.sqlstate, e.message) for e in errors(msgs)] == [("42501", "no")]
        assert rows(await client.query("select 'y'::text")) == [(b"Y",)]
    finally:
        await client.close()
