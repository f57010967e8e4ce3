"""The server as the audit's witness, for what each record says: which statement,
with which values, how it ended and how many rows — in the extended protocol's
harder sequences (portals bound before any Execute and run in another order, the
unnamed statement bound again and again, names closed and reused, a portal run in
several row-limited Executes, COPY run by an Execute), in a simple-query string that
fails part way, for what a client sends after its batch failed (refused by the gate,
failed by the server, rejected by an approver) and for a statement too long to scan.

Each scenario runs on its own raw client session named by ``application_name`` and
compares what the data server logged for its backend (``log_statement = 'all'``) with
the session's final statement records, text by text; parameter hashes are recomputed
with the writer's key so that each record is tied to the values its Execute ran with.
"""

from __future__ import annotations

import asyncio
from hashlib import blake2b
from pathlib import Path

import pytest

from dbgate.wire import messages as wire
from tests.integration.holds.harness import (
    AGENT,
    AGENT_PASSWORD,
    HoldsEnv,
    admin_execute,
    admin_query,
    request_id,
)
from tests.integration.rawclient import RawClient, errors, rows
from tests.integration.server_log import log_every_statement, server_ran, session_over, show


@pytest.fixture(scope="module")
def logged(env: HoldsEnv) -> Path:
    log_file = log_every_statement(env)
    admin_execute(
        env.admin_dsn,
        "DROP TABLE IF EXISTS fid_items",
        "CREATE TABLE fid_items (id int PRIMARY KEY, note text NOT NULL DEFAULT 'n')",
        "INSERT INTO fid_items (id) SELECT g FROM generate_series(1, 20) g",
        "GRANT ALL ON fid_items TO PUBLIC",
    )
    return log_file


Record = tuple[str, str, str | None, list[str] | None, str | None, int | None, str | None]


def records(env: HoldsEnv, app: str) -> list[Record]:
    """(event, decision, statement, params, outcome, rows, reason) of the session's
    final statement records, in order."""
    env.app.call(env.app.app.audit.flush())
    found = env.app.rows(
        "SELECT event, decision, statement, params, outcome, rows, reason"
        " FROM dbgate.audit_log"
        " WHERE kind = 'statement' AND event <> 'decided' AND application_name = $1"
        " ORDER BY chain, seq",
        app,
    )
    return [
        (
            r["event"],
            r["decision"],
            r["statement"],
            r["params"],
            r["outcome"],
            r["rows"],
            r["reason"],
        )
        for r in found
    ]


def hashed(env: HoldsEnv, value: bytes) -> str:
    """A Bind value as the writer records it (docs/audit.md, ``params``)."""
    key = env.app.app.audit._builder._key
    return "h:" + blake2b(value, key=key, digest_size=16).hexdigest()


async def session(env: HoldsEnv, app: str) -> tuple[RawClient, int]:
    client = await RawClient.connect(
        "127.0.0.1",
        env.app.port,
        user=AGENT,
        password=AGENT_PASSWORD,
        database=env.data_db,
        params={"application_name": app},
    )
    answer = await client.query("SELECT pg_backend_pid()")
    return client, int(rows(answer)[0][0])


async def ended(
    env: HoldsEnv, client: RawClient, app: str, pid: int, logged: Path
) -> tuple[list[str], list[Record]]:
    """What the server ran for the session and its records, once it is over."""
    client.send(wire.Terminate())
    await client.writer.drain()
    client.writer.close()
    await session_over(env, app, pid)
    ran = await asyncio.to_thread(server_ran, logged, pid)
    return ran, await asyncio.to_thread(records, env, app)


def texts(ran: list[str]) -> list[str]:
    """The statement texts of the server's log lines (``execute s1/p: SELECT …``)."""
    return [line.split(": ", 1)[1] for line in ran]


S1 = "SELECT id FROM fid_items WHERE id = $1"
S2 = "SELECT note FROM fid_items WHERE id = $1"


