"""The compiled quick path of the audit writer (dbgate/audit/_seal.c) against the
Python path on what a client or server controls in a statement record: many raw
parameters of every length around BLAKE2b's block size, empty ones and NULLs, and an
outcome with every control character, quotes, backslashes, wide characters, NUL and
lone surrogates. Same values, hash and COPY row; the same fallback to the full path."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbgate.audit import binary
from dbgate.audit import rows as rows_module
from dbgate.audit.canonical import GENESIS, INDEX
from dbgate.audit.events import StatementEvent
from dbgate.audit.rows import RowBuilder
from dbgate.audit.sealing import seal

pytest.importorskip("dbgate.audit._seal", reason="the compiled quick path is optional")

NOW = 1_800_000_000_000_000

_param = st.one_of(
    st.none(),
    st.binary(max_size=4),
    st.integers(120, 260).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
)
_outcome = st.one_of(
    st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=40),
    st.text(max_size=20),
    st.sampled_from(["\\u0000", "a\\", '"' * 30, "\x00", "\ud800x", "😀" * 5, "\x7f\x80\xff"]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.lists(_param, max_size=40).map(tuple), _outcome, st.booleans()),
        min_size=1,
        max_size=5,
    ),
    st.sampled_from([b"k", b"key" * 21, b"x" * 64, b"y" * 65]),
)
def test_the_compiled_quick_path_gives_the_python_record_for_hostile_fields(
    runs: list[tuple[tuple[bytes | None, ...], str, bool]], key: bytes
) -> None:
    base = StatementEvent(
        "completed", "SELECT $1", identity="agent", session_id=3, params=(b"1",), outcome="ok"
    )
    compiled, python, reference = (RowBuilder("r1", key) for _ in range(3))
    events = [base, base] + [
        replace(base, params=params, outcome=outcome, rows=len(params) if counted else None)
        for params, outcome, counted in runs
    ]
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
        expected = reference.build(event, NOW)
        expected[INDEX["chain"]], expected[INDEX["seq"]] = "r1.chain", seq
        expected[INDEX["logged_at"]] = NOW + seq
        assert got[1] == seal(expected, prev)
        assert got[2] == binary.encode(expected, prev, got[1])
        prev = got[1]
    assert any(shape.native for shape in compiled._shapes.values())
