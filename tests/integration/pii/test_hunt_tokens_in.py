"""Tokens the agent sends back, through the real gate: a token is resolved only where
the server compares its value whole with PII, never where the value becomes a part
of something the server orders, bounds or measures."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.integration.pii.conftest import Demo


def _run(conn: Any, sql: str, params: Any = None) -> str:
    """What the agent gets back from ``sql``: its rows, or the error's SQLSTATE."""
    try:
        return "ok " + repr(conn.execute(sql, params).fetchall())
    except psycopg.Error as e:
        return f"{e.diag.sqlstate}: {e}"


@pytest.fixture
def card(dsn: str, pg_server: Any, pii_demo: Demo) -> tuple[int, str]:
    """Payment 1's card number, read straight from the server, as a number."""
    direct = pg_server.dsn(urlsplit(dsn).path.lstrip("/"))
    with psycopg.connect(direct) as conn:
        row = conn.execute("select card_number from payments where id = 1").fetchone()
    assert row is not None and row[0].isdigit()
    return int(row[0]), row[0]


def _search(ask: Callable[[int], str], lo: int, hi: int) -> tuple[set[str], int, int]:
    """Binary search for the least ``x`` in ``(lo, hi]`` where ``ask(x)`` says yes
    (``"ok [(1,)]"``), as an agent would: the answers seen and the final bounds."""
    answers = set()
    for _ in range(80):
        if hi - lo <= 1:
            break
        mid = (lo + hi) // 2
        got = ask(mid)
        answers.add(got[:5])
        if got.startswith("ok [(1,)]"):
            hi = mid
        else:
            lo = mid
    return answers, lo, hi


def test_a_token_contained_by_any_is_refused(dsn: str, card: tuple[int, str]) -> None:
    """``@>`` and ``<@`` resolve a token only inside an array or JSON value, whose
    elements they compare whole; but ``@> ANY (array)`` compares each element of the
    array as a scalar: ``numrange(0 * length(p.card_number), hi) @> ANY
    (ARRAY['tok_card_…'::numeric])`` returned its row exactly when the card number was
    below ``hi``, 53 one-row statements for the whole number, and the same with the
    array as a literal or a Bind parameter. Refused: under ``ANY``, ``@>`` and ``<@``
    resolve no token."""
    number, text = card
    with psycopg.connect(dsn, autocommit=True) as conn:
        (token,) = conn.execute("select card_number from payments where id = 1").fetchone()
        assert token.startswith("tok_card_")
        head = "select 1 from payments p where p.id = 1 and "
        probes: dict[str, tuple[str, Callable[[str], Any]]] = {
            "array": (
                head + "numrange(0 * length(p.card_number), {hi}) @> any(array['{t}'::numeric])",
                lambda t: None,
            ),
            "literal": (
                head + "numrange(0 * length(p.card_number), {hi}) @> any('{{{t}}}'::numeric[])",
                lambda t: None,
            ),
            "flipped": (
                head + "'{t}'::numeric <@ any(array[numrange(0 * length(p.card_number), {hi})])",
                lambda t: None,
            ),
            "bind list": (
                head + "numrange(0 * length(p.card_number), {hi}) @> any(%s::numeric[])",
                lambda t: ([t],),
            ),
            "bind text": (
                head + "numrange(0 * length(p.card_number), {hi}) @> any(%s::numeric[])",
                lambda t: ("{" + t + "}",),
            ),
        }
        leaks = {}
        for name, (probe, params) in probes.items():

            def ask(hi: int, probe: str = probe, params: Any = params) -> str:
                sql = probe.replace("{t}", token).replace("{hi}", str(hi))
                sql = sql.replace("{{", "{").replace("}}", "}")
                return _run(conn, sql, params(token))

            answers, lo, hi = _search(ask, 0, 10**19)
            if answers != {"22023"} or hi == number + 1:
                leaks[name] = (answers, lo, hi)
        assert not leaks, (text, leaks)
        # what stays: a whole value compared whole inside an array
        assert _run(conn, head + f"array[p.card_number] @> array['{token}']") == "ok [(1,)]"
        assert _run(conn, head + "p.card_number = any(%s)", ([token],)) == "ok [(1,)]"
