"""Who sees raw values in a whole dbgate (App: gate, PII, approvals, audit): an
exempt identity does, and the audit trail says so; an approval is no exemption, and
neither the approver's request nor the results show a value a token stands for."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from psycopg import errors

from tests.integration.holds.clients import check_retry_error
from tests.integration.holds.harness import (
    AGENT,
    OTHER_AGENT,
    OTHER_PASSWORD,
    HoldsEnv,
    admin_execute,
    admin_query,
    start_env,
)

EMAILS = ("ann.lee@example.org", "bo.chan@example.net", "cy.diaz@example.com")


@pytest.fixture(scope="module")
def holds(pg_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HoldsEnv]:
    """The App with ``agent-two`` exempt from tokenization, and a table with e-mails
    (made before any session reads the schema)."""
    name = "holds_pii_tokens"
    env = start_env(
        pg_server, name, tmp_path_factory.mktemp(name), pii={"exempt_identities": [OTHER_AGENT]}
    )
    holds = next(env)
    try:
        yield holds
    finally:
        next(env, None)


def _contacts(holds: HoldsEnv, table: str) -> None:
    admin_execute(
        holds.admin_dsn,
        f"DROP TABLE IF EXISTS {table}",
        f"CREATE TABLE {table} (id int PRIMARY KEY, email text NOT NULL)",
        f"INSERT INTO {table} VALUES "
        + ", ".join(f"({i}, '{e}')" for i, e in enumerate(EMAILS, 1)),
    )


def _audit(holds: HoldsEnv, sql: str, *args: Any, want: int = 1) -> list[dict[str, Any]]:
    """Rows of the audit trail, once at least ``want`` are there (it is written behind)."""
    deadline = time.monotonic() + 20
    while True:
        rows = holds.app.rows(sql, *args)
        if len(rows) >= want or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)  # polling the recorded state: the condition decides


def test_an_exempt_session_is_recorded_in_the_audit_trail(holds: HoldsEnv) -> None:
    """docs/pii.md, "Exemptions": the session records why it sees raw values. Before,
    the reason went to the log only (``PiiGate.on_exemption`` had no listener), and the
    trail showed raw reads of an exempt identity as any untokenized statement."""
    _contacts(holds, "exempt_contacts")
    dsn = holds.app.dsn(holds.data_db, OTHER_AGENT, OTHER_PASSWORD)
    with psycopg.connect(dsn, autocommit=True) as conn:
        got = conn.execute("SELECT email FROM exempt_contacts WHERE id = 1").fetchone()
        assert got == (EMAILS[0],)  # exempt: the value itself
    with psycopg.connect(holds.dsn, autocommit=True) as conn:
        got = conn.execute("SELECT email FROM exempt_contacts WHERE id = 1").fetchone()
        assert got is not None and got[0].startswith("tok_email_")
    rows = _audit(
        holds,
        "SELECT identity, reason FROM dbgate.audit_log"
        " WHERE kind = 'session' AND event = 'pii_exempt'",
    )
    assert [r["identity"] for r in rows] == [OTHER_AGENT]
    assert "pii.exempt_identities" in rows[0]["reason"]


def test_an_approved_statement_with_a_token_shows_no_value(holds: HoldsEnv) -> None:
    """A held change whose WHERE compares a token with the PII column: the approver's
    request holds the token or a mask (not the value it stands for), the approved retry resolves
    it, and what the write returns is tokenized again: an approval is no exemption."""
    _contacts(holds, "retry_contacts")
    with psycopg.connect(holds.dsn, autocommit=True) as conn:
        cur = psycopg.ClientCursor(conn)  # the token spelled in the text
        token = cur.execute("SELECT email FROM retry_contacts WHERE id = 2").fetchone()[0]
        assert token.startswith("tok_email_")
        # every row but that customer's: a bulk change, which the rules hold
        sql = f"UPDATE retry_contacts SET id = -id WHERE email <> '{token}' RETURNING id, email"
        with pytest.raises(errors.InsufficientPrivilege) as first:
            cur.execute(sql)
        d = first.value.diag
        rid = check_retry_error(d.message_primary or "", d.message_hint or "")
        request = holds.app.request(rid)
        shown = json.dumps(request, default=str)
        assert not any(e in shown for e in EMAILS), shown  # the token, or a mask of it
        status, body = holds.app.api("GET", f"/api/approvals/{rid}")
        assert status == 200 and not any(e in json.dumps(body) for e in EMAILS), body
        holds.app.approve(rid)
        rows = cur.execute(sql).fetchall()
        assert sorted(r[0] for r in rows) == [-3, -1]  # the token resolved to customer 2's
        assert all(r[1].startswith("tok_email_") for r in rows)
    left = [r[0] for r in admin_query(holds.admin_dsn, "SELECT id FROM retry_contacts ORDER BY id")]
    assert left == [-3, -1, 2]
    recorded = _audit(
        holds,
        "SELECT statement, params::text AS params FROM dbgate.audit_log"
        " WHERE kind = 'statement' AND identity = $1",
        AGENT,
    )
    assert not any(e in json.dumps(recorded, default=str) for e in EMAILS)


def test_a_reload_takes_an_exemption_away_from_a_running_session(holds: HoldsEnv) -> None:
    """An identity dropped from ``pii.exempt_identities`` sees tokens from its next
    statement on: a statement it prepared while exempt, a cursor it declared then, a
    new text alike (none keeps the verdict it was given while exempt)."""
    from dbgate.reload import reload_app

    _contacts(holds, "unexempt_contacts")
    dsn = holds.app.dsn(holds.data_db, OTHER_AGENT, OTHER_PASSWORD)
    config = holds.app.config
    with psycopg.connect(dsn, autocommit=True) as conn:
        sql = "SELECT email FROM unexempt_contacts WHERE id = %s"
        got = conn.execute(sql, (1,), prepare=True).fetchone()
        assert got == (EMAILS[0],)
        conn.execute(sql, (1,), prepare=True).fetchone()
        conn.execute("begin")
        conn.execute(
            "declare c cursor for select email from unexempt_contacts where id in (1, 2, 3)"
        )
        conn.execute("fetch 1 from c").fetchone()
        pii = config.pii.model_copy(update={"exempt_identities": []})
        after = config.model_copy(update={"pii": pii})
        result = holds.app.call(reload_app(holds.app.app, after))
        assert result.ok, result
        try:
            outs = [
                conn.execute(sql, (2,), prepare=True).fetchone(),
                conn.execute(sql, (3,), prepare=True).fetchone(),
                conn.execute("fetch 1 from c").fetchone(),
                conn.execute("SELECT email FROM unexempt_contacts WHERE id = 1").fetchone(),
            ]
            conn.execute("commit")
            assert all(o is not None and o[0].startswith("tok_email_") for o in outs), outs
        finally:
            holds.app.call(reload_app(holds.app.app, config))


def test_a_write_to_a_table_with_pii_is_measured_through_bind(holds: HoldsEnv) -> None:
    """The rules' change limit (``max_rows_changed: 100``) of a write bound through the
    extended protocol: PII judges the Binds of a statement whose values may be tokens
    (any statement naming a table with PII), and its verdict replaced the policy's
    without the measurement: ``UPDATE contacts SET note = $1 WHERE note = 'n'`` changed
    all 300 rows, with a token or a plain value, where a table without PII was held."""
    admin_execute(
        holds.admin_dsn,
        "DROP TABLE IF EXISTS measured_contacts",
        "CREATE TABLE measured_contacts (id int PRIMARY KEY, email text NOT NULL, note text)",
        "INSERT INTO measured_contacts SELECT g, 'c' || g || '@example.org', 'n'"
        " FROM generate_series(1, 300) g",
    )
    with psycopg.connect(holds.dsn, autocommit=True) as conn:
        token = conn.execute("SELECT email FROM measured_contacts WHERE id = 7").fetchone()[0]
    assert token.startswith("tok_email_")
    for sql, value in (
        ("UPDATE measured_contacts SET note = %s WHERE note = 'n'", "x"),
        ("UPDATE measured_contacts SET email = %s WHERE note = 'n'", token),
    ):
        before = holds.app.last_id()
        with (
            psycopg.connect(holds.dsn, autocommit=True) as conn,
            ThreadPoolExecutor(1) as pool,
        ):
            running = pool.submit(conn.execute, sql, (value,))
            rid = holds.app.wait_pending(before)[0]["id"]  # measured, over its limit
            assert "would change 300 rows" in holds.app.request(rid)["reasons"]
            holds.app.reject(rid, "too many")
            with pytest.raises(errors.InsufficientPrivilege):
                running.result(30)
    notes = admin_query(
        holds.admin_dsn, "SELECT DISTINCT note, email ~ '^c' FROM measured_contacts"
    )
    assert notes == [("n", True)]  # undone


@pytest.mark.parametrize("bound", [False, True], ids=["query", "bind"])
def test_a_statement_held_across_a_reload_runs_under_the_new_catalog(
    holds: HoldsEnv, tmp_path: Any, bound: bool
) -> None:
    """A statement PII held (it copies an e-mail into a setting) waits while a reload
    marks another of its columns as PII, then is approved: its rows are tokenized by
    the catalog in force when they leave. It ran under the plan made when it was held,
    on the old catalog, and returned the newly marked column raw."""
    from dbgate.policy.rules import default_rules_dir
    from dbgate.reload import reload_app
    from tests.integration.holds.clients import PsycopgNotices
    from tests.integration.holds.harness import request_id

    # a table of its own: a column the running room found PII stays so
    table = f"held_memos_{int(bound)}"
    admin_execute(
        holds.admin_dsn,
        f"DROP TABLE IF EXISTS {table}",
        f"CREATE TABLE {table} (id int PRIMARY KEY, email text NOT NULL, note text)",
        f"INSERT INTO {table} VALUES "
        + ", ".join(f"({i}, '{e}', 'write to {e}')" for i, e in enumerate(EMAILS, 1)),
    )
    shipped = (default_rules_dir() / "pii.yaml").read_text()
    head, sep, tail = shipped.partition("\ncolumns:\n")
    catalog = tmp_path / "pii.yaml"
    catalog.write_text(head + sep + f"  public.{table}.note: pii\n" + tail)
    config = holds.app.config
    sql = f"SELECT id, note, set_config('held.memo', email, false) FROM {table} WHERE id = "
    params = (1,) if bound else None  # a Bind's value: held at the Bind
    sql += "%s" if bound else "1"
    with psycopg.connect(holds.dsn, autocommit=True) as conn, ThreadPoolExecutor(1) as pool:
        notices = PsycopgNotices(conn)
        assert conn.execute(f"SELECT note FROM {table} WHERE id = 2").fetchone() == (
            f"write to {EMAILS[1]}",
        )  # clean before the reload
        running = pool.submit(lambda: conn.execute(sql, params).fetchall())
        while True:  # the rules' hold (a setting changed), then PII's: the e-mail copied
            message = notices.next()[0]
            rid = request_id(message)
            if "copies PII" in message:
                break
            holds.app.approve(rid)
        pii = config.pii.model_copy(update={"catalog": catalog})
        result = holds.app.call(reload_app(holds.app.app, config.model_copy(update={"pii": pii})))
        assert result.ok, result
        try:
            holds.app.approve(rid)
            rows = running.result(30)
        finally:
            holds.app.call(reload_app(holds.app.app, config))
    assert rows, rows
    assert not any(e in repr(rows) for e in EMAILS), rows


def test_an_exempt_session_copies_in(holds: HoldsEnv) -> None:
    """``COPY … FROM STDIN`` by an exempt identity: its data is stored as sent. The
    relay asked the session's pass-through filter for tokens in the data, which it
    could not answer, and the session ended with an internal error."""
    _contacts(holds, "exempt_copy")
    dsn = holds.app.dsn(holds.data_db, OTHER_AGENT, OTHER_PASSWORD)
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.cursor().copy("COPY exempt_copy (id, email) FROM STDIN") as copy:
            copy.write_row((7, "dee.eck@example.com"))
        got = conn.execute("SELECT email FROM exempt_copy WHERE id = 7").fetchone()
    assert got == ("dee.eck@example.com",)
