"""Table tests: every protocol message encodes to the documented bytes and decodes back."""

from __future__ import annotations

import pytest

from dbgate.wire import messages as m
from dbgate.wire.errors import ProtocolError
from dbgate.wire.framing import FrameReader


def split(wire: bytes) -> tuple[int, bytes]:
    """(type byte, body) of exactly one encoded message, checking its length word."""
    assert int.from_bytes(wire[1:5], "big") == len(wire) - 1
    return wire[0], wire[5:]


FRONTEND = [
    (m.Bind("", "", (), (), ()), b"B\0\0\0\x0c\0\0\0\0\0\0\0\0"),
    (
        m.Bind("p1", "s1", (1,), (b"ab", None), (0, 1)),
        b"B\0\0\0\x20p1\0s1\0\0\x01\0\x01\0\x02\0\0\0\x02ab\xff\xff\xff\xff\0\x02\0\0\0\x01",
    ),
    (m.Close("S", "stmt"), b"C\0\0\0\x0aSstmt\0"),
    (m.Close("P", ""), b"C\0\0\0\x06P\0"),
    (m.CopyData(b"1\t2\n"), b"d\0\0\0\x081\t2\n"),
    (m.CopyDone(), b"c\0\0\0\x04"),
    (m.CopyFail("disk full"), b"f\0\0\0\x0edisk full\0"),
    (m.Describe("S", "s"), b"D\0\0\0\x07Ss\0"),
    (m.Describe("P", ""), b"D\0\0\0\x06P\0"),
    (m.Execute("", 0), b"E\0\0\0\x09\0\0\0\0\0"),
    (m.Execute("c", 100), b"E\0\0\0\x0ac\0\0\0\0\x64"),
    (m.Flush(), b"H\0\0\0\x04"),
    (
        m.FunctionCall(1598, (0,), (b"x", None), 1),
        b"F\0\0\0\x19\0\0\x06\x3e\0\x01\0\0\0\x02\0\0\0\x01x\xff\xff\xff\xff\0\x01",
    ),
    (m.AuthResponse(b"opaque"), b"p\0\0\0\x0aopaque"),
    (m.Parse("", "SELECT 1", ()), b"P\0\0\0\x10\0SELECT 1\0\0\0"),
    (m.Parse("s", "SELECT $1", (23,)), b"P\0\0\0\x16s\0SELECT $1\0\0\x01\0\0\0\x17"),
    (m.Query("SELECT 'é'"), b"Q\0\0\0\x10SELECT '\xc3\xa9'\0"),
    (m.Sync(), b"S\0\0\0\x04"),
    (m.Terminate(), b"X\0\0\0\x04"),
]

