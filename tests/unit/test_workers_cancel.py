"""The cancel relay between workers: a forwarded CancelRequest is answered only once
the session's worker is done with it, and one whose forwarder stopped waiting is
dropped (the client has moved on: acting now could hit its next statement)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dbgate.wire.startup import CancelRequest
from dbgate.workers_cancel import DELIVERED, NOT_HERE, CancelRelay, socket_path

REQUEST = CancelRequest(4242, b"\x01\x02\x03\x04")


class Sibling:
    """The session's worker: its cancel_here is recorded and can be held open."""

    def __init__(self, owns: bool = True) -> None:
        self.owns = owns
        self.calls: list[CancelRequest] = []
        self.entered = asyncio.Event()
        self.finish = asyncio.Event()
        self.finish.set()

    async def cancel_here(self, request: CancelRequest) -> bool:
        self.calls.append(request)
        self.entered.set()
        await self.finish.wait()
        return self.owns


@pytest.fixture
async def directory() -> AsyncIterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dbgate-relay-"))  # short: socket paths
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def _relay(directory: Path, index: int, sibling: Sibling) -> CancelRelay:
    relay = CancelRelay(directory, index, 2, sibling.cancel_here)
    await relay.start()
    return relay


async def _ask(directory: Path, index: int, *, then_close: bool) -> bytes:
    """Hand REQUEST to worker ``index`` as a forwarding worker would; with
    ``then_close``, stop waiting at once. Returns its answer (b'' for none)."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, str(socket_path(directory, index)))
        await loop.sock_sendall(sock, REQUEST.encode())
        if then_close:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := await asyncio.wait_for(loop.sock_recv(sock, 16), 10):
            answer += chunk
        return answer


async def test_forward_returns_only_once_the_sessions_worker_is_done(directory: Path) -> None:
    owner = Sibling()
    owner.finish.clear()
    receiver = await _relay(directory, 0, Sibling(owns=False))
    holder = await _relay(directory, 1, owner)
    try:
        forward = asyncio.ensure_future(receiver.forward(REQUEST))
        await asyncio.wait_for(owner.entered.wait(), 10)
        assert not forward.done()  # the client's cancel connection stays open meanwhile
        owner.finish.set()
        await asyncio.wait_for(forward, 10)
        assert owner.calls == [REQUEST]
    finally:
        await receiver.stop()
        await holder.stop()


async def test_the_answer_says_whether_the_session_was_there(directory: Path) -> None:
    here, elsewhere = Sibling(owns=True), Sibling(owns=False)
    relays = [await _relay(directory, 0, here), await _relay(directory, 1, elsewhere)]
    try:
        assert await _ask(directory, 0, then_close=False) == DELIVERED
        assert await _ask(directory, 1, then_close=False) == NOT_HERE
        assert here.calls == elsewhere.calls == [REQUEST]
    finally:
        for relay in relays:
            await relay.stop()


async def test_a_request_whose_forwarder_stopped_waiting_is_dropped(directory: Path) -> None:
    owner = Sibling()
    relay = await _relay(directory, 0, owner)
    try:
        # Closed before the sibling read it: the client may have been told "done" and
        # sent its next statement, which a cancel sent now would interrupt.
        assert await _ask(directory, 0, then_close=True) == b""
        assert owner.calls == []
    finally:
        await relay.stop()
