"""psql's describe commands and ``\\copy``, and pg_dump, through dbgate and directly.

psql and pg_dump are the embedded server's own (PostgreSQL 18), so their catalog
queries are the ones a user of that server version sends. Output, errors and exit
codes must be identical on both sides, apart from what must be refused.
"""

from __future__ import annotations

import re

import pytest

from tests.integration.clients.tools import pg_dump, psql

DESCRIBE = [r"\d", r"\d+ customers", r"\dt", r"\df", r"\dv", r"\di", r"\du", r"\dx"]


@pytest.mark.parametrize("command", DESCRIBE)
def test_psql_describe_commands(sides: dict[str, str], command: str) -> None:
    direct, gate = psql(sides["direct"], command), psql(sides["gate"], command)
    assert gate == direct
    assert direct.returncode == 0, direct.stderr


def test_psql_describe_output_shows_the_dataset(sides: dict[str, str]) -> None:
    described = psql(sides["gate"], r"\d+ customers").stdout
    assert "PII: US social security number" in described
    assert "customers_email_key" in described


def test_psql_copy_of_a_bounded_query_to_stdout(sides: dict[str, str]) -> None:
    command = r"\copy (select id, status from orders where id <= 100 order by id) to stdout"
    direct, gate = psql(sides["direct"], command), psql(sides["gate"], command)
    assert direct.returncode == 0 and len(direct.stdout.splitlines()) == 100
    assert gate == direct


# -- pg_dump -------------------------------------------------------------------------------

_VOLATILE = re.compile(r"^(--.*|\\restrict .*|\\unrestrict .*)$")


def schema_text(dump: str) -> list[str]:
    """A schema dump without comments, the version header and the per-run restrict key."""
    return [line for line in dump.splitlines() if line.strip() and not _VOLATILE.match(line)]


def test_pg_dump_schema_only_matches_direct(sides: dict[str, str]) -> None:
    direct, gate = (pg_dump(sides[s], "--schema-only") for s in ("direct", "gate"))
    assert direct.returncode == 0, direct.stderr
    assert "CREATE TABLE public.customers" in direct.stdout
    assert (gate.returncode, gate.stderr) == (0, direct.stderr)
    assert schema_text(gate.stdout) == schema_text(direct.stdout)


def data_rows_of(dump: str) -> list[str]:
    """Lines of COPY data in a plain-format dump (between ``COPY ... FROM stdin;`` and ``\\.``)."""
    rows: list[str] = []
    inside = False
    for line in dump.splitlines():
        if line.startswith("COPY ") and line.endswith("FROM stdin;"):
            inside = True
        elif line == "\\.":
            inside = False
        elif inside:
            rows.append(line)
    return rows


def test_pg_dump_of_data_is_refused_and_leaks_no_rows(sides: dict[str, str]) -> None:
    direct = pg_dump(sides["direct"])
    assert direct.returncode == 0, direct.stderr
    assert len(data_rows_of(direct.stdout)) > 1000  # directly, every row is dumped
    gate = pg_dump(sides["gate"])
    assert gate.returncode == 1
    assert "dbgate: " in gate.stderr and "rule: " in gate.stderr, gate.stderr
    assert data_rows_of(gate.stdout) == []
    first_email = re.search(r"\t([^\t@]+@[^\t]+)\t", "\n".join(data_rows_of(direct.stdout)))
    assert first_email is not None and first_email.group(1) not in gate.stdout


def test_pg_dump_of_data_is_held_at_its_first_table_copy(sides: dict[str, str]) -> None:
    gate = pg_dump(sides["gate"])
    assert gate.returncode == 1
    assert "COPY public." in gate.stderr, gate.stderr
    assert "rule: hold-export" in gate.stderr, gate.stderr