BACKEND = [
    (m.AuthenticationOk(), b"R\0\0\0\x08\0\0\0\0"),
    (m.AuthenticationKerberosV5(), b"R\0\0\0\x08\0\0\0\x02"),
    (m.AuthenticationCleartextPassword(), b"R\0\0\0\x08\0\0\0\x03"),
    (m.AuthenticationMD5Password(b"abcd"), b"R\0\0\0\x0c\0\0\0\x05abcd"),
    (m.AuthenticationGSS(), b"R\0\0\0\x08\0\0\0\x07"),
    (m.AuthenticationGSSContinue(b"tok"), b"R\0\0\0\x0b\0\0\0\x08tok"),
    (m.AuthenticationSSPI(), b"R\0\0\0\x08\0\0\0\x09"),
    (
        m.AuthenticationSASL(("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")),
        b"R\0\0\0\x2a\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0",
    ),
    (m.AuthenticationSASLContinue(b"r=x"), b"R\0\0\0\x0b\0\0\0\x0br=x"),
    (m.AuthenticationSASLFinal(b"v=y"), b"R\0\0\0\x0b\0\0\0\x0cv=y"),
    (m.BackendKeyData(1234, b"\0\0\0\x07"), b"K\0\0\0\x0c\0\0\x04\xd2\0\0\0\x07"),
    (m.BackendKeyData(7, bytes(range(32))), b"K\0\0\0\x28\0\0\0\x07" + bytes(range(32))),
    (m.BindComplete(), b"2\0\0\0\x04"),
    (m.CloseComplete(), b"3\0\0\0\x04"),
    (m.CommandComplete("SELECT 5"), b"C\0\0\0\x0dSELECT 5\0"),
    (m.CopyData(b""), b"d\0\0\0\x04"),
    (m.CopyDone(), b"c\0\0\0\x04"),
    (m.CopyInResponse(0, (0, 0)), b"G\0\0\0\x0b\0\0\x02\0\0\0\0"),
    (m.CopyOutResponse(1, (1,)), b"H\0\0\0\x09\x01\0\x01\0\x01"),
    (m.CopyBothResponse(0, ()), b"W\0\0\0\x07\0\0\0"),
    (m.DataRow((b"1", None, b"")), b"D\0\0\0\x13\0\x03\0\0\0\x011\xff\xff\xff\xff\0\0\0\0"),
    (m.EmptyQueryResponse(), b"I\0\0\0\x04"),
    (
        m.ErrorResponse({"S": "ERROR", "C": "42P01", "M": "no t"}),
        b"E\0\0\0\x19SERROR\0C42P01\0Mno t\0\0",
    ),
    (m.NoticeResponse({"S": "NOTICE", "M": "hi"}), b"N\0\0\0\x11SNOTICE\0Mhi\0\0"),
    (m.FunctionCallResponse(b"42"), b"V\0\0\0\x0a\0\0\0\x0242"),
    (m.FunctionCallResponse(None), b"V\0\0\0\x08\xff\xff\xff\xff"),
    (
        m.NegotiateProtocolVersion(2, ("_pq_.x",)),
        b"v\0\0\0\x13\0\x03\0\x02\0\0\0\x01_pq_.x\0",
    ),
    (m.NoData(), b"n\0\0\0\x04"),
    (m.NotificationResponse(9, "ch", "pay"), b"A\0\0\0\x0f\0\0\0\x09ch\0pay\0"),
    (m.ParameterDescription((23, 25)), b"t\0\0\0\x0e\0\x02\0\0\0\x17\0\0\0\x19"),
    (m.ParameterStatus("TimeZone", "UTC"), b"S\0\0\0\x11TimeZone\0UTC\0"),
    (m.ParseComplete(), b"1\0\0\0\x04"),
    (m.PortalSuspended(), b"s\0\0\0\x04"),
    (m.ReadyForQuery("I"), b"Z\0\0\0\x05I"),
    (m.ReadyForQuery("T"), b"Z\0\0\0\x05T"),
    (m.ReadyForQuery("E"), b"Z\0\0\0\x05E"),
    (
        m.RowDescription((m.FieldDescription("id", 16384, 1, 23, 4, -1, 0),)),
        b"T\0\0\0\x1b\0\x01id\0\0\0\x40\0\0\x01\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
    ),
]


@pytest.mark.parametrize(("msg", "wire"), FRONTEND, ids=lambda v: type(v).__name__)
def test_frontend_encode_and_decode(msg: m.FrontendMessage, wire: bytes) -> None:
    assert msg.encode() == wire
    assert wire[0] == msg.type_byte
    assert m.decode_frontend(*split(wire)) == msg


@pytest.mark.parametrize(("msg", "wire"), BACKEND, ids=lambda v: type(v).__name__)
def test_backend_encode_and_decode(msg: m.BackendMessage, wire: bytes) -> None:
    assert msg.encode() == wire
    assert wire[0] == msg.type_byte
    assert m.decode_backend(*split(wire)) == msg


def test_every_message_class_is_in_a_table() -> None:
    covered = {type(msg) for msg, _ in FRONTEND + BACKEND}
    covered |= {m.PasswordMessage, m.SASLInitialResponse, m.SASLResponse, m.GSSResponse}
    exported = {
        obj
        for name in m.__all__
        if isinstance(obj := getattr(m, name), type) and hasattr(obj, "encode")
    }
    assert exported - {m.FieldDescription} == covered


@pytest.mark.parametrize(
    ("msg", "wire"),
    [
        (m.PasswordMessage("secret"), b"p\0\0\0\x0bsecret\0"),
        (
            m.SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=abc"),
            b"p\0\0\0\x21SCRAM-SHA-256\0\0\0\0\x0bn,,n=,r=abc",
        ),
        (m.SASLInitialResponse("X", None), b"p\0\0\0\x0aX\0\xff\xff\xff\xff"),
        (m.SASLResponse(b"c=biws"), b"p\0\0\0\x0ac=biws"),
        (m.GSSResponse(b"\x01\x02"), b"p\0\0\0\x06\x01\x02"),
    ],
)
def test_auth_responses_decode_as_opaque_then_parse_in_context(msg, wire: bytes) -> None:
    assert msg.encode() == wire
    t, body = split(wire)
    decoded = m.decode_frontend(t, body)
    assert decoded == m.AuthResponse(body)
    if isinstance(msg, m.PasswordMessage):
        assert m.parse_password(decoded.data) == msg.password
    if isinstance(msg, m.SASLInitialResponse):
        assert m.parse_sasl_initial_response(decoded.data) == (msg.mechanism, msg.data)


