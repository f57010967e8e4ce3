"""Tokens the agent sends back, through the real gate: a token is resolved only where
the server compares its value whole with PII, never where the value becomes a part
of something the server orders, bounds or measures."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg.types.json import Jsonb

from dbgate.wire import messages as m
from tests.integration.pii.conftest import Demo
from tests.integration.rawclient import RawClient


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


def test_a_token_in_array_or_json_syntax_read_as_another_type_is_refused(
    dsn: str, card: tuple[int, str]
) -> None:
    """A literal in array or JSON syntax has its tokens resolved inside it, each a whole
    element; but a literal the text does not type takes the type of what it is
    compared with, and a range reads ``'["tok_card_…", hi]'`` as its bounds: the
    server failed (22000, lower bound above the upper) exactly when the card number
    was above ``hi`` — 53 statements, reading no row they return. A ``line`` reads
    ``'{tok_card_…,1,0}'`` as its coefficients and compares lines by the ratios of
    theirs, within 1e-6: an order of the value with a number the agent chose. Cast to
    ``numrange``, in an ``IN`` list, by ``@>``, or as an untyped Bind value, the same.
    Refused: array and JSON syntax is resolved only where the server reads it as an
    array or JSON (a cast to one, ``= ANY``, or compared with what is visibly one)."""
    number, text = card
    with psycopg.connect(dsn, autocommit=True) as conn:
        (token,) = conn.execute("select card_number from payments where id = 1").fetchone()
        head = "select 1 from payments p where p.id = 1 and "
        span = "numrange(0 * length(p.card_number), 1)"
        wide = "numrange(0 * length(p.card_number), 1e20)"
        json = "'[\"{t}\", {x}]'"
        probes: dict[str, tuple[str, Callable[[str, int], Any]]] = {
            "untyped": (head + f"{span} <> {json}", lambda t, x: None),
            "cast": (head + f"{span} <> {json}::numrange", lambda t, x: None),
            "in": (head + f"{span} not in ({json})", lambda t, x: None),
            "contains": (head + f"{wide} @> {json}", lambda t, x: None),
            "line": (head + "not {line} = '{{{t},1,0}}'", lambda t, x: None),
            "bind": (head + f"{span} <> %s", lambda t, x: (f'["{t}", {x}]',)),
            "bind contains": (head + f"{wide} @> %s", lambda t, x: (f'["{t}", {x}]',)),
            "bind line": (head + "not {line} = %s", lambda t, x: (f"{{{t},1,0}}",)),
        }
        leaks = {}
        for name, (probe, params) in probes.items():

            def ask(x: int, probe: str = probe, params: Any = params) -> str:
                # a line {a,1e-6,0} equals {V,1,0} while a/V <= 2e-6: a = 2e-6 x
                line = f"('{{{x * 2}e-6,0.000001,0}}' || left(p.card_number, 0))::line"
                sql = probe.format(t=token, x=x, line=line)
                return _run(conn, sql, params(token, x))

            answers, lo, hi = _search(ask, 0, 10**19)
            if answers != {"22023"} or abs(hi - number) < 10**6:
                leaks[name] = (answers, lo, hi)
        assert not leaks, (text, leaks)
        # what stays: array and JSON syntax the server reads as an array or JSON
        kept = [
            f"array[p.card_number] @> '{{{token}}}'",
            f"p.card_number = any('{{{token}}}')",
            f"jsonb_build_object('c', p.card_number) @> '{{\"c\": \"{token}\"}}'",
            f"to_jsonb(array[p.card_number]) @> '[\"{token}\"]'",
            f"to_jsonb(array[p.card_number]) @> '[\"{token}\"]'::jsonb",
        ]
        for cond in kept:
            assert _run(conn, head + cond) == "ok [(1,)]", cond
        for cond, value in (
            ("array[p.card_number] @> %s", f"{{{token}}}"),
            ("jsonb_build_object('c', p.card_number) @> %s", f'{{"c": "{token}"}}'),
            ("to_jsonb(array[p.card_number]) @> %s", Jsonb([token])),
        ):
            assert _run(conn, head + cond, (value,)) == "ok [(1,)]", cond


def test_a_derived_token_read_as_a_line_is_refused(dsn: str, card: tuple[int, str]) -> None:
    """A derived value's fresh token resolves where it is compared with PII, read as
    the type of what it is compared with: the token of ``'{' || card_number ||
    ',1,0}'`` compared with a ``line`` the agent made (``('{a,1e-6,0}' ||
    left(card_number, 0))::line``) is the line ``{V,1,0}``, which the server compares
    by the ratios of the coefficients within 1e-6 — equal while ``a / V <= 2e-6``, an
    order of the card number with a number the agent chose, 53 statements for eleven
    of its digits from one token. Geometric types read numbers as floats: a token
    compared with one is refused, as with a cast to a float."""
    number, text = card
    with psycopg.connect(dsn, autocommit=True) as conn:
        (token,) = conn.execute(
            "select '{' || card_number || ',1,0}' from payments where id = 1"
        ).fetchone()
        assert token.startswith("tok_")
        probes = {
            "cast": "not ('{{{a},0.000001,0}}' || left(p.card_number, 0))::line = '{t}'",
        }
        leaks = {}
        for name, probe in probes.items():

            def ask(x: int, probe: str = probe) -> str:
                sql = "select 1 from payments p where p.id = 1 and " + probe.format(
                    a=f"{x * 2}e-6", t=token
                )
                return _run(conn, sql)

            answers, lo, hi = _search(ask, 0, 10**19)
            if answers != {"22023"} or abs(hi - number) < 10**6:
                leaks[name] = (answers, lo, hi)
        assert not leaks, (text, leaks)


async def test_a_token_in_a_binary_value_declared_unknown_is_refused(
    dsn: str, card: tuple[int, str]
) -> None:
    """A binary Bind value of a type the Parse leaves to the server is refused: its
    layout is the type the server infers. A Parse may also declare the type
    ``unknown`` (705), which the server infers just the same, and such a value was
    resolved: ``length(p.card_number) = $1`` read the card number's bytes as an
    ``int4`` and failed (22P03) unless there were four, ``uuid`` unless sixteen, and
    types with a structured layout check bytes of it. Refused as for an undeclared
    type; in the text format it is read as an undeclared one is."""
    _number, text = card
    with psycopg.connect(dsn, autocommit=True) as conn:
        (token,) = conn.execute("select card_number from payments where id = 1").fetchone()
    head = "select 1 from payments p where p.id = 1 and "
    got = {}
    for side, fmt in (
        ("length(p.card_number)", 1),
        ("(left(p.card_number, 0) || '00000000-0000-0000-0000-000000000000')::uuid", 1),
        ("numrange(0 * length(p.card_number), 1)", 1),
        ("p.card_number", 1),
        ("p.card_number", 0),
    ):
        client = await RawClient.from_dsn(dsn)
        try:
            client.send(
                m.Parse("", head + side + " = $1", (705,)).encode(),
                m.Bind("", "", param_formats=(fmt,), params=(token.encode(),)).encode(),
                m.Execute("", 0).encode(),
                m.SYNC,
            )
            msgs = await client.until_ready()
        finally:
            await client.close()
        assert text.encode() not in b"".join(bytes(repr(x), "utf-8") for x in msgs)
        errs = [x.fields.get("C") for x in msgs if isinstance(x, m.ErrorResponse)]
        rows = [x.columns for x in msgs if isinstance(x, m.DataRow)]
        got[(side, fmt)] = errs[0] if errs else rows
    assert got == {
        ("length(p.card_number)", 1): "22023",
        ("(left(p.card_number, 0) || '00000000-0000-0000-0000-000000000000')::uuid", 1): "22023",
        ("numrange(0 * length(p.card_number), 1)", 1): "22023",
        ("p.card_number", 1): "22023",
        ("p.card_number", 0): [(b"1",)],
    }, got


async def test_a_token_in_a_value_declared_of_a_domain_is_refused(
    dsn: str, pg_server: Any, card: tuple[int, str]
) -> None:
    """A Parse may declare a parameter's type by OID, a domain's too: the server then
    runs the domain's checks on the value it is given, the resolved one —
    ``CHECK (VALUE < '5')`` failed (23514) or not by the card number's order, and a
    type made since dbgate's snapshot is read as the server likes. Refused: a token
    is resolved into no value of a domain or of a type dbgate does not know."""
    _number, text = card
    direct = pg_server.dsn(urlsplit(dsn).path.lstrip("/"))
    with psycopg.connect(direct, autocommit=True) as conn:
        conn.execute("create domain tokens_in_below_5 as text check (value < '5')")
        row = conn.execute("select 'tokens_in_below_5'::regtype::oid").fetchone()
    assert row is not None
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            (token,) = conn.execute("select card_number from payments where id = 1").fetchone()
        got = []
        for oid in (row[0], 25):
            client = await RawClient.from_dsn(dsn)
            try:
                client.send(
                    m.Parse(
                        "", "select 1 from payments p where p.id = 1 and p.card_number = $1", (oid,)
                    ).encode(),
                    m.Bind("", "", params=(token.encode(),)).encode(),
                    m.Execute("", 0).encode(),
                    m.SYNC,
                )
                msgs = await client.until_ready()
            finally:
                await client.close()
            assert text.encode() not in b"".join(bytes(repr(x), "utf-8") for x in msgs)
            errs = [x.fields.get("C") for x in msgs if isinstance(x, m.ErrorResponse)]
            got.append(errs[0] if errs else [x.columns for x in msgs if isinstance(x, m.DataRow)])
        assert got == ["22023", [(b"1",)]], got
    finally:
        with psycopg.connect(direct, autocommit=True) as conn:
            conn.execute("drop domain tokens_in_below_5")


def test_a_token_resolved_into_a_text_that_reads_its_own_text_is_refused(
    dsn: str, card: tuple[int, str]
) -> None:
    """A token is resolved into the text dbgate forwards, and ``current_query()`` is
    that text: ``SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM payments p WHERE false AND
    p.card_number = 'tok_card_…') AND ascii(substr(current_query(), strpos(
    current_query(), '$dbgate$') + 8 + i, 1)) & b <> 0`` returned its one row exactly
    where bit ``b`` of the value's ``i``-th character was set, reading no table row:
    64 statements spelled the card number. Its value is unknown, so tokenized, but
    whether the row came is not. The same through ``pg_stat_activity`` and
    ``pg_stat_get_activity``. Refused: a token is resolved into no text that reads
    statement texts; and a text asking a question of one is held."""
    _number, text = card
    with psycopg.connect(dsn, autocommit=True) as conn:
        (token,) = conn.execute("select card_number from payments where id = 1").fetchone()
        readers = {
            "current_query": "current_query()",
            "pg_stat_activity": "(select a.query from pg_stat_activity a"
            " where a.pid = pg_backend_pid())",
            "pg_stat_get_activity": "(select a.query from pg_stat_get_activity("
            "pg_backend_pid()) a)",
        }
        plain = {
            "current_query": "select current_query() from payments p where p.card_number = '{t}'",
            "pg_stat_activity": "select a.query from pg_stat_activity a, payments p"
            " where a.pid = pg_backend_pid() and p.card_number = '{t}'",
            "pg_stat_get_activity": "select a.query from pg_stat_get_activity("
            "pg_backend_pid()) a, payments p where p.card_number = '{t}'",
        }
        spelled: dict[str, str] = {}
        answers: set[str] = set()
        for name, reader in readers.items():
            chars = []
            for i in range(len(text)):
                code = 0
                for b in range(4):
                    got = _run(
                        conn,
                        "select 1 where not exists (select 1 from payments p where false and"
                        f" p.card_number = '{token}') and ascii(substr({reader},"
                        f" strpos({reader}, '$dbgate$') + 8 + {i}, 1)) & {1 << b} <> 0",
                    )
                    answers.add(got[:5])
                    code |= (1 << b) if got.startswith("ok [(") else 0
                chars.append(chr(0x30 | code))
            spelled[name] = "".join(chars)
            # read as a plain column, the text is not asked a question: the token
            # beside it is still refused
            bare = _run(conn, plain[name].format(t=token))
            assert bare.startswith("22023"), (name, bare)
        assert text not in spelled.values(), spelled
        # a question asked of a statement text is held first (no approver here: 42501);
        # approved, the token in it would still be refused (22023, above)
        assert answers == {"42501"}, answers
