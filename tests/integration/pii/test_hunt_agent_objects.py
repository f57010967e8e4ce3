"""Objects an agent creates, or an approver lets it create as ordinary DDL, that would
hide a PII value under a clean name (demo dataset, real server): each test runs the
agent's statements as the relay would — planned, held ones not sent, tokens resolved,
results through the room — on one session, and checks every byte the agent gets back.
Objects the test makes as the server's own user stand for DDL an approver let through.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from dbgate.pii.tokens import TokenError
from tests.integration.pii.conftest import DBNAME, Demo
from tests.integration.pii.harness import apply_plan, connect, leaked, run_simple


async def _admin(pii_demo: Demo, sql: str) -> None:
    conn = await asyncpg.connect(pii_demo.dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()
    await pii_demo.room.refresh_dsn(pii_demo.dsn)


async def _email(pii_demo: Demo, cid: int) -> tuple[str, str]:
    conn = await asyncpg.connect(pii_demo.dsn)
    try:
        email = await conn.fetchval("select email from customers where id = $1", cid)
    finally:
        await conn.close()
    return email, pii_demo.room.tokenizer.token("email", email.encode())


async def _session(
    pg_server: Any, pii_demo: Demo, statements: list[str], approved: bool = False
) -> tuple[bytes, list[str]]:
    """Run ``statements`` as the agent on one connection (the room's snapshot read
    again after each, as after DDL): all the agent received, and the reasons of the
    statements held (not sent, unless ``approved``) or refused (not sent)."""
    session = pii_demo.room.session("agent")
    client = await connect(pg_server, DBNAME)
    received = b""
    stopped: list[str] = []
    try:
        for sql in statements:
            plan = session.plan(sql)
            if plan.hold_reasons:
                stopped.append("; ".join(plan.hold_reasons))
                if not approved:
                    continue
            try:
                forwarded = session.detokenize_sql(plan)
            except TokenError as e:
                stopped.append(str(e))
                continue
            res = apply_plan(plan, await run_simple(client, forwarded))
            received += res.output_bytes
            await pii_demo.room.refresh_dsn(pii_demo.dsn)
    finally:
        await client.close()
    return received, stopped


async def test_a_copy_into_a_view_column_named_as_pii_over_a_clean_one_is_held(
    pg_server: Any, pii_demo: Demo
) -> None:
    """``email`` of ``memo_view`` is PII by its name (it is read back tokenized), but
    a value written into it is stored in ``memos.body``, which nothing marks: a read
    of ``memos`` returned the copied e-mails raw, and a token written there was
    resolved into the plain column."""
    await _admin(
        pii_demo,
        "create table memos (id int primary key, body text);"
        " create view memo_view as select id, body as email from memos",
    )
    email, token = await _email(pii_demo, 1)
    try:
        received, stopped = await _session(
            pg_server,
            pii_demo,
            [
                "insert into memo_view (id, email) select id, email from customers where id < 4",
                f"insert into memo_view values (10, '{token}')",
                "update memo_view set email = c.email from customers c"
                " where c.id = 5 and memo_view.id = 1",
                "insert into memos values (20, 'plain')",
                "select id, body from memos order by id",
            ],
        )
    finally:
        await _admin(pii_demo, "drop table memos cascade")
    assert email.encode() not in received
    assert not leaked(received, pii_demo.values)
    assert len(stopped) == 3 and all("memos.body" in s for s in stopped), stopped
    assert b"plain" in received  # the clean read itself runs, its values as they are


async def test_a_copy_into_a_view_of_a_pii_column_still_runs(
    pg_server: Any, pii_demo: Demo
) -> None:
    """A view that passes a PII column on stores into that column: copies and tokens
    written through it are not held, and read back tokenized."""
    await _admin(
        pii_demo,
        "create table contacts2 (id int primary key, email text, note text);"
        " create view contacts2_v as select id, email, note from contacts2 where id > 0;"
        " create view contacts2_vv as select * from contacts2_v",
    )
    email, token = await _email(pii_demo, 2)
    try:
        received, stopped = await _session(
            pg_server,
            pii_demo,
            [
                "insert into contacts2_v (id, email, note) select id, email, 'n'"
                " from customers where id < 3",
                f"insert into contacts2_vv values (10, '{token}', 'x')",
                "select id, email, note from contacts2 order by id",
            ],
        )
    finally:
        await _admin(pii_demo, "drop table contacts2 cascade")
    assert stopped == []
    assert email.encode() not in received and not leaked(received, pii_demo.values)
    assert received.count(b"tok_email_") == 3


MARKED = """
create domain email_address as text;
create table marked (id int primary key, contact text, holder email_address, mobile text, memo text);
comment on column marked.contact is 'pii:email';
insert into marked select id, email, email, phone, 'plain' from customers where id < 4;
"""

#: DDL an approver would take for housekeeping, each of which takes the mark off a
#: column that holds PII: its ``pii:`` comment, its name, the PII name of its domain
UNMARKING = [
    "comment on column marked.contact is ''",
    "comment on column marked.contact is null",
    "comment on column marked.contact is 'contact of the account'",
    "alter table marked rename column mobile to line2",
    "alter table marked alter column holder type text",
    "alter domain email_address rename to addr_t",
    "alter table marked rename to marked2",
]


async def test_ddl_that_takes_a_columns_pii_mark_away_leaves_its_values_tokenized(
    pg_server: Any, pii_demo: Demo
) -> None:
    """A comment can only add PII, but replacing the comment took it away: a later
    read of the column returned every e-mail raw. A column the room found PII stays
    PII through a new comment, a rename, a change of type (approved here); a new
    column does not. Such DDL is held, saying so: after a restart the room would
    judge the column by what the schema says then."""
    for ddl in UNMARKING:
        await _admin(pii_demo, MARKED)
        try:
            held = pii_demo.room.session("agent").plan(ddl).hold_reasons
        finally:
            await _admin(
                pii_demo,
                "drop table if exists marked, marked2; drop domain if exists email_address, addr_t",
            )
        # renaming the table too: a catalog entry names it (``public.marked.contact``)
        assert held, (ddl, held)
    for ddl in UNMARKING:
        await _admin(pii_demo, MARKED)
        try:
            received, _stopped = await _session(
                pg_server,
                pii_demo,
                [
                    "select contact, holder, mobile from marked order by id",
                    ddl,
                    "select * from marked2" if "marked2" in ddl else "select * from marked",
                ],
                approved=True,
            )
        finally:
            await _admin(
                pii_demo,
                "drop table if exists marked, marked2; drop domain if exists email_address, addr_t",
            )
        assert not leaked(received, pii_demo.values), ddl
        assert b"plain" in received, ddl


async def test_a_column_added_after_a_pii_one_was_dropped_is_clean(
    pg_server: Any, pii_demo: Demo
) -> None:
    await _admin(pii_demo, MARKED)
    try:
        received, _stopped = await _session(
            pg_server,
            pii_demo,
            [
                "select contact from marked where id = 1",
                "alter table marked drop column contact",
                "alter table marked add column contact text",
                "update marked set contact = 'note ' || id where id = 1",
                "select id, contact, memo from marked where id = 1",
            ],
        )
    finally:
        await _admin(pii_demo, "drop table marked; drop domain email_address")
    assert b"note 1" in received and b"plain" in received


async def test_a_rule_whose_actions_copy_pii_into_a_plain_column_is_held(
    pg_server: Any, pii_demo: Demo
) -> None:
    """``CREATE RULE`` is DDL an approver may take for ordinary; once made, every
    clean insert into its relation ran its action, which copied e-mails into a plain
    column (straight from ``customers``, or from the ``NEW`` row), read back raw."""
    await _admin(
        pii_demo,
        "create table rule_src (id int, email text); create table rule_sink (id int, body text)",
    )
    try:
        received, stopped = await _session(
            pg_server,
            pii_demo,
            [
                "create rule rule_copy as on insert to rule_src do also"
                " insert into rule_sink select id, email from customers where id < 4",
                "create rule rule_new as on insert to rule_src do also"
                " insert into rule_sink values (new.id, new.email)",
                "create rule rule_plain as on insert to rule_src do also"
                " insert into rule_sink values (new.id, 'row ' || new.id)",
                "insert into rule_src select id, email from customers where id = 5",
                "select id, body from rule_sink order by id",
            ],
        )
    finally:
        await _admin(pii_demo, "drop table rule_src, rule_sink")
    assert not leaked(received, pii_demo.values)
    assert len(stopped) == 2 and all("rule_sink.body" in s for s in stopped), stopped
    assert b"row 5" in received  # the rule that writes no PII was made, and ran


async def test_a_sql_function_whose_body_copies_pii_into_a_plain_column_is_held(
    pg_server: Any, pii_demo: Demo
) -> None:
    """A function in SQL spells its writes in its body: once made (held as DDL, then
    its call as opaque code, both of which an approver may take for ordinary), a call
    copied e-mails into a plain column, read back raw."""
    await _admin(
        pii_demo, "drop table if exists fn_sink cascade; create table fn_sink (id int, body text)"
    )
    try:
        received, stopped = await _session(
            pg_server,
            pii_demo,
            [
                "create function fn_copy() returns void language sql as"
                " 'insert into fn_sink select id, email from customers where id < 4'",
                "create function fn_atomic() returns void language sql begin atomic"
                " insert into fn_sink select id, full_name from customers where id < 4; end",
                "create function fn_plain() returns void language sql as"
                " 'insert into fn_sink values (9, ''plain'')'",
                "select fn_copy()",
                "select fn_atomic()",
                "select fn_plain()",
                "select id, body from fn_sink order by id",
            ],
        )
    finally:
        await _admin(
            pii_demo,
            "drop function if exists fn_copy(), fn_atomic(), fn_plain(); drop table fn_sink",
        )
    assert not leaked(received, pii_demo.values)
    assert len(stopped) == 2 and all("fn_sink.body" in s for s in stopped), stopped
    assert b"plain" in received


async def test_a_type_change_using_pii_is_held(pg_server: Any, pii_demo: Demo) -> None:
    """``ALTER COLUMN … TYPE … USING`` rewrites every row, an UPDATE by another name
    that DDL approvals see as a schema change: ``USING email`` on a plain column copied
    the e-mails there, read back raw."""
    await _admin(
        pii_demo,
        "drop table if exists retyped; create table retyped (id int, email text, made text);"
        " insert into retyped select id, email, 'plain' from customers where id < 4",
    )
    try:
        received, stopped = await _session(
            pg_server,
            pii_demo,
            [
                "alter table retyped alter column made type varchar(200) using email",
                "alter table retyped alter column email type text using upper(email)",
                "alter table retyped alter column id type bigint using id::bigint",
                "select id, made from retyped order by id",
            ],
        )
    finally:
        await _admin(pii_demo, "drop table retyped")
    assert not leaked(received, pii_demo.values)
    assert len(stopped) == 2 and "retyped.made" in stopped[0] and "made from PII" in stopped[1]
    assert b"plain" in received


async def test_a_token_in_a_sub_select_of_a_part_that_echoes_or_stores_is_refused(
    pg_server: Any, pii_demo: Demo
) -> None:
    """Parts whose literals the server prints or stores refused a token compared with
    PII at their own level only: in a sub-select, the comparison resolved it. A plain
    EXPLAIN (a read) printed the resolved value in its plan, whole, for any token the
    agent held; a policy's ``USING`` and a SQL function's ``RETURN`` stored it, read
    back from ``pg_policies`` and ``pg_get_functiondef``."""
    email, token = await _email(pii_demo, 1)
    await _admin(pii_demo, "drop table if exists pol_t; create table pol_t (id int)")
    try:
        received, stopped = await _session(
            pg_server,
            pii_demo,
            [
                f"explain select 1 from tags where id in (select id from customers where email = '{token}')",
                f"explain (costs off) select (select id from customers where email = '{token}')",
                f"explain select 1 where exists (select 1 from customers where email = '{token}')",
                f"create policy pol_p on pol_t using (exists (select 1 from customers where email = '{token}'))",
                "select qual from pg_policies where policyname = 'pol_p'",
                "create function pol_f() returns bigint language sql"
                f" return (select id from customers where email = '{token}')",
                "select pg_get_functiondef('pol_f'::regproc)",
                # the same sub-select in a read is resolved, and an EXPLAIN without a
                # token prints its plan as it is
                f"select id from tags where id in (select id from customers where email = '{token}')",
                "explain (costs off) select id from tags where id = 1",
            ],
        )
    finally:
        await _admin(pii_demo, "drop table pol_t; drop function if exists pol_f()")
    assert email.encode() not in received
    assert not leaked(received, pii_demo.values)
    assert len(stopped) == 5, stopped
    assert b"Index Only Scan using tags_pkey" in received or b"Seq Scan on tags" in received


async def test_a_copy_into_a_relation_the_snapshot_does_not_know_is_held(
    pg_server: Any, pii_demo: Demo
) -> None:
    """A relation made by the same text, or earlier in a transaction still open (a
    reload reads the schema on another connection, which cannot see it), was taken
    for one whose columns are PII: copies of e-mails and resolved tokens went into its
    plain column, read back raw once the snapshot knew it."""
    email, token = await _email(pii_demo, 1)
    try:
        received, stopped = await _session(
            pg_server,
            pii_demo,
            [
                "create table new_sink (id int, body text);"
                " insert into new_sink select id, email from customers where id < 4",
                "begin",
                "create table new_sink2 (id int, body text)",
                "insert into new_sink2 (id, body) select id, email from customers where id < 4",
                f"insert into new_sink2 values (10, '{token}')",
                "insert into new_sink2 values (11, 'plain')",
                "commit",
                "select * from new_sink2 order by id",
            ],
        )
    finally:
        await _admin(pii_demo, "drop table if exists new_sink, new_sink2")
    assert email.encode() not in received
    assert not leaked(received, pii_demo.values)
    assert len(stopped) == 3, stopped
    assert all("snapshot" in s for s in stopped[:2]) and "cannot be resolved" in stopped[2]
    assert b"plain" in received


async def test_an_operator_of_the_databases_own_is_read_as_unknown(
    pg_server: Any, pii_demo: Demo
) -> None:
    """An operator was read as its operands' union, as PostgreSQL's own are; one the
    database defines over a SQL function returns what the function reads: ``#@# 3``
    returned customer 3's e-mail raw."""
    await _admin(
        pii_demo,
        "create function public.em_of(x bigint) returns text language sql"
        " as 'select email from customers where id = x';"
        " create operator public.#@# (rightarg = bigint, function = public.em_of)",
    )
    try:
        received, stopped = await _session(
            pg_server,
            pii_demo,
            [
                "select #@# 3::bigint",
                "select id, #@# id from tags order by id",
                "select 1 + 2 as three, 'a' || 'b' as ab",  # PostgreSQL's own: as they are
            ],
        )
    finally:
        await _admin(
            pii_demo, "drop operator public.#@# (none, bigint); drop function public.em_of(bigint)"
        )
    assert stopped == []
    assert not leaked(received, pii_demo.values)
    assert b"tok_unknown_" in received and b"\x00\x00\x00\x013\x00\x00\x00\x02ab" in received


