"""From events to stored values: coercion, hashing of raw parameters, truncation,
scrubbing, escaping, and the canonical form."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from dbgate.audit import binary
from dbgate.audit import rows as rows_module
from dbgate.audit.canonical import (
    FIELDS,
    GENESIS,
    INDEX,
    NAMES,
    FieldType,
    canonical,
    digest,
    link,
    parse_canonical,
)
from dbgate.audit.events import (
    ApprovalEvent,
    DetokenizeEvent,
    ReloadEvent,
    SessionEvent,
    StatementEvent,
    WriterEvent,
)
from dbgate.audit.rows import RowBuilder
from dbgate.audit.scrub import scrub
from dbgate.audit.sealing import seal
from dbgate.audit.times import iso, parse_iso, to_us

NOW = 1_800_000_000_000_000


def build(event, **kw) -> dict:
    values = RowBuilder("r1", b"key", **kw).build(event, NOW)
    return dict(zip(NAMES, values, strict=True))


def chained(event, seq: int = 1, prev: bytes = GENESIS) -> tuple[list, bytes]:
    values = RowBuilder("r1", b"key").build(event, NOW)
    values[INDEX["chain"]] = "r1.chain"
    values[INDEX["seq"]] = seq
    values[INDEX["logged_at"]] = NOW
    return values, seal(values, prev)


def test_a_statement_fills_its_fields() -> None:
    row = build(
        StatementEvent(
            "completed",
            "SELECT * FROM t WHERE id = $1",
            at=1_700_000_000.25,
            identity="agent",
            session_id=3,
            categories=("read",),
            tables=("public.t",),
            columns=("t.id",),
            outcome="SELECT 1",
            rows=1,
            duration_us=250,
            tokenized=False,
        )
    )
    assert row["kind"] == "statement" and row["event"] == "completed"
    assert row["at"] == 1_700_000_000_250_000 and row["replica"] == "r1"
    assert row["categories"] == ["read"] and row["tables"] == ["public.t"]
    assert (row["rows"], row["duration_us"], row["tokenized"]) == (1, 250, False)
    assert row["statement_length"] == len("SELECT * FROM t WHERE id = $1")
    assert row["decision"] == "allow" and row["details"] is None and row["scrubbed"] == 0
    assert row["reason"] is None and row["params"] is None  # absent is NULL


def test_other_kinds_map_to_the_same_columns() -> None:
    a = build(ApprovalEvent("rejected", "9", identity="agent", actor="carol", reason="no"))
    assert (a["kind"], a["event"], a["decision"], a["actor"], a["approval_id"]) == (
        "approval",
        "rejected",
        "rejected",
        "carol",
        "9",
    )
    d = build(DetokenizeEvent("agent", "alice", 4, columns=("customers.email",)))
    assert (d["kind"], d["rows"], d["columns"], json.loads(d["details"])) == (
        "detokenize",
        4,
        ["customers.email"],
        {"tokens": 4},
    )
    r = build(ReloadEvent("rules", False, reason="rules/x.yaml:3: bad key"))
    assert (r["kind"], r["event"], r["outcome"], r["reason"]) == (
        "reload",
        "rules",
        "failed",
        "rules/x.yaml:3: bad key",
    )
    s = build(SessionEvent("auth_failed", identity="eve", outcome="28P01"))
    assert (s["kind"], s["event"], s["outcome"]) == ("session", "auth_failed", "28P01")
    w = build(WriterEvent("chain_start", {"pid": 1}, 1.0))
    assert (w["kind"], w["event"], json.loads(w["details"])) == ("audit", "chain_start", {"pid": 1})


def test_raw_parameters_become_keyed_hashes() -> None:
    e = StatementEvent("completed", "SELECT $1, $2, $3", params=(b"secret", None, "masked"))
    one = RowBuilder("r", b"k1").build(e, NOW)[INDEX["params"]]
    again = RowBuilder("r", b"k1").build(e, NOW)[INDEX["params"]]
    other = RowBuilder("r", b"k2").build(e, NOW)[INDEX["params"]]
    assert one == again and one[0] != other[0]
    assert one[0].startswith("h:") and len(one[0]) == 34 and "secret" not in one[0]
    assert one[1:] == [None, "masked"]


def test_truncation_keeps_the_length() -> None:
    row = build(
        StatementEvent("completed", "x" * 5000, reason="r" * 999),
        max_statement_chars=1024,
        max_text_chars=256,
    )
    assert len(row["statement"]) == 1024 and row["statement_length"] == 5000
    assert len(row["reason"]) == 256


def test_a_value_across_the_cut_is_scrubbed_whole() -> None:
    """Cut first and scrubbed after, ``alice.w@example.com`` across the limit would
    stay as ``alice.w@exa``: no pattern finds half a value."""
    email = "alice.w@example.com"
    for cut in range(1, len(email)):
        statement = "x" * (1024 - cut) + " " + email + " y"
        reason = "r" * (256 - cut) + " " + email
        row = build(
            StatementEvent(
                "completed",
                statement,
                params=(reason,),
                reason=reason,
                purpose=reason,
            ),
            max_statement_chars=1024,
            max_text_chars=256,
        )
        assert len(row["statement"]) <= 1024 and row["statement_length"] == len(statement)
        for text in (row["statement"], row["reason"], row["purpose"], row["params"][0]):
            assert "alice" not in text and "@" not in text, (cut, text)
            assert len(text) <= (1024 if text is row["statement"] else 256)
    session = RowBuilder("r", b"k").build(
        SessionEvent("auth_failed", reason="f" * 8190 + " " + email), NOW
    )
    assert "alice" not in session[INDEX["reason"]]


def test_scrubbed_values_are_counted() -> None:
    row = build(
        StatementEvent(
            "completed", "SELECT 'a@b.io'", params=("078-05-1120",), purpose="call +1 415 555 0134"
        )
    )
    assert row["statement"] == "SELECT '<email>'" and row["params"] == ["<ssn>"]
    assert row["purpose"] == "call <phone>" and row["scrubbed"] == 3


def test_raw_parameters_hash_the_same_whatever_buffer_holds_them() -> None:
    from hashlib import blake2b

    builder = RowBuilder("r", b"k1")
    expected = "h:" + blake2b(b"secret", key=b"k1", digest_size=16).hexdigest()
    for value in (b"secret", bytearray(b"secret"), memoryview(b"secret")):
        e = StatementEvent("completed", "SELECT $1", params=(value,))
        assert builder.build(e, NOW)[INDEX["params"]] == [expected]


def test_repeated_texts_are_scrubbed_alike_every_time() -> None:
    builder = RowBuilder("r1", b"key")
    long_text = "SELECT 'a@b.io' " + "x" * 5000  # past what is remembered
    for _ in range(3):  # the first time scrubs, later ones remember: the same record
        for sql in ("SELECT 'a@b.io', '078-05-1120'", "SELECT 1", long_text):
            e = StatementEvent("completed", sql, application_name="app 078-05-1120")
            row = dict(zip(NAMES, builder.build(e, NOW), strict=True))
            expected, n = scrub(sql)
            assert row["statement"] == expected
            assert row["application_name"] == "app <ssn>"
            assert row["scrubbed"] == n + 1


def test_wrong_types_are_kept_and_noted() -> None:
    row = build(
        StatementEvent("completed", b"SELECT 1", rows="3", session_id=2**64, at=None, tokenized=1)
    )  # type: ignore[arg-type]
    assert row["statement"] == "SELECT 1" and row["rows"] == 3 and row["session_id"] is None
    assert row["at"] == NOW and row["tokenized"] is True
    assert json.loads(row["details"])["coerced"] == ["at", "rows", "session_id", "tokenized"]


def test_times() -> None:
    assert to_us(datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)) == parse_iso(
        "2026-01-02T03:04:05.000006Z"
    )
    assert iso(0) == "1970-01-01T00:00:00.000000Z"
    assert to_us(float("nan")) is None and to_us(True) is None and to_us(1e20) is None


def test_seal_escapes_only_records_that_need_it() -> None:
    plain, h1 = chained(StatementEvent("completed", "SELECT '\\\\'"))
    assert plain[INDEX["escaped"]] is False and plain[INDEX["statement"]] == "SELECT '\\\\'"
    assert h1 == link(GENESIS, digest(canonical(plain)))
    nul, _ = chained(StatementEvent("completed", "SELECT '\x00'", reason="a\\b"))
    assert nul[INDEX["escaped"]] is True
    assert nul[INDEX["statement"]] == "SELECT '\\x00'" and nul[INDEX["reason"]] == "a\\\\b"
    bad, _ = chained(StatementEvent("completed", b"\xff".decode("utf-8", "surrogateescape")))
    assert bad[INDEX["statement"]] == "\\xff" and bad[INDEX["escaped"]] is True
    # a literal backslash-u-0000 in the text is not a NUL: no escaping
    literal, _ = chained(StatementEvent("completed", "SELECT E'\\u0000'"))
    assert literal[INDEX["escaped"]] is False


def test_a_record_hash_covers_every_field_and_the_previous_hash() -> None:
    values, h = chained(StatementEvent("completed", "SELECT 1", identity="a", rows=1))
    assert seal(list(values), b"\x01" * 32) != h
    for i, (name, kind) in enumerate(FIELDS):
        changed = list(values)
        changed[i] = {
            FieldType.TEXT: "other",
            FieldType.INT: 12345,
            FieldType.TIME: 5,
            FieldType.BOOL: not values[i],
            FieldType.ARRAY: ["other"],
            FieldType.JSON: '{"x":1}',
        }[kind]
        assert link(GENESIS, digest(canonical(changed))) != h, name


text_values = st.one_of(
    st.none(), st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=30)
)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    st.lists(st.one_of(st.none(), st.text(max_size=10)), max_size=4),
    text_values,
    st.integers(-(2**63), 2**63 - 1),
)
def test_canonical_form_is_json_of_the_normalised_values(params, text, number) -> None:
    values, _ = chained(StatementEvent("completed", "SELECT 1"))
    values[INDEX["statement"]] = text
    values[INDEX["params"]] = params or None
    values[INDEX["rows"]] = number
    fields = parse_canonical(canonical(values))
    assert tuple(fields) != NAMES and sorted(fields) == sorted(NAMES)  # grouped, all there
    assert fields["statement"] == (text or "")
    assert fields["params"] == params
    assert fields["rows"] == number
    assert fields["chain"] == "r1.chain" and fields["seq"] == 1 and fields["details"] == {}


# Statements as the gate makes them, and as a caller's bug might: values of the wrong
# type, text that must be escaped, keys that compare equal across types (1, 1.0, True).
_odd_text = st.one_of(
    st.sampled_from(["", "agent", "pgbench", "a\x00b", "\ud800", "tok_x" + "y" * 20]),
    st.text(max_size=12),
)
_statement_events = st.builds(
    StatementEvent,
    event=st.sampled_from(["completed", "failed"]),
    statement=st.one_of(
        st.sampled_from(["SELECT $1", "UPDATE t SET v = $1 WHERE id = $2", "x\x00y"]),
        st.binary(max_size=8),
    ),
    decision=st.sampled_from(["allow", "approved"]),
    at=st.one_of(
        st.floats(1.6e9, 1.9e9), st.just(float("nan")), st.integers(1_600_000_000, 1_600_000_001)
    ),
    identity=_odd_text,
    session_id=st.one_of(st.none(), st.sampled_from([1, 2, True, 1.0, "1"])),
    application_name=_odd_text,
    params=st.one_of(
        st.just(()),
        st.lists(
            st.one_of(st.none(), st.binary(max_size=6), st.sampled_from(["masked", "a@b.example"])),
            max_size=3,
        ).map(tuple),
        st.just(["not", "a", "tuple"]),
    ),
    categories=st.one_of(st.just(("read",)), st.just(("read", "write")), st.just(["read"])),
    tables=st.sampled_from([(), ("public.t",)]),
    outcome=st.one_of(_odd_text, st.just(b"SELECT 1"), st.just("x" * 9000)),
    rows=st.one_of(st.none(), st.integers(-2, 3), st.just(2**64), st.just(True), st.just(1.5)),
    duration_us=st.one_of(st.none(), st.integers(0, 10**6), st.just("12")),
    tokenized=st.one_of(st.none(), st.booleans(), st.just(1)),
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(_statement_events, min_size=1, max_size=6), st.integers(0, 3))
def test_a_record_sealed_in_one_pass_is_the_record_built_and_sealed(events, repeat) -> None:
    """The writer's path (shapes remembered, canonical templates, row blocks) gives
    exactly the record, hash and COPY row that build(), seal() and encode() give, for
    the same statement again and again (``repeat``) and for anything unusual in it."""
    builder = RowBuilder("r1", b"key")
    reference = RowBuilder("r1", b"key")
    prev = GENESIS
    for seq, event in enumerate(events + events[:1] * repeat, start=1):
        chain = "r1.chain" if seq % 4 else "r1.other"  # one builder, another chain
        values, h, row = builder.sealed(event, NOW, chain, seq, NOW + seq, prev)
        expected = reference.build(event, NOW)
        expected[INDEX["chain"]] = chain
        expected[INDEX["seq"]] = seq
        expected[INDEX["logged_at"]] = NOW + seq
        expected_hash = seal(expected, prev)
        assert values == expected
        assert [type(v) for v in values] == [type(v) for v in expected]
        assert h == expected_hash
        assert row == binary.encode(expected, prev, expected_hash)
        prev = h


def test_the_compiled_seal_is_built() -> None:
    # make install builds it (setup.py); without it every statement record costs the
    # writer about three times the CPU, which only the benchmarks would show.
    assert rows_module._seal is not None


def test_the_compiled_shape_key_reads_what_attrgetter_reads() -> None:
    # read from the event's slots: the same tuple, also for a subclass (whose own
    # attribute wins) and an event missing a field (the same error)
    from operator import attrgetter

    names = rows_module._SHAPE_NAMES
    reference = attrgetter(*names)
    e = StatementEvent("completed", "SELECT $1", session_id=7, tables=("t",), tokenized=True)
    assert rows_module._shape_key(e) == reference(e)
    assert [type(x) for x in rows_module._shape_key(e)] == [type(x) for x in reference(e)]

    class Sub(StatementEvent):
        __slots__ = ()

    sub = Sub("completed", "SELECT 1", rule="r")
    assert rows_module._shape_key(sub) == reference(sub)
    duck = SimpleNamespace(**{n: f"<{n}>" for n in names})  # no slots: read by name
    assert rows_module._shape_key(duck) == reference(duck)
    assert rows_module._shape_key(e) == reference(e)  # the class's own offsets again
    missing = StatementEvent("completed", "SELECT 1")
    del missing.rule
    for read in (rows_module._shape_key, reference):
        try:
            read(missing)
        except AttributeError:
            pass
        else:  # pragma: no cover - the assertion
            raise AssertionError("an unset field reads as an error")


_bounded = st.one_of(st.none(), st.integers(-5, 10**9), st.sampled_from([2**63 - 1, -(2**63 - 1)]))
#: Varying fields the quick path takes ...
_quick_fields = {
    "at": st.one_of(st.floats(1.6e9, 1.9e9), st.sampled_from([-62135596799.5, 253402300799.0])),
    "outcome": st.one_of(
        st.text(max_size=12),
        st.sampled_from(["", "SELECT 1", 'a"b\\c', "\x1f\x7f\n\t\r\b\f", "é" * 8192]),
    ),
    "params": st.one_of(
        st.just(()),
        st.lists(st.one_of(st.none(), st.binary(max_size=200)), min_size=1, max_size=3).map(tuple),
    ),
    "rows": _bounded,
    "duration_us": _bounded,
}
#: ... and values that send a record down the full path.
_odd_fields = {
    "at": st.sampled_from(
        [-62135596800.0, 253402300800.0, float("inf"), float("nan"), 1_600_000_000]
    ),
    "outcome": st.sampled_from(["\x00", "a\x00", "\ud800", "é" * 8193, b"SELECT 1"]),
    "params": st.sampled_from([(b"1", "masked"), [b"a list"], ("masked",)]),
    "rows": st.sampled_from([2**63, -(2**63), True, 1.5, "12", 10**30]),
    "duration_us": st.sampled_from([2**63, -(2**63), False, 2.0, "12"]),
}
_varying_fields = st.tuples(
    st.fixed_dictionaries(_quick_fields),
    st.one_of(
        st.none(),
        st.sampled_from(sorted(_odd_fields)).flatmap(
            lambda k: st.tuples(st.just(k), _odd_fields[k])
        ),
    ),
).map(lambda t: t[0] if t[1] is None else {**t[0], t[1][0]: t[1][1]})


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(_varying_fields, min_size=1, max_size=8))
def test_the_compiled_quick_path_gives_the_python_record(runs) -> None:
    """One statement shape executed again and again with whatever its varying fields
    hold: the compiled quick path (dbgate/audit/_seal.c) gives the record, hash and
    row that the Python path gives, and gives up (the full path) where it does."""
    base = StatementEvent(
        "completed",
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        identity="bench",
        session_id=7,
        application_name="pgbench",
        params=(b"1",),
        categories=("read",),
        tables=("public.pgbench_accounts",),
        outcome="SELECT 1",
        rows=1,
        duration_us=40,
        tokenized=False,
    )
    events = [base, base] + [replace(base, **fields) for fields in runs]
    compiled = RowBuilder("r1", b"key")
    python = RowBuilder("r1", b"key")
    reference = RowBuilder("r1", b"key")
    prev = GENESIS
    saved = rows_module._seal
    for seq, event in enumerate(events, start=1):
        got = compiled.sealed(event, NOW, "r1.chain", seq, NOW + seq, prev)
        rows_module._seal = None
        try:
            want = python.sealed(event, NOW, "r1.chain", seq, NOW + seq, prev)
        finally:
            rows_module._seal = saved
        assert got == want
        assert [type(v) for v in got[0]] == [type(v) for v in want[0]]
        expected = reference.build(event, NOW)
        expected[INDEX["chain"]], expected[INDEX["seq"]] = "r1.chain", seq
        expected[INDEX["logged_at"]] = NOW + seq
        assert got[1] == seal(expected, prev)
        prev = got[1]
    assert any(shape.native for shape in compiled._shapes.values())


def test_the_compiled_quick_path_hashes_parameters_under_each_builders_key() -> None:
    """The compiled path keeps the BLAKE2b state of the last key it hashed under;
    builders with different keys, used in turn, each get their own key's hashes."""
    event = StatementEvent(
        "completed", "SELECT $1, $2", params=(b"4242", b""), outcome="SELECT 1", rows=1
    )
    builders = {key: RowBuilder("r1", key) for key in (b"key-one", b"key-two", b"")}
    seen = {}
    saved = rows_module._seal
    for seq in range(1, 7):  # each builder learns its shape, then takes the quick path
        for key, builder in builders.items():
            got = builder.sealed(event, NOW, "r1.chain", seq, NOW + seq, GENESIS)
            rows_module._seal = None
            try:
                want = RowBuilder("r1", key).sealed(event, NOW, "r1.chain", seq, NOW + seq, GENESIS)
            finally:
                rows_module._seal = saved
            assert got == want
            seen[key] = got[0][INDEX["params"]]
    natives = {key: [s.native for s in b._shapes.values()] for key, b in builders.items()}
    assert all(natives[b"key-one"]) and all(natives[b"key-two"]) and natives[b"key-one"]
    assert natives[b""] and not any(natives[b""])  # an empty key: the Python path
    assert len({tuple(v) for v in seen.values()}) == 3


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.binary(max_size=70), st.binary(max_size=300))
def test_the_compiled_chain_hash_is_the_link_of_a_record(prev, content) -> None:
    """What ``audit verify`` checks each record with: its hash from its predecessor's
    (of whatever length a tampered row holds) and its canonical bytes."""
    want = hashlib.sha256(prev + hashlib.sha256(content).digest()).digest()
    assert rows_module._seal.chain_hash(prev, content) == want
    assert rows_module._seal.chain_hash(memoryview(prev), bytearray(content)) == want


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    st.lists(
        st.tuples(st.integers(0, 2), _varying_fields, st.booleans(), st.booleans()),
        min_size=1,
        max_size=12,
    ),
    st.integers(1, 12),
)
def test_a_run_chained_in_one_compiled_loop_is_the_records_sealed_one_by_one(items, limit) -> None:
    """The writer's compiled loop (RowBuilder.chain_run) over queued items — statements
    of shapes seen before or not, with odd fields, with someone waiting, other kinds —
    chains exactly the records sealed() gives one at a time, and stops at the first
    item it leaves to sealed(), or after ``limit``."""
    from collections import deque

    from dbgate.audit.writer.queue import Item, Rec

    texts = ("SELECT a FROM t WHERE id = $1", "UPDATE t SET a = a + $1 WHERE id = $2", "BEGIN")
    builder, reference = RowBuilder("r1", b"key"), RowBuilder("r1", b"key")
    queue: deque[Item] = deque()
    for shape, fields, waited, session in items:
        if shape == 2 and session:
            event: object = SessionEvent("connect", identity="bench", session_id=7)
        else:
            event = replace(
                StatementEvent("completed", texts[shape], identity="bench", session_id=7),
                **fields,
            )
        item = Item(event, 300)
        if waited:
            item.waiters = []
        queue.append(item)
    # the shapes of the first two texts are known
    for seq, text in enumerate(texts[:2], start=1):
        e = StatementEvent("completed", text, identity="bench", session_id=7, params=(b"1",))
        for b in (builder, reference):
            b.sealed(e, NOW, "r1.chain", seq, NOW, GENESIS)
            b.sealed(e, NOW, "r1.chain", seq, NOW, GENESIS)  # and their templates
    events = [item.event for item in queue]
    prev, seq, pending, taken = GENESIS, 10, [], 0
    while queue:
        before = len(pending)
        builder.chain_run(queue, limit, "r1.chain", seq, NOW + 5, prev, Rec, pending)
        done = len(pending) - before
        assert done <= limit
        for rec in pending[before:]:
            want = reference.sealed(events[taken], NOW, "r1.chain", seq, NOW + 5, prev)
            assert (rec.values, rec.hash, rec.row) == want
            assert [type(v) for v in rec.values] == [type(v) for v in want[0]]
            assert (rec.prev, rec.waiters, rec.size, rec.seq) == (prev, None, 300, seq)
            prev, seq, taken = rec.hash, seq + 1, taken + 1
        if done < limit and queue:  # the item it left: sealed on its own, as the writer does
            item = queue.popleft()
            assert item.event is events[taken]
            got = builder.sealed(item.event, NOW, "r1.chain", seq, NOW + 5, prev)
            assert got == reference.sealed(item.event, NOW, "r1.chain", seq, NOW + 5, prev)
            prev, seq, taken = got[1], seq + 1, taken + 1
    assert taken == len(events)


