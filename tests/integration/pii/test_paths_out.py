"""The other paths out, on the real server: COPY TO STDOUT (text, CSV, binary), errors
and notices that echo values, RAISE in functions, NOTIFY payloads — and tokens sent
back in (literals and Bind values) that find the right rows without showing them."""

from __future__ import annotations

import csv
import io
from typing import Any

import asyncpg
import pytest

from dbgate.pii.room import PiiSettings
from dbgate.pii.tokens import TokenError
from dbgate.wire import messages as m
from tests.integration.pii.conftest import DBNAME, Demo
from tests.integration.pii.harness import (
    apply_plan,
    connect,
    leaked,
    make_room,
    run_extended,
    run_simple,
)


async def _run(pg_server: Any, sql: str) -> list[Any]:
    client = await connect(pg_server, DBNAME)
    try:
        return await run_simple(client, sql)
    finally:
        await client.close()


# ---------------------------------------------------------------------------- COPY

COPIES = [
    ("copy customers to stdout", "text", {1, 2, 3, 4, 5, 6}),
    (
        "copy (select id, email, birth_date from customers order by id limit 20) to stdout with (format csv, header)",
        "csv",
        {1, 2},
    ),
    ("copy customers (id, address) to stdout with csv", "csv", {1}),
    (
        "copy (select id, full_name from customers limit 5) to stdout with (delimiter '|')",
        "text|",
        {1},
    ),
    (
        "copy (select * from payments order by id limit 10) to stdout with (format binary)",
        "binary",
        {2},
    ),
    ("copy (select id, status from orders limit 5) to stdout with csv", "csv", set()),
]


def _split(data: bytes, kind: str) -> list[list[str]]:
    text = data.decode()
    if kind == "csv":
        return list(csv.reader(io.StringIO(text)))
    delim = "|" if kind == "text|" else "\t"
    return [line.split(delim) for line in text.splitlines()]


@pytest.mark.parametrize(
    ("sql", "kind", "tok"), COPIES, ids=[f"copy{i}" for i in range(len(COPIES))]
)
async def test_copy_out(pg_server: Any, pii_demo: Demo, sql: str, kind: str, tok: set[int]) -> None:
    res = apply_plan(pii_demo.room.plan(sql), await _run(pg_server, sql))
    assert res.copies, "no CopyData"
    before = b"".join(b for b, _ in res.copies)
    after = b"".join(a for _, a in res.copies)
    assert not leaked(after, pii_demo.values)
    if not tok:
        assert after == before
        return
    if kind == "binary":
        assert after.startswith(b"PGCOPY\n\xff\r\n\0") and after.endswith(b"\xff\xff")
        assert after != before
        return
    rows_b, rows_a = _split(before, kind), _split(after, kind)
    assert len(rows_b) == len(rows_a) > 0
    for rb, ra in zip(rows_b, rows_a, strict=True):
        assert len(rb) == len(ra)
        if rb[0] == "id":  # the CSV header
            assert ra == rb
            continue
        for i, (b, a) in enumerate(zip(rb, ra, strict=True)):
            assert (a != b) if i in tok else (a == b), (i, b, a)


async def test_copy_csv_values_with_delimiters_and_quotes(pg_server: Any, pii_demo: Demo) -> None:
    sql = "copy (select id, address, 'say \"hi\", ok' as note from customers order by id limit 5) to stdout with csv"
    res = apply_plan(pii_demo.room.plan(sql), await _run(pg_server, sql))
    after = b"".join(a for _, a in res.copies).decode()
    rows = list(csv.reader(io.StringIO(after)))
    assert len(rows) == 5
    assert all(r[1].startswith("tok_address_") and r[2] == 'say "hi", ok' for r in rows)


# ---------------------------------------------------------------------------- messages


async def test_invalid_input_echo_is_tokenized(pg_server: Any, pii_demo: Demo) -> None:
    sql = "select email::int from customers order by id limit 1"
    res = apply_plan(pii_demo.room.plan(sql), await _run(pg_server, sql))
    (err,) = res.errors
    assert err["C"] == "22P02"
    assert "tok_" in err["M"] and not leaked(res.output_bytes, pii_demo.values)