async def test_each_execute_is_recorded_with_its_own_statement_and_values(
    env: HoldsEnv, logged: Path
) -> None:
    """Portals bound before any Execute and run in another order; the unnamed
    statement bound again, then parsed anew; a name closed and reused for another
    text: each record has the text and the values of the portal its Execute ran."""
    app = "fid-portals"
    client, pid = await session(env, app)
    client.send(
        wire.Parse("s1", S1),
        wire.Parse("s2", S2),
        wire.Bind("pa", "s1", params=(b"1",)),
        wire.Bind("pb", "s2", params=(b"2",)),
        wire.Bind("", "s1", params=(b"3",)),
        wire.Execute("pb", 0),
        wire.Execute("", 0),
        wire.Execute("pa", 0),
        wire.Parse("", S1),
        wire.Bind("", "", params=(b"4",)),
        wire.Execute("", 0),
        wire.Bind("", "", params=(b"5",)),
        wire.Execute("", 0),
        wire.Parse("", S2),
        wire.Bind("", "", params=(b"6",)),
        wire.Execute("", 0),
        wire.Close("S", "s1"),
        wire.Close("P", "pa"),
        wire.Parse("s1", S2),
        wire.Bind("pa", "s1", params=(b"7",)),
        wire.Execute("pa", 0),
        wire.Sync(),
    )
    assert not errors(await client.until_ready())
    ran, recs = await ended(env, client, app, pid, logged)
    expected = [(S2, 2), (S1, 3), (S1, 1), (S1, 4), (S1, 5), (S2, 6), (S2, 7)]
    assert texts(ran[1:]) == [sql for sql, _ in expected], show(ran, recs)
    assert [(r[0], r[2], r[3], r[4], r[5]) for r in recs[1:]] == [
        ("completed", sql, [hashed(env, b"%d" % value)], "SELECT 1", 1) for sql, value in expected
    ], show(ran, recs)


async def test_each_row_limited_execute_of_a_portal_is_recorded_with_its_rows(
    env: HoldsEnv, logged: Path
) -> None:
    app = "fid-fetches"
    client, pid = await session(env, app)
    sql = "SELECT id FROM fid_items ORDER BY id LIMIT 15"
    client.send(
        wire.Query("BEGIN"),
        wire.Parse("", sql),
        wire.Bind("p", ""),
        wire.Execute("p", 3),
        wire.Execute("p", 4),
        wire.Flush(),
    )
    await client.until(wire.PortalSuspended)
    await client.until(wire.PortalSuspended)
    client.send(wire.Execute("p", 0), wire.Execute("p", 0), wire.Sync(), wire.Query("COMMIT"))
    await client.until_ready()
    await client.until_ready()
    ran, recs = await ended(env, client, app, pid, logged)
    # the server logs each Execute (the later ones as "execute fetch from"), and so
    # does the trail, with what each returned
    assert len(ran) == len(recs) == 7, show(ran, recs)
    assert [r[4:6] for r in recs[2:6]] == [
        ("suspended", 3),
        ("suspended", 4),
        ("SELECT 8", 8),
        ("SELECT 0", 0),
    ], show(ran, recs)


async def test_a_query_string_that_fails_part_way_says_what_the_server_completed(
    env: HoldsEnv, logged: Path
) -> None:
    """A simple-query string is one record: when a statement of it fails after others
    completed — a COMMIT among them, whose effect stays — the record is ``failed``
    with the SQLSTATE, and says what the server completed before the error and the
    rows those statements changed."""
    app = "fid-partial"
    client, pid = await session(env, app)
    answer = await client.query(
        "INSERT INTO fid_items (id) VALUES (101); COMMIT;"
        " INSERT INTO fid_items (id) VALUES (102), (103); SELECT 1/0; SELECT 3"
    )
    assert [e.sqlstate for e in errors(answer)] == ["22012"]
    answer = await client.query("SELECT 1/0")
    ran, recs = await ended(env, client, app, pid, logged)
    # the server committed the first INSERT; the second was rolled back with the rest
    assert admin_query(env.admin_dsn, "SELECT id FROM fid_items WHERE id > 100") == [(101,)]
    assert len(ran) == len(recs) == 3, show(ran, recs)
    assert recs[1][0] == "failed" and recs[1][4:] == (
        "22012",
        3,
        "the server completed, before the error: INSERT 0 1, COMMIT, INSERT 0 2",
    ), show(ran, recs)
    # a statement that failed on its own says nothing more
    assert recs[2][0] == "failed" and recs[2][4:] == ("22012", None, None), show(ran, recs)


