"""Hypothesis strategies producing every protocol message with valid field values."""

from __future__ import annotations

from hypothesis import strategies as st

from dbgate.wire import messages as m
from dbgate.wire.startup import CancelRequest, GSSENCRequest, SSLRequest, StartupMessage

# protocol strings: any Unicode scalar value except NUL (and lone surrogates,
# which cannot be UTF-8 encoded)
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=20)
nonempty_text = text.filter(bool)
int16 = st.integers(-(2**15), 2**15 - 1)
int32 = st.integers(-(2**31), 2**31 - 1)
uint32 = st.integers(0, 2**32 - 1)
value = st.none() | st.binary(max_size=20)
values = st.lists(value, max_size=6).map(tuple)
secret = st.binary(min_size=4, max_size=256)
kind = st.sampled_from("SP")
format_code = st.sampled_from((0, 1))


@st.composite
def _formats_and_values(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[bytes | None, ...]]:
    """Format codes for n values: none, one for all, or one each (the only legal shapes)."""
    vals = draw(values)
    n_formats = draw(st.sampled_from(sorted({0, 1, len(vals)})))
    return tuple(draw(st.lists(int16, min_size=n_formats, max_size=n_formats))), vals


bind = st.builds(
    lambda names, fv, rf: m.Bind(names[0], names[1], fv[0], fv[1], rf),
    st.tuples(text, text),
    _formats_and_values(),
    st.lists(int16, max_size=4).map(tuple),
)
function_call = st.builds(
    lambda oid, fv, rf: m.FunctionCall(oid, fv[0], fv[1], rf),
    uint32,
    _formats_and_values(),
    int16,
)

# frontend messages whose decode_frontend result equals the message itself
frontend_messages = st.one_of(
    bind,
    st.builds(m.Close, kind, text),
    st.builds(m.CopyData, st.binary(max_size=40)),
    st.just(m.CopyDone()),
    st.builds(m.CopyFail, text),
    st.builds(m.Describe, kind, text),
    st.builds(m.Execute, text, int32),
    st.just(m.Flush()),
    function_call,
    st.builds(m.AuthResponse, st.binary(max_size=40)),
    st.builds(m.Parse, text, text, st.lists(uint32, max_size=5).map(tuple)),
    st.builds(m.Query, text),
    st.just(m.Sync()),
    st.just(m.Terminate()),
)

# 'p' messages whose meaning depends on context: they decode to AuthResponse
auth_responses = st.one_of(
    st.builds(m.PasswordMessage, text),
    st.builds(m.SASLInitialResponse, text, value),
    st.builds(m.SASLResponse, st.binary(max_size=40)),
    st.builds(m.GSSResponse, st.binary(max_size=40)),
)

field_description = st.builds(
    m.FieldDescription, text, uint32, int16, uint32, int16, int32, format_code
)
error_fields = st.dictionaries(st.sampled_from("SVCMDHPpqWstcdnFLRxyz"), text, max_size=8)

backend_messages = st.one_of(
    st.just(m.AuthenticationOk()),
    st.just(m.AuthenticationKerberosV5()),
    st.just(m.AuthenticationCleartextPassword()),
    st.builds(m.AuthenticationMD5Password, st.binary(min_size=4, max_size=4)),
    st.just(m.AuthenticationGSS()),
    st.builds(m.AuthenticationGSSContinue, st.binary(max_size=30)),
    st.just(m.AuthenticationSSPI()),
    st.builds(m.AuthenticationSASL, st.lists(nonempty_text, max_size=3).map(tuple)),
    st.builds(m.AuthenticationSASLContinue, st.binary(max_size=30)),
    st.builds(m.AuthenticationSASLFinal, st.binary(max_size=30)),
    st.builds(m.BackendKeyData, uint32, secret),
    st.just(m.BindComplete()),
    st.just(m.CloseComplete()),
    st.builds(m.CommandComplete, text),
    st.builds(m.CopyData, st.binary(max_size=40)),
    st.just(m.CopyDone()),
    st.builds(m.CopyInResponse, format_code, st.lists(format_code, max_size=5).map(tuple)),
    st.builds(m.CopyOutResponse, format_code, st.lists(format_code, max_size=5).map(tuple)),
    st.builds(m.CopyBothResponse, format_code, st.lists(format_code, max_size=5).map(tuple)),
    st.builds(m.DataRow, values),
    st.just(m.EmptyQueryResponse()),
    st.builds(m.ErrorResponse, error_fields),
    st.builds(m.NoticeResponse, error_fields),
    st.builds(m.FunctionCallResponse, value),
    st.builds(
        m.NegotiateProtocolVersion, st.integers(0, 0xFFFF), st.lists(text, max_size=3).map(tuple)
    ),
    st.just(m.NoData()),
    st.builds(m.NotificationResponse, uint32, text, text),
    st.builds(m.ParameterDescription, st.lists(uint32, max_size=5).map(tuple)),
    st.builds(m.ParameterStatus, text, text),
    st.just(m.ParseComplete()),
    st.just(m.PortalSuspended()),
    st.builds(m.ReadyForQuery, st.sampled_from("ITE")),
    st.builds(m.RowDescription, st.lists(field_description, max_size=4).map(tuple)),
)

param_name = nonempty_text.filter(lambda s: not s.startswith("_pq_."))
startup_messages = st.builds(
    lambda minor, user, extra, opts: StartupMessage(
        (3, minor), {"user": user, **{k: v for k, v in extra.items() if k != "user"}}, opts
    ),
    st.integers(0, 0xFFFF),
    nonempty_text,
    st.dictionaries(param_name, text, max_size=4),
    st.dictionaries(nonempty_text.map(lambda s: "_pq_." + s), text, max_size=2),
)
startup_packets = st.one_of(
    startup_messages,
    st.just(SSLRequest()),
    st.just(GSSENCRequest()),
    st.builds(CancelRequest, uint32, secret),
)
