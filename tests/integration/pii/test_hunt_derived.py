"""Copies of PII the schema itself stores, under a column no rule marks, on the real
server (demo dataset): what an agent reads from them comes back tokenized.

* generated columns added to ``customers`` (a lower-cased address, a name's first
  letters, a full-text vector of name and address), and ones whose expression reads
  a column PII only through a foreign key, a partition's comment, a composite type,
  a child's own generation expression, or calls a function of the database's own;
* materialized views over PII (through another materialized view, or made ``WITH NO
  DATA`` and refreshed since): their definition's lineage, as a view's;
* a column filled by the built-in full-text trigger (``tsvector_update_trigger``),
  whose arguments name the columns it is made of;
* a ``tsvector`` column of a table whose triggers are the database's own (their
  code is not read: taken to hold what the row's PII columns hold);
* a column whose DEFAULT (or whose domain's) calls a function of the database's own
  that reads PII.

Unit-level: tests/unit/pii/test_catalog.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from tests.integration.pii.conftest import Demo
from tests.integration.pii.harness import leaked
from tests.integration.pii.test_hunt_shapes import _agent, _sent


@asynccontextmanager
async def _schema(pii_demo: Demo, ddl: str, undo: str) -> AsyncIterator[asyncpg.Connection]:
    admin = await asyncpg.connect(pii_demo.dsn)
    try:
        await admin.execute(ddl)
        await pii_demo.room.refresh_dsn(pii_demo.dsn)
        yield admin
    finally:
        await admin.execute(undo)
        await admin.close()
        await pii_demo.room.refresh_dsn(pii_demo.dsn)


async def _derived(admin: asyncpg.Connection) -> set[bytes]:
    """Raw values the server derives from the demo's PII: lower- and upper-cased
    addresses, and the quoted lexemes a ``tsvector`` of a name prints."""
    out = set()
    for r in await admin.fetch("select lower(email) e, upper(email) u, full_name from customers"):
        out |= {r["e"].encode(), r["u"].encode()}
        out |= {f"'{w}'".encode() for w in r["full_name"].lower().split() if len(w) > 3}
    return out


async def _tokenized(
    pg_server: Any, pii_demo: Demo, derived: set[bytes], queries: Iterable[tuple[str, set[int]]]
) -> None:
    values = pii_demo.values | derived
    for sql, replaced in queries:
        res = await _agent(pg_server, pii_demo, sql)
        assert leaked(_sent(res), values), sql  # the server sent them raw
        assert not leaked(res.output_bytes, values), sql
        assert set().union(*res.replaced) == replaced, sql


async def test_generated_columns_added_to_customers(pg_server: Any, pii_demo: Demo) -> None:
    async with _schema(
        pii_demo,
        "alter table customers"
        " add column email_key text generated always as (lower(email)) stored,"
        " add column initials text generated always as (left(full_name, 3)) stored,"
        " add column fts tsvector generated always as"
        "  (to_tsvector('simple', full_name || ' ' || email)) stored",
        "alter table customers drop column if exists email_key,"
        " drop column if exists initials, drop column if exists fts",
    ) as admin:
        await _tokenized(
            pg_server,
            pii_demo,
            await _derived(admin),
            (
                ("select id, email_key from customers order by id limit 5", {1}),
                ("select id, fts::text, fts from customers order by id limit 5", {1, 2}),
            ),
        )
        # three letters of a name are no value of the demo's: only the token shows
        res = await _agent(pg_server, pii_demo, "select id, initials from customers limit 5")
        assert res.replaced == [{1}]


async def test_generated_columns_over_columns_pii_by_a_link(pg_server: Any, pii_demo: Demo) -> None:
    async with _schema(
        pii_demo,
        "create table hunt_gp (id int, secret text, g text generated always as ('x') stored);"
        # an inheritance child's own expression: the parent's column reads its rows
        " create table hunt_gc (g text generated always as (lower(email)) stored, email text)"
        "  inherits (hunt_gp);"
        " insert into hunt_gc (id, email) select id, email from customers where id <= 3;"
        " create table hunt_gfk (id int, buyer text references customers(email),"
        "  bk text generated always as (upper(buyer)) stored);"
        " insert into hunt_gfk (id, buyer) select id, email from customers where id <= 3;"
        " create table hunt_gpp (id int, k int, note text,"
        "  g text generated always as (lower(note)) stored) partition by list (k);"
        " create table hunt_gpa partition of hunt_gpp for values in (1);"
        " create table hunt_gpb partition of hunt_gpp for values in (2);"
        " comment on column hunt_gpa.note is 'pii:email';"
        " insert into hunt_gpp (id, k, note)"
        "  select id, 1 + id % 2, email from customers where id <= 4;"
        " create function hunt_norm(text) returns text immutable language sql"
        "  as $$ select lower($1) $$;"
        " create table hunt_gfn (id int, email text,"
        "  n text generated always as (hunt_norm(email)) stored);"
        " insert into hunt_gfn (id, email) select id, email from customers where id <= 3;"
        " create type hunt_gct as (full_name text, email text);"
        " create table hunt_gcomp (id int, c hunt_gct,"
        "  g text generated always as (lower((c).email)) stored);"
        " insert into hunt_gcomp (id, c)"
        "  select id, row(full_name, email)::hunt_gct from customers where id <= 3",
        "drop table if exists hunt_gc, hunt_gp, hunt_gfk, hunt_gpp, hunt_gfn, hunt_gcomp;"
        " drop function if exists hunt_norm(text); drop type if exists hunt_gct",
    ) as admin:
        await _tokenized(
            pg_server,
            pii_demo,
            await _derived(admin),
            (
                ("select g from hunt_gp", {0}),
                ("select g from hunt_gc", {0}),
                ("select bk from hunt_gfk", {0}),
                ("select g from hunt_gpp", {0}),
                ("select g from hunt_gpb", {0}),
                ("select n from hunt_gfn", {0}),
                ("select g from hunt_gcomp", {0}),
            ),
        )


async def test_materialized_views_over_pii(pg_server: Any, pii_demo: Demo) -> None:
    async with _schema(
        pii_demo,
        "create materialized view hunt_mv as select id, lower(email) as e,"
        " to_tsvector('simple', full_name) as w from customers;"
        " create materialized view hunt_mv2 as select id, e as k from hunt_mv;"
        " create materialized view hunt_mv3 as select id, lower(email) as e from customers"
        "  with no data;"
        " refresh materialized view hunt_mv3",
        "drop materialized view if exists hunt_mv2, hunt_mv, hunt_mv3",
    ) as admin:
        await _tokenized(
            pg_server,
            pii_demo,
            await _derived(admin),
            (
                ("select e from hunt_mv order by id limit 5", {0}),
                ("select w::text from hunt_mv order by id limit 5", {0}),
                ("select k from hunt_mv2 order by id limit 5", {0}),
                ("select * from hunt_mv3 order by id limit 5", {1}),
            ),
        )


async def test_a_column_a_full_text_trigger_fills(pg_server: Any, pii_demo: Demo) -> None:
    """``tsvector_update_trigger(tsv, config, body)`` stores the words of ``body`` in
    ``tsv`` (and ``tsvector_update_trigger_column`` those of ``full_name`` in
    ``tsv2``): the trigger's arguments say so."""
    async with _schema(
        pii_demo,
        "create table hunt_doc (id int, full_name text, body text, lang regconfig,"
        "  tsv tsvector, tsv2 tsvector, shown text generated always as (tsv::text) stored);"
        " create trigger hunt_tsv before insert or update on hunt_doc for each row"
        "  execute function tsvector_update_trigger(tsv, 'pg_catalog.simple', body);"
        " create trigger hunt_tsv2 before insert or update on hunt_doc for each row"
        "  execute function tsvector_update_trigger_column(tsv2, lang, full_name);"
        " comment on column hunt_doc.body is 'pii:email';"
        " insert into hunt_doc (id, full_name, body, lang)"
        "  select id, full_name, email, 'simple' from customers where id <= 3",
        "drop table if exists hunt_doc",
    ) as admin:
        await _tokenized(
            pg_server,
            pii_demo,
            await _derived(admin),
            (("select tsv::text, tsv2::text, shown from hunt_doc", {0, 1, 2}),),
        )
        res = await _agent(pg_server, pii_demo, "select lang from hunt_doc")
        assert [r[0] for r in res.rows_after] == [b"simple"] * 3  # the clean column


