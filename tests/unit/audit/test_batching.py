"""When the audit writer waits for a batch to fill, and when it writes at once."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbgate.audit.writer import AuditWriter, gather_for


@pytest.mark.parametrize(
    ("now", "last_write", "delay", "queued", "batch", "hurry", "wait"),
    [
        # the last write began 10 ms ago: wait the rest of the 50 ms
        (100.010, 100.000, 0.05, 5, 2000, False, 0.040),
        # a quiet spell: the first record goes straight out
        (100.060, 100.000, 0.05, 1, 2000, False, 0.0),
        (100.000, -math.inf, 0.05, 1, 2000, False, 0.0),
        # someone waits for a commit (durable record, flush, stop, a crowded queue)
        (100.010, 100.000, 0.05, 5, 2000, True, 0.0),
        # a full batch (or more) is written at once
        (100.010, 100.000, 0.05, 2000, 2000, False, 0.0),
        (100.010, 100.000, 0.05, 2001, 2000, False, 0.0),
        (100.010, 100.000, 0.05, 1999, 2000, False, 0.040),
        # nothing queued: nothing to wait for
        (100.010, 100.000, 0.05, 0, 2000, False, 0.0),
        # no delay configured: every wake-up writes
        (100.010, 100.000, 0.0, 5, 2000, False, 0.0),
    ],
)
def test_gather_for(now, last_write, delay, queued, batch, hurry, wait) -> None:
    assert gather_for(now, last_write, delay, queued, batch, hurry) == pytest.approx(wait)


def test_a_negative_batch_delay_is_refused() -> None:
    with pytest.raises(ValueError, match="batch_delay"):
        AuditWriter("postgresql://unused/state", batch_delay=-1)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.binary(min_size=1, max_size=50), max_size=40), st.integers(1, 200))
def test_a_batch_sent_in_pieces_is_the_batch(rows, size) -> None:
    """The writer sends a batch's COPY data in pieces (binary.Chunks): together they
    are the batch byte for byte, none empty, each of at least ``size`` bytes but the
    last."""
    import asyncio

    from dbgate.audit import binary

    async def pieces() -> list[bytes]:
        return [p async for p in binary.Chunks(rows, size)]

    got = asyncio.run(pieces())
    assert b"".join(got) == bytes(binary.batch(rows))
    assert all(got) and all(len(p) >= size for p in got[:-1])
