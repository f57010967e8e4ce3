"""Repeatable verdicts: the relay forwards a byte-identical message without asking again.

What must hold: a remembered message is not shown to the inspector again and is
still forwarded; anything that could change the answer (a ParameterStatus from the
server, ``SessionInfo.forget_verdicts()``) makes the relay ask again; what the
inspector did not mark repeatable is always asked; the memory is bounded.
"""

from __future__ import annotations

from typing import Any

import pytest

from dbgate.gate import Gate
from dbgate.policy.rules import load_rules
from dbgate.proxy import tracker as tracker_mod
from dbgate.proxy.seams import ALLOW, ALLOW_REPEATABLE, Allow, Refuse, Statement
from dbgate.proxy.session_info import SessionInfo
from dbgate.wire import messages as m
from tests.integration.rawclient import agent, errors, extended, rows


class CountingInspector:
    """Allows everything; repeatable unless the text says /*once*/; counts questions."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []
        self.sessions: list[SessionInfo] = []

    def inspect(self, session: SessionInfo, stmt: Statement) -> Allow | Refuse:
        self.asked.append((stmt.kind, stmt.sql))
        if session not in self.sessions:
            self.sessions.append(session)
        return ALLOW if "/*once*/" in stmt.sql else ALLOW_REPEATABLE


@pytest.fixture
def counting(make_proxy: Any) -> tuple[Any, CountingInspector]:
    inspector = CountingInspector()
    return make_proxy(inspector=inspector), inspector


async def test_repeated_messages_are_asked_about_once(counting: Any, pg_database: str) -> None:
    proxy, inspector = counting
    client = await agent(proxy, pg_database)
    try:
        for i in range(5):
            assert rows(await client.query("select 1")) == [(b"1",)]
            client.send(extended("select $1::int", (str(i).encode(),)), m.SYNC)
            assert rows(await client.until_ready()) == [(str(i).encode(),)]
        assert inspector.asked.count(("query", "select 1")) == 1
        assert inspector.asked.count(("parse", "select $1::int")) == 1
        for _ in range(3):
            await client.query("select 2 /*once*/")
        assert inspector.asked.count(("query", "select 2 /*once*/")) == 3
    finally:
        await client.close()


async def test_parameter_status_and_forget_make_the_relay_ask_again(
    counting: Any, pg_database: str
) -> None:
    proxy, inspector = counting
    client = await agent(proxy, pg_database)
    try:
        await client.query("select 1")
        await client.query("select 1")
        assert inspector.asked.count(("query", "select 1")) == 1
        await client.query("set application_name = 'other'")  # server sends ParameterStatus
        await client.query("select 1")
        assert inspector.asked.count(("query", "select 1")) == 2
        session = inspector.sessions[0]
        proxy.call(_forget(session))
        await client.query("select 1")
        assert inspector.asked.count(("query", "select 1")) == 3
    finally:
        await client.close()


async def _forget(session: SessionInfo) -> None:
    session.forget_verdicts()


async def test_memory_is_bounded(
    counting: Any, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracker_mod, "MEMO_MAX_ENTRIES", 4)
    proxy, inspector = counting
    client = await agent(proxy, pg_database)
    try:
        for i in range(10):
            await client.query(f"select {i}")
        big = "select 1 -- " + "x" * tracker_mod.MEMO_MAX_MESSAGE
        await client.query(big)
        await client.query(big)
        assert inspector.asked.count(("query", big)) == 2  # too long to remember
        await client.query("select 0")  # evicted when the memo filled up
        assert inspector.asked.count(("query", "select 0")) == 2
    finally:
        await client.close()


# -- the policy inspector's answers --------------------------------------------------


@pytest.fixture
def app_rules(tmp_path: Any) -> Any:
    (tmp_path / "10-app.yaml").write_text(
        """
rules:
  - name: blocked-app
    match: {application_names: ["blocked"]}
    action: deny
    message: this application may not run statements
  - name: reads
    match: {categories: [read, control]}
    action: allow
"""
    )
    return load_rules(tmp_path)


async def test_a_remembered_allow_is_not_used_after_application_name_changes(
    make_proxy: Any, pg_database: str, app_rules: Any
) -> None:
    proxy = make_proxy(inspector=Gate(app_rules))
    client = await agent(proxy, pg_database)
    try:
        for _ in range(3):
            assert rows(await client.query("select 1")) == [(b"1",)]
        await client.query("set application_name = 'blocked'")
        got = await client.query("select 1")
        assert not rows(got) and errors(got)[0].sqlstate == "42501", got
    finally:
        await client.close()


async def test_execute_is_never_remembered(make_proxy: Any, pg_database: str) -> None:
    """The same EXECUTE text means another statement once the name is re-prepared."""
    proxy = make_proxy(inspector=Gate(load_rules()))
    client = await agent(proxy, pg_database)
    try:
        client.send(m.Parse("s", "select $1::text, $2::text").encode(), m.SYNC)
        await client.until_ready()
        exploit = "execute s('role', 'none')"
        for _ in range(3):
            assert rows(await client.query(exploit)) == [(b"role", b"none")]
        client.send(m.Close("S", "s").encode(), m.SYNC)
        await client.until_ready()
        client.send(m.Parse("s", "select set_config($1, $2, false)").encode(), m.SYNC)
        await client.until_ready()
        got = await client.query(exploit)
        assert not rows(got) and errors(got)[0].sqlstate == "42501", got
    finally:
        await client.close()
