"""Measured batches are invisible under their limit: the same bytes sent straight to
PostgreSQL and through dbgate measuring every write give the client the same
answers (differential, hypothesis).

Programs are random sequences of extended-protocol batches — writes that dbgate
measures, reads, statements that fail, a named statement bound again, Flushes —
and simple Queries (measured writes, multi-statement strings, transaction blocks
opened and closed around the batches), sent in one write (pipelined). dbgate sets up its savepoint before each batch that opens
with a measured write, holds its answers, and releases them; the client must see
exactly what PostgreSQL sent it without dbgate: every message's type, command tags,
SQLSTATEs, rows and transaction status.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbgate.proxy.seams import Allow, Refuse, Statement
from dbgate.proxy.session_info import SessionInfo
from dbgate.wire import messages as m
from tests.integration.drivers_common import counted_table
from tests.integration.rawclient import RawClient, agent, direct

#: Hypothesis for both tests: one proxy serves every example of a test.
EXAMPLES = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
LIMIT = 1_000  # never reached here: every batch stays under it
NEVER = Refuse("54000", "dbgate: over the limit (not expected in this test)")


class MeasureEveryWrite:
    """Measures every UPDATE, in the extended protocol as the gate does: its Parse
    opens the measurement, its Binds carry the limit. ``approve``: every batch past
    the limit is approved at once (it is undone, then sent again)."""

    inspects_binds = False

    def __init__(self, limit: int = LIMIT, approve: bool = False) -> None:
        self.asked: list[int] = []
        self.limit = limit
        self.approve = approve

    def inspect(self, session: SessionInfo, stmt: Statement) -> Allow:
        if not stmt.sql.lstrip().upper().startswith("UPDATE"):
            return Allow()
        if stmt.kind == "parse":
            return Allow(check_binds=True, opens_measurement=True)
        return Allow(max_changes=self.limit, over_changes=self._over)

    def _over(self, count: int) -> Allow | Refuse:
        self.asked.append(count)
        # -1: a write bound in the middle of a batch, decided before it runs (allowed
        # here, unmeasured); any count is a measurement past the limit (never here)
        return Allow() if count == -1 or self.approve else NEVER


@pytest.fixture(scope="module")
def table(pg_dsn: str) -> Iterator[str]:
    yield from counted_table(pg_dsn, "mdiff")


# -- programs --------------------------------------------------------------------------

STEPS = ("write", "read", "fail", "named")


def programs(flushes: bool = True) -> st.SearchStrategy[list[tuple[str, Any]]]:
    flush = st.booleans() if flushes else st.just(False)
    step = st.tuples(st.sampled_from(STEPS), st.integers(0, 12), flush)  # kind, k, flush
    batch = st.lists(step, min_size=1, max_size=4)
    item = st.one_of(
        batch.map(lambda b: ("batch", b)),
        st.sampled_from(
            [
                ("query", "BEGIN"),
                ("query", "COMMIT"),
                ("query", "ROLLBACK"),
                ("query", "UPDATE {t} SET v = v WHERE id <= 5"),
                (
                    "query",
                    "UPDATE {t} SET v = v WHERE id <= 2; SELECT id FROM {t} WHERE id < 5 ORDER BY id",
                ),
                ("query", "UPDATE {t} SET v = v WHERE id <= 2 RETURNING id; SELECT 1 / 0"),
            ]
        ),
    )
    return st.lists(item, min_size=1, max_size=6)


def encode(program: list[tuple[str, Any]], table: str) -> tuple[bytes, int]:
    """The program's bytes, and how many ReadyForQuery messages answer them."""
    texts = {
        "write": f"UPDATE {table} SET v = v WHERE id <= $1",
        "read": f"SELECT id FROM {table} WHERE id <= $1 ORDER BY id",
        "fail": "SELECT 1 / ($1::int - $1::int)",
    }
    out: list[bytes] = []
    readies = 0
    for kind, body in program:
        if kind == "query":
            out.append(m.Query(body.format(t=table)).encode())
            readies += 1
            continue
        for what, k, flush in body:
            value = (str(k).encode(),)
            if what == "named":  # prepared at the start of the session
                out.append(m.Bind("", "upd", params=value).encode())
            else:
                out.append(m.Parse("", texts[what]).encode())
                out.append(m.Bind("", "", params=value).encode())
                out.append(m.Describe("P", "").encode())
            out.append(m.Execute("", 0).encode())
            if flush:
                out.append(m.Flush().encode())
        out.append(m.Sync().encode())
        readies += 1
    return b"".join(out), readies


