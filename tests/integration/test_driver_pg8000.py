"""pg8000 (native and DB-API) through dbgate behaves exactly as straight to PostgreSQL.

pg8000 is pure Python and uses the extended protocol with the *unnamed* statement
(Parse/Bind/Describe/Execute/Sync per query, text results), plus its own COPY
streaming and notification/notice bookkeeping. Each scenario runs on both targets.
"""

from __future__ import annotations

import datetime as dt
import decimal
import io
from contextlib import closing
from typing import Any

import pg8000.dbapi
import pg8000.native
import pytest

from tests.integration.drivers_common import same_on_both, split_dsn, unique

IDLE, IN_TRANSACTION, IN_FAILED = b"I", b"T", b"E"


def native(dsn: str) -> closing[pg8000.native.Connection]:
    """A fresh native-API connection to ``dsn``, closed afterwards."""
    return closing(pg8000.native.Connection(**split_dsn(dsn).kwargs()))  # type: ignore[arg-type]


def dbapi(dsn: str) -> closing[pg8000.dbapi.Connection]:
    """A fresh DB-API connection to ``dsn``, closed afterwards."""
    return closing(pg8000.dbapi.connect(**split_dsn(dsn).kwargs()))  # type: ignore[arg-type]


def test_native_parameters_and_types(pg_dsn: str, proxy_dsn: str) -> None:
    def scenario(con: Any) -> Any:
        row = con.run(
            "select :i::int + 1, :t || '!', cast(:n as numeric) * 2, :ts, cast(:b as bytea), cast(:arr as int[]), cast(:j as jsonb),"
            " null::text, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid",
            i=41,
            t="héllo",
            n=decimal.Decimal("1.25"),
            ts=dt.datetime(2024, 3, 4, 5, 6, 7, tzinfo=dt.UTC),
            b=b"\x00\xff",
            arr=[1, 2, 3],
            j='{"k": [1]}',
        )
        columns = [(c["name"], c["type_oid"]) for c in con.columns]
        many = con.run("select g, g::text from generate_series(1, 3000) g")
        # The same text run again (pg8000 re-Parses the unnamed statement each time).
        again = [con.run("select :x::int * 10", x=i)[0][0] for i in range(20)]
        return row, columns, many, again, con.row_count

    row, columns, many, again, row_count = same_on_both(pg_dsn, proxy_dsn, scenario, connect=native)
    assert row[0][:3] == [42, "héllo!", decimal.Decimal("2.50")]
    assert row[0][4:8] == [b"\x00\xff", [1, 2, 3], {"k": [1]}, None]
    assert len(many) == 3000
    assert again == [i * 10 for i in range(20)]
    assert row_count == 1
    assert [c[0] for c in columns][-1] == "uuid"


def test_native_errors_and_transactions(pg_dsn: str, proxy_dsn: str) -> None:
    table = unique("p8k")

    def scenario(con: Any) -> Any:
        con.run(f"create table {table} (id int primary key, v text not null)")
        st = [con._transaction_status]
        codes = []
        for sql, params in (
            (f"insert into {table} values (:a, :b), (:a, :b)", {"a": 1, "b": "x"}),
            (f"insert into {table} values (:a, null)", {"a": 2}),
            ("select :a::int / 0", {"a": 1}),
            ("select * from no_table_p8k", {}),
            ("select :a::int", {"a": "not a number"}),
        ):
            with pytest.raises(pg8000.native.DatabaseError) as info:
                con.run(sql, **params)
            err = info.value.args[0]
            codes.append((err["C"], err["M"], err.get("n")))
        con.run("begin")
        st.append(con._transaction_status)
        con.run(f"insert into {table} values (:a, :b)", a=10, b="ten")
        with pytest.raises(pg8000.native.DatabaseError):
            con.run(f"insert into {table} values (:a, :b)", a=10, b="dup")
        st.append(con._transaction_status)
        with pytest.raises(pg8000.native.DatabaseError) as aborted:
            con.run("select 1")
        con.run("rollback")
        st.append(con._transaction_status)
        con.run("begin")
        con.run(f"insert into {table} values (:a, :b)", a=20, b="twenty")
        con.run("commit")
        ids = con.run(f"select id from {table} order by id")
        con.run(f"drop table {table}")
        return st, codes, aborted.value.args[0]["C"], ids

    st, codes, aborted, ids = same_on_both(pg_dsn, proxy_dsn, scenario, connect=native)
    assert st == [IDLE, IN_TRANSACTION, IN_FAILED, IDLE]
    assert [c[0] for c in codes] == ["23505", "23502", "22012", "42P01", "22P02"]
    assert codes[0][2] == f"{table}_pkey"
    assert aborted == "25P02"
    assert ids == [[20]]


def test_native_copy_notices_and_notifications(pg_dsn: str, proxy_dsn: str) -> None:
    table = unique("p8k_copy")
    channel = unique("p8k_chan")

    def scenario(con: Any) -> Any:
        con.run(f"create table {table} (id int, v text)")
        con.run(
            f"copy {table} from stdin with (format csv)",
            stream=io.StringIO("".join(f"{i},v{i}\n" for i in range(1500))),
        )
        copied = con.row_count
        out = io.StringIO()
        con.run(f"copy (select * from {table} order by id) to stdout with (format csv)", stream=out)
        con.run(f"listen {channel}")
        con.run(f"notify {channel}, 'p8k'")
        con.run("do $$ begin raise notice 'from pg8000'; end $$")
        con.run(f"drop table {table}")
        notes = [n[b"M"] for n in con.notices]
        return copied, out.getvalue(), [n[1:] for n in con.notifications], notes

    copied, csv, notifications, notes = same_on_both(pg_dsn, proxy_dsn, scenario, connect=native)
    assert copied == 1500
    assert csv.splitlines()[-1] == "1499,v1499"
    assert notifications == [(channel, "p8k")]
    assert notes == [b"from pg8000"]


def test_dbapi_queries_errors_transactions(pg_dsn: str, proxy_dsn: str) -> None:
    table = unique("p8k_dbapi")

    def scenario(con: Any) -> Any:
        cur = con.cursor()
        cur.execute(f"create table {table} (id int primary key, amount numeric)")
        con.commit()
        cur.executemany(
            f"insert into {table} values (%s, %s)",
            [(i, decimal.Decimal(i) / 10) for i in range(50)],
        )
        con.rollback()  # nothing of the executemany survives
        cur.execute(f"select count(*) from {table}")
        after_rollback = cur.fetchone()
        cur.execute(f"insert into {table} values (%s, %s) returning id, amount", (1, "9.99"))
        returned = [list(r) for r in cur.fetchall()]
        con.commit()
        with pytest.raises(pg8000.dbapi.DatabaseError) as info:
            cur.execute(f"insert into {table} values (%s, %s)", (1, 1))
        in_txn = con._transaction_status
        con.rollback()
        cur.execute(f"select id, amount from {table} where id = %s", (1,))
        rows = [list(r) for r in cur.fetchall()]
        desc = [d[0] for d in cur.description]
        con.commit()
        con.autocommit = True
        cur.execute(f"drop table {table}")
        return after_rollback, returned, info.value.args[0]["C"], in_txn, rows, desc

    got = same_on_both(pg_dsn, proxy_dsn, scenario, connect=dbapi)
    assert got == (
        [0],
        [[1, decimal.Decimal("9.99")]],
        "23505",
        IN_FAILED,
        [[1, decimal.Decimal("9.99")]],
        ["id", "amount"],
    )