async def test_a_default_that_calls_a_function_of_the_database(
    pg_server: Any, pii_demo: Demo
) -> None:
    """``note text DEFAULT pick()``, where ``pick()`` reads an address: each row the
    default fills stores one; dbgate does not read the function, so it is unknown."""
    async with _schema(
        pii_demo,
        "create function hunt_pick() returns text volatile language sql"
        " as $$ select email from customers order by random() limit 1 $$;"
        " create table hunt_def (id int, note text default hunt_pick(),"
        "  made timestamptz default now());"
        " insert into hunt_def (id) select generate_series(1, 3)",
        "drop table if exists hunt_def; drop function if exists hunt_pick()",
    ):
        await _tokenized(pg_server, pii_demo, set(), (("select note, made from hunt_def", {0}),))


async def test_a_domain_default_that_calls_a_function_of_the_database(
    pg_server: Any, pii_demo: Demo
) -> None:
    """``CREATE DOMAIN d AS text DEFAULT pick()``: a column of ``d`` (or of a domain
    over it) that has no default of its own stores what ``pick()`` read."""
    async with _schema(
        pii_demo,
        "create function hunt_pick2() returns text volatile language sql"
        " as $$ select email from customers order by random() limit 1 $$;"
        " create domain hunt_dom as text default hunt_pick2();"
        " create domain hunt_dom2 as hunt_dom;"
        " create table hunt_ddef (id int, note hunt_dom, n2 hunt_dom2,"
        "  own hunt_dom default 'x');"
        " insert into hunt_ddef (id) select generate_series(1, 3)",
        "drop table if exists hunt_ddef; drop domain if exists hunt_dom2;"
        " drop domain if exists hunt_dom; drop function if exists hunt_pick2()",
    ):
        await _tokenized(
            pg_server, pii_demo, set(), (("select note, n2, own from hunt_ddef", {0, 1}),)
        )


