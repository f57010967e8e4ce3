"""Session state the server reports or gives back (ParameterStatus, settings,
notifications, sequences), through the real gate and the demo dataset.

A call that keeps state (``set_config``, ``pg_notify``, ``nextval`` …) may run or not
as a value the statement computes says: a ``CASE`` around it, a ``WHERE`` or a
``FILTER`` beside it, a scalar sub-select whose rows a question of PII keeps. Each
such call is a bit kept for a later, clean read: eight of them spelled a character
of customer 1's e-mail in one statement that returned one row, read back from
``pg_settings``, the ParameterStatus of ``application_name`` and the channels of the
notifications received. Such a statement is held (refused here: no approval
service); state set by clean statements still comes back as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

#: boolean settings any role may set, one per bit of a character code
BIT_SETTINGS = [
    "enable_seqscan",
    "enable_hashjoin",
    "enable_mergejoin",
    "enable_nestloop",
    "enable_sort",
    "enable_material",
    "enable_bitmapscan",
    "enable_tidscan",
]


@pytest.fixture(scope="module")
def first_char(admin_dsn: str) -> int:
    with psycopg.connect(admin_dsn) as conn:
        row = conn.execute("select ascii(email) from customers where id = 1").fetchone()
    assert row is not None
    return int(row[0])


def _bit(b: int) -> str:
    return f"ascii(substr(email, 1, 1)) & {1 << b} <> 0"


def _settings(b: int) -> str:
    return f"set_config('{BIT_SETTINGS[b]}', 'off', false)"


ATTACKS = {
    "scalar sub-selects kept by a bit": "select "
    + ", ".join(
        f"(select {_settings(b)} from customers where id = 1 and {_bit(b)}) b{b}" for b in range(8)
    ),
    "case": "select "
    + ", ".join(f"case when {_bit(b)} then {_settings(b)} end" for b in range(8))
    + " from customers where id = 1",
    "filter": "select "
    + ", ".join(f"count(*) filter (where {_bit(b)} and {_settings(b)} = 'off')" for b in range(8))
    + " from customers where id = 1",
    "local settings": "select "
    + ", ".join(
        f"case when {_bit(b)} then {_settings(b).replace('false', 'true')} end" for b in range(8)
    )
    + " from customers where id = 1",
}


def _session_settings(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute(
        "select name from pg_settings where source = 'session' and name like 'enable%'"
    ).fetchall()
    return sorted(str(r[0]) for r in rows)


def _spelled(settings: list[str]) -> int:
    return sum(1 << b for b, name in enumerate(BIT_SETTINGS) if name in settings)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_settings_set_as_pii_decides_are_not_kept(dsn: str, first_char: int, name: str) -> None:
    sql = ATTACKS[name]
    with psycopg.connect(dsn, autocommit=name != "local settings") as conn:
        with pytest.raises(psycopg.Error) as info:
            conn.execute(sql)
        assert info.value.diag.sqlstate == "42501", info.value
        assert "may decide whether it runs" in str(info.value)
        if name == "local settings":
            conn.rollback()
        settings = _session_settings(conn)
    assert _spelled(settings) != first_char
    assert settings == []


def test_application_name_set_as_pii_decides_is_not_reported(dsn: str, first_char: int) -> None:
    """ParameterStatus reports application_name after every change: the value the
    last branch kept (one per bit here) would name the bits."""
    branches = " union all ".join(
        f"select set_config('application_name', 'b{b}', false) from customers"
        f" where id = 1 and {_bit(b)}"
        for b in range(8)
    )
    with psycopg.connect(dsn, autocommit=True, application_name="hunt") as conn:
        with pytest.raises(psycopg.Error):
            conn.execute(f"select count(*) from ({branches}) s")
        assert conn.info.parameter_status("application_name") == "hunt"
        shown = conn.execute("show application_name").fetchone()
    assert shown == ("hunt",)


def test_notification_channels_chosen_by_pii_are_not_sent(dsn: str, first_char: int) -> None:
    """A payload is tokenized whole, a channel's name is not: which channels hear
    something would spell the bits."""
    got: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.add_notify_handler(lambda n: got.append(n.channel))
        for b in range(8):
            conn.execute(f"listen hunt_c{b}")
        with pytest.raises(psycopg.Error) as info:
            conn.execute(
                "select "
                + ", ".join(
                    f"case when {_bit(b)} then pg_notify('hunt_c{b}', 'x') end" for b in range(8)
                )
                + " from customers where id = 1"
            )
        assert info.value.diag.sqlstate == "42501"
        conn.execute("select 1")
    assert got == []


def test_sequences_drawn_as_pii_decides_are_held(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(psycopg.Error) as info:
        conn.execute(
            f"select case when {_bit(0)} then nextval('orders_id_seq') end"
            " from customers where id = 1"
        )
    assert info.value.diag.sqlstate == "42501"


def test_state_set_by_clean_statements_comes_back_as_it_is(dsn: str, admin_dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("select set_config('application_name', 'agent-7', false)")
        assert conn.info.parameter_status("application_name") == "agent-7"
        assert conn.execute("show application_name").fetchone() == ("agent-7",)
        assert conn.execute("select current_setting('application_name')").fetchone() == ("agent-7",)
        conn.execute("set datestyle = 'SQL, DMY'")
        assert conn.info.parameter_status("DateStyle") == "SQL, DMY"
        row = conn.execute(
            "select set_config('enable_seqscan', 'off', false), id, status from orders where id = 3"
        ).fetchone()
        got = conn.execute(
            "select id, email, to_char(created_at, 'YYYY-MM-DD HH24:MI') from customers where id = 2"
        ).fetchone()
        assert _session_settings(conn) == ["enable_seqscan"]
    with psycopg.connect(admin_dsn) as direct:
        want = direct.execute("select 'off', id, status from orders where id = 3").fetchone()
        raw = direct.execute(
            "select id, email, to_char(created_at, 'YYYY-MM-DD HH24:MI') from customers where id = 2"
        ).fetchone()
    assert row == want
    assert got is not None and raw is not None
    assert (got[0], got[2]) == (raw[0], raw[2]) and got[1] != raw[1]
    assert str(got[1]).startswith("tok_email_")


def _stream(conn: psycopg.Connection[Any], n: int) -> list[float]:
    conn.execute("select setseed(0.25)")
    rows = conn.execute(f"select random() from generate_series(1, {n})").fetchall()
    return [float(r[0]) for r in rows]


@pytest.mark.parametrize(
    "sql",
    [
        "select count(random()) from customers c,"
        " generate_series(1, ascii(substr(c.email, 1, 1))) g where c.id = 1",
        "select array_length(array_shuffle(string_to_array(email, null)), 1)"
        " from customers where id = 1",
        "select id from customers c, generate_series(1, ascii(substr(c.email, 1, 1))) g"
        " where c.id = 1 order by random() limit 1",
    ],
)
def test_random_draws_as_many_as_pii_says_are_held(dsn: str, first_char: int, sql: str) -> None:
    """After ``setseed`` the agent knows the sequence ``random()`` gives: a statement
    that draws as many times as a character code says moves it on by the code, which
    the next ``random()`` names (the 110th value of the sequence said ``m``)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        stream = _stream(conn, 300)
        conn.execute("select setseed(0.25)")
        with pytest.raises(psycopg.Error) as info:
            conn.execute(sql)
        assert info.value.diag.sqlstate == "42501", info.value
        row = conn.execute("select random()").fetchone()
    assert row is not None
    assert stream.index(float(row[0])) == 0 != first_char - 1


