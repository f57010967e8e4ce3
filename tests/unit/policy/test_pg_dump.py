"""pg_dump through the default pack: the schema passes, the data is held.

The statements are not written by hand: the embedded server's own pg_dump runs
against a database holding the demo schema while the server logs every statement
of that database (``log_statement = 'all'`` set on the database only), and each
logged query string is then classified and decided as the gate would, in order, with
the prepared statements pg_dump creates followed through their PREPARE effects.
pg_dump runs as a role that may only read the demo tables, as an agent's upstream
role should; as a superuser it sends one more query, for subscription credentials.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dbgate.demo_data import load_demo_dataset
from dbgate.embedded import pg_bin_dir
from dbgate.policy import Action, Decision, Identity, load_rules
from dbgate.policy.classify import classify

PACK = load_rules()
AGENT = Identity("agent", application_name="pg_dump")

#: Where a log entry of the embedded server begins (log_line_prefix '%m [%p] ').
_ENTRY = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \S+ \[(\d+)\] ", re.MULTILINE)
_STATEMENT = "LOG:  statement: "


@pytest.fixture(scope="module")
def dump_database(pg_server: Any) -> Iterator[tuple[str, str, str]]:
    """A database with the demo schema (a few rows), logging every statement run in it,
    and a least-privilege role that may read it, as an agent's upstream role would be:
    (database, role, password)."""
    log_file = getattr(pg_server, "log_file", None)
    if log_file is None:
        pytest.skip("needs the embedded server, whose log this test reads (DBGATE_TEST_DSN set)")
    token = secrets.token_hex(4)
    name, role, password = f"dump_{token}", f"dump_reader_{token}", secrets.token_hex(12)
    pg_server.psql(f"CREATE DATABASE {name}")
    pg_server.psql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    try:
        asyncio.run(load_demo_dataset(pg_server.dsn(name), customers=40))
        pg_server.psql(
            f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}; "
            f"GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}",
            dbname=name,
        )
        pg_server.psql(f"ALTER DATABASE {name} SET log_statement = 'all'")
        yield name, role, password
    finally:
        pg_server.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        pg_server.psql(f"DROP ROLE IF EXISTS {role}")


def _statements_of(
    pg_server: Any, dump: tuple[str, str, str], *args: str, superuser: bool = False
) -> list[str]:
    """Run the embedded pg_dump with ``args`` as the reader role (or the superuser);
    the query strings it sent, in order."""
    dbname, role, password = dump
    log_file: Path = pg_server.log_file
    offset = log_file.stat().st_size
    env = pg_server.psql_env(dbname)
    if not superuser:
        env.update(PGUSER=role, PGPASSWORD=password)
    result = subprocess.run(
        [str(pg_bin_dir() / "pg_dump"), *args, "--file", "/dev/null", dbname],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    with open(log_file, "rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    starts = list(_ENTRY.finditer(text))
    out = []
    for i, m in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        entry = text[m.end() : end]
        if entry.startswith(_STATEMENT):
            out.append(entry[len(_STATEMENT) :].rstrip("\n"))
    assert out, "no statements were logged"
    return out


def _decide_in_order(statements: list[str]) -> list[tuple[str, Decision]]:
    """Decide each query string as the gate would, keeping the session's PREPAREs."""
    prepared: dict[str, str] = {}
    out = []
    for sql in statements:
        classification = classify(sql, prepared=prepared)
        decision = PACK.decide(AGENT, classification)
        out.append((sql, decision))
        if decision.action is Action.ALLOW:
            for effect in classification.prepared_effects:
                if effect.kind == "add":
                    prepared[effect.name] = effect.body
                elif effect.kind == "remove":
                    prepared.pop(effect.name, None)
                else:
                    prepared.clear()
    return out


def _report(decided: list[tuple[str, Decision]]) -> str:
    return "\n".join(
        f"{d.action.value} ({d.rule}): {' '.join(sql.split())[:300]}\n    "
        + "; ".join(f"{r.category.value}/{r.code}: {r.message}" for r in d.reasons)
        for sql, d in decided
    )


def test_schema_only_dump_is_allowed(pg_server: Any, dump_database: tuple[str, str, str]) -> None:
    decided = _decide_in_order(_statements_of(pg_server, dump_database, "--schema-only"))
    refused = [(sql, d) for sql, d in decided if d.action is not Action.ALLOW]
    assert not refused, _report(refused)
    assert len(decided) > 20  # pg_dump really ran its catalog queries
    # pg_dump turns the session's timeouts off: it runs, and the gate puts this
    # identity's ceilings back right after each such SET (docs/rules.md, "Session guards")
    clamped = {name for _, d in decided for name, _ in d.guard_clamps}
    assert {"statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout"} <= clamped
    ceilings = PACK.session_guards(AGENT).settings()
    for _, d in decided:
        for name, ms in d.guard_clamps:
            assert str(ms) == ceilings[name]


def test_a_superusers_dump_reads_subscription_credentials_and_is_denied_there(
    pg_server: Any, dump_database: tuple[str, str, str]
) -> None:
    """As a superuser, pg_dump also reads pg_subscription.subconninfo (connection
    strings, passwords included): that one statement is refused, nothing else is."""
    decided = _decide_in_order(
        _statements_of(pg_server, dump_database, "--schema-only", superuser=True)
    )
    refused = [(sql, d) for sql, d in decided if d.action is not Action.ALLOW]
    assert len(refused) == 1, _report(refused)
    sql, d = refused[0]
    assert "s.subconninfo" in sql and "FROM pg_subscription" in sql
    assert (d.action, d.rule) == (Action.DENY, "deny-server-admin")
    assert [r.code for r in d.reasons] == ["credential-catalog"]


def test_data_dump_is_held_at_each_copy(
    pg_server: Any, dump_database: tuple[str, str, str]
) -> None:
    decided = _decide_in_order(_statements_of(pg_server, dump_database))
    copies = [(sql, d) for sql, d in decided if sql.startswith("COPY ")]
    assert {re.sub(r" \(.*", "", sql) for sql, _ in copies} == {
        "COPY public.customers",
        "COPY public.orders",
        "COPY public.payments",
    }
    for sql, d in copies:
        assert sql.endswith("TO stdout;"), sql
        assert (d.action, d.rule) == (Action.HOLD, "hold-export"), _report([(sql, d)])
        assert {r.code for r in d.reasons} == {"copy-to"}
    others = [(sql, d) for sql, d in decided if not sql.startswith("COPY ")]
    assert all(d.action is Action.ALLOW for _, d in others), _report(others)
