"""Extension types, types of the database's own and the functions and operators that
come with them, through the real gate over the demo dataset: every byte the client
receives is compared with the raw values read straight from the server."""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import psycopg
import pytest

from tests.conftest import _admin_execute
from tests.integration.clients.conftest import DemoRole, agent_config
from tests.integration.conftest import RunningProxy
from tests.integration.pii.conftest import Demo

EXTENSIONS = (
    "hstore",
    "citext",
    "ltree",
    "pg_trgm",
    "intarray",
    "cube",
    "earthdistance",
    "vector",
    "tablefunc",
)

#: Objects of the database's own over the extensions' types, as an application makes
#: them: PII by name (``contact_email``, ``*_address``, ``latitude``) or by comment.
SETUP = [
    *(f"create extension if not exists {e}" for e in EXTENSIONS),
    "create type mood as enum ('calm', 'tense')",
    "create type float_band as range (subtype = float8)",
    "create domain email_ci as citext",
    "create domain attrs_d as hstore",
    "create domain mood_d as mood",
    "create table ext_people (id int primary key, contact_email citext, backup email_ci,"
    " attrs hstore, extra attrs_d, home_address ltree, latitude float8, longitude float8,"
    " spot cube, band float_band, feeling mood, feeling_d mood_d, face vector(3))",
    "comment on column ext_people.attrs is 'pii:pii'",
    "comment on column ext_people.extra is 'pii:pii'",
    "comment on column ext_people.spot is 'pii:geo'",
    "comment on column ext_people.band is 'pii:pii'",
    "comment on column ext_people.feeling is 'pii:pii'",
    "comment on column ext_people.feeling_d is 'pii:pii'",
    "comment on column ext_people.face is 'pii:name'",
    "insert into ext_people select id, email, upper(email),"
    " hstore(array['email', 'phone'], array[email, phone]),"
    " hstore('ssn', ssn), text2ltree(regexp_replace(full_name, '[^A-Za-z]+', '_', 'g')),"
    " 40 + id / 1000.0, -70 - id / 1000.0, cube(array[40 + id / 1000.0, -70 - id / 1000.0]),"
    " float_band(id, id + 0.5), case when id % 2 = 0 then 'calm' else 'tense' end::mood,"
    " case when id % 2 = 0 then 'tense' else 'calm' end::mood,"
    " array[ascii(full_name), length(full_name), id::int]::vector"
    " from customers where id <= 20",
]

#: An operator trusting the extensions' functions (docs/rules.md: an allow rule for
#: category opaque naming them): what they return is then tokenized, as approved.
TRUST = """version: 1
rules:
  - name: trust-contrib
    match:
      categories: [opaque]
      functions: [hstore, each, akeys, avals, skeys, svals, hstore_to_json, hstore_to_jsonb,
                  hstore_to_array, hstore_to_matrix, populate_record, slice, exist, defined,
                  similarity, word_similarity, show_trgm, text2ltree, ltree2text, subpath,
                  subltree, nlevel, lca, cube, cube_dim, cube_ll_coord, cube_ur_coord,
                  ll_to_earth, earth_distance, earth_box, latitude, longitude, sort, icount,
                  uniq, idx, intset, float_band, float_band_multirange, set_limit, show_limit, crosstab, connectby, normal_rand]
    action: allow
"""


#: A database of its own: installed extensions overload built-in names (citext's
#: ``max``, pgvector's ``sum``), which a gate that read the schema meanwhile would take
#: for the database's own functions until it read it again.
EXT_DB = "pii_extension_types"


@pytest.fixture(scope="module")
def ext_db(pg_server: Any, demo_role: DemoRole) -> Iterator[str]:
    """The demo dataset in :data:`EXT_DB`, with the extensions and the objects over
    their types (``SETUP``) made as the server's own user."""
    from tests.integration.clients.conftest import run_async
    from tests.integration.pii.harness import load_demo

    drop = f'DROP DATABASE IF EXISTS "{EXT_DB}" WITH (FORCE)'
    _admin_execute(pg_server, drop)
    run_async(load_demo(pg_server.dsn("postgres"), EXT_DB))
    try:
        _admin_execute(
            pg_server,
            *SETUP,
            f'GRANT CONNECT ON DATABASE "{EXT_DB}" TO {demo_role.name}',
            f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {demo_role.name}",
            dbname=EXT_DB,
        )
        yield EXT_DB
    finally:
        _admin_execute(pg_server, drop)


