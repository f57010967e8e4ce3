"""Exchanges as generators: the login flows' contract with whoever drives them.

A login is a conversation: send something, read the peer's answer, decide, send the
next thing. Written as ``await``s on a socket, the protocol rules and the I/O are
one piece of code that only a socket can test. Written as a generator, as psycopg
writes its protocol steps, the rules are pure and the driver is a few lines:

* each ``answer = yield out`` asks the driver to send ``out`` (possibly ``b""``) to
  the peer, then to send the peer's next typed message back in, as
  ``(type byte, body)``;
* the generator's return value is the flow's result; an exception it raises ends
  the exchange, and the driver answers the peer as that exception says.

The proxy drives flows over a :class:`~dbgate.proxy.channel.Channel`
(:meth:`~dbgate.proxy.channel.Channel.exchange`); the unit tests drive them with
scripted peers, or one flow against another, with no sockets at all.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeAlias, TypeVar

T = TypeVar("T")

Message: TypeAlias = tuple[int, bytes]
"""One typed message as a flow receives it: ``(type byte, body)``."""

Flow: TypeAlias = Generator[bytes, Message, T]
"""A flow that yields bytes to send, is sent the answers, and returns a ``T``."""