# ------------------------------------------------------------------ fast helpers


def test_fast_parsers_agree_with_dataclasses() -> None:
    bind = m.Bind("portal", "stmt", (0, 1), (b"\x00\x01", None), (1,))
    assert m.parse_bind(split(bind.encode())[1]) == (
        "portal",
        "stmt",
        (0, 1),
        (b"\x00\x01", None),
        (1,),
    )
    assert m.parse_parse(split(m.Parse("s", "SELECT $1", (0, 25)).encode())[1]) == (
        "s",
        "SELECT $1",
        (0, 25),
    )
    assert m.parse_query(b"SELECT 1\0") == "SELECT 1"
    assert m.parse_execute(b"c1\0\0\0\0\x05") == ("c1", 5)
    assert m.parse_describe(b"Sname\0") == ("S", "name")
    assert m.parse_close(b"P\0") == ("P", "")
    assert m.parse_data_row(b"\0\x02\0\0\0\x01a\xff\xff\xff\xff") == (b"a", None)
    assert m.parse_ready_for_query(b"T") == "T"
    assert m.parse_command_complete(b"INSERT 0 3\0") == "INSERT 0 3"


def test_error_response_builder_fields() -> None:
    wire = m.error_response(
        "42501", "denied by rule r1", detail="why", hint="ask", position=7, where=None
    )
    msg = m.decode_backend(*split(wire))
    assert isinstance(msg, m.ErrorResponse)
    assert (msg.sqlstate, msg.message, msg.severity) == ("42501", "denied by rule r1", "ERROR")
    assert msg.fields == {
        "S": "ERROR",
        "V": "ERROR",
        "C": "42501",
        "M": "denied by rule r1",
        "D": "why",
        "H": "ask",
        "P": "7",
    }
    fatal = m.decode_backend(*split(m.error_response("28P01", "bad", severity="FATAL", t="tbl")))
    assert fatal.severity == "FATAL"
    assert fatal.fields["t"] == "tbl"


def test_notice_response_builder() -> None:
    msg = m.decode_backend(*split(m.notice_response("held: approval 12")))
    assert isinstance(msg, m.NoticeResponse)
    assert (msg.sqlstate, msg.message, msg.severity) == ("00000", "held: approval 12", "NOTICE")