async def test_unique_violation_key_is_tokenized_as_the_column_would_be(
    pg_server: Any, pii_demo: Demo
) -> None:
    sql = (
        "insert into customers (full_name, email, phone, ssn, birth_date, address) "
        "select full_name, email, phone, ssn, birth_date, address from customers where id = 1"
    )
    res = apply_plan(pii_demo.room.plan(sql), await _run(pg_server, sql))
    (err,) = res.errors
    assert err["C"] == "23505"
    conn = await asyncpg.connect(pii_demo.dsn)
    try:
        email = await conn.fetchval("select email from customers where id = 1")
    finally:
        await conn.close()
    token = pii_demo.room.tokenizer.token("email", email.encode())
    assert err["D"] == f"Key (email)=({token}) already exists."
    assert not leaked(res.output_bytes, pii_demo.values)


async def test_not_null_violation_failing_row_is_tokenized(pg_server: Any, pii_demo: Demo) -> None:
    sql = "insert into customers (full_name, email) values ('Zed Zedson', 'zed@example.com')"
    res = apply_plan(pii_demo.room.plan(sql), await _run(pg_server, sql))
    (err,) = res.errors
    assert err["C"] == "23502"
    assert "zed@example.com" not in err["D"] and "Zed Zedson" not in err["D"]
    assert err["D"].startswith("Failing row contains (tok_pii_")


async def test_clean_table_errors_stay_readable(pg_server: Any, pii_demo: Demo) -> None:
    sql = "insert into tags values (1, 'dup')"
    res = apply_plan(pii_demo.room.plan(sql), await _run(pg_server, sql))
    (err,) = res.errors
    assert err["D"] == "Key (id)=(1) already exists."


async def test_raise_notice_and_exception_values_are_detected(
    pg_server: Any, pii_demo: Demo
) -> None:
    sql = (
        "do $$ begin raise notice 'contact % / %', (select email from customers where id = 1), "
        "(select ssn from customers where id = 1); end $$"
    )
    res = apply_plan(pii_demo.room.plan(sql), await _run(pg_server, sql))
    notices = [x for x in res.rewritten if x.startswith(b"S")]
    assert any(b"tok_email_" in n and b"tok_ssn_" in n for n in notices)
    assert not leaked(res.output_bytes, pii_demo.values)
    sql = "do $$ begin raise exception 'bad card %', (select card_number from payments where id = 1); end $$"
    res = apply_plan(pii_demo.room.plan(sql), await _run(pg_server, sql))
    (err,) = res.errors
    assert err["C"] == "P0001" and "tok_card_" in err["M"]
    assert not leaked(res.output_bytes, pii_demo.values)


async def test_raise_messages_tokenize_mode(pg_server: Any, pii_demo: Demo) -> None:
    room = make_room(PiiSettings(raise_messages="tokenize"))
    await room.refresh_dsn(pii_demo.dsn)
    sql = (
        "do $$ begin raise notice 'dear %', (select full_name from customers where id = 1); end $$"
    )
    res = apply_plan(room.plan(sql), await _run(pg_server, sql))
    assert not leaked(res.output_bytes, pii_demo.values)


async def test_notification_payload(pg_server: Any, pii_demo: Demo) -> None:
    sql = "listen ch; select pg_notify('ch', email) from customers where id = 1"
    res = apply_plan(pii_demo.room.plan(sql), await _run(pg_server, sql))
    (note,) = res.notifications
    assert b"ch\0tok_pii_" in note
    assert not leaked(res.output_bytes, pii_demo.values)
    room = make_room(
        PiiSettings(notification_payloads="detect", notification_channels={"jobs": "pass"})
    )
    await room.refresh_dsn(pii_demo.dsn)
    sql = "listen ch; listen jobs; select pg_notify('ch', 'mail ' || email), pg_notify('jobs', 'job 42') from customers where id = 1"
    res = apply_plan(room.plan(sql), await _run(pg_server, sql))
    ch, jobs = res.notifications
    assert b"mail tok_email_" in ch and jobs.endswith(b"jobs\0job 42\0")