@pytest.fixture(scope="module")
def hunt_proxy(
    pg_server: Any, demo_role: DemoRole, ext_db: str, tmp_path_factory: Any
) -> Iterator[RunningProxy]:
    from dbgate.app import build_gate
    from dbgate.gate.pii import PiiGate

    rules = tmp_path_factory.mktemp("rules")
    shutil.copy(Path(__file__).parents[3] / "rules" / "default.yaml", rules / "default.yaml")
    (rules / "00-contrib.yaml").write_text(TRUST)
    key = base64.b64encode(os.urandom(32)).decode()
    config = agent_config(
        pg_server, demo_role, pii={"keys": [{"id": "test", "secret": key}]}, rules_dir=rules
    )
    pii = PiiGate(config)
    pii.check()
    running = RunningProxy(
        config,
        inspector=build_gate(config, None, pii),
        observer=pii.held_cursors,
        message_filter=pii.filter,
    ).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def dsn(hunt_proxy: RunningProxy, ext_db: str) -> str:
    """Where the agent connects: :data:`EXT_DB` through :func:`hunt_proxy`."""
    return hunt_proxy.dsn(ext_db)


@pytest.fixture(scope="module")
def raw(pg_server: Any, ext_db: str) -> set[bytes]:
    """Every PII value of the demo's customers and of ``ext_people``, as text."""
    with psycopg.connect(pg_server.dsn(ext_db)) as direct:
        rows = direct.execute(
            "select full_name, email, phone, ssn, address from customers"
        ).fetchall()
        rows += direct.execute(
            "select contact_email::text, backup::text, attrs::text, extra::text,"
            " home_address::text, latitude::text, longitude::text, spot::text, band::text,"
            " face::text"
            " from ext_people where id < 10"
        ).fetchall()
    return {str(v).encode() for row in rows for v in row if v}


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


#: Whole rows and values of PII through the extensions' functions and operators, and
#: stored PII of their types, a domain over one, an enum and a range of the database's
#: own: none may reach a driver raw.
THROUGH_FUNCTIONS = [
    "select hstore(c) from customers c where id < 4",
    "select key, value from customers c, each(hstore(c)) where c.id < 3",
    "select (each(hstore(c))).* from customers c where id < 3",
    "select akeys(hstore(c)), avals(hstore(c)), skeys(hstore(c)) from customers c where id < 3",
    "select hstore_to_json(hstore(c)), hstore_to_jsonb(hstore(c)) from customers c where id < 3",
    "select hstore_to_array(hstore(c)), hstore_to_matrix(hstore(c)) from customers c where id < 3",
    "select populate_record(null::customers, hstore(c)) from customers c where id < 3",
    "select (populate_record(null::customers, hstore(c))).* from customers c where id < 3",
    "select p.* from customers c, populate_record(null::customers, hstore(c)) p where c.id < 3",
    "select * from jsonb_to_record((select to_jsonb(c) from customers c where id = 1))"
    " as x(email text, phone text)",
    "select similarity(email, 'a'), show_trgm(email), word_similarity('x', email)"
    " from customers where id < 3",
    "select email % 'abc', email <-> 'abc' from customers where id < 3",
    "select text2ltree(regexp_replace(full_name, '[^A-Za-z]+', '_', 'g')) from customers"
    " where id < 3",
    "select home_address, subpath(home_address, 0, 1), nlevel(home_address) from ext_people"
    " where id < 10",
    "select contact_email, backup, upper(contact_email), contact_email::text from ext_people"
    " where id < 10",
    "select attrs, extra, attrs -> 'email', attrs ? 'email', akeys(attrs) from ext_people"
    " where id < 10",
    "select (each(attrs)).* from ext_people where id < 10",
    "select spot, cube_ll_coord(spot, 1), cube_dim(spot) from ext_people where id < 10",
    "select earth_distance(ll_to_earth(latitude, longitude), ll_to_earth(0, 0)),"
    " ll_to_earth(latitude, longitude) from ext_people where id < 10",
    "select sort(array[ascii(email), id::int]), icount(array[ascii(email)]),"
    " array[ascii(email)] & array[100, 101] from customers where id < 3",
    "select band, feeling, band * float_band(0, 100), feeling::text from ext_people where id < 10",
    "select array[band], array[feeling], array[attrs], array[contact_email] from ext_people"
    " where id < 10",
    "select e from ext_people e where id < 10",
]


