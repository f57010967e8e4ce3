"""dbgate's picture of the session's prepared statements must never drift from the server's.

Bind-time decisions (``set_config($1, $2, false)`` with ``('role', ...)``) and
``EXECUTE name`` are judged by the statement dbgate believes the server holds under a
name. Each test here tries to make that belief wrong: a Close or DEALLOCATE the server
skipped because of an earlier error, a Parse that dbgate refused or the server
rejected, an unnamed statement that survived. In every case the dangerous Bind or
EXECUTE must still be refused by dbgate (42501 with its message), never run.
"""

from __future__ import annotations

from typing import Any

import pytest

from dbgate.policy.rules import load_rules
from dbgate.proxy.policy_inspector import PolicyInspector
from dbgate.wire import messages as m
from tests.integration.rawclient import RawClient, agent, errors, names, rows

SET_CONFIG = "select set_config($1, $2, false)"


@pytest.fixture
def enforcing(make_proxy: Any) -> Any:
    return make_proxy(inspector=PolicyInspector(load_rules()))


@pytest.fixture
async def client(enforcing: Any, pg_database: str) -> Any:
    c = await agent(enforcing, pg_database)
    yield c
    await c.close()


@pytest.fixture
def role(pg_server: Any) -> bytes:
    """A role the upstream user can switch to, so the exploit would visibly succeed."""
    return pg_server.user.encode()


def _bind_execute(name: str, *params: bytes) -> list[bytes]:
    return [
        m.Bind("", name, params=params).encode(),
        m.Execute("", 0).encode(),
        m.SYNC,
    ]


async def _assert_refused_by_dbgate(client: RawClient, *msgs: bytes) -> None:
    client.send(*msgs)
    got = await client.until_ready()
    assert not rows(got), f"the dangerous statement ran: {names(got)}"
    errs = errors(got)
    assert errs, names(got)
    assert errs[0].sqlstate == "42501" and errs[0].message.startswith("dbgate:"), errs[0]
    # and the session is still usable afterwards
    assert rows(await client.query("select 1")) == [(b"1",)]


async def _prepare_set_config(client: RawClient, name: str) -> None:
    client.send(m.Parse(name, SET_CONFIG).encode(), m.SYNC)
    got = await client.until_ready()
    assert names(got) == ["ParseComplete", "ReadyForQuery"], got


async def test_close_skipped_by_the_server_after_an_error_keeps_the_check(
    client: RawClient, role: bytes
) -> None:
    await _prepare_set_config(client, "s1")
    # The Execute fails (no such portal), so the server skips the Close up to Sync.
    client.send(m.Execute("no_such_portal", 0).encode(), m.Close("S", "s1").encode(), m.SYNC)
    got = await client.until_ready()
    assert "CloseComplete" not in names(got) and errors(got)
    await _assert_refused_by_dbgate(client, *_bind_execute("s1", b"role", role))


async def test_unnamed_statement_survives_a_parse_dbgate_refused(
    client: RawClient, role: bytes
) -> None:
    await _prepare_set_config(client, "")
    client.send(m.Parse("", "alter system set work_mem = '1GB'").encode(), m.SYNC)
    got = await client.until_ready()
    assert errors(got) and errors(got)[0].message.startswith("dbgate:")
    await _assert_refused_by_dbgate(client, *_bind_execute("", b"role", role))


async def test_unnamed_statement_survives_a_parse_the_server_skipped(
    client: RawClient, role: bytes
) -> None:
    await _prepare_set_config(client, "")
    client.send(m.Execute("no_such_portal", 0).encode(), m.Parse("", "select 1").encode(), m.SYNC)
    got = await client.until_ready()
    assert "ParseComplete" not in names(got) and errors(got)
    await _assert_refused_by_dbgate(client, *_bind_execute("", b"role", role))


async def test_named_parse_the_server_rejected_does_not_stand_in_for_a_later_one(
    client: RawClient, role: bytes
) -> None:
    # dbgate allows this Parse; the server rejects it (no such column), so "s2" stays free.
    client.send(m.Parse("s2", "select no_such_column").encode(), m.SYNC)
    got = await client.until_ready()
    assert errors(got) and errors(got)[0].sqlstate == "42703"
    await _prepare_set_config(client, "s2")
    await _assert_refused_by_dbgate(client, *_bind_execute("s2", b"role", role))


async def test_execute_is_judged_by_the_statement_the_server_holds(
    client: RawClient, pg_server: Any
) -> None:
    client.send(m.Parse("s3", "select no_such_column").encode(), m.SYNC)
    assert errors(await client.until_ready())
    await _prepare_set_config(client, "s3")
    got = await client.query(f"execute s3('role', '{pg_server.user}')")
    assert not rows(got), names(got)
    assert errors(got)[0].sqlstate == "42501", errors(got)[0]


async def test_deallocate_that_never_ran_keeps_the_check(client: RawClient, role: bytes) -> None:
    await _prepare_set_config(client, "s4")
    got = await client.query("select 1/0; deallocate s4")
    assert errors(got)[0].sqlstate == "22012"
    await _assert_refused_by_dbgate(client, *_bind_execute("s4", b"role", role))


async def test_close_that_ran_ends_the_check(client: RawClient) -> None:
    """The converse: once the server really closed a name, it can be reused freely."""
    await _prepare_set_config(client, "s5")
    client.send(m.Close("S", "s5").encode(), m.SYNC)
    assert names(await client.until_ready()) == ["CloseComplete", "ReadyForQuery"]
    client.send(m.Parse("s5", "select $1::text").encode(), *_bind_execute("s5", b"role"))
    got = await client.until_ready()
    assert rows(got) == [(b"role",)], names(got)


async def test_harmless_set_config_still_runs_after_all_that(client: RawClient) -> None:
    await _prepare_set_config(client, "s6")
    client.send(*_bind_execute("s6", b"work_mem", b"8MB"))
    got = await client.until_ready()
    assert rows(got) == [(b"8MB",)], names(got)


async def test_sql_prepare_in_a_failed_query_string_still_counts(client: RawClient) -> None:
    """PREPARE is not transactional: it stays although the query string failed later."""
    got = await client.query("prepare s7 as select 7; select 1/0")
    assert errors(got)[0].sqlstate == "22012"
    assert rows(await client.query("execute s7")) == [(b"7",)]


async def test_sql_prepare_of_a_value_dependent_statement_is_refused(client: RawClient) -> None:
    got = await client.query("prepare s8(text, text) as select set_config($1, $2, false)")
    assert errors(got)[0].sqlstate == "42501", errors(got)[0]
    client.send(*_bind_execute("s8", b"role", b"x"))
    got = await client.until_ready()
    assert not rows(got) and errors(got)[0].sqlstate == "26000"  # never prepared
