"""PII lineage of costly statements is traced off the event loop, through a real proxy.

Tracing a statement's lineage parses and walks all of it, as classifying does: on
the loop, a 250,000-row VALUES list froze every session for seconds (after its
classification had already moved to a worker). Here such statements are traced by
the classification pool's workers while a neighbour's trivial queries keep
completing, and what the trace decides still holds: PII read by a costly statement is
tokenized, a token it sends back is resolved, PII it copies is held (refused: no
approval service), and a trace that cannot finish in time holds the statement.

The neighbour's bound (1 s per query) is a liveness bound, not a benchmark: the
VALUES list below took ~3.5 s to trace on the loop (bench/bench_noisy.py measures
latency ratios).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from dbgate.app import build_gate
from dbgate.gate.classify_pool import ClassifyPool
from dbgate.gate.pii import PiiGate
from dbgate.policy.classify import clear_cache
from tests.integration.clients.conftest import DemoRole, pii_config
from tests.integration.conftest import RunningProxy
from tests.integration.neighbour import Neighbour, until

#: Costly by the pool's estimate (classified and traced in a worker), quick to do.
NOT_IDS = " ".join(f"and id <> {-i}" for i in range(1, 1500))


@dataclass
class Traced:
    dsn: str
    pool: ClassifyPool
    pii: PiiGate
    config: Any
    proxy: RunningProxy


@pytest.fixture
def traced(pg_server: Any, demo_role: DemoRole, demo_db: str) -> Iterator[Traced]:
    clear_cache()  # the texts below must be cold
    config = pii_config(pg_server, demo_role)
    pii = PiiGate(config)
    pool = ClassifyPool(workers=1, time_budget=60.0)
    running = RunningProxy(
        config, inspector=build_gate(config, None, pii, offload=pool), message_filter=pii.filter
    ).start()
    running.call(pool.start())
    try:
        yield Traced(running.dsn(demo_db), pool, pii, config, running)
    finally:
        for pid in pool.worker_pids():
            os.kill(pid, signal.SIGCONT)
        running.call(pool.close())
        running.stop()


def test_a_statement_costly_to_trace_does_not_stall_other_sessions(
    traced: Traced,
) -> None:
    dsn, pool = traced.dsn, traced.pool
    sql = "select count(*) from (values " + ",".join(f"({i})" for i in range(250_000)) + ") v(x)"
    with Neighbour(dsn) as neighbour, psycopg.connect(dsn, autocommit=True) as conn:
        before = len(neighbour.latencies)
        assert conn.execute(sql).fetchone() == (250_000,)
        ran = len(neighbour.latencies) - before
    assert not neighbour.errors
    assert ran >= 1
    assert max(neighbour.latencies) < 1.0, max(neighbour.latencies)
    assert pool.stats.traced == 1


def test_pii_read_by_a_costly_statement_is_tokenized(traced: Traced, admin_dsn: str) -> None:
    dsn, pool = traced.dsn, traced.pool
    sql = f"select id, email from customers where id = 42 {NOT_IDS}"
    with psycopg.connect(admin_dsn) as direct:
        raw = direct.execute("select email from customers where id = 42").fetchone()[0]
    with psycopg.connect(dsn, autocommit=True) as conn:
        [(id_, email)] = conn.execute(sql).fetchall()
        assert pool.stats.traced == 1
        again = conn.execute(sql).fetchall()  # remembered: not traced again
        # the extended protocol: its Parse and Bind find the trace too
        assert conn.execute(sql.replace("id = 42", "id = %s"), (42,)).fetchall() == again
    assert id_ == 42
    assert email.startswith("tok_email_") and email != raw
    assert again == [(42, email)]
    assert pool.stats.traced == 2  # the parameterized text, once


def test_a_token_sent_back_in_a_costly_statement_is_resolved(
    traced: Traced,
) -> None:
    dsn, pool = traced.dsn, traced.pool
    with psycopg.connect(dsn, autocommit=True) as conn:
        token = conn.execute("select email from customers where id = 42").fetchone()[0]
        assert token.startswith("tok_email_")
        found = conn.execute(f"select id from customers where email = '{token}' {NOT_IDS}")
        assert found.fetchall() == [(42,)]
        forged = token[:-4] + ("aaaa" if not token.endswith("aaaa") else "bbbb")
        with pytest.raises(psycopg.errors.InvalidParameterValue):  # 22023: never a miss
            conn.execute(f"select id from customers where email = '{forged}' {NOT_IDS}")
    assert pool.stats.traced == 2


def test_pii_copied_by_a_costly_statement_is_held(traced: Traced) -> None:
    dsn, pool = traced.dsn, traced.pool
    sql = (
        "update orders set status = (select email from customers where id = 42) "
        f"where id = 1 {NOT_IDS}"
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            conn.execute(sql)
        assert "writes PII (email) into orders.status" in str(info.value)
        assert conn.execute("select status from orders where id = 1").fetchone()[0] != ""
    assert pool.stats.traced == 1


def test_a_trace_that_cannot_finish_in_time_holds_the_statement(
    traced: Traced,
) -> None:
    dsn, pool = traced.dsn, traced.pool
    sql = f"select full_name from customers where id = 7 {NOT_IDS}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute(sql).fetchone()[0].startswith("tok_")
    assert pool.stats.traced == 1

    async def new_rooms() -> None:  # same schema, new coverage: every trace forgotten
        traced.pii.use_config(traced.config, [])

    traced.proxy.call(new_rooms())
    # the classification is remembered: only the trace waits for the stopped worker
    pool.time_budget = 1.0
    [pid] = pool.worker_pids()
    os.kill(pid, signal.SIGSTOP)
    with Neighbour(dsn) as neighbour, psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            conn.execute(sql)
        assert "tracing PII through this statement took too long" in str(info.value)
        assert conn.execute("select 5").fetchone() == (5,)
    until(lambda: len(pool.worker_pids()) == 1 and pool.worker_pids() != [pid])
    assert not neighbour.errors and max(neighbour.latencies) < 1.0
    assert pool.stats.timed_out == 1