def _received(dsn: str, sql: str) -> bytes:
    """Every byte of every value psycopg (text and binary) and asyncpg got for ``sql``,
    and what they made of it (or the error)."""
    import asyncio

    out = b""
    for binary in (False, True):
        with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor(binary=binary) as cur:
            try:
                cur.execute(sql)  # type: ignore[arg-type]
            except psycopg.Error as e:
                out += str(e).encode()
                continue
            res = cur.pgresult
            assert res is not None
            out += b"|".join(
                res.get_value(i, j) or b"" for i in range(res.ntuples) for j in range(res.nfields)
            )
            out += repr(cur.fetchall()).encode()

    async def by_asyncpg() -> bytes:
        conn = await asyncpg.connect(dsn, ssl=False)
        try:
            return repr(await conn.fetch(sql)).encode()
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            return str(e).encode()
        finally:
            await conn.close()

    return out + asyncio.run(by_asyncpg())


@pytest.mark.parametrize("sql", THROUGH_FUNCTIONS)
def test_pii_through_extension_functions_reaches_no_driver_raw(
    dsn: str, raw: set[bytes], sql: str
) -> None:
    got = _received(dsn, sql)
    assert b"dbgate:" not in got and b"Error" not in got, got[:300]  # run, and decoded
    hits = sorted(v for v in raw if v in got)
    assert not hits, hits[:3]


