"""psycopg 3 through the enforcing dbgate and directly: its own message patterns.

psycopg 3 sends each parameterised statement as the unnamed statement
(Parse/Bind/Describe/Execute/Sync) with integers in binary, promotes a query it has
run ``prepare_threshold`` (5) times to a named prepared statement, and in pipeline
mode sends many such batches before reading any answer. Each pattern runs with a
refusal in the middle, and what follows the refusal must behave as it does directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import errors

from tests.integration.clients.expect import assert_refused

#: Held at Parse: a whole column of PII, no parameters.
PARSE_HELD = "select email from customers"
#: Held at Bind: a LIMIT above the dump threshold (1000), as a bound (binary) parameter.
#: 4112 is 0x1010: its binary bytes happen to be valid UTF-8, so dbgate's refusal of
#: it carries the right rule even while binary values are misread (issue 7 item 1),
#: and these tests isolate the prepared-statement tracking (item 2).
BIND_HELD = "select email from customers order by id limit %s"
BIND_HELD_SQL = "select email from customers order by id limit $1"
BIND_HELD_PARAMS = (4112,)

Refused = tuple[str, Any]  # ("refused", error) or ("ok", rows)


def attempt(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> Refused:
    try:
        return ("ok", conn.execute(sql, params).fetchall())
    except errors.InsufficientPrivilege as e:
        return ("refused", e)


def on_both(
    sides: dict[str, str], scenario: Callable[[psycopg.Connection[Any]], Any], **connect: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for side, dsn in sides.items():
        with psycopg.connect(dsn, **connect) as conn:
            out[side] = scenario(conn)
            out[side + " status"] = conn.info.transaction_status
    return out


def split_refusal(got: dict[str, Any], key: str, sql: str, params: Any = None) -> None:
    """Take the refused step out of both sides' results: ran directly, refused via dbgate."""
    assert got["direct"].pop(key)[0] == "ok"
    kind, error = got["gate"].pop(key)
    assert kind == "refused", error
    assert_refused(error, sql, params)


def same(got: dict[str, Any]) -> Any:
    assert got["gate"] == got["direct"]
    assert got["gate status"] == got["direct status"]
    return got["gate"]


# -- binary parameters ------------------------------------------------------------------


def binary_parameters(held: str, held_params: Any) -> Callable[[psycopg.Connection[Any]], Any]:
    def scenario(conn: psycopg.Connection[Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        out["text_cursor"] = conn.execute(
            "select id, total from orders where id = %s or id = %s order by id", (4, 9)
        ).fetchall()
        with conn.cursor(binary=True) as cur:
            out["binary_cursor"] = cur.execute(
                "select id, customer_id, total, created_at from orders where id = any(%s) order by id",
                ([2, 3, 5],),
            ).fetchall()
        out["held"] = attempt(conn, held, held_params)
        out["after"] = [conn.execute("select %s::int", (i,)).fetchone() for i in range(8)] + [
            conn.execute("select id from orders where id = %s", (3,)).fetchone()
        ]
        with conn.cursor(binary=True) as cur:
            out["binary_after"] = cur.execute(
                "select total from orders where customer_id = %s order by id", (42,)
            ).fetchall()
        return out

    return scenario


def test_binary_parameters_around_a_refusal_at_parse(sides: dict[str, str]) -> None:
    got = on_both(sides, binary_parameters(PARSE_HELD, None), autocommit=True)
    split_refusal(got, "held", PARSE_HELD)
    out = same(got)
    assert [r[0] for r in out["binary_cursor"]] == [2, 3, 5]
    assert out["after"][:8] == [(i,) for i in range(8)]


def test_binary_parameters_around_a_refusal_at_bind(sides: dict[str, str]) -> None:
    got = on_both(sides, binary_parameters(BIND_HELD, BIND_HELD_PARAMS), autocommit=True)
    split_refusal(got, "held", BIND_HELD_SQL, BIND_HELD_PARAMS)
    same(got)


# -- prepared-statement promotion ----------------------------------------------------------

PROMOTED = "select total, status from orders where id = %s"


def promotion(held: str, held_params: Any) -> Callable[[psycopg.Connection[Any]], Any]:
    """One query 10 times (psycopg prepares it at the 5th), a refusal before the 3rd."""

    def scenario(conn: psycopg.Connection[Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"rows": []}
        for i in range(1, 11):
            if i == 3:
                out["held"] = attempt(conn, held, held_params)
            out["rows"].append(conn.execute(PROMOTED, (i,)).fetchone())
        out["prepared"] = conn.execute(
            "select name ~ '^_pg3_', statement from pg_prepared_statements"
        ).fetchall()
        return out

    return scenario


def test_prepared_statement_promotion_around_a_refusal_at_parse(sides: dict[str, str]) -> None:
    got = on_both(sides, promotion(PARSE_HELD, None), autocommit=True)
    split_refusal(got, "held", PARSE_HELD)
    out = same(got)
    assert out["prepared"] == [(True, "select total, status from orders where id = $1")]
    assert len(out["rows"]) == 10


def test_prepared_statement_promotion_around_a_refusal_at_bind(sides: dict[str, str]) -> None:
    got = on_both(sides, promotion(BIND_HELD, BIND_HELD_PARAMS), autocommit=True)
    split_refusal(got, "held", BIND_HELD_SQL, BIND_HELD_PARAMS)
    same(got)


# -- pipeline mode -------------------------------------------------------------------------


def pipeline(held: str, held_params: Any) -> Callable[[psycopg.Connection[Any]], Any]:
    """A pipelined batch, a batch with a refusal in the middle, then more batches."""

    def scenario(conn: psycopg.Connection[Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with conn.pipeline():
            first = [
                conn.execute("select id, total from orders where id = %s", (5,)),
                conn.execute("select count(*) from orders where customer_id = %s", (42,)),
            ]
        out["first"] = [c.fetchall() for c in first]
        before: psycopg.Cursor[Any] | None = None
        try:
            with conn.pipeline():
                before = conn.execute("select %s::int", (1,))
                middle = conn.execute(held, held_params)
                conn.execute("select %s::int", (2,))
            out["held"] = ("ok", middle.fetchall())
        except errors.InsufficientPrivilege as e:
            out["held"] = ("refused", e)
        assert before is not None
        out["before"] = before.fetchall()
        with conn.pipeline():
            later = [conn.execute("select %s::int * 2", (i,)) for i in range(6)]
            with conn.cursor() as cur:
                cur.executemany(
                    "select total from orders where id = %s", [(i,) for i in range(1, 4)]
                )
        out["later"] = [c.fetchall() for c in later]
        out["after"] = conn.execute("select id from orders where id = %s", (3,)).fetchall()
        return out

    return scenario


def test_pipeline_mode_around_a_refusal_at_parse(sides: dict[str, str]) -> None:
    got = on_both(sides, pipeline(PARSE_HELD, None), autocommit=True)
    split_refusal(got, "held", PARSE_HELD)
    out = same(got)
    assert out["before"] == [(1,)]
    assert out["later"] == [[(i * 2,)] for i in range(6)]


def test_pipeline_mode_around_a_refusal_at_bind(sides: dict[str, str]) -> None:
    got = on_both(sides, pipeline(BIND_HELD, BIND_HELD_PARAMS), autocommit=True)
    split_refusal(got, "held", BIND_HELD_SQL, BIND_HELD_PARAMS)
    same(got)
