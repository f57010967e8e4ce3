"""A blind byte pump: the floor for any relay written in Python on uvloop.

Opt-in target (``--targets direct,pgbouncer,dbgate,pump``). It accepts a client,
opens a TCP connection to PostgreSQL and copies bytes both ways with one
``transport.write`` per read and no parsing at all; the client authenticates to
PostgreSQL itself. Nothing a real gateway needs is there, so nothing built on the
same event loop can beat it: ``dbgate / pump`` is the cost of dbgate's own logic,
``pump / pgbouncer`` the cost of Python + uvloop per hop.

Run as ``python -m bench.pump LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT``.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import uvloop

from bench.procs import LOOPBACK, ManagedProcess, free_port, wait_for_port


class _Side(asyncio.Protocol):
    """One end of the pump; forwards every read to ``peer`` unchanged."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.pending: list[bytes] = []  # bytes read before the peer connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.pending.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    # Back-pressure: stop reading the peer while our buffer is full.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


async def _serve(listen_port: int, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    connecting: set[asyncio.Task[None]] = set()  # strong references until done

    def client_factory() -> _Side:
        client = _Side()

        async def connect() -> None:
            try:
                _, server = await loop.create_connection(_Side, host, port)
            except OSError:
                if client.transport is not None:
                    client.transport.close()
                return
            server.peer, client.peer = client, server
            for data in client.pending:
                server.transport.write(data)  # type: ignore[union-attr]
            client.pending.clear()

        task = loop.create_task(connect())
        connecting.add(task)
        task.add_done_callback(connecting.discard)
        return client

    srv = await loop.create_server(client_factory, LOOPBACK, listen_port)
    async with srv:
        await srv.serve_forever()


class Pump:
    """The pump running as a child process (its own process group, like the others)."""

    def __init__(self, work_dir: Path, upstream_host: str, upstream_port: int) -> None:
        work_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        argv = [
            sys.executable,
            "-m",
            "bench.pump",
            str(self.port),
            upstream_host,
            str(upstream_port),
        ]
        cwd = Path(__file__).resolve().parent.parent
        self.process = ManagedProcess("pump", argv, work_dir / "pump.log", cwd=cwd)
        wait_for_port(LOOPBACK, self.port, 20, self.process.proc)

    def stop(self) -> None:
        self.process.stop()


def start_pump(work_dir: Path, upstream_host: str, upstream_port: int) -> Pump:
    return Pump(work_dir, upstream_host, upstream_port)


def main() -> None:
    listen_port, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    uvloop.run(_serve(listen_port, host, port))


if __name__ == "__main__":
    main()
