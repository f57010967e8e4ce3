"""Held statements on the wire, message by message (a raw protocol client).

Drivers never pipeline the way these tests need: several Parse/Bind/Execute and
Syncs in one write, with the held statement in the middle. What the client must
see on refusal is exactly what a server error at that point gives (checked against
PostgreSQL itself): the error, everything up to Sync skipped, one ReadyForQuery.
"""

from __future__ import annotations

import logging

import pytest

from dbgate.wire import messages as m
from tests.integration.holds.clients import check_notice, check_retry_error
from tests.integration.holds.harness import (
    AGENT,
    AGENT_PASSWORD,
    HoldsEnv,
    admin_execute,
    request_id,
)
from tests.integration.rawclient import RawClient, errors, names, rows, status


async def agent(holds: HoldsEnv, **params: str) -> RawClient:
    return await RawClient.connect(
        "127.0.0.1",
        holds.app.port,
        user=AGENT,
        password=AGENT_PASSWORD,
        database=holds.data_db,
        params=params or None,
    )


async def direct(holds: HoldsEnv) -> RawClient:
    s = holds.pg_server
    return await RawClient.connect(
        s.host, s.port, user=s.user, password=s.password, database=holds.data_db
    )


def pbe(sql: str, params: tuple[bytes | None, ...] = ()) -> bytes:
    """Parse/Bind/Describe/Execute of the unnamed statement (no Sync)."""
    return b"".join(
        (
            m.Parse("", sql).encode(),
            m.Bind("", "", params=params).encode(),
            m.Describe("P", "").encode(),
            m.Execute("", 0).encode(),
        )
    )


SYNC = m.Sync().encode()


async def until_notice(client: RawClient) -> tuple[int, list[object]]:
    """Messages up to the hold notice (the server may have flushed some before it)."""
    before = await client.until(m.NoticeResponse)
    notice = before[-1]
    return check_notice(notice.message, notice.fields.get("D", ""), notice.sqlstate), before[:-1]


def without_notices(msgs: list[object]) -> list[object]:
    return [x for x in msgs if not isinstance(x, m.NoticeResponse)]


async def test_a_held_execute_holds_the_rest_of_its_pipeline_in_order(holds: HoldsEnv) -> None:
    t = holds.table("w_pipeline", 3)
    client = await agent(holds)
    try:
        client.send(
            pbe(f"DELETE FROM {t}"),
            pbe(f"INSERT INTO {t} (id) VALUES (100)"),
            SYNC,
            pbe(f"SELECT count(*) FROM {t}"),
            SYNC,
        )
        rid, before = await until_notice(client)
        assert holds.count(t) == 3  # nothing after the held statement ran meanwhile
        assert not errors(before)
        await holds.app.aapprove(rid)
        first = before + await client.until_ready()
        second = await client.until_ready()
        assert names(without_notices(first)) == [
            "ParseComplete",
            "BindComplete",
            "NoData",
            "CommandComplete",
            "ParseComplete",
            "BindComplete",
            "NoData",
            "CommandComplete",
            "ReadyForQuery",
        ]
        tags = [x.tag for x in first if isinstance(x, m.CommandComplete)]
        assert tags == ["DELETE 3", "INSERT 0 1"]  # in the order sent
        assert rows(second) == [(b"1",)]
        assert holds.count(t) == 1
    finally:
        await client.close()


