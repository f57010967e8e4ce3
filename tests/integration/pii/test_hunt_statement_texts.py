"""Statement texts keep the values of the tokens resolved into them, through the real
gate: ``SELECT … WHERE card_number = 'tok_card_…'`` is forwarded with the card number
in its text, and the server hands that text back — ``pg_prepared_statements`` (psycopg
prepares a text it runs five times), ``pg_stat_activity`` and
``pg_stat_get_backend_activity(n)`` (another session's last text). What they return is
tokenized; a statement that asks a question of them (``WHERE ascii(substr(statement,
…)) & 1 <> 0``: a row per bit, reading no table row) is held. Every answer the agent
gets is compared with the raw card number read straight from the server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from dbgate.wire import messages as m
from tests.conftest import _admin_execute
from tests.integration.clients.conftest import DemoRole, start_pii_proxy
from tests.integration.conftest import RunningProxy
from tests.integration.pii.conftest import Demo
from tests.integration.rawclient import RawClient

#: a view of the database's own over pg_stat_activity, its text under another name
VIEW = [
    "drop view if exists hunt_activity",
    "create view hunt_activity as select pid, state, query as q from pg_stat_activity",
]


@pytest.fixture(scope="module")
def hunt_proxy(pg_server: Any, demo_role: DemoRole, demo_db: str) -> Iterator[RunningProxy]:
    """The real gate, started once the view exists (its snapshot knows it)."""
    _admin_execute(
        pg_server, *VIEW, f"grant select on hunt_activity to {demo_role.name}", dbname=demo_db
    )
    running = start_pii_proxy(pg_server, demo_role)
    try:
        yield running
    finally:
        running.stop()
        _admin_execute(pg_server, VIEW[0], dbname=demo_db)


def _run(conn: Any, sql: str) -> str:
    """What the agent gets back from ``sql``: its rows, or the error's SQLSTATE."""
    try:
        return "ok " + repr(conn.execute(sql).fetchall())
    except psycopg.Error as e:
        return f"{e.diag.sqlstate}: {e}"


@pytest.fixture
def direct(dsn: str, pg_server: Any, pii_demo: Demo) -> str:
    """The demo database straight from the server, as its superuser."""
    return str(pg_server.dsn(urlsplit(dsn).path.lstrip("/")))


@pytest.fixture
def card(direct: str) -> str:
    """Payment 1's card number, read straight from the server."""
    with psycopg.connect(direct) as conn:
        row = conn.execute("select card_number from payments where id = 1").fetchone()
    assert row is not None and row[0].isdigit()
    return str(row[0])


def _bits(conn: Any, question: str, card: str) -> tuple[str, set[str]]:
    """Ask ``question`` (with ``{i}`` the character, ``{b}`` the bit) of every bit of
    the low nibble of each character, as an agent spelling the card number would:
    what it spelled, and the answers seen (their first five characters)."""
    chars, answers = [], set()
    for i in range(len(card)):
        code = 0
        for b in range(4):
            got = _run(conn, question.format(i=i, b=1 << b))
            answers.add(got[:5])
            code |= (1 << b) if got.startswith("ok [(") else 0
        chars.append(chr(0x30 | code))
    return "".join(chars), answers