def seen(msgs: list[Any]) -> list[tuple[Any, ...]]:
    """What a client can tell apart in the answers."""
    out: list[tuple[Any, ...]] = []
    for x in msgs:
        name = type(x).__name__
        if isinstance(x, m.CommandComplete):
            out.append((name, x.tag))
        elif isinstance(x, (m.ErrorResponse, m.NoticeResponse)):
            out.append((name, x.sqlstate))
        elif isinstance(x, m.DataRow):
            out.append((name, x.columns))
        elif isinstance(x, m.ReadyForQuery):
            out.append((name, x.status))
        else:
            out.append((name,))
    return out


async def run(client: RawClient, data: bytes, readies: int, table: str) -> list[Any]:
    client.send(m.Parse("upd", f"UPDATE {table} SET v = v WHERE id <= $1").encode(), m.Sync())
    await client.until_ready()
    client.send(data)
    answers: list[Any] = []
    for _ in range(readies):
        answers += await client.until_ready()
    await client.query("ROLLBACK")  # whatever block the program left open
    return seen(answers)


@pytest.fixture
def measuring(make_proxy: Any) -> tuple[Any, MeasureEveryWrite]:
    inspector = MeasureEveryWrite()
    return make_proxy(inspector=inspector), inspector


@EXAMPLES
@given(program=programs())
def test_a_measured_batch_under_its_limit_looks_as_without_dbgate(
    program: list[tuple[str, Any]],
    measuring: tuple[Any, MeasureEveryWrite],
    pg_server: Any,
    pg_database: str,
    table: str,
) -> None:
    proxy, inspector = measuring
    inspector.asked.clear()  # the proxy lives across examples
    expected, got = compare(proxy, pg_server, pg_database, table, program)
    assert got == expected, program
    assert set(inspector.asked) <= {-1}


@pytest.fixture
def approving(make_proxy: Any) -> tuple[Any, MeasureEveryWrite]:
    inspector = MeasureEveryWrite(limit=3, approve=True)
    return make_proxy(inspector=inspector), inspector


@EXAMPLES
@given(program=programs(flushes=False))
def test_a_measured_batch_approved_past_its_limit_looks_as_without_dbgate(
    program: list[tuple[str, Any]],
    approving: tuple[Any, MeasureEveryWrite],
    pg_server: Any,
    pg_database: str,
    table: str,
) -> None:
    """Past a limit of 3 rows each batch is undone, approved at once and sent again:
    the client still sees only what PostgreSQL answers the batch once (its writes
    change nothing visible, so running one twice cannot be told from once)."""
    proxy, _ = approving
    expected, got = compare(proxy, pg_server, pg_database, table, program)
    assert got == expected, program


def compare(
    proxy: Any, pg_server: Any, pg_database: str, table: str, program: list[tuple[str, Any]]
) -> tuple[list[Any], list[Any]]:
    """What a client sees running ``program`` straight, and through ``proxy``."""
    data, readies = encode(program, table)

    async def both() -> tuple[list[Any], list[Any]]:
        straight = await direct(pg_server, pg_database)
        through = await agent(proxy, pg_database)
        try:
            return (
                await run(straight, data, readies, table),
                await run(through, data, readies, table),
            )
        finally:
            await straight.close()
            await through.close()

    return asyncio.run(both())
