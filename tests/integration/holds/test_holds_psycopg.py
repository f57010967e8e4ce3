"""Held statements through psycopg 3: simple and extended protocol, pipeline mode.

psycopg sends a query without parameters as a simple Query, one with parameters
through the unnamed statement, and (after ``prepare_threshold`` executions, or with
``prepare=True``) through a named prepared statement. The client runs on a worker
thread; the test waits for its hold notice and decides through the API.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import errors

from tests.integration.holds.clients import PsycopgNotices, check_retry_error
from tests.integration.holds.harness import APPROVER, PUBLIC_URL, HoldsEnv, admin_query


@pytest.fixture
def worker() -> Iterator[Callable[..., Future[Any]]]:
    with ThreadPoolExecutor(2) as pool:
        yield pool.submit


def hang_up(conn: psycopg.Connection[Any]) -> None:
    """Shut the connection's socket under the driver: the client's network is gone
    (and a worker thread blocked on a held statement is let go)."""
    if conn.closed:
        return
    sock = socket.socket(fileno=conn.fileno())
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.detach()


@contextmanager
def connect(
    holds: HoldsEnv, **kwargs: Any
) -> Iterator[tuple[psycopg.Connection[Any], PsycopgNotices]]:
    """A connection through dbgate and its notices; closed afterwards even when a
    worker thread is still blocked in it (a failed test must not hang)."""
    kwargs.setdefault("autocommit", True)
    conn = psycopg.connect(holds.dsn, **kwargs)
    try:
        yield conn, PsycopgNotices(conn)
    except BaseException:
        hang_up(conn)
        raise
    finally:
        conn.close()


def status_of(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> str:
    cur = conn.execute(sql, params)
    return cur.statusmessage or ""


def test_approved_simple_and_extended(holds: HoldsEnv, worker: Callable[..., Future[Any]]) -> None:
    t = holds.table("pg_approved", 3)
    with connect(holds) as (conn, notices):
        running = worker(status_of, conn, f"DELETE FROM {t}")  # no parameters: simple Query
        rid = notices.held()
        assert not running.done()
        holds.app.approve(rid, "fine")
        assert running.result(30) == "DELETE 3"
        assert holds.app.wait_status(rid, "executed")["decided_by"] == [APPROVER]
        holds.table(t, 3)
        running = worker(status_of, conn, f"UPDATE {t} SET note = %s", ("x",))  # extended
        holds.app.approve(notices.held())
        assert running.result(30) == "UPDATE 3"
        assert holds.notes(t) == ["x"] * 3
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_named_prepared_statement_is_held_at_every_execution(
    holds: HoldsEnv, worker: Callable[..., Future[Any]]
) -> None:
    t = holds.table("pg_prepared", 3)
    sql = f"UPDATE {t} SET note = %s"
    with connect(holds) as (conn, notices):

        def run(value: str) -> str:
            return conn.execute(sql, (value,), prepare=True).statusmessage or ""

        first = worker(run, "one")
        holds.app.approve(notices.held())
        assert first.result(30) == "UPDATE 3"
        second = worker(run, "two")  # Bind/Execute of the named statement only
        holds.app.reject(notices.held(), "no second time")
        with pytest.raises(errors.InsufficientPrivilege):
            second.result(30)
        assert holds.notes(t) == ["one"] * 3


def test_rejected_and_expired(holds: HoldsEnv, worker: Callable[..., Future[Any]]) -> None:
    t = holds.table("pg_rejected", 3)
    with connect(holds) as (conn, notices):
        running = worker(status_of, conn, f"TRUNCATE {t}")
        rid = notices.held()
        holds.app.reject(rid, "ask again tomorrow")
        with pytest.raises(errors.InsufficientPrivilege) as info:
            running.result(30)
        diag = info.value.diag
        assert diag.sqlstate == "42501"
        assert diag.message_primary == (
            f"dbgate: approval request {rid} was rejected by {APPROVER}: ask again tomorrow"
        )
        e = holds.table("expiring_pg", 3)
        running = worker(status_of, conn, f"DELETE FROM {e}")
        with pytest.raises(errors.QueryCanceled) as expired:
            running.result(30)
        d = expired.value.diag
        rid = int((d.message_primary or "").split("approval request ", 1)[1].split(" ", 1)[0])
        assert d.sqlstate == "57014" and "expired before anyone decided" in (
            d.message_primary or ""
        )
        assert d.message_hint == f"ask an approver to look at {PUBLIC_URL}/approvals/{rid}"
        assert holds.app.request(rid)["status"] == "expired"
        assert holds.count(t) == 3 and holds.count(e) == 3


def test_cancel_is_57014_and_withdrawn(holds: HoldsEnv, worker: Callable[..., Future[Any]]) -> None:
    t = holds.table("pg_cancel", 3)
    with connect(holds) as (conn, notices):
        running = worker(status_of, conn, f"UPDATE {t} SET note = %s", ("c",))
        rid = notices.held()
        conn.cancel_safe()
        with pytest.raises(errors.QueryCanceled) as info:
            running.result(30)
        assert info.value.diag.message_primary == "canceling statement due to user request"
        assert holds.app.request(rid)["status"] == "withdrawn"
        assert conn.execute("SELECT 2").fetchone() == (2,)
        assert holds.notes(t) == ["n"] * 3


def test_a_disconnect_withdraws(holds: HoldsEnv, worker: Callable[..., Future[Any]]) -> None:
    t = holds.table("pg_disconnect", 3)
    with connect(holds) as (conn, notices):
        running = worker(status_of, conn, f"DELETE FROM {t}")
        rid = notices.held()
        hang_up(conn)
        with pytest.raises(psycopg.OperationalError):
            running.result(30)
    assert holds.app.wait_status(rid, "withdrawn")["status"] == "withdrawn"
    status, _ = holds.app.api("POST", f"/api/approvals/{rid}/approve", body={})
    assert status == 409
    assert holds.count(t) == 3


def test_approve_then_retry(holds: HoldsEnv) -> None:
    t = holds.table("retry_pg", 3)
    sql = f"UPDATE {t} SET note = %s"
    with connect(holds) as (conn, _):
        with pytest.raises(errors.InsufficientPrivilege) as first:
            conn.execute(sql, ("yes",))
        d = first.value.diag
        rid = check_retry_error(d.message_primary or "", d.message_hint or "")
        holds.app.approve(rid)
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(sql, ("no",))  # other values: not approved
        assert conn.execute(sql, ("yes",)).statusmessage == "UPDATE 3"
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(sql, ("yes",))  # used up
        assert holds.notes(t) == ["yes"] * 3
        assert holds.app.wait_status(rid, "executed")["status"] == "executed"


def test_shape_approval(holds: HoldsEnv, worker: Callable[..., Future[Any]]) -> None:
    t = holds.table("pg_shape", 3)
    sql = f"UPDATE {t} SET note = %s"
    with connect(holds) as (conn, notices):
        running = worker(status_of, conn, sql, ("s1",))
        rid = notices.held()
        status, body = holds.app.api(
            "POST", f"/api/approvals/{rid}/approve-shape", body={"minutes": 3, "params": "free"}
        )
        assert status == 201, body
        assert running.result(30) == "UPDATE 3"
        for value in ("s2", "s3", "s4", "s5", "s6", "s7"):  # past prepare_threshold too
            assert conn.execute(sql, (value,)).statusmessage == "UPDATE 3"
        assert notices.empty()
        assert holds.notes(t) == ["s7"] * 3


def test_transactions(holds: HoldsEnv, worker: Callable[..., Future[Any]]) -> None:
    t = holds.table("pg_tx", 3)
    with connect(holds, autocommit=False) as (conn, notices):
        conn.execute(f"INSERT INTO {t} (id) VALUES (10)")
        running = worker(status_of, conn, f"DELETE FROM {t}")
        holds.app.reject(notices.held(), "no")
        with pytest.raises(errors.InsufficientPrivilege):
            running.result(30)
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute(f"SELECT count(*) FROM {t}").fetchone() == (3,)
        conn.commit()
        conn.execute(f"INSERT INTO {t} (id) VALUES (11)")
        running = worker(status_of, conn, f"UPDATE {t} SET note = %s", ("tx",))
        holds.app.approve(notices.held())
        assert running.result(30) == "UPDATE 4"
        assert holds.notes(t) == ["n"] * 3  # inside the open transaction only
        conn.commit()
        assert holds.notes(t) == ["tx"] * 4


def _pipeline(conn: psycopg.Connection[Any], items: list[tuple[str, tuple[Any, ...]]]) -> Any:
    """Run ``items`` in one pipeline; the rows of each, or the error that ended it."""
    cursors = []
    try:
        with conn.pipeline():
            for sql, params in items:
                cursors.append(conn.execute(sql, params))
    except psycopg.Error as e:
        return type(e).__name__
    return [c.fetchall() if c.description else c.statusmessage for c in cursors]


def test_pipeline_mode_approved_runs_in_order(
    holds: HoldsEnv, worker: Callable[..., Future[Any]]
) -> None:
    t = holds.table("pg_pipe", 3)
    with connect(holds) as (conn, notices):
        items = [
            (f"INSERT INTO {t} (id) VALUES (%s)", (20,)),
            (f"UPDATE {t} SET note = %s", ("piped",)),  # held at its Bind
            (f"SELECT note, count(*) FROM {t} GROUP BY note", ()),
        ]
        running = worker(_pipeline, conn, items)
        rid = notices.held()
        assert holds.count(t) == 3  # the INSERT waits in the same implicit transaction
        holds.app.approve(rid)
        assert running.result(30) == ["INSERT 0 1", "UPDATE 4", [("piped", 4)]]


def test_pipeline_mode_refused_is_what_a_server_error_gives(
    holds: HoldsEnv, worker: Callable[..., Future[Any]]
) -> None:
    t = holds.table("pg_pipe_refused", 3)
    with connect(holds) as (conn, notices):
        items = [
            (f"INSERT INTO {t} (id) VALUES (%s)", (20,)),
            (f"UPDATE {t} SET note = %s", ("piped",)),
            (f"SELECT count(*) FROM {t}", ()),
        ]
        running = worker(_pipeline, conn, items)
        holds.app.reject(notices.held(), "no")
        refused = running.result(30)
        assert conn.execute(f"SELECT count(*) FROM {t}").fetchone() == (3,)
    with psycopg.connect(holds.admin_dsn, autocommit=True) as direct:
        failing = [items[0], (f"UPDATE {t} SET note = %s::int::text", ("x",)), items[2]]
        server = _pipeline(direct, failing)
        assert direct.execute(f"SELECT count(*) FROM {t}").fetchone() == (3,)
    assert (refused, server) == ("InsufficientPrivilege", "InvalidTextRepresentation")
    assert admin_query(holds.admin_dsn, f"SELECT count(*) FROM {t}") == [(3,)]


def test_bind_time_hold_and_multi_statement(
    holds: HoldsEnv, worker: Callable[..., Future[Any]]
) -> None:
    t = holds.table("pg_bind", 5)
    sql = f"SELECT id FROM {t} ORDER BY id LIMIT %s"
    with connect(holds) as (conn, notices):
        assert conn.execute(sql, (2,)).fetchall() == [(1,), (2,)]
        running = worker(lambda: conn.execute(sql, (50_000,)).fetchall())
        rid = notices.held()
        assert holds.app.request(rid)["params"] == '["50000"]'
        holds.app.approve(rid)
        assert len(running.result(30)) == 5
        multi = f"UPDATE {t} SET note = 'm'; DELETE FROM {t} WHERE id > 2; TRUNCATE {t}"
        last = holds.app.last_id()
        running = worker(status_of, conn, multi)
        rid = notices.held()
        assert [r["id"] for r in holds.app.requests_since(last)] == [rid]
        holds.app.approve(rid)
        assert running.result(30) == "UPDATE 5"  # psycopg shows the first result
        assert holds.count(t) == 0


def test_declared_purpose_and_model(holds: HoldsEnv, worker: Callable[..., Future[Any]]) -> None:
    t = holds.table("pg_purpose", 3)
    with connect(holds, options="-c dbgate.model=model-from-options") as (conn, notices):
        conn.execute("SET dbgate.purpose = 'archive old rows'")
        running = worker(status_of, conn, f"DELETE FROM {t}")
        rid = notices.held()
        row = holds.app.request(rid)
        assert (row["purpose"], row["model"]) == ("archive old rows", "model-from-options")
        holds.app.reject(rid, "no")
        with pytest.raises(errors.InsufficientPrivilege):
            running.result(30)
        conn.execute("SET dbgate.model = 'model-from-set'")
        commented = f"/* dbgate: purpose=just this once */ DELETE FROM {t}"
        running = worker(status_of, conn, commented)
        rid = notices.held()
        row = holds.app.request(rid)
        assert (row["purpose"], row["model"]) == ("just this once", "model-from-set")
        holds.app.reject(rid, "no")
        with pytest.raises(errors.InsufficientPrivilege):
            running.result(30)
        assert conn.execute("SHOW dbgate.purpose").fetchone() == ("archive old rows",)