async def test_a_cast_of_the_databases_own_is_read_as_unknown(
    pg_server: Any, pii_demo: Demo
) -> None:
    """A cast was read as its argument, as PostgreSQL's own are; one the database
    defines with a SQL function (``CREATE CAST (mycomp AS text) WITH FUNCTION …``, DDL
    a user may run on a type of its own) returns what the function reads."""
    await _admin(
        pii_demo,
        "create type cast_t as (n bigint);"
        " create function public.cast_t_text(x cast_t) returns text language sql"
        " as 'select email from customers where id = x.n';"
        " create cast (cast_t as text) with function public.cast_t_text(cast_t)",
    )
    try:
        received, stopped = await _session(
            pg_server,
            pii_demo,
            ["select (row(3)::cast_t)::text", "select cast(row(4)::cast_t as text)"],
        )
    finally:
        await _admin(pii_demo, "drop type cast_t cascade")
    assert stopped == []
    assert not leaked(received, pii_demo.values)
    assert received.count(b"tok_unknown_") == 2


async def test_a_function_named_like_a_built_in_is_held(pg_server: Any, pii_demo: Demo) -> None:
    """Made in a transaction still open, ``public.lower(bigint)`` is not in the snapshot
    (a reload on another connection cannot see it): ``lower(2::bigint)`` was read as
    PostgreSQL's own lower of a constant, and returned customer 2's e-mail raw."""
    received, stopped = await _session(
        pg_server,
        pii_demo,
        [
            "begin",
            "create function public.lower(x bigint) returns text language sql"
            " as 'select email from customers where id = x'",
            "create operator public.#@@# (rightarg = bigint, function = public.lower)",
            "select lower(2::bigint)",
            "rollback",
        ],
    )
    assert not leaked(received, pii_demo.values)
    assert len(stopped) == 2 and "lower()" in stopped[0] and "#@@#" in stopped[1], stopped


