"""Extension types, types of the database's own and the functions and operators that
come with them, through the real gate over the demo dataset: every byte the client
receives is compared with the raw values read straight from the server."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import psycopg

from tests.integration.pii.conftest import Demo


def _run(conn: Any, sql: str, params: Any = None) -> str:
    """What the agent gets back from ``sql``: its rows, or the error."""
    try:
        return "ok " + repr(conn.execute(sql, params).fetchall())
    except psycopg.Error as e:
        return f"{e.diag.sqlstate}: {e}"


def _direct(pg_server: Any, dsn: str, sql: str) -> Any:
    """One value read straight from the server, as its own user."""
    with psycopg.connect(pg_server.dsn(urlsplit(dsn).path.lstrip("/"))) as direct:
        row = direct.execute(sql).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0]


def test_a_token_within_bounds_the_agent_chose_is_refused(
    dsn: str, pg_server: Any, pii_demo: Demo
) -> None:
    """``@>`` and ``<@`` resolved a token as they do ``=``: of a range (a multirange, a
    cube, an ltree, an hstore) they ask whether the value lies within bounds the other
    operand chose, and that operand only had to carry PII by lineage. ``numrange(0 *
    length(p.card_number), hi) @> 'tok_card_…'::numeric`` returned its row exactly when
    the card number was below ``hi``: 53 statements, one row each, read the whole number.
    A token inside a longer literal (``'[tok_…,hi)'::numrange``) was resolved in place,
    a range's bound the server compares or fails on by its size. Refused: a token
    stands for its value whole, and ``@>``/``<@`` compare it so inside arrays and JSON."""
    card = _direct(pg_server, dsn, "select card_number from payments where id = 1")
    with psycopg.connect(dsn, autocommit=True) as conn:
        (token,) = conn.execute("select card_number from payments where id = 1").fetchone()
        assert token.startswith("tok_card_")
        probes = {
            "scalar": "select 1 from payments p where p.id = 1 and numrange(0 * length("
            "p.card_number), {hi}) @> '{t}'::numeric",
            "flipped": "select 1 from payments p where p.id = 1 and '{t}'::numeric <@ "
            "numrange(0 * length(p.card_number), {hi})",
            "bounds": "select 1 from payments p where p.id = 1 and numrange(0 * length("
            "p.card_number), {hi}) @> '[{t},{t}]'::numrange",
            "in a range": "select 1 from payments p where p.id = 1 and numrange(0 * length("
            "p.card_number), 1) = '[{t},{hi})'::numrange",
            "in an array": "select 1 from payments p where p.id = 1 and array[numrange(0 *"
            " length(p.card_number), {hi})] @> '{{\"[{t},{hi})\"}}'::numrange[]",
            "in json": "select 1 from payments p where p.id = 1 and jsonb_build_object('c',"
            ' p.card_number) @> \'{{"c": "x {t}"}}\'',
        }
        for name, probe in probes.items():
            lo, hi = 0, 10**19
            answers = set()
            for _ in range(64):
                if hi - lo <= 1:
                    break
                mid = (lo + hi) // 2
                got = _run(conn, probe.format(t=token, hi=mid))
                answers.add(got[:5])
                if got == "ok [(1,)]":
                    hi = mid
                else:
                    lo = mid
            assert answers == {"22023"}, (name, answers)
            assert str(lo) != card and str(hi) != card, name
        # a Bind parameter compared so, declared or left to the server
        for sql in (
            "select 1 from payments p where p.id = 1 and numrange(0 * length(p.card_number),"
            " 10000000000000000000) @> %s::numeric",
            "select 1 from payments p where p.id = 1 and numrange(0 * length(p.card_number),"
            " 10000000000000000000) @> %s",
        ):
            assert _run(conn, sql, (token,)).startswith("22023"), sql
        # what stays: whole values compared whole, in an array and in JSON
        assert (
            _run(
                conn, f"select p.id from payments p where array[p.card_number] @> array['{token}']"
            )
            == "ok [(1,)]"
        )
        assert (
            _run(
                conn,
                "select p.id from payments p where jsonb_build_object('c', p.card_number)"
                f' @> \'{{"c": "{token}"}}\' and p.id < 10',
            )
            == "ok [(1,)]"
        )
        assert _run(conn, f"select id from payments where card_number = '{token}'") == "ok [(1,)]"