def test_a_prepared_statements_text_is_not_asked_a_question(dsn: str, card: str) -> None:
    """psycopg prepares a text it runs five times; ``pg_prepared_statements.statement``
    then holds it for the session's life, with the card number a token was resolved to.
    ``SELECT 1 FROM pg_prepared_statements WHERE ascii(substr(statement, strpos(
    statement, '$dbgate$') + 8 + i, 1)) & b <> 0`` returned its row by a bit of it:
    held (no approver here: refused with 42501, the reason said). Its plain read stays
    allowed, the text tokenized."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        (token,) = conn.execute("select card_number from payments where id = 1").fetchone()
        assert token.startswith("tok_card_")
        lookup = f"select id from payments where card_number = '{token}'"
        for _ in range(6):
            assert conn.execute(lookup).fetchall() == [(1,)]
        rows = conn.execute("select name, statement from pg_prepared_statements").fetchall()
        assert rows, "psycopg prepared nothing"
        assert all(str(r[1]).startswith("tok_") for r in rows), rows
        assert card not in repr(rows)
        spelled, answers = _bits(
            conn,
            "select 1 from pg_prepared_statements where ascii(substr(statement,"
            " strpos(statement, '$dbgate$') + 8 + {i}, 1)) & {b} <> 0",
            card,
        )
        got = _run(conn, "select 1 from pg_prepared_statements where statement like '%4%'")
        assert got.startswith("42501") and "statement texts" in got, got
        assert "predicate or expression" in got, got
        assert card not in got
    assert spelled != card
    assert answers == {"42501"}, answers


def test_another_sessions_text_is_not_asked_a_question(dsn: str, direct: str, card: str) -> None:
    """While a session is idle, ``pg_stat_activity.query`` and
    ``pg_stat_get_backend_activity(n)`` show its last text to every session of the
    role — here with the card number its token was resolved to (read straight from the
    server). A question asked of it, over ``pg_stat_activity`` or over the function
    beside ``generate_series``, or over a view of the database's own that renames it, is
    held; reading the view's other columns, or its
    texts as plain columns, stays allowed."""
    with (
        psycopg.connect(dsn, autocommit=True) as victim,
        psycopg.connect(dsn, autocommit=True) as agent,
        psycopg.connect(direct, autocommit=True) as server,
    ):
        (pid,) = victim.execute("select pg_backend_pid()").fetchone()
        (token,) = victim.execute("select card_number from payments where id = 1").fetchone()
        victim.execute(f"select id from payments where card_number = '{token}'").fetchall()
        (text,) = server.execute(
            "select query from pg_stat_activity where pid = %s", [pid]
        ).fetchone()
        assert card in text  # the value really is there, for the agent's role to read
        (backend,) = server.execute(
            "select n from pg_stat_get_backend_idset() n where pg_stat_get_backend_pid(n) = %s",
            [pid],
        ).fetchone()
        questions = {
            "pg_stat_activity": "select 1 from pg_stat_activity where pid = "
            + str(pid)
            + " and ascii(substr(query, strpos(query, '$dbgate$') + 8 + {i}, 1)) & {b} <> 0",
            "backend_activity": "select 1 from generate_series(1, 200) n where"
            " pg_stat_get_backend_pid(n) = " + str(pid) + " and ascii(substr("
            "pg_stat_get_backend_activity(n), strpos(pg_stat_get_backend_activity(n),"
            " '$dbgate$') + 8 + {i}, 1)) & {b} <> 0",
            "backend_activity_in_from": "select 1 from pg_stat_get_backend_activity("
            + str(backend)
            + ") t where ascii(substr(t, strpos(t, '$dbgate$') + 8 + {i}, 1)) & {b} <> 0",
        }
        questions["view"] = (
            "select 1 from hunt_activity where pid = "
            + str(pid)
            + " and ascii(substr(q, strpos(q, '$dbgate$') + 8 + {i}, 1)) & {b} <> 0"
        )
        for name, question in questions.items():
            spelled, answers = _bits(agent, question, card)
            assert spelled != card, name
            assert answers == {"42501"}, (name, answers)
        # still allowed: the texts as plain columns (tokenized), the other columns
        plain = _run(agent, f"select pid, state, query from pg_stat_activity where pid = {pid}")
        assert plain.startswith("ok [(") and "tok_" in plain, plain
        assert card not in plain
        idle = _run(
            agent, f"select count(*) from pg_stat_activity where state = 'idle' and pid = {pid}"
        )
        assert idle == "ok [(1,)]", idle
        mine = _run(agent, "select pid, state from pg_stat_activity where state = 'active'")
        assert mine.startswith("ok [("), mine
        renamed = _run(agent, "select 1 from hunt_activity where q like '%4%'")
        assert "through hunt_activity" in renamed and "q in WHERE" in renamed, renamed
        view = _run(agent, f"select pid, state, q from hunt_activity where pid = {pid}")
        assert view.startswith("ok [(") and "tok_" in view and card not in view, view
        function = _run(agent, f"select pg_stat_get_backend_activity({backend})")
        assert function.startswith("ok [('tok_"), function
        assert card not in function


async def test_a_named_parse_holding_a_resolved_token_is_not_asked_a_question(
    dsn: str, card: str
) -> None:
    """A named Parse whose text compares a token with the card number keeps the value
    in ``pg_prepared_statement()`` for the session's life; a later Parse asking a bit
    of it, on the same connection, is held before anything runs."""
    client = await RawClient.from_dsn(dsn)
    try:

        async def run(*msgs: bytes) -> list[Any]:
            client.send(*msgs)  # a Query, or a Parse … Execute ended by a Sync
            return list(await client.until_ready())

        got = await run(
            m.Query("select card_number from payments where id = 1").encode(),
        )
        (token,) = [x.columns[0].decode() for x in got if isinstance(x, m.DataRow)]
        assert token.startswith("tok_card_")
        lookup = f"select id from payments where card_number = '{token}'"
        got = await run(
            m.Parse("keep", lookup, ()).encode(),
            m.Bind("", "keep").encode(),
            m.Execute("", 0).encode(),
            m.SYNC,
        )
        assert [x.columns for x in got if isinstance(x, m.DataRow)] == [(b"1",)], got
        answers = set()
        seen = b""
        for i in range(len(card)):
            for b in range(4):
                question = (
                    "select 1 from pg_prepared_statement() s where s.name = 'keep' and"
                    " ascii(substr(s.statement, strpos(s.statement, '$dbgate$') + 8 +"
                    f" {i}, 1)) & {1 << b} <> 0"
                )
                got = await run(
                    m.Parse("", question, ()).encode(),
                    m.Bind("", "").encode(),
                    m.Execute("", 0).encode(),
                    m.SYNC,
                )
                seen += b"".join(repr(x).encode() for x in got)
                errs = [x.fields.get("C") for x in got if isinstance(x, m.ErrorResponse)]
                rows = [x for x in got if isinstance(x, m.DataRow)]
                answers.add((tuple(errs), len(rows)))
        got = await run(m.Query("select name, statement from pg_prepared_statements").encode())
        rows = [x.columns for x in got if isinstance(x, m.DataRow)]
        assert rows and all(r[1].startswith(b"tok_") for r in rows), rows
    finally:
        await client.close()
    assert answers == {(("42501",), 0)}, answers
    assert card.encode() not in seen
