"""A decision tells the agent this statement's own reasons, not the rule's generic text.

Each row: SQL -> (action, rule, the reasons the decision acted on as (category, code,
message)) with the default pack. The reasons are those whose category was decided at
the decision's action, so an allowed ``read`` half never hides among them and a held
statement says exactly what made it held. No reason quotes a literal value.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from pglast import parser

from dbgate.policy import Action, Identity, load_rules
from dbgate.policy.catalog_builtin import SETTING_CONTEXTS
from dbgate.policy.catalog_settings import PRIVILEGE_SETTINGS
from dbgate.policy.classify import classify, clear_cache
from dbgate.policy.model import Category, Classification, Reason, StatementClass
from dbgate.policy.rules import Match, Rule, ruleset_from_rules
from tests.unit.policy.test_classify_table import ALL

PACK = load_rules()
AGENT = Identity("agent")
EVERY_ROW = "(no WHERE that narrows it, no LIMIT of at most 1000 rows)"


def row(sql: str, action: str, rule: str, *reasons: tuple[str, str, str]) -> Any:
    return pytest.param(sql, action, rule, reasons, id=sql[:60])


TABLE = [
    # --- whole tables ---------------------------------------------------------------------
    row(
        "SELECT * FROM customers",
        "hold",
        "hold-dump",
        ("dump", "unbounded-select", f"reads every row of customers {EVERY_ROW}"),
    ),
    row(
        "SELECT * FROM orders o, customers c WHERE o.id = 1",
        "hold",
        "hold-dump",
        ("dump", "unbounded-select", f"reads every row of customers {EVERY_ROW}"),
    ),
    row(
        "SELECT id FROM orders UNION SELECT order_id FROM payments",
        "hold",
        "hold-dump",
        ("dump", "unbounded-select", f"reads every row of orders and payments {EVERY_ROW}"),
    ),
    row(
        "WITH c AS (SELECT * FROM customers) SELECT * FROM c",
        "hold",
        "hold-dump",
        ("dump", "unbounded-select", f"reads every row of customers {EVERY_ROW}"),
    ),
    row(
        "SELECT * FROM pg_stats",
        "hold",
        "hold-dump",
        (
            "dump",
            "data-catalog",
            "reads pg_stats, which holds samples of column values (most common values, histograms)",
        ),
    ),
    row(
        "COPY customers TO STDOUT",
        "hold",
        "hold-export",
        ("export", "copy-to", "copies the table customers out of the database in bulk (COPY TO)"),
        (
            "dump",
            "copy-to",
            "reads every row of customers (COPY of a table copies all of it; "
            "COPY (SELECT ... WHERE ...) TO STDOUT copies only what the query selects)",
        ),
    ),
    row(
        "CREATE TABLE x AS SELECT * FROM customers",
        "hold",
        "hold-dump",
        ("ddl", "create-table-as", "creates x (CREATE TABLE AS)"),
        ("dump", "copy-table-into-table", f"copies every row of customers into x {EVERY_ROW}"),
    ),
    row(
        "DECLARE c CURSOR WITH HOLD FOR SELECT id FROM customers",
        "hold",
        "hold-dump",
        ("dump", "unbounded-select", f"reads every row of customers {EVERY_ROW}"),
        (
            "dump",
            "held-cursor",
            "keeps a cursor over every row of customers open after the transaction ends "
            "(WITH HOLD)",
        ),
    ),
    # --- destructive -----------------------------------------------------------------------
    row(
        "DELETE FROM orders",
        "hold",
        "hold-destructive",
        (
            "destructive",
            "delete-without-where",
            "deletes every row of orders (no WHERE that narrows it to a few rows)",
        ),
    ),
    row(
        "UPDATE orders SET status = 'void' RETURNING *",
        "hold",
        "hold-dump",
        (
            "destructive",
            "update-without-where",
            "updates every row of orders (no WHERE that narrows it to a few rows)",
        ),
        (
            "dump",
            "returning-all-rows",
            "returns every row of orders it updates (RETURNING with no WHERE that narrows it)",
        ),
    ),
    row(
        "SELECT 1; TRUNCATE orders, payments",
        "hold",
        "hold-destructive",
        ("destructive", "truncate", "removes every row of orders and payments (TRUNCATE)"),
    ),
    row(
        "DROP TABLE orders",
        "hold",
        "hold-destructive",
        ("ddl", "drop", "changes the schema (DROP TABLE)"),
        ("destructive", "drop", "removes table orders and what it holds (DROP)"),
    ),
    # --- server, privileges, settings ----------------------------------------------------------
    row(
        "SELECT pg_read_file('/etc/passwd')",
        "deny",
        "deny-server-admin",
        (
            "admin",
            "server-file-read",
            "calls pg_read_file, which reads files or directories on the database server",
        ),
    ),
    row(
        "SELECT * FROM pg_authid",
        "deny",
        "deny-server-admin",
        ("admin", "credential-catalog", "reads the credentials in pg_authid (rolpassword)"),
    ),
    row(
        "COPY orders FROM '/tmp/orders.csv'",
        "deny",
        "deny-server-admin",
        (
            "admin",
            "copy-server-file",
            "reads or writes a file on the database server (COPY with a file name); "
            "use STDIN or STDOUT",
        ),
    ),
    row(
        "SET ROLE postgres",
        "hold",
        "hold-privilege",
        ("privilege", "set-role", "changes the role later statements run as (SET ROLE)"),
    ),
    row(
        "SELECT set_config('app.tenant_secret', '123-45-6789', false)",
        "hold",
        "hold-privilege",
        (
            "privilege",
            "custom-setting",
            "sets a custom (dotted) setting, which row-level security policies may read "
            "to decide whose rows are visible",
        ),
    ),
    row(
        "SET search_path = evil, pg_catalog",
        "hold",
        "hold-escape",
        (
            "escape",
            "escape-search-path",
            "puts a schema before pg_catalog in search_path, so a user function could "
            "shadow a built-in that dbgate trusts",
        ),
    ),
    row(
        "SET client_encoding = 'SJIS'",
        "deny",
        "unreadable-settings",
        (
            "escape",
            "escape-client-encoding",
            "switches client_encoding away from UTF8, so the server could read the bytes "
            "of a statement differently from dbgate",
        ),
    ),
    # --- code dbgate cannot see into ----------------------------------------------------------
    row(
        "SELECT mask_ssn('123-45-6789')",
        "hold",
        "hold-opaque",
        (
            "opaque",
            "unknown-function",
            "calls mask_ssn, which is not a function dbgate knows, so its effect is unknown",
        ),
    ),
    row(
        "DO $$ BEGIN PERFORM 1; END $$",
        "hold",
        "hold-opaque",
        (
            "opaque",
            "do-block",
            "runs an anonymous code block (DO), whose effects dbgate cannot know",
        ),
    ),
    row(
        "EXECUTE fetch_all",
        "hold",
        "hold-opaque",
        (
            "opaque",
            "unknown-prepared",
            "runs the prepared statement fetch_all, whose text dbgate does not know",
        ),
    ),
    row(
        "VACUUM orders",
        "hold",
        "hold-maintenance",
        ("admin", "vacuum", "runs storage maintenance (VACUUM), which can load the server"),
    ),
    row(
        "SELEC * FROM orders",
        "deny",
        "parse-error",
        ("opaque", "parse-error", 'could not be parsed: syntax error at or near "SELEC"'),
    ),
    # --- allowed: the reasons that allowed it ---------------------------------------------------
    row(
        "SELECT * FROM customers WHERE id = 1",
        "allow",
        "allow-reads",
        ("read", "select", "reads data with a query"),
    ),
    row(
        "BEGIN; SELECT nextval('orders_id_seq'); COMMIT",
        "allow",
        "allow-reads",
        ("control", "transaction", "begins, ends or configures a transaction"),
        ("read", "select", "reads data with a query"),
        ("write", "sequence-advance", "calls nextval, which advances a sequence"),
        ("control", "transaction", "begins, ends or configures a transaction"),
    ),
]


@pytest.mark.parametrize(("sql", "action", "rule", "reasons"), TABLE)
def test_decision_reasons(
    sql: str, action: str, rule: str, reasons: tuple[tuple[str, str, str], ...]
) -> None:
    clear_cache()
    d = PACK.decide(AGENT, classify(sql))
    got = tuple((r.category.value, r.code, r.message) for r in d.reasons)
    assert (d.action.value, d.rule, got) == (action, rule, reasons)


def test_reasons_of_an_allowed_half_are_not_given_for_a_hold() -> None:
    """``COPY customers TO STDOUT`` also reads: that allowed unit is not why it is held."""
    d = PACK.decide(AGENT, classify("COPY customers TO STDOUT"))
    assert d.action is Action.HOLD
    assert {r.category.value for r in d.reasons} == {"export", "dump"}


def test_reasons_follow_the_winning_action_across_statements() -> None:
    d = PACK.decide(AGENT, classify("SELECT * FROM customers; SELECT pg_ls_dir('.')"))
    assert d.action is Action.DENY
    assert [r.code for r in d.reasons] == ["server-file-read"]


def test_a_cached_decision_keeps_its_reasons() -> None:
    c = classify("DELETE FROM orders")
    first = PACK.decide(AGENT, c)
    assert PACK.decide(AGENT, c) is first and first.reasons


def test_reasons_under_a_custom_pack_follow_its_rules() -> None:
    """The reasons are those of the units the deciding rule acted on, whatever the pack."""
    rs = ruleset_from_rules(
        [
            Rule("deny-writes", Action.DENY, Match(categories=frozenset({Category.WRITE}))),
            Rule("allow-rest", Action.ALLOW),
        ]
    )
    read = Reason(Category.READ, "select", "reads data with a query")
    write = Reason(Category.WRITE, "insert", "inserts rows into t")
    c = Classification(
        statements=(StatementClass(frozenset({Category.READ, Category.WRITE}), (read, write)),)
    )
    d = rs.decide(AGENT, c)
    assert (d.action, d.rule, d.reasons) == (Action.DENY, "deny-writes", (write,))
    ok = Classification(statements=(StatementClass(frozenset({Category.READ}), (read,)),))
    assert rs.decide(AGENT, ok).reasons == (read,)


# --- no literal values in any reason ---------------------------------------------------------


def _literals(sql: str) -> set[str]:
    """Every string and number literal of ``sql`` (and of SQL nested in string literals)."""
    out: set[str] = set()
    try:
        tree = json.loads(parser.parse_sql_json(sql))
    except Exception:
        return out
    stack: list[Any] = [tree]
    while stack:
        x = stack.pop()
        if isinstance(x, list):
            stack.extend(x)
        elif isinstance(x, dict):
            const = x.get("A_Const")
            if isinstance(const, dict):
                for k in ("sval", "ival", "fval", "bsval"):
                    if k in const:
                        out.add(str(next(iter(const[k].values()), "")))
            stack.extend(v for v in x.values() if isinstance(v, dict | list))
    return out


#: Literals that are PostgreSQL's own vocabulary, which a reason may rightly name:
#: the settings it has (``set_config``'s first argument is a string literal) and
#: ``pg_catalog`` (a ``search_path`` value).
_VOCABULARY = {*SETTING_CONTEXTS, *PRIVILEGE_SETTINGS, "pg_catalog"}


@pytest.mark.parametrize(("sql", "expected", "subset"), ALL)
def test_no_reason_quotes_a_literal_value(sql: str, expected: Any, subset: bool) -> None:
    c = classify(sql)
    literals = {
        v
        for v in _literals(sql)
        if len(v) >= 4 and v.lower() not in _VOCABULARY and v not in c.tables
    }
    for r in c.reasons:
        for v in literals:
            quoted = re.search(rf"(?<!\w){re.escape(v)}(?!\w)", r.message)
            assert quoted is None, f"{sql!r}: reason {r.code} quotes {v!r}"