async def test_free_text_detectors_when_switched_on(pg_server: Any, pii_demo: Demo) -> None:
    sql = "select id, body from notes order by id"
    res = apply_plan(pii_demo.room.plan(sql), await _run(pg_server, sql))
    assert leaked(res.output_bytes, pii_demo.values), (
        "free text is clean by lineage unless detectors run"
    )
    room = make_room(PiiSettings(detect_clean_text=True))
    await room.refresh_dsn(pii_demo.dsn)
    res = apply_plan(room.plan(sql), await _run(pg_server, sql))
    assert not leaked(res.output_bytes, pii_demo.values)
    assert all(row[1].startswith(b"call tok_phone_") for row in res.rows_after)


# ---------------------------------------------------------------------------- tokens in


async def _one_customer(pii_demo: Demo) -> tuple[int, str, str]:
    conn = await asyncpg.connect(pii_demo.dsn)
    try:
        row = await conn.fetchrow("select id, email, address from customers where id = 7")
    finally:
        await conn.close()
    return row["id"], row["email"], row["address"]


async def test_token_in_a_literal_finds_the_row(pg_server: Any, pii_demo: Demo) -> None:
    cid, email, _ = await _one_customer(pii_demo)
    room = pii_demo.room
    token = room.tokenizer.token("email", email.encode())
    session = room.session("agent")
    sql = f"select id, email, lower(email) from customers where email = '{token}'"
    plan = session.plan(sql)
    assert plan.has_tokens
    forwarded = session.detokenize_sql(plan)
    assert token not in forwarded and email in forwarded
    res = apply_plan(plan, await _run(pg_server, forwarded))
    (row,) = res.rows_after
    assert row[0] == str(cid).encode() and row[1] == token.encode()
    assert not leaked(res.output_bytes, pii_demo.values)


async def test_tokens_in_an_array_literal_and_a_selected_literal(
    pg_server: Any, pii_demo: Demo
) -> None:
    _cid, email, address = await _one_customer(pii_demo)
    room = pii_demo.room
    t_email = room.tokenizer.token("email", email.encode())
    t_addr = room.tokenizer.token("address", address.encode())  # has commas and spaces
    session = room.session("agent")
    sql = f"select id, email from customers where address = any('{{{t_addr}}}') or email = '{t_email}'"
    plan = session.plan(sql)
    res = apply_plan(plan, await _run(pg_server, session.detokenize_sql(plan)))
    assert len(res.rows_after) == 1
    assert res.rows_after[0][1] == t_email.encode()  # the row it named, its own token
    assert not leaked(res.output_bytes, pii_demo.values)
    # Selected, the value would only be computed on (or echoed): not resolved.
    echo = session.plan(f"select '{t_email}'::text as echo")
    with pytest.raises(TokenError, match="compared with a PII column"):
        session.detokenize_sql(echo)


async def test_tokens_in_bind_parameters(pg_server: Any, pii_demo: Demo) -> None:
    cid, email, address = await _one_customer(pii_demo)
    room = pii_demo.room
    session = room.session("agent")
    t_email = room.tokenizer.token("email", email.encode())
    t_addr = room.tokenizer.token("address", address.encode())
    sql = "select id, address from customers where email = any($1::text[]) and address = $2"
    plan = session.plan(sql)
    assert plan.params_may_hold_tokens
    params, bound = session.detokenize_params(
        plan, (f"{{{t_email},nobody}}".encode(), t_addr.encode()), (0, 0), (1009, 25)
    )
    assert email.encode() in params[0] and params[1] == address.encode()
    selected = session.plan("select id, $2::text from customers where email = any($1::text[])")
    with pytest.raises(TokenError, match=r"parameter \$2 .*compared with a PII column"):
        session.detokenize_params(
            selected, (f"{{{t_email}}}".encode(), t_addr.encode()), (0, 0), (1009, 25)
        )
    client = await connect(pg_server, DBNAME)
    try:
        messages = await run_extended(client, sql, result_format=0, params=params)
    finally:
        await client.close()
    res = apply_plan(bound, messages)
    (row,) = res.rows_after
    assert row[0] == str(cid).encode() and row[1].startswith(b"tok_")
    assert not leaked(res.output_bytes, pii_demo.values)