async def test_a_refusal_in_a_pipeline_is_what_a_server_error_gives(holds: HoldsEnv) -> None:
    t = holds.table("w_refused", 3)
    batch = (
        pbe(f"DELETE FROM {t}"),
        pbe(f"INSERT INTO {t} (id) VALUES (100)"),
        SYNC,
        pbe(f"SELECT count(*) FROM {t}"),
        SYNC,
    )
    client = await agent(holds)
    try:
        client.send(*batch)
        rid, before = await until_notice(client)
        await holds.app.areject(rid, "not this one")
        first = without_notices(before + await client.until_ready())
        second = await client.until_ready()
    finally:
        await client.close()
    # PostgreSQL itself, with an error at the same Bind (a value it cannot read):
    server = await direct(holds)
    try:
        server.send(
            pbe(f"DELETE FROM {t} WHERE id = $1", (b"not a number",)),
            pbe(f"INSERT INTO {t} (id) VALUES (100)"),
            SYNC,
            pbe(f"SELECT count(*) FROM {t}"),
            SYNC,
        )
        expected_first = await server.until_ready()
        expected_second = await server.until_ready()
    finally:
        await server.close()
    assert (
        names(first)
        == names(expected_first)
        == [
            "ParseComplete",
            "ErrorResponse",
            "ReadyForQuery",
        ]
    )
    (error,) = errors(first)
    assert error.sqlstate == "42501" and f"request {rid} was rejected" in error.message
    assert names(second) == names(expected_second)
    assert rows(second) == [(b"3",)]  # the INSERT of the failed batch was skipped
    assert holds.count(t) == 3


async def test_a_refusal_inside_a_transaction_aborts_it_on_both_sides(holds: HoldsEnv) -> None:
    t = holds.table("w_tx", 3)
    client = await agent(holds)
    try:
        assert status(await client.query("BEGIN")) == "T"
        client.send(pbe(f"INSERT INTO {t} (id) VALUES (50)"), pbe(f"TRUNCATE {t}"), SYNC)
        rid, before = await until_notice(client)
        await holds.app.areject(rid, "no")
        answer = without_notices(before + await client.until_ready())
        assert names(answer) == [
            "ParseComplete",
            "BindComplete",
            "NoData",
            "CommandComplete",
            "ParseComplete",
            "ErrorResponse",
            "ReadyForQuery",
        ]
        assert status(answer) == "E"  # the server agrees: the transaction failed
        after = await client.query("SELECT 1")
        assert [e.sqlstate for e in errors(after)] == ["25P02"] and status(after) == "E"
        assert status(await client.query("ROLLBACK")) == "I"
        assert rows(await client.query(f"SELECT count(*) FROM {t}")) == [(b"3",)]
    finally:
        await client.close()


async def test_a_multi_statement_query_is_one_request_and_fails_as_one(holds: HoldsEnv) -> None:
    t = holds.table("w_multi", 3)
    sql = f"INSERT INTO {t} (id) VALUES (7); DELETE FROM {t}; SELECT 1"
    client = await agent(holds)
    try:
        last = holds.app.last_id()
        client.send(m.query(sql))
        rid, before = await until_notice(client)
        assert [r["id"] for r in holds.app.requests_since(last)] == [rid]
        await holds.app.areject(rid, "no")
        answer = without_notices(before + await client.until_ready())
        assert names(answer) == ["ErrorResponse", "ReadyForQuery"] and status(answer) == "I"
        assert holds.count(t) == 3  # not even the INSERT before the held DELETE ran
        client.send(m.query(sql))
        rid, before = await until_notice(client)
        await holds.app.aapprove(rid)
        answer = without_notices(before + await client.until_ready())
        tags = [x.tag for x in answer if isinstance(x, m.CommandComplete)]
        assert tags == ["INSERT 0 1", "DELETE 4", "SELECT 1"]
    finally:
        await client.close()


async def test_messages_sent_while_held_are_kept_and_a_hang_up_is_noticed(
    holds: HoldsEnv,
) -> None:
    """Regression: the session stopped reading its client while a statement waited,
    so it never saw the client hang up and the request stayed pending until someone
    decided it (the approval would then have found no one to run it for)."""
    t = holds.table("w_hangup", 3)
    client = await agent(holds)
    client.send(m.query(f"DELETE FROM {t}"))
    rid, _ = await until_notice(client)
    client.send(m.query(f"INSERT INTO {t} (id) VALUES (9)"))  # queued behind the hold
    client.abort()
    row = await holds.app.await_status(rid, "withdrawn")
    assert row["reason"] == "the client cancelled or disconnected"
    assert holds.count(t) == 3  # neither the held nor the queued statement ran


