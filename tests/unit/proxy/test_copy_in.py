"""The look at the client's COPY data (dbgate/proxy/copy_in.py) with the PII filter's
check (dbgate/pii/filters.py): a token is found however a driver cuts the stream."""

from __future__ import annotations

from struct import pack

from hypothesis import given
from hypothesis import strategies as st

from dbgate.pii.filters import COPY_TOKEN_REFUSAL, MessageFilter
from dbgate.proxy.copy_in import CopyInCheck, copy_fail_frame
from dbgate.wire.frontend import CopyFail, decode_frontend

TOKEN = b"tok_email_h" + b"0123456789abcdef" * 2
CHECK = MessageFilter(lambda entity, value: "", lambda s, t, c: None, lambda s, t: False).copy_data


def _refused(pieces: list[bytes]) -> int | None:
    """The index of the piece replaced by a CopyFail, or None."""
    check = CopyInCheck(CHECK)
    for i, piece in enumerate(pieces):
        if check.data(piece) is not None:
            return i
    return None


@given(st.binary(max_size=300), st.binary(max_size=300), st.data())
def test_a_token_is_found_wherever_the_stream_is_cut(
    before: bytes, after: bytes, data: st.DataObject
) -> None:
    stream = before + b"\t" + TOKEN + b"\n" + after
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    refused = _refused(pieces)
    assert refused is not None
    # never before the piece where the token ends
    end = len(before) + 1 + len(TOKEN)
    assert sum(len(p) for p in pieces[: refused + 1]) >= end


def test_a_token_right_after_binary_field_lengths_is_found() -> None:
    """In binary COPY a field's length stands right before its bytes; 48 bytes is '0'."""
    row = pack("!h", 2) + pack("!i", 4) + pack("!i", 7) + pack("!i", 48) + TOKEN.ljust(48, b"0")
    assert _refused([b"PGCOPY\n\xff\r\n\x00" + bytes(8) + row + b"\xff\xff"]) == 0


def test_text_that_only_looks_like_a_token_passes() -> None:
    for text in (
        b"tok_email_",
        b"tok_email_h" + b"0" * 31,
        b"TOK_EMAIL_H" + b"0" * 32,
        b"tok_email",
        b"tok__h" + b"0" * 32,
    ):
        assert _refused([b"1\t" + text + b"\n"]) is None, text


def test_the_check_starts_afresh_after_the_copy_ends() -> None:
    check = CopyInCheck(CHECK)
    assert check.data(b"1\t" + TOKEN[:10]) is None
    check.ended()
    assert check.data(TOKEN[10:] + b"\n") is None


def test_the_copyfail_carries_the_reason_as_the_server_reads_it() -> None:
    frame = copy_fail_frame(COPY_TOKEN_REFUSAL + "\0 cut")
    assert frame[:1] == b"f"
    assert int.from_bytes(frame[1:5], "big") == len(frame) - 1
    message = decode_frontend(frame[0], frame[5:])
    assert message == CopyFail(COPY_TOKEN_REFUSAL + " cut")
