"""Plain reads sent again with fresh literals, in a running dbgate.

The gate answers a text that differs from an earlier one only in its literals from
the shape (``gate/fresh_literals.py``) when the classifier, the policy and the PII
gate each give every text of the shape the same answer; the long way otherwise. These
drive real drivers through the App and watch which texts the gate judged the long way
(its ``_judge``), and what the client got.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dbgate.policy.rules import load_rules
from tests.integration.conftest import pack_with
from tests.integration.holds.harness import HoldsEnv, admin_execute

SECRET = "ottoline.vanderbilt@example.org"


@pytest.fixture(scope="module")
def tables(env: HoldsEnv) -> None:
    admin_execute(
        env.admin_dsn,
        "DROP TABLE IF EXISTS fresh_plain, fresh_people",
        "CREATE TABLE fresh_plain (id int PRIMARY KEY, v text NOT NULL)",
        "INSERT INTO fresh_plain SELECT g, 'v' || g FROM generate_series(1, 50) g",
        "CREATE TABLE fresh_people (id int PRIMARY KEY, email text NOT NULL)",
        f"INSERT INTO fresh_people VALUES (1, '{SECRET}'), (2, 'b.person@example.net')",
        "GRANT SELECT ON fresh_plain, fresh_people TO PUBLIC",
    )


#: Reads of these tables are allowed with no run-time limit: the policy's plain allow
#: (a read under a rows-per-window limit is capped at each use of its shape: see
#: test_row_window_app.py).
PLAIN_READS = """\
version: 1
rules:
  - name: tests-fresh-reads
    match:
      categories: [read]
      tables: ["fresh_*"]
    action: allow