def test_a_set_an_extension_function_returns_is_sized_by_pii(dsn: str, pg_server: Any) -> None:
    """A function of the database's own (an extension's, a user's) that returns a set,
    called in a select list, returns as many rows as its arguments and what it reads
    decide, as ``generate_series(1, ascii(…))`` does — but only the built-ins were
    counted so: ``count(*)`` over ``SELECT skeys(hstore(array[substr(email, 1, 1),
    'a'], …))`` was 1 exactly where the e-mail began with an ``a`` (``hstore`` keeps a
    key once), and a list of candidate characters halved per statement."""
    email = _direct(pg_server, dsn, "select email from customers where id = 1")
    sql = (
        "select count(*) from (select skeys(hstore(array[substr(c.email, 1, 1), '{c}'],"
        " array['1', '1'])) from customers c where c.id = 1) s"
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        counts = {conn.execute(sql.format(c=c)).fetchone()[0] for c in (email[0], "#")}
        distinct = conn.execute(
            "select count(*) from (select skeys(hstore(regexp_split_to_array(c.email, ''),"
            " regexp_split_to_array(c.email, ''))) from customers c where c.id = 1) s"
        ).fetchone()[0]
    assert not counts & {1, 2}, counts
    assert distinct != len(set(email)), distinct


def test_a_built_in_set_returning_function_citext_overloads_still_sizes_its_level(
    dsn: str, pg_server: Any
) -> None:
    """citext overloads ``regexp_split_to_table``, ``regexp_matches`` … for its type:
    with it installed, an unqualified call is not known to be the built-in, and the
    branch for functions of the database's own never counted the rows it returns.
    ``count(*)`` over ``SELECT regexp_split_to_table(email, '')`` was the e-mail's
    length, under the default rules (the classifier knows the name as a built-in)."""
    email = _direct(pg_server, dsn, "select email from customers where id = 1")
    with psycopg.connect(dsn, autocommit=True) as conn:
        got = _run(
            conn,
            "select count(*) from (select regexp_split_to_table(c.email, '') from customers c"
            " where c.id = 1) s",
        )
        bit = _run(
            conn,
            "select count(*) from (select regexp_matches(c.email, '^' || $$a$$) from customers c"
            " where c.id = 1) s",
        )
    assert got.startswith("ok") and got != f"ok [({len(email)},)]", got
    assert bit.startswith("ok") and bit not in ("ok [(0,)]", "ok [(1,)]"), bit


#: Stored PII of the extensions' types, a domain over one, an enum and a range of the
#: database's own, and values derived from them, as an application's adapters read them.
TYPED = (
    "select e.attrs, e.extra, hstore(c) as whole, e.feeling, e.band,"
    " float_band_multirange(e.band) as bands, array[e.band] as band_list,"
    " array[e.feeling] as feelings, e.home_address, e.spot, e.contact_email, e.backup,"
    " float_band(c.id, ascii(c.email)) as made, text2ltree(c.ssn) as path, e.feeling_d,"
    " e.face, array[ascii(c.email), 1]::vector as made_face"
    " from ext_people e join customers c on c.id = e.id where e.id < 4 order by e.id"
)


def _check_typed(rows: list[Any], raw: set[bytes]) -> None:
    """Three rows whose hstores are one pair holding a token, and no raw value."""
    assert len(rows) == 3
    text = repr(rows).encode()
    assert not sorted(v for v in raw if v in text)[:3]
    assert text.count(b"tok_pii_") >= 9 and text.count(b"tok_email_") >= 6


def test_psycopg_adapters_decode_extension_types(dsn: str, raw: set[bytes]) -> None:
    """psycopg's hstore, enum, range and multirange adapters, registered as an
    application does, decode every replacement in text and binary cursors."""
    from psycopg.types.enum import EnumInfo, register_enum
    from psycopg.types.hstore import register_hstore
    from psycopg.types.multirange import Multirange, MultirangeInfo, register_multirange
    from psycopg.types.range import Range, RangeInfo, register_range

    with psycopg.connect(dsn, autocommit=True) as conn:
        info = psycopg.types.TypeInfo.fetch(conn, "hstore")
        assert info is not None
        register_hstore(info, conn)
        register_enum(EnumInfo.fetch(conn, "mood"), conn)  # type: ignore[arg-type]
        register_range(RangeInfo.fetch(conn, "float_band"), conn)  # type: ignore[arg-type]
        register_multirange(MultirangeInfo.fetch(conn, "float_band_multirange"), conn)  # type: ignore[arg-type]
        for binary in (False, True):
            with conn.cursor(binary=binary) as cur:
                cur.execute(TYPED)  # type: ignore[arg-type]
                rows = cur.fetchall()
            _check_typed(rows, raw)
            for attrs, extra, whole, feeling, band, bands, band_list, feelings, *rest in rows:
                for h in (attrs, extra, whole):
                    assert list(h) == ["pii"] and h["pii"].startswith("tok_pii_"), h
                assert feeling.name in ("calm", "tense") and feelings[0].name in ("calm", "tense")
                assert isinstance(band, Range) and isinstance(band_list[0], Range)
                assert isinstance(bands, Multirange) and len(bands) == 1
                face, made_face = rest[-2:]
                assert rest[-3].name in ("calm", "tense")  # a domain over the enum
                for v in (face, made_face):  # pgvector: one float4 element
                    if binary:
                        assert len(v) == 8 and v[:4] == b"\x00\x01\x00\x00", v
                    else:
                        assert v.startswith("[") and float(v[1:-1]) > 0, v


def test_asyncpg_decodes_extension_types(dsn: str, raw: set[bytes]) -> None:
    """asyncpg reads ranges of the database's own in binary (it introspects them),
    and hstore in binary with its contrib codec."""
    import asyncio

    async def fetch() -> list[Any]:
        conn = await asyncpg.connect(dsn, ssl=False)
        try:
            await conn.set_builtin_type_codec("hstore", codec_name="pg_contrib.hstore")
            return list(await conn.fetch(TYPED))
        finally:
            await conn.close()

    rows = asyncio.run(fetch())
    _check_typed([tuple(r) for r in rows], raw)
    for row in rows:
        assert list(row["attrs"]) == ["pii"] and row["whole"]["pii"].startswith("tok_pii_")
        assert isinstance(row["band"], asyncpg.Range) and isinstance(row["made"], asyncpg.Range)
        assert row["feeling"] in ("calm", "tense")


def test_psycopg2_pg8000_and_psql_decode_extension_types(
    dsn: str, pg_server: Any, raw: set[bytes]
) -> None:
    import subprocess

    import pg8000.native
    import psycopg2
    import psycopg2.extras

    from dbgate.embedded import pg_bin_dir

    conn2 = psycopg2.connect(dsn)
    try:
        psycopg2.extras.register_hstore(conn2)
        psycopg2.extras.register_range("float_band", "FloatBand", conn2)
        with conn2.cursor() as cur2:
            cur2.execute(TYPED)
            rows = cur2.fetchall()
    finally:
        conn2.close()
    _check_typed(rows, raw)
    assert all(list(r[0]) == ["pii"] and r[4].lower is not None for r in rows)
    parts = urlsplit(dsn)
    c8 = pg8000.native.Connection(
        parts.username or "",
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        database=parts.path.lstrip("/"),
        password=parts.password,
    )
    try:
        _check_typed(c8.run(TYPED), raw)
    finally:
        c8.close()
    out = subprocess.run(
        [str(pg_bin_dir() / "psql"), "-X", "-v", "ON_ERROR_STOP=1", dsn, "-c", TYPED],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PGSSLMODE": "disable", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    assert "(3 rows)" in out.stdout and '"pii"=>"tok_pii_' in out.stdout
    assert not sorted(v for v in raw if v in out.stdout.encode())[:3]


def test_an_extension_function_that_keeps_its_argument_in_a_setting_is_held(
    dsn: str, pg_server: Any
) -> None:
    """pg_trgm's ``set_limit`` keeps its argument in ``pg_trgm.similarity_threshold``,
    which ``SHOW`` and ``current_setting`` print in a later, clean statement: with the
    function trusted by the rules, ``set_limit(ascii(substr(email, 1, 1)) / 1000.0)``
    left ``0.109`` there, the first character's code. Held, as ``set_config`` is."""
    email = _direct(pg_server, dsn, "select email from customers where id = 1")
    code = f"{ord(email[0]) / 1000:g}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        got = _run(
            conn,
            "select set_limit(ascii(substr(email, 1, 1)) / 1000.0) from customers where id = 1",
        )
        shown = _run(conn, "show pg_trgm.similarity_threshold")
        read = _run(conn, "select current_setting('pg_trgm.similarity_threshold')")
    assert got.startswith("42501") and "set_limit" in got, got
    assert code not in shown and code not in read, (shown, read)


#: What the default rules hold (a value of a table's row type made from JSON, hstore's
#: operators), as an approved statement runs: through a relay that applies the room.
APPROVED = [
    "select json_populate_record(null::customers, row_to_json(c)) from customers c where id < 3",
    "select (json_populate_record(null::customers, row_to_json(c))).* from customers c"
    " where id < 3",
    "select * from jsonb_populate_recordset(null::customers,"
    " (select jsonb_agg(to_jsonb(c)) from customers c where id < 3))",
    "select c #= hstore('id', '7') from customers c where id < 3",
    "select %% hstore(c), %# hstore(c) from customers c where id < 3",
    "select hstore(c) -> 'email', hstore(c) - 'id'::text from customers c where id < 3",
]


@pytest.fixture(scope="module")
def approved_dsn(pg_server: Any, pii_demo: Demo) -> Iterator[str]:
    from tests.integration.pii.conftest import DBNAME
    from tests.integration.pii.relay import running_relay

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(pii_demo.dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()
        await pii_demo.room.refresh_dsn(pii_demo.dsn)

    import asyncio

    asyncio.run(admin("create extension if not exists hstore"))
    try:
        with running_relay(pii_demo.room, (pg_server.host, pg_server.port)) as relay:
            yield relay.dsn(pg_server.user, pg_server.password, DBNAME)
    finally:
        asyncio.run(admin("drop extension if exists hstore cascade"))


@pytest.mark.parametrize("sql", APPROVED)
def test_approved_pii_through_hstore_and_json_records_reaches_no_driver_raw(
    approved_dsn: str, pii_demo: Demo, sql: str
) -> None:
    got = _received(approved_dsn, sql)
    assert b"tok_" in got and b"Error" not in got, got[:300]
    hits = sorted(v for v in pii_demo.values if v in got)
    assert not hits, hits[:3]


def test_a_query_an_extension_function_runs_as_text_sizes_its_level(
    dsn: str, pg_server: Any
) -> None:
    """tablefunc's ``crosstab`` runs the query given as text and returns its rows,
    which dbgate does not read: its values were tokenized as unknown, but a function
    of the database's own in FROM sized its level only by the PII in its arguments,
    and a constant text has none — with ``crosstab`` trusted by the rules, ``count(*)``
    over ``crosstab('select … from generate_series(1, (select ascii(email) …))')`` was
    the character's code."""
    email = _direct(pg_server, dsn, "select email from customers where id = 1")
    source = (
        "'select g::text, 1::text, 1::text from generate_series(1, (select ascii(email)"
        " from customers where id = 1)) g'"
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        got = [
            _run(conn, f"select count(*) from crosstab({source}) as ct(a text, b text)"),
            _run(
                conn,
                f"select count(*) from (select * from crosstab({source}) as ct(a text, b text)) s",
            ),
        ]
    for one in got:
        assert one.startswith("ok") and one not in ("ok [(1,)]", f"ok [({ord(email[0])},)]"), got