async def test_dropping_a_generated_columns_expression_is_held_and_keeps_it_pii(
    pg_server: Any, pii_demo: Demo
) -> None:
    """``DROP EXPRESSION`` makes a generated column a plain one and keeps its values:
    ``g``, PII only by its expression over an e-mail, would be clean to the next
    snapshot. Held; approved, the running room still tokenizes it."""
    await _admin(
        pii_demo,
        "drop table if exists gen_t; create table gen_t (id int, mail text,"
        " g text generated always as (lower(mail)) stored);"
        " comment on column gen_t.mail is 'pii:email';"
        " insert into gen_t (id, mail) select id, email from customers where id < 4",
    )
    try:
        received, stopped = await _session(
            pg_server,
            pii_demo,
            [
                "select g from gen_t",
                "alter table gen_t alter column g drop expression",
                "select g from gen_t",
            ],
            approved=True,
        )
    finally:
        await _admin(pii_demo, "drop table gen_t")
    assert len(stopped) == 1 and "gen_t" in stopped[0]
    assert not leaked(received, pii_demo.values)


async def test_a_copy_into_a_column_that_keeps_a_part_of_it_is_held(
    pg_server: Any, pii_demo: Demo
) -> None:
    """A PII column of type ``"char"`` keeps a value's first byte: a copy of e-mails
    written there, or a PII column retyped so, read back as the stored tokens of their
    first characters, the same as those of ``'a'``…``'z'`` the agent stored beside them
    (a codebook: the first character of every e-mail in one statement)."""
    await _admin(
        pii_demo,
        'drop table if exists cut_t, book_t; create table cut_t (id int, email "char");'
        " create table book_t (id int, email text);"
        ' insert into cut_t select g, chr(g)::"char" from generate_series(97, 122) g',
    )
    try:
        received, stopped = await _session(
            pg_server,
            pii_demo,
            [
                "insert into cut_t (id, email) select id, email from customers where id < 4",
                "insert into book_t select id, email from customers where id < 4",
                'alter table book_t alter column email type "char"',
                "select id, email from cut_t order by id",
                "select id, email from book_t order by id",
            ],
        )
    finally:
        await _admin(pii_demo, "drop table cut_t, book_t")
    tokens = received.split(b"tok_email_")[1:]
    assert len({t[:40] for t in tokens}) == len(tokens)  # no e-mail matches a letter
    assert len(tokens) == 26 + 3  # the codebook, and book_t's e-mails whole
    assert len(stopped) == 2 and all("made from PII" in s for s in stopped), stopped