@pytest.mark.parametrize(
    "template",
    [
        "insert into tags values (99, '{tok}')",
        "update orders set status = '{tok}' where id = 1",
        "select set_config('my.v', '{tok}', false)",
        "explain select * from customers where email = '{tok}'",
        "create view leak as select '{tok}' as x",
        "select 1 where get_email(length('{tok}')) is null",
        "insert into notes select 100, x from (select '{tok}' as x) s",
        "prepare p as select '{tok}'",
    ],
)
async def test_tokens_refused_where_the_value_would_be_kept(pii_demo: Demo, template: str) -> None:
    _cid, email, _ = await _one_customer(pii_demo)
    token = pii_demo.room.tokenizer.token("email", email.encode())
    session = pii_demo.room.session("agent")
    plan = session.plan(template.format(tok=token))
    with pytest.raises(TokenError) as e:
        session.detokenize_sql(plan)
    assert e.value.sqlstate == "22023"


async def test_tokens_written_into_pii_columns_resolve(pii_demo: Demo) -> None:
    _cid, email, _ = await _one_customer(pii_demo)
    token = pii_demo.room.tokenizer.token("email", email.encode())
    session = pii_demo.room.session("agent")
    plan = session.plan(f"update customers set email = '{token}' where id = 7")
    assert email in session.detokenize_sql(plan)


async def test_unknown_and_altered_tokens_are_22023(pii_demo: Demo) -> None:
    session = pii_demo.room.session("agent")
    forged = "tok_email_r" + "ab" * 40
    plan = session.plan(f"select id from customers where email = '{forged}'")
    with pytest.raises(TokenError, match="does not resolve"):
        session.detokenize_sql(plan)
    other_room = make_room(mode="hashed")
    stranger = other_room.tokenizer.token("email", b"x@example.com")
    plan = session.plan(f"select id from customers where email = '{stranger}'")
    with pytest.raises(TokenError):
        session.detokenize_sql(plan)


async def test_exempt_identity_sees_raw_values(pg_server: Any, pii_demo: Demo) -> None:
    room = make_room(PiiSettings(exempt_groups=frozenset({"analysts"})))
    await room.refresh_dsn(pii_demo.dsn)
    session = room.session("ann", groups=("analysts",))
    assert session.exemption is not None and "analysts" in session.exemption.reason
    plan = session.plan("select email from customers limit 1")
    assert plan.rows(None, ()) is None
    msgs = await _run(pg_server, "select email from customers order by id limit 1")
    desc = next(x for x in msgs if isinstance(x, m.RowDescription))
    assert plan.rows(desc.encode()[5:], (0,)) is None
    assert room.session("bob").exemption is None


async def test_cursors_and_row_limited_portals(pg_server: Any, pii_demo: Demo) -> None:
    sql = (
        "begin; declare c cursor for select id, lower(email) from customers order by id; "
        "fetch 2 from c; fetch 3 from c; commit"
    )
    session = pii_demo.room.session("agent")
    res = apply_plan(session.plan(sql), await _run(pg_server, sql))
    assert [len(rows) for rows, _ in res.sets] == [2, 3]
    assert all(
        r[1].startswith(b"tok_email_") and r[0].isdigit() for _, after in res.sets for r in after
    )
    later = session.plan("fetch 1 from c")  # a later statement of the same session
    assert not later.unknown_reasons
    sql = "select id, email from customers order by id"
    client = await connect(pg_server, DBNAME)
    try:
        messages = await run_extended(client, sql, result_format=0, max_rows=2)
    finally:
        await client.close()
    assert any(isinstance(x, m.PortalSuspended) for x in messages)
    res = apply_plan(pii_demo.room.plan(sql), messages)
    assert len(res.rows_after) == 2 and all(r[1].startswith(b"tok_email_") for r in res.rows_after)


async def test_unknown_hold_is_about_outputs(pii_demo: Demo) -> None:
    room = make_room(PiiSettings(unknown="hold"))
    await room.refresh_dsn(pii_demo.dsn)
    assert room.plan("select get_email(1)").hold
    assert not room.plan("select id from customers where get_email(id) is null").hold
    assert not room.plan("select id, email from customers").hold