DENIED = "ALTER SYSTEM SET work_mem = '8MB'"
DENIED_WHY = "dbgate: denied: rewrites the server's configuration file (ALTER SYSTEM)"
NOT_SENT = (
    "dbgate: an earlier message of this statement's batch failed; like the server, "
    "dbgate skipped it up to the client's Sync: it was not sent"
)


async def test_what_follows_a_refused_message_in_its_batch_is_recorded_as_not_sent(
    env: HoldsEnv, logged: Path
) -> None:
    """A message the gate refuses fails its batch: what the client sent after it, up
    to its Sync, is not sent (the server would skip it). Each statement among it — an
    Execute with the text and values its Parse and Bind meant, a Query — reached
    dbgate: it is recorded ``refused`` with the batch's SQLSTATE; the refused
    statement's own Bind and Execute are its refusal's record."""
    app = "fid-refused-batch"
    client, pid = await session(env, app)
    client.send(
        wire.Parse("", "SELECT 1"),
        wire.Bind("", ""),
        wire.Execute("", 0),
        wire.Parse("", DENIED),
        wire.Bind("", ""),
        wire.Execute("", 0),
        wire.Parse("s1", S1),
        wire.Bind("pa", "s1", params=(b"2",)),
        wire.Execute("pa", 0),
        wire.Query("SELECT 5"),
        wire.Sync(),
    )
    answer = await client.until_ready()
    assert [e.sqlstate for e in errors(answer)] == ["42501"]
    ran, recs = await ended(env, client, app, pid, logged)
    assert texts(ran) == ["SELECT pg_backend_pid()", "SELECT 1"], show(ran, recs)
    # the refusal is committed first (durable), ahead of the session's earlier records
    recs = [r for r in recs if r[2] != "SELECT pg_backend_pid()"]
    assert sorted((r[0], r[1], r[2], r[3], r[4], r[6]) for r in recs) == [
        ("completed", "allow", "SELECT $1", None, "SELECT 1", None),
        ("refused", "deny", "ALTER SYSTEM SET work_mem = $1", None, "42501", DENIED_WHY),
        ("refused", "refused", "SELECT $1", None, "42501", NOT_SENT),
        ("refused", "refused", S1, [hashed(env, b"2")], "42501", NOT_SENT),
    ], show(ran, recs)


async def test_what_the_client_sends_after_its_batch_failed_is_recorded_as_not_sent(
    env: HoldsEnv, logged: Path
) -> None:
    """The server fails a statement of a batch whose Sync the client has not sent
    yet; what the client sends after the error, up to its Sync, is not sent (the
    server would skip it) and is recorded ``refused`` with the batch's SQLSTATE."""
    app = "fid-failed-batch"
    client, pid = await session(env, app)
    client.send(
        wire.Parse("", "SELECT 1 / $1::int"),
        wire.Bind("", "", params=(b"0",)),
        wire.Execute("", 0),
        wire.Flush(),
    )
    await client.until(wire.ErrorResponse)
    client.send(
        wire.Parse("s1", S1),
        wire.Bind("pa", "s1", params=(b"3",)),
        wire.Execute("pa", 0),
        wire.Query("SELECT 5"),
        wire.FunctionCall(1598),  # random(): a FunctionCall, refused when it is sent
        wire.Sync(),
    )
    await client.until_ready()
    ran, recs = await ended(env, client, app, pid, logged)
    assert texts(ran) == ["SELECT pg_backend_pid()"], show(ran, recs)
    assert [(r[0], r[1], r[2], r[3], r[4], r[6]) for r in recs[1:]] == [
        ("failed", "allow", "SELECT $2 / $1::int", [hashed(env, b"0")], "22012", None),
        ("refused", "refused", S1, [hashed(env, b"3")], "22012", NOT_SENT),
        ("refused", "refused", "SELECT $1", None, "22012", NOT_SENT),
        ("refused", "refused", None, None, "22012", NOT_SENT),
    ], show(ran, recs)