@pytest.mark.parametrize(
    ("call", "exc"),
    [
        (lambda: m.error_response("4250", "x"), ValueError),
        (lambda: m.error_response("42501", "x", bogus="y"), ValueError),
        (lambda: m.error_response("42501", "x", M="twice"), ValueError),
        (lambda: m.error_response("42501", "nul\0inside"), ValueError),
        (lambda: m.ready_for_query("X"), ValueError),
        (lambda: m.backend_key_data(1, b"abc"), ValueError),
        (lambda: m.backend_key_data(1, bytes(257)), ValueError),
        (lambda: m.backend_key_data(-1, b"abcd"), ValueError),
        (lambda: m.auth_md5_password(b"abc"), ValueError),
        (lambda: m.Execute("", 2**31).encode(), ValueError),
        (lambda: m.Close("X", "").encode(), ValueError),
        (lambda: m.DataRow((b"",) * 65536).encode(), ValueError),
        (lambda: m.AuthenticationSASL(("",)).encode(), ValueError),
        (lambda: m.CopyInResponse(2, ()).encode(), ValueError),
        (lambda: m.ErrorResponse({"CC": "x"}).encode(), ValueError),
        (lambda: m.NegotiateProtocolVersion(65536).encode(), ValueError),
    ],
)
def test_encoders_refuse_unrepresentable_values(call, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        call()


def test_builders_produce_expected_bytes() -> None:
    assert m.ready_for_query("I") == b"Z\0\0\0\x05I"
    assert m.parameter_status("a", "b") == b"S\0\0\0\x08a\0b\0"
    assert m.backend_key_data(1, b"\0\0\0\x02") == b"K\0\0\0\x0c\0\0\0\x01\0\0\0\x02"
    assert m.command_complete("BEGIN") == b"C\0\0\0\x0aBEGIN\0"
    assert m.auth_ok() == b"R\0\0\0\x08\0\0\0\0"
    assert m.auth_cleartext_password() == m.AuthenticationCleartextPassword().encode()
    assert m.auth_md5_password(b"salt") == m.AuthenticationMD5Password(b"salt").encode()
    assert m.auth_sasl() == m.AuthenticationSASL(("SCRAM-SHA-256",)).encode()
    assert m.auth_sasl_continue(b"x") == m.AuthenticationSASLContinue(b"x").encode()
    assert m.auth_sasl_final(b"x") == m.AuthenticationSASLFinal(b"x").encode()
    assert m.data_row([b"a", None]) == m.DataRow((b"a", None)).encode()
    assert m.query("SELECT 1") == m.Query("SELECT 1").encode()
    assert m.password_message("pw") == m.PasswordMessage("pw").encode()
    assert m.sasl_initial_response("M", b"d") == m.SASLInitialResponse("M", b"d").encode()
    assert m.sasl_response(b"d") == m.SASLResponse(b"d").encode()
    for const, cls in [
        (m.PARSE_COMPLETE, m.ParseComplete),
        (m.BIND_COMPLETE, m.BindComplete),
        (m.CLOSE_COMPLETE, m.CloseComplete),
        (m.NO_DATA, m.NoData),
        (m.PORTAL_SUSPENDED, m.PortalSuspended),
        (m.EMPTY_QUERY_RESPONSE, m.EmptyQueryResponse),
        (m.SYNC, m.Sync),
        (m.FLUSH, m.Flush),
        (m.TERMINATE, m.Terminate),
        (m.COPY_DONE, m.CopyDone),
    ]:
        assert const == cls().encode()


def test_builders_frame_cleanly_for_the_frame_reader() -> None:
    stream = (
        m.auth_ok()
        + m.parameter_status("server_version", "17.2")
        + m.backend_key_data(42, b"k" * 32)
        + m.ready_for_query("I")
    )
    chunk, frames = FrameReader().feed(stream)
    assert chunk == stream
    decoded = [m.decode_backend(t, chunk[s:e]) for t, s, e in frames]
    assert decoded == [
        m.AuthenticationOk(),
        m.ParameterStatus("server_version", "17.2"),
        m.BackendKeyData(42, b"k" * 32),
        m.ReadyForQuery("I"),
    ]


# ------------------------------------------------------------------ malformed input

MALFORMED_FRONTEND = [
    ("Q", b"SELECT 1", "not NUL-terminated"),
    ("Q", b"SELECT 1\0x", "trailing"),
    ("Q", b"SELECT \xff\0", "invalid UTF-8"),
    ("Q", b"", "not NUL-terminated"),
    ("P", b"s\0SELECT 1\0\0", "truncated"),
    ("P", b"s\0SELECT 1\0\0\x02\0\0\0\x17", "exceeds"),
    ("P", b"s\0SELECT 1\0\0\0junk", "trailing"),
    ("P", b"s", "not NUL-terminated"),
    ("B", b"\0\0\0\0\0\x01\xff\xff\xff\xfe\0\0", "negative value length"),
    ("B", b"\0\0\0\0\0\x01\0\0\0\x09ab\0\0", "truncated"),
    ("B", b"\0\0\0\x02\0\0\0\0\0\x01\xff\xff\xff\xff\0\0", "2 parameter formats for 1"),
    ("B", b"\0\0\0\0\0\0\0\0\0", "trailing"),
    ("B", b"\0\0\0\0\0\0", "truncated"),
    ("E", b"\0\0\0\0", "expected 4 bytes"),
    ("E", b"p\0\0\0\0\0\0", "expected 4 bytes"),
    ("E", b"p", "not NUL-terminated"),
    ("D", b"X\0", "kind must be"),
    ("D", b"S", "too short"),
    ("D", b"Sx\0\0", "trailing"),
    ("C", b"Sx", "not NUL-terminated"),
    ("S", b"\0", "empty body"),
    ("H", b"x", "empty body"),
    ("X", b"\0\0", "empty body"),
    ("c", b"\0", "empty body"),
    ("f", b"oops", "not NUL-terminated"),
    ("F", b"\0\0\0\x01\0\0\0\0", "truncated"),
    ("F", b"\0\0\0\x01\0\x02\0\0\0\0\0\0\0\0", "2 argument formats for 0"),
    ("F", b"\0\0\0\x01\0\0\0\0\0\0\0", "trailing"),
    ("Z", b"", "invalid frontend message type"),
    ("\x00", b"", "invalid frontend message type"),
]


@pytest.mark.parametrize(("t", "body", "why"), MALFORMED_FRONTEND)
def test_malformed_frontend_messages_raise_protocol_error(t: str, body: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why) as info:
        m.decode_frontend(ord(t), body)
    assert info.value.sqlstate == "08P01"


MALFORMED_BACKEND = [
    ("R", b"\0\0\0", "truncated"),
    ("R", b"\0\0\0\0\0", "trailing"),
    ("R", b"\0\0\0\x06", "unknown authentication request code 6"),
    ("R", b"\0\0\0\x05abc", "truncated"),
    ("R", b"\0\0\0\x0aSCRAM-SHA-256\0", "not NUL-terminated"),
    ("K", b"\0\0\0\x01abc", "secret key must be 4..256"),
    ("K", b"\0\0\0\x01" + bytes(257), "secret key must be 4..256"),
    ("C", b"SELECT 1", "one NUL-terminated string"),
    ("G", b"\x02\0\0", "overall COPY format"),
    ("H", b"\0\0\x01", "exceeds"),
    ("D", b"\0\x01\xff\xff\xff\xfe", "negative value length"),
    ("D", b"\0\x01\0\0\0\x05abc", "truncated"),
    ("D", b"\0\x00\0", "trailing"),
    ("D", b"\xff\xff", "exceeds"),
    ("E", b"SERROR\0", "truncated"),
    ("E", b"SERR", "not NUL-terminated"),
    ("E", b"SERROR\0\0x", "trailing"),
    ("N", b"M\xc3\x28\0\0", "invalid UTF-8"),
    ("V", b"\xff\xff\xff\xfd", "negative value length"),
    ("v", b"\0\x03\0\x02\xff\xff\xff\xff", "exceeds"),
    ("v", b"\0\x03\0\x02\0\0\0\x01", "exceeds"),
    ("v", b"\0\0\0\x02\0\0\0\0", "offers protocol 0.2, expected 3.x"),
    ("A", b"\0\0\0\x01ch\0", "not NUL-terminated"),
    ("t", b"\0\x01\0\0", "exceeds"),
    ("S", b"a\0", "not NUL-terminated"),
    ("Z", b"X", "invalid transaction status"),
    ("Z", b"II", "invalid transaction status"),
    ("T", b"\0\x01id\0" + bytes(17), "truncated"),
    ("T", b"\0\x02" + b"id\0" + bytes(18), "exceeds"),
    ("1", b"\0", "empty body"),
    ("Q", b"", "invalid backend message type"),
]


@pytest.mark.parametrize(("t", "body", "why"), MALFORMED_BACKEND)
def test_malformed_backend_messages_raise_protocol_error(t: str, body: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        m.decode_backend(ord(t), body)


@pytest.mark.parametrize(
    ("parser", "body", "why"),
    [
        (m.parse_password, b"pw", "not NUL-terminated"),
        (m.parse_password, b"pw\0x", "trailing"),
        (m.parse_sasl_initial_response, b"SCRAM\0\0\0\0\x05ab", "truncated"),
        (m.parse_sasl_initial_response, b"SCRAM\0\xff\xff\xff\xff!", "trailing"),
        (m.parse_sasl_initial_response, b"SCRAM", "not NUL-terminated"),
        (m.parse_execute, b"\0\0\0\0\0\0", "expected 4 bytes"),
    ],
)
def test_contextual_parsers_reject_malformed(parser, body: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        parser(body)


def test_error_response_fields_are_strict_utf8_but_values_stay_raw() -> None:
    row = m.decode_backend(ord("D"), b"\0\x01\0\0\0\x02\xff\xfe")
    assert row == m.DataRow((b"\xff\xfe",))
    with pytest.raises(ProtocolError, match="invalid UTF-8"):
        m.parse_parse(b"\xff\0SELECT 1\0\0\0")


def test_passwords_stay_out_of_reprs() -> None:
    assert "hunter2" not in repr(m.PasswordMessage("hunter2"))
    assert "hunter2" not in repr(m.decode_frontend(ord("p"), b"hunter2\0"))


def test_frame_wraps_a_body_like_the_encoders_do() -> None:
    assert m.frame(ord("S"), b"a\0b\0") == m.parameter_status("a", "b")
    assert m.frame(ord("Z"), b"I") == m.ready_for_query("I")


def test_parse_parameter_status() -> None:
    assert m.parse_parameter_status(m.parameter_status("TimeZone", "UTC")[5:]) == (
        "TimeZone",
        "UTC",
    )
    assert m.parse_parameter_status(b"bad\xff\0v\0") == ("bad\ufffd", "v")
