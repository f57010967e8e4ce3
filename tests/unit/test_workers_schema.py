"""Schema-change announcements between workers without a state database
(``dbgate.workers_schema``), over real Unix sockets: a send returns once every running
sibling has taken the announcement in, in the order sent; a sibling that is not
running is passed over, one that is running and does not answer fails the send (the
DDL is then refused)."""

from __future__ import annotations

import asyncio
import shutil
import struct
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dbgate.gate.schema_loads import SchemaLoads
from dbgate.gate.schema_peers import PeersUnreachable, SchemaPeers
from dbgate.workers_schema import MAX_PAYLOAD, SiblingTransport, socket_path


@pytest.fixture
async def directory() -> AsyncIterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dbgate-schema-"))  # short: socket paths
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def _started(directory: Path, index: int, count: int, heard: list[str]) -> SiblingTransport:
    transport = SiblingTransport(directory, index, count, timeout=0.5)
    await transport.start(heard.append, lambda: None)
    return transport


async def test_every_running_sibling_has_taken_it_in_when_send_returns(directory: Path) -> None:
    heard: list[list[str]] = [[], [], []]
    ends = [await _started(directory, i, 3, heard[i]) for i in range(3)]
    try:
        for n in range(5):
            await ends[0].send(f"m{n}")
        assert heard[0] == []  # not to itself
        assert heard[1] == heard[2] == [f"m{n}" for n in range(5)]  # all, in order
    finally:
        for end in ends:
            await end.stop()
    assert not socket_path(directory, 1).exists()


async def test_a_sibling_not_running_is_passed_over(directory: Path) -> None:
    """Worker 1 was never started (no socket); worker 2 died leaving its socket file
    (nobody accepts on it). Their successors read their snapshots afresh."""
    import socket

    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(socket_path(directory, 2)))
    stale.close()  # the file stays, nobody listens
    heard: list[str] = []
    sender = await _started(directory, 0, 3, heard)
    try:
        await sender.send("m")
    finally:
        await sender.stop()


async def test_a_running_sibling_that_does_not_answer_fails_the_send(directory: Path) -> None:
    taken, done = asyncio.Event(), asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        taken.set()
        await done.wait()  # never answers while the sender waits
        writer.close()

    server = await asyncio.start_unix_server(silent, path=str(socket_path(directory, 1)))
    sender = await _started(directory, 0, 2, [])
    try:
        with pytest.raises(PeersUnreachable, match="worker 1 did not answer"):
            await sender.send("m")
        assert taken.is_set()
    finally:
        done.set()
        await sender.stop()
        server.close()


async def _raw(directory: Path, index: int, packet: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(socket_path(directory, index)))
    writer.write(packet)
    await writer.drain()
    answer = await reader.read(1)
    writer.close()
    return answer


async def test_malformed_announcements_are_ignored_unanswered(directory: Path) -> None:
    heard: list[str] = []
    receiver = await _started(directory, 1, 2, heard)
    try:
        assert await _raw(directory, 1, struct.pack("!I", MAX_PAYLOAD + 1)) == b""
        assert await _raw(directory, 1, struct.pack("!I", 2) + b"\xff\xfe") == b""
        assert await _raw(directory, 1, struct.pack("!I", 10) + b"short") == b""
        assert heard == []
        assert await _raw(directory, 1, struct.pack("!I", 2) + b"ok") == b"1"
        assert heard == ["ok"]
    finally:
        await receiver.stop()


async def test_ddl_through_one_worker_puts_the_others_snapshots_in_flux(directory: Path) -> None:
    """Two workers' SchemaPeers over this transport: the announcement made before a
    DDL statement runs has the other's snapshot in flux when ``opening`` returns, and
    its end has it read again."""

    async def load(database: str) -> str:
        return "snapshot"

    loads = [SchemaLoads[str]("the schema", load) for _ in range(2)]
    peers = [
        SchemaPeers(SiblingTransport(directory, i, 2, timeout=0.5), [loads[i]]) for i in range(2)
    ]
    for p in peers:
        await p.start()
    try:
        await loads[1].ensure("db")
        assert await peers[0].opening("db")
        assert loads[1].in_flux("db") and not loads[0].in_flux("db")
        peers[0].began("db")
        peers[0].ended("db")
        await asyncio.gather(*peers[0]._sends)
        await asyncio.gather(*loads[1]._settling)
        assert not loads[1].in_flux("db")
        await peers[1].stop()  # a stopped sibling is not running: passed over
        assert await peers[0].opening("db")
    finally:
        for p in peers:
            await p.stop()