async def test_a_vector_a_trigger_of_the_database_fills(pg_server: Any, pii_demo: Demo) -> None:
    """A PL/pgSQL trigger sets ``NEW.search := to_tsvector(NEW.full_name)``: its code
    is not read, but a ``tsvector`` column of a table whose triggers are the database's
    own is taken to hold what the row's PII columns hold. A table with no PII column
    keeps its vector readable."""
    async with _schema(
        pii_demo,
        "create function hunt_fill() returns trigger language plpgsql as $$ begin"
        "  new.search := to_tsvector('simple', new.full_name); return new; end $$;"
        " create table hunt_tdoc (id int, full_name text, search tsvector);"
        " create trigger hunt_fill before insert on hunt_tdoc for each row"
        "  execute function hunt_fill();"
        " insert into hunt_tdoc (id, full_name) select id, full_name from customers where id <= 3;"
        " create function hunt_fill2() returns trigger language plpgsql as $$ begin"
        "  new.search := to_tsvector('simple', new.body); return new; end $$;"
        " create table hunt_tnote (id int, body text, search tsvector);"
        " create trigger hunt_fill2 before insert on hunt_tnote for each row"
        "  execute function hunt_fill2();"
        " insert into hunt_tnote (id, body) values (1, 'hi')",
        "drop table if exists hunt_tdoc, hunt_tnote;"
        " drop function if exists hunt_fill(), hunt_fill2()",
    ) as admin:
        await _tokenized(
            pg_server,
            pii_demo,
            await _derived(admin),
            (("select id, search::text from hunt_tdoc", {1}),),
        )
        res = await _agent(pg_server, pii_demo, "select search::text from hunt_tnote")
        assert [r[0] for r in res.rows_after] == [b"'hi':1"]


async def test_a_default_of_postgresqls_own_that_reads_data(pg_server: Any, pii_demo: Demo) -> None:
    """``q text DEFAULT current_query()`` keeps the text of the statement that wrote
    the row, with its literals (an address), as ``DEFAULT query_to_xml('select email
    …')`` would what its query read. Lineage reads a default of PostgreSQL's own functions as it
    reads a generated column's expression; ``now()`` and ``gen_random_uuid()`` stay
    readable."""
    async with _schema(
        pii_demo,
        "create table hunt_audit (id int, q text default current_query(),"
        "  made timestamptz default now(), u uuid default gen_random_uuid(),"
        "  k int generated always as identity)",
        "drop table if exists hunt_audit",
    ) as admin:
        email = await admin.fetchval("select email from customers where id = 1")
        await admin.execute(f"insert into hunt_audit (id) select 1 where '{email}' <> ''")
        await _tokenized(
            pg_server, pii_demo, set(), (("select q, made, u, k from hunt_audit", {0}),)
        )


async def test_partitions_and_children_carry_what_fills_them(
    pg_server: Any, pii_demo: Demo
) -> None:
    """A full-text trigger on a partitioned table (cloned to each partition), a coded
    default set on an inheritance child only (the parent reads its rows), and a
    partition's own generation expression over an address."""
    async with _schema(
        pii_demo,
        "create table hunt_pd (id int, k int, body text, tsv tsvector) partition by list (k);"
        " create table hunt_pd1 partition of hunt_pd for values in (1);"
        " create trigger hunt_t before insert on hunt_pd for each row"
        "  execute function tsvector_update_trigger(tsv, 'pg_catalog.simple', body);"
        " comment on column hunt_pd.body is 'pii:email';"
        " insert into hunt_pd (id, k, body) select id, 1, email from customers where id <= 3;"
        " create function hunt_pk() returns text language sql"
        "  as $$ select email from customers limit 1 $$;"
        " create table hunt_par (id int, note text);"
        " create table hunt_kid () inherits (hunt_par);"
        " alter table hunt_kid alter column note set default hunt_pk();"
        " insert into hunt_kid (id) values (1);"
        " create table hunt_gpp2 (id int, k int, email text,"
        "  g text generated always as (id::text) stored) partition by list (k);"
        " create table hunt_gpp2a partition of hunt_gpp2"
        "  (g generated always as (lower(email)) stored) for values in (1);"
        " insert into hunt_gpp2 (id, k, email) select id, 1, email from customers where id <= 3",
        "drop table if exists hunt_pd, hunt_kid, hunt_par, hunt_gpp2;"
        " drop function if exists hunt_pk()",
    ) as admin:
        await _tokenized(
            pg_server,
            pii_demo,
            await _derived(admin),
            (
                ("select tsv::text from hunt_pd", {0}),
                ("select tsv::text from hunt_pd1", {0}),
                ("select note from hunt_par", {0}),
                ("select g from hunt_gpp2", {0}),
            ),
        )