async def test_dropping_the_foreign_key_that_makes_a_column_pii_is_held(
    pg_server: Any, pii_demo: Demo
) -> None:
    """``buyer`` holds e-mails because it references ``customers.email``; dropped, the
    key takes the mark away (after a restart) but not the values."""
    await _admin(
        pii_demo,
        "drop table if exists fk_t; create table fk_t (id int,"
        " buyer text constraint fk_buyer references customers(email));"
        " insert into fk_t select id, email from customers where id < 4",
    )
    try:
        received, stopped = await _session(
            pg_server,
            pii_demo,
            ["alter table fk_t drop constraint fk_buyer", "select id, buyer from fk_t"],
            approved=True,
        )
    finally:
        await _admin(pii_demo, "drop table fk_t")
    assert len(stopped) == 1 and "fk_t" in stopped[0], stopped
    assert not leaked(received, pii_demo.values)


async def test_a_copy_into_a_name_a_temporary_table_takes_over_is_held(
    pg_server: Any, pii_demo: Demo
) -> None:
    """A temporary table comes first on the search_path: ``marked`` then names the
    agent's own table, whose ``contact`` nothing marks, while dbgate judged the write
    by ``public.marked.contact`` (PII by its comment). The copies were read back raw."""
    email, token = await _email(pii_demo, 1)
    await _admin(
        pii_demo,
        "drop table if exists marked; create table marked (id int, contact text);"
        " comment on column marked.contact is 'pii:email'",
    )
    try:
        received, stopped = await _session(
            pg_server,
            pii_demo,
            [
                "create temp table marked (id int, contact text)",
                "insert into marked (id, contact) select id, email from customers where id < 4",
                f"insert into marked values (10, '{token}')",
                "insert into marked values (11, 'plain')",
                "select id, contact from marked order by id",
            ],
        )
    finally:
        await _admin(pii_demo, "drop table marked")
    assert email.encode() not in received
    assert not leaked(received, pii_demo.values)
    assert len(stopped) == 2 and all("pg_temp" in s for s in stopped), stopped
    assert b"plain" in received
