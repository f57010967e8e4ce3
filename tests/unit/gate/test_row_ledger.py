"""The rows-per-window bookkeeping, without a database or a clock: time is a number."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbgate.gate.row_window import EVERY_TABLE, RowLedger

A = "agent"
ORDERS = "public.orders"
CUSTOMERS = "public.customers"


def covered(ledger: RowLedger, *lengths: int) -> RowLedger:
    """As if a read of the shared totals (all zero) covered these window lengths."""
    ledger.read_totals({}, lengths)
    return ledger


def test_buckets_are_named_by_their_end() -> None:
    ledger = RowLedger(bucket_seconds=10)
    assert ledger.bucket_end(0) == 10
    assert ledger.bucket_end(9.999) == 10
    assert ledger.bucket_end(10) == 20
    assert ledger.bucket_end(1_700_000_005.5) == 1_700_000_010


def test_a_row_leaves_the_window_when_its_bucket_ends_before_the_window_starts() -> None:
    ledger = covered(RowLedger(bucket_seconds=10), 60)
    ledger.charge(A, [ORDERS], 7, now=105)  # bucket (100, 110]
    assert ledger.used(A, ORDERS, 60, now=105) == 7
    assert ledger.used(A, ORDERS, 60, now=165) == 7  # read exactly one window ago
    assert ledger.used(A, ORDERS, 60, now=169.999) == 7  # its bucket still ends inside
    assert ledger.used(A, ORDERS, 60, now=170) == 0  # ... and now before it: gone
    assert ledger.used(A, CUSTOMERS, 60, now=105) == 0
    assert ledger.used("other", ORDERS, 60, now=105) == 0


@given(
    t=st.floats(min_value=0, max_value=2e9, allow_nan=False),
    window=st.integers(min_value=1, max_value=30 * 86_400),
    bucket=st.integers(min_value=1, max_value=600),
)
def test_a_row_counts_for_at_least_the_window_and_at_most_one_bucket_more(
    t: float, window: int, bucket: int
) -> None:
    ledger = covered(RowLedger(bucket_seconds=bucket), window)
    ledger.charge(A, [ORDERS], 1, now=t)
    assert ledger.used(A, ORDERS, window, now=t) == 1
    assert ledger.used(A, ORDERS, window, now=t + window) == 1  # never early
    assert ledger.used(A, ORDERS, window, now=t + window + bucket) == 0  # at most a bucket late


def test_rows_count_once_on_their_way_to_the_shared_totals() -> None:
    ledger = covered(RowLedger(bucket_seconds=10), 60)
    ledger.charge(A, [ORDERS, CUSTOMERS], 100, now=5)
    ledger.charge(A, [ORDERS], 20, now=6)
    assert ledger.used(A, ORDERS, 60, now=7) == 120
    batch = ledger.take_pending()  # being written
    ledger.charge(A, [ORDERS], 3, now=8)  # arrives meanwhile
    assert ledger.used(A, ORDERS, 60, now=8) == 123
    ledger.flushed(batch, ok=True)  # written, not yet read back
    assert ledger.used(A, ORDERS, 60, now=8) == 123
    # A read that began after the write: the totals include it (and other replicas').
    ledger.read_totals({(A, ORDERS, 60): 120 + 50, (A, CUSTOMERS, 60): 100}, [60])
    assert ledger.used(A, ORDERS, 60, now=9) == 173  # 120 + 50 elsewhere + 3 pending
    assert ledger.used(A, CUSTOMERS, 60, now=9) == 100


def test_a_failed_write_keeps_its_rows_pending() -> None:
    ledger = covered(RowLedger(bucket_seconds=10), 60)
    ledger.charge(A, [ORDERS], 10, now=5)
    batch = ledger.take_pending()
    ledger.charge(A, [ORDERS], 1, now=6)
    ledger.flushed(batch, ok=False)
    assert ledger.used(A, ORDERS, 60, now=7) == 11
    assert ledger.in_flight == {}
    assert ledger.pending == {(A, ORDERS): {10: 11}}


def test_a_window_no_read_covered_has_no_answer_and_a_longer_one_covers_it() -> None:
    ledger = RowLedger(bucket_seconds=10)
    assert ledger.used(A, ORDERS, 60, now=5) is None
    ledger.read_totals({(A, ORDERS, 3600): 40}, [3600, 86_400])
    assert ledger.covering(60) == 3600
    assert ledger.used(A, ORDERS, 60, now=5) == 40  # an hour's rows bound a minute's
    assert ledger.covering(86_401) is None
    assert ledger.used(A, ORDERS, 2 * 86_400, now=5) is None


def test_every_table_account_counts_against_each_table() -> None:
    ledger = RowLedger(bucket_seconds=10)
    ledger.read_totals({(A, EVERY_TABLE, 60): 5, (A, ORDERS, 60): 1}, [60])
    assert ledger.used(A, ORDERS, 60, now=1) == 6
    assert ledger.used(A, CUSTOMERS, 60, now=1) == 5
    assert ledger.used("other", CUSTOMERS, 60, now=1) == 0


def test_pending_buckets_stay_bounded_and_lose_no_row() -> None:
    ledger = covered(RowLedger(bucket_seconds=1, max_entries=8), 10**6)
    charged: dict[str, int] = {}
    for second in range(200):
        for i in range(3):
            table = f"public.t{(second * 3 + i) % 40}"
            ledger.charge(A, [table], second + 1, now=float(second))
            charged[table] = charged.get(table, 0) + second + 1
    assert ledger.folded > 0
    assert sum(len(b) for b in ledger.pending.values()) <= 8 + 1  # + one every-table account
    # Nothing lost: each table is charged at least what it read (folded rows that
    # had no room of their own count against every table, so possibly more).
    for table, rows in charged.items():
        assert ledger.used(A, table, 10**6, now=200.0) >= rows
    everywhere = ledger.pending.get((A, EVERY_TABLE), {})
    assert sum(sum(b.values()) for b in ledger.pending.values()) == sum(charged.values())
    assert sum(everywhere.values()) > 0


def test_folding_moves_rows_later_never_earlier() -> None:
    ledger = covered(RowLedger(bucket_seconds=10, max_entries=2), 60)
    ledger.charge(A, [ORDERS], 1, now=5)  # bucket 10
    ledger.charge(A, [ORDERS], 2, now=15)  # bucket 20
    ledger.charge(A, [ORDERS], 4, now=25)  # full: folded, all in bucket 30
    assert ledger.pending == {(A, ORDERS): {30: 7}}
    assert ledger.used(A, ORDERS, 60, now=75) == 7  # the first row would have left at 70
    assert ledger.used(A, ORDERS, 60, now=90) == 0


def test_a_failed_write_past_the_bound_is_folded() -> None:
    ledger = covered(RowLedger(bucket_seconds=1, max_entries=4), 100)
    for s in range(4):
        ledger.charge(A, [ORDERS], 1, now=float(s))
    batch = ledger.take_pending()
    for s in range(4, 8):
        ledger.charge(A, [ORDERS], 1, now=float(s))
    ledger.flushed(batch, ok=False)
    assert sum(len(b) for b in ledger.pending.values()) <= 4
    assert ledger.used(A, ORDERS, 100, now=8.0) == 8


def test_forget_before_drops_only_old_buckets() -> None:
    ledger = covered(RowLedger(bucket_seconds=10), 60)
    ledger.charge(A, [ORDERS], 1, now=5)
    ledger.charge(A, [ORDERS], 2, now=95)
    ledger.forget_before(50)
    assert ledger.pending == {(A, ORDERS): {100: 2}}


@pytest.mark.parametrize(("bucket", "entries"), [(0, 10), (10, 0)])
def test_bad_settings_are_refused(bucket: int, entries: int) -> None:
    with pytest.raises(ValueError, match="must be at least 1"):
        RowLedger(bucket_seconds=bucket, max_entries=entries)


def test_the_every_table_account_itself_is_counted_once() -> None:
    ledger = RowLedger(bucket_seconds=10)
    ledger.read_totals({(A, EVERY_TABLE, 60): 5}, [60])
    ledger.charge(A, [EVERY_TABLE], 2, now=1)
    assert ledger.used(A, EVERY_TABLE, 60, now=1) == 7


def test_rows_written_but_never_read_back_stay_bounded() -> None:
    ledger = covered(RowLedger(bucket_seconds=1, max_entries=4), 100)
    for s in range(12):
        ledger.charge(A, [ORDERS], 1, now=float(s))
        ledger.flushed(ledger.take_pending(), ok=True)  # the read of totals keeps failing
    assert sum(len(b) for b in ledger.sent.values()) <= 4
    assert ledger.used(A, ORDERS, 100, now=12.0) == 12


_steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("charge"),
            st.sampled_from([A, "other"]),
            st.lists(st.sampled_from([ORDERS, CUSTOMERS, "public.items"]), min_size=1, max_size=3),
            st.integers(1, 50),
            st.floats(0, 200),
        ),
        st.tuples(st.just("take"), st.booleans()),
        st.tuples(st.just("forget"), st.floats(0, 200)),
    ),
    max_size=40,
)


def _run(ledger: RowLedger, steps: list[tuple]) -> None:
    for step in steps:
        if step[0] == "charge":
            _, identity, names, rows, at = step
            ledger.charge(identity, names, rows, at)
        elif step[0] == "take":
            ledger.flushed(ledger.take_pending(), ok=step[1])
        else:
            ledger.forget_before(step[1])


@given(_steps, _steps, st.floats(0, 400))
def test_no_account_grows_by_more_than_its_identity_was_charged(earlier, steps, now) -> None:
    """What a windowed read's quick verdict builds on (WindowedBinds): between two
    reads of the totals, whatever the ledger does — writes that succeed or fail,
    folding past its bounds, rows counted against every table — no table's count for
    an identity grows by more than ``charged[identity]`` does."""
    ledger = covered(RowLedger(bucket_seconds=10, max_entries=8), 60, 600)
    _run(ledger, earlier)
    tables = (ORDERS, CUSTOMERS, "public.items", EVERY_TABLE)
    before = {(t, w): ledger.used(A, t, w, now) for t in tables for w in (60, 600)}
    charged = ledger.charged.get(A, 0)
    epoch = ledger.epoch
    _run(ledger, steps)
    grown = ledger.charged.get(A, 0) - charged
    if ledger.epoch == epoch:
        for (t, w), was in before.items():
            assert ledger.used(A, t, w, now) - was <= grown


def test_what_can_count_rows_again_starts_a_new_epoch() -> None:
    """A fold keeps rows past their bucket (they may count again at a later time) and
    a read brings other replicas' rows: both move the epoch, charges do not."""
    ledger = covered(RowLedger(bucket_seconds=10, max_entries=3), 60)
    start = ledger.epoch
    for t in (0, 10, 20):
        ledger.charge(A, [ORDERS], 1, now=t)
    assert ledger.epoch == start and ledger.charged[A] == 3
    assert ledger.used(A, ORDERS, 60, now=80) == 1  # two are out of the window
    ledger.charge(A, [CUSTOMERS], 1, now=20)  # no room: everything folded
    assert ledger.epoch == start + 1
    assert ledger.used(A, ORDERS, 60, now=80) == 3  # counted again, by the fold
    covered(ledger, 60)
    assert ledger.epoch == start + 2
