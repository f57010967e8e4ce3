"""Protocol behaviour through the proxy, byte for byte, compared with PostgreSQL itself.

Each test drives the raw client (exact message sequences, pipelining, Flush, split
writes) through the shared allow-everything proxy and, where the answer is
deterministic, sends the same bytes straight to the server and requires the same
sequence of messages back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from dbgate.wire import messages as m
from dbgate.wire.scram import ScramClientExchange
from dbgate.wire.startup import StartupMessage
from tests.integration.conftest import AGENT, AGENT_PASSWORD
from tests.integration.rawclient import (
    RawClient,
    agent,
    direct,
    errors,
    extended,
    names,
    rows,
    send_cancel,
    status,
)


def shape(msgs: list[Any]) -> list[Any]:
    """What must be identical through the proxy and direct: types, rows, tags, codes."""
    out: list[Any] = []
    for x in msgs:
        if isinstance(x, m.DataRow):
            out.append(("D", x.columns))
        elif isinstance(x, m.CommandComplete):
            out.append(("C", x.tag))
        elif isinstance(x, m.ErrorResponse):
            out.append(("E", x.sqlstate, x.message))
        elif isinstance(x, m.ReadyForQuery):
            out.append(("Z", x.status))
        elif isinstance(x, m.RowDescription):
            out.append(("T", tuple((f.name, f.type_oid) for f in x.fields)))
        elif isinstance(x, m.CopyData):
            out.append(("d", x.data))
        else:
            out.append(type(x).__name__)
    return out


@pytest.fixture
async def through(proxy: Any, pg_database: str) -> AsyncIterator[RawClient]:
    client = await agent(proxy, pg_database)
    yield client
    await client.close()


@pytest.fixture
async def straight(pg_server: Any, pg_database: str) -> AsyncIterator[RawClient]:
    client = await direct(pg_server, pg_database)
    yield client
    await client.close()


async def both(a: RawClient, b: RawClient, *msgs: bytes, syncs: int = 1) -> list[Any]:
    """Send the same bytes to both; read ``syncs`` ReadyForQuery each; require equality."""
    results = []
    for client in (a, b):
        client.send(*msgs)
        got: list[Any] = []
        for _ in range(syncs):
            got += await client.until_ready()
        results.append(got)
    assert shape(results[0]) == shape(results[1])
    return results[0]


async def test_simple_query_with_several_statements(through: RawClient, straight: RawClient):
    sql = (
        "create temp table mq(x int); insert into mq values (1), (2);"
        "select x, x * 10 from mq order by x; select 'two'::text; ;"
    )
    msgs = await both(through, straight, m.query(sql))
    assert [x.tag for x in msgs if isinstance(x, m.CommandComplete)] == [
        "CREATE TABLE",
        "INSERT 0 2",
        "SELECT 2",
        "SELECT 1",
    ]
    assert rows(msgs) == [(b"1", b"10"), (b"2", b"20"), (b"two",)]
    assert status(msgs) == "I"
    # an error stops the rest of the string, as on the server
    msgs = await both(through, straight, m.query("select 1; select 1/0; select 3"))
    assert rows(msgs) == [(b"1",)]
    assert [e.sqlstate for e in errors(msgs)] == ["22012"]


async def test_pipelined_extended_batch_before_one_sync(through: RawClient, straight: RawClient):
    batch = (
        extended("select 1::int")
        + extended("select $1::text || 'b'", (b"a",))
        + m.Parse("named", "select $1::int * 2").encode()
        + m.Bind("", "named", params=(b"21",)).encode()
        + m.Execute("", 0).encode()
        + m.SYNC
    )
    msgs = await both(through, straight, batch)
    assert names(msgs) == [
        "ParseComplete",
        "BindComplete",
        "RowDescription",
        "DataRow",
        "CommandComplete",
        "ParseComplete",
        "BindComplete",
        "RowDescription",
        "DataRow",
        "CommandComplete",
        "ParseComplete",
        "BindComplete",
        "DataRow",
        "CommandComplete",
        "ReadyForQuery",
    ]
    assert rows(msgs) == [(b"1",), (b"ab",), (b"42",)]
    await both(through, straight, m.Close("S", "named").encode(), m.SYNC)


async def test_several_syncs_in_one_write(through: RawClient, straight: RawClient):
    batch = (
        extended("select 'one'")
        + m.SYNC
        + extended("select 1/0")  # fails; the next Sync ends that batch only
        + extended("select 'skipped'")
        + m.SYNC
        + extended("select 'three'")
        + m.SYNC
    )
    msgs = await both(through, straight, batch, syncs=3)
    assert rows(msgs) == [(b"one",), (b"three",)]
    assert [e.sqlstate for e in errors(msgs)] == ["22012"]
    assert [x.status for x in msgs if isinstance(x, m.ReadyForQuery)] == ["I", "I", "I"]


async def test_flush_without_sync_gets_responses(through: RawClient):
    through.send(extended("select 7"), m.FLUSH)
    msgs = await through.until(m.CommandComplete, timeout=5)
    assert names(msgs) == ["ParseComplete", "BindComplete", "RowDescription", "DataRow",
                           "CommandComplete"]  # fmt: skip
    assert rows(msgs) == [(b"7",)]
    assert await through.nothing_for(0.2) == []  # no ReadyForQuery without Sync
    through.send(m.SYNC)
    assert names(await through.until_ready()) == ["ReadyForQuery"]


async def test_row_limited_execute_suspends_and_continues(through: RawClient):
    through.send(
        m.Parse("", "select g from generate_series(1, 5) g").encode(),
        m.Bind("", "").encode(),
        m.Execute("", 2).encode(),
        m.FLUSH,
    )
    first = await through.until(m.PortalSuspended)
    assert names(first) == ["ParseComplete", "BindComplete", "DataRow", "DataRow",
                            "PortalSuspended"]  # fmt: skip
    through.send(m.Execute("", 2).encode(), m.FLUSH)
    second = await through.until(m.PortalSuspended)
    assert rows(second) == [(b"3",), (b"4",)]
    through.send(m.Execute("", 2).encode(), m.SYNC)
    last = await through.until_ready()
    assert rows(last) == [(b"5",)]
    assert names(last) == ["DataRow", "CommandComplete", "ReadyForQuery"]
    assert last[1].tag == "SELECT 1"


async def test_describe_close_and_named_statement_reuse(through: RawClient, straight: RawClient):
    msgs = await both(
        through,
        straight,
        m.Parse("st", "select $1::int + 1 as n, 'x'::text as t").encode(),
        m.Describe("S", "st").encode(),
        m.Bind("po", "st", params=(b"1",)).encode(),
        m.Describe("P", "po").encode(),
        m.Execute("po").encode(),
        m.Close("P", "po").encode(),
        m.SYNC,
    )
    assert names(msgs) == [
        "ParseComplete",
        "ParameterDescription",
        "RowDescription",
        "BindComplete",
        "RowDescription",
        "DataRow",
        "CommandComplete",
        "CloseComplete",
        "ReadyForQuery",
    ]
    assert msgs[1].type_oids == (23,)
    assert [f.name for f in msgs[2].fields] == ["n", "t"]
    # the named statement outlives the batch and is reused with new parameters
    for value in (b"10", b"20", b"30"):
        msgs = await both(
            through,
            straight,
            m.Bind("", "st", params=(value,)).encode(),
            m.Execute("").encode(),
            m.SYNC,
        )
        assert rows(msgs) == [(str(int(value) + 1).encode(), b"x")]
    msgs = await both(through, straight, m.Close("S", "st").encode(), m.SYNC)
    assert names(msgs) == ["CloseComplete", "ReadyForQuery"]
    msgs = await both(through, straight, m.Bind("", "st", params=(b"1",)).encode(), m.SYNC)
    assert [e.sqlstate for e in errors(msgs)] == ["26000"]


async def test_copy_from_stdin_and_copy_fail(through: RawClient):
    await through.query("create temp table cin(id int, name text)")
    through.send(m.query("copy cin from stdin"))
    assert isinstance(await through.recv(), m.CopyInResponse)
    through.send(
        m.CopyData(b"1\talice\n").encode(),
        m.CopyData(b"2\tbob\n3\tcarol\n").encode(),
        m.COPY_DONE,
    )
    msgs = await through.until_ready()
    assert [x.tag for x in msgs if isinstance(x, m.CommandComplete)] == ["COPY 3"]
    assert status(msgs) == "I"

    through.send(m.query("copy cin from stdin"))
    assert isinstance(await through.recv(), m.CopyInResponse)
    through.send(m.CopyData(b"4\tdave\n").encode(), m.CopyFail("client gave up").encode())
    msgs = await through.until_ready()
    (err,) = errors(msgs)
    assert err.sqlstate == "57014" and "client gave up" in err.message
    assert status(msgs) == "I"
    msgs = await through.query("select string_agg(name, ',' order by id) from cin")
    assert rows(msgs) == [(b"alice,bob,carol",)]


async def test_copy_to_stdout(through: RawClient, straight: RawClient):
    sql = "copy (select g, 'v' || g from generate_series(1, 3) g) to stdout"
    msgs = await both(through, straight, m.query(sql))
    assert names(msgs) == ["CopyOutResponse", "CopyData", "CopyData", "CopyData", "CopyDone",
                           "CommandComplete", "ReadyForQuery"]  # fmt: skip
    assert [x.data for x in msgs if isinstance(x, m.CopyData)] == [b"1\tv1\n", b"2\tv2\n",
                                                                    b"3\tv3\n"]  # fmt: skip


async def test_notify_reaches_idle_listener(through: RawClient, pg_dsn: str):
    await through.query("listen dbgate_chan")
    other = await asyncpg.connect(pg_dsn)
    try:
        await other.execute("notify dbgate_chan, 'hello there'")
    finally:
        await other.close()
    note = await through.recv(timeout=5)  # nothing sent: the proxy pushes it while idle
    assert isinstance(note, m.NotificationResponse)
    assert (note.channel, note.payload) == ("dbgate_chan", "hello there")


async def test_notice_and_parameter_status_are_relayed(through: RawClient):
    msgs = await through.query("do $$ begin raise notice 'hello %', 42; end $$")
    notices = [x for x in msgs if isinstance(x, m.NoticeResponse)]
    assert [(n.severity, n.message) for n in notices] == [("NOTICE", "hello 42")]

    msgs = await through.query("set application_name = 'raw-test'")
    assert ("application_name", "raw-test") in [
        (x.name, x.value) for x in msgs if isinstance(x, m.ParameterStatus)
    ]
    msgs = await through.query("set TimeZone = 'Asia/Tokyo'")
    assert ("TimeZone", "Asia/Tokyo") in [
        (x.name, x.value) for x in msgs if isinstance(x, m.ParameterStatus)
    ]


async def test_transaction_status_matches_direct(through: RawClient, straight: RawClient):
    steps = [
        ("begin", "T"),
        ("select 1", "T"),
        ("select 1/0", "E"),
        ("select 1", "E"),  # 25P02 until the transaction ends
        ("rollback", "I"),
        ("begin", "T"),
        ("commit", "I"),
    ]
    for sql, expected in steps:
        msgs = await both(through, straight, m.query(sql))
        assert status(msgs) == expected, sql
    # and the same rules in the extended protocol
    msgs = await both(through, straight, extended("begin"), m.SYNC)
    assert status(msgs) == "T"
    msgs = await both(through, straight, extended("select 1/0"), m.SYNC)
    assert status(msgs) == "E"
    msgs = await both(through, straight, extended("select 1"), m.SYNC)
    assert [e.sqlstate for e in errors(msgs)] == ["25P02"]
    msgs = await both(through, straight, extended("rollback"), m.SYNC)
    assert status(msgs) == "I"


async def test_protocol_3_2_long_cancel_key_cancels(proxy: Any, pg_database: str):
    client = await agent(proxy, pg_database, protocol=(3, 2))
    try:
        assert client.negotiation is None
        assert client.key is not None and len(client.key.secret) == 32
        # wrong key: nothing is cancelled
        client.send(m.query("select pg_sleep(0.5)"))
        await asyncio.sleep(0.1)
        wrong = bytes([client.key.secret[0] ^ 1]) + client.key.secret[1:]
        assert await send_cancel(proxy.host, proxy.port, client.key.pid, wrong) == b""
        msgs = await client.until_ready()
        assert errors(msgs) == [] and status(msgs) == "I"
        # the right key cancels promptly
        client.send(m.query("select pg_sleep(30)"))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await send_cancel(proxy.host, proxy.port, client.key.pid, client.key.secret)
        msgs = await client.until_ready(timeout=10)
        assert [e.sqlstate for e in errors(msgs)] == ["57014"]
        assert time.monotonic() - started < 5
        assert rows(await client.query("select 'still here'")) == [(b"still here",)]
    finally:
        await client.close()


async def test_cancel_with_3_0_key_and_wrong_pid(proxy: Any, pg_database: str):
    client = await agent(proxy, pg_database)
    try:
        assert client.key is not None and len(client.key.secret) == 4
        client.send(m.query("select pg_sleep(0.5)"))
        await asyncio.sleep(0.1)
        await send_cancel(proxy.host, proxy.port, client.key.pid + 1, client.key.secret)
        msgs = await client.until_ready()
        assert errors(msgs) == []
        client.send(m.query("select pg_sleep(30)"))
        await asyncio.sleep(0.2)
        await send_cancel(proxy.host, proxy.port, client.key.pid, client.key.secret)
        assert [e.sqlstate for e in errors(await client.until_ready())] == ["57014"]
    finally:
        await client.close()


async def test_protocol_3_3_is_negotiated_down_to_3_2(proxy: Any, pg_server: Any, pg_database: str):
    client = await agent(proxy, pg_database, protocol=(3, 3))
    reference = await direct(pg_server, pg_database, protocol=(3, 3))
    try:
        assert client.negotiation is not None
        assert client.negotiation.newest_minor == 2
        assert reference.negotiation == client.negotiation
        assert client.key is not None and len(client.key.secret) == 32
        assert rows(await client.query("select 1")) == [(b"1",)]
    finally:
        await client.close()
        await reference.close()


@pytest.mark.parametrize("version", [(3, 0), (3, 2)])
async def test_pq_options_are_reported_unsupported(
    proxy: Any, pg_server: Any, pg_database: str, version: tuple[int, int]
):
    opts = {"_pq_.foo": "bar"}
    client = await agent(proxy, pg_database, protocol=version, protocol_options=opts)
    reference = await direct(pg_server, pg_database, protocol=version, protocol_options=opts)
    try:
        assert client.negotiation is not None
        assert client.negotiation.unrecognized_options == ("_pq_.foo",)
        # same answer as PostgreSQL: the version the client asked for, not a newer one
        assert reference.negotiation is not None
        assert client.negotiation == reference.negotiation
        assert client.negotiation.newest_minor == version[1]
        assert rows(await client.query("select 1")) == [(b"1",)]
    finally:
        await client.close()
        await reference.close()


async def test_split_and_packed_writes_behave_identically(proxy: Any, pg_database: str):
    script = (
        m.query("select 1 as a; select 'x' as b")
        + extended("select $1::int * 3", (b"14",))
        + m.SYNC
        + m.Parse("sp", "select $1::text").encode()
        + m.Bind("", "sp", params=(b"q" * 300,)).encode()
        + m.Execute("", 0).encode()
        + m.Close("S", "sp").encode()
        + m.SYNC
        + m.query("select 1/0")
        + m.query("select g from generate_series(1, 50) g")
    )
    packed = await agent(proxy, pg_database)
    dribbled = await agent(proxy, pg_database)
    try:
        packed.send(script)
        got_packed: list[Any] = []
        for _ in range(5):
            got_packed += await packed.until_ready()
        # the startup and every message arrive one byte per TCP send
        await dribbled.send_split(script, size=1, pause=0.0002)
        got_dribbled: list[Any] = []
        for _ in range(5):
            got_dribbled += await dribbled.until_ready()
        assert shape(got_packed) == shape(got_dribbled)
        assert len(rows(got_packed)) == 1 + 1 + 1 + 1 + 50
        assert [e.sqlstate for e in errors(got_packed)] == ["22012"]
    finally:
        await packed.close()
        await dribbled.close()


async def test_startup_packet_split_byte_by_byte(proxy: Any, pg_database: str):
    client = await RawClient.open(proxy.host, proxy.port)
    try:
        await client.send_split(
            StartupMessage((3, 0), {"user": AGENT, "database": pg_database}).encode()
        )
        first = await client.recv()
        assert isinstance(first, m.AuthenticationSASL)
        assert "SCRAM-SHA-256" in first.mechanisms
        scram = ScramClientExchange(AGENT, AGENT_PASSWORD)
        await client.send_split(m.sasl_initial_response("SCRAM-SHA-256", scram.first()), size=3)
        cont = await client.recv()
        await client.send_split(m.sasl_response(scram.cont(cont.data)), size=2)
        msgs = await client.until_ready()
        assert "AuthenticationOk" in names(msgs) and status(msgs) == "I"
        assert rows(await client.query("select 'ok'")) == [(b"ok",)]
    finally:
        await client.close()