def test_sampling_with_random_still_reads_rows(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("select id, email from customers order by random() limit 3").fetchall()
        sampled = conn.execute(
            "select id, email from customers tablesample bernoulli (5) repeatable (7) limit 3"
        ).fetchall()
    assert len(rows) == 3 and all(str(e).startswith("tok_email_") for _, e in rows)
    assert len(sampled) == 3 and all(str(e).startswith("tok_email_") for _, e in sampled)


@pytest.fixture
def scratch_bits(admin_dsn: str, demo_role: Any) -> Iterator[str]:
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            "drop table if exists scratch_hunt_bits; create table scratch_hunt_bits (k int);"
            f" grant all on scratch_hunt_bits to {demo_role.name}"
        )
    yield "scratch_hunt_bits"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute("drop table scratch_hunt_bits")


def _kept_by_bit(b: int) -> str:
    return f"select {1 << b} from customers where id = 1 and {_bit(b)}"


@pytest.mark.parametrize(
    "sql",
    [
        "with "
        + ", ".join(
            f"w{b} as (insert into scratch_hunt_bits (k) {_kept_by_bit(b)} returning 1)"
            for b in range(8)
        )
        + " select 1",
        "insert into scratch_hunt_bits (k) "
        + " union all ".join(_kept_by_bit(b) for b in range(8)),
    ],
)
def test_rows_stored_as_several_bits_say_are_held(
    dsn: str, first_char: int, scratch_bits: str, sql: str
) -> None:
    """Each level keeps its row of constants by another bit of one value: a clean
    ``sum(k)`` of the table would give the character code back in one row."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as info:
            conn.execute(sql)
        assert info.value.diag.sqlstate == "42501", info.value
        row = conn.execute(f"select coalesce(sum(k), 0)::int from {scratch_bits}").fetchone()
    assert row is not None and row[0] != first_char
    assert row[0] == 0


@pytest.mark.parametrize(
    "sql",
    [
        "update scratch_hunt_bits set k = k + 1000 where k in ("
        + " union all ".join(_kept_by_bit(b) for b in range(8))
        + ")",
        "delete from scratch_hunt_bits where k in ("
        + " union all ".join(_kept_by_bit(b) for b in range(8))
        + ")",
        "merge into scratch_hunt_bits s using ("
        + " union all ".join(_kept_by_bit(b) for b in range(8))
        + ") x (k) on s.k = x.k when matched then update set k = s.k + 1000",
    ],
)
def test_rows_changed_as_several_bits_say_are_held(
    dsn: str,
    admin_dsn: str,
    first_char: int,
    scratch_bits: str,
    sql: str,
) -> None:
    """Rows 1, 2, 4 … 128 of a table, each changed when another bit of one value is
    set: a clean read of which changed spelled the character."""
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f"insert into {scratch_bits} select 1 << b from generate_series(0, 7) b")
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as info:
            conn.execute(sql)
        assert info.value.diag.sqlstate == "42501", info.value
        row = conn.execute(
            f"select coalesce(sum(k), 0)::int from {scratch_bits} where k < 1000"
        ).fetchone()
    assert row is not None and 255 - row[0] != first_char
    assert row[0] == 255


def test_a_segment_kept_by_one_question_is_still_stored(dsn: str, scratch_bits: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(
            f"insert into {scratch_bits} (k) select id from customers"
            " where email like '%@gmail.com' and id < 200"
        )
        stored = conn.execute(f"select count(*) from {scratch_bits}").fetchone()
    assert cur.rowcount > 0 and stored == (cur.rowcount,)


def _notices(dsn: str, sql: str) -> list[str]:
    """The primary message of each notice the statement raised."""
    got: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.add_notice_handler(lambda d: got.append(d.message_primary or ""))
        conn.execute(sql)
        conn.execute("select 1")
    return got


#: a NOTICE per call, which a constant argument would fold into one at planning
STOP_WORDS_ONLY = "to_tsquery('english', left('the' || g, 3))"


@pytest.mark.parametrize(
    "sql",
    [
        f"select count({STOP_WORDS_ONLY}) from customers c,"
        " generate_series(1, ascii(substr(c.email, 1, 1))) g where c.id = 1",
        "select "
        + ", ".join(
            f"case when {_bit(b)} then (select count({STOP_WORDS_ONLY})"
            f" from generate_series(1, {1 << b}) g) end"
            for b in range(8)
        )
        + " from customers where id = 1",
    ],
)
def test_how_many_notices_a_statement_raised_is_not_told(
    dsn: str, first_char: int, sql: str
) -> None:
    """Each withheld notice still said that one was raised: 109 of them spelled an
    ``m``. Only the first of a statement that involves PII is sent."""
    got = _notices(dsn, sql)
    assert len(got) != first_char
    assert len(got) == 1
    assert "withheld" in got[0]


def test_notices_of_statements_without_pii_are_all_sent(dsn: str) -> None:
    got = _notices(dsn, f"select count({STOP_WORDS_ONLY}) from generate_series(1, 3) g")
    assert len(got) == 3
    assert all("stop words" in n for n in got)


#: failing calls of one value each raised at another place in the server's source
FAILING = [
    "length(email) / 0",
    "length(email)::bigint / 0",
    "length(email)::numeric / 0",
    "(left(email, 0) || 'x')::int",
    "(left(email, 0) || 'x')::bigint",
    "(left(email, 0) || 'x')::numeric",
    "(left(email, 0) || 'x')::uuid",
    "(left(email, 0) || 'x')::json",
    "(left(email, 0) || 'x')::bool",
    "chr(-length(email))",
    "sqrt(-length(email)::float8)",
    "substr(email, 1, -length(email))",
]


def test_where_a_withheld_error_was_raised_is_not_told(dsn: str, first_char: int) -> None:
    """The SQLSTATE stays; the file, line and routine of the server's source that raised
    the error do not: a CASE over a character code chose among failing calls, and the
    routine of the one that ran (``int4div``, ``pg_strtoint32_safe`` …) named it."""
    low = first_char - 4
    branches = " ".join(f"when {low + i} then ({expr})::text" for i, expr in enumerate(FAILING[:8]))
    sql = f"select case ascii(substr(email, 1, 1)) {branches} end from customers where id = 1"
    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(psycopg.Error) as info:
        conn.execute(sql)
    diag = info.value.diag
    assert "withheld" in (diag.message_primary or "")
    assert (diag.source_function, diag.source_file, diag.source_line) == (None, None, None)


@pytest.fixture
def raising_trigger(admin_dsn: str, demo_role: Any) -> Iterator[str]:
    """A scratch table whose trigger RAISEs with name fields of its choosing (code the
    application wrote; a DO block an approver let run may do the same)."""
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            """
            drop table if exists scratch_hunt_raise;
            create table scratch_hunt_raise (x int);
            create or replace function scratch_hunt_raise_say() returns trigger
            language plpgsql as $$
            declare who text := (select full_name from customers where id = 1);
            begin
                raise notice 'checked' using column = who, table = who, schema = who,
                    constraint = who, datatype = who;
                if new.x < 0 then
                    raise exception 'refused' using column = who, constraint = who;
                end if;
                return new;
            end $$;
            create trigger scratch_hunt_raise_say before insert on scratch_hunt_raise
                for each row execute function scratch_hunt_raise_say();
            """
            f"grant all on scratch_hunt_raise to {demo_role.name}"
        )
        row = admin.execute("select full_name from customers where id = 1").fetchone()
    assert row is not None
    yield str(row[0])
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute("drop table scratch_hunt_raise; drop function scratch_hunt_raise_say()")


def test_name_fields_a_raise_chose_are_not_kept(dsn: str, raising_trigger: str) -> None:
    """A withheld message keeps the schema, table, column, type and constraint names the
    server reports, but a RAISE's are what its code put there: the name of customer 1."""
    name = raising_trigger
    got: list[str] = []
    fields = ("schema_name", "table_name", "column_name", "constraint_name", "datatype_name")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.add_notice_handler(
            lambda d: got.extend(str(getattr(d, f)) for f in ("message_primary", *fields))
        )
        conn.execute("insert into scratch_hunt_raise values (1)")
        with pytest.raises(psycopg.Error) as info:
            conn.execute("insert into scratch_hunt_raise values (-1)")
    diag = info.value.diag
    got += [str(getattr(diag, f)) for f in ("message_primary", *fields)]
    assert any("withheld" in g for g in got)
    assert not [g for g in got if name in g]