"""


@pytest.fixture(scope="module")
def plain_reads(env: HoldsEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    gate = env.app.app.gate
    before = gate.ruleset
    pack = pack_with(tmp_path_factory.mktemp("fresh_rules"), PLAIN_READS)
    env.app.call(_use(gate, load_rules(pack)))
    yield
    env.app.call(_use(gate, before))


@pytest.fixture
def judged(env: HoldsEnv, plain_reads: None) -> Iterator[list[str]]:
    """The texts the gate judges the long way (classifier, policy, PII)."""
    gate = env.app.app.gate
    texts: list[str] = []
    judge = gate._judge

    def counting(session: Any, identity: Any, statement: Any) -> Any:
        texts.append(statement.sql)
        return judge(session, identity, statement)

    gate._judge = counting
    try:
        yield texts
    finally:
        del gate._judge


def test_fresh_literals_of_a_plain_read_are_answered_from_its_shape(
    env: HoldsEnv, tables: None, judged: list[str]
) -> None:
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        for i in range(1, 21):
            sql = f"SELECT v FROM fresh_plain WHERE id = {i}"
            assert conn.execute(sql, prepare=False).fetchone() == (f"v{i}",)
    # the first texts are judged (classified, planned for PII, remembered); the rest
    # come from the shape
    assert 1 <= len(judged) <= 3, judged


def test_a_shape_pii_changes_is_judged_and_tokenized_every_time(
    env: HoldsEnv, tables: None, judged: list[str]
) -> None:
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        for k in range(5):  # fresh texts (an exact repeat is the relay's to remember)
            (value,) = conn.execute(
                f"SELECT email FROM fresh_people WHERE id IN (1, {100 + k})", prepare=False
            ).fetchone()
            assert value.startswith("tok_email_") and value != SECRET
    assert len(judged) == 5, judged


def test_cursors_and_texts_with_tokens_are_judged_every_time(
    env: HoldsEnv, tables: None, judged: list[str]
) -> None:
    with psycopg.connect(env.dsn) as conn:  # a transaction: cursors live in it
        token = conn.execute("SELECT email FROM fresh_people WHERE id = 1").fetchone()[0]
        for i in (1, 2, 3):
            conn.execute(f"DECLARE c{i} CURSOR FOR SELECT email FROM fresh_people WHERE id = {i}")
            row = conn.execute(f"FETCH 1 FROM c{i}").fetchone()
            assert row is None or (row[0].startswith("tok_email_") and row[0] != SECRET)
        for _ in range(3):  # a token in a literal is resolved: never from a shape
            sql = f"SELECT id FROM fresh_people WHERE email = '{token}'"
            assert conn.execute(sql).fetchone() == (1,)
    declares = [t for t in judged if t.startswith("DECLARE")]
    assert len(declares) == 3
    assert len([t for t in judged if "tok_" in t]) == 3


def test_a_rules_reload_applies_to_the_next_fresh_literal(
    env: HoldsEnv, tables: None, judged: list[str], tmp_path: Path
) -> None:
    gate = env.app.app.gate
    before = gate.ruleset
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "00-closed.yaml").write_text(
        "version: 1\n"
        "rules:\n"
        "  - name: fresh-plain-closed\n"
        "    match:\n"
        "      tables: [fresh_plain]\n"
        "    action: deny\n"
        "    message: fresh_plain is closed\n"
    )
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        for i in range(1, 6):
            conn.execute(f"SELECT v FROM fresh_plain WHERE id = {i}", prepare=False)
        assert len(judged) < 5  # answered from the shape
        env.app.call(_use(gate, load_rules(rules)))
        try:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="closed"):
                conn.execute("SELECT v FROM fresh_plain WHERE id = 6", prepare=False)
        finally:
            env.app.call(_use(gate, before))
        assert conn.execute("SELECT v FROM fresh_plain WHERE id = 7", prepare=False).fetchone()


async def _use(gate: Any, ruleset: Any) -> None:
    gate.use_ruleset(ruleset)  # on the App's loop, as a reload does


def test_a_column_that_becomes_pii_is_tokenized_in_the_next_fresh_literal(
    env: HoldsEnv, tables: None, judged: list[str]
) -> None:
    """A remembered shape is asked of the PII gate again at every use: once the schema
    says its column holds PII, the next fresh literal is tokenized."""
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        for i in range(1, 6):
            sql = f"SELECT v FROM fresh_plain WHERE id = {i} AND v <> 'x{i}'"
            assert conn.execute(sql, prepare=False).fetchone() == (f"v{i}",)
        assert len(judged) < 5  # answered from the shape
        admin_execute(env.admin_dsn, "COMMENT ON COLUMN fresh_plain.v IS 'pii:email'")
        try:
            env.app.call(_reload_pii_schema(env))
            (value,) = conn.execute(
                "SELECT v FROM fresh_plain WHERE id = 6 AND v <> 'x6'", prepare=False
            ).fetchone()
            assert value != "v6" and value.startswith("tok_email_")
        finally:
            # a column found PII stays PII while dbgate runs, comment or not: a new
            # table (a new OID) is clean again for the tests after this one
            admin_execute(
                env.admin_dsn,
                "DROP TABLE fresh_plain",
                "CREATE TABLE fresh_plain (id int PRIMARY KEY, v text NOT NULL)",
                "INSERT INTO fresh_plain SELECT g, 'v' || g FROM generate_series(1, 50) g",
                "GRANT SELECT ON fresh_plain TO PUBLIC",
            )
            env.app.call(_reload_pii_schema(env))


async def _reload_pii_schema(env: HoldsEnv) -> None:
    loads = env.app.app.pii.loads
    since = time.monotonic()
    loads.refresh_soon(env.data_db)
    await loads.reload_since(env.data_db, since)


@pytest.fixture
def writable(env: HoldsEnv) -> Iterator[None]:
    admin_execute(
        env.admin_dsn,
        "DROP TABLE IF EXISTS fresh_writes, fresh_counts",
        "CREATE TABLE fresh_writes (id int PRIMARY KEY, v text NOT NULL, email text)",
        "INSERT INTO fresh_writes SELECT g, 'v' || g, 'w' || g || '@example.org'"
        " FROM generate_series(1, 300) g",
        # no PII column: a write to a table with one is planned for its error messages
        "CREATE TABLE fresh_counts (id int PRIMARY KEY, v text NOT NULL)",
        "INSERT INTO fresh_counts SELECT g, 'v' || g FROM generate_series(1, 300) g",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON fresh_writes, fresh_counts TO PUBLIC",
    )
    env.app.call(_reload_keys(env))  # their primary keys prove writes bounded
    yield
    admin_execute(env.admin_dsn, "DROP TABLE fresh_writes, fresh_counts")


async def _reload_keys(env: HoldsEnv) -> None:
    loads = env.app.app.keys.loads
    since = time.monotonic()
    loads.refresh_soon(env.data_db)
    await loads.reload_since(env.data_db, since)


def _values(env: HoldsEnv, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(env.admin_dsn) as conn:
        return conn.execute(sql).fetchall()


def test_fresh_literals_of_writes_their_key_proves_bounded_come_from_the_shape(
    env: HoldsEnv, writable: None, judged: list[str]
) -> None:
    """The default pack lets a write change at most 100 rows unless its WHERE pins a
    unique key: such a write's verdict is the same for every text of its shape."""
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        for i in range(1, 21):
            cur = conn.execute(f"UPDATE fresh_counts SET v = 'u{i}' WHERE id = {i}", prepare=False)
            assert cur.rowcount == 1
        for i in range(301, 311):
            conn.execute(f"INSERT INTO fresh_counts (id, v) VALUES ({i}, 'n{i}')", prepare=False)
        for i in range(301, 306):
            conn.execute(f"DELETE FROM fresh_counts WHERE id = {i}", prepare=False)
    assert len([t for t in judged if t.startswith("UPDATE")]) <= 3, judged
    assert len([t for t in judged if t.startswith("INSERT")]) <= 3, judged
    assert len([t for t in judged if t.startswith("DELETE")]) <= 3, judged
    assert _values(env, "SELECT id, v FROM fresh_counts WHERE id IN (1, 20) ORDER BY id") == [
        (1, "u1"),
        (20, "u20"),
    ]
    assert _values(env, "SELECT count(*) FROM fresh_counts WHERE id > 300") == [(5,)]


