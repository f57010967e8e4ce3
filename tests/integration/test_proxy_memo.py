"""Repeatable verdicts: the relay forwards a byte-identical message without asking again.

What must hold: a remembered message is not shown to the inspector again and is
still forwarded; anything that could change the answer (a ParameterStatus from the
server, ``SessionInfo.forget_verdicts()``) makes the relay ask again; what the
inspector did not mark repeatable is always asked; the memory is bounded.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from dbgate.gate import Gate
from dbgate.gate.keys import KeyCatalogs
from dbgate.policy.rules import load_rules
from dbgate.proxy import tracker as tracker_mod
from dbgate.proxy.seams import ALLOW, ALLOW_REPEATABLE, Allow, Refuse, Statement
from dbgate.proxy.session_info import SessionInfo
from dbgate.wire import messages as m
from tests.integration.conftest import proxy_config
from tests.integration.rawclient import agent, errors, extended, rows


class CountingInspector:
    """Allows everything; repeatable unless the text says /*once*/; counts questions."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []
        self.sessions: list[SessionInfo] = []
        self.generation = 0  # see Inspector in seams.py

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


async def test_a_new_inspector_generation_makes_the_relay_ask_again(
    counting: Any, pg_database: str
) -> None:
    proxy, inspector = counting
    client = await agent(proxy, pg_database)
    try:
        for _ in range(2):
            await client.query("select 1")
            client.send(extended("select $1::int", (b"1",)), m.SYNC)
            await client.until_ready()
        assert inspector.asked.count(("query", "select 1")) == 1
        assert inspector.asked.count(("parse", "select $1::int")) == 1
        inspector.generation += 1  # the inspector's rules or catalogs changed
        await client.query("select 1")
        client.send(extended("select $1::int", (b"1",)), m.SYNC)
        await client.until_ready()
        assert inspector.asked.count(("query", "select 1")) == 2
        assert inspector.asked.count(("parse", "select $1::int")) == 2
    finally:
        await client.close()


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


# -- with the upstream's unique keys, as ``dbgate serve`` runs the gate -----------------


class CountingGate(Gate):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asked: list[str] = []

    def inspect(self, session: SessionInfo, statement: Statement) -> Any:
        self.asked.append(statement.sql)
        return super().inspect(session, statement)


@pytest.fixture
def keyed(pg_dsn: str) -> Iterator[str]:
    name = f"memo_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
        conn.execute(f"INSERT INTO {name} VALUES (1, 'one')")
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


async def test_a_verdict_proven_by_a_key_is_remembered_until_the_keys_change(
    make_proxy: Any, pg_server: Any, pg_database: str, pg_dsn: str, keyed: str
) -> None:
    """A read pinned by its primary key is proven to return one row and runs without a
    row limit; the relay remembers that verdict for the same text. Once the key is
    dropped and the catalog reloaded, the remembered verdict must not be used: the
    read is limited again (the default pack's 1,000 rows) and fails past it."""
    keys = KeyCatalogs(proxy_config(pg_server))
    gate = CountingGate(load_rules(), keys=keys)
    proxy = make_proxy(inspector=gate)
    client = await agent(proxy, pg_database)
    read = f"SELECT v FROM {keyed} WHERE id = 1"
    try:
        for _ in range(2):  # the first loads the catalogs; the second sees a repeat
            assert rows(await client.query(read)) == [(b"one",)]
        asked = gate.asked.count(read)
        for _ in range(3):
            assert rows(await client.query(read)) == [(b"one",)]
        assert gate.asked.count(read) == asked  # remembered under the loaded key catalog
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f"ALTER TABLE {keyed} DROP CONSTRAINT {keyed}_pkey")
            conn.execute(f"INSERT INTO {keyed} SELECT 1, 'dup' FROM generate_series(1, 1500)")
        proxy.call(keys.loads.reload_since(pg_database, time.monotonic()))
        got = await client.query(read)
        assert gate.asked.count(read) == asked + 1
        assert errors(got) and errors(got)[0].sqlstate == "54000", got
    finally:
        await client.close()