async def test_a_polite_close_is_not_logged_as_a_lost_upstream(
    holds: HoldsEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: a Terminate relayed unchanged did not mark the session as
    terminating, so the upstream's close was logged as a lost connection (and a
    FATAL error was written to the client). asyncpg closes like this: it sends
    Terminate and waits for the other side to close."""
    with caplog.at_level(logging.WARNING, logger="dbgate.session"):
        client = await agent(holds)
        assert rows(await client.query("SELECT 1")) == [(b"1",)]
        client.send(m.TERMINATE)
        assert await client.until_closed() == []  # closed, and nothing said
        await client.close()
    assert [r for r in caplog.records if "upstream connection lost" in r.getMessage()] == []


async def test_a_startup_declaration_and_options_reach_the_request(holds: HoldsEnv) -> None:
    t = holds.table("w_declared", 3)
    client = await agent(
        holds, options=r"-c dbgate.purpose=nightly\ cleanup -c dbgate.model=test-model-1"
    )
    try:
        shown = rows(await client.query("SELECT current_setting('dbgate.purpose')"))
        assert shown == [(b"nightly cleanup",)]  # forwarded to the server too
        client.send(m.query(f"DELETE FROM {t}"))
        rid, _ = await until_notice(client)
        row = await holds.app.arequest(rid)
        assert (row["purpose"], row["model"]) == ("nightly cleanup", "test-model-1")
        await holds.app.areject(rid, "no")
        await client.until_ready()
    finally:
        await client.close()


async def test_an_approved_retry_covers_the_parameter_types_it_was_approved_with(
    holds: HoldsEnv,
) -> None:
    """One text, one value, another declared type: ``length($1)`` of '€' is 1 as text
    and 3 as bytea. A retry approved with ``$1`` declared text is no approval of it
    declared bytea."""
    t = holds.table("retry_types", 3)
    sql = f"UPDATE {t} SET note = length($1)::text"

    def typed(oid: int) -> bytes:
        return b"".join(
            (
                m.Parse("", sql, (oid,)).encode(),
                m.Bind("", "", params=("€".encode(),)).encode(),
                m.Execute("", 0).encode(),
                SYNC,
            )
        )

    client = await agent(holds)
    try:
        client.send(typed(25))
        first = errors(await client.until_ready())
        assert [e.sqlstate for e in first] == ["42501"], first
        rid = check_retry_error(first[0].message, first[0].fields.get("H", ""))
        await holds.app.aapprove(rid)
        client.send(typed(17))
        other = errors(await client.until_ready())
        assert [e.sqlstate for e in other] == ["42501"], other
        assert check_retry_error(other[0].message, other[0].fields.get("H", "")) > rid
        assert holds.notes(t) == ["n"] * 3
        client.send(typed(25))
        ran = await client.until_ready()
        assert not errors(ran) and holds.notes(t) == ["1"] * 3
    finally:
        await client.close()


async def test_a_held_bind_that_may_bind_either_of_two_statements_is_refused(
    holds: HoldsEnv,
) -> None:
    """Regression: a Bind sent while a Close and a new Parse of its name were not
    answered yet was held as the statement known before (the first candidate); once
    that was approved the server bound the new one. The approver saw ``DELETE FROM``
    one table and the other was emptied."""
    shown = holds.table("w_cand_shown", 3)
    other = holds.table("w_cand_other", 3)
    client = await agent(holds)
    try:
        client.send(m.Parse("s", f"DELETE FROM {shown}").encode(), SYNC)
        assert names(await client.until_ready()) == ["ParseComplete", "ReadyForQuery"]
        last = holds.app.last_id()
        client.send(
            m.Close("S", "s").encode(),
            m.Parse("s", f"DELETE FROM {other}").encode(),
            SYNC,
            m.Bind("", "s").encode(),
            m.Execute("", 0).encode(),
            SYNC,
        )
        first = await client.until_ready()
        second = await client.until_ready()
        assert names(first) == ["CloseComplete", "ParseComplete", "ReadyForQuery"]
        assert names(second) == ["ErrorResponse", "ReadyForQuery"]
        (error,) = errors(second)
        assert error.sqlstate == "42501" and "either of two statements" in error.message
        assert holds.app.requests_since(last) == []  # nobody was asked to approve either
        # answered, the name means one statement again: held as that one
        client.send(m.Bind("", "s").encode(), m.Execute("", 0).encode(), SYNC)
        rid, _ = await until_notice(client)
        assert (await holds.app.arequest(rid))["statement"] == f"DELETE FROM {other}"
        await holds.app.areject(rid, "no")
        await client.until_ready()
    finally:
        await client.close()
    assert (holds.count(shown), holds.count(other)) == (3, 3)


async def test_an_approved_execute_covers_the_statement_it_ran_then_only(
    holds: HoldsEnv,
) -> None:
    """Regression: approve-then-retry matched ``EXECUTE p`` by its text alone. Once
    approved while ``p`` deleted one table, the agent prepared ``p`` anew for another
    table and the identical ``EXECUTE p`` ran it without a request."""
    shown = holds.table("retry_exec_shown", 3)
    other = holds.table("retry_exec_other", 3)
    client = await agent(holds)
    try:
        client.send(m.Parse("p", f"DELETE FROM {shown}").encode(), SYNC)
        await client.until_ready()
        (error,) = errors(await client.query("EXECUTE p"))
        rid = request_id(error.message)
        await holds.app.aapprove(rid)
        client.send(m.Close("S", "p").encode(), m.Parse("p", f"DELETE FROM {other}").encode())
        client.send(SYNC)
        await client.until_ready()
        (error,) = errors(await client.query("EXECUTE p"))  # a new request, not rid
        assert error.sqlstate == "42501" and request_id(error.message) != rid
        assert holds.count(other) == 3
        # prepared as it was approved again: the approval covers it, once
        client.send(m.Close("S", "p").encode(), m.Parse("p", f"DELETE FROM {shown}").encode())
        client.send(SYNC)
        await client.until_ready()
        answer = await client.query("EXECUTE p")
        assert [x.tag for x in answer if isinstance(x, m.CommandComplete)] == ["DELETE 3"]
    finally:
        await client.close()
    assert (holds.count(shown), holds.count(other)) == (0, 3)


async def test_the_shape_of_an_execute_is_approved_with_fixed_values_only(
    holds: HoldsEnv,
) -> None:
    """Regression: a free shape approval of ``EXECUTE p`` covered ``EXECUTE p`` of
    whatever ``p`` was prepared as later (the text has no constants to differ in)."""
    t = holds.table("w_exec_shape", 3)
    client = await agent(holds)
    try:
        client.send(m.Parse("p", f"DELETE FROM {t}").encode(), SYNC)
        await client.until_ready()
        client.send(m.query("EXECUTE p"))
        rid, _ = await until_notice(client)
        status, body = await holds.app.aapi(
            "POST", f"/api/approvals/{rid}/approve-shape", body={"minutes": 5, "params": "free"}
        )
        assert status == 409 and "EXECUTE" in str(body), body
        await holds.app.areject(rid, "no")
        await client.until_ready()
    finally:
        await client.close()
    assert holds.count(t) == 3


async def test_execute_runs_no_sql_cursor(holds: HoldsEnv) -> None:
    """Regression: SQL cursors and protocol portals share one namespace, and an
    Execute of a portal the client never bound ran the SQL cursor ``DECLARE c`` made:
    its rows came back raw (PII untokenized) and past the row limit its FETCHes
    were held to. An Execute runs only a portal of the client's own Bind."""
    admin_execute(
        holds.admin_dsn,
        "DROP TABLE IF EXISTS w_cursor_people",
        "CREATE TABLE w_cursor_people (id int PRIMARY KEY, email text)",
        "INSERT INTO w_cursor_people SELECT g, 'person' || g || '@example.com' "
        "FROM generate_series(1, 5) g",
    )
    client = await agent(holds)
    try:
        assert status(await client.query("BEGIN")) == "T"
        declare = "DECLARE c CURSOR FOR SELECT email FROM w_cursor_people WHERE id < 4"
        assert not errors(await client.query(declare))
        (fetched,) = rows(await client.query("FETCH 1 FROM c"))
        assert fetched[0].startswith(b"tok_email_")  # FETCH is tokenized
        client.send(m.Execute("c", 0).encode(), SYNC)
        answer = await client.until_ready()
        assert rows(answer) == []
        (error,) = errors(answer)
        assert error.sqlstate == "0A000" and "SQL cursor" in error.message
        assert status(await client.query("ROLLBACK")) == "I"
        # a declaration sent through the extended protocol is one too
        client.send(pbe("BEGIN"), pbe(declare.replace(" c ", " c2 ")), SYNC)
        await client.until_ready()
        client.send(m.Execute("c2", 0).encode(), SYNC)
        assert [e.sqlstate for e in errors(await client.until_ready())] == ["0A000"]
        assert status(await client.query("ROLLBACK")) == "I"
        # a portal the client bound runs as ever, Execute after Execute
        assert status(await client.query("BEGIN")) == "T"
        client.send(
            m.Parse("", "SELECT id FROM w_cursor_people WHERE id <= 5 ORDER BY id").encode(),
            m.Bind("mine", "").encode(),
            m.Execute("mine", 2).encode(),
            SYNC,
        )
        assert rows(await client.until_ready()) == [(b"1",), (b"2",)]
        client.send(m.Execute("mine", 0).encode(), SYNC)
        assert rows(await client.until_ready()) == [(b"3",), (b"4",), (b"5",)]
        assert status(await client.query("COMMIT")) == "I"
    finally:
        await client.close()


