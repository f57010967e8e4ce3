"""psql through dbgate prints, copies and fails exactly as psql straight to PostgreSQL.

psql speaks only the simple query protocol (plus COPY sub-protocol for ``\\copy``) and
reads the catalog heavily for ``\\d``; its exit code and stderr are what shell scripts
written by agents rely on. Each test runs the same psql invocation against both targets
and compares exit code, stdout and stderr.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest

from tests.integration.drivers_common import same_on_both, unique

PSQL = shutil.which("psql") or "/usr/bin/psql"


def psql(dsn: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "LC_ALL": "C.UTF-8",
        "PGCONNECT_TIMEOUT": "10",
        "PSQLRC": "/dev/null",
        "PGAPPNAME": "drv-matrix-psql",
    }
    for var in ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSERVICE", "PGOPTIONS"):
        env.pop(var, None)
    return subprocess.run(
        [PSQL, "-X", "-P", "pager=off", "-d", dsn, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


def psql_on_both(
    pg_dsn: str, proxy_dsn: str, *args: str, stdin: str | None = None
) -> tuple[int, str, str]:
    """Run psql against both targets; assert identical exit code, stdout and stderr;
    return the direct one."""

    def run(dsn: str) -> tuple[int, str, str]:
        r = psql(dsn, *args, stdin=stdin)
        return r.returncode, r.stdout, r.stderr

    return same_on_both(pg_dsn, proxy_dsn, run)


def test_single_query(pg_dsn: str, proxy_dsn: str) -> None:
    code, out, err = psql_on_both(
        pg_dsn,
        proxy_dsn,
        "-c",
        "select 1 as one, 'x'::text as t, null::int as n, array[1,2] as a,"
        " '2024-01-01 00:00+00'::timestamptz at time zone 'UTC' as ts",
    )
    assert code == 0
    assert "one | t | n |   a   |         ts" in out
    assert "(1 row)" in out
    assert err == ""


def test_unaligned_tuples_only_many_rows(pg_dsn: str, proxy_dsn: str) -> None:
    code, out, _ = psql_on_both(
        pg_dsn, proxy_dsn, "-A", "-t", "-c", "select g, md5(g::text) from generate_series(1,5000) g"
    )
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 5000
    assert lines[0] == "1|c4ca4238a0b923820dcc509a6f75849b"


def test_multi_statement_command(pg_dsn: str, proxy_dsn: str) -> None:
    """One simple Query with two statements: psql 15 prints every result set."""
    code, out, err = psql_on_both(pg_dsn, proxy_dsn, "-A", "-t", "-c", "select 1; select 2")
    assert (code, err) == (0, "")
    assert out.split() == ["1", "2"]


def test_multi_statement_with_error_and_notice(pg_dsn: str, proxy_dsn: str) -> None:
    code, out, err = psql_on_both(
        pg_dsn,
        proxy_dsn,
        "-A",
        "-t",
        "-c",
        "do $$ begin raise notice 'hello notice'; end $$; select 1; select 1/0; select 3",
    )
    assert code == 1
    assert "NOTICE:  hello notice" in err
    assert "ERROR:  division by zero" in err
    assert "3" not in out.split()


def test_on_error_stop_exit_code_and_verbose_sqlstate(pg_dsn: str, proxy_dsn: str) -> None:
    script = (
        "\\set VERBOSITY verbose\n"
        "select 'before';\n"
        "select * from no_such_table_psql;\n"
        "select 'after';\n"
    )
    code, out, err = psql_on_both(
        pg_dsn, proxy_dsn, "-v", "ON_ERROR_STOP=1", "-f", "-", stdin=script
    )
    assert code == 3  # psql: script error with ON_ERROR_STOP
    assert "before" in out
    assert "after" not in out
    assert 'ERROR:  42P01: relation "no_such_table_psql" does not exist' in err
    assert "LOCATION:" in err


def test_on_error_stop_with_c_options(pg_dsn: str, proxy_dsn: str) -> None:
    code, out, err = psql_on_both(
        pg_dsn,
        proxy_dsn,
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        "\\set VERBOSITY verbose",
        "-c",
        "select 1/0",
        "-c",
        "select 'not reached'",
    )
    assert code == 1
    assert "ERROR:  22012: division by zero" in err
    assert "not reached" not in out


def test_transaction_block_in_script(pg_dsn: str, proxy_dsn: str) -> None:
    table = unique("psql_tx")
    script = (
        f"create table {table} (id int primary key);\n"
        "begin;\n"
        f"insert into {table} values (1);\n"
        f"insert into {table} values (1);\n"
        "select 'in failed txn';\n"
        "rollback;\n"
        f"select count(*) from {table};\n"
        f"drop table {table};\n"
    )
    code, out, err = psql_on_both(pg_dsn, proxy_dsn, "-A", "-t", "-f", "-", stdin=script)
    assert code == 0
    assert "current transaction is aborted" in err
    assert "duplicate key value violates unique constraint" in err
    assert out.split() == [
        "CREATE",
        "TABLE",
        "BEGIN",
        "INSERT",
        "0",
        "1",
        "ROLLBACK",
        "0",
        "DROP",
        "TABLE",
    ]


def test_copy_in_and_out(pg_dsn: str, proxy_dsn: str, tmp_path: Path) -> None:
    table = unique("psql_copy")
    src = tmp_path / "in.csv"
    src.write_text("".join(f'{i},name {i},"quoted, {i}"\n' for i in range(2000)))
    dst = tmp_path / "out.csv"

    def run(dsn: str) -> tuple[int, str, str, str]:
        r = psql(
            dsn,
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            f"create table {table} (id int, name text, note text)",
            "-c",
            f"\\copy {table} from '{src}' with (format csv)",
            "-c",
            f"\\copy (select * from {table} where id % 3 = 0 order by id) to '{dst}' with (format csv)",
            "-c",
            f"\\copy {table} to stdout",
            "-c",
            f"drop table {table}",
        )
        copied = dst.read_text()
        dst.unlink()  # the next run must write its own
        return r.returncode, r.stdout, r.stderr, copied

    code, stdout, stderr, copied = same_on_both(pg_dsn, proxy_dsn, run)
    assert (code, stderr) == (0, "")
    assert "COPY 2000" in stdout
    assert "1999\tname 1999\tquoted, 1999" in stdout
    assert copied.splitlines()[1] == '3,name 3,"quoted, 3"'
    assert len(copied.splitlines()) == 667


def test_copy_in_bad_data_fails_identically(pg_dsn: str, proxy_dsn: str, tmp_path: Path) -> None:
    table = unique("psql_badcopy")
    src = tmp_path / "bad.csv"
    src.write_text("1,ok\nnot-a-number,bad\n")
    code, out, err = psql_on_both(
        pg_dsn,
        proxy_dsn,
        "-c",
        f"create table {table} (id int, v text)",
        "-c",
        f"\\copy {table} from '{src}' with (format csv)",
        "-c",
        f"select count(*) from {table}",
        "-c",
        f"drop table {table}",
    )
    assert code == 0  # the last -c succeeded
    assert "invalid input syntax for type integer" in err
    assert "CONTEXT:  COPY" in err
    assert " 0\n" in out


@pytest.fixture
def described_table(pg_dsn: str) -> str:
    table = unique("psql_desc")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            f"create table {table} (id bigint generated always as identity primary key,"
            f" email text not null unique, score numeric(10,2) default 0 check (score >= 0),"
            f" created timestamptz default now(), tags text[])"
        )
        conn.execute(f"create index {table}_score on {table} (score desc)")
        conn.execute(f"comment on table {table} is 'for \\d tests'")
    yield table
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"drop table {table}")


def test_describe_output_equal(pg_dsn: str, proxy_dsn: str, described_table: str) -> None:
    for meta in (f"\\d {described_table}", f"\\d+ {described_table}", "\\dt", "\\dn", "\\df abs"):
        code, out, _err = psql_on_both(pg_dsn, proxy_dsn, "-c", meta)
        assert code == 0, meta
        assert out.strip(), meta
    code, out, _ = psql_on_both(pg_dsn, proxy_dsn, "-c", f"\\d {described_table}")
    assert f'Table "public.{described_table}"' in out
    assert f'"{described_table}_pkey" PRIMARY KEY, btree (id)' in out
    assert "score >= 0" in out