async def test_a_statement_too_long_to_scan_is_recorded_with_what_was_left_out(
    env: HoldsEnv, logged: Path
) -> None:
    """What acts may follow a long harmless head: the record of a statement longer
    than what is scanned for it says so and how long the statement was."""
    app = "fid-long"
    client, pid = await session(env, app)
    sql = "SELECT 1" + " " * 70_000 + "; UPDATE fid_items SET note = 'Ann Lee' WHERE id = 1"
    assert not errors(await client.query(sql))
    ran, recs = await ended(env, client, app, pid, logged)
    assert len(ran) == len(recs) == 2, show(ran, recs)
    statement, outcome = recs[1][2], recs[1][4]
    assert outcome == "SELECT 1, UPDATE 1"
    assert statement is not None and "Ann Lee" not in statement
    assert statement.endswith(
        f"<masked: the statement has {len(sql)} characters; after the first 65536,"
        f" {len(sql) - 65536} were not scanned>"
    ), statement[-200:]


async def test_what_waited_behind_a_rejected_statement_is_recorded_as_not_sent(
    env: HoldsEnv, logged: Path
) -> None:
    """What the client pipelined behind a held statement waits in dbgate; rejected,
    the held statement fails its batch, and what waited behind it up to the Sync is
    not sent — each statement of it recorded ``refused`` with the batch's SQLSTATE."""
    app = "fid-rejected-batch"
    client, pid = await session(env, app)
    client.send(
        wire.Parse("", "LOCK TABLE fid_items"),  # held (it blocks other sessions)
        wire.Bind("", ""),
        wire.Execute("", 0),
        wire.Parse("s1", S1),
        wire.Bind("pa", "s1", params=(b"4",)),
        wire.Execute("pa", 0),
        wire.Sync(),
    )
    notice = (await client.until(wire.NoticeResponse))[-1]
    await env.app.areject(request_id(notice.fields.get("M", "")), "no")
    answer = await client.until_ready()
    assert [e.sqlstate for e in errors(answer)] == ["42501"]
    ran, recs = await ended(env, client, app, pid, logged)
    assert texts(ran) == ["SELECT pg_backend_pid()"], show(ran, recs)
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in recs[1:]] == [
        ("refused", "rejected", "LOCK TABLE fid_items", None, "42501"),
        ("refused", "refused", S1, [hashed(env, b"4")], "42501"),
    ], show(ran, recs)


async def test_copy_in_the_extended_protocol(env: HoldsEnv, logged: Path) -> None:
    """COPY FROM STDIN run by an Execute (measured, its changes counted), one ended by
    CopyFail, and the statements of their batches: one record each, as run."""
    admin_execute(
        env.admin_dsn,
        "DROP TABLE IF EXISTS fid_copy",
        "CREATE TABLE fid_copy (id int, note text)",
        "GRANT ALL ON fid_copy TO PUBLIC",
    )
    app = "fid-copy"
    client, pid = await session(env, app)
    copy = "COPY fid_copy FROM STDIN"
    client.send(wire.Parse("", copy), wire.Bind("", ""), wire.Execute("", 0), wire.Flush())
    await client.until(wire.CopyInResponse)
    client.send(
        wire.CopyData(b"1\ta\n2\tb\n"),
        wire.CopyDone(),
        wire.Parse("", "SELECT 1"),
        wire.Bind("", ""),
        wire.Execute("", 0),
        wire.Sync(),
    )
    assert not errors(await client.until_ready())
    client.send(wire.Parse("", copy), wire.Bind("", ""), wire.Execute("", 0), wire.Flush())
    await client.until(wire.CopyInResponse)
    client.send(
        wire.CopyData(b"3\tc\n"),
        wire.CopyFail("stop"),
        wire.Parse("", "SELECT 2"),
        wire.Bind("", ""),
        wire.Execute("", 0),
        wire.Sync(),
    )
    assert [e.sqlstate for e in errors(await client.until_ready())] == ["57014"]
    ran, recs = await ended(env, client, app, pid, logged)
    assert texts(ran) == ["SELECT pg_backend_pid()", copy, "SELECT 1", copy], show(ran, recs)
    assert [(r[0], r[2], r[4], r[5]) for r in recs[1:]] == [
        ("completed", copy, "COPY 2", 2),
        ("completed", "SELECT $1", "SELECT 1", 1),
        ("failed", copy, "57014", None),
        ("failed", "SELECT $1", "57014", None),  # skipped by the server after CopyFail
    ], show(ran, recs)
    assert admin_query(env.admin_dsn, "SELECT count(*) FROM fid_copy") == [(2,)]