def test_a_record_class_whose_init_does_more_is_made_by_calling_it() -> None:
    # the compiled chaining fills a record's slots itself only for a class that says
    # its __init__ only stores its arguments (queue.Rec.plain_init)
    from collections import deque

    from dbgate.audit.writer.queue import Item, Rec

    class Counted(Rec):
        __slots__ = ()
        plain_init = False
        made = 0

        def __init__(self, *args: object) -> None:
            super().__init__(*args)  # type: ignore[arg-type]
            type(self).made += 1

    assert Rec.plain_init is True
    builder = RowBuilder("r1", b"k" * 16)
    event = StatementEvent("completed", "SELECT $1", at=1.8e9, params=(b"1",))
    for _ in range(2):  # its shape learnt, then its compiled form made
        builder.sealed(event, NOW, "r1.chain", 1, NOW, GENESIS)
    for rec_type in (Counted, Rec):  # called twice, then not at all
        queue = deque(Item(event, 300) for _ in range(2))
        pending: list = []
        builder.chain_run(queue, 5, "r1.chain", 2, NOW, GENESIS, rec_type, pending)
        assert len(pending) == 2 and not queue
        assert all(type(r) is rec_type for r in pending)
        assert (pending[0].prev, pending[1].prev) == (GENESIS, pending[0].hash)
        assert Counted.made == 2
