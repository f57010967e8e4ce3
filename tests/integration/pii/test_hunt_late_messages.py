"""Messages the server sends after the statement they are about, through the real gate:
what a query says when its executor ends comes when its portal or cursor is dropped —
at the next Bind of the unnamed portal, a Query, a Close, ``CLOSE``, COMMIT or Sync —
under the verdict of that later message.

With ``auto_explain`` loaded by the operator at level ``notice`` (``log_min_duration
= 0``), the plan of an extended-protocol SELECT whose Bind carried a token is sent
when the next Bind drops its portal: ``Query Parameters: $1 = 'Matthew Smith'`` and
``Filter: (full_name = 'Matthew Smith'::text)`` went out under a clean statement's
verdict. A cursor declared over PII says its plan at ``CLOSE`` or COMMIT.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.conftest import _admin_execute
from tests.integration.clients.conftest import DemoRole

SETTINGS = {
    "session_preload_libraries": "auto_explain",
    "auto_explain.log_min_duration": "0",
    "auto_explain.log_level": "notice",
}


@pytest.fixture(scope="module")
def explained(pg_server: Any, demo_db: str, demo_role: DemoRole) -> Iterator[str]:
    """auto_explain at level notice for the agent's role; customer 1's name."""
    for k, v in SETTINGS.items():
        _admin_execute(pg_server, f"alter role {demo_role.name} set {k} = '{v}'", dbname=demo_db)
    with psycopg.connect(pg_server.dsn(demo_db)) as direct:
        row = direct.execute("select full_name from customers where id = 1").fetchone()
    assert row is not None
    try:
        yield str(row[0])
    finally:
        for k in SETTINGS:
            _admin_execute(pg_server, f"alter role {demo_role.name} reset {k}", dbname=demo_db)


def _agent(dsn: str, notices: list[str], **kwargs: Any) -> psycopg.Connection[Any]:
    conn = psycopg.connect(dsn, **kwargs)
    conn.add_notice_handler(
        lambda n: notices.append(f"{n.severity}: {n.message_primary} {n.message_detail}")
    )
    return conn


def _token(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("select full_name from customers where id = 1").fetchone()
    assert row is not None and str(row[0]).startswith("tok_"), row
    return str(row[0])


def test_a_plan_said_when_the_next_bind_drops_the_portal(dsn: str, explained: str) -> None:
    notices: list[str] = []
    with _agent(dsn, notices, autocommit=True) as agent:
        token = _token(agent)
        with agent.pipeline():
            agent.execute("select id from customers where full_name = %s", (token,))
            agent.execute("select 1 where %s::int = 1", (1,))
            agent.execute("select 2")
        with agent.pipeline():
            agent.execute(f"select id from customers where full_name = '{token}'")
            agent.execute("select 4")
    text = "\n".join(notices)
    assert "plan" in text or "withheld" in text, text
    assert explained not in text, text


def test_a_plan_said_at_commit_of_a_transaction(dsn: str, explained: str) -> None:
    notices: list[str] = []
    with _agent(dsn, notices) as agent:  # psycopg's own transaction, the default
        token = _token(agent)
        agent.execute("select id from customers where full_name = %s", (token,))
        agent.execute("select 1")
        agent.commit()
        agent.execute("select id from customers where full_name = %s", (token,))
        agent.execute("commit")
        assert agent.execute("select 5").fetchone() == (5,)
    text = "\n".join(notices)
    assert explained not in text, text


def test_a_cursor_says_its_plan_when_closed(dsn: str, explained: str) -> None:
    notices: list[str] = []
    with _agent(dsn, notices, autocommit=True) as agent:
        token = _token(agent)
        for ends in ("close c", "commit", "rollback"):
            agent.execute("begin")
            agent.execute(
                f"declare c cursor for select id from customers where full_name = '{token}'"
            )
            agent.execute("fetch 1 from c")
            agent.execute(ends)
            if ends == "close c":
                agent.execute("commit")
    text = "\n".join(notices)
    assert "withheld" in text, text
    assert explained not in text, text


def test_notices_of_clean_statements_pass_again_once_idle(dsn: str, explained: str) -> None:
    notices: list[str] = []
    with _agent(dsn, notices, autocommit=True) as agent:
        token = _token(agent)
        agent.execute("select id from customers where full_name = %s", (token,))
        notices.clear()
        agent.execute("select 7")
    assert any("select 7" in n for n in notices), notices
