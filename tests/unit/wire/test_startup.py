"""Startup-phase packets: decoding, version negotiation, encoders used towards upstream."""

from __future__ import annotations

import pytest

from dbgate.wire import messages as m
from dbgate.wire.errors import ProtocolError
from dbgate.wire.framing import StartupReader
from dbgate.wire.startup import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    negotiate_protocol_version,
    parse_startup_packet,
)


def body_of(packet: bytes) -> bytes:
    """What StartupReader.feed returns for one complete packet."""
    reader = StartupReader()
    body = reader.feed(packet)
    assert body is not None
    assert reader.take_rest() == b""
    return body


PACKETS = [
    (SSLRequest(), b"\0\0\0\x08\x04\xd2\x16\x2f"),
    (GSSENCRequest(), b"\0\0\0\x08\x04\xd2\x16\x30"),
    (CancelRequest(1234, b"\0\0\0\x2a"), b"\0\0\0\x10\x04\xd2\x16\x2e\0\0\x04\xd2\0\0\0\x2a"),
    (
        CancelRequest(7, bytes(range(32))),
        b"\0\0\0\x2c\x04\xd2\x16\x2e\0\0\0\x07" + bytes(range(32)),
    ),
    (
        StartupMessage((3, 0), {"user": "alice", "database": "demo"}),
        b"\0\0\0\x22\0\x03\0\0user\0alice\0database\0demo\0\0",
    ),
    (
        StartupMessage((3, 2), {"user": "bob"}),
        b"\0\0\0\x12\0\x03\0\x02user\0bob\0\0",
    ),
]


@pytest.mark.parametrize(("packet", "wire"), PACKETS, ids=lambda v: type(v).__name__)
def test_encode_and_parse(packet, wire: bytes) -> None:
    assert packet.encode() == wire
    assert parse_startup_packet(body_of(wire)) == packet


def test_startup_message_accessors_and_no_negotiation_for_supported_versions() -> None:
    for minor in (0, 1, 2):
        msg = parse_startup_packet(
            body_of(StartupMessage((3, minor), {"user": "u", "application_name": "a"}).encode())
        )
        assert isinstance(msg, StartupMessage)
        assert msg.user == "u"
        assert msg.database == "u"  # the server's default: database = user
        assert msg.needs_negotiation is False
        assert msg.negotiated_protocol == (3, minor)


def test_newer_minor_version_is_accepted_with_negotiation() -> None:
    msg = parse_startup_packet(body_of(StartupMessage((3, 9), {"user": "u"}).encode()))
    assert isinstance(msg, StartupMessage)
    assert msg.protocol == (3, 9)
    assert msg.needs_negotiation is True
    assert msg.negotiated_protocol == (3, 2)
    assert msg.negotiation() == m.NegotiateProtocolVersion(2, ()).encode()


def test_protocol_options_are_separated_and_reported_unsupported() -> None:
    wire = StartupMessage(
        (3, 2), {"user": "u", "database": "d"}, {"_pq_.compression": "on"}
    ).encode()
    msg = parse_startup_packet(body_of(wire))
    assert isinstance(msg, StartupMessage)
    assert msg.params == {"user": "u", "database": "d"}
    assert msg.protocol_options == {"_pq_.compression": "on"}
    assert msg.unsupported_options == ("_pq_.compression",)
    assert msg.needs_negotiation is True
    assert msg.encode() == wire
    reply = m.decode_backend(msg.negotiation()[0], msg.negotiation()[5:])
    assert reply == m.NegotiateProtocolVersion(2, ("_pq_.compression",))


def test_negotiate_protocol_version_bytes() -> None:
    # The first field is the full version number 3.2, as PostgreSQL sends it.
    assert negotiate_protocol_version(2, ["_pq_.a", "_pq_.b"]) == (
        b"v\0\0\0\x1a\0\x03\0\x02\0\0\0\x02_pq_.a\0_pq_.b\0"
    )


@pytest.mark.parametrize(
    ("body", "sqlstate", "why"),
    [
        (b"\0\x02\0\0user\0u\0\0", "0A000", "unsupported frontend protocol 2.0"),
        (b"\0\x04\0\0user\0u\0\0", "0A000", "unsupported frontend protocol 4.0"),
        (b"\0\x03\0\0\0", "28000", "no PostgreSQL user name"),
        (b"\0\x03\0\0user\0\0\0", "28000", "no PostgreSQL user name"),
        (b"\0\x03\0\0database\0d\0\0", "28000", "no PostgreSQL user name"),
        (b"\0\x03\0\0user\0u\0", "08P01", "parameter without a value"),
        (b"\0\x03\0\0user\0u", "08P01", "expected terminator"),
        (b"\0\x03\0\0user\0", "08P01", "parameter without a value"),
        (b"\0\x03\0\0\0user\0u\0\0", "08P01", "expected terminator"),
        (b"\0\x03\0\0user\0u\0user\0v\0\0", "08P01", "duplicate startup parameter 'user'"),
        (b"\0\x03\0\0user\0\xff\0\0", "08P01", "invalid UTF-8"),
        (b"\x04\xd2\x16\x2f\0", "08P01", "SSLRequest must be 8 bytes"),
        (b"\x04\xd2\x16\x30\0\0\0\0", "08P01", "GSSENCRequest must be 8 bytes"),
        (b"\x04\xd2\x16\x2e\0\0\0\x01abc", "08P01", "secret key must be 4..256"),
        (b"\x04\xd2\x16\x2e\0\0", "08P01", "secret key must be 4..256"),
        (b"\x04\xd2\x16\x2e\0\0\0\x01" + bytes(257), "08P01", "secret key must be 4..256"),
        (b"\0\x03", "08P01", "too short"),
    ],
)
def test_malformed_startup_packets(body: bytes, sqlstate: str, why: str) -> None:
    with pytest.raises(ProtocolError, match=why) as info:
        parse_startup_packet(body)
    assert info.value.sqlstate == sqlstate


def test_startup_reader_hands_back_bytes_pipelined_after_ssl_request() -> None:
    reader = StartupReader()
    hello = b"\x16\x03\x01\x02\x00"  # start of a TLS ClientHello
    assert reader.feed(SSLRequest().encode()[:3]) is None
    body = reader.feed(SSLRequest().encode()[3:] + hello)
    assert parse_startup_packet(body) == SSLRequest()
    assert reader.take_rest() == hello


@pytest.mark.parametrize(
    "call",
    [
        lambda: CancelRequest(1, b"abc").encode(),
        lambda: StartupMessage((3, 0), {"user": "a\0b"}).encode(),
        lambda: StartupMessage((3, 0), {"": "x"}).encode(),
        lambda: StartupMessage((3, 70000), {"user": "u"}).encode(),
    ],
)
def test_encoders_refuse_unrepresentable_packets(call) -> None:
    with pytest.raises(ValueError):
        call()


def test_negotiation_offers_the_clients_own_version_not_a_newer_one() -> None:
    # libpq aborts when offered a version above the one it asked for.
    wire = StartupMessage((3, 0), {"user": "u"}, {"_pq_.x": "1"}).encode()
    msg = parse_startup_packet(body_of(wire))
    assert isinstance(msg, StartupMessage)
    reply = m.decode_backend(msg.negotiation()[0], msg.negotiation()[5:])
    assert reply == m.NegotiateProtocolVersion(0, ("_pq_.x",))