def test_a_write_no_key_bounds_is_measured_for_every_text(
    env: HoldsEnv, writable: None, judged: list[str]
) -> None:
    """Nothing proves how many rows ``WHERE v = ...`` changes: each text runs under the
    pack's measurement (100 rows), judged the long way, never from the shape."""
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        for i in range(1, 6):
            sql = f"UPDATE fresh_counts SET v = 'm{i}' WHERE v = 'v{i}'"
            assert conn.execute(sql, prepare=False).rowcount == 1
    assert len([t for t in judged if t.startswith("UPDATE")]) == 5, judged
    assert _values(env, "SELECT count(*) FROM fresh_counts WHERE v LIKE 'm_'") == [(5,)]


def test_a_write_whose_shape_pii_changes_is_judged_every_time(
    env: HoldsEnv, writable: None, judged: list[str]
) -> None:
    """RETURNING a PII column: tokenized for every text; a token in a literal: resolved
    for every text (never from a shape)."""
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        tokens = []
        for i in range(1, 5):
            (value,) = conn.execute(
                f"UPDATE fresh_writes SET v = 'r{i}' WHERE id = {i} RETURNING email",
                prepare=False,
            ).fetchone()
            assert value.startswith("tok_email_") and value != f"w{i}@example.org"
            tokens.append(value)
        for i, token in enumerate(tokens, 1):
            cur = conn.execute(
                f"UPDATE fresh_writes SET v = 't{i}' WHERE email = '{token}' AND id = {i}",
                prepare=False,
            )
            assert cur.rowcount == 1
    assert len([t for t in judged if "RETURNING" in t]) == 4, judged
    assert len([t for t in judged if "tok_" in t]) == 4, judged
    assert _values(env, "SELECT v FROM fresh_writes WHERE id <= 4 ORDER BY id") == [
        ("t1",),
        ("t2",),
        ("t3",),
        ("t4",),
    ]