async def test_a_statement_made_by_sql_prepare_is_not_bound(holds: HoldsEnv) -> None:
    """Regression: a protocol Bind of a statement made by SQL PREPARE was judged by
    nothing: its PREPARE ran nothing and was judged as such, and the relay knew no
    Parse verdict for it. One approval of ``PREPARE p AS UPDATE ...`` ran the UPDATE
    at every Bind, and ``PREPARE q AS SELECT email ...`` bound returned PII raw."""
    t = holds.table("w_sql_prepared", 3)
    admin_execute(
        holds.admin_dsn,
        "DROP TABLE IF EXISTS w_prepared_people",
        "CREATE TABLE w_prepared_people (id int PRIMARY KEY, email text)",
        "INSERT INTO w_prepared_people VALUES (1, 'someone@example.com')",
    )
    client = await agent(holds)
    try:
        client.send(m.query(f"PREPARE p AS UPDATE {t} SET note = note || 'x'"))
        rid, _ = await until_notice(client)
        await holds.app.aapprove(rid)
        assert not errors(await client.until_ready())
        select = "SELECT email FROM w_prepared_people WHERE id < 4"
        assert not errors(await client.query(f"PREPARE q AS {select}"))
        client.send(pbe(f"PREPARE q2 AS {select}"), SYNC)  # through the extended protocol
        assert not errors(await client.until_ready())
        for name in ("p", "q", "q2"):
            client.send(m.Bind("", name).encode(), m.Execute("", 0).encode(), SYNC)
            answer = await client.until_ready()
            assert rows(answer) == []
            (error,) = errors(answer)
            assert error.sqlstate == "0A000" and "SQL PREPARE" in error.message
        (token,) = rows(await client.query("EXECUTE q"))  # judged, tokenized
        assert token[0].startswith(b"tok_email_")
    finally:
        await client.close()
    assert holds.notes(t) == ["n"] * 3  # the approved PREPARE ran nothing
